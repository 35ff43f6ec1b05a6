"""Regenerate the documentation from the code: docs/options.md from each command's `--help`, and every
example block in README.md and docs/*.md from the command it names.

    python docs/generate.py            # rewrite options.md and every fast example in place
    python docs/generate.py --slow     # also the slow examples (measure, simulate, benchmarks/: minutes, torch)
    python docs/generate.py --check    # change nothing; exit 1 and print each stale block (CI: tests/test_docs.py)
    python docs/generate.py --slow --only simulate   # only the examples whose command contains "simulate"

An example block is a fenced block between two markers; the generator replaces what is between them:

    <!-- example: vramplan estimate llama-2-7b --gpu 3060ti -->
    ```console
    $ vramplan estimate llama-2-7b --gpu 3060ti
    (the command's output)
    ```
    <!-- /example -->

`<!-- example: python -->` marks a ```pycon block instead: its `>>>` / `...` lines are run in one namespace
and the lines after each statement become what the interpreter prints.

Every command runs as a user would see it in a 120-column terminal, reproducibly: in-process through click's
CliRunner (stdout and stderr interleaved, no colour), offline (HF_HUB_OFFLINE=1), with an empty calibration
store (VRAMPLAN_STORE=/tmp/vramplan-docs/runs.jsonl, a fixed path since `vramplan calibration` prints it; see
`default_store` in vramplan/trust/calibration.py), so runs stored on this machine don't leak in. Slow
examples (`vramplan measure` / `simulate`, `python benchmarks/...`) are regenerated only with --slow and never
compared by --check.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 120
SLOW_COMMANDS = ("measure", "simulate")
PAGES = ("README.md", "docs/*.md")
OPTIONS_PAGE = ROOT / "docs" / "options.md"
# An empty calibration store at a fixed path, since `vramplan calibration` prints where its store is.
EMPTY_STORE = Path("/tmp/vramplan-docs/runs.jsonl")

EXAMPLE = re.compile(
    r"(?P<open><!-- example: (?P<command>[^\n]*?) -->\n)(?P<body>.*?)(?P<close><!-- /example -->)", re.S
)


@dataclass(frozen=True, slots=True)
class Stale:
    """One generated text that differs from what the page holds."""

    page: str
    what: str
    old: str
    new: str

    def diff(self) -> str:
        return "".join(
            difflib.unified_diff(
                self.old.splitlines(keepends=True),
                self.new.splitlines(keepends=True),
                f"{self.page} (checked in)",
                f"{self.page} (generated)",
            )
        )


def reproducible_environment(store: Path = EMPTY_STORE) -> None:
    """The environment every example runs in: width, no colour, offline, an empty calibration store."""
    store.unlink(missing_ok=True)  # no example writes to it; a file left there by hand would leak in
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "CLICOLOR_FORCE"):
        os.environ.pop(name, None)
    os.environ.update(
        {
            "COLUMNS": str(WIDTH),
            "LINES": "50",
            "NO_COLOR": "1",
            "TERM": "dumb",
            "HF_HUB_OFFLINE": "1",
            "VRAMPLAN_STORE": str(store),
        }
    )


def is_slow(command: str) -> bool:
    argv = shlex.split(command)
    return argv[0] != "vramplan" or any(word in SLOW_COMMANDS for word in argv[1:2])


def clean(text: str) -> str:
    """rich pads table lines to the width; pages keep no trailing blanks."""
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines()) + "\n"


def run_vramplan(argv: list[str]) -> str:
    from click.testing import CliRunner

    from vramplan.cli import main

    result = CliRunner().invoke(
        main, argv, prog_name="vramplan", terminal_width=WIDTH, max_content_width=WIDTH, catch_exceptions=False
    )
    return result.output


def excerpt(text: str, pipe: str) -> str:
    """`| head -N` / `| tail -N`, the only pipes an example may end with (to show part of a long output)."""
    match = re.fullmatch(r"(head|tail) -(\d+)", pipe.strip())
    if match is None:
        raise SystemExit(f"example pipe {pipe!r}: only `| head -N` or `| tail -N`")
    lines, count = text.splitlines(keepends=True), int(match[2])
    return "".join(lines[:count] if match[1] == "head" else lines[-count:])


def run_command(command: str) -> str:
    """What the terminal shows for `command`: a vramplan command in-process, anything else as a subprocess."""
    command, *pipes = command.split(" | ")
    argv = shlex.split(command)
    if argv[0] == "vramplan":
        text = clean(run_vramplan(argv[1:]))
    else:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        text = clean(done.stdout + done.stderr)
    for pipe in pipes:
        text = excerpt(text, pipe)
    return text


def run_python_session(body: str) -> str:
    """Re-run a ```pycon block: keep its `>>>`/`...` lines, replace what follows each with what Python prints."""
    statements: list[list[str]] = []
    for line in body.splitlines():
        if line.startswith(">>> ") or line == ">>>":
            statements.append([line])
        elif (line.startswith("... ") or line == "...") and statements:
            statements[-1].append(line)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    out = ["```pycon"]
    for lines in statements:
        source = "\n".join(line[4:] for line in lines) + "\n"
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            try:
                exec(compile(source, "<docs>", "single"), namespace)
            except Exception as error:  # shown as the interpreter shows it (doctest's form)
                kind = type(error)
                print(f"Traceback (most recent call last):\n  ...\n{kind.__module__}.{kind.__qualname__}: {error}")
        out += [*lines, *printed.getvalue().rstrip("\n").splitlines()]
    return "\n".join(out) + "\n```\n"


def render_example(command: str, body: str) -> str:
    if command == "python":
        return run_python_session(body)
    return f"```console\n$ {command}\n{run_command(command)}```\n"


def options_page() -> str:
    """docs/options.md: `vramplan --help` and every command's `--help`, as click prints them."""
    from vramplan.cli import all_commands

    parts = [
        "# Options reference",
        "",
        "<!-- Generated by `python docs/generate.py` from each command's `--help`; do not edit by hand. -->",
        "",
        "Every command and option, as `--help` prints them. Sizes are GiB (1024³ bytes). The training options",
        "(`--method` … `--offload`) are shared by `estimate`, `fit`, `measure` and `simulate`; what they mean",
        "for memory is in [estimate.md](estimate.md), [multi-gpu.md](multi-gpu.md) and",
        "[from-configs.md](from-configs.md).",
        "",
        "## vramplan",
        "",
        "```text",
        clean(run_vramplan(["--help"])).rstrip(),
        "```",
    ]
    for name in sorted(all_commands()):
        parts += ["", f"## vramplan {name}", "", "```text", clean(run_vramplan([name, "--help"])).rstrip(), "```"]
    return "\n".join(parts) + "\n"


def pages() -> list[Path]:
    found: list[Path] = []
    for pattern in PAGES:
        found += sorted(ROOT.glob(pattern))
    return found


def regenerate(page: Path, slow: bool, root: Path = ROOT, only: str = "") -> tuple[str, list[Stale]]:
    """The page with its examples regenerated (slow ones only if `slow`; only commands containing `only`), and
    the blocks that changed."""
    text = page.read_text()
    name = str(page.relative_to(root))
    if text.count("<!-- example: ") != len(EXAMPLE.findall(text)):
        raise SystemExit(f"{name}: an `<!-- example: ... -->` marker has no `<!-- /example -->`")
    stale: list[Stale] = []

    def replace(match: re.Match[str]) -> str:
        command, body = match["command"], match["body"]
        if (command != "python" and is_slow(command) and not slow) or only not in command:
            return match[0]
        new = render_example(command, body)
        if new != body:
            stale.append(Stale(name, command, body, new))
        return match["open"] + new + match["close"]

    return EXAMPLE.sub(replace, text), stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="write nothing; exit 1 if a fast block is stale")
    mode.add_argument("--slow", action="store_true", help="also regenerate measure / simulate / benchmark examples")
    parser.add_argument("--only", default="", metavar="TEXT", help="only the examples whose command contains TEXT")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)  # examples name repo files by relative path (tests/data/...)
    reproducible_environment()
    stale: list[Stale] = []
    options = options_page()
    old_options = OPTIONS_PAGE.read_text() if OPTIONS_PAGE.exists() else ""
    if options != old_options:
        stale.append(Stale("docs/options.md", "options reference", old_options, options))
        if not args.check:
            OPTIONS_PAGE.write_text(options)
    for page in pages():
        text, changed = regenerate(page, slow=args.slow, only=args.only)
        stale += changed
        if changed and not args.check:
            page.write_text(text)
    for block in stale:
        print(f"{'stale' if args.check else 'updated'}: {block.page}: {block.what}")
        if args.check:
            print(block.diff())
    if args.check and stale:
        print(f"{len(stale)} stale block(s): run `python docs/generate.py`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
