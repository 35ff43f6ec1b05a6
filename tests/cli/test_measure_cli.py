"""`vramplan measure` and `vramplan simulate`: the side-by-side table, JSON, refusals, OOM as a result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import TINY_CONFIGS
from vramplan.cli import main


def run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = Path(tmp_path_factory.mktemp("tiny")) / "config.json"
    path.write_text(json.dumps(TINY_CONFIGS["llama"]))
    return str(path)


def test_measure_prints_the_side_by_side(tiny_config: str) -> None:
    r = run("measure", tiny_config, "--method", "lora", "--seq", "32", "--device", "cpu", "--steps", "2")
    assert r.exit_code == 0, r.output
    out = r.stdout
    for line in ("traced GiB", "estimated GiB", "error", "weights", "optimizer states", "logits / loss",
                 "tensor peak", "backward phase peak", "traced on CPU, 2 steps vs estimate"):  # fmt: skip
        assert line in out
    assert "step 2/2" in r.stderr  # progress on stderr


def test_measure_json_is_the_estimate_shape_plus_measured_fields(tiny_config: str) -> None:
    import torch

    r = run("measure", tiny_config, "--method", "qlora", "--seq", "32", "--device", "cpu", "--steps", "2",
            "--gpu", "3060ti", "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    estimate = json.loads(run("estimate", tiny_config, "--method", "qlora", "--seq", "32", "--gpu", "3060ti",
                              "--json").stdout)  # fmt: skip
    assert set(estimate) - {"parallel"} <= set(d)
    assert d["source"] == "measure"
    assert d["estimate"]["source"] == "estimate"
    assert d["components"].keys() == estimate["components"].keys()
    # the traced adapters, by hand: 2 layers × r16 × Σ(in + out) over q 64→64, k 64→32, v 64→32, o 64→64,
    # gate 64→128, up 64→128, down 128→64; fp32 (PEFT's autocast_adapter_dtype)
    adapters = 2 * 16 * ((64 + 64) + 2 * (64 + 32) + (64 + 64) + 2 * (64 + 128) + (128 + 64))
    assert d["params"]["trainable"] == adapters
    assert d["components"]["trainable"] == 4 * adapters
    # the top level is the traced peak phase, and the error is the estimate's against it
    assert d["phases"][d["peak_phase"]]["total_bytes"] == d["peak_bytes"]
    assert d["peak_bytes"] == max(p["total_bytes"] for p in d["phases"].values())
    peak_error = 100 * (d["estimate"]["peak_bytes"] - d["peak_bytes"]) / d["peak_bytes"]
    assert d["error_pct"]["peak_bytes"] == pytest.approx(peak_error)
    assert d["device"] == "cpu"
    assert d["steps"] == 2
    assert d["outcome"] == "ok"
    assert d["oom"] is None
    assert d["verdict"] == "fits"
    assert d["cuda"] is None
    assert set(d["error_pct"]) == {*d["components"], "peak_bytes"}
    assert d["error_bytes"] == {
        **{k: d["estimate"]["components"][k] - v for k, v in d["components"].items()},
        "peak_bytes": d["estimate"]["peak_bytes"] - d["peak_bytes"],
    }
    # a ratio only for a part of at least 0.1 % of the traced peak
    for k, v in d["components"].items():
        assert (d["error_pct"][k] is None) == (v < 0.001 * d["peak_bytes"] or v == 0), k
    assert d["versions"]["torch"] == torch.__version__


def test_measure_out_of_memory_is_a_result(tiny_config: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    def backward(self: torch.Tensor, *args, **kwargs) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")

    monkeypatch.setattr(torch.Tensor, "backward", backward)
    r = run("measure", tiny_config, "--method", "lora", "--seq", "32", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "does not fit: out of memory in backward of step 1, after reaching 0.00 GiB" in r.stdout
    r = run("measure", tiny_config, "--method", "lora", "--seq", "32", "--device", "cpu", "--json")
    d = json.loads(r.stdout)
    assert d["outcome"] == "oom"
    assert d["verdict"] == "oom"
    assert d["oom"]["phase"] == "backward"
    assert d["oom"]["step"] == 1


def test_measure_refuses_7b_on_cpu() -> None:
    r = run("measure", "llama-2-7b", "--method", "qlora", "--device", "cpu")
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "llama-2-7b (6.7B parameters) on CPU is impractical: use `vramplan simulate` or a GPU" in lines[0]


def test_measure_cuda_without_cuda_is_one_line(no_cuda: None) -> None:
    r = run("measure", "tinyllama-1.1b", "--method", "lora", "--device", "cuda")
    assert r.exit_code == 2
    assert r.stderr.count("\n") == 1
    assert r.stderr.startswith("error: --device cuda: torch ")


def test_simulate_qlora_7b_on_a_3060ti() -> None:
    r = run("simulate", "llama-2-7b", "--method", "qlora", "--gpu", "3060ti")  # its time: benchmarks/simulate_7b.py
    assert r.exit_code == 0, r.output
    assert "traced on meta tensors" in r.stdout
    assert "quantization constants" in r.stdout
    assert "rtx-3060-ti" in r.stdout
    assert "fits" in r.stdout or "tight" in r.stdout


def test_simulate_lora_7b_on_fake_tensors() -> None:
    r = run("simulate", "llama-2-7b", "--method", "lora", "--seq", "512", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["source"] == "simulate"
    assert d["device"] == "fake"
    gib = 1024**3
    assert 16 * gib < d["peak_bytes"] < 18 * gib  # 12.6 GiB bf16 weights + 3.7 GiB activations + adapters
    # the allocator replayed on the traced sequence: three settings, each at or above the tensor peak, and the
    # simulated Breakdown's reserved figure is the default replay's (+ the 32 MiB cuBLAS workspace, untraced)
    replay = d["allocator_replays"]["replay"]
    assert set(replay) == {"default", "default, from_pretrained(device_map) load", "expandable_segments:True"}
    for f in replay.values():
        assert f["tensor_peak_bytes"] == d["peak_bytes"]
        assert d["peak_bytes"] <= f["max_memory_allocated"] <= f["max_memory_reserved"]
        assert f["min_free_bytes"] <= f["max_memory_reserved"]
    cublas = 8 * 4 * 1024**2 + 8 * 16 * 1024  # CUBLAS_WORKSPACE_CONFIG ":4096:8" + ":16:8"
    assert d["reserved_bytes"] == replay["default"]["max_memory_reserved"] + cublas
    assert set(d["allocator_replays"]["estimate"]) == {"default", "expandable_segments:True"}


@pytest.mark.slow
def test_measure_tinyllama_on_cpu() -> None:
    """About 100 s on 2 cores: random init of 1.1B bf16 weights, then three bf16 steps of 128 tokens."""
    r = run("measure", "tinyllama-1.1b", "--method", "lora", "--seq", "128", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "tinyllama-1.1b · lora · batch 1 × seq 128 · traced on CPU, 3 steps vs estimate" in r.stdout


def test_measure_save_needs_cuda(tiny_config: str) -> None:
    r = run("measure", tiny_config, "--method", "lora", "--device", "cpu", "--save")
    assert r.exit_code == 2
    assert "--save stores CUDA measurements; --device cpu has none" in r.stderr


@pytest.mark.parametrize("command", ["measure", "simulate"])
def test_missing_torch_is_one_line_naming_the_install(command: str):
    """After the quickstart's `pip install vramplan` only (no torch): one `error:` line, exit 2, naming what
    to install, not a ModuleNotFoundError traceback (issue 16)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # as if torch were not installed\n"
        "from vramplan.cli import main\n"
        f"main(['{command}', 'tinyllama-1.1b', '--method', 'lora'])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    assert "needs torch" in lines[0]
    assert "pip install 'vramplan[measure]'" in lines[0]


def test_cpu_measure_refuses_a_step_larger_than_ram_up_front():
    """batch 4096 × seq 8192 of TinyLlama needs ~90,000 GiB: refused before building anything."""
    import time

    start = time.monotonic()
    r = CliRunner().invoke(
        main, ["measure", "tinyllama-1.1b", "--device", "cpu", "--method", "lora", "--batch", "4096", "--seq", "8192"]
    )
    assert r.exit_code == 2, r.output
    assert "of RAM" in r.output
    assert time.monotonic() - start < 20


@pytest.mark.parametrize(
    ("estimated", "measured", "shown"),
    [
        (4096, 1, "Δ +0.0 MiB"),  # the "+409,500 %" of a near-zero base
        (640 * 2**20, 0, "Δ +640.0 MiB"),  # Mixtral's logits against a tracer that saw none: not "+8e9 %"
        (0, 0, "—"),
        (110 * 2**20, 100 * 2**20, "+10.0 %"),  # a tenth of the peak: the ratio
        (3 * 2**20, 2 * 2**20, "+50.0 %"),  # 2 MiB, over 0.1 % of the 1 GiB peak: still a ratio
        (2**20, 2**19, "Δ +0.5 MiB"),  # under it
    ],
)
def test_error_cell_is_a_ratio_only_against_a_real_base(estimated: int, measured: int, shown: str) -> None:
    from vramplan.report.measure import _err_text

    assert _err_text(estimated, measured, peak=2**30).plain == shown
