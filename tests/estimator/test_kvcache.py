"""KV cache: exact against transformers 5.24's DynamicCache on tiny CPU models; by hand; vLLM's block math.

Oracle: build the model from a config dict, run a forward with use_cache=True or `generate`, and sum
`untyped_storage().nbytes()` of every layer's K and V (the storage, not the view: a sliding-window layer
keeps a view of window − 1 tokens over a window-sized tensor). vLLM: the arithmetic of
vllm/v1/core/kv_cache_utils.py checked on numbers vLLM itself logged (issues cited at each test).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import TINY_CONFIGS
from vramplan.estimator.kvcache import (
    hf_generate_cache_bytes,
    hf_generate_seen_tokens,
    hf_layer_cache_tokens,
    kv_bytes_per_token,
    kv_cache_bytes,
    layer_kv_elems,
    layer_windows,
    vllm_blocks_per_layer,
    vllm_kv_groups,
    vllm_max_model_len,
    vllm_page_bytes,
    vllm_paged_kv,
    vllm_request_bytes,
)
from vramplan.sources.profiles import load_model
from vramplan.spec import model_spec_from_config

GIB = 1024**3
BF16 = 2
_SMALL = {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
          "intermediate_size": 128, "vocab_size": 256, "max_position_embeddings": 256,
          "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False}  # fmt: skip
# Sliding-window configs with windows smaller than the test sequences, so the window actually bites.
SLIDING_CONFIGS: dict[str, dict[str, Any]] = {
    "mistral-sw8": {"model_type": "mistral", **_SMALL, "head_dim": 16, "sliding_window": 8},
    "gemma2-sw8": {"model_type": "gemma2", **_SMALL, "head_dim": 32, "sliding_window": 8,
                   "query_pre_attn_scalar": 32, "hidden_activation": "gelu_pytorch_tanh"},  # head_dim ≠ 64/4
    "qwen2-sw8": {"model_type": "qwen2", **_SMALL, "use_sliding_window": True, "sliding_window": 8,
                  "max_window_layers": 2},
    "phi3-sw8": {"model_type": "phi3", **_SMALL, "sliding_window": 8},
    # Gemma 3's default 5 local : 1 global (sliding_window_pattern 6, no layer_types): layer 5 full
    "gemma3-sw8": {"model_type": "gemma3_text", **_SMALL, "num_hidden_layers": 7, "head_dim": 16,
                   "sliding_window": 8, "query_pre_attn_scalar": 16},
    "llama-mqa": {"model_type": "llama", **_SMALL, "num_key_value_heads": 1, "head_dim": 16},
    # OLMo 3's and EXAONE 4's class defaults (no layer_types): every 4th layer full, the others sliding
    "olmo3-sw8": {"model_type": "olmo3", **_SMALL, "sliding_window": 8},
    "exaone4-sw8": {"model_type": "exaone4", **_SMALL, "head_dim": 16, "sliding_window": 8},
    # Gemma 4: sliding layers of head_dim 16 / 2 key heads, global ones of 32 / 1 (k = v), the top two layers
    # KV-shared (no cache of their own), window 8
    "gemma4-sw8-kv-shared": {"model_type": "gemma4_text", **_SMALL, "num_hidden_layers": 6, "head_dim": 16,
                             "global_head_dim": 32, "num_global_key_value_heads": 1, "attention_k_eq_v": True,
                             "sliding_window": 8, "num_kv_shared_layers": 2, "hidden_size_per_layer_input": 0,
                             "layer_types": ["sliding_attention", "full_attention", "sliding_attention",
                                             "full_attention", "sliding_attention", "full_attention"]},
}  # fmt: skip
# Qwen3.5's linear-attention layers cache a conv and a recurrent state, not K and V (test_qwen3_5_cache_gap)
LINEAR_ATTENTION = ("qwen3_5_text", "qwen3_5_moe_text")  # and Qwen3.5-MoE's, the same layers
ALL_CONFIGS = {**{k: v for k, v in TINY_CONFIGS.items() if k not in LINEAR_ATTENTION}, **SLIDING_CONFIGS}
# transformers' own cache of a multi-head latent attention layer holds the latent (kv_lora_rank + qk_rope_head_dim
# per token, one head: DeepseekV3Attention caches kv_nope / k_rot before expanding them); hf_generate_cache_bytes
# counts K and V per head. vLLM's MLA page is modelled (vllm_page_bytes); the HF generate cache is not yet.
MLA_CACHE_GAP = "HF generate cache of an MLA model: the latent, not K and V per head (not modelled yet)"


def _cases(names):
    return [
        pytest.param(n, marks=pytest.mark.xfail(reason=MLA_CACHE_GAP, strict=True))
        if ALL_CONFIGS[n]["model_type"] in ("deepseek_v3", "glm4_moe_lite")
        else n
        for n in sorted(names)
    ]


def _model(cfg: dict[str, Any]):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(**cfg)
    return transformers.AutoModelForCausalLM.from_config(config).to(torch.bfloat16).eval()


def _storage_bytes(cache) -> int:
    """Bytes of the storages behind every layer's K and V (each counted once)."""
    seen: dict[int, int] = {}
    for layer in cache.layers:
        for t in (layer.keys, layer.values):
            if t is None:  # a dummy layer (Gemma 4's KV-shared ones) stores nothing
                continue
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def _real_windows(cache) -> tuple[int | None, ...]:
    # a dummy layer (Gemma 4's KV-shared ones) has no window: None, as a layer caching no K / V
    return tuple(
        getattr(layer, "sliding_window", None) if getattr(layer, "is_sliding", False) else None
        for layer in cache.layers
    )


# ---------------------------------------------------------------- oracle: transformers DynamicCache


@pytest.mark.parametrize("name", _cases(ALL_CONFIGS))
def test_forward_cache_and_layer_types_are_exact(name: str) -> None:
    torch = pytest.importorskip("torch")
    cfg = ALL_CONFIGS[name]
    m = model_spec_from_config(cfg, name)
    model = _model(cfg)
    batch, prompt = 3, 13
    with torch.no_grad():
        out = model(torch.randint(3, cfg["vocab_size"], (batch, prompt)), use_cache=True)
    assert _storage_bytes(out.cache) == hf_generate_cache_bytes(m, batch, prompt, 1, BF16)
    assert _real_windows(out.cache) == tuple(
        w if elems else None for elems, w in zip(layer_kv_elems(m), layer_windows(m), strict=True)
    )


@pytest.mark.xfail(
    strict=True,
    reason="serve: Qwen3.5's linear-attention layers keep conv and recurrent states (LinearAttentionLayer), "
    "not K/V; the cache model counts K/V in every layer (issue 13 item 9)",
)
@pytest.mark.parametrize("family", LINEAR_ATTENTION)
def test_qwen3_5_cache_gap(family: str) -> None:
    torch = pytest.importorskip("torch")
    cfg = TINY_CONFIGS[family]
    m = model_spec_from_config(cfg, family)
    with torch.no_grad():
        out = _model(cfg)(torch.randint(3, cfg["vocab_size"], (3, 13)), use_cache=True)
    assert _storage_bytes(out.cache) == hf_generate_cache_bytes(m, 3, 13, 1, BF16)


@pytest.mark.parametrize("name", _cases(ALL_CONFIGS))
@pytest.mark.parametrize(("prompt", "new"), [(5, 7), (13, 1), (13, 2), (20, 6), (3, 3)])
def test_generate_cache_is_exact(name: str, prompt: int, new: int) -> None:
    torch = pytest.importorskip("torch")
    cfg = ALL_CONFIGS[name]
    m = model_spec_from_config(cfg, name)
    model = _model(cfg)
    batch = 2
    ids = torch.randint(3, cfg["vocab_size"], (batch, prompt))
    with torch.no_grad():
        g = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                           return_dict_in_generate=True, pad_token_id=0)  # fmt: skip
    assert g.sequences.shape[1] == prompt + new
    assert _storage_bytes(g.cache) == hf_generate_cache_bytes(m, batch, prompt, new, BF16)


def test_generate_computes_logits_for_the_last_position_only() -> None:
    """transformers 5 generate passes logits_to_keep=1: the lm_head sees one row per sequence, every step."""
    torch = pytest.importorskip("torch")
    cfg = TINY_CONFIGS["llama"]
    model = _model(cfg)
    shapes: list[tuple[int, ...]] = []
    model.lm_head.register_forward_hook(lambda _mod, _inp, out: shapes.append(tuple(out.shape)))
    with torch.no_grad():
        model.generate(torch.randint(3, 256, (2, 9)), max_new_tokens=4, min_new_tokens=4, do_sample=False,
                       pad_token_id=0)  # fmt: skip
    assert shapes == [(2, 1, cfg["vocab_size"])] * 4


# ---------------------------------------------------------------- by hand


def test_gqa_by_hand() -> None:
    m = load_model("llama-3-8b")  # 32 layers, 8 KV heads of 128 (32 query heads)
    assert kv_cache_bytes(m, 1, BF16) == 32 * 8 * 128 * 2 * 2  # layers·kv_heads·head_dim·(K,V)·bf16
    assert kv_cache_bytes(m, 8192, BF16) == 32 * 8 * 128 * 2 * 2 * 8192  # 1 GiB for one 8k sequence
    assert hf_generate_cache_bytes(m, 4, 1000, 25, BF16) == 32 * 8 * 128 * 2 * 2 * 4 * 1024  # 4 × (1000 + 24)
    m7 = load_model("llama-2-7b")  # MHA: 32 KV heads
    assert kv_cache_bytes(m7, 1, BF16) == 32 * 32 * 128 * 2 * 2


def test_head_dim_not_hidden_over_heads_by_hand() -> None:
    g7 = load_model("gemma-7b")  # hidden 3072 / 16 heads = 192, but head_dim 256
    assert kv_bytes_per_token(g7, BF16) == 16 * 256 * 2 * 2  # kv_heads·head_dim·(K,V)·bf16 per layer
    assert kv_cache_bytes(g7, 1, BF16) == 28 * 16 * 256 * 2 * 2


def test_sliding_window_by_hand() -> None:
    mistral = load_model("mistral-7b")  # v0.1: every layer slides over 4096 tokens
    assert layer_windows(mistral) == (4096,) * 32
    # 8000 prompt + 2001 new: 10,000 seen tokens, each layer holds a 4096-token tensor
    assert hf_generate_cache_bytes(mistral, 1, 8000, 2001, BF16) == 32 * 8 * 128 * 2 * 2 * 4096
    # prefill only: the view pins the whole 8000-token prompt
    assert hf_generate_cache_bytes(mistral, 1, 8000, 1, BF16) == 32 * 8 * 128 * 2 * 2 * 8000
    g9 = load_model("gemma-2-9b")  # 42 layers alternating sliding (4096) / full, 8 KV heads of 256
    assert layer_windows(g9) == (4096, None) * 21
    per = 8 * 256 * 2 * 2  # kv_heads·head_dim·(K,V)·bf16
    assert hf_generate_cache_bytes(g9, 1, 9000, 1001, BF16) == 21 * per * 4096 + 21 * per * 10000


def test_sliding_layer_storage_rule() -> None:
    assert hf_generate_seen_tokens(512, 512) == 1023
    assert hf_layer_cache_tokens(None, 512, 512) == 1023
    assert hf_layer_cache_tokens(4096, 512, 512) == 1023  # window not reached
    assert hf_layer_cache_tokens(8, 20, 6) == 8  # window − 1 visible in a window-sized tensor
    assert hf_layer_cache_tokens(8, 20, 1) == 20


def test_qwen_without_use_sliding_window_is_full() -> None:
    assert layer_windows(load_model("qwen2.5-7b")) == (None,) * 28


# ---------------------------------------------------------------- vLLM block arithmetic


def test_vllm_page_and_blocks() -> None:
    m = load_model("llama-3.1-8b")
    assert vllm_page_bytes(m, BF16) == 2 * 16 * 8 * 128 * 2  # (K,V)·block·kv_heads·head_dim·bf16
    assert vllm_page_bytes(m, 1) * 2 == vllm_page_bytes(m, BF16)  # fp8 halves the page
    assert vllm_blocks_per_layer(None, 20000, 2048) == 1250  # cdiv(20000, 16)
    # sliding: window − 1 + one chunk, capped at max_model_len, + 1 block for the unaligned start
    assert vllm_blocks_per_layer(4096, 32768, 2048) == -(-(4095 + 2048) // 16) + 1
    assert vllm_blocks_per_layer(4096, 1000, 2048) == -(-1000 // 16) + 1


def test_vllm_worked_example_rtx3090_llama31_8b() -> None:
    """vllm-project/vllm#10517, Llama-3.1-8B-Instruct on an RTX 3090:
    `kv_cache_size=3.81GiB`, `# GPU blocks: 1952`, `Maximum concurrency for 20000 tokens per request: 1.56x`;
    at --max-model-len 29000: 1478 blocks, concurrency 0.82x, "the maximum number of tokens that can be
    stored in KV cache (23648)"."""
    m = load_model("llama-3.1-8b")
    block = 32 * vllm_page_bytes(m, BF16)  # one block in all 32 layers: 2 MiB
    kv = vllm_paged_kv(m, 1952 * block, BF16, 20000, 20000)
    assert kv.num_blocks == 1952
    assert kv.tokens == 1952 * 16
    assert f"{kv.max_concurrency:.2f}" == "1.56"
    assert f"{kv.pool_bytes / GIB:.2f}" == "3.81"
    low = vllm_paged_kv(m, 1478 * block, BF16, 29000, 29000)
    assert f"{low.max_concurrency:.2f}" == "0.82"
    assert low.request_bytes > 1478 * block  # vLLM refuses max_model_len 29000 ...
    assert vllm_max_model_len(m, 1478 * block, BF16, 29000, 29000) == 23648  # ... and names 23648
    # the logged 3.81 GiB (two decimals) gives 1952 blocks within its rounding
    lo, hi = (vllm_paged_kv(m, int(x * GIB), BF16, 20000, 20000).num_blocks for x in (3.805, 3.815))
    assert lo <= 1952 <= hi


def test_vllm_worked_example_v1_l40s() -> None:
    """vllm-project/vllm#17122 (v1 engine), Llama-3.1-8B-Instruct on an L40S: "GPU KV cache size: 158,656
    tokens", "Maximum concurrency for 32,768 tokens per request: 4.84x"."""
    m = load_model("llama-3.1-8b")
    blocks = 158_656 // 16
    kv = vllm_paged_kv(m, blocks * 32 * vllm_page_bytes(m, BF16), BF16, 32768, 2048)
    assert kv.tokens == 158_656
    assert f"{kv.max_concurrency:.2f}" == "4.84"  # 9916 blocks / cdiv(32768, 16) = 2048 per request


def test_vllm_sliding_and_hybrid_groups_by_hand() -> None:
    mistral = load_model("mistral-7b")  # one group: 32 sliding layers
    kv = vllm_paged_kv(mistral, 1000 * 32 * vllm_page_bytes(mistral, BF16), BF16, 32768, 2048)
    assert (kv.group_size, kv.num_groups, kv.num_blocks, kv.tokens) == (32, 1, 1000, 16000)
    assert kv.blocks_per_request == -(-(4095 + 2048) // 16) + 1  # 385, not cdiv(32768, 16) = 2048
    g9 = load_model("gemma-2-9b")  # 21 sliding + 21 full: two groups of 21 layers share 21 tensors
    assert vllm_kv_groups(layer_windows(g9)) == (21, (4096, None))
    page = vllm_page_bytes(g9, BF16)
    assert page == 2 * 16 * 8 * 256 * 2
    kv = vllm_paged_kv(g9, 1000 * 21 * page, BF16, 8192, 2048)
    assert kv.num_blocks == 1000
    assert kv.tokens == 1000 // 2 * 16
    assert kv.blocks_per_request == 512 + (-(-min(4095 + 2048, 8192) // 16) + 1)  # full 512 + sliding 385
    assert kv.pool_bytes == 21 * page * 1000
    assert vllm_request_bytes(g9, BF16, 8192, 2048) == 21 * 512 * page + 21 * 385 * page


def test_vllm_fp8_doubles_the_tokens() -> None:
    m = load_model("llama-3-8b")
    avail = 6 * GIB
    bf16 = vllm_paged_kv(m, avail, BF16, 8192, 2048)
    fp8 = vllm_paged_kv(m, avail, 1, 8192, 2048)
    assert fp8.num_blocks == 2 * bf16.num_blocks  # 6 GiB divides evenly into both page sizes


def test_vllm_max_model_len_search() -> None:
    m = load_model("llama-3-8b")
    page = vllm_page_bytes(m, BF16)
    assert vllm_max_model_len(m, 0, BF16, 8192, 2048) == 0
    assert vllm_max_model_len(m, 100 * 32 * page, BF16, 8192, 2048) == 1600  # 100 blocks of 16
    assert vllm_max_model_len(m, 10**6 * 32 * page, BF16, 8192, 2048) == 8192  # capped at the asked length
