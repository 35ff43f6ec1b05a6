"""Two families' extra activation terms, beside `activations.py`'s layer walk: what Gemma 4's KV-sharing layers
keep for the layers that read them (in forward, and after their recompute), and what a layer's output norm
(post-norm, sandwich-norm, Gemma 4) frees before its backward peaks."""

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
    from vramplan.spec.gemma3n import per_layer_dims

    elems = layer_kv_elems(m)
    modes = per_layer_dims(m)["modes"]
    dtype_bytes = _kv_bytes(t, residual_dtype)
    return sum(e * tokens * dtype_bytes for e, mode in zip(elems, modes, strict=True) if mode == "store")


def _kv_bytes(t: TrainSpec, residual_dtype: str) -> int:
    """Bytes per element of k / v, the projections' output dtype: a bitsandbytes linear returns its input's (the
    residual stream's, fp32 after kbit prep), an unquantized one under autocast the autocast dtype."""
    quantized = t.quant != "none"
    return BYTES[residual_dtype if quantized or t.mixed_precision == "no" else t.mixed_precision]


def stored_kv_layers(m: ModelSpec, t: TrainSpec, settings, residual_dtype: str, kinds) -> dict[int, tuple[int, int]]:
    """Gemma 4 under (non-reentrant) checkpointing, per KV-storing layer (its index): the keys and values its
    forward leaves in `shared_kv_states` (`shared_kv_held`'s share), and what its recompute leaves there in their
    place (gemma4_ops.stored_kv_graph: the recomputed keys and values with the recompute's graph), alive from
    that recompute to the end of the bottom layer's backward. `kinds`: activations.layer_kinds. Empty for the
    other families."""
    if m.model_type != "gemma4_text" or not t.grad_ckpt or t.stack.reentrant_checkpointing:  # Gemma 3n: its own
        return {}
    from vramplan.estimator.gemma4_ops import stored_kv_graph
    from vramplan.estimator.kvcache import layer_kv_elems
    from vramplan.estimator.walk import layer_specs
    from vramplan.spec.gemma4 import gemma4_dims

    dtype_bytes = _kv_bytes(t, residual_dtype)
    held = {}
    layers = zip(layer_specs(m), kinds, gemma4_dims(m)["modes"], layer_kv_elems(m), strict=True)
    for index, (spec, kind, mode, elems) in enumerate(layers):
        if mode == "store":
            per_token = stored_kv_graph(spec, settings, kind[0], kind[1], residual_dtype)
            graph = round(t.tokens * (per_token.real + per_token.imag * t.seq))
            held[index] = (elems * t.tokens * dtype_bytes, graph)
    return held


def stored_kv_graphs(m: ModelSpec, t: TrainSpec, settings, residual_dtype: str, kinds) -> int:
    """What the KV-storing layers above the bottom one leave in `shared_kv_states` once their recompute has run,
    alive at the bottom layer's backward (`stored_kv_layers`). Traced on the tiny gemma4_text (2 × 64 tokens,
    LoRA all-linear: 232,640 B at layer 0's recompute; QLoRA: 182,784 B)."""
    held = stored_kv_layers(m, t, settings, residual_dtype, kinds)
    return sum(graph for index, (_, graph) in held.items() if index > 0)


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
