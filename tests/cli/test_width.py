"""Every command's human output at 60, 80 and 100 columns, as a pipe gets it (issue 16).

The commands are every `vramplan` example of README.md and docs/*.md (read from their `<!-- example: … -->`
markers, so a new example is checked the day it is written), plus the outputs the docs do not show: warnings,
advice, serving problems, `gpus --all`, `validate --all`, a calibration store with runs, the terminal plot,
and the measure / simulate table. Each line must fit the width, carry no ANSI code, no trailing blank and no
`…` (a value cut to fit); a value the user types (a GPU key or alias, a model name) is never cut.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import REPO_ROOT
from vramplan.cli import main

WIDTHS = (60, 80, 100)
SLOW = ("measure", "simulate")  # a full-size trace: rendered below from one tiny run instead


def documented_commands() -> list[str]:
    """Every `vramplan …` example command of the README and the manual, without a trailing `| tail`."""
    found: set[str] = set()
    for page in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]:
        for command in re.findall(r"<!-- example: (vramplan [^\n]*?) -->", page.read_text(encoding="utf-8")):
            found.add(command.split("|")[0].strip())
    return sorted(c for c in found if shlex.split(c)[1] not in SLOW)


UNDOCUMENTED = [
    "vramplan models",
    "vramplan gpus",
    "vramplan gpus --all",
    "vramplan validate --all",
    "vramplan estimate llama-2-7b --gpu t4 --attn flash_attention_2 --seq 8k --method full --lora-rank 8 --suggest",
    "vramplan estimate mixtral-8x7b --gpu h100 --suggest",
    "vramplan estimate qwen3-30b-a3b --gpu h100",  # the generic path: its `approximated:` line
    "vramplan estimate llama-3-8b --gpu 3060ti --gpus 4 --strategy zero3 --offload optimizer",
    "vramplan fit llama-2-7b --gpu 3060ti --plot",
    "vramplan fit llama-3-70b --gpu a100-80gb --gpus 8 --strategy fsdp --method lora",
    "vramplan serve llama-3-70b --gpu 4090",
    "vramplan serve llama-2-7b --gpu 3060ti --gpu-memory-utilization 1.0",
    "vramplan serve llama-3-8b --gpu 4090 --enable-lora --max-loras 4 --kv-cache-dtype fp8",
    "vramplan calibration",  # with one stored run (the fixture below)
]


def check_lines(text: str, width: int, where: str, cut_ok: bool = False) -> None:
    """`cut_ok`: `gpus`, whose NVML name column (decoration, not what --gpu takes) is cut with `…` by design;
    its keys and aliases are held whole by test_typed_values_are_never_cut."""
    for line in text.splitlines():
        assert len(line) <= width, f"{where}: {len(line)} > {width} columns: {line!r}"
        assert "\x1b" not in line, f"{where}: ANSI code in piped output: {line!r}"
        assert line == line.rstrip(), f"{where}: trailing blank: {line!r}"
        assert cut_ok or "…" not in line, f"{where}: a value cut to fit: {line!r}"


@pytest.fixture
def one_stored_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vramplan.trust.calibration import RunRecord, append_run

    gib, mib = 1024**3, 1024**2
    store = tmp_path / "runs.jsonl"
    append_run(RunRecord(
        gpu_name="NVIDIA GeForce RTX 3060 Ti", gpu_key="rtx-3060-ti", model="llama-2-7b",
        allocated_bytes=5 * gib, reserved_bytes=5 * gib + 512 * mib, device_bytes=5 * gib + 1112 * mib,
        inputs={"method": "qlora", "batch": 1, "seq": 1024}, tracker={"weights": 4 * gib},
        estimate={"peak_bytes": 5 * gib, "reserved_bytes": 5 * gib, "device_bytes": 6 * gib},
        versions={"torch": "2.13.0"}, driver="580.1", cuda="12.8",
    ), store)  # fmt: skip
    monkeypatch.setenv("VRAMPLAN_STORE", str(store))


def test_the_documented_commands_are_found():
    """The docs hold examples of estimate, fit, serve, validate and calibration (a broken marker regex would
    make the sweep below check nothing)."""
    commands = {shlex.split(c)[1] for c in documented_commands()}
    assert {"estimate", "fit", "serve", "validate", "calibration"} <= commands


@pytest.mark.usefixtures("one_stored_run")
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("command", documented_commands() + UNDOCUMENTED)
def test_every_command_fits_the_width(command: str, width: int):
    r = CliRunner(env={"COLUMNS": str(width)}).invoke(main, shlex.split(command)[1:])
    assert r.exit_code == 0, r.output
    check_lines(r.stdout, width, f"{command} (stdout)", cut_ok=command.startswith("vramplan gpus"))
    check_lines(r.stderr, width, f"{command} (stderr)")


@pytest.mark.parametrize("width", WIDTHS)
def test_typed_values_are_never_cut(width: int):
    """GPU keys and every alias, model names: whole on some line at any width (wrapped between values)."""
    from vramplan.sources.profiles import builtin_model_names, load_gpus

    runner = CliRunner(env={"COLUMNS": str(width)})
    gpus_out = runner.invoke(main, ["gpus", "--all"]).stdout
    models_out = runner.invoke(main, ["models"]).stdout
    for g in load_gpus().values():
        for value in (g.key, *g.aliases):
            assert any(value in line for line in gpus_out.splitlines()), (width, value)
    for name in builtin_model_names():
        assert re.search(rf"(^|[\s,]){re.escape(name)}([\s,(]|$)", models_out, re.M), (width, name)


def test_warnings_wrap_with_a_hanging_indent():
    """A wrapped `warning:` continues under its text, so it reads as one item and never as a new line."""
    r = CliRunner(env={"COLUMNS": "60"}).invoke(
        main, ["estimate", "llama-2-7b", "--gpu", "t4", "--attn", "flash_attention_2"]
    )
    lines = r.stderr.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("warning: flash_attention_2"))
    assert lines[first + 1].startswith(" " * len("warning: ")), lines
    assert lines[first + 1].strip(), lines
    joined = " ".join(line.strip() for line in lines[first : first + 4])
    assert "use --attn sdpa" in joined  # the flag of the fix, whole


def test_the_footer_breaks_between_items():
    """`peak in forward (logits and loss)` and `units GiB = 1024³ B` stay whole when the footer wraps."""
    r = CliRunner(env={"COLUMNS": "80"}).invoke(
        main, ["estimate", "llama-2-7b", "--method", "qlora", "--gpu", "3060ti"]
    )
    footer = r.stdout[r.stdout.index("params:") :].split("\nfits")[0]
    assert "peak in forward (logits and loss)" in footer.replace("\n  · ", " · ")
    for line in footer.splitlines():
        assert "(logits and" not in line or "loss)" in line


@pytest.mark.parametrize(
    ("encoding", "expect"), [("ascii", "llama-2-7b - qlora - batch 1 x seq 8192"), ("latin-1", "batch 1 × seq")]
)
def test_a_terminal_that_is_not_utf8_gets_text_not_a_traceback(encoding: str, expect: str):
    """LANG=C / a latin-1 terminal: the report in what the encoding holds (ASCII boxes, `x` for `×`)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONIOENCODING": encoding, "COLUMNS": "80"}
    r = subprocess.run([sys.executable, "-m", "vramplan.cli", "estimate", "llama-2-7b", "--gpu", "t4", "--seq", "8k"],
                       capture_output=True, env=env, cwd=REPO_ROOT, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr.decode(encoding)
    assert b"Traceback" not in r.stderr
    assert expect in r.stdout.decode(encoding)
    assert "warning: --seq 8,192" in r.stderr.decode(encoding)


@pytest.fixture(scope="module")
def tiny_measurement():
    """One traced step of a tiny Llama on CPU and its estimate, rendered below at each width."""
    from tests.conftest import TINY_CONFIGS
    from vramplan.api import estimate
    from vramplan.measure.harness import run_step
    from vramplan.sources.profiles import find_gpu
    from vramplan.spec import model_spec_from_config, resolve_train

    m = model_spec_from_config(TINY_CONFIGS["llama"], "tiny-llama-with-a-long-name/config.json")
    t = resolve_train(m, method="qlora", seq=32)
    gpu = find_gpu("3060ti")
    return run_step(m, t, device="cpu", steps=1, gpu=gpu), estimate(m, gpu=gpu, train=t)


@pytest.mark.parametrize("width", WIDTHS)
def test_measure_and_simulate_table_fits_the_width(tiny_measurement, width: int):
    import io

    from rich.console import Console

    from vramplan.report.common import TrimmedLines
    from vramplan.report.measure import render_measurement

    out = io.StringIO()
    render_measurement(*tiny_measurement, Console(file=TrimmedLines(out), width=width))
    assert "traced GiB" in out.getvalue()
    check_lines(out.getvalue(), width, "measure")


@pytest.mark.parametrize("width", WIDTHS)
def test_fit_rows_name_their_optimizer_whole(width: int):
    """fit's optimizer is typed back (`--optim adamw_torch_fused`): whole on the page at any width (in its
    column, or spelled out under a narrow table's letters)."""
    out = CliRunner(env={"COLUMNS": str(width)}).invoke(main, ["fit", "llama-2-7b", "--gpu", "3060ti"]).stdout
    for optim in ("adamw_torch_fused", "adamw_8bit"):
        assert re.search(rf"(^|[\s=│]){optim}(\s|$)", out, re.M), (width, optim)
