"""One linear as the symbolic walk sees it: a frozen or trainable nn.Linear, a bitsandbytes Linear4bit /
Linear8bitLt, with its LoRA branch (dropout, the adapter casts) and DoRA's weight norm — what each saves and
holds (the inventory is in `vramplan.estimator.layer_ops`' docstring; the sources it follows: PEFT 0.21.2
tuners/lora/layer.py `Linear.forward`, tuners/lora/bnb.py, tuners/lora/dora.py `DoraLinearLayer.forward`,
bitsandbytes 0.50.2 `Linear4bit.forward` / `MatMul4Bit` / `MatMul8bitLt`)."""

from __future__ import annotations

from vramplan.estimator.walk import BYTES, SymbolicTensor, Walk, WalkSettings, promote


def linear(
    walk: Walk,
    settings: WalkSettings,
    x: SymbolicTensor,
    name: str,
    out_features: int,
    trainable: bool,
    quantized: bool,
) -> SymbolicTensor:
    T = settings.T
    autocast_dtype = settings.autocast_dtype
    in_features = int(x.numel.real)  # the walk runs per token
    if settings.prequantized and not trainable:
        out = _prequantized(walk, settings, x, in_features, out_features)
    elif quantized and settings.int8:
        # bitsandbytes Linear8bitLt -> MatMul8bitLt (autograd/_functions.py, 0.50.2; CUDA's path): keeps its
        # input A in ctx.tensors whenever A needs a gradient; quantizes A.to(fp16) row-wise to int8 and returns
        # int8_scaled_mm(..., dtype=A.dtype): the output is in x's dtype (a custom op: autocast does not apply)
        out = walk.new(T * out_features, x.dtype, x.requires_grad)
        if x.requires_grad:
            if x.id not in walk.saved:
                walk.ctx_only += x.nbytes
            walk.ctx_saved[x.id] = x.nbytes
            walk.save(x)
        x_int8 = walk.new(x.numel, "int8", False)
        # int8_vectorwise_quant(A.to(fp16)): A16 then dies
        walk.transient(x, walk.new(x.numel, "fp16", False), x_int8)
        walk.transient(x, x_int8, out)  # int8_mixed_scaled_mm
    elif quantized:
        compute_dtype = settings.bnb_compute_dtype
        if settings.bnb_compute_from_input and x.dtype in ("fp32", "bf16"):
            compute_dtype = x.dtype  # bitsandbytes < 0.47 `set_compute_type`: the input's dtype wins
        x_compute = walk.cast(x, compute_dtype)
        out = walk.new(T * out_features, autocast_dtype or compute_dtype, x.requires_grad)
        if settings.matmul4bit_keeps_input and x_compute.requires_grad:
            # bitsandbytes < 0.44 MatMul4Bit: ctx.tensors = (A, B), as MatMul8bitLt keeps A (above)
            if x_compute.id not in walk.saved:
                walk.ctx_only += x_compute.nbytes
            walk.ctx_saved[x_compute.id] = x_compute.nbytes
            walk.save(x_compute)
        walk.transient(x, x_compute, out)
        out = walk.cast(out, x.dtype)
    else:
        x_compute = walk.cast(x, autocast_dtype) if autocast_dtype else x
        out = walk.new(T * out_features, autocast_dtype or settings.weight_dtype, x.requires_grad or trainable)
        walk.transient(x, x_compute, out)
        if trainable:
            walk.save(x_compute)
    walk.recompute_tail = 0
    if name not in settings.lora_targets:
        return out
    # LoRA branch: lora_B(lora_A(dropout(x))) * scaling
    x_adapter = x if (quantized and autocast_dtype) else walk.cast(x, settings.adapter_dtype)
    if settings.lora_dropout:
        mask = walk.new(x.numel, "bool", False)
        walk.save(mask)
        x_dropped = walk.new(x_adapter.numel, x_adapter.dtype, x_adapter.requires_grad)
    else:
        x_dropped = x_adapter
    held, kept, base_weight_copy = (
        _dora_weight_norm(walk, settings, (x, x_adapter, x_dropped, out), in_features, out_features, quantized)
        if settings.dora
        else (0, 0, 0)
    )
    lora_a_input = walk.cast(x_dropped, autocast_dtype) if autocast_dtype else x_dropped
    walk.save(lora_a_input)
    lora_a_out = walk.new(T * settings.lora_rank, autocast_dtype or settings.adapter_dtype, True)
    walk.save(lora_a_out)
    # lora_B's mm packs its input before its output exists: where a checkpointed recompute that stops there ends
    walk.transient(x, x_adapter, x_dropped, lora_a_input, lora_a_out, out)
    lora_b_out = walk.new(T * out_features, autocast_dtype or settings.adapter_dtype, True)
    walk.transient(x, x_adapter, x_dropped, lora_a_input, lora_a_out, lora_b_out, out)
    if quantized and not autocast_dtype:
        # peft lora/bnb.py: `output.to(expected_dtype)` when autocast is off
        lora_b_out = walk.cast(lora_b_out, out.dtype)
    result = walk.new(T * out_features, promote(out.dtype, lora_b_out.dtype), True)
    if settings.dora:
        # result_dora = (m/||W+sBA|| - 1)·base + (m/||W+sBA||)·lora·s: both products save their tensor operand
        # (the base result and the lora result); m/||.|| is fp32 (the magnitude is), so are the products.
        base = out
        if settings.lora_dropout:
            # with dropout DoRA does not reuse the base result: it recomputes F.linear(dropout(x), W) with W in
            # x's dtype; autograd saves W (its autocast copy, or W itself): a weight-sized tensor per target
            if autocast_dtype and autocast_dtype != x_dropped.dtype:
                walk.per_layer_saved += out_features * in_features * BYTES[autocast_dtype]
            else:
                # the weight in x's dtype, if that was a copy, now saved rather than held
                walk.per_layer_saved += base_weight_copy
                held -= base_weight_copy
            base = walk.new(T * out_features, autocast_dtype or x_dropped.dtype, True)
        walk.save(base, lora_b_out)
        product_dtype = promote(settings.adapter_dtype, base.dtype)
        # per output feature: the detached norm (divisor of m/||.||), m/||.|| and m/||.|| - 1 (mul operands)
        walk.per_layer_saved += out_features * (BYTES[x_dropped.dtype] + 2 * BYTES[product_dtype])
        # (m-1)·base, m·lora, (m·lora)·s
        products = [walk.new(T * out_features, product_dtype, True) for _ in range(3)]
        walk.transient(
            x, x_adapter, x_dropped, lora_a_out, lora_b_out, out, *products, extra=held, extra_ref=held - kept
        )  # (lora_a_input: saved only)
        result = walk.new(T * out_features, promote(out.dtype, product_dtype), True)
        # backward reaches DoRA's first saving node after the nodes that save nothing: the result's .to(dtype)
        # (a gradient in the result's dtype), result + result_dora (the base's share in its own dtype) and
        # `· s` (m·lora's gradient); measured where a checkpointed layer's recompute starts
        cast = not quantized and result.dtype != out.dtype
        gradient_bytes_per_feature = (
            BYTES[product_dtype]
            + (BYTES[result.dtype] if cast else 0)
            + (BYTES[out.dtype] if out.dtype != result.dtype else 0)
        )
        walk.recompute_tail = T * out_features * gradient_bytes_per_feature
    if not quantized:
        result = walk.cast(result, out.dtype)
    return result


def _prequantized(
    walk: Walk, settings: WalkSettings, x: SymbolicTensor, in_features: int, out_features: int
) -> SymbolicTensor:
    """A frozen linear of a pre-quantized base (spec/prequantized_base.py, sources there): the matmul runs in
    x's dtype after autocast. While the weight is dequantized `dequant_copies` weight-sized tensors in that dtype
    are alive (GPTQ / AWQ: fp16 and its bf16 cast), `matmul_copies` of them still when the output is allocated.
    GPTQ's torch.matmul saves the dequantized weight (x needs a gradient), AQLM's autograd Function saves its
    input; AWQ and FP8 save only their quantized tensors; a decompressed compressed-tensors linear is a dense
    frozen one. The walk follows the forward: the weight AWQ, FP8, AQLM and NVFP4 dequantize again in backward
    (`backward_copies`, one linear's, transient) is not a moment of it."""
    T = settings.T
    compute = settings.autocast_dtype or x.dtype
    weight = in_features * out_features * BYTES[compute]
    x_compute = walk.cast(x, compute)
    if settings.dequant_copies:
        walk.transient(x, x_compute, extra=settings.dequant_copies * weight)
    out = walk.new(T * out_features, compute, x.requires_grad)
    walk.transient(x, x_compute, out, extra=settings.matmul_copies * weight)
    if settings.prequantized == "saves_weight" and x.requires_grad:
        walk.per_layer_saved += weight
    elif settings.prequantized == "saves_input" and x.requires_grad:
        walk.save(x_compute)
    return out


def _dora_weight_norm(
    walk: Walk,
    settings: WalkSettings,
    live: tuple[SymbolicTensor, ...],
    in_features: int,
    out_features: int,
    quantized: bool,
) -> tuple[int, int, int]:
    """DoRA's weight-sized intermediates inside one target's forward: (what stays alive until it returns, the
    part of it only autograd keeps, the base weight's copy in x's dtype).

    peft/tuners/lora/dora.py `DoraLinearLayer.forward` (peft 0.21.2, DoRA caching off, as in training):
    `get_lora_weight` runs lora_B(lora_A(eye(in))) with an `in × in` identity in the adapter dtype (autocast
    casts it, and lora_A's mm saves the cast for lora_A's gradient, alive while the lora weight is: not under
    checkpointing, which keeps no saved tensor); the lora weight and the base weight (dequantized first when
    4-/8-bit) are moved to x's dtype, and the column norm of W + s·BA allocates s·BA and the sum before
    `linalg_vector_norm` (fp32 accumulation, no copy under CUDA autocast). The lora weight and the base weight
    in x's dtype stay alive until forward returns. Measured op by op under the tracker on single DoRA layers
    (in² and weight terms separate) and in checkpointed 7B QLoRA layers (peak at the identity's cast).
    """
    weight_numel = in_features * out_features
    x_dtype = live[2].dtype  # PEFT casts x to the adapter dtype (a bnb base under autocast leaves it)
    autocast_dtype = settings.autocast_dtype
    lora_weight_dtype = autocast_dtype or settings.adapter_dtype  # lora_B(lora_A(eye)) output
    identity = in_features * in_features * BYTES[settings.adapter_dtype]
    identity_cast = (
        in_features * in_features * BYTES[autocast_dtype]
        if autocast_dtype and autocast_dtype != settings.adapter_dtype
        else 0
    )
    lora_a_out = in_features * settings.lora_rank * BYTES[lora_weight_dtype]
    kept = (identity_cast or identity) + lora_a_out  # saved by lora_A's and lora_B's mm
    walk.transient(*live, extra=identity + identity_cast)  # the identity's autocast cast
    # lora_B(lora_A(eye)): the lora weight; with checkpointing the cast is gone (lora_A saved nothing)
    lora_weight_in_compute = weight_numel * BYTES[lora_weight_dtype]
    walk.transient(
        *live,
        extra=identity + identity_cast + lora_a_out + lora_weight_in_compute,
        extra_ref=identity + lora_a_out + lora_weight_in_compute,
    )
    lora_weight = weight_numel * BYTES[x_dtype]
    # int8_vectorwise_dequant computes in fp32
    base_dtype = ("fp32" if settings.int8 else settings.weight_dtype) if quantized else settings.weight_dtype
    if quantized:
        # dequantize: 4-bit -> the original dtype; int8 -> A·SCB·(1/127), two fp32 weight-sized temporaries
        dequantized = weight_numel * BYTES[base_dtype] * (2 if settings.int8 else 1)
        walk.transient(*live, extra=kept + lora_weight + dequantized, extra_ref=lora_weight + dequantized)
    base_weight_copy = weight_numel * BYTES[x_dtype] if (quantized or base_dtype != x_dtype) else 0
    # s·BA and W + s·BA, both in x's dtype, while the norm runs
    norm_operands = 2 * weight_numel * BYTES[x_dtype]
    walk.transient(
        *live,
        extra=kept + lora_weight + base_weight_copy + norm_operands,
        extra_ref=lora_weight + base_weight_copy + norm_operands,
    )
    return kept + lora_weight + base_weight_copy, kept, base_weight_copy
