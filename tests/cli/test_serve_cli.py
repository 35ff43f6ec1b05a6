from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from vramplan.api import estimate_serve
from vramplan.cli import main


def run(*args: str):
    return CliRunner().invoke(main, list(args), terminal_width=200)


def test_vllm_example_reports_kv_tokens_and_concurrency():
    r = run("serve", "llama-3-8b", "--gpu", "4090", "--max-model-len", "8192", "--max-num-seqs", "16")
    assert r.exit_code == 0, r.output
    assert "GPU KV cache size:" in r.output
    assert "Maximum concurrency for 8,192 tokens per request:" in r.output
    assert "KV cache" in r.output
    assert "weights" in r.output
    assert "fits" in r.output or "tight" in r.output


def test_vllm_lora_on_nf4_t4():
    r = run("serve", "qwen2.5-7b", "--gpu", "t4", "--quant", "nf4", "--lora-rank", "16", "--max-loras", "4")
    assert r.exit_code == 0, r.output
    assert "LoRA adapters" in r.output
    assert "quantization constants" in r.output
    assert "LoRA 4 × r16" in r.output


def test_hf_generate_example():
    r = run("serve", "llama-2-7b", "--gpu", "3060ti", "--engine", "hf", "--batch", "1", "--new-tokens", "512")
    assert r.exit_code == 0, r.output
    assert "transformers generate" in r.output
    assert "does not fit" in r.output  # 12.55 GiB of bf16 weights on an 8 GiB card
    assert "GPU KV cache size" not in r.output
    r = run("serve", "llama-2-7b", "--gpu", "3060ti", "--engine", "hf", "--quant", "nf4", "--json")
    assert json.loads(r.output)["verdict"] == "fits"


def test_serve_json_contract():
    r = run("serve", "llama-3-8b", "--gpu", "4090", "--max-model-len", "8192", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    keys = (
        "model",
        "engine",
        "peak_bytes",
        "reserved_bytes",
        "device_bytes",
        "peak_phase",
        "components",
        "overhead",
        "phases",
        "gpu_bytes",
        "headroom_bytes",
        "verdict",
        "params",
        "inputs",
        "vllm",
    )
    for key in keys:
        assert key in d
    assert set(d["components"]) == {"weights", "quant_state", "adapters", "kv_cache", "logits", "temporaries",
                                    "non_torch", "cuda_graphs"}  # fmt: skip
    # the JSON is the library's ServeBreakdown for the same inputs
    b = estimate_serve("llama-3-8b", gpu="4090", max_model_len=8192)
    assert d["components"] == b.components.as_dict()
    assert (d["peak_bytes"], d["reserved_bytes"], d["device_bytes"]) == (b.peak_bytes, b.reserved_bytes,
                                                                         b.device_bytes)  # fmt: skip
    v = d["vllm"]
    assert v["kv_cache_tokens"] == v["num_blocks"] * v["block_size"]
    assert v["max_model_len"] == 8192
    assert v["max_concurrency"] == pytest.approx(v["num_blocks"] / (8192 // 16), abs=1e-4)
    assert d["components"]["kv_cache"] == v["num_blocks"] * v["page_bytes"] * 32
    assert d["inputs"]["gpu_memory_utilization"] == 1.0  # vLLM 0.34: the extensible KV cache's default
    assert d["inputs"]["max_num_seqs"] == 256
    hf = json.loads(run("serve", "llama-2-7b", "--engine", "hf", "--json").output)
    assert "vllm" not in hf
    assert set(hf["phases"]) == {"prefill", "decode"}
    assert hf["verdict"] is None  # no --gpu


def test_too_long_max_model_len_is_oom_with_the_length_that_fits():
    r = run("serve", "qwen2.5-7b", "--gpu", "3060ti", "--quant", "nf4", "--vllm-version", "0.10")
    assert r.exit_code == 0, r.output
    assert "does not fit" in r.output
    assert "largest --max-model-len that fits" in " ".join(r.output.split())  # a wrapped line read as one
    # vLLM 0.34 keeps max(1 GiB, 0.75 × peak) free besides the peak: nothing is left for the cache on 8 GiB
    r = run("serve", "qwen2.5-7b", "--gpu", "3060ti", "--quant", "nf4")
    assert "No available memory for the cache blocks" in " ".join(r.output.split())


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--engine", "vlm"], "did you mean 'vllm'"),
        (["--gpu", "4090x"], "did you mean"),
        (["--kv-cache-dtype", "fp9"], "did you mean 'fp8'"),
        (["--max-lora-rank", "12"], "--max-lora-rank value '12'"),
        (["--engine", "hf", "--max-num-seqs", "4"], "--max-num-seqs applies to --engine vllm"),
        (["--engine", "hf", "--kv-cache-dtype", "fp8"], "is a vLLM option"),
        (["--new-tokens", "64"], "--new-tokens applies to --engine hf"),
        (["--gpu-memory-utilization", "1.5"], "(0, 1]"),
        (["--max-model-len", "100000"], "max_position_embeddings 8192"),
        (["--merged-lora", "--max-loras", "2"], "cannot serve --max-loras 2"),
        (["--quant", "nf3"], "did you mean 'nf4'"),
        (["--max-loras", "0"], "--max-loras must be a positive integer"),
        (["--lora-target", "q_prj"], "did you mean 'q_proj'"),
    ],
)
def test_bad_input_one_line_exit_2(args, needle):
    gpu = [] if "--gpu" in args else ["--gpu", "4090"]
    r = run("serve", "llama-3-8b", *gpu, *args)
    assert r.exit_code == 2, r.output
    assert needle in r.output
    assert "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_vllm_without_gpu_is_one_line_error():
    r = run("serve", "llama-3-8b")
    assert r.exit_code == 2
    assert "add --gpu" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_serve_does_not_import_torch():
    from tests.conftest import heavy_imports_after

    assert (
        heavy_imports_after(
            ["serve", "llama-3-8b", "--gpu", "4090", "--json"],
            ["serve", "llama-2-7b", "--engine", "hf", "--quant", "nf4", "--max-loras", "2"],
        )
        == []
    )
