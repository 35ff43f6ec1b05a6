"""gpt-oss's decoder-layer ops that no other family has, as the symbolic walk (`walk.py`) sees them: the eager
attention with learned sinks and the MoE block (a router with a bias, top-k before the softmax; experts with
biases and a clamped SwiGLU). Source: transformers 5.24 models/gpt_oss/modeling_gpt_oss.py and
integrations/moe.py `grouped_mm_experts_forward` (GptOssExperts is decorated with
`use_experts_implementation(is_transposed=True, has_bias=True)`, so training runs the grouped_mm path, not the
module's own loop over the experts hit), with torch 2.13's autograd saving rules; traced op by op under
saved-tensor hooks on a tiny GptOssForCausalLM (tests/oracle: the family grid).
"""

from __future__ import annotations

from vramplan.estimator.moe_ops import router_logits, sort_and_gather
from vramplan.estimator.walk import BYTES, S, SymbolicTensor, Walk, WalkSettings, promote
from vramplan.spec import ModelSpec


def eager_with_sinks(
    walk: Walk, settings: WalkSettings, m: ModelSpec, q: SymbolicTensor, k: SymbolicTensor, v: SymbolicTensor
) -> SymbolicTensor:
    """gpt-oss's eager attention with its learned sinks (modeling_gpt_oss.py `eager_attention_forward`, 5.24),
    on q, k, v as the projections and RoPE left them. repeat_kv copies k and v to every head (their dtype);
    `matmul(q, kᵀ)` under autocast saves the autocast casts of q and the repeated k; `* scaling` and `+ mask`
    each make a new B·heads·S² tensor (the mask is the model's B·1·S·S in the embeddings' dtype: fp32 after
    kbit prep promotes the scores); `cat([scores, sinks])` adds the sink column (B·heads·S·(S+1), promoted to
    fp32 when the sinks are fp32); `- max(dim=-1).values` (max saves its int64 B·heads·S indices);
    `softmax(dtype=its own)` saves its output; the sink column is sliced off (a view) and `.to(v.dtype)` copies
    it only when the dtypes differ; `matmul(probs, v)` saves the autocast casts of those probabilities (an fp32
    softmax's bf16 copy) and of the repeated v; `transpose(1, 2).contiguous()` copies the output. Lifetimes
    follow the Python names: the masked scores (`attn_weights`) live until the `.to()` rebinds the name, the
    shifted logits (`combined_logits`) and the probabilities until the function returns."""
    T, heads = settings.T, m.num_attention_heads
    dtype = settings.autocast_dtype or q.dtype
    requires_grad = q.requires_grad or k.requires_grad or v.requires_grad
    if m.num_key_value_heads != heads:  # repeat_kv: expand + reshape, a copy
        k = walk.new(T * m.q_dim, k.dtype, k.requires_grad)
        v = walk.new(T * m.q_dim, v.dtype, v.requires_grad)
    walk.pinned.update({q.id: q.nbytes, k.id: k.nbytes, v.id: v.nbytes})
    scores = T * heads * S  # B·heads·S² = T·heads·S
    mask_dtype = settings.norm_dtype  # the embeddings' dtype: the load dtype, fp32 after kbit prep
    sink_dtype = settings.norm_dtype  # the sinks are a plain parameter: the load dtype, fp32 after kbit prep
    q_cast, k_cast = walk.cast(q, dtype), walk.cast(k, dtype)
    product = walk.new(scores, dtype, requires_grad)
    if requires_grad:
        walk.save(q_cast, k_cast)
    walk.transient(q_cast, k_cast, product)
    scaled = walk.new(scores, dtype, requires_grad)
    walk.transient(product, scaled)
    masked = walk.new(scores, promote(dtype, mask_dtype), requires_grad)
    walk.transient(scaled, masked)
    walk.pinned[masked.id] = masked.nbytes
    combined = walk.new(scores + T * heads, promote(masked.dtype, sink_dtype), requires_grad)
    maxima, indices = walk.new(T * heads, combined.dtype, False), walk.new(T * heads, "int64", False)
    if requires_grad:
        walk.save(indices)
    walk.transient(combined, maxima, indices)
    shifted = walk.new(combined.numel, combined.dtype, requires_grad)
    walk.transient(combined, maxima, indices, shifted)
    walk.pinned[shifted.id] = shifted.nbytes
    probs = walk.new(combined.numel, combined.dtype, requires_grad)
    if requires_grad:
        walk.save(probs)
    walk.transient(probs)
    walk.pinned[probs.id] = probs.nbytes
    weights = probs if probs.dtype == v.dtype else walk.new(scores, v.dtype, requires_grad)
    walk.transient(weights)
    del walk.pinned[masked.id]
    weights_cast, v_cast = walk.cast(weights, dtype), walk.cast(v, dtype)  # the matmul's autocast casts
    out = walk.new(T * m.q_dim, dtype, requires_grad)
    if requires_grad:
        walk.save(weights_cast, v_cast)
    walk.transient(weights, weights_cast, v_cast, out)
    contiguous = walk.new(T * m.q_dim, dtype, requires_grad)
    walk.transient(weights, out, contiguous)
    for tensor in (q, k, v, shifted, probs):
        del walk.pinned[tensor.id]
    return contiguous


def gpt_oss_moe(walk: Walk, settings: WalkSettings, m: ModelSpec, x: SymbolicTensor, trainable: bool) -> SymbolicTensor:
    """GptOssMLP in training. Router (`GptOssTopKRouter`): `F.linear(x, weight, bias)` under autocast (saves x
    when the router trains, the weight's autocast cast when x needs a gradient), `topk` on the logits (saves
    the T·k int64 indices), `softmax(top_values, dtype=their own)` (saves its T·k output, the logits' dtype).
    Experts (`grouped_mm_experts_forward`): sort the S = T·k pairs by expert, gather `hidden_states[perm // k]`
    (saves the S int64 indices) and `sample_weights[perm]` (saves perm); the up projection
    `_grouped_mm(input.to(weight.dtype), gate_up_proj)` (not an autocast op: the expert weights' dtype, fp32
    after kbit prep; saves its input when the experts train) plus `gate_up_proj_bias[expert_ids]` (an S·2I
    gathered copy, added in place; the index saves the sorted ids when the biases train); `_apply_gate`: the
    strided gate / up views clamped (each clamp saves the whole S·2I output through its view), `sigmoid(gate ·
    alpha)` saves its output, `gate · sigmoid` both operands, `(up + 1) · glu` both: S·2I + 4·S·I saved; the
    down projection the same way (its S·H bias gathered); the S·H output times the pair weights (each saved for
    the other's gradient), `weighted_out[inv_perm]` (saves the S int64 inverse permutation), the sum over k.
    PEFT adapts none of them by name (`all-linear` stops at the attention); `target_parameters` reaches them
    (lora.ParamWrapper, a parametrization: each access to `gate_up_proj` / `down_proj` / the router weight
    materialises W + s·BA in the compute dtype, held by the experts function's locals and saved by the grouped
    matmul, with the adapter factors' autocast casts saved by the baddbmm that builds the delta: per layer, not
    per token), and the adapted weight's grouped matmul then saves its input."""
    T, top_k, experts = settings.T, m.num_experts_per_tok, m.num_local_experts
    hidden, intermediate = m.hidden_size, m.intermediate_size
    pairs = T * top_k
    param_dtype = settings.norm_dtype  # router and expert tensors: the load dtype, fp32 after kbit prep
    autocast_dtype = settings.autocast_dtype
    adapted = settings.parameter_adapters
    up_grad = trainable or "gate_up_proj" in adapted
    down_grad = trainable or "down_proj" in adapted
    router_grad = trainable or "router.weight" in adapted
    experts_grad = up_grad or down_grad
    routed_grad = x.requires_grad or router_grad  # the routing weights need a gradient
    grad = x.requires_grad or experts_grad
    # ParamWrapper's `_LoraFactorsProxy` (one adapter on stacked experts): `baddbmm(W, lhs, rhs)` with autocast
    # off, in W's dtype, the factors cast to it (`get_delta_factors`: lhs.to(param.dtype)) and held by the
    # proxy; `parametrize.cached()` keeps the merged weight for the whole experts forward
    param_bytes = BYTES[param_dtype]
    casts = param_bytes if param_dtype != settings.adapter_dtype else 0
    merged = 0
    for p in m.moe_params:
        if p.name in adapted:
            factors = p.experts * settings.lora_rank * (p.in_features + p.out_features)
            merged += p.params * param_bytes + casts * factors
            walk.per_layer_saved += p.params * param_bytes + casts * factors
    # ---- router
    logits = router_logits(walk, settings, m, x, router_grad, routed_grad, merged)
    top_values, indices = walk.new(T * top_k, logits.dtype, routed_grad), walk.new(T * top_k, "int64", False)
    if routed_grad:
        walk.save(indices)
    walk.transient(x, logits, top_values, indices, extra_ref=merged)
    scores = walk.new(T * top_k, logits.dtype, routed_grad)
    if routed_grad:
        walk.save(scores)
    walk.transient(x, top_values, indices, scores, extra_ref=merged)
    walk.pinned.update({x.id: x.nbytes, indices.id: indices.nbytes, scores.id: scores.nbytes})
    # ---- experts: sort the pairs by expert, gather, two grouped matmuls with gathered biases, the gate
    locals_kept = sort_and_gather(walk, x, scores, pairs, hidden, experts, routed_grad, grad, merged)
    expert_ids, _, gathered, pair_weights, _ = locals_kept
    up_bias = walk.new(pairs * 2 * intermediate, param_dtype, trainable)
    if trainable:  # the biases train: the gather saves the sorted ids
        walk.save(expert_ids)
    walk.pinned[up_bias.id] = up_bias.nbytes  # `selected_biases`, until the down projection's replaces it
    mm_input = walk.cast(gathered, param_dtype)
    gate_up = walk.new(pairs * 2 * intermediate, mm_input.dtype, x.requires_grad or up_grad)
    if up_grad:
        walk.save(mm_input)
    walk.transient(mm_input, gate_up, extra_ref=merged)
    walk.pinned[gate_up.id] = gate_up.nbytes  # `proj_out`, until the gate's output replaces it
    active = gate_up.requires_grad
    gate = walk.new(pairs * intermediate, param_dtype, active)
    up = walk.new(pairs * intermediate, param_dtype, active)
    scaled = walk.new(pairs * intermediate, param_dtype, active)
    if active:
        walk.save(gate_up)
    walk.transient(gate, up, scaled, extra_ref=merged)
    sigmoid = walk.new(pairs * intermediate, param_dtype, active)
    glu = walk.new(pairs * intermediate, param_dtype, active)
    if active:
        walk.save(gate, sigmoid)
    walk.transient(gate, up, scaled, sigmoid, extra_ref=merged)
    walk.transient(gate, up, sigmoid, glu, extra_ref=merged)
    up_plus_one = walk.new(pairs * intermediate, param_dtype, active)
    gated = walk.new(pairs * intermediate, param_dtype, active)
    if active:
        walk.save(up_plus_one, glu)
    walk.transient(gate, up, up_plus_one, glu, gated, extra_ref=merged)
    del walk.pinned[gate_up.id]
    down_bias = walk.new(pairs * hidden, param_dtype, trainable)
    walk.transient(gated, down_bias, extra_ref=merged)
    del walk.pinned[up_bias.id]
    expert_out = walk.new(pairs * hidden, param_dtype, active or down_grad)
    if down_grad:
        walk.save(gated)
    walk.transient(gated, down_bias, expert_out, extra_ref=merged)
    walk.pinned[expert_out.id] = expert_out.nbytes  # `proj_out`, until the function returns
    weighted = walk.new(pairs * hidden, promote(param_dtype, scores.dtype), expert_out.requires_grad or routed_grad)
    if routed_grad:
        walk.save(expert_out)
    if expert_out.requires_grad:
        walk.save(pair_weights)
    walk.transient(down_bias, weighted, extra_ref=merged)
    inverse, arange = walk.new(pairs, "int64", False), walk.new(pairs, "int64", False)
    reordered = walk.new(pairs * hidden, weighted.dtype, weighted.requires_grad)
    if weighted.requires_grad:
        walk.save(inverse)
    # a checkpointed recompute stops at this index, its last saved tensor (packed before the output exists)
    walk.transient(down_bias, weighted, inverse, arange, extra_ref=merged)
    walk.recompute_stop = len(walk.live)
    walk.transient(down_bias, weighted, inverse, arange, reordered, extra_ref=merged)
    walk.down_saved = 0  # the backward's first MoE node frees nothing before its peak (activations.py)
    # as in layer_ops._moe: the recompute starts at the inverse-permutation index, holding the S·H gradient of
    # `weighted_out` where a dense layer holds a T·H one in the compute dtype
    walk.recompute_tail = pairs * hidden * BYTES[weighted.dtype] - T * hidden * BYTES[autocast_dtype or x.dtype]
    summed = walk.new(T * hidden, weighted.dtype, weighted.requires_grad)
    walk.transient(down_bias, reordered, summed, extra_ref=merged)
    for tensor in (x, indices, scores, *locals_kept, expert_out):
        del walk.pinned[tensor.id]
    return walk.cast(summed, x.dtype)
