"""Pre-quantized checkpoints and tensor parallelism, counted by hand: what each format stores per linear
(vLLM 0.34.0 quantization layers, cited in served_weights.py) and what one rank holds.

The quantization_config blocks are those the checkpoints ship in their config.json (repository named at each).
"""

from __future__ import annotations

import pytest

from vramplan.api import estimate_serve
from vramplan.errors import VramplanError
from vramplan.estimator.kvcache import vllm_page_bytes
from vramplan.estimator.served_weights import served_weight_bytes, weight_matrices
from vramplan.estimator.vllm import rank_model
from vramplan.sources.profiles import find_gpu, load_model
from vramplan.spec import ModelSpec, model_spec_from_config
from vramplan.spec.checkpoint_quant import read_checkpoint_quant
from vramplan.spec.serve import resolve_serve

# Qwen/Qwen2.5-7B-Instruct-AWQ
AWQ = {
    "bits": 4,
    "group_size": 128,
    "modules_to_not_convert": None,
    "quant_method": "awq",
    "version": "gemm",
    "zero_point": True,
}
# Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4
GPTQ = {
    "bits": 4,
    "damp_percent": 0.01,
    "desc_act": False,
    "group_size": 128,
    "quant_method": "gptq",
    "sym": True,
    "true_sequential": True,
}
# Qwen/Qwen3-8B-FP8
FP8_BLOCK = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}
# openai/gpt-oss-20b
MXFP4 = {
    "modules_to_not_convert": [
        "model.layers.*.self_attn",
        "model.layers.*.mlp.router",
        "model.embed_tokens",
        "lm_head",
    ],
    "quant_method": "mxfp4",
}
# llm-compressor W4A16, group 128, act-order
W4A16 = {
    "quant_method": "compressed-tensors",
    "format": "pack-quantized",
    "ignore": ["lm_head"],
    "config_groups": {
        "group_0": {
            "targets": ["Linear"],
            "weights": {
                "num_bits": 4,
                "type": "int",
                "strategy": "group",
                "group_size": 128,
                "symmetric": True,
                "actorder": "group",
            },
        }
    },
}
NVFP4 = {"quant_method": "modelopt", "quant_algo": "NVFP4", "exclude_modules": ["lm_head"]}


def quantized(name: str, q: dict) -> ModelSpec:
    m = load_model(name)
    cfg = {k: v for k, v in m.config.items() if k != "vramplan_profile"} | {"quantization_config": q}
    return model_spec_from_config(cfg, name)


# Qwen2.5-7B: per layer K·N of q, k, v, o, gate, up, down (hidden 3584, 4 KV heads of 128, intermediate 18944)
QWEN7_LINEAR = 28 * (2 * 3584 * 3584 + 2 * 3584 * 512 + 3 * 3584 * 18944)


@pytest.mark.parametrize(
    ("q", "label"),
    [
        (AWQ, "awq int4 g128"),
        (GPTQ, "gptq int4 g128"),
        (GPTQ | {"desc_act": True}, "gptq int4 g128 act-order"),
        (FP8_BLOCK, "fp8 per-block 128x128"),
        ({"quant_method": "fp8", "activation_scheme": "static"}, "fp8 per-tensor"),
        (MXFP4, "mxfp4"),
        (W4A16, "gptq int4 g128 act-order"),  # compressed-tensors W4A16 stores as GPTQ does
        (NVFP4, "nvfp4"),
        ({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}, "bitsandbytes nf4"),
        # ISTA-DASLab/Meta-Llama-3-8B-Instruct-AQLM-2Bit-1x16 (transformers AqlmConfig fields)
        (
            {
                "quant_method": "aqlm",
                "in_group_size": 8,
                "nbits_per_codebook": 16,
                "num_codebooks": 1,
                "out_group_size": 1,
                "linear_weights_not_to_quantize": ["model.embed_tokens.weight", "lm_head.weight"],
            },
            "aqlm 1x16 1x8",
        ),
    ],
)
def test_quantization_config_is_read(q: dict, label: str) -> None:
    c = read_checkpoint_quant({"quantization_config": q})
    assert c is not None
    assert c.label == label


def test_unknown_quant_method_is_an_error() -> None:
    with pytest.raises(VramplanError, match="quant_method 'hqq' is not modelled"):
        read_checkpoint_quant({"quantization_config": {"quant_method": "hqq"}})
    # wrong types are one error line too (were a ValueError / AttributeError traceback)
    with pytest.raises(VramplanError, match="quantization_config is str 'x', not a JSON object"):
        read_checkpoint_quant({"quantization_config": "x"})
    with pytest.raises(VramplanError, match="quantization_config is malformed"):
        read_checkpoint_quant({"quantization_config": {"quant_method": "gptq", "bits": "ab"}})
    with pytest.raises(VramplanError, match="quantization_config is malformed"):
        read_checkpoint_quant({"quantization_config": {"quant_method": "fp8", "weight_block_size": 128}})


def test_awq_by_hand() -> None:
    """qweight K·N/2 + scales (K/128)·N·bf16 + qzeros (K/128)·N/2 per linear (every K here is a multiple of
    128); embeddings, lm_head, norms and biases stay bf16."""
    m = quantized("qwen2.5-7b", AWQ)
    s = resolve_serve(m, find_gpu("4090"))
    b = estimate_serve(m, serve=s, gpu="4090")
    rest = m.total_params - QWEN7_LINEAR
    rope = m.max_position_embeddings * 128 * 2  # vLLM's cos/sin table: positions · head_dim · bf16
    assert b.components.weights == QWEN7_LINEAR // 2 + rest * 2 + rope
    assert b.components.quant_state == QWEN7_LINEAR // 128 * 2 + QWEN7_LINEAR // 128 // 2


def test_gptq_act_order_index_before_034() -> None:
    """vLLM <= 0.33 (gptq_marlin.py) kept g_idx and its sort permutation, int32 over K, for act-order
    checkpoints; 0.34's auto_gptq.py registers neither."""
    m = quantized("qwen2.5-7b", GPTQ | {"desc_act": True})
    old, new = (
        served_weight_bytes(m, 2, resolve_serve(m, None, engine="hf").checkpoint, act_order_index=x)
        for x in (True, False)
    )
    k_per_layer = 3584 * 6 + 18944  # the input width of q, k, v, o, gate, up and of down
    assert old[1] - new[1] == 28 * k_per_layer * 2 * 4
    assert old[0] == new[0]


def test_fp8_block_scales_by_hand() -> None:
    """FP8 weights one byte each, fp32 scales per 128×128 block: ⌈N/128⌉·⌈K/128⌉ per linear."""
    m = quantized("qwen2.5-7b", FP8_BLOCK)
    w, scales = served_weight_bytes(m, 2, read_checkpoint_quant(m.config))
    blocks = 28 * (2 * 28 * 28 + 2 * 4 * 28 + 3 * 148 * 28)  # (N/128)·(K/128): 3584 = 28·128, 18944 = 148·128
    assert scales == blocks * 4
    assert w == QWEN7_LINEAR + (m.total_params - QWEN7_LINEAR) * 2


def test_mxfp4_experts_only_and_padded() -> None:
    """gpt-oss-20b: the experts in MXFP4 (0.5 B + one scale byte per 32), padded by the MoE kernels to
    hidden 3072 (256) and intermediate 2944 (128); attention, router, embeddings stay bf16."""
    m = load_model("gpt-oss-20b")
    m = model_spec_from_config(
        {k: v for k, v in m.config.items() if k != "vramplan_profile"} | {"quantization_config": MXFP4}, "gpt-oss-20b"
    )
    q = read_checkpoint_quant(m.config)
    w, scales = served_weight_bytes(m, 2, q)
    padded = 24 * 32 * (3072 * 2 * 2944 + 3072 * 2944)  # layers · experts · (gate_up + down)
    experts = 24 * 32 * (2880 * 5760 + 2880 * 2880)
    assert scales == padded // 32
    assert w == padded // 2 + (m.total_params - experts) * 2


@pytest.mark.parametrize("tp", [2, 4, 8])
def test_tensor_parallel_rank_holds_its_share(tp: int) -> None:
    """Llama-3-8B unquantized: every linear and the vocab-parallel embeddings split by tp (8 KV heads: no
    replication up to tp 8); norms replicated (65 × 4096 per rank)."""
    m = load_model("llama-3-8b")
    w, _ = served_weight_bytes(m, 2, None, tp)
    norms = 65 * 4096
    assert w == (m.total_params - norms) // tp * 2 + norms * 2
    assert sum(x.out_features * x.in_features * x.experts * x.count for x in weight_matrices(m)) == m.total_params


def test_kv_heads_replicate_past_their_count() -> None:
    """tp 16 > 8 KV heads: each rank keeps one KV head (k_proj / v_proj 4096 × 128 each, not × 64) and a
    one-head KV page, as at tp 8."""
    m = load_model("llama-3-8b")
    s8, s16 = (resolve_serve(m, find_gpu("h100"), tensor_parallel_size=tp) for tp in (8, 16))
    assert vllm_page_bytes(rank_model(m, s16), 2) == vllm_page_bytes(rank_model(m, s8), 2) == 2 * 16 * 1 * 128 * 2
    w8, _ = served_weight_bytes(m, 2, None, 8)
    w16, _ = served_weight_bytes(m, 2, None, 16)
    kv_per_rank = 32 * 2 * 4096 * 128 * 2  # layers · (k, v) · hidden · head_dim · bf16, both at tp 8 and 16
    assert 2 * (w16 - kv_per_rank) - (w8 - kv_per_rank) == 65 * 4096 * 2  # the rest halves; norms do not


def test_a_quantized_checkpoint_refuses_a_second_quantization() -> None:
    m = quantized("qwen2.5-7b", AWQ)
    with pytest.raises(VramplanError, match=r"already quantized \(awq int4 g128\); drop --quant nf4"):
        resolve_serve(m, find_gpu("4090"), quant="nf4")


def test_tp_must_divide_the_heads() -> None:
    with pytest.raises(VramplanError, match="--tensor-parallel-size 3 does not divide"):
        resolve_serve(load_model("llama-3-8b"), find_gpu("h100"), tensor_parallel_size=3)


def test_hf_counts_fp4_dequantized() -> None:
    """transformers' generate() on gpt-oss without its MXFP4 kernels holds bf16 experts: counted dequantized
    (with a note); vLLM keeps them packed."""
    m = quantized("gpt-oss-20b", MXFP4)
    hf = estimate_serve(m, engine="hf")
    assert hf.components.weights == m.total_params * 2
    assert hf.components.quant_state == 0
    assert any("counted dequantized" in n for n in hf.serve.notes)
    vllm = estimate_serve(m, gpu="h100")
    assert vllm.components.weights < hf.components.weights / 2


def test_mla_keeps_one_latent_per_token_on_every_rank() -> None:
    """DeepSeek-V3 (MLA): a page is 16 · (kv_lora_rank 512 + qk_rope_head_dim 64) · bf16 per layer, the same on
    every tensor-parallel rank, instead of 2 · 16 · 128 heads · head_dim."""
    m = load_model("deepseek-v3")
    page = 16 * (512 + 64) * 2
    for tp in (1, 8):
        s = resolve_serve(m, find_gpu("h200"), tensor_parallel_size=tp)
        assert vllm_page_bytes(rank_model(m, s), 2) == page
