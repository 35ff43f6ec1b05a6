"""`vramplan serve` on AWQ, GPTQ, FP8 and MXFP4 checkpoints of the current families at --tensor-parallel-size
1, 2, 4, 8 (issue 17's done-when): each answers, and what one GPU holds behaves as vLLM shards it.

Properties checked per family and format, each of which a sharding or counting error would break:
- the command answers (exit 0, the checkpoint's format named), or, when the TP size does not divide the
  attention heads, refuses in one line naming them (vLLM's rule);
- one rank's weights shrink strictly with the TP size, and the ranks together hold at least the whole model
  (norms, the router and the RoPE table are replicated, nothing is dropped);
- the quantized checkpoint is smaller than the model in bf16;
- the KV page of one rank holds max(1, kv_heads // tp) heads (replicated past their count), and a latent
  (MLA) cache is whole on every rank;
- more ranks never shrink a rank's KV pool once several GPUs share the work (tp 2 → 4 → 8), and the tokens
  the pool holds grow whenever a rank's page shrinks.
The quantization_config blocks are those the checkpoints ship (repositories named in test_served_weights.py);
MXFP4 is gpt-oss's `mxfp4` (experts only) on MoE families and llm-compressor's MXFP4 (compressed-tensors,
float4 in groups of 32) on dense ones.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from vramplan.cli import main
from vramplan.sources.profiles import load_model

# the families of the model issue that vramplan resolves (one profile each; MoE marked)
FAMILIES = {
    "qwen3-8b": False,
    "qwen3-30b-a3b": True,
    "qwen3.5-27b": False,
    "qwen3.5-35b-a3b": True,
    "gemma-3-12b": False,
    "gemma-4-26b-a4b": True,
    "gpt-oss-20b": True,
    "llama-4-scout-17b-16e": True,
    "glm-4.7-flash": True,
    "ministral-3-3b-reasoning-2512": False,
    "mistral-small-3.1-24b": False,
    "deepseek-v3": True,
    "nemotron-3-nano-30b-a3b": True,
}
AWQ = {"bits": 4, "group_size": 128, "quant_method": "awq", "version": "gemm", "zero_point": True}
GPTQ = {"bits": 4, "group_size": 128, "desc_act": False, "quant_method": "gptq", "sym": True}
FP8 = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
MXFP4_MOE = {"quant_method": "mxfp4"}
MXFP4_DENSE = {
    "quant_method": "compressed-tensors",
    "ignore": ["lm_head"],
    "config_groups": {
        "group_0": {
            "targets": ["Linear"],
            "weights": {"num_bits": 4, "type": "float", "strategy": "group", "group_size": 32},
        }
    },
}
GPU = "b200"  # 178 GiB CUDA-visible: DeepSeek-V3 fits from 4 ranks in 4-bit


def _config(tmp_path: Path, family: str, q: dict) -> str:
    cfg = {k: v for k, v in load_model(family).config.items() if k != "vramplan_profile"}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg | {"quantization_config": q}))
    return str(path)


def _serve(path: str, tp: int):
    args = ["serve", path, "--gpu", GPU, "--max-model-len", "8192", "--tensor-parallel-size", str(tp), "--json"]
    return CliRunner().invoke(main, args)


@pytest.mark.parametrize(
    ("family", "fmt"),
    [(family, fmt) for family in FAMILIES for fmt in ("awq", "gptq", "fp8", "mxfp4")],
)
def test_serve_answers_at_every_tp_size(tmp_path: Path, family: str, fmt: str) -> None:
    moe = FAMILIES[family]
    q = {"awq": AWQ, "gptq": GPTQ, "fp8": FP8, "mxfp4": MXFP4_MOE if moe else MXFP4_DENSE}[fmt]
    path = _config(tmp_path, family, q)
    m = load_model(family)
    rows = {}
    for tp in (1, 2, 4, 8):
        r = _serve(path, tp)
        if m.num_attention_heads % tp:
            assert r.exit_code == 2, r.output
            assert r.output.startswith(f"error: --tensor-parallel-size {tp} does not divide")
            assert f"'s {m.num_attention_heads} attention heads" in r.output
            assert r.output.count("\n") == 1  # one line, no traceback
            continue
        assert r.exit_code == 0, r.output
        d = json.loads(r.stdout)
        assert d["inputs"]["checkpoint"].startswith(fmt)
        rows[tp] = d
    assert sorted(rows)[:2] == [1, 2]
    weights = {tp: d["components"]["weights"] + d["components"]["quant_state"] for tp, d in rows.items()}
    sizes = sorted(rows)
    assert all(weights[a] > weights[b] for a, b in itertools.pairwise(sizes))
    assert all(tp * weights[tp] >= weights[1] for tp in sizes)
    bf16 = json.loads(_serve(family, 1).stdout)["components"]["weights"]
    assert weights[1] < bf16  # the checkpoint holds less than the model served in bf16
    latent = bool(m.config.get("kv_lora_rank"))
    page = {tp: d["vllm"]["page_bytes"] for tp, d in rows.items()}
    for tp in sizes:
        heads = max(1, m.num_key_value_heads // tp)
        expected = page[1] if latent else page[1] * heads // m.num_key_value_heads
        if m.model_type == "gemma4_text":  # the largest layer's page: the global layers' key heads split too
            expected = page[1] * _gemma4_widest(m, tp) // _gemma4_widest(m, 1)
        assert page[tp] == expected, (tp, page)
    pools = {tp: d["vllm"]["available_kv_bytes"] for tp, d in rows.items()}
    several = [tp for tp in sizes if tp >= 2]
    assert all(pools[a] <= pools[b] for a, b in itertools.pairwise(several))
    tokens = {tp: d["vllm"]["kv_cache_tokens"] for tp, d in rows.items()}
    for a, b in itertools.pairwise(sizes):
        if page[b] < page[a] and pools[a] > 0:
            assert tokens[b] > tokens[a], (a, b, tokens)


def _gemma4_widest(m, tp: int) -> int:
    """Gemma 4's widest layer's K per token on one of `tp` ranks: sliding (head_dim, key heads) or global
    (global_head_dim, num_global_key_value_heads), each split max(1, heads // tp)."""
    glob = max(1, m.config["num_global_key_value_heads"] // tp) * m.config["global_head_dim"]
    return max(max(1, m.num_key_value_heads // tp) * m.head_dim, glob)


# Total parameters (billions) as the model cards and names state them: Qwen3-8B 8.2, Qwen3-30B-A3B 30.5,
# Llama-4-Scout 109 (17 B active), GLM-4.7-Flash 30 (30B-A3B), Ministral 3 3B 3.4 + 0.4 vision, DeepSeek-V3 671,
# Nemotron-3-Nano-30B-A3B 31.6; the others their name's size.
STATED_BILLIONS = {
    "qwen3-8b": 8.2, "qwen3-30b-a3b": 30.5, "qwen3.5-27b": 27, "qwen3.5-35b-a3b": 35, "gemma-3-12b": 12,
    "gemma-4-26b-a4b": 26, "gpt-oss-20b": 21, "llama-4-scout-17b-16e": 109, "glm-4.7-flash": 30,
    "ministral-3-3b-reasoning-2512": 3.8, "mistral-small-3.1-24b": 24, "deepseek-v3": 671,
    "nemotron-3-nano-30b-a3b": 31.6,
}  # fmt: skip


@pytest.mark.parametrize(
    "family",
    list(FAMILIES),
)
def test_parameter_count_matches_the_stated_size(family: str) -> None:
    """The count the serve matrix shards, within 10 % of the total the model card states."""
    assert load_model(family).total_params == pytest.approx(STATED_BILLIONS[family] * 1e9, rel=0.10)
