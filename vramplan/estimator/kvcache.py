"""KV cache: the K and V tensors kept for every attention layer between generation steps.

Two layouts, both `2 · kv_heads · head_dim` elements per token per layer (GQA/MQA: the KV heads, not the
query heads; `head_dim` from config.json, which is not hidden/heads on Gemma):

- transformers 5.24 `DynamicCache` (what `generate()` builds by default, cache_utils.py): per layer one K and
  one V tensor [batch, kv_heads, tokens, head_dim] in the model dtype, grown by `torch.cat` every step. Layers
  the config marks as sliding use `DynamicSlidingWindowLayer`, whose `update` keeps the view
  `full[:, :, -sliding_window + 1:]`: sliding_window − 1 tokens visible, but the view keeps its parent's
  storage alive, so the layer holds `sliding_window` tokens in steady decoding and the whole prompt right
  after prefill. The tests sum `untyped_storage().nbytes()` of a real cache to check this.
- vLLM's paged cache (v1 engine): preallocated blocks of `block_size` (16) tokens; one block of one layer is
  a "page" of 2 · 16 · kv_heads · head_dim · dtype bytes (vllm/v1/kv_cache_interface.py
  `AttentionSpec.real_page_size_bytes`, vllm-project/vllm@bc8282e6). The pool is whatever the memory budget
  leaves (see serve.py); the block arithmetic below is vllm/v1/core/kv_cache_utils.py
  (vllm-project/vllm@bbf906a8): `get_num_blocks`, `_get_kv_cache_config_uniform_type`,
  `_get_kv_cache_config_uniform_page_size`, `get_max_concurrency_for_kv_cache_config`,
  `check_enough_kv_cache_memory`, `estimate_max_model_len`.
"""

from __future__ import annotations

from vramplan.serve_breakdown import PagedKV
from vramplan.spec import ModelSpec
from vramplan.spec.family_traits import PER_LAYER_SHAPES
from vramplan.spec.serve import FP8_BYTES, KV_CACHE_DTYPES, VLLM_BLOCK_SIZE  # noqa: F401 (re-exported)
from vramplan.units import ceil_div

# Config-class defaults that apply when config.json omits `sliding_window` (transformers 5.24
# configuration_mistral.py / configuration_gemma2.py: `sliding_window: int | None = 4096`).
HF_DEFAULT_SLIDING_WINDOW: dict[str, int] = {"mistral": 4096, "gemma2": 4096, "gemma3_text": 4096, "gemma4_text": 512}
SLIDING_LAYER_TYPES = frozenset({"sliding_attention", "chunked_attention"})


# ---------------------------------------------------------------- per token, per layer


def kv_bytes_per_token(m: ModelSpec, elem_bytes: int) -> int:
    """K and V of one token in one layer: 2 · kv_heads · head_dim · elem_bytes.

    Source: transformers cache_utils.py DynamicLayer (K, V of shape [b, kv_heads, s, head_dim]); vLLM
    AttentionSpec.real_page_size_bytes / block_size.
    """
    return 2 * m.num_key_value_heads * m.head_dim * elem_bytes


def layer_kv_elems(m: ModelSpec) -> tuple[int, ...]:
    """K and V elements of one token in each layer: 2 · kv_heads · head_dim, Gemma 4 by its layer's shape
    (global layers: global_head_dim and their key heads; a k = v layer still caches the normed values apart)
    and 0 for its KV-shared layers, which transformers 5.25 gives a "dummy" cache layer that stores nothing
    (cache_utils.py `get_layer_types_and_kwargs`, `kv_sharing_modes` "reuse")."""
    if m.model_type in PER_LAYER_SHAPES:
        from vramplan.spec.gemma3n import per_layer_dims

        d = per_layer_dims(m)
        return tuple(0 if mode == "reuse" else 2 * kv * hd for (hd, kv), mode in zip(d["shapes"], d["modes"]))
    return (2 * m.num_key_value_heads * m.head_dim,) * m.num_hidden_layers


def kv_cache_bytes(m: ModelSpec, tokens: int, elem_bytes: int) -> int:
    """K and V of every layer: 2 · layers · kv_heads · head_dim · tokens, full attention everywhere.

    Cache tensors only, not vLLM's block table; GQA: kv heads. Sliding-window layers: hf_generate_cache_bytes.
    Source: transformers cache_utils.py DynamicCache.
    """
    return sum(layer_kv_elems(m)) * elem_bytes * tokens


def layer_windows(m: ModelSpec) -> tuple[int | None, ...]:
    """Sliding window of each layer's cache (None = full attention), as transformers 5.24 decides it.

    `layer_types` from config.json if present; else the family's own rule: Gemma 2 alternates, sliding first
    (`"sliding_attention" if (i + 1) % 2`); Qwen2/Qwen3 slide layers i >= max_window_layers when
    use_sliding_window; otherwise every layer slides iff the config has a sliding_window (Mistral v0.1,
    Phi-3) — cache_utils.get_layer_types_and_kwargs. vLLM reads the same fields (llama.py per-layer
    `layer_types`, else CacheConfig.sliding_window), so both engines share this.
    Source: transformers configuration_gemma2.py / configuration_qwen2.py `__post_init__`.
    """
    n = m.num_hidden_layers
    if m.model_type in ("gpt_neox", "bloom", "phi", "llama", "gemma"):
        return (None,) * n  # these configs have no sliding_window field
    window = m.sliding_window
    if window is None and "sliding_window" not in m.config:
        window = HF_DEFAULT_SLIDING_WINDOW.get(m.model_type)
    if window is None:
        return (None,) * n
    if m.layer_types:
        return tuple(window if t in SLIDING_LAYER_TYPES else None for t in m.layer_types)
    if m.model_type == "gemma2":
        return tuple(window if (i + 1) % 2 else None for i in range(n))
    if m.model_type in ("qwen2", "qwen3"):
        first = int(m.config.get("max_window_layers", 28))
        return tuple(window if i >= first else None for i in range(n))
    return (window,) * n


# ---------------------------------------------------------------- transformers DynamicCache


def hf_generate_seen_tokens(prompt_tokens: int, new_tokens: int) -> int:
    """Tokens that went through the model in `generate(max_new_tokens=new_tokens)`: prompt + new − 1.

    The last sampled token is returned, never fed back. Source: transformers generation/utils.py `_sample`.
    """
    return prompt_tokens + new_tokens - 1


def hf_layer_cache_tokens(window: int | None, prompt_tokens: int, new_tokens: int) -> int:
    """Tokens of K (and of V) storage one DynamicCache layer holds when generate() returns.

    Full layer: every seen token. Sliding layer: the prompt's whole storage if generate stopped after
    prefill (the kept view [-window+1:] pins it), else min(seen, window): each decode step concatenates the
    window − 1 kept tokens and the new one into a `window`-token tensor and keeps a view of its tail.
    Source: transformers 5.24 cache_utils.py DynamicLayer.update / DynamicSlidingWindowLayer.update.
    """
    seen = hf_generate_seen_tokens(prompt_tokens, new_tokens)
    if window is None:
        return seen
    if new_tokens == 1:
        return prompt_tokens
    return min(seen, window)


def hf_generate_cache_bytes(m: ModelSpec, batch: int, prompt_tokens: int, new_tokens: int, elem_bytes: int) -> int:
    """Storage of the DynamicCache when generate() returns; `new_tokens=1` gives the state after prefill.

    Σ over layers of kv_bytes_per_token · batch · hf_layer_cache_tokens. Lifetime: the whole generate call.
    Source: transformers 5.24 cache_utils.py; checked against a real cache in tests/estimator/test_kvcache.py.
    """
    return sum(
        elems * elem_bytes * batch * hf_layer_cache_tokens(w, prompt_tokens, new_tokens)
        for elems, w in zip(layer_kv_elems(m), layer_windows(m), strict=True)
    )


def hf_cache_step_transient_bytes(
    m: ModelSpec, batch: int, prompt_tokens: int, new_tokens: int, elem_bytes: int
) -> int:
    """The old K and V of one layer alive while `torch.cat` builds the new ones, in the last decode step.

    The largest layer's storage before the step (full layer: seen − 1 tokens); 0 for prefill only.
    Source: transformers 5.24 cache_utils.py DynamicLayer.update (`self.keys = torch.cat([self.keys, k])`).
    """
    if new_tokens <= 1:
        return 0
    return max(
        elems * elem_bytes * batch * hf_layer_cache_tokens(w, prompt_tokens, new_tokens - 1)
        for elems, w in zip(layer_kv_elems(m), layer_windows(m), strict=True)
    )


# ---------------------------------------------------------------- vLLM paged cache


def vllm_page_bytes(m: ModelSpec, elem_bytes: int, block_size: int = VLLM_BLOCK_SIZE) -> int:
    """One block of one layer: 2 · block_size · kv_heads · head_dim · elem_bytes.

    Multi-head latent attention (DeepSeek-V2/V3, Kimi: `kv_lora_rank` in config.json) keeps one latent vector
    per token, no separate V, and every tensor-parallel rank holds it whole: block_size · (kv_lora_rank +
    qk_rope_head_dim) · elem_bytes (vLLM 0.34 kv_cache_interface.py MLAAttentionSpec, head_size_v = 0;
    models/deepseek_v2.py head_size = kv_lora_rank + qk_rope_head_dim).
    Source: vllm/v1/kv_cache_interface.py AttentionSpec.real_page_size_bytes (vllm-project/vllm@bc8282e6).
    """
    if m.config.get("kv_lora_rank"):
        latent = int(m.config["kv_lora_rank"]) + int(m.config.get("qk_rope_head_dim") or 0)
        return block_size * latent * elem_bytes
    if m.model_type in PER_LAYER_SHAPES:  # Gemma 4: the largest layer's page (an approximation, serve notes it)
        return block_size * max(layer_kv_elems(m)) * elem_bytes
    return 2 * block_size * m.num_key_value_heads * m.head_dim * elem_bytes


def vllm_blocks_per_layer(
    window: int | None, max_model_len: int, max_num_batched_tokens: int, block_size: int = VLLM_BLOCK_SIZE
) -> int:
    """Blocks one request of max_model_len tokens needs in one layer.

    Full attention: cdiv(max_model_len, block_size). Sliding window: the window − 1 computed tokens plus
    one scheduled chunk, capped at max_model_len, plus one block because the window need not start on a block
    boundary. Source: kv_cache_interface.py FullAttentionSpec / SlidingWindowSpec.max_memory_usage_bytes.
    """
    if window is None:
        return ceil_div(max_model_len, block_size)
    return ceil_div(min(window - 1 + max_num_batched_tokens, max_model_len), block_size) + 1


def vllm_kv_groups(windows: tuple[int | None, ...]) -> tuple[int, tuple[int | None, ...]]:
    """(layers per group, window of each group) of vLLM's KV cache groups.

    One attention type: one group of all layers. Several (Gemma 2's full + sliding): group_size = the
    smallest type's layer count, each type split into ceil(count / group_size) groups (the last padded).
    Source: kv_cache_utils.py `_get_kv_cache_config_uniform_page_size` (vllm-project/vllm@bbf906a8).
    """
    counts: dict[int | None, int] = {}
    for w in windows:
        counts[w] = counts.get(w, 0) + 1
    if len(counts) == 1:
        return len(windows), (windows[0],)
    size = min(counts.values())
    groups: list[int | None] = []
    for w, c in counts.items():
        groups += [w] * ceil_div(c, size)
    return size, tuple(groups)


def vllm_request_bytes(
    m: ModelSpec,
    elem_bytes: int,
    max_model_len: int,
    max_num_batched_tokens: int,
    block_size: int = VLLM_BLOCK_SIZE,
) -> int:
    """KV bytes one max_model_len request needs: Σ over layers of blocks × page.

    vLLM refuses to start when this exceeds the available KV memory ("To serve at least one request with
    the models's max seq len ..."). Source: kv_cache_utils.py check_enough_kv_cache_memory.
    """
    if m.model_type in PER_LAYER_SHAPES:  # each caching layer's own page (Gemma 4's shapes; none when KV-shared)
        return sum(
            vllm_blocks_per_layer(w, max_model_len, max_num_batched_tokens, block_size) * block_size * e * elem_bytes
            for e, w in zip(layer_kv_elems(m), layer_windows(m), strict=True)
            if e
        )
    page = vllm_page_bytes(m, elem_bytes, block_size)
    return sum(
        vllm_blocks_per_layer(w, max_model_len, max_num_batched_tokens, block_size) * page for w in layer_windows(m)
    )


def vllm_paged_kv(
    m: ModelSpec,
    available_bytes: int,
    elem_bytes: int,
    max_model_len: int,
    max_num_batched_tokens: int,
    block_size: int = VLLM_BLOCK_SIZE,
) -> PagedKV:
    """Blocks, tokens and concurrency of vLLM's pool.

    num_blocks = available // page // group_size (`get_num_blocks`); tokens = num_blocks // groups ·
    block_size; concurrency = num_blocks / Σ_groups blocks per request
    (`get_max_concurrency_for_kv_cache_config`). Source: kv_cache_utils.py (vllm-project/vllm@bbf906a8).
    """
    windows = layer_windows(m)
    if m.model_type in PER_LAYER_SHAPES:  # KV-shared layers hold no blocks
        windows = tuple(w for e, w in zip(layer_kv_elems(m), windows, strict=True) if e)
    size, groups = vllm_kv_groups(windows)
    page = vllm_page_bytes(m, elem_bytes, block_size)
    blocks = max(int(available_bytes // page // size), 0)
    per_request = sum(vllm_blocks_per_layer(w, max_model_len, max_num_batched_tokens, block_size) for w in groups)
    return PagedKV(
        page_bytes=page,
        group_size=size,
        num_groups=len(groups),
        num_blocks=blocks,
        block_size=block_size,
        blocks_per_request=per_request,
        request_bytes=vllm_request_bytes(m, elem_bytes, max_model_len, max_num_batched_tokens, block_size),
    )


def vllm_max_model_len(
    m: ModelSpec,
    available_bytes: int,
    elem_bytes: int,
    max_model_len: int,
    max_num_batched_tokens: int,
    block_size: int = VLLM_BLOCK_SIZE,
) -> int:
    """Largest max_model_len (≤ the one asked) whose one-request KV fits `available_bytes`; 0 if not even 1.

    The binary search vLLM prints in its "estimated maximum model length is N" error.
    Source: kv_cache_utils.py estimate_max_model_len (vllm-project/vllm@bbf906a8).
    """

    def fits(n: int) -> bool:
        return vllm_request_bytes(m, elem_bytes, n, max_num_batched_tokens, block_size) <= available_bytes

    if not fits(1):
        return 0
    lo, hi, best = 1, max_model_len, 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(mid):
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best
