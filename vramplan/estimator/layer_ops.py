"""The decoder layer op by op, as the symbolic walk (`walk.py`) sees it: what each op saves and holds.

The walk mirrors the forward code of transformers 5.24 (modeling_llama.py and siblings), PEFT 0.21.2
(tuners/lora/layer.py `Linear.forward`, tuners/lora/bnb.py `Linear4bit.forward`) and bitsandbytes 0.50.2
(`Linear4bit.forward`, `MatMul4Bit`), with torch 2.13's autograd saving rules, on the kernels CUDA runs.
Each symbolic tensor has an identity, so a tensor saved by several ops (the normed hidden state read by
q/k/v) is counted once, as the tracker counts storages.

Saved-tensor inventory (per decoder layer, T = batch·seq tokens; "rg" = requires grad):
- RMSNorm (HF): `x.to(fp32)` (a new fp32 copy unless x is fp32 already) saved by `pow` and `mul`; rsqrt
  (T·4 B). A frozen weight saves nothing more; a trainable one also saves `y.to(input_dtype)`.
- LayerNorm: under autocast an fp32 op: fp32 copy of the input, mean and rstd (T·4 B each); output fp32.
- frozen nn.Linear: saves nothing (its weight needs no grad; autograd saves the input only for dW).
  Trainable: the input in the compute dtype; with fp32 master weights under autocast also the bf16 copy of
  the weight held in autocast's cast cache.
- bitsandbytes Linear4bit: `x.to(compute_dtype)` (transient), output `.to(input dtype)`; MatMul4Bit saves
  no activation (ctx.tensors = (None, B)).
- LoRA branch (PEFT Linear): `x.to(adapter dtype)` (fp32 by default: a new tensor); dropout p>0 saves a
  bool mask (CUDA native_dropout; CPU's non-fused path would save an fp32 noise tensor instead); lora_A
  saves its input in the autocast dtype (a new copy unless already that dtype); lora_B saves lora_A's
  output (T·r). On a bnb base under autocast PEFT does not cast x first. Each target makes its own copies.
- RoPE: q·cos + rotate_half(q)·sin saves only cos/sin (shared); the result dtype promotes with cos, which
  has the residual stream's dtype (fp32 after kbit prep).
- SDPA / flash: q, k, v (cast to the autocast dtype: new copies if they were fp32), output, fp32
  logsumexp (B·heads·S). GQA without a mask uses `enable_gqa` (no repeat). Flex attention saves the same:
  transformers compiles it (integrations/flex_attention.py `WrappedFlexAttention`) and the partitioner keeps
  what torch 2.13's `flex_attention_backward` reads (q, k, v, out, logsumexp; not the eager
  `FlexAttentionAutogradOp`'s max_scores), plus the BlockMask's int32 block tables (B·⌈S/128⌉², left out);
  k / v are repeated to every head first when the head count is not a power of two. Eager: repeat_kv copies,
  fp32 softmax output and its cast (B·heads·S² each), output and its transposed contiguous copy.
- Gated MLP: gate output (SiLU input), SiLU output and up output (saved by the product); fused gate_up
  (Phi-3) keeps the T·2I storage alive through its views; plain MLP saves fc1's output (GELU input).
- bitsandbytes Linear8bitLt (LLM.int8) -> MatMul8bitLt, CUDA's path (bitsandbytes sends CPU inputs to
  MatMul8bitFp instead; the harness routes them back): keeps its input in `ctx.tensors` (not a saved tensor:
  checkpointing does not drop it, a recompute's copy dies with the recompute's graph); the output has the
  input's dtype (int8_scaled_mm(..., dtype=A.dtype), a custom op autocast leaves alone): fp32 after kbit prep.
- DoRA (PEFT `DoraLinearLayer.forward`): per target, the base and lora results saved by the two products,
  three fp32 vectors per output feature, and transients while the target runs: an `in × in` identity (and
  its autocast cast, saved while the lora weight lives), the lora weight and the base weight in x's dtype,
  s·BA and W + s·BA (`_dora_weight_norm`), then three fp32 T·out products.
- Gradient checkpointing (HF, non-reentrant): per layer only its input hidden state; one layer's
  activations are recomputed during backward. Inside a checkpointed forward a layer holds only what Python
  references (operands, the residual, DoRA's weight-sized locals), not what autograd would save (`refs`).
- Alive without being saved: the decoder loop's reference to the layer input, the model's `inputs_embeds`
  until its forward returns, the attention residual through the MLP (`pinned`).
"""

from __future__ import annotations

from vramplan.estimator import llama4_ops
from vramplan.estimator.delta_net_ops import gated_attention, gated_delta_net
from vramplan.estimator.family_ops import fp32_rope, mask_bias, mean_centred_norm, residual_dropout
from vramplan.estimator.gpt_oss_ops import eager_with_sinks, gpt_oss_moe
from vramplan.estimator.linear_ops import linear
from vramplan.estimator.lora_kernel_ops import fused_lora, kernel_group, kernel_mlp
from vramplan.estimator.mla_ops import mla_attention
from vramplan.estimator.mlp_ops import _down, _gated
from vramplan.estimator.moe_ops import moe_block, qwen35_sparse_block
from vramplan.estimator.output_norm_ops import output_norm
from vramplan.estimator.walk import BYTES, S, SymbolicTensor, Walk, WalkSettings, promote, scaled
from vramplan.spec import ModelSpec
from vramplan.spec.family_traits import (
    FP32_PRODUCT_NORM,
    MEAN_CENTRED_NORM,
    NOPE_ON_FULL_LAYERS,
    QUERY_POSITION_SCALE,
    SCALED_RESIDUAL,
    SINK_FAMILIES,
)


def norm(
    walk: Walk, settings: WalkSettings, m: ModelSpec, x: SymbolicTensor, trainable: bool, dim: int = 0
) -> SymbolicTensor:
    """A norm over the last `dim` features of x (hidden_size by default; qwen3's q/k norms: head_dim)."""
    features = dim or m.hidden_size
    rows = x.numel / features
    if m.norm == "layer":
        dtype = "fp32" if settings.autocast_dtype else x.dtype
        x_cast = walk.cast(x, dtype)
        out = walk.new(rows * features, dtype, x.requires_grad or trainable)
        if x.requires_grad or trainable:
            walk.save(x_cast, walk.new(rows, "fp32", False), walk.new(rows, "fp32", False))  # input, mean, rstd
        walk.transient(x, x_cast, out)
        return out
    if settings.liger:
        # Liger-Kernel 0.8.5 ops/rms_norm.py LigerRMSNormFunction (casting_mode "llama"): Y = empty in X's dtype,
        # RSTD (rows, fp32); saves X itself (no fp32 copy), W and RSTD; the fp32 math stays in registers
        out = walk.new(rows * features, x.dtype, x.requires_grad or trainable)
        if x.requires_grad or trainable:
            walk.save(x, walk.new(rows, "fp32", False))
        walk.transient(x, out)
        return out
    if m.model_type in MEAN_CENTRED_NORM:
        return mean_centred_norm(walk, x, rows, features, trainable)
    x_fp32 = walk.cast(x, "fp32")
    inverse_rms = walk.new(rows, "fp32", False)  # torch.rsqrt(variance + eps)
    normed_fp32 = walk.new(rows * features, "fp32", x.requires_grad)
    if m.model_type in FP32_PRODUCT_NORM:
        # Gemma: (normed_fp32 * (1 + weight.float())).type_as(x); gpt-oss: (weight * normed_fp32).to(x.dtype):
        # the fp32 product, then x's dtype; a trainable weight saves the fp32 normed tensor (the product's other
        # operand is the H-sized weight)
        product = walk.new(rows * features, "fp32", x.requires_grad or trainable)
        out = walk.cast(product, x.dtype)
        if x.requires_grad:
            walk.save(x_fp32, inverse_rms)
        if trainable:
            walk.save(normed_fp32)
        walk.transient(x, x_fp32, normed_fp32, product, out)
        return out
    normed = walk.cast(normed_fp32, x.dtype)
    out = walk.new(rows * features, promote(settings.norm_dtype, x.dtype), x.requires_grad or trainable)
    if x.requires_grad:
        walk.save(x_fp32, inverse_rms)
    if trainable:
        walk.save(normed)
    walk.transient(x, x_fp32, normed_fp32, normed, out)
    return out


def _attention(
    walk: Walk,
    settings: WalkSettings,
    m: ModelSpec,
    q: SymbolicTensor,
    k: SymbolicTensor,
    v: SymbolicTensor,
    kv_store: SymbolicTensor | None,
) -> SymbolicTensor:
    T = settings.T
    heads, kv_heads = m.num_attention_heads, m.num_key_value_heads
    requires_grad = q.requires_grad or k.requires_grad or v.requires_grad
    masked = settings.masked
    dtype = settings.autocast_dtype or q.dtype
    if settings.attn == "eager" and m.model_type in SINK_FAMILIES:
        return eager_with_sinks(walk, settings, m, q, k, v)
    q_cast, k_cast, v_cast = walk.cast(q, dtype), walk.cast(k, dtype), walk.cast(v, dtype)
    if settings.attn == "eager":
        if kv_heads != heads:  # repeat_kv
            k_cast = walk.new(T * m.q_dim, dtype, k.requires_grad)
            v_cast = walk.new(T * m.q_dim, dtype, v.requires_grad)
        scores = T * heads * S  # B·heads·S² = T·heads·S
        scores_tensor = walk.new(scores, dtype, requires_grad)
        probs_fp32 = walk.new(scores, "fp32", requires_grad)
        probs = walk.new(scores, dtype, requires_grad)
        out = walk.new(T * m.q_dim, dtype, requires_grad)
        if requires_grad:
            walk.save(q_cast, k_cast, probs_fp32, probs, v_cast)
            if m.attn_softcap:  # gemma2: scores / cap -> tanh (saves its output) -> * cap
                walk.save(walk.new(scores, dtype, True))
        walk.transient(q_cast, k_cast, v_cast, scores_tensor, probs_fp32, probs, out)
        return walk.new(T * m.q_dim, dtype, requires_grad)  # transpose(1, 2).contiguous()
    # repeat_kv before SDPA when a mask is passed (sdpa_attention.py), always before transformers 4.54; before
    # flex attention when the head count is not a power of two (integrations/flex_attention.py: `enable_gqa = False`)
    repeat = (masked or settings.repeat_kv) if settings.attn != "flex_attention" else heads & (heads - 1) != 0
    if repeat and kv_heads != heads:
        k_cast = walk.new(T * m.q_dim, dtype, k.requires_grad)
        v_cast = walk.new(T * m.q_dim, dtype, v.requires_grad)
    out = walk.new(T * m.q_dim, dtype, requires_grad)
    logsumexp = walk.new(T * heads, "fp32", False)  # B·heads·S
    if requires_grad:
        walk.save(q_cast, k_cast, out, logsumexp)
        walk.save(kv_store if (kv_store is not None and v_cast is v) else v_cast)
        if masked:
            # the memory-efficient kernel takes the bool mask as an additive bias in q's dtype (torch
            # `convert_boolean_attn_mask`: B·1·S·S) and saves it for backward; ALiBi Falcon's float mask: family_ops
            walk.save(*mask_bias(walk, settings, m, T * S, dtype))
    walk.transient(q_cast, k_cast, v_cast, out)
    return out


def _rope(walk: Walk, q: SymbolicTensor, residual_dtype: str, liger: bool = False) -> SymbolicTensor:
    """q·cos + rotate_half(q)·sin: a new tensor (cos and sin saved, per position only). Liger's RoPE
    (Liger-Kernel 0.8.5 ops/rope.py `rope_forward`) rotates q and k in place: no new tensor."""
    if liger:
        return q
    return walk.new(q.numel, promote(q.dtype, residual_dtype), q.requires_grad)


def decoder_layer(
    walk: Walk, settings: WalkSettings, m: ModelSpec, x: SymbolicTensor, trainable: bool
) -> SymbolicTensor:
    """One attention + MLP decoder layer; returns its output hidden state. The walk's entry point is
    `layer_walk.decoder_layer`, which sends a hybrid layer to `mamba_ops` (built on this module's ops); a Qwen3.5
    layer's token mixer is `delta_net_ops`' (given this module's norm, RoPE and attention)."""
    residual_dtype = x.dtype

    def project(inp: SymbolicTensor, name: str) -> SymbolicTensor:
        spec = next(li for li in m.linears if li.name == name)
        if settings.quantized and not spec.quantizable:  # FalconLinear: bitsandbytes leaves it (fp32 by kbit prep)
            return linear(walk, settings._replace(weight_dtype=settings.norm_dtype), inp, name, spec.out_features,
                          trainable, False)  # fmt: skip
        return linear(walk, settings, inp, name, spec.out_features, trainable, settings.quantized)

    normed_input = norm(walk, settings, m, x, trainable)
    if settings.mixer in ("linear_attention", "full_attention"):  # Qwen3.5: gated DeltaNet / gated attention
        mixer = gated_delta_net if settings.mixer == "linear_attention" else gated_attention
        attention_out = mixer(walk, settings, m, normed_input, project, trainable, (norm, _rope, _attention))
    else:
        attention_out = _self_attention(walk, settings, m, normed_input, project, residual_dtype, trainable)
    return _post_attention(walk, settings, m, x, normed_input, attention_out, project, trainable)


def _self_attention(
    walk: Walk,
    settings: WalkSettings,
    m: ModelSpec,
    normed_input: SymbolicTensor,
    project,
    residual_dtype: str,
    trainable: bool,
) -> SymbolicTensor:
    """The attention block through o_proj: multi-head latent attention (mla_ops), or q / k / v attention."""
    names = {li.name for li in m.linears}
    if m.mla is not None:
        return project(
            mla_attention(
                walk,
                settings,
                m,
                normed_input,
                project,
                lambda tensor, dim: norm(walk, settings, m, tensor, trainable, dim),
                residual_dtype,
            ),
            "o_proj",
        )
    return _attention_block(walk, settings, m, normed_input, project, names, residual_dtype, trainable)


def _attention_block(
    walk: Walk,
    settings: WalkSettings,
    m: ModelSpec,
    normed_input: SymbolicTensor,
    project,
    names: set[str],
    residual_dtype: str,
    trainable: bool,
) -> SymbolicTensor:
    """q / k / v projections (separate, fused, or axolotl's LoRA_QKV), q / k norms, RoPE, attention, o_proj."""
    T = settings.T
    kv_store = None
    kernels = fused_lora(settings, names)
    if "qkv" in kernels:  # axolotl's LoRA_QKV (lora_kernel_ops.py)
        outs = [next(li.out_features for li in m.linears if li.name == n) for n in ("q_proj", "k_proj", "v_proj")]
        q, k, v = kernel_group(walk, settings, normed_input, outs)
    elif "q_proj" in names:
        q = project(normed_input, "q_proj")
        k = project(normed_input, "k_proj")
        v = project(normed_input, "v_proj")
    else:
        fused = next(n for n in ("qkv_proj", "query_key_value", "attn.c_attn") if n in names)  # phi3, neox, bigcode
        qkv = project(normed_input, fused)
        kv_store = qkv  # q, k, v are views of one storage
        itemsize = BYTES[qkv.dtype]
        q = SymbolicTensor(qkv.id, T * m.q_dim * itemsize, qkv.dtype, qkv.requires_grad, T * m.q_dim)
        k = SymbolicTensor(qkv.id, T * m.kv_dim * itemsize, qkv.dtype, qkv.requires_grad, T * m.kv_dim)
        v = SymbolicTensor(qkv.id, T * m.kv_dim * itemsize, qkv.dtype, qkv.requires_grad, T * m.kv_dim)
    if m.head_norm_params and m.norm == "rms":  # qwen3, gemma3: RMSNorm over head_dim on q and k before RoPE
        q = norm(walk, settings, m, q, trainable, m.head_dim)
        k = norm(walk, settings, m, k, trainable, m.head_dim)
    if m.model_type == "llama4_text":  # complex RoPE + L2 qk-norm, or NoPE with a temperature-tuned query
        q, k = llama4_ops.query_key(walk, m, q, k)
    elif m.model_type in NOPE_ON_FULL_LAYERS:
        if settings.mixer != "nope":  # Cohere 2's sliding layers: q / k rotated in fp32, cast back
            q, k = fp32_rope(walk, q, k)
    elif m.rope:  # SmolLM3's NoPE layers skip it (`if self.use_rope:`): SDPA saves the projections' outputs
        q, k = _rope(walk, q, residual_dtype, settings.liger), _rope(walk, k, residual_dtype, settings.liger)
    if m.model_type in QUERY_POSITION_SCALE:  # Ministral 3: q * its (1, 1, S, 1) scale (saved: S per layer, left out)
        q = scaled(walk, q)
    if m.model_type in SINK_FAMILIES:
        # the attention's `hidden_states` argument and its pre-repeat key / value states, referenced until it
        # returns (traced on gpt-oss: its eager scores dwarf them elsewhere, the other families leave them out)
        walk.pinned.update({t.id: t.nbytes for t in (normed_input, k, v)})
    attention_out = _attention(walk, settings, m, q, k, v, kv_store)
    if m.model_type in SINK_FAMILIES:
        for t in (normed_input, k, v):
            walk.pinned.pop(t.id, None)
    if "o" in kernels:  # axolotl's LoRA_O
        return kernel_group(walk, settings, attention_out, [m.hidden_size])[0]
    out_name = next(n for n in ("o_proj", "dense", "attn.c_proj") if n in names)
    return residual_dropout(walk, m, project(attention_out, out_name))


def _post_attention(
    walk: Walk, settings: WalkSettings, m: ModelSpec, x, normed_input, attention_out, project, trainable: bool
) -> SymbolicTensor:
    T, residual_dtype = settings.T, x.dtype
    if m.norms_per_layer == 4:  # gemma2, gemma3: post_attention_layernorm on the attention output
        attention_out = norm(walk, settings, m, attention_out, trainable)
    if m.model_type in SCALED_RESIDUAL:  # Granite: `residual + hidden_states * self.residual_multiplier`
        attention_out = scaled(walk, attention_out)
    if m.parallel_residual:
        mlp_input = normed_input if m.norms_per_layer == 1 else norm(walk, settings, m, x, trainable)
        if m.model_type in MEAN_CENTRED_NORM or m.model_type == "falcon":  # a Python local until the sum
            walk.pinned[attention_out.id] = attention_out.nbytes
        if m.model_type == "falcon":  # FalconDecoderLayer's `attention_layernorm_out`, a local through the MLP
            walk.pinned[normed_input.id] = normed_input.nbytes
        mlp_out = _mlp(walk, settings, m, mlp_input, project, trainable)
        for local in (attention_out, normed_input):
            walk.pinned.pop(local.id, None)
        out_dtype = promote(promote(mlp_out.dtype, attention_out.dtype), residual_dtype)
        return walk.new(T * m.hidden_size, out_dtype, True)
    residual = walk.new(
        T * m.hidden_size, promote(residual_dtype, attention_out.dtype), x.requires_grad or attention_out.requires_grad
    )
    walk.pinned[residual.id] = residual.nbytes  # the residual, alive through the MLP for the second residual add
    mlp_input = norm(walk, settings, m, residual, trainable)
    mlp_out = _mlp(walk, settings, m, mlp_input, project, trainable)
    if m.norms_per_layer == 4:  # the sandwich's post-MLP norm, the layer's last saving op (output_norm_ops)
        post_norm = lambda t: norm(walk, settings, m, t, trainable)  # noqa: E731
        mlp_out = output_norm(walk, settings, m, mlp_out, residual_dtype, post_norm)
    if m.model_type in SCALED_RESIDUAL:
        mlp_out = scaled(walk, mlp_out)  # its gradient `grad * multiplier` is alive when a layer's recompute starts
        walk.recompute_tail += mlp_out.nbytes
    del walk.pinned[residual.id]
    return walk.new(
        T * m.hidden_size, promote(residual.dtype, mlp_out.dtype), residual.requires_grad or mlp_out.requires_grad
    )


def _mlp(
    walk: Walk, settings: WalkSettings, m: ModelSpec, x: SymbolicTensor, project, trainable: bool
) -> SymbolicTensor:
    T, intermediate = settings.T, m.intermediate_size
    walk.mark("mlp")
    if m.model_type == "llama4_text":
        return llama4_ops.feed_forward(walk, settings, m, x, project, trainable)
    if m.mlp == "gated" and "mlp" in fused_lora(settings, {li.name for li in m.linears}):
        walk.down_saved = 0  # one Function: everything it saved is freed together after its backward
        return kernel_mlp(walk, settings, x, intermediate, m.hidden_size)
    if m.mlp == "gated" and settings.liger:
        # Liger-Kernel 0.8.5 ops/swiglu.py LigerSiLUMulFunction: c = empty_like(a); saves a (gate) and b (up),
        # no SiLU output; backward writes the gradients into a and b in place
        gate = project(x, "gate_proj")
        walk.pinned[gate.id] = gate.nbytes
        up = project(x, "up_proj")
        del walk.pinned[gate.id]
        product = walk.new(T * intermediate, up.dtype, gate.requires_grad or up.requires_grad)
        if product.requires_grad:
            walk.save(gate, up)
        walk.transient(gate, up, product)
        return _down(walk, project, product, "down_proj")
    if m.mlp == "gated":
        return _gated(walk, x, project, intermediate, "mlp." if m.dense_intermediate_size else "")
    if m.mlp == "gated_fused":
        gate_up = project(x, "gate_up_proj")
        activated = walk.new(T * intermediate, gate_up.dtype, gate_up.requires_grad)
        product = walk.new(T * intermediate, gate_up.dtype, gate_up.requires_grad)
        if gate_up.requires_grad:
            walk.save(gate_up, activated)
        walk.transient(gate_up, activated, product)
        return _down(walk, project, product, "down_proj")
    if m.mlp == "plain":
        # fc1 / fc2 (phi), dense_h_to_4h / dense_4h_to_h (gpt_neox, bloom), c_fc / c_proj (starcoder2)
        up_name, down_name = (li.name for li in m.linears if li.group == "mlp")
        up = project(x, up_name)
        if m.hidden_act == "gelu_new":
            # NewGELUActivation: 0.5·x·(1 + tanh(c·(x + 0.044715·pow(x, 3)))) (transformers/activations.py)
            # saves x for pow, tanh's output, and both factors of the last product. Under autocast `pow` is an
            # fp32 op: it saves an fp32 copy of x and everything after it is fp32 but 0.5·x.
            gelu_dtype = "fp32" if settings.autocast_dtype else up.dtype
            activated = walk.new(T * intermediate, gelu_dtype, up.requires_grad)
            if up.requires_grad:  # pow saves its (autocast-cast) input, not x itself
                walk.save(
                    walk.cast(up, gelu_dtype),
                    walk.new(T * intermediate, gelu_dtype, True),
                    walk.new(T * intermediate, up.dtype, True),
                    walk.new(T * intermediate, gelu_dtype, True),
                )
        else:
            activated = walk.new(T * intermediate, up.dtype, up.requires_grad)
            if up.requires_grad:
                walk.save(up)
        walk.transient(up, activated)
        down = _down(walk, project, activated, down_name)
        if m.model_type == "falcon":  # the layer's last save: lora_B's input (before its output), or the base's
            walk.recompute_stop = len(walk.live) - (down_name in settings.lora_targets and not settings.dora)
        return residual_dropout(walk, m, down)
    if m.model_type == "gpt_oss":
        return gpt_oss_moe(walk, settings, m, x, trainable)
    if m.model_type == "qwen3_5_moe_text":  # the shared expert first, the routed experts, then the expert's gate
        return qwen35_sparse_block(walk, settings, m, x, project, _gated, trainable)
    routed = moe_block(walk, settings, m, x, trainable)
    if not m.shared_intermediate_size:
        return routed
    # DeepseekV3MoE: `hidden_states + self.shared_experts(residuals)`: the shared-experts MLP (nn.Linear, as a
    # dense layer's) runs after the routed experts, whose output waits for it
    walk.pinned[routed.id] = routed.nbytes
    saved_before, bytes_before = len(walk.saved), walk.saved_bytes
    shared = _gated(walk, x, project, m.shared_intermediate_size, "shared_experts.")
    if len(walk.saved) > saved_before:  # the layer's last saved tensor is the shared MLP's: a recompute gets there
        walk.recompute_stop = len(walk.live)
    # the backward runs the shared MLP's first: all it saved is freed before the experts' (the MoE workspace)
    walk.down_saved = walk.saved_bytes - bytes_before
    del walk.pinned[routed.id]
    out = walk.new(T * m.hidden_size, promote(routed.dtype, shared.dtype), routed.requires_grad or shared.requires_grad)
    walk.transient(routed, shared, out)
    return out
