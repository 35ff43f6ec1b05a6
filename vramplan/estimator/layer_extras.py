"""Two families' extra activation terms, beside `activations.py`'s layer walk: what Gemma 4's KV-sharing layers
keep for the layers that read them, and what a post-norm layer's output norm frees before its backward peaks."""

from __future__ import annotations

from vramplan.estimator.walk import BYTES
from vramplan.spec import ModelSpec, TrainSpec
from vramplan.spec.family_traits import FP32_PRODUCT_NORM, OUTPUT_NORM, PER_LAYER_SHAPES


def shared_kv_held(m: ModelSpec, t: TrainSpec, tokens: int, residual_dtype: str) -> int:
    """Gemma 4 under checkpointing: the last non-shared layer of each type (`kv_sharing_modes` "store") puts its
    keys and values in the model's `shared_kv_states` dict, which the checkpointed layers' arguments keep alive
    (modeling_gemma4.py `Gemma4TextAttention.forward`, 5.25); without checkpointing that layer's attention has
    saved them anyway."""
    if m.model_type not in PER_LAYER_SHAPES:
        return 0
    from vramplan.estimator.kvcache import layer_kv_elems
    from vramplan.spec.gemma4 import gemma4_dims

    elems = layer_kv_elems(m)
    modes = gemma4_dims(m)["modes"]
    # k / v in the projections' output dtype: a bitsandbytes linear returns its input's (the residual stream's,
    # fp32 after kbit prep), an unquantized one under autocast the autocast dtype
    quantized = t.quant != "none"
    dtype_bytes = BYTES[residual_dtype if quantized or t.mixed_precision == "no" else t.mixed_precision]
    return sum(e * tokens * dtype_bytes for e, mode in zip(elems, modes, strict=True) if mode == "store")


def stored_kv_graphs(m: ModelSpec, t: TrainSpec, settings, residual_dtype: str) -> int:
    """Gemma 4 under checkpointing: what the KV-storing layers above the bottom one leave in `shared_kv_states`
    once their recompute has run (gemma4_ops.stored_kv_graph), alive at the bottom layer's backward. Traced on
    the tiny gemma4_text (2 × 64 tokens, LoRA all-linear: 232,640 B at layer 0's recompute)."""
    if m.model_type not in PER_LAYER_SHAPES or not t.grad_ckpt or t.stack.reentrant_checkpointing:
        return 0
    from vramplan.estimator.activations import layer_kinds
    from vramplan.estimator.gemma4_ops import stored_kv_graph
    from vramplan.estimator.walk import layer_specs
    from vramplan.spec.gemma4 import gemma4_dims

    modes = gemma4_dims(m)["modes"]
    per_token = sum(
        stored_kv_graph(spec, settings, kind[0], kind[1], residual_dtype)
        for index, (spec, kind, mode) in enumerate(zip(layer_specs(m), layer_kinds(m, t), modes, strict=True))
        if mode == "store" and index > 0
    )
    return round(t.tokens * (per_token.real + per_token.imag * t.seq))


def output_norm_freed(m: ModelSpec, t: TrainSpec, tokens: int) -> int:
    """What a post-norm layer's output norm saved and its backward frees before its fp32 gradient chain peaks:
    the inverse RMS (T·4), and with a trainable weight the product's other operand (OLMo: the fp32 normed
    tensor; EXAONE 4's Llama norm: its cast to the input dtype). 0 for the other families."""
    if m.model_type not in OUTPUT_NORM:
        return 0
    operand = 0
    if t.method == "full":
        elem = 4 if m.model_type in FP32_PRODUCT_NORM else BYTES[t.compute_dtype]
        operand = tokens * m.hidden_size * elem
    return tokens * 4 + operand
