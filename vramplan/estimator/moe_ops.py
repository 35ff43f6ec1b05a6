"""A routed MoE block op by op, as the symbolic walk (`walk.py`) sees it: the router, then the fused experts
(transformers 5.24 `grouped_mm_experts_forward`). Sources in `moe_block`'s docstring; DeepSeek-V3's grouped
sigmoid router: `mla_ops.grouped_router`."""

from __future__ import annotations

from vramplan.estimator.linear_ops import linear
from vramplan.estimator.mla_ops import grouped_router
from vramplan.estimator.walk import BYTES, SymbolicTensor, Walk, WalkSettings, promote
from vramplan.spec import ModelSpec
from vramplan.spec.family_traits import DEEPSEEK_MOE


def moe_block(walk: Walk, settings: WalkSettings, m: ModelSpec, x: SymbolicTensor, trainable: bool) -> SymbolicTensor:
    """A routed MoE block as transformers 5.24 runs it in training: the top-k router, then the experts through
    `grouped_mm_experts_forward` (integrations/moe.py; the default `experts_implementation`, also on CUDA).

    Router (`MixtralTopKRouter` / `Qwen3MoeTopKRouter`): F.linear(x, weight) under autocast (saves x when the
    router trains, its weight's autocast cast when x needs a gradient), softmax in fp32 (saves its T·E output;
    Mixtral casts the logits with `.float()` first), topk (saves the T·k int64 indices), the renormalisation
    `/= sum` (Mixtral always, Qwen3-MoE under `norm_topk_prob`: saves the T fp32 sum and the T·k quotient);
    Qwen3-MoE casts the weights back to the logits' dtype. Experts: sort the S = T·k (token, expert) pairs,
    gather `hidden_states[perm // k]` (saves the S int64 indices), `sample_weights[perm]` (saves perm), then
    `_grouped_mm(input.to(weight.dtype), ...)`: not an autocast op, so the expert intermediates are in the
    expert weights' dtype (fp32 after kbit prep: they are not nn.Linear, bitsandbytes leaves them alone). It
    saves its input when the weights need a gradient; SiLU saves the whole S·2I gate_up output (its view),
    the product its S·I SiLU output; the S·H expert output times the S routing weights (each saved for the
    other's gradient), `weighted_out[inv_perm]` (saves the S int64 inverse permutation), a sum over k.
    With LoRA on the experts (PEFT `target_parameters`, ParamWrapper; Mixtral) the expert weights require grad
    and PEFT materialises each layer's weight deltas (E·3·I·H in the compute dtype), saved for the backward.
    Traced op by op under saved-tensor hooks on tiny Mixtral / Qwen3-MoE blocks (bf16, fp32 after kbit prep).
    """
    T, top_k, experts = settings.T, m.num_experts_per_tok, m.num_local_experts
    hidden, intermediate = m.hidden_size, m.intermediate_size
    pairs = T * top_k
    param_dtype = settings.norm_dtype  # router and expert tensors: the load dtype, fp32 after kbit prep
    autocast_dtype = settings.autocast_dtype
    # the router / expert tensors with LoRA: through PEFT's MoE conversion of `target_modules` (their
    # transformers-4 names), or named in `target_parameters` (Qwen3.5-MoE: `parameter_adapters`, rank r)
    by_modules = {p.name for p in m.moe_params if settings.lora_targets & set(p.peft_names)}
    adapted = by_modules | settings.parameter_adapters
    expert_lora = any(p.name in adapted for p in m.moe_params if len(p.shape) == 3)
    experts_grad = trainable or expert_lora
    router_grad = trainable or "gate.weight" in adapted
    routed_grad = x.requires_grad or router_grad  # the routing weights need a gradient
    grad = x.requires_grad or experts_grad or routed_grad
    # LoRA on the router / experts (PEFT lora.ParamWrapper, a parametrization: W + s·BA materialised per
    # forward, peft/tuners/lora/layer.py 0.21.2): the merged weight in the compute dtype, saved by F.linear /
    # grouped_mm (and referenced while the block runs, under checkpointing too), and the adapter factors'
    # autocast casts, saved by the baddbmm (router: the matmul) that builds the delta; per layer, not per token
    compute_bytes = BYTES[autocast_dtype or param_dtype]
    casts = BYTES[autocast_dtype] if autocast_dtype and autocast_dtype != settings.adapter_dtype else 0
    merged = 0
    for p in m.moe_params:
        if p.name in adapted:
            rank = settings.lora_rank * (len(p.peft_names) if p.name in by_modules else 1)
            merged += p.params * compute_bytes
            factors = p.experts * rank * (p.in_features + p.out_features)
            walk.per_layer_saved += p.params * compute_bytes + casts * factors
    # ---- router
    if m.model_type in DEEPSEEK_MOE:
        scores = grouped_router(walk, settings, m, x, router_grad, routed_grad, merged)
    else:
        scores = _softmax_router(walk, settings, m, x, router_grad, routed_grad, merged)
    walk.pinned[x.id] = x.nbytes  # the block's reshaped input, referenced until it returns
    # ---- experts: sort the pairs by expert, gather, two grouped matmuls, weight, restore the order, sum over k
    locals_kept = sort_and_gather(walk, x, scores, pairs, hidden, experts, routed_grad, grad, merged, held=(scores,))
    _, _, gathered, pair_weights, _ = locals_kept
    mm_input = walk.cast(gathered, param_dtype)
    gate_up = walk.new(pairs * 2 * intermediate, param_dtype, x.requires_grad or experts_grad)
    if experts_grad:
        walk.save(mm_input)
    walk.transient(gathered, mm_input, gate_up, extra_ref=merged)
    activated = walk.new(pairs * intermediate, param_dtype, gate_up.requires_grad)
    product = walk.new(pairs * intermediate, param_dtype, gate_up.requires_grad)
    if gate_up.requires_grad:
        walk.save(gate_up, activated)
    walk.transient(gate_up, activated, product, extra_ref=merged)
    expert_out = walk.new(pairs * hidden, param_dtype, gate_up.requires_grad)
    if experts_grad:
        walk.save(product)
    walk.transient(product, expert_out, extra_ref=merged)
    walk.pinned[expert_out.id] = expert_out.nbytes  # `proj_out`, until the function returns
    weighted = walk.new(pairs * hidden, promote(param_dtype, scores.dtype), expert_out.requires_grad or routed_grad)
    if routed_grad:
        walk.save(expert_out)
    if expert_out.requires_grad:
        walk.save(pair_weights)
    walk.transient(expert_out, weighted, extra_ref=merged)
    inverse = walk.new(pairs, "int64", False)
    reordered = walk.new(pairs * hidden, weighted.dtype, weighted.requires_grad)
    if weighted.requires_grad:
        walk.save(inverse)
    arange = walk.new(pairs, "int64", False)
    # a checkpointed recompute stops at this index, its last saved tensor (packed before the output exists)
    walk.transient(weighted, inverse, arange, extra_ref=merged)
    walk.recompute_stop = len(walk.live)
    walk.transient(weighted, inverse, arange, reordered, extra_ref=merged)
    walk.down_saved = 0  # the backward's first MoE node frees nothing before its peak (activations.py)
    # the backward's first node that needs a saved tensor is this index (inv_perm): a checkpointed layer's
    # recompute starts there, holding the S·H gradient of `weighted_out` (the sum's expand, reshaped: a copy)
    # where a dense layer holds a T·H one in the compute dtype (`hidden_grad_bytes`)
    walk.recompute_tail = pairs * hidden * BYTES[weighted.dtype] - T * hidden * BYTES[autocast_dtype or x.dtype]
    summed = walk.new(T * hidden, weighted.dtype, weighted.requires_grad)
    walk.transient(reordered, summed, extra_ref=merged)
    for tensor in (x, *locals_kept, expert_out):
        del walk.pinned[tensor.id]
    shared = m.config.get("shared_expert_intermediate_size", 0) if m.model_type != "qwen3_5_moe_text" else 0
    if shared:
        summed = _shared_expert(walk, settings, x, summed, shared, m.hidden_size, trainable)
    return walk.cast(summed, x.dtype)


def sort_and_gather(
    walk: Walk,
    x: SymbolicTensor,
    scores: SymbolicTensor,
    pairs: int,
    hidden: int,
    experts: int,
    routed_grad: bool,
    grad: bool,
    merged: int,
    held: tuple[SymbolicTensor, ...] = (),
) -> tuple[SymbolicTensor, ...]:
    """transformers' grouped_mm experts path before its matmuls (integrations/moe.py, 5.24): the (token, expert)
    pairs sorted by expert (int64 ids, permutation, token index), the gathered input and the pair weights; autograd
    saves the token index (for the input's gradient) and the permutation (for the weights'); both grouped matmuls
    save the int32 offsets. Returns the function's locals, pinned until it returns (under checkpointing too): the
    sorted ids, perm, the gathered input, the pair weights, the histc input (S fp32 on CPU, int32 on CUDA).
    `held`: tensors also alive at the sort that are not pinned yet (the router's scores)."""
    expert_ids, perm, token_index = (walk.new(pairs, "int64", False) for _ in range(3))
    gathered = walk.new(pairs * hidden, x.dtype, x.requires_grad)
    if x.requires_grad:
        walk.save(token_index)
    pair_weights = walk.new(pairs, scores.dtype, routed_grad)
    if routed_grad:
        walk.save(perm)
    if grad:
        walk.per_layer_saved += experts * BYTES["int32"]  # the offsets, saved by both grouped matmuls
    walk.transient(*held, expert_ids, perm, token_index, gathered, pair_weights, extra_ref=merged)
    histc_input = walk.new(pairs, "int32", False)
    locals_kept = (expert_ids, perm, gathered, pair_weights, histc_input)
    walk.pinned.update({tensor.id: tensor.nbytes for tensor in locals_kept})
    return locals_kept


def router_logits(
    walk: Walk,
    settings: WalkSettings,
    m: ModelSpec,
    x: SymbolicTensor,
    router_grad: bool,
    routed_grad: bool,
    merged: int,
) -> SymbolicTensor:
    """The router's `F.linear(x, weight)` under autocast (Mixtral's, Qwen3-MoE's, gpt-oss's with its bias): x
    cast to the autocast dtype and saved when the router trains, the weight's autocast cast saved when x needs a
    gradient (the router weight is in the load dtype, fp32 after kbit prep); returns the T·E logits."""
    experts, hidden, autocast_dtype = m.num_local_experts, m.hidden_size, settings.autocast_dtype
    x_router = walk.cast(x, autocast_dtype) if autocast_dtype else x
    logits = walk.new(settings.T * experts, autocast_dtype or x.dtype, routed_grad)
    if router_grad:
        walk.save(x_router)
    if x.requires_grad and autocast_dtype and settings.norm_dtype != autocast_dtype:
        walk.per_layer_saved += experts * hidden * BYTES[autocast_dtype]  # the weight's autocast cast
    walk.transient(x, x_router, logits, extra_ref=merged)
    return logits


def _softmax_router(
    walk: Walk,
    settings: WalkSettings,
    m: ModelSpec,
    x: SymbolicTensor,
    router_grad: bool,
    routed_grad: bool,
    merged: int,
) -> SymbolicTensor:
    """Mixtral's / Qwen3-MoE's router (see `moe_block`); returns the T·k routing weights."""
    T, top_k, experts = settings.T, m.num_experts_per_tok, m.num_local_experts
    logits = router_logits(walk, settings, m, x, router_grad, routed_grad, merged)
    logits_fp32 = walk.cast(logits, "fp32") if m.model_type == "mixtral" else logits
    probs = walk.new(T * experts, "fp32", routed_grad)
    indices = walk.new(T * top_k, "int64", False)
    top_values = walk.new(T * top_k, "fp32", routed_grad)
    if routed_grad:
        walk.save(probs, indices)
    walk.transient(x, logits, logits_fp32, probs, indices, top_values, extra_ref=merged)
    if m.model_type in ("mixtral", "qwen3_5_moe_text") or m.config.get("norm_topk_prob", False):
        normalised = walk.new(T * top_k, "fp32", routed_grad)
        if routed_grad:
            walk.save(walk.new(T, "fp32", False), normalised)
        top_values = normalised
    scores = walk.cast(top_values, logits.dtype) if m.model_type != "mixtral" else top_values
    return scores


def _shared_expert(
    walk: Walk,
    settings: WalkSettings,
    x: SymbolicTensor,
    routed: SymbolicTensor,
    width: int,
    hidden: int,
    trainable: bool,
) -> SymbolicTensor:
    """Llama4TextMoe's shared expert (a Llama4TextMLP of `width` on the block input) while the routed sum is
    held, then `out.add_(routed)` in place (modeling_llama4.py, 5.24): SiLU saves the gate output, the product
    its operands; the linears as any frozen (or fully trained) nn.Linear (LoRA on them is not walked here).
    Tiny llama4_text traces (tests/oracle/test_llama4_trace.py) hold the generic Llama 4 walk that uses it."""
    T = settings.T
    walk.pinned.update({x.id: x.nbytes, routed.id: routed.nbytes})
    gate = linear(walk, settings, x, "shared_expert.gate_proj", width, trainable, settings.quantized)
    activated = walk.new(T * width, gate.dtype, gate.requires_grad)
    if gate.requires_grad:
        walk.save(gate)
    walk.transient(gate, activated)
    walk.pinned[activated.id] = activated.nbytes
    up = linear(walk, settings, x, "shared_expert.up_proj", width, trainable, settings.quantized)
    del walk.pinned[activated.id]
    product = walk.new(T * width, promote(activated.dtype, up.dtype), gate.requires_grad or up.requires_grad)
    if product.requires_grad:
        walk.save(activated, up)
    walk.transient(activated, up, product)
    out = linear(walk, settings, product, "shared_expert.down_proj", hidden, trainable, settings.quantized)
    walk.recompute_stop = len(walk.live)  # a checkpointed recompute runs through the shared expert
    for tensor in (x, routed):
        del walk.pinned[tensor.id]
    return out


def qwen35_sparse_block(
    walk: Walk, settings: WalkSettings, m: ModelSpec, x: SymbolicTensor, project, gated, trainable: bool
) -> SymbolicTensor:
    """Qwen3_5MoeSparseMoeBlock.forward (modeling_qwen3_5_moe.py, transformers 5.25): the shared expert (a gated
    MLP of nn.Linear, `gated`: mlp_ops._gated) on the block input, then the router (Qwen3-MoE's, the top-k
    weights always renormalised) and the fused experts (`moe_block`) while its output waits, then
    `sigmoid(shared_expert_gate(x)) * shared` (sigmoid saves its T·1 output, the product both operands) and the
    sum with the routed output. The backward meets the gate's product first: what it and the gate saved is freed
    before the experts' backward (`down_saved`), and a checkpointed recompute runs through it."""
    T, hidden = settings.T, m.hidden_size
    walk.pinned[x.id] = x.nbytes  # the block's reshaped input, referenced until it returns
    shared = gated(walk, x, project, m.shared_intermediate_size, "")
    walk.pinned[shared.id] = shared.nbytes
    routed = moe_block(walk, settings, m, x, trainable)
    walk.pinned.update({x.id: x.nbytes, routed.id: routed.nbytes})
    saved_before = walk.saved_bytes
    logit = project(x, "shared_expert_gate")
    weight = walk.new(T, logit.dtype, logit.requires_grad)
    if logit.requires_grad:
        walk.save(weight)
    walk.transient(logit, weight)
    gated_out = walk.new(T * hidden, promote(weight.dtype, shared.dtype), weight.requires_grad or shared.requires_grad)
    if shared.requires_grad:
        walk.save(weight)
    if weight.requires_grad:
        walk.save(shared)
    walk.transient(weight, shared, gated_out)
    walk.recompute_stop = len(walk.live)  # the product's saves are the layer's last: a recompute gets there
    walk.recompute_tail = 0  # the backward's first node that needs a saved tensor is the product, on a T·H gradient
    walk.down_saved = walk.saved_bytes - saved_before
    for tensor in (x, shared, routed):
        del walk.pinned[tensor.id]
    out = walk.new(T * hidden, promote(routed.dtype, gated_out.dtype), routed.requires_grad or gated_out.requires_grad)
    walk.transient(routed, gated_out, out)
    return out
