"""A post-norm decoder layer op by op (OLMo 2, OLMo 3, EXAONE 4), on `layer_ops`' norm, RoPE, attention and MLP.

transformers 5.25 modeling_olmo2.py `Olmo2DecoderLayer.forward` (modeling_olmo3.py and modeling_exaone4.py the
same): no norm before the attention or the MLP; each block reads the residual stream itself and its output is
normed before the residual add:

    h = x + post_attention_layernorm(self_attn(x))
    out = h + post_feedforward_layernorm(mlp(h))

What differs from a Llama layer in what autograd saves and holds:
- q / k / v read the layer input x: a trainable q_proj saves x itself (a checkpointed input already), LoRA
  branches cast x to the adapter dtype; the residual x is referenced until the attention's sum is made.
- q_norm / k_norm: OLMo 2 / 3 over the whole projection (`Olmo2RMSNorm(num_heads·head_dim)`: one inverse RMS
  per token, on q_proj's output before the head reshape), EXAONE 4 per head (`Exaone4RMSNorm(head_dim)`, after
  the reshape, as qwen3's). OLMo's RMSNorm multiplies in fp32, `(weight * normed_fp32).to(input_dtype)`
  (family_traits.FP32_PRODUCT_NORM); EXAONE 4's is Llama's, `weight * normed.to(input_dtype)`.
- RoPE: Olmo2RotaryEmbedding returns cos / sin in fp32 (not cast to x's dtype) and apply_rotary_pos_emb casts
  q·cos + rotate_half(q)·sin back to q's dtype (family_traits.FP32_ROPE): the rotated q / k keep q's dtype, the
  fp32 products are transients. EXAONE 4 rotates only its sliding layers when it has a sliding window (NoPE
  full layers: the normed q / k go to the attention as they are, the same bytes as their rotated copies).
- the two output norms save what an RMSNorm saves on the attention's and the MLP's outputs (their input needs
  a gradient whenever anything below trains); the MLP's norm is the layer's last saving op, so a checkpointed
  layer's recompute runs through the whole layer (`Walk.recompute_stop` stays None).
"""

from __future__ import annotations

from vramplan.estimator.layer_ops import _attention, _mlp, _rope, norm
from vramplan.estimator.lora_kernel_ops import fused_lora
from vramplan.estimator.linear_ops import linear
from vramplan.estimator.lora_kernel_ops import kernel_group
from vramplan.estimator.output_norm_ops import output_norm
from vramplan.estimator.walk import SymbolicTensor, Walk, WalkSettings, promote
from vramplan.spec import ModelSpec
from vramplan.spec.family_traits import FP32_ROPE, PROJECTION_QK_NORM


def post_norm_layer(
    walk: Walk, settings: WalkSettings, m: ModelSpec, x: SymbolicTensor, trainable: bool
) -> SymbolicTensor:
    """One post-norm decoder layer; returns its output hidden state."""
    T, residual_dtype = settings.T, x.dtype

    def project(inp: SymbolicTensor, name: str) -> SymbolicTensor:
        spec = next(li for li in m.linears if li.name == name)
        return linear(walk, settings, inp, name, spec.out_features, trainable, settings.quantized)

    walk.pinned[x.id] = x.nbytes  # the residual: the decoder loop's input, until the attention's sum
    attention_out = _attention_block(walk, settings, m, x, project, trainable)
    normed = norm(walk, settings, m, attention_out, trainable)  # post_attention_layernorm
    del walk.pinned[x.id]
    residual = walk.new(T * m.hidden_size, promote(residual_dtype, normed.dtype), True)
    walk.transient(x, normed, residual)
    walk.pinned[residual.id] = residual.nbytes  # alive through the MLP for the second residual add
    mlp_out = _mlp(walk, settings, m, residual, project, trainable)
    normed = output_norm(walk, settings, m, mlp_out, x.dtype, lambda t: norm(walk, settings, m, t, trainable))
    del walk.pinned[residual.id]
    out = walk.new(T * m.hidden_size, promote(residual.dtype, normed.dtype), True)
    walk.transient(residual, normed, out)
    return out


def _attention_block(
    walk: Walk, settings: WalkSettings, m: ModelSpec, x: SymbolicTensor, project, trainable: bool
) -> SymbolicTensor:
    """q / k / v on the layer input, the q / k norms, RoPE, attention and o_proj."""
    whole = m.model_type in PROJECTION_QK_NORM
    q_features, k_features = (m.q_dim, m.kv_dim) if whole else (m.head_dim, m.head_dim)
    names = {li.name for li in m.linears}
    kernels = fused_lora(settings, names)
    if "qkv" in kernels:  # axolotl's LoRA_QKV (lora_kernel_ops.py)
        q, k, v = kernel_group(walk, settings, x, [m.q_dim, m.kv_dim, m.kv_dim])
        q = norm(walk, settings, m, q, trainable, q_features)
        k = norm(walk, settings, m, k, trainable, k_features)
    elif whole:  # Olmo2Attention: q_norm(q_proj(x)), k_norm(k_proj(x)), then v_proj(x)
        q = norm(walk, settings, m, project(x, "q_proj"), trainable, q_features)
        k = norm(walk, settings, m, project(x, "k_proj"), trainable, k_features)
        v = project(x, "v_proj")
    else:  # Exaone4Attention: the three projections, then q_norm / k_norm per head
        q, k, v = project(x, "q_proj"), project(x, "k_proj"), project(x, "v_proj")
        q = norm(walk, settings, m, q, trainable, q_features)
        k = norm(walk, settings, m, k, trainable, k_features)
    if m.model_type in FP32_ROPE and not settings.liger:
        q, k = _rope_cast_back(walk, q), _rope_cast_back(walk, k)
    else:
        q, k = _rope(walk, q, x.dtype, settings.liger), _rope(walk, k, x.dtype, settings.liger)
    attention_out = _attention(walk, settings, m, q, k, v, None)
    if "o" in kernels:  # axolotl's LoRA_O
        return kernel_group(walk, settings, attention_out, [m.hidden_size])[0]
    return project(attention_out, "o_proj")


def _rope_cast_back(walk: Walk, q: SymbolicTensor) -> SymbolicTensor:
    """OLMo's `(q * cos) + (rotate_half(q) * sin)` with fp32 cos / sin, then `.to(q.dtype)`: the mul saves only
    cos / sin (shared, per position); the fp32 products and their sum are transients."""
    products = walk.new(q.numel, "fp32", q.requires_grad)
    total = walk.new(q.numel, "fp32", q.requires_grad)
    out = walk.cast(total, q.dtype)
    walk.transient(q, products, total, out)
    return out
