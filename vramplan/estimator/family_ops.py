"""Decoder-layer ops only some hand-modelled families run (the walk's `layer_ops` calls them): Cohere 2's
mean-centred LayerNorm and fp32 RoPE (modeling_cohere2.py, transformers 5.25), StarCoder2's and GPT-BigCode's
residual dropout (modeling_starcoder2.py, modeling_gpt_bigcode.py, 5.25), ALiBi Falcon's attention mask
(modeling_falcon.py, 5.25)."""

from __future__ import annotations

from vramplan.estimator.walk import BYTES, SymbolicTensor, Walk, WalkSettings
from vramplan.spec import ModelSpec
from vramplan.spec.family_traits import model_dropout


def mean_centred_norm(walk: Walk, x: SymbolicTensor, rows: complex, features: int, trainable: bool) -> SymbolicTensor:
    """Cohere2LayerNorm (modeling_cohere2.py, 5.25): x.to(fp32); `(x - mean).pow(2).mean()` (pow saves its
    fp32 input, the first centred copy); `(x - mean) * rsqrt(variance + eps)` (a second centred copy and the
    T-sized rsqrt, both saved); `weight.float() * normed` (saves normed when the weight trains); `.to(x.dtype)`."""
    grad = x.requires_grad
    x_fp32 = walk.cast(x, "fp32")
    centred_for_variance = walk.new(rows * features, "fp32", grad)
    centred = walk.new(rows * features, "fp32", grad)
    inverse = walk.new(rows, "fp32", False)
    normed = walk.new(rows * features, "fp32", grad)
    product = walk.new(rows * features, "fp32", grad or trainable)
    out = walk.cast(product, x.dtype)
    if grad:
        walk.save(centred_for_variance, centred, inverse)
    if trainable:
        walk.save(normed)
    walk.transient(x, x_fp32, centred_for_variance, centred, normed, product, out)
    return out


def fp32_rope(walk: Walk, q: SymbolicTensor, k: SymbolicTensor) -> tuple[SymbolicTensor, SymbolicTensor]:
    """Cohere 2's apply_rotary_pos_emb (modeling_cohere2.py, 5.25): q.float(), k.float(), the fp32 rotation
    (cos / sin saved, per position), `.to(q's dtype)`: new tensors in q's and k's own dtype, fp32 transients."""
    outs = []
    for x in (q, k):
        x_fp32 = walk.cast(x, "fp32")
        rotated = walk.new(x.numel, "fp32", x.requires_grad)
        outs.append((x, x_fp32, rotated, walk.cast(rotated, x.dtype)))
    walk.transient(*(t for group in outs for t in group))
    return outs[0][3], outs[1][3]


def residual_dropout(walk: Walk, m: ModelSpec, x: SymbolicTensor) -> SymbolicTensor:
    """StarCoder2's `nn.functional.dropout(out, p=residual_dropout)` after o_proj and c_proj (GPT-BigCode's
    `resid_dropout` / the MLP's `dropout`, nn.Dropout(resid_pdrop), after attn.c_proj and mlp.c_proj): CUDA's
    native_dropout, a new output and a bool mask (saved when x needs a gradient); nothing when p is 0."""
    if model_dropout(m.model_type, m.config, "residual_dropout") <= 0:
        return x
    mask = walk.new(x.numel, "bool", False)
    out = walk.new(x.numel, x.dtype, x.requires_grad)
    if x.requires_grad:
        walk.save(mask)
    walk.transient(x, mask, out)
    return out


def mask_bias(walk: Walk, settings: WalkSettings, m: ModelSpec, bool_mask: complex, dtype: str) -> tuple:
    """What one layer's masked SDPA (the memory-efficient kernel) saves for its mask, beyond the model's mask
    (activations.py counts that once): the bool mask made an additive bias in q's dtype (B·1·S·S, torch
    `convert_boolean_attn_mask`); nothing for ALiBi Falcon, whose FalconModel.forward passes every layer one
    float mask (B·heads·S·S: the ALiBi bias with the causal -inf, in inputs_embeds' dtype), unless autocast
    casts it to q's dtype (an fp32 embedding after kbit prep: SDPA is an autocast lower-precision op, each
    layer saves its own copy)."""
    if not (m.model_type == "falcon" and not m.rope):
        return (walk.new(bool_mask, dtype, False),)
    if settings.norm_dtype == dtype:
        return ()
    return (walk.new(bool_mask * m.num_attention_heads, dtype, False),)


def model_mask_bytes(m: ModelSpec, settings: WalkSettings, batch: int, seq: int) -> int:
    """The attention mask the model builds once and passes to every layer (and recompute): a bool B·1·S·S; ALiBi
    Falcon's float B·heads·S·S in inputs_embeds' dtype (the embedding's: fp32 after kbit prep)."""
    if m.model_type == "falcon" and not m.rope:
        return batch * m.num_attention_heads * seq * seq * BYTES[settings.norm_dtype]
    return batch * seq * seq
