"""One calibration, every command: estimate, fit, --suggest, the advice lines and serve compute with the same
overheads once a run is stored for the GPU (issue: estimate said 9.09 GiB, does not fit, while fit said batch 1
fits at the same length)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from vramplan.cli import main
from vramplan.spec.overheads import CUBLAS_WORKSPACE_BYTES, CUDA_CONTEXT_BYTES, ERROR_BAND, MIB, Overheads
from vramplan.trust.calibration import RunRecord, append_run

GIB = 1024**3
ALLOCATED = 5 * GIB
RESERVED = ALLOCATED + ALLOCATED // 4  # allocator +25 %
CONTEXT = 900 * MIB


@pytest.fixture
def calibrated_store(tmp_path, monkeypatch):
    store = tmp_path / "runs.jsonl"
    append_run(
        RunRecord(
            gpu_name="NVIDIA GeForce RTX 3060 Ti",
            gpu_key="rtx-3060-ti",
            model="llama-2-7b",
            allocated_bytes=ALLOCATED,
            reserved_bytes=RESERVED,
            device_bytes=RESERVED + CONTEXT,
            inputs={"method": "qlora"},
        ),
        store,
    )
    monkeypatch.setenv("VRAMPLAN_STORE", str(store))
    return store


def _json(*args: str) -> dict:
    r = CliRunner().invoke(main, [*args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_calibrated_overheads_replace_the_defaults():
    from vramplan.spec.overheads import Calibration

    cal = Calibration("rtx-3060-ti", 1, CONTEXT, 0.25, None)
    o = Overheads.calibrated(cal)
    assert (o.cuda_context_bytes, o.allocator_ratio, o.error_band) == (CONTEXT, 0.25, ERROR_BAND)
    assert o.allocator_bytes(4 * GIB) == GIB + CUBLAS_WORKSPACE_BYTES
    assert Overheads.calibrated(None) == Overheads()


def test_estimate_applies_the_stored_calibration(calibrated_store):
    d = _json("estimate", "llama-2-7b", "--method", "qlora", "--seq", "2048", "--gpu", "3060ti")
    assert d["overhead"]["cuda_context_bytes"] == CONTEXT
    assert d["overhead"]["allocator_overhead_bytes"] == d["peak_bytes"] // 4 + CUBLAS_WORKSPACE_BYTES
    assert d["inputs"]["calibration"]["n_runs"] == 1


def test_fit_agrees_with_estimate_at_every_cell(calibrated_store):
    """fit's largest batch at seq 2048 is the largest batch `estimate` calls fits or tight, under the same
    calibration; and its verdict at that batch is estimate's."""
    seq = "2048"
    table = _json("fit", "llama-2-7b", "--method", "qlora", "--seq", seq, "--gpu", "3060ti")
    row = next(r for r in table["rows"] if r["grad_ckpt"] and r["optim"] == "adamw_torch_fused")
    cell = row["max_batch"][0]
    base = ["estimate", "llama-2-7b", "--method", "qlora", "--seq", seq, "--gpu", "3060ti"]
    if cell["batch"]:
        at = _json(*base, "--batch", str(cell["batch"]))
        assert at["device_bytes"] == cell["device_bytes"]
        assert at["verdict"] == cell["verdict"]
    above = _json(*base, "--batch", str(cell["batch"] + 1))
    assert above["verdict"] == "oom"


def test_suggestions_are_estimates_under_the_same_calibration(calibrated_store):
    """Each suggestion's figure is the estimate of its changed settings with the calibrated overheads, and its
    device total is what `estimate` says for those settings."""
    from vramplan.api import estimate
    from vramplan.cli_options import resolve_gpu
    from vramplan.plan.advice import suggest
    from vramplan.sources.profiles import load_model
    from vramplan.spec import resolve_train

    g = resolve_gpu("3060ti")
    assert g.overheads.calibration is not None
    m = load_model("llama-2-7b")
    t = resolve_train(m, method="qlora", seq=2048)
    found = suggest(m, t, g)
    assert found
    for s in found:
        assert s.breakdown.overheads == g.overheads, s.change
        assert estimate(m, gpu="3060ti", train=s.breakdown.train).device_bytes == s.device_bytes, s.change
    d = _json("estimate", "llama-2-7b", "--method", "qlora", "--seq", "2048", "--gpu", "3060ti", "--suggest")
    assert [x["device_bytes"] for x in d["suggestions"]] == [s.device_bytes for s in found]


def test_serve_uses_the_calibrated_context(calibrated_store):
    hf = _json("serve", "llama-2-7b", "--engine", "hf", "--gpu", "3060ti", "--quant", "nf4")
    assert hf["overhead"]["cuda_context_bytes"] == CONTEXT
    assert hf["overhead"]["allocator_overhead_bytes"] == hf["peak_bytes"] // 4 + CUBLAS_WORKSPACE_BYTES
    assert hf["inputs"]["calibration"]["n_runs"] == 1
    other = _json("serve", "llama-2-7b", "--engine", "hf", "--gpu", "4090", "--quant", "nf4")
    assert other["overhead"]["cuda_context_bytes"] == CUDA_CONTEXT_BYTES  # no run stored for a 4090


def test_a_suggested_flag_typed_gives_the_suggested_figure():
    """Typing a suggestion's flags reproduces its estimate (the kbit-prep change keeps checkpointing on: kbit
    prep is what turns it on by default, so the flags say --grad-ckpt too)."""
    import shlex

    base = ["estimate", "llama-2-7b", "--method", "qlora", "--seq", "2048", "--gpu", "3060ti"]
    d = _json(*base, "--suggest")
    kbit = [s for s in d["suggestions"] if s["change"].startswith("--no-kbit-prep")]
    assert kbit
    flags = kbit[0]["change"].split(" (")[0]
    assert _json(*base, *shlex.split(flags))["device_bytes"] == kbit[0]["device_bytes"]
