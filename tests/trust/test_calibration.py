"""The calibration store: append, read, corrupt lines, and what a calibration does to an estimate."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from vramplan.api import estimate
from vramplan.cli import main
from vramplan.estimator.allocator_slack import ERRORS
from vramplan.spec.overheads import CUDA_CONTEXT_BYTES, ERROR_BAND, MIB
from vramplan.trust.calibration import RunRecord, append_run, default_store, derive, read_runs

GIB = 1024**3


def _run(**kw) -> RunRecord:
    base = {
        "gpu_name": "NVIDIA GeForce RTX 3060 Ti",
        "gpu_key": "rtx-3060-ti",
        "model": "llama-2-7b",
        "allocated_bytes": 5 * GIB,
        "reserved_bytes": 5 * GIB + 512 * MIB,  # ratio 0.1
        "device_bytes": 5 * GIB + 512 * MIB + 600 * MIB,  # context 600 MiB
        "inputs": {"method": "qlora", "batch": 1, "seq": 1024},
        "tracker": {"weights": 4 * GIB},
        "estimate": {"peak_bytes": 5 * GIB, "reserved_bytes": 5 * GIB, "device_bytes": 6 * GIB},
        "versions": {"torch": "2.13.0"},
        "driver": "580.1",
        "cuda": "12.8",
    }
    return RunRecord(**{**base, **kw})


def test_store_is_isolated_in_tests(tmp_path):
    assert "vramplan-store" in str(default_store())


def test_append_then_read(tmp_path):
    store = tmp_path / "sub" / "runs.jsonl"
    append_run(_run(), store)
    append_run({"gpu_name": "NVIDIA A100-SXM4-40GB", "model": "m", "allocated_bytes": 1, "reserved_bytes": 2}, store)
    runs = read_runs(store)
    assert [r.model for r in runs] == ["llama-2-7b", "m"]
    assert runs[0].tracker == {"weights": 4 * GIB}
    assert runs[0].time
    assert runs[1].key == "NVIDIA A100-SXM4-40GB"


def test_corrupt_line_skipped_with_warning_nothing_lost(tmp_path, capsys):
    store = tmp_path / "runs.jsonl"
    append_run(_run(model="a"), store)
    with store.open("a") as f:
        f.write('{"gpu_name": "x", "model": tru\n')  # a run cut short
        f.write("[1, 2]\n")
    append_run(_run(model="b"), store)
    runs = read_runs(store)
    err = capsys.readouterr().err.splitlines()
    assert [line.split(": skipped")[0].rsplit(" ", 2)[-2:] for line in err] == [["line", "2"], ["line", "3"]]
    assert all(line.startswith("warning: ") for line in err)
    assert [r.model for r in runs] == ["a", "b"]


BAD_FIELDS = [
    {"allocated_bytes": "abc"},
    {"allocated_bytes": -5},
    {"reserved_bytes": -(2**40)},
    {"device_bytes": 2**60},
    {"allocated_bytes": True},
    {"reserved_bytes": 1},  # below allocated_bytes
    {"gpu_name": 7},
    {"gpu_key": ["rtx-3060-ti"]},
    {"estimate": {"device_bytes": "6 GiB"}},
    {"tracker": [1, 2]},
]


@pytest.mark.parametrize(
    "bad", BAD_FIELDS, ids=[next(iter(b)) + "=" + repr(next(iter(b.values()))) for b in BAD_FIELDS]
)
def test_badly_typed_record_is_skipped_and_commands_still_run(tmp_path, monkeypatch, bad):
    """One bad record (issue 16: allocated_bytes "abc" crashed estimate and fit for that GPU; a negative one
    inflated every estimate): skipped with one line, the good runs still calibrate, estimate and fit run."""
    store = tmp_path / "runs.jsonl"
    append_run(_run(), store)
    record = json.loads(store.read_text())
    with store.open("a") as f:
        f.write(json.dumps({**record, **bad}) + "\n")
    monkeypatch.setenv("VRAMPLAN_STORE", str(store))
    cal = derive("rtx-3060-ti", store)
    assert cal is not None
    assert cal.n_runs == 1
    assert cal.cuda_context_bytes == 600 * MIB
    for args in (["estimate", "llama-2-7b", "--gpu", "3060ti"], ["fit", "llama-2-7b", "--gpu", "3060ti", "--json"],
                 ["calibration"]):  # fmt: skip
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0, r.output
        assert "Traceback" not in r.output


def test_missing_store_reads_empty(tmp_path):
    assert read_runs(tmp_path / "none.jsonl") == []
    assert derive("rtx-3060-ti", tmp_path / "none.jsonl") is None


def test_derive(tmp_path):
    store = tmp_path / "runs.jsonl"
    append_run(_run(), store)
    append_run(_run(estimate={"device_bytes": 6 * GIB + 100 * MIB}), store)
    append_run(_run(gpu_key="a100-40gb"), store)
    cal = derive("rtx-3060-ti", store)
    assert cal.n_runs == 2
    assert cal.cuda_context_bytes == 600 * MIB  # device − reserved
    assert cal.allocator_ratio == pytest.approx(0.1)  # reserved / allocated − 1
    measured = 5 * GIB + 1112 * MIB
    residuals = [abs(6 * GIB - measured) / measured, abs(6 * GIB + 100 * MIB - measured) / measured]
    assert cal.residual_band == pytest.approx(max(residuals))  # max of the residuals below 10 runs


def test_uncalibrated_estimate_uses_defaults():
    b = estimate("llama-2-7b", gpu="3060ti", allocator_model="slack")
    assert b.overheads.calibration is None
    assert b.cuda_context_bytes == CUDA_CONTEXT_BYTES
    # the documented tensor band with the allocator model's error (torch's defaults) in quadrature
    assert b.error_band == math.hypot(ERROR_BAND, ERRORS["default", "min_limit_bytes"][0])
    # near the card the replay gives the verdict: the same tensor band with the replay's error for the step
    replayed = estimate("llama-2-7b", gpu="3060ti")
    assert replayed.replay_verdict
    assert replayed.overheads.calibration is None
    assert replayed.error_band == math.hypot(ERROR_BAND, replayed.replayed_allocator.need_error)


def test_large_cuda_context_turns_fits_into_tight_or_oom(monkeypatch, tmp_path):
    before = estimate("llama-2-7b", gpu="3060ti")
    assert before.verdict == "fits"
    store = tmp_path / "runs.jsonl"
    monkeypatch.setenv("VRAMPLAN_STORE", str(store))
    big = before.headroom_bytes + 600 * MIB  # context beyond the headroom the default left
    append_run(_run(device_bytes=5 * GIB + 512 * MIB + CUDA_CONTEXT_BYTES + big), store)
    after = estimate("llama-2-7b", gpu="3060ti")
    assert after.overheads.calibration.n_runs == 1
    assert after.cuda_context_bytes == CUDA_CONTEXT_BYTES + big
    assert after.verdict in ("tight", "oom")
    assert after.error_band == after.overheads.calibration.residual_band


def test_cli_calibration_json_and_estimate_note(tmp_path):
    store = tmp_path / "runs.jsonl"
    append_run(_run(), store)
    res = CliRunner().invoke(main, ["calibration", "--store", str(store), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert len(out["runs"]) == 1
    assert out["calibrations"][0]["n_runs"] == 1
    res = CliRunner().invoke(main, ["calibration", "--store", str(store)])
    assert res.exit_code == 0
    assert "rtx-3060-ti" in res.output
    res = CliRunner(env={"VRAMPLAN_STORE": str(store), "COLUMNS": "200"}).invoke(
        main, ["estimate", "llama-2-7b", "--gpu", "3060ti"]
    )
    assert res.exit_code == 0, res.output
    assert "calibrated on 1 run" in res.output
    res = CliRunner(env={"VRAMPLAN_STORE": str(store)}).invoke(
        main, ["estimate", "llama-2-7b", "--gpu", "3060ti", "--json"]
    )
    assert json.loads(res.output)["inputs"]["calibration"]["cuda_context_bytes"] == 600 * MIB
