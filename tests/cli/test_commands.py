"""The lazy command group (vramplan/cli/__init__.py): `vramplan --help` lists COMMANDS' summaries without
importing the command modules, so each summary must stay what the command's own docstring makes, and every
command defined under vramplan/cli/ must be reachable from COMMANDS."""

from __future__ import annotations

import importlib
import pkgutil

import click
import pytest
from click.testing import CliRunner

import vramplan.cli
from vramplan.cli import COMMANDS, all_commands, main


@pytest.mark.parametrize("limit", [20, 45, 63, 100, 400])  # click shortens to the terminal's width
def test_the_listing_shortens_each_commands_docstring(limit: int):
    for name, command in all_commands().items():
        listed = click.Command(name, help=COMMANDS[name][1]).get_short_help_str(limit)
        assert listed == command.get_short_help_str(limit), name


def test_every_command_module_defines_only_listed_commands():
    defined = {}
    for info in pkgutil.iter_modules(vramplan.cli.__path__, "vramplan.cli."):
        if info.name.endswith(".__main__"):  # `python -m vramplan.cli`: runs the group
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if isinstance(value, click.Command):
                defined[value.name] = info.name
    assert defined == {name: module for name, (module, _) in COMMANDS.items()}


def test_help_lists_every_command_and_a_command_runs():
    listing = CliRunner().invoke(main, ["--help"], terminal_width=200).output.split("Commands:")[1]
    assert [line.split()[0] for line in listing.strip().splitlines()] == sorted(COMMANDS)
    result = CliRunner().invoke(main, ["nosuchcommand"])
    assert result.exit_code == 2
    assert "No such command 'nosuchcommand'" in result.output


def test_an_unknown_command_gets_the_close_names():
    """click suggests from the commands it holds; the lazy group holds none until one runs."""
    result = CliRunner().invoke(main, ["estimat", "llama-2-7b"])
    assert result.exit_code == 2
    assert "(Did you mean one of: 'estimate', 'simulate'?)" in result.output
