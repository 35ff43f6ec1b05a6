"""ActivationBytes: what one training step's forward saves for backward and the workspace around it, the
result of `vramplan.estimator.activations.activation_bytes` that the peak moments (peak.py) and activation
offloading (offload.py) read."""

from __future__ import annotations

from typing import NamedTuple


class ActivationBytes(NamedTuple):
    """Saved-for-backward bytes of a forward, and the workspace around it.

    `saved`: all decoder layers (with checkpointing: the layer inputs); `layer`: one layer's saved set (what a
    checkpointed layer recomputes during backward); `layer_transient`: the most one layer's forward holds at
    once (what it has saved so far plus the operands of the op at hand); `layer_copies`: autocast's low-
    precision copies of one layer's fp32 weights that mm saves (adapters, fp32 base or master weights), held by
    `copy_layers` layers from forward to their backward (without checkpointing; with it the recompute makes one
    layer's again); `layer_cached`: the part autocast's cast cache holds (trainable leaves) until forward ends;
    `head_copy`: the same for an fp32 `lm_head`, alive until lm_head's backward; `hidden_bytes`: one T·hidden
    tensor in the residual stream's dtype; `backward_workspace`: gradients alive at once inside one layer's
    backward: the MLP's (grad of the down-projection input and of both product operands, 3·T·I in the MLP's
    dtype; 2·T·I for a plain MLP) plus the incoming gradient of the layer's output (T·H).
    """

    saved: int
    layer: int
    layer_transient: int
    recompute_transient: int  # the same, up to where a checkpointed layer's recompute stops
    layer_refs: int  # the most one layer's forward references at once (operands, residuals), autograd aside
    layer_copies: int
    layer_cached: int
    copy_layers: int
    head_copy: int
    hidden_bytes: int
    backward_workspace: int
    dora_backward: int  # DoRA's weight-sized tensor in its backward (one copy in the compute dtype)
    layer_ctx: int  # one layer's tensors kept outside saved tensors (int8 matmul inputs): not kept by a recompute
    layer_input_saved: int  # the part of `layer` that is the layer's input (a checkpointed input already)
    recompute_tail: int  # gradients alive when a checkpointed layer's recompute starts, beyond the incoming one
    down_saved: int  # what the MLP's down projection saved: freed before the MLP workspace peaks
    hidden_grad_bytes: int  # a T·hidden gradient in the compute dtype (flows out of the attention / MLP)
    final_saved: int  # what the final norm saves (part of `saved`; freed before the top layer's backward)
    final_hidden_bytes: int  # the final norm's output, held by the model output until the loss is computed
    # a hybrid's linear-attention layer (Qwen3.5): its backward's own peak, inside the chunked delta rule, with
    # what the layer saved up to there (`mixer_saved`) and the workspace then; `mixer_above_saved`: the saves of
    # the layers above the topmost such layer (freed before its backward); 0 for every other family
    mixer_saved: int = 0
    mixer_workspace: int = 0
    mixer_above_saved: int = 0
    # the training forward's DynamicCache (use_cache=True unless checkpointing) holds every layer's k and v; SDPA
    # saves those same tensors unless it got repeated copies (transformers < 4.54): then they are extra until the
    # model output is dropped (traced, 4.48.3). Not counted for eager or masked SDPA (the current model's gap)
    forward_cache_bytes: int = 0
    # what the dense-MLP layers below the lowest routed one keep (DeepSeek-V3's first_k_dense_replace: that
    # layer stands for the bottom one; peak.py): their saved sets, or their checkpointed inputs; and what the
    # model made for every layer and the bottom one still holds (OLMo's fp32 RoPE tables, Granite's
    # embedding-output leaf: activations.py), alive to the end of backward
    below_bottom: int = 0
    # a layer ending in a norm of its MLP output (family_traits.OUTPUT_NORM: post-norm, sandwich-norm, Gemma 4;
    # estimator/output_norm_ops.py): the backward of that norm, the
    # layer's first, with every tensor the layer saved still alive: the RMSNorm's fp32 gradient chain (rsqrt,
    # mean and pow backward: five T·H fp32 tensors at once) beside the residual's T·H gradient; 0 otherwise
    output_norm_backward: int = 0
    output_norm_freed: int = 0  # what that norm saved and its backward has freed by then (rsqrt, product operand)
    dense_bottom: ActivationBytes | None = None  # the same one-layer figures for the dense-MLP layers
