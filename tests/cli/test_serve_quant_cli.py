"""`vramplan serve` on pre-quantized checkpoints (a config.json with its quantization_config) at tensor-parallel
sizes 1, 2, 4, 8: it answers, names the format, and one GPU's weights shrink with the TP size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from vramplan.cli import main
from vramplan.sources.profiles import load_model

FORMATS = {
    "awq": ("llama-3-8b", {"bits": 4, "group_size": 128, "quant_method": "awq", "version": "gemm", "zero_point": True}),
    "gptq": ("llama-3-8b", {"bits": 4, "group_size": 128, "desc_act": True, "quant_method": "gptq", "sym": True}),
    "fp8": ("llama-3-8b", {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}),
    "mxfp4": (
        "gpt-oss-20b",
        {
            "quant_method": "mxfp4",
            "modules_to_not_convert": [
                "model.layers.*.self_attn",
                "model.layers.*.mlp.router",
                "model.embed_tokens",
                "lm_head",
            ],
        },
    ),
}


def checkpoint(tmp_path: Path, fmt: str) -> str:
    base, q = FORMATS[fmt]
    cfg = {k: v for k, v in load_model(base).config.items() if k != "vramplan_profile"}
    path = tmp_path / fmt / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(cfg | {"quantization_config": q}))
    return str(path)


def run(*args: str):
    return CliRunner().invoke(main, list(args), terminal_width=200)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_quantized_checkpoints_at_every_tp_size(tmp_path: Path, fmt: str) -> None:
    path = checkpoint(tmp_path, fmt)
    weights = []
    for tp in (1, 2, 4, 8):
        r = run("serve", path, "--gpu", "h100", "--max-model-len", "8192", "--tensor-parallel-size", str(tp), "--json")
        assert r.exit_code == 0, r.output
        d = json.loads(r.stdout)
        assert d["inputs"]["checkpoint"].startswith(fmt)
        assert d["inputs"]["tensor_parallel_size"] == tp
        assert d["vllm"]["kv_cache_tokens"] > 0
        weights.append(d["components"]["weights"] + d["components"]["quant_state"])
    assert weights == sorted(weights, reverse=True)
    # replicated norms, RoPE table and (below tp 8) nothing else: 8 ranks hold at least the whole model
    assert 8 * weights[3] >= weights[0] > 7 * weights[3]
    r = run("serve", path, "--gpu", "h100", "--max-model-len", "8192", "-tp", "2")
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())  # the header wraps at the console width
    assert "TP 2 × PP 1, figures per GPU" in text
    assert "GPU KV cache size:" in text


def test_gpu_memory_gib_replaces_the_total() -> None:
    r = run("serve", "llama-3-8b", "--gpu-memory-gib", "23.5", "--max-model-len", "8192", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["vllm"]["total_bytes"] == int(23.5 * 1024**3)
    r = run("serve", "llama-3-8b", "--gpu-memory-gib", "-1")
    assert r.exit_code == 2
    assert "--gpu-memory-gib must be a positive number" in r.output


def test_vllm_version_is_checked() -> None:
    r = run("serve", "llama-3-8b", "--gpu", "4090", "--vllm-version", "1.2")
    assert r.exit_code == 2
    assert "--vllm-version '1.2' is not a 0.x release" in r.output


def test_a_quantized_hub_name_resolved_to_a_profile_is_said() -> None:
    """`Qwen/Qwen2.5-7B-Instruct-AWQ` offline is the qwen2.5-7b profile, which has no quantization_config:
    the estimate is unquantized and says so."""
    r = run("serve", "Qwen/Qwen2.5-7B-Instruct-AWQ", "--gpu", "4090", "--max-model-len", "8192")
    assert r.exit_code == 0, r.output
    assert "(AWQ) was resolved to a built-in profile without its quantization_config" in r.output


@pytest.mark.parametrize(
    ("base", "q", "gpu", "sizes"),
    [
        ("gpt-oss-120b", {"quant_method": "mxfp4"}, "h100", (1, 2, 4, 8)),
        ("qwen3-235b-a22b", FORMATS["fp8"][1], "h200", (2, 4, 8)),  # 220 GiB of FP8: from two H200s on
        ("deepseek-v3", FORMATS["fp8"][1], "h200", (8,)),  # 628 GiB of FP8; MLA: one latent per token
    ],
)
def test_the_large_families_quantized_per_gpu(tmp_path: Path, base: str, q: dict, gpu: str, sizes: tuple) -> None:
    cfg = {k: v for k, v in load_model(base).config.items() if k != "vramplan_profile"}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg | {"quantization_config": q}))
    for tp in sizes:
        r = run("serve", str(path), "--gpu", gpu, "--max-model-len", "8192", "-tp", str(tp), "--json")
        assert r.exit_code == 0, r.output
        d = json.loads(r.stdout)
        assert d["problems"] == [], (tp, d["problems"])
        assert d["vllm"]["kv_cache_tokens"] >= 8192
