"""The `vramplan` command: parse the options, call the library once, render through vramplan.report.

One module per command (or pair of commands), loaded when the command runs: `vramplan estimate` builds its own
options, not those of the seven other commands, and `vramplan --help` builds none (COMMANDS holds the line the
listing shows; a test holds it to each command's docstring). The pattern is click's "lazily loading
subcommands" (click docs, Complex Applications). Option groups and the resolution of their values live in
cli_options.py; the arithmetic in vramplan.estimator, vramplan.plan and vramplan.api; JSON and tables in
vramplan.report. Heavy libraries (torch, transformers, peft, bitsandbytes) are imported only inside `measure` /
`simulate`, rich only when a table is drawn.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from vramplan.errors import VramplanError

# command -> (module defining it, the first paragraph of its docstring: what `vramplan --help` lists, shortened)
COMMANDS: dict[str, tuple[str, str]] = {
    "calibration": (
        "vramplan.cli.trust",
        "Runs stored by `measure --save` and the per-GPU figures `estimate` uses from them.",
    ),
    "estimate": (
        "vramplan.cli.estimate",
        "Estimate the peak GPU memory of one training step of MODEL.",
    ),
    "fit": (
        "vramplan.cli.fit",
        "What fits on a GPU: the largest batch per method and sequence length, the longest sequence, the "
        "largest LoRA rank.",
    ),
    "gpus": (
        "vramplan.cli.profiles",
        "The GPU profiles: memory (GiB; NVML's total, else the marketed size), compute capability, bf16 / fp8 / fp4.",
    ),
    "measure": (
        "vramplan.cli.harness",
        "Run real training steps of MODEL (transformers + peft + bitsandbytes) and measure their memory.",
    ),
    "models": (
        "vramplan.cli.profiles",
        "The built-in model profiles, with parameter counts.",
    ),
    "serve": (
        "vramplan.cli.serve",
        "Estimate the GPU memory to serve MODEL (weights + KV cache + adapters) with vLLM or HF generate.",
    ),
    "simulate": (
        "vramplan.cli.harness",
        "Trace real training steps of MODEL at full size without memory (fake / meta tensors, no GPU needed).",
    ),
    "validate": (
        "vramplan.cli.trust",
        "Compare the estimator with published measurements (papers, READMEs): error by confidence level.",
    ),
}


def console():  # rich is imported lazily: `--json` and `--help` don't pay for it
    from vramplan.report.common import console

    return console()


class _Group(click.Group):
    """The commands of COMMANDS, each imported when it runs; and one error style: a VramplanError anywhere in a
    command, and click's own usage errors (a bad option value, an unknown option or command, a missing
    argument), become one `error: …` line on stderr and exit code 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        return getattr(importlib.import_module(COMMANDS[cmd_name][0]), cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """click's, with the close matches of an unknown command taken from COMMANDS (click looks in
        `self.commands`, empty here)."""
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand as e:
            raise click.exceptions.NoSuchCommand(e.command_name, possibilities=COMMANDS, ctx=ctx) from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's listing (Group.format_commands), each line shortened from COMMANDS' summary as click shortens
        a docstring: the same text, without importing every command."""
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [(name, click.Command(name, help=summary).get_short_help_str(limit)) for name, (_, summary) in
                sorted(COMMANDS.items())]  # fmt: skip
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VramplanError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else ctx.command_path
            message = e.format_message().replace("\n", " ")
            click.echo(f"error: {message} (see `{where} --help`)", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vramplan")
def main() -> None:
    """Plan GPU memory for fine-tuning and serving LLMs. Sizes are GiB (1024³ bytes)."""
    from vramplan.report.common import encodable_streams

    encodable_streams()  # a non-UTF-8 terminal gets ASCII, not a UnicodeEncodeError


def all_commands() -> dict[str, click.Command]:
    """Every command, loaded (docs/generate.py and the tests that walk every option)."""
    ctx = click.Context(main)
    return {name: main.get_command(ctx, name) for name in main.list_commands(ctx)}
