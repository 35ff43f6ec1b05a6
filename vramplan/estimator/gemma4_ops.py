"""A Gemma 4 decoder layer op by op, as the symbolic walk (`walk.py`) sees it (transformers 5.25
models/gemma4/modeling_gemma4.py `Gemma4TextDecoderLayer`, `Gemma4TextAttention`, `Gemma4RMSNorm`).

Each layer walks its own shapes (`walk.layer_specs`: head_dim and key heads of its type, only the linears it
holds). Where it differs from Gemma 3's walk (`layer_ops`):
- Gemma4RMSNorm: `x.float()`, `x * torch.pow(x.pow(2).mean(-1) + eps, -0.5)`: pow(·, -0.5) saves its input and
  the product its output, two fp32 row vectors where Gemma 3's rsqrt saves one; then `* weight.float()` (a
  trainable weight saves the fp32 normed tensor) and `.type_as(x)`;
- values normed too (`v_norm`, no weight); a k = v global layer (`attention_k_eq_v`: no v_proj) norms the one
  k_proj output twice, each norm with its own fp32 copy;
- scaling 1.0, no attention soft-capping;
- a KV-shared layer ("reuse") computes no keys or values: it attends over the storing layer's, which that layer's
  attention has saved already (not counted again);
- the MoE block (`enable_moe_block`, 26B-A4B) beside the dense MLP: `moe_ops`' grouped experts after Gemma 4's
  router (RMSNorm without weight, `* scale * H^-0.5`, proj, fp32 softmax, top-k, renormalised, `*
  per_expert_scale[index]`), with its three norms;
- per-layer embeddings (PLE): `per_layer_input_gate`, GELU, `* per_layer_input`, `per_layer_projection`, a norm;
- `hidden_states *= layer_scalar` (a buffer: in-place, saves nothing).
"""

from __future__ import annotations

import functools

from vramplan.estimator.layer_ops import _attention, _rope
from vramplan.estimator.mlp_ops import _down, _gated
from vramplan.estimator.linear_ops import linear
from vramplan.estimator.moe_ops import sort_and_gather
from vramplan.estimator.output_norm_ops import output_norm
from vramplan.estimator.walk import BYTES, SymbolicTensor, Walk, WalkSettings, promote
from vramplan.spec import ModelSpec


def g4_norm(
    walk: Walk, x: SymbolicTensor, features: int, trainable: bool, with_scale: bool = True
) -> SymbolicTensor:
    """Gemma4RMSNorm over the last `features` of x (module docstring)."""
    rows = x.numel / features
    x_fp32 = walk.cast(x, "fp32")
    mean_eps = walk.new(rows, "fp32", x.requires_grad)  # x.pow(2).mean(-1, keepdim=True) + eps
    inverse = walk.new(rows, "fp32", x.requires_grad)  # torch.pow(mean_eps, -0.5)
    normed = walk.new(rows * features, "fp32", x.requires_grad)
    if x.requires_grad:
        walk.save(x_fp32, mean_eps, inverse)
    if not with_scale:
        out = walk.cast(normed, x.dtype)
        walk.transient(x, x_fp32, normed, out)
        return out
    product = walk.new(rows * features, "fp32", x.requires_grad or trainable)
    if trainable:
        walk.save(normed)
    out = walk.cast(product, x.dtype)
    walk.transient(x, x_fp32, normed, product, out)
    return out


def decoder_layer(
    walk: Walk, settings: WalkSettings, m: ModelSpec, x: SymbolicTensor, trainable: bool
) -> SymbolicTensor:
    """One Gemma 4 decoder layer of `m` (this layer's spec, `walk.layer_specs`); returns its output."""
    T, hidden = settings.T, m.hidden_size
    residual_dtype = x.dtype
    names = {li.name for li in m.linears}

    def project(inp: SymbolicTensor, name: str) -> SymbolicTensor:
        spec = next(li for li in m.linears if li.name == name)
        return linear(walk, settings, inp, name, spec.out_features, trainable, settings.quantized)

    def norm(tensor: SymbolicTensor, features: int = 0, with_scale: bool = True) -> SymbolicTensor:
        return g4_norm(walk, tensor, features or hidden, trainable, with_scale)

    normed_input = norm(x)
    # ---- attention
    q = norm(project(normed_input, "q_proj"), m.head_dim)
    q = _rope(walk, q, residual_dtype)
    if "k_proj" in names:
        k, v = _keys_values(walk, m, normed_input, residual_dtype, project, norm)
    else:  # KV-shared: the storing layer's keys and values, saved by its own attention already
        k = walk.new(T * m.kv_dim, q.dtype, False)
        v = walk.new(T * m.kv_dim, q.dtype, False)
        walk.saved[k.id] = walk.saved[v.id] = 0
    attention_out = project(_attention(walk, settings, m, q, k, v, None), "o_proj")
    attention_out = norm(attention_out)
    residual = walk.new(
        T * hidden, promote(residual_dtype, attention_out.dtype), x.requires_grad or attention_out.requires_grad
    )
    walk.pinned[residual.id] = residual.nbytes  # alive through the MLP for the second residual add
    # ---- MLP (and the MoE block beside it)
    walk.mark("mlp")
    mlp_out = _gated(walk, norm(residual), project, _width(m), "")
    if m.num_local_experts:
        dense = norm(mlp_out)
        walk.pinned[dense.id] = dense.nbytes
        routed = norm(_experts(walk, settings, m, residual, norm(residual), trainable))
        del walk.pinned[dense.id]
        mlp_out = walk.new(T * hidden, promote(dense.dtype, routed.dtype), dense.requires_grad or routed.requires_grad)
        walk.transient(dense, routed, mlp_out)
    mlp_out = output_norm(walk, settings, m, mlp_out, residual_dtype, norm)  # post_feedforward_layernorm
    # `*= layer_scalar` saves the scalar: backward's first node needs a saved tensor, so the recompute starts
    # there, on the incoming gradient alone
    walk.recompute_tail = -T * hidden * BYTES[settings.autocast_dtype or residual_dtype]
    del walk.pinned[residual.id]
    out = walk.new(T * hidden, promote(residual.dtype, mlp_out.dtype), residual.requires_grad or mlp_out.requires_grad)
    if "per_layer_input_gate" in names:
        out = _per_layer_input(walk, settings, m, out, project, norm)
    return out  # `*= layer_scalar`: in place by a buffer, nothing saved


def _keys_values(walk: Walk, m: ModelSpec, normed_input, residual_dtype: str, project, norm):
    """k_proj (and v_proj, unless k = v), k_norm, RoPE on k, v_norm: the attention's keys and values."""
    k_raw = project(normed_input, "k_proj")
    v_raw = project(normed_input, "v_proj") if any(li.name == "v_proj" for li in m.linears) else k_raw
    k = _rope(walk, norm(k_raw, m.head_dim), residual_dtype)
    return k, norm(v_raw, m.head_dim, with_scale=False)


@functools.lru_cache(maxsize=256)
def stored_kv_graph(
    m: ModelSpec, settings: WalkSettings, trainable: bool, input_requires_grad: bool, residual_dtype: str
) -> complex:
    """Per token: what a KV-storing layer's recompute leaves in `shared_kv_states` under checkpointing. The
    recompute stores its keys and values there again (Gemma4TextAttention.forward, 5.25), replacing the
    forward's, and they carry the recompute's graph: every tensor saved from the layer's input to them (the
    input norm's, k_proj's / v_proj's, k_norm's and v_norm's; torch/utils/checkpoint.py `_recomputation_hook`
    returns what it packs, so the recomputed graph holds it). The dict lives as long as the checkpointed layers'
    arguments, to the end of the bottom layer's backward. `m` is the layer's spec (walk.layer_specs)."""
    walk = Walk()
    x = walk.new(m.hidden_size, residual_dtype, input_requires_grad)

    def project(inp: SymbolicTensor, name: str) -> SymbolicTensor:
        spec = next(li for li in m.linears if li.name == name)
        return linear(walk, settings, inp, name, spec.out_features, trainable, settings.quantized)

    def norm(tensor: SymbolicTensor, features: int = 0, with_scale: bool = True) -> SymbolicTensor:
        return g4_norm(walk, tensor, features or m.hidden_size, trainable, with_scale)

    # the layer's input too, where the input norm saves it (an fp32 residual, no cast): freed with the layer's
    # backward otherwise, here held to the end
    k, v = _keys_values(walk, m, norm(x), x.dtype, project, norm)
    return walk.saved_bytes + sum({t.id: t.nbytes for t in (k, v)}.values())


def _width(m: ModelSpec) -> int:
    """This layer's MLP width (a KV-shared layer's double-wide MLP: its gate_proj says)."""
    return next(li.out_features for li in m.linears if li.name == "gate_proj")


def _per_layer_input(walk: Walk, settings: WalkSettings, m: ModelSpec, x, project, norm) -> SymbolicTensor:
    """PLE: gate (H -> P), GELU (saves its input), `* per_layer_input` (the model's T·P slice of its fp32-free
    per-layer inputs: saves both operands), projection (P -> H), post_per_layer_input_norm, residual add."""
    T = settings.T
    walk.pinned[x.id] = x.nbytes
    gate = project(x, "per_layer_input_gate")
    width = gate.numel
    activated = walk.new(width, gate.dtype, gate.requires_grad)
    if gate.requires_grad:
        walk.save(gate)
    product = walk.new(width, promote(activated.dtype, x.dtype), activated.requires_grad)
    if product.requires_grad:
        walk.save(activated)
    walk.transient(gate, activated, product)
    projected = norm(project(product, "per_layer_projection"))
    del walk.pinned[x.id]
    return walk.new(T * m.hidden_size, promote(x.dtype, projected.dtype), True)


def _experts(
    walk: Walk, settings: WalkSettings, m: ModelSpec, residual, expert_input: SymbolicTensor, trainable: bool
) -> SymbolicTensor:
    """Gemma 4's router on the residual, then the fused experts (`moe_ops`' grouped_mm path, GELU) on the
    pre_feedforward_layernorm_2 output. No LoRA on the router scale or the experts (`target_parameters`)."""
    T, top_k, experts = settings.T, m.num_experts_per_tok, m.num_local_experts
    hidden = m.hidden_size
    inter = next(p.shape[1] // 2 for p in m.moe_params if p.name == "gate_up_proj")
    pairs = T * top_k
    param_dtype = settings.norm_dtype
    routed_grad = residual.requires_grad or trainable
    # ---- router: norm without weight, * scale (a parameter: saves the normed input when it trains), * H^-0.5
    routed_in = g4_norm(walk, residual, hidden, trainable, with_scale=False)
    scaled = walk.new(T * hidden, promote(routed_in.dtype, param_dtype), routed_grad)
    if trainable:
        walk.save(routed_in)
    walk.transient(routed_in, scaled)
    scaled2 = walk.new(T * hidden, scaled.dtype, routed_grad)
    walk.transient(scaled, scaled2)
    logits = linear(walk, settings, scaled2, "proj", experts, trainable, settings.quantized)
    probs = walk.new(T * experts, "fp32", routed_grad)
    indices = walk.new(T * top_k, "int64", False)
    top_values = walk.new(T * top_k, "fp32", routed_grad)
    if routed_grad:
        walk.save(probs, indices)
    walk.transient(logits, probs, indices, top_values)
    normalised = walk.new(T * top_k, "fp32", routed_grad)
    if routed_grad:
        walk.save(walk.new(T, "fp32", False), top_values)  # `/=` in place: the sum and the divided values
    scale_gathered = walk.new(T * top_k, param_dtype, trainable)  # per_expert_scale[index]
    scores = walk.new(T * top_k, promote("fp32", param_dtype), routed_grad)
    if routed_grad:
        walk.save(scale_gathered)
    if trainable:
        walk.save(normalised, indices)
    walk.transient(normalised, scale_gathered, scores)
    # ---- experts
    x = expert_input
    walk.pinned[x.id] = x.nbytes
    grad = x.requires_grad or trainable or routed_grad
    locals_kept = sort_and_gather(walk, x, scores, pairs, hidden, experts, routed_grad, grad, 0, held=(scores,))
    _, _, gathered, pair_weights, _ = locals_kept
    mm_input = walk.cast(gathered, param_dtype)
    gate_up = walk.new(pairs * 2 * inter, param_dtype, x.requires_grad or trainable)
    if trainable:
        walk.save(mm_input)
    walk.transient(gathered, mm_input, gate_up)
    activated = walk.new(pairs * inter, param_dtype, gate_up.requires_grad)
    product = walk.new(pairs * inter, param_dtype, gate_up.requires_grad)
    if gate_up.requires_grad:
        walk.save(gate_up, activated)
    walk.transient(gate_up, activated, product)
    expert_out = walk.new(pairs * hidden, param_dtype, gate_up.requires_grad)
    if trainable:
        walk.save(product)
    walk.transient(product, expert_out)
    walk.pinned[expert_out.id] = expert_out.nbytes
    weighted = walk.new(pairs * hidden, promote(param_dtype, scores.dtype), expert_out.requires_grad or routed_grad)
    if routed_grad:
        walk.save(expert_out)
    if expert_out.requires_grad:
        walk.save(pair_weights)
    walk.transient(expert_out, weighted)
    inverse = walk.new(pairs, "int64", False)
    reordered = walk.new(pairs * hidden, weighted.dtype, weighted.requires_grad)
    if weighted.requires_grad:
        walk.save(inverse)
    walk.transient(weighted, inverse, reordered)
    summed = walk.new(T * hidden, weighted.dtype, weighted.requires_grad)
    walk.transient(reordered, summed)
    for tensor in (x, *locals_kept, expert_out):
        walk.pinned.pop(tensor.id, None)
    return walk.cast(summed, x.dtype)
