"""Multi-head latent attention and DeepSeek-V3's group-limited sigmoid router op by op, as the symbolic walk
(`walk.py`) sees them: what each op saves and holds.

Source: transformers 5.24 models/deepseek_v3/modeling_deepseek_v3.py (`DeepseekV3Attention.forward`,
`expand_kv`, `apply_rotary_pos_emb_interleave`, `DeepseekV3TopkRouter.forward`; glm4_moe_lite reuses the
attention and has the same router), integrations/sdpa_attention.py and integrations/flash_attention.py; torch
2.13's autograd saving rules. Held to CPU traces of tiny DeepSeek-V3 / GLM-4.7-Flash models in the oracle grid.
"""

from __future__ import annotations

from collections.abc import Callable

from vramplan.estimator.walk import BYTES, S, SymbolicTensor, Walk, WalkSettings, promote
from vramplan.spec import ModelSpec


def _view(of: SymbolicTensor, numel: complex) -> SymbolicTensor:
    """A view of `of` with `numel` elements: the same storage (what saving it keeps alive)."""
    return SymbolicTensor(of.id, of.nbytes, of.dtype, of.requires_grad, numel)


def _rope(walk: Walk, x: SymbolicTensor, numel: complex, cos_dtype: str, interleave: bool) -> SymbolicTensor:
    """The rotary part of q or k (a view of `x`, `numel` elements) rotated: a new tensor in promote(x, cos).

    Interleaved (`rope_interleave`, the checkpoints' default): cat([x1·cos − x2·sin, x2·cos + x1·sin]) on the
    even / odd halves; else x·cos + rotate_half(x)·sin. The products save only cos / sin (per position), so the
    halves and products are transients."""
    dtype = promote(x.dtype, cos_dtype)
    if interleave:
        half = [walk.new(numel / 2, dtype, x.requires_grad) for _ in range(5)]  # 4 products, the difference
        walk.transient(x, half[0], half[1], half[4])
        walk.transient(x, half[4], half[2], half[3], walk.new(numel / 2, dtype, x.requires_grad))
    else:
        rotated = walk.new(numel, x.dtype, x.requires_grad)  # cat(-x2, x1)
        walk.transient(x, walk.new(numel, dtype, x.requires_grad), walk.new(numel / 2, x.dtype, False), rotated)
    out = walk.new(numel, dtype, x.requires_grad)
    walk.transient(x, out)
    return out


def mla_attention(
    walk: Walk,
    settings: WalkSettings,
    m: ModelSpec,
    x: SymbolicTensor,
    project: Callable[[SymbolicTensor, str], SymbolicTensor],
    norm: Callable[[SymbolicTensor, int], SymbolicTensor],
    residual_dtype: str,
) -> SymbolicTensor:
    """DeepseekV3Attention.forward up to o_proj's input (T·heads·v_head_dim), from the normed hidden state x.

    q: q_a_proj -> q_a_layernorm (RMSNorm over q_lora_rank: its fp32 copy and rsqrt saved) -> q_b_proj, viewed
    and split into nope / rope parts (views: q's storage lives until the concatenation). k / v: kv_a_proj_with_mqa
    (T·(kv_lora_rank + qk_rope)), its latent part through kv_a_layernorm (an fp32 residual saves the view, i.e.
    the whole projection), its rope part rotated. `torch.cat((q_pass, q_rot))` is a new T·heads·qk query;
    `expand_kv`: kv_b_proj (T·heads·(qk_nope + v)), the key a new_empty T·heads·qk filled by two copy_ (which
    save nothing), the value a view of kv_b_proj's output (saving it keeps all of it). The softmax scale
    (yarn mscale) changes no tensor.
    Attention: SDPA saves q, k, v (its autocast casts), the T·heads·v output and the fp32 logsumexp; CUDA runs the
    memory-efficient kernel, as flash needs one head dim for q, k and v (torch sdp_utils.cpp
    `check_head_dim_size_flash`); the output is already token-major (no copy for o_proj). flash_attention_2 pads
    v with zeros to the qk head dim (integrations/flash_attention.py, 5.24: `F.pad(value, ...)`), so it saves
    the padded v and a T·heads·qk output, then crops it: o_proj's input is a T·heads·v copy. Eager: the
    B·heads·S² scores, their fp32 softmax and its cast, and the transposed copy of the output.
    """
    T, mla, heads = settings.T, m.mla, m.num_attention_heads
    assert mla is not None
    qk, rope = mla.qk_head_dim, mla.qk_rope_head_dim
    q_input = norm(project(x, "q_a_proj"), mla.q_lora_rank) if mla.q_lora_rank else x
    q = project(q_input, "q_b_proj" if mla.q_lora_rank else "q_proj")
    walk.pinned[q.id] = q.nbytes  # q_pass, a view, until the concatenation
    compressed = project(x, "kv_a_proj_with_mqa")
    walk.pinned[compressed.id] = compressed.nbytes  # k_rot, a view, until it is rotated
    latent = norm(_view(compressed, T * mla.kv_lora_rank), mla.kv_lora_rank)
    q_rot = _rope(walk, q, T * heads * rope, residual_dtype, mla.rope_interleave)
    k_rot = _rope(walk, compressed, T * rope, residual_dtype, mla.rope_interleave)
    del walk.pinned[compressed.id]
    query = walk.new(T * heads * qk, promote(q.dtype, q_rot.dtype), q.requires_grad)
    walk.transient(q, q_rot, query, k_rot)
    del walk.pinned[q.id]
    walk.pinned[query.id] = query.nbytes
    walk.pinned[k_rot.id] = k_rot.nbytes
    kv = project(latent, "kv_b_proj")
    key = walk.new(T * heads * qk, kv.dtype, kv.requires_grad or k_rot.requires_grad)
    walk.transient(kv, key)
    del walk.pinned[query.id], walk.pinned[k_rot.id]
    value = _view(kv, T * heads * mla.v_head_dim)
    return _latent_attention(walk, settings, m, query, key, value)


def _latent_attention(
    walk: Walk, settings: WalkSettings, m: ModelSpec, q: SymbolicTensor, k: SymbolicTensor, v: SymbolicTensor
) -> SymbolicTensor:
    T, mla, heads = settings.T, m.mla, m.num_attention_heads
    assert mla is not None
    out_numel = T * heads * mla.v_head_dim
    requires_grad = q.requires_grad or k.requires_grad or v.requires_grad
    dtype = settings.autocast_dtype or q.dtype
    q_cast, k_cast, v_cast = walk.cast(q, dtype), walk.cast(k, dtype), walk.cast(v, dtype)
    if settings.attn == "eager":
        scores = T * heads * S  # B·heads·S² = T·heads·S
        probs_fp32 = walk.new(scores, "fp32", requires_grad)
        probs = walk.new(scores, dtype, requires_grad)
        out = walk.new(out_numel, dtype, requires_grad)
        if requires_grad:
            walk.save(q_cast, k_cast, probs_fp32, probs, v_cast)
        walk.transient(q_cast, k_cast, v_cast, walk.new(scores, dtype, requires_grad), probs_fp32, probs, out)
        return walk.new(out_numel, dtype, requires_grad)  # transpose(1, 2).contiguous()
    if settings.attn == "flash_attention_2":
        padded = walk.new(T * heads * mla.qk_head_dim, dtype, v.requires_grad)  # F.pad(value) to the qk dim
        out = walk.new(T * heads * mla.qk_head_dim, dtype, requires_grad)
        if requires_grad:
            walk.save(q_cast, k_cast, padded, out, walk.new(T * heads, "fp32", False))
        walk.transient(q_cast, k_cast, v_cast, padded, out)
        cropped = walk.new(out_numel, dtype, requires_grad)  # out[..., :v], reshaped: a copy
        walk.transient(out, cropped)
        return cropped
    out = walk.new(out_numel, dtype, requires_grad)
    if requires_grad:
        walk.save(q_cast, k_cast, v_cast, out, walk.new(T * heads, "fp32", False))
        if settings.masked:  # packed rows: the bool mask as an additive bias in q's dtype (B·1·S·S)
            walk.save(walk.new(T * S, dtype, False))
    walk.transient(q_cast, k_cast, v_cast, out)
    return out


def grouped_router(
    walk: Walk,
    settings: WalkSettings,
    m: ModelSpec,
    x: SymbolicTensor,
    router_grad: bool,
    routed_grad: bool,
    merged: int,
) -> SymbolicTensor:
    """DeepseekV3TopkRouter.forward (noaux_tc): the T·k routing weights it returns.

    `F.linear(x.type(fp32), weight.type(fp32))`: an fp32 copy of x (the weight is fp32 already:
    `_keep_in_fp32_modules_strict`), which autocast casts back to its dtype for the matmul (saved when the router
    trains), with the weight's autocast cast (E·H, saved when x needs a gradient); the logits in the autocast
    dtype (fp32 without autocast). `sigmoid` saves its output. Expert choice, under no saved tensor that outlives
    it (only the discarded top-k values lead back to it): + e_score_correction_bias (fp32), per-group top-2 sum,
    top `topk_group` groups, a zeros / scatter group mask expanded and reshaped to T·E (a copy), `~mask.bool()`,
    `masked_fill`, top-k indices (T·k int64). `scores.gather(1, indices)` saves the indices; under
    `norm_topk_prob` the in-place `/= sum + 1e-20` saves the T divisor (fp32 under autocast: `sum` is an
    fp32 op) and the T·k quotient; `* routed_scaling_factor`
    is a new T·k tensor.
    """
    T, experts, top_k, hidden = settings.T, m.num_local_experts, m.num_experts_per_tok, m.hidden_size
    groups = int(m.config.get("n_group") or 1)
    top_groups = int(m.config.get("topk_group") or 1)
    autocast_dtype = settings.autocast_dtype
    x_fp32 = walk.cast(x, "fp32")
    x_matmul = walk.cast(x_fp32, autocast_dtype) if autocast_dtype else x_fp32
    logits = walk.new(T * experts, autocast_dtype or "fp32", routed_grad)
    if router_grad:
        walk.save(x_matmul)
    if x.requires_grad and autocast_dtype:
        walk.per_layer_saved += experts * hidden * BYTES[autocast_dtype]  # the fp32 weight's autocast cast
    walk.transient(x, x_fp32, x_matmul, logits, extra_ref=merged)
    scores = walk.new(T * experts, logits.dtype, routed_grad)
    if routed_grad:
        walk.save(scores)
    choice = walk.new(T * experts, "fp32", routed_grad)  # + the fp32 correction bias
    group_top2 = walk.new(T * groups * 2, "fp32", routed_grad)
    group_scores = walk.new(T * groups, "fp32", routed_grad)
    walk.transient(x, logits, scores, choice, group_top2, walk.new(T * groups * 2, "int64", False), extra_ref=merged)
    group_index = walk.new(T * top_groups, "int64", False)
    group_mask = walk.new(T * groups, "fp32", False)
    score_mask = walk.new(T * experts, "fp32", False)  # expand(...).reshape(-1, E): a copy
    as_bool = walk.new(T * experts, "bool", False)
    inverted = walk.new(T * experts, "bool", False)
    walk.transient(x, logits, scores, choice, group_scores, group_index, group_mask, score_mask, as_bool, inverted)
    masked = walk.new(T * experts, "fp32", routed_grad)
    walk.transient(x, logits, scores, choice, group_scores, group_mask, score_mask, inverted, masked, extra_ref=merged)
    indices = walk.new(T * top_k, "int64", False)
    top_values = walk.new(T * top_k, "fp32", routed_grad)  # discarded
    walk.transient(x, logits, scores, group_scores, group_mask, score_mask, masked, indices, top_values)
    weights = walk.new(T * top_k, scores.dtype, routed_grad)
    if routed_grad:
        walk.save(indices)
    if m.config.get("norm_topk_prob", True):
        sum_dtype = "fp32" if autocast_dtype else scores.dtype  # `sum` is an fp32 op under CUDA autocast
        summed = walk.new(T, sum_dtype, False)
        divisor = walk.new(T, sum_dtype, False)
        if routed_grad:
            walk.save(divisor, weights)  # in place: the quotient is `weights` itself
        walk.transient(x, logits, scores, masked, score_mask, weights, summed, divisor)
    scaled = walk.new(T * top_k, weights.dtype, routed_grad)
    walk.transient(x, logits, scores, masked, score_mask, weights, scaled, extra_ref=merged)
    return scaled
