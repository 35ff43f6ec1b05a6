"""Which walk a decoder layer takes: an attention + MLP layer (`layer_ops`), or a hybrid attention + Mamba one
(`mamba_ops`, which builds on `layer_ops`' norm, attention and MLP ops). One entry point for the activations
walk and the allocation-event recorder, so that neither family module imports the other's dispatcher."""

from __future__ import annotations

from vramplan.estimator import layer_ops, mamba_ops, post_norm_ops
from vramplan.estimator.walk import SymbolicTensor, Walk, WalkSettings
from vramplan.spec import ModelSpec
from vramplan.spec.family_traits import POST_NORM


def decoder_layer(
    walk: Walk, settings: WalkSettings, m: ModelSpec, x: SymbolicTensor, trainable: bool
) -> SymbolicTensor:
    """One decoder layer of `m`; returns its output hidden state."""
    if m.model_type == "gemma3n_text":
        from vramplan.estimator import gemma3n_ops

        return gemma3n_ops.decoder_layer(walk, settings, m, x, trainable)
    if m.model_type == "gemma4_text":
        from vramplan.estimator import gemma4_ops

        return gemma4_ops.decoder_layer(walk, settings, m, x, trainable)
    if m.mamba is not None:
        return mamba_ops.hybrid_layer(walk, settings, m, x, trainable)
    if m.model_type in POST_NORM:
        return post_norm_ops.post_norm_layer(walk, settings, m, x, trainable)
    return layer_ops.decoder_layer(walk, settings, m, x, trainable)
