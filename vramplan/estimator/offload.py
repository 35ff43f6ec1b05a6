"""Activations moved to host RAM during the step: offloaded gradient checkpointing and activation offloading.

- `checkpoints` (Unsloth's `use_gradient_checkpointing="unsloth"`, LLaMA-Factory `use_unsloth_gc`, axolotl
  `activation_offloading: legacy`, whose offload_cpu.py is Unsloth's checkpointer): each checkpointed layer
  input is copied to the host in forward and back to the GPU just before that layer's recompute
  (unsloth_zoo/gradient_checkpointing.py `Unsloth_Offloaded_Gradient_Checkpointer`:
  `saved_hidden_states = hidden_states.to("cpu", non_blocking=True)` in forward, `.to("cuda")` in backward).
  On the GPU: the one input in flight.
- `all` (transformers / TRL `activation_offloading=True`, axolotl `activation_offloading: true / disk /
  hidden_states` and `gradient_checkpointing: offload / offload_disk`, which axolotl rewrites to them): a
  saved-tensor hook moves every tensor autograd saves in the decoder layers to pinned host memory and
  overlaps the copies back in backward (trl 1.16 models/activation_offloading.py `OffloadActivations`, from
  torchtune: tensors of at least `min_offload_size` 1024 B, `use_streams`, `max_fwd_stash_size` 5 tensors;
  `get_act_offloading_ctx_manager` runs the output head under `NoOpManager`: the logits stay on the GPU). On
  the GPU: one layer's saved set and the next one coming back (`use_streams`); with checkpointing the saved
  tensors are the layer inputs, two of them on the GPU.

Host RAM: what left the GPU, per rank (`host_bytes`); pinned, so it is not pageable.

- layer offloading (axolotl `layer_offloading`): the frozen parameters of the decoder layers, not activations,
  live in pinned host RAM and stream through the GPU a layer at a time (`layer_offload_bytes`).
"""

from __future__ import annotations

import dataclasses

from vramplan.estimator.activations import ActivationBytes
from vramplan.spec import DTYPE_BYTES, ModelSpec, TrainSpec

ACTIVATION_OFFLOADS: tuple[str, ...] = ("none", "checkpoints", "all")


def offloaded_bytes(t: TrainSpec, a: ActivationBytes, layers: int) -> tuple[int, int]:
    """(bytes moved to the host, bytes of the layer kept in flight on the GPU) for `t.activation_offload`."""
    if t.activation_offload == "none":
        return 0, 0
    # Unsloth copies back synchronously: one unit on the GPU; OffloadActivations(use_streams=True) brings the
    # next tensors back while the current ones are used: two
    units = 1 if t.activation_offload == "checkpoints" else 2
    if t.grad_ckpt:  # the saved tensors are the layer inputs
        return layers * a.hidden_bytes, min(units, layers) * a.hidden_bytes
    if t.activation_offload == "all":
        decoder = max(0, a.saved - a.final_saved)
        return decoder, min(units * a.layer, decoder)
    return 0, 0


def offload_activations(t: TrainSpec, a: ActivationBytes, layers: int) -> ActivationBytes:
    """`a` with the offloaded part of `saved` replaced by what stays on the GPU."""
    gone, kept = offloaded_bytes(t, a, layers)
    if not gone:
        return a
    return dataclasses.replace(a, saved=a.saved - gone + kept)


def host_bytes(t: TrainSpec, a: ActivationBytes, layers: int) -> int:
    """Host RAM one rank's offloaded activations take at the end of forward."""
    return offloaded_bytes(t, a, layers)[0]


# axolotl's LayerOffloadManager (num_prefetch=1): in a layer's forward (backward) pre-hook the next (previous)
# layer is prefetched while the one before it is offloaded only in the post-hook: three layers at most
LAYER_OFFLOAD_WINDOW = 3


def frozen_layer_bytes(m: ModelSpec, t: TrainSpec) -> tuple[int, int]:
    """(bytes of one decoder layer's frozen parameters, how many layers hold them) as stored on the GPU.

    LoRA / QLoRA: every parameter of the layer is frozen (the adapters are not counted: they stay on the GPU);
    a bitsandbytes Linear's packed weight moves (its `quant_state` absmax is an attribute, not a parameter,
    and stays); norms and other parameters in the dtype kbit prep left them. `--method freeze`: the layers
    below the trainable ones. A full fine-tune freezes nothing.
    """
    layers = m.num_hidden_layers
    if t.method == "full":
        return 0, 0
    count = layers - t.freeze_trainable_layers if t.method == "freeze" else layers
    if t.quant == "none":
        return m.layer_params * DTYPE_BYTES[t.dtype], count
    from vramplan.estimator.weights import base_param_dtype_bytes
    from vramplan.estimator.zero import layer_packed_bytes

    linear_weights = sum(lin.weight_params for lin in m.linears)
    return layer_packed_bytes(m, t) + (m.layer_params - linear_weights) * base_param_dtype_bytes(t), count


def layer_offload_bytes(m: ModelSpec, t: TrainSpec) -> tuple[int, int, int]:
    """(bytes moved to pinned host RAM, bytes on the GPU in forward / backward, bytes on the GPU at the
    optimizer step) with axolotl's `layer_offloading`.

    axolotl 067b021 core/trainers/mixins/layer_offloading.py `LayerOffloadManager`: at start every decoder
    layer's frozen parameters (`requires_grad=False`) are copied to pinned host buffers and the parameter's
    `.data` pointed at them; hooks on each layer load it before its forward / backward, prefetch the next
    (previous) one and offload the one before in the post-hook; `pre_step` / `post_step` around
    `training_step` offload every layer and prefetch layer 0, so the optimizer step sees one layer. Held to a
    CPU trace of those hooks on a PEFT model (tests/estimator/test_layer_offload.py): at most three layers
    resident, with and without checkpointing (reentrant or not).
    """
    if not t.layer_offload:
        return 0, 0, 0
    per_layer, count = frozen_layer_bytes(m, t)
    return count * per_layer, min(LAYER_OFFLOAD_WINDOW, count) * per_layer, min(1, count) * per_layer
