"""Two families' extra activation terms, beside `activations.py`'s layer walk: what Gemma 4's KV-sharing layers
keep for the layers that read them, and what a post-norm layer's output norm frees before its backward peaks."""

from __future__ import annotations

from vramplan.estimator.walk import BYTES
from vramplan.spec import ModelSpec, TrainSpec
from vramplan.spec.family_traits import FP32_PRODUCT_NORM, PER_LAYER_SHAPES, POST_NORM


def shared_kv_held(m: ModelSpec, t: TrainSpec, tokens: int, residual_dtype: str) -> int:
    """Gemma 4 under checkpointing: the last non-shared layer of each type (`kv_sharing_modes` "store") puts its
    keys and values in the model's `shared_kv_states` dict, which the checkpointed layers' arguments keep alive
    (modeling_gemma4.py `Gemma4TextAttention.forward`, 5.25); without checkpointing that layer's attention has
    saved them anyway."""
    if m.model_type not in PER_LAYER_SHAPES:
        return 0
    from vramplan.estimator.kvcache import layer_kv_elems
    from vramplan.spec.gemma3n import per_layer_dims

    elems = layer_kv_elems(m)
    modes = per_layer_dims(m)["modes"]
    # k / v in the projections' output dtype: a bitsandbytes linear returns its input's (the residual stream's,
    # fp32 after kbit prep), an unquantized one under autocast the autocast dtype
    quantized = t.quant != "none"
    dtype_bytes = BYTES[residual_dtype if quantized or t.mixed_precision == "no" else t.mixed_precision]
    return sum(e * tokens * dtype_bytes for e, mode in zip(elems, modes, strict=True) if mode == "store")


def output_norm_freed(m: ModelSpec, t: TrainSpec, tokens: int) -> int:
    """What a post-norm layer's output norm saved and its backward frees before its fp32 gradient chain peaks:
    the inverse RMS (T·4), and with a trainable weight the product's other operand (OLMo: the fp32 normed
    tensor; EXAONE 4's Llama norm: its cast to the input dtype). 0 for the other families."""
    if m.model_type not in POST_NORM:
        return 0
    operand = 0
    if t.method == "full":
        elem = 4 if m.model_type in FP32_PRODUCT_NORM else BYTES[t.compute_dtype]
        operand = tokens * m.hidden_size * elem
    return tokens * 4 + operand
