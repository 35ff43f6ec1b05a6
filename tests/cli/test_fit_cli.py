from __future__ import annotations

import json
import sys
import types

import pytest
from click.testing import CliRunner

from vramplan.cli import main

GIB = 1024**3


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_fit_table():
    r = run("fit", "llama-2-7b", "--gpu", "3060ti")
    assert r.exit_code == 0, r.output
    out = r.output
    assert "llama-2-7b on rtx-3060-ti (8.00 GiB)" in out
    for needle in (
        "512",
        "1024",
        "2048",
        "4096",
        "8192",
        "max seq",
        "full",
        "lora",
        "qlora",
        "adamw_8bit",
        "largest LoRA rank (qlora, batch 1 × seq 1024",
        "* = tight",
    ):
        assert needle in out


def test_fit_json_keys():
    r = run("fit", "llama-2-7b", "--gpu", "4090", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    for key in (
        "model",
        "gpu",
        "error_band",
        "seqs",
        "caps",
        "rows",
        "max_lora_rank",
        "inputs",
        "notes",
        "local_gpu",
        "plot",
    ):
        assert key in d
    assert d["seqs"] == [512, 1024, 2048, 4096, 8192]
    assert d["gpu"]["key"] == "rtx-4090"
    assert d["error_band"] > 0
    assert len(d["rows"]) == 12
    row = d["rows"][-1]
    assert set(row) == {"method", "grad_ckpt", "optim", "max_batch", "max_seq"}
    assert [c["seq"] for c in row["max_batch"]] == d["seqs"]
    assert set(row["max_batch"][0]) == {"seq", "batch", "capped", "verdict", "device_bytes"}
    assert all(c["verdict"] in ("fits", "tight") for c in row["max_batch"] if c["batch"])
    assert all(c["verdict"] is None for r in d["rows"] for c in r["max_batch"] if not c["batch"])
    assert all(c["device_bytes"] <= d["gpu"]["memory_bytes"] for r in d["rows"] for c in r["max_batch"] if c["batch"])
    assert set(row["max_seq"]) == {"seq", "capped", "verdict", "device_bytes"}
    rank = d["max_lora_rank"]
    assert rank["lora_rank"] >= 1
    assert rank["method"] == "qlora"
    assert rank["seq"] == 1024
    assert d["local_gpu"] is None
    assert d["plot"] is None


def test_fit_method_and_seq_list():
    r = run(
        "fit",
        "llama-3-8b",
        "--gpu",
        "4090",
        "--method",
        "lora",
        "--seq",
        "2048,512",
        "--batch",
        "2",
        "--json",
    )
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert {row["method"] for row in d["rows"]} == {"lora"}
    assert len(d["rows"]) == 4
    assert d["seqs"] == [512, 2048]
    assert d["max_lora_rank"]["seq"] == 2048
    assert d["max_lora_rank"]["batch"] == 2


def test_fit_full_has_no_rank():
    r = run("fit", "tinyllama-1.1b", "--gpu", "a100-80gb", "--method", "full", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["max_lora_rank"] is None
    r = run("fit", "tinyllama-1.1b", "--gpu", "a100-80gb", "--method", "full")
    assert "largest LoRA rank: n/a" in r.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["fit", "llama-2-7b"], "fit needs a GPU"),
        (["fit", "llama-2-7b", "--gpu", "3060tii"], "did you mean 'rtx-3060-ti'"),
        (
            ["fit", "llama-2-7b", "--gpu", "4090", "--seq", "512,abc"],
            "--seq takes a positive integer such as 2048 or 2k",
        ),
        (["fit", "llama-2-7b", "--gpu", "4090", "--seq", "0"], "--seq must be a positive integer, got 0"),
        (["fit", "llama-2-7b", "--gpu", "4090", "--json", "--plot"], "cannot go with --json"),
        (["fit", "llama-2-7b", "--gpu", "4090", "--method", "qlro"], "did you mean 'qlora'"),
    ],
)
def test_fit_bad_input_one_line_exit_2(args, needle):
    r = run(*args)
    assert r.exit_code == 2
    assert needle in r.output
    assert "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_fit_terminal_plot():
    r = run("fit", "llama-2-7b", "--gpu", "3060ti", "--plot")
    assert r.exit_code == 0, r.output
    assert "device peak vs sequence length, batch 1" in r.output
    assert "sequence length (tokens, log scale)" in r.output
    assert "─ rtx-3060-ti 8.00 GiB" in r.output


def test_fit_png_plot(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "fit.png"
    r = run("fit", "llama-2-7b", "--gpu", "3060ti", "--method", "qlora", "--plot", str(path))
    assert r.exit_code == 0, r.output
    assert path.stat().st_size > 10_000
    assert f"plot written to {path}" in r.output.replace("\n", "")
    path2 = tmp_path / "fit2.png"
    r = run("fit", "llama-2-7b", "--gpu", "3060ti", "--plot", str(path2), "--json")
    assert r.exit_code == 0
    assert json.loads(r.output)["plot"] == str(path2)
    assert path2.stat().st_size > 10_000


def test_fit_does_not_import_torch_or_plot_libraries():
    from tests.conftest import HEAVY_MODULES, heavy_imports_after

    argv = ["fit", "llama-2-7b", "--gpu", "3060ti", "--json"]
    assert heavy_imports_after(argv, modules=(*HEAVY_MODULES, "matplotlib", "plotext")) == []


def test_estimate_suggest_still_works():
    r = run("estimate", "qwen2.5-7b", "--method", "lora", "--gpu", "4090", "--suggest", "--json")
    assert r.exit_code == 0, r.output
    sug = json.loads(r.output)["suggestions"]
    assert sug
    assert all({"change", "cost", "device_bytes", "verdict"} <= set(s) for s in sug)
    assert sug[0]["verdict"] in ("fits", "tight")
    r = run("estimate", "qwen2.5-7b", "--method", "lora", "--gpu", "4090", "--suggest")
    assert r.exit_code == 0
    assert "advice:" in r.output
    assert "GiB →" in r.output


# ---------------------------------------------------------------- --gpu auto / gpus --local (NVML mocked)


def fake_pynvml(gpus=(), fail_init=False):
    mod = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def init():
        if fail_init:
            raise NVMLError("NVML Shared Library Not Found")

    mod.NVMLError = NVMLError
    mod.nvmlInit = init
    mod.nvmlShutdown = lambda: None
    mod.nvmlSystemGetDriverVersion = lambda: "575.57"
    mod.nvmlDeviceGetCount = lambda: len(gpus)
    mod.nvmlDeviceGetHandleByIndex = lambda i: i
    mod.nvmlDeviceGetName = lambda h: gpus[h][0]
    mod.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(
        total=gpus[h][1], free=gpus[h][2], used=gpus[h][1] - gpus[h][2]
    )
    mod.nvmlDeviceGetCudaComputeCapability = lambda h: (8, 6)
    return mod


@pytest.fixture
def one_3060ti(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([("NVIDIA GeForce RTX 3060 Ti", 8 * GIB, 7 * GIB)]))


def test_fit_gpu_auto(one_3060ti):
    r = run("fit", "llama-2-7b", "--gpu", "auto")
    assert r.exit_code == 0, r.output
    assert "local GPU 0: NVIDIA GeForce RTX 3060 Ti, 8.00 GiB total, 7.00 GiB free now" in r.output.replace("\n", " ")
    d = json.loads(run("fit", "llama-2-7b", "--gpu", "auto", "--method", "qlora", "--seq", "2048", "--json").output)
    assert d["gpu"]["memory_bytes"] == 7 * GIB
    assert d["gpu"]["key"] == "rtx-3060-ti"
    assert d["local_gpu"]["free_bytes"] == 7 * GIB
    assert d["local_gpu"]["profile"] == "rtx-3060-ti"


def test_gpus_local(one_3060ti):
    r = run("gpus", "--local")
    assert r.exit_code == 0, r.output
    assert "NVIDIA GeForce RTX 3060 Ti" in r.output
    assert "rtx-3060-ti" in r.output
    assert "7.00" in r.output
    (g,) = json.loads(run("gpus", "--local", "--json").output)
    assert g == {
        "index": 0,
        "name": "NVIDIA GeForce RTX 3060 Ti",
        "total_bytes": 8 * GIB,
        "free_bytes": 7 * GIB,
        "used_bytes": 1 * GIB,
        "driver": "575.57",
        "compute_capability": "8.6",
        "profile": "rtx-3060-ti",
    }


@pytest.mark.parametrize(
    "args",
    [
        ["gpus", "--local"],
        ["fit", "llama-2-7b", "--gpu", "auto"],
        ["estimate", "llama-2-7b", "--gpu", "auto"],
    ],
)
@pytest.mark.parametrize("nvml", ["missing", "no driver"])
def test_no_gpu_is_one_line(monkeypatch, args, nvml):
    monkeypatch.setitem(sys.modules, "pynvml", None if nvml == "missing" else fake_pynvml(fail_init=True))
    r = run(*args)
    assert r.exit_code == 2
    assert len(r.output.strip().splitlines()) == 1
    assert "Traceback" not in r.output
    assert ("nvidia-ml-py" if nvml == "missing" else "no NVIDIA GPU or driver found") in r.output


def _row_methods(*args: str) -> set[str]:
    r = CliRunner().invoke(main, ["fit", *args, "--gpu", "a100-80gb", "--seq", "1k", "--json"])
    assert r.exit_code == 0, r.output
    return {row["method"] for row in json.loads(r.stdout)["rows"]}


@pytest.mark.parametrize(
    ("args", "yaml", "methods"),
    [
        ((), None, {"full", "lora", "qlora"}),  # nothing chosen: the overview
        (("--method", "lora"), None, {"lora"}),
        (("--method", "FULL"), None, {"full"}),
        (("--method", "freeze"), None, {"freeze"}),
        (("--method", "lora", "--quant", "nf4"), None, {"qlora"}),  # what resolve_train makes of it
        ((), "finetuning_type: lora\nquantization_bit: 4\n", {"qlora"}),  # the file chose
        ((), "finetuning_type: full\n", {"full"}),
        ((), "cutoff_len: 2048\n", {"full", "lora", "qlora"}),  # LLaMA-Factory's default lora: not a choice
        (("--method", "full"), "finetuning_type: lora\n", {"full"}),  # typed beats the file
    ],
)
def test_fit_rows_are_the_chosen_method(tmp_path, args: tuple[str, ...], yaml: str | None, methods: set[str]):
    """fit shows every method when none was chosen, and only the chosen one when it was (typed or in the
    --from file, not a tool's default)."""
    if yaml is None:
        assert _row_methods("llama-2-7b", *args) == methods
        return
    path = tmp_path / "train.yaml"
    path.write_text("model_name_or_path: meta-llama/Llama-2-7b-hf\n" + yaml)
    assert _row_methods("--from", str(path), *args) == methods
