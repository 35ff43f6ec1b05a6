"""The fuzz of tests/test_fuzz.py extended to the other commands (issue 16): `measure` and `simulate` up to the
point where torch would build the model, `validate --data` records, the calibration store (`calibration`,
and `estimate` / `fit` reading it), and `serve` / `fit` at other widths.

Same property: exit 0 or exit 2 with one `error:` line last, never a traceback, at most
`SECONDS_PER_CASE` seconds of CPU a case. measure and simulate run through the real CLI and the real harness entry
(`run_step`: the steps check, the version check, the device choice, the CPU size refusal); only the model
build and the training steps (`harness._build_and_train`) are replaced by a stop that says "torch would run
now", so no case builds a model. Deterministic (derandomized), `VRAMPLAN_FUZZ_SCALE` for more.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import event, given
from hypothesis import strategies as st

from tests.conftest import TINY_CONFIGS
from tests.test_fuzz import (
    JSON_VALUES,
    MODELS,
    SECONDS_PER_CASE,
    TRAIN_OPTIONS,
    _bounded,
    _settings,
    choice,
    int_text,
    invoke,
    mostly,
    odd_text,
    train_args,
)
from vramplan.cli import main


class TorchWouldRunNow(Exception):
    """Raised where the harness would build the model: every check before it has passed."""


@pytest.fixture(scope="module")
def stopped_harness():
    """The harness imported once (torch and transformers take seconds to import, more than a case's bound)
    and its model build replaced by TorchWouldRunNow for this module."""
    import vramplan.measure.harness as harness

    def stop(*args: Any, **kwargs: Any) -> None:
        raise TorchWouldRunNow

    mp = pytest.MonkeyPatch()
    mp.setattr(harness, "_build_and_train", stop)
    mp.setattr(harness.torch.cuda, "is_available", lambda: False)  # this machine's truth, also under --pretend-cuda
    tiny = Path(__file__).parent / "data" / "my-model"
    CliRunner().invoke(main, ["simulate", str(tiny)])  # untimed: the first trace imports bitsandbytes & co
    yield harness
    mp.undo()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("tiny") / "config.json"
    path.write_text(json.dumps(TINY_CONFIGS["llama"]))
    return str(path)


def invoke_harness(args: list[str]) -> str:
    """`vramplan *args` for measure / simulate: 'refused' (exit 2, one error line), 'reached' (every check
    passed, the build was next) or a failure (a traceback, a hang, another exit code)."""
    runner = CliRunner(env={"COLUMNS": "80", "HF_HUB_OFFLINE": "1"})
    with _bounded(SECONDS_PER_CASE):
        r = runner.invoke(main, args, catch_exceptions=True)
    if isinstance(r.exception, TorchWouldRunNow):
        return "reached"
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        import traceback

        tb = "".join(traceback.format_exception(type(r.exception), r.exception, r.exception.__traceback__))
        pytest.fail(f"vramplan {' '.join(map(repr, args))} raised:\n{tb}")
    assert r.exit_code == 2, (args, r.exit_code, r.output)  # exit 0 is impossible: the build was stopped
    assert "Traceback" not in r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines, (args, "exit 2 without a message")
    assert lines[-1].startswith("error:"), (args, r.stderr)
    assert sum(line.startswith("error:") for line in lines) == 1, (args, r.stderr)
    return "refused"


HARNESS_OPTIONS: dict[str, st.SearchStrategy[str]] = {
    **{k: v for k, v in TRAIN_OPTIONS.items() if k not in ("--gpus", "--strategy", "--offload")},
    "--steps": int_text(),
    "--gpu": mostly(st.sampled_from(["3060ti", "t4", "4090", "a100-80gb"]), odd_text()),
}


@_settings(500)
@given(
    command=st.sampled_from(["measure", "simulate"]),
    model=st.sampled_from(["TINY", "TINY", "TINY", *MODELS[:3]]).flatmap(lambda m: mostly(st.just(m), odd_text())),
    options=train_args(HARNESS_OPTIONS),
    device=st.one_of(st.none(), choice(["cpu", "cuda", "CPU", "gpu"])),
    flags=st.lists(st.sampled_from(["--save", "--json", "--weights", "--store"]), max_size=2, unique=True),
)
def test_measure_and_simulate_arguments(
    stopped_harness, tiny_model: str, command: str, model: str, options: list[str], device: str | None,
    flags: list[str],
):  # fmt: skip
    args = [command, tiny_model if model == "TINY" else model, *options]
    if command == "measure":
        args += ["--device", device] if device is not None else []
        for flag in flags:
            args += {"--save": ["--save"], "--json": ["--json"], "--weights": ["--weights", "/nonexistent/w"],
                     "--store": ["--store", "/nonexistent/dir/runs.jsonl"]}[flag]  # fmt: skip
    event(f"{command} {invoke_harness(args)}")  # --hypothesis-show-statistics: how many reach the build


def test_the_harness_fuzz_reaches_torch(stopped_harness, tiny_model: str):
    """The stop is reached (valid input is not refused), and a full-size model on CPU is refused up front."""
    assert invoke_harness(["measure", tiny_model, "--device", "cpu", "--seq", "32"]) == "reached"
    assert invoke_harness(["simulate", "llama-2-7b", "--method", "QLoRA", "--seq", "2k"]) == "reached"
    assert invoke_harness(["measure", "llama-3-70b", "--device", "cpu", "--method", "full"]) == "refused"
    assert invoke_harness(["measure", tiny_model, "--device", "cuda"]) == "refused"
    assert invoke_harness(["simulate", tiny_model, "--steps", "0"]) == "refused"


# ---------------------------------------------------------------- validate --data

VALIDATION_FIELDS = ["model", "params_b", "method", "base_dtype", "double_quant", "compute_dtype", "lora_rank",
                     "lora_alpha", "lora_targets", "batch_size", "seq_len", "grad_accum", "grad_checkpointing",
                     "optimizer", "flash_attention", "gpu", "measured_gb", "measure_kind", "is_measurement",
                     "confidence", "id"]  # fmt: skip


def _shipped_records(n: int = 3) -> list[dict[str, Any]]:
    from vramplan.trust.validate import DATA_PATH

    lines = Path(DATA_PATH).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:n]]


@_settings(300)
@given(
    changes=st.lists(st.dictionaries(st.sampled_from(VALIDATION_FIELDS), JSON_VALUES, max_size=4), max_size=3),
    extra_line=st.sampled_from(["", "{", "[]", "null", '"text"', "{}"]),
    as_json=st.booleans(),
    show_all=st.booleans(),
)
def test_validate_data_records(tmp_path_factory, changes: list[dict], extra_line: str, as_json: bool, show_all: bool):
    records = _shipped_records()
    for i, change in enumerate(changes):
        records[i].update(change)
    path = tmp_path_factory.mktemp("validate") / "data.jsonl"
    path.write_text("\n".join([*map(json.dumps, records), extra_line]) + "\n")
    invoke(["validate", "--data", str(path), *(["--json"] if as_json else []), *(["--all"] if show_all else [])])


# ---------------------------------------------------------------- the calibration store

RUN_FIELDS = ["gpu_name", "gpu_key", "model", "allocated_bytes", "reserved_bytes", "device_bytes", "inputs",
              "tracker", "estimate", "versions", "driver", "cuda"]  # fmt: skip
GIB = 1024**3
GOOD_RUN = {
    "gpu_name": "NVIDIA GeForce RTX 3060 Ti", "gpu_key": "rtx-3060-ti", "model": "llama-2-7b",
    "allocated_bytes": 5 * GIB, "reserved_bytes": 5 * GIB + GIB // 2, "device_bytes": 6 * GIB,
    "inputs": {"method": "qlora"}, "tracker": {"weights": 4 * GIB},
    "estimate": {"peak_bytes": 5 * GIB, "reserved_bytes": 5 * GIB, "device_bytes": 6 * GIB},
    "versions": {"torch": "2.13.0"}, "driver": "580.1", "cuda": "12.8",
}  # fmt: skip


@_settings(300)
@given(
    changes=st.lists(st.dictionaries(st.sampled_from(RUN_FIELDS), JSON_VALUES, max_size=3), min_size=1, max_size=4),
    junk=st.sampled_from(["", "{", "[1, 2]", "\x00\x01", "null"]),
    command=st.sampled_from(["calibration", "calibration --json", "estimate", "fit", "serve"]),
)
def test_calibration_store_records(tmp_path_factory, changes: list[dict], junk: str, command: str):
    """Any store: `calibration` lists what it can read, and the commands that calibrate a GPU still answer."""
    path = tmp_path_factory.mktemp("store") / "runs.jsonl"
    path.write_text("\n".join([*(json.dumps({**GOOD_RUN, **c}) for c in changes), junk]) + "\n")
    args = {
        "calibration": ["calibration"],
        "calibration --json": ["calibration", "--json"],
        "estimate": ["estimate", "llama-2-7b", "--gpu", "3060ti", "--json"],
        "fit": ["fit", "llama-2-7b", "--gpu", "3060ti", "--method", "qlora", "--seq", "1k"],
        "serve": ["serve", "llama-2-7b", "--gpu", "3060ti", "--quant", "nf4"],
    }[command]
    r = invoke(args, env={"VRAMPLAN_STORE": str(path)})
    assert r.exit_code == 0, r.output  # a store never breaks a command
    if command == "estimate":
        from tests.test_fuzz import check_verdict

        check_verdict(json.loads(r.stdout))
