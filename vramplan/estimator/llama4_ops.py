"""Llama 4's text decoder layer ops on the walk (`walk.py`): what transformers 5.25 models/llama4/modeling_llama4.py
runs beside a Llama layer, and what autograd saves of it (torch 2.13 saving rules; CUDA's autocast policy).

- RoPE layers (`no_rope_layers[i]` 1): `apply_rotary_emb` takes q and k to fp32 (`.float()`), multiplies their
  complex views by `freqs_cis` (saved, per position only) and casts back (`type_as`): fp32 transients, a new q
  and k in their own dtype (`family_ops.fp32_rope`, the same ops as Cohere 2's). Then, under `use_qk_norm`,
  Llama4TextL2Norm (a weightless RMSNorm over head_dim): `x.float()` saved by pow and mul, the per-head fp32
  rsqrt saved, the fp32 product cast back (`l2_norm`).
- NoPE layers: no rotation and no qk-norm; under `attn_temperature_tuning` the query is scaled by position,
  `(q * attn_scales).to(q.dtype)` with fp32 scales (1, S, 1, 1): an fp32 product and its cast, the scales
  (S fp32 per layer) saved and left out here.
- The routed layers (`moe_layers`): Llama4TextMoe (`moe`). The dense layers: Llama4TextMLP (`mlp_ops._gated`).
"""

from __future__ import annotations

from vramplan.estimator.mlp_ops import _gated
from vramplan.estimator.moe_ops import router_logits
from vramplan.estimator.walk import BYTES, SymbolicTensor, Walk, WalkSettings, promote
from vramplan.spec import ModelSpec


def l2_norm(walk: Walk, x: SymbolicTensor, head_dim: int) -> SymbolicTensor:
    """Llama4TextL2Norm: `_norm(x.float()).type_as(x)`, `_norm` = x · rsqrt(mean(x²) + eps) over head_dim."""
    rows = x.numel / head_dim
    x_fp32 = walk.cast(x, "fp32")
    inverse_rms = walk.new(rows, "fp32", False)
    normed = walk.new(x.numel, "fp32", x.requires_grad)
    if x.requires_grad:
        walk.save(x_fp32, inverse_rms)
    out = walk.cast(normed, x.dtype)
    walk.transient(x, x_fp32, normed, out)
    return out


def query_key(
    walk: Walk, m: ModelSpec, q: SymbolicTensor, k: SymbolicTensor
) -> tuple[SymbolicTensor, SymbolicTensor]:
    """q and k between their projections and the attention (the module docstring's RoPE / NoPE layers)."""
    from vramplan.estimator.family_ops import fp32_rope

    if m.rope:
        q, k = fp32_rope(walk, q, k)
        if m.config.get("use_qk_norm", True):
            q, k = l2_norm(walk, q, m.head_dim), l2_norm(walk, k, m.head_dim)
        return q, k
    if m.config.get("attn_temperature_tuning", True):
        scaled = walk.new(q.numel, "fp32", q.requires_grad)
        out = walk.cast(scaled, q.dtype)
        walk.transient(q, scaled, out)
        q = out
    return q, k


def feed_forward(
    walk: Walk, settings: WalkSettings, m: ModelSpec, x: SymbolicTensor, project, trainable: bool
) -> SymbolicTensor:
    """A dense layer's Llama4TextMLP, or a routed layer's Llama4TextMoe."""
    if m.mlp != "moe":
        return _gated(walk, x, project, m.intermediate_size, "feed_forward.")
    return moe(walk, settings, m, x, project, trainable)


def moe(
    walk: Walk, settings: WalkSettings, m: ModelSpec, x: SymbolicTensor, project, trainable: bool
) -> SymbolicTensor:
    """Llama4TextMoe.forward (modeling_llama4.py, 5.25), T tokens, E experts:

    - Llama4Router: F.linear under autocast (`moe_ops.router_logits`), topk (saves its int64 indices), a -inf
      T·E tensor scattered with the top values (the scatter saves the same indices), `.float()`, sigmoid (saves
      its T·E fp32 output), `.to(logits dtype)`: the T·E scores, zero off the top-k after the sigmoid;
    - `hidden_states.repeat(E, 1)`: every expert sees every token (E·T·H in x's dtype), times the scores
      `transpose(0, 1).reshape(-1, 1)` (an E·T copy): the product saves the repeat when the scores need a
      gradient and the scores' copy when the input does;
    - Llama4TextExperts: `torch.bmm(x, gate_up_proj)` (autocast: x and the weight in the autocast dtype; saves
      x when the weight trains, the weight's cast when x needs a gradient: an E·H·2I copy of fp32 experts, per
      layer), chunk, SiLU (saves the gate view: the E·T·2I storage), `up * act` (saves the SiLU output),
      `torch.bmm(.., down_proj)`: E·T·H;
    - the shared expert (Llama4TextMLP, nn.Linear) on the block input while the routed output waits, then the
      sum over experts (T·H) added in place into its output.
    The backward meets the shared expert first: what it saved is freed before the experts' (`down_saved`)."""
    T, experts, hidden, width = settings.T, m.num_local_experts, m.hidden_size, m.intermediate_size
    param_dtype = settings.norm_dtype  # router and expert tensors: the load dtype, fp32 after kbit prep
    autocast_dtype = settings.autocast_dtype
    compute = autocast_dtype or param_dtype
    router_grad = experts_grad = trainable
    scores_grad = x.requires_grad or router_grad
    walk.pinned[x.id] = x.nbytes  # the block's reshaped input, referenced until it returns
    # ---- router
    logits = router_logits(walk, settings, m, x, router_grad, scores_grad, 0)
    walk.pinned[logits.id] = logits.nbytes  # returned with the output (router_logits)
    top_values = walk.new(T * m.num_experts_per_tok, logits.dtype, scores_grad)
    indices = walk.new(T * m.num_experts_per_tok, "int64", False)
    if scores_grad:
        walk.save(indices)
    filled = walk.new(T * experts, logits.dtype, scores_grad)  # full_like(-inf).scatter_(indices, top values)
    walk.transient(x, logits, top_values, indices, filled)
    filled_fp32 = walk.cast(filled, "fp32")
    probs = walk.new(T * experts, "fp32", scores_grad)
    if scores_grad:
        walk.save(probs)
    scores = walk.cast(probs, logits.dtype)
    walk.transient(x, filled, filled_fp32, probs, scores)
    # ---- every token to every expert, scaled by its score
    repeated = walk.new(experts * T * hidden, x.dtype, x.requires_grad)
    column = walk.new(experts * T, scores.dtype, scores_grad)
    routed_in = walk.new(experts * T * hidden, promote(x.dtype, scores.dtype), x.requires_grad or scores_grad)
    if scores_grad:
        walk.save(repeated)
    if x.requires_grad:
        walk.save(column)
    walk.transient(scores, repeated, column, routed_in)
    # `routed_in` and `router_scores` are the forward's locals until it returns
    walk.pinned.update({routed_in.id: routed_in.nbytes, scores.id: scores.nbytes})
    # ---- the experts' two batched matmuls
    if autocast_dtype and param_dtype != autocast_dtype and routed_in.requires_grad:
        # the fp32 experts' autocast casts, saved by the bmms for the input's gradient (per layer)
        walk.per_layer_saved += 3 * experts * width * hidden * BYTES[autocast_dtype]
    mm_input = walk.cast(routed_in, compute)
    gate_up = walk.new(experts * T * 2 * width, compute, routed_in.requires_grad or experts_grad)
    if experts_grad:
        walk.save(mm_input)
    walk.transient(routed_in, mm_input, gate_up)
    activated = walk.new(experts * T * width, compute, gate_up.requires_grad)
    product = walk.new(experts * T * width, compute, gate_up.requires_grad)
    if gate_up.requires_grad:
        walk.save(gate_up, activated)
    walk.transient(gate_up, activated, product)
    routed_out = walk.new(experts * T * hidden, compute, product.requires_grad)
    if experts_grad:
        walk.save(product)
    walk.transient(product, routed_out)
    # ---- the shared expert, then the sum over experts added into its output
    walk.pinned[routed_out.id] = routed_out.nbytes
    saved_before = walk.saved_bytes
    shared = _gated(walk, x, project, width, "shared_expert.")
    walk.recompute_stop = len(walk.live)  # a checkpointed recompute runs through the shared expert
    walk.down_saved = walk.saved_bytes - saved_before
    summed = walk.new(T * hidden, routed_out.dtype, routed_out.requires_grad)
    walk.transient(routed_out, summed, shared)
    for tensor in (x, logits, routed_out, routed_in, scores):
        del walk.pinned[tensor.id]
    return shared


def backward_workspace(m: ModelSpec, tokens: int, compute_bytes: int, hidden_bytes: int) -> int:
    """The routed layer's largest backward moment beyond what stays saved: the experts' gate_up gradient
    (E·T·2I) beside the incoming hidden gradient and two T·H ones (the shared expert's input gradient and the
    block's). An isolated Llama4TextMoe (E 4, T 128, H 64, I 128, bf16, input requiring grad) traced under the
    tracker peaks 311,296 B above the start of its backward: 16,384 + 262,144 + 2 · 16,384, this formula; its
    saved set, 561,152 B (577,536 with the output), is the walk's (`moe`)."""
    pairs = tokens * m.num_local_experts
    return hidden_bytes + compute_bytes * (pairs * 2 * m.intermediate_size + 2 * tokens * m.hidden_size)

