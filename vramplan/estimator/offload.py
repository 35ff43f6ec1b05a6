"""Activations moved to host RAM during the step: offloaded gradient checkpointing and activation offloading.

- `checkpoints` (Unsloth's `use_gradient_checkpointing="unsloth"`, LLaMA-Factory `use_unsloth_gc`, axolotl
  `activation_offloading: legacy`, whose offload_cpu.py is Unsloth's checkpointer): each checkpointed layer
  input is copied to the host in forward and back to the GPU just before that layer's recompute
  (unsloth_zoo/gradient_checkpointing.py `Unsloth_Offloaded_Gradient_Checkpointer`:
  `saved_hidden_states = hidden_states.to("cpu", non_blocking=True)` in forward, `.to("cuda")` in backward).
  On the GPU: the one input in flight.
- `unsloth` (Unsloth's `use_gradient_checkpointing="unsloth"` as unsloth_zoo 2026.10.9 runs it): the layer
  inputs but the last's on the host, staging buffers on the GPU (`unsloth_offload`).
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

from vramplan.estimator.activation_bytes import ActivationBytes
from vramplan.spec import DTYPE_BYTES, ModelSpec, TrainSpec

ACTIVATION_OFFLOADS: tuple[str, ...] = ("none", "checkpoints", "unsloth", "all")
# unsloth_zoo 2026.10.9 gradient_checkpointing.py `initialize_unsloth_gradient_checkpointing`: a checkpoint
# input of at most MINIMUM_SIZE bytes stays on the GPU
UNSLOTH_MINIMUM_SIZE = 2 * 1024 * 1024


def unsloth_offload(t: TrainSpec, a: ActivationBytes, layers: int) -> tuple[int, int, int]:
    """(bytes of layer inputs off the GPU, bytes on the GPU in their place, host bytes) of Unsloth's current
    offloaded checkpointing, `use_gradient_checkpointing="unsloth"`.

    unsloth_zoo 2026.10.9 gradient_checkpointing.py `UnslothCheckpointFunction` (reentrant): each decoder
    layer's input is copied to a pinned host slot, stored as bf16 / fp16 when it is fp32 (`store_dtype`,
    unless UNSLOTH_OFFLOAD_FP32=exact) and cast back in backward; the last layer's input is not offloaded
    after the first step (`LAST_GC_INDEX`, as torchtune #1443); inputs of at most 2 MiB stay. On the GPU:
    the last input, the staging buffer the reload lands in (`GPU_BUFFERS`, grown to the input's stored size
    and kept) and, once a step found 512 MiB free (`DOUBLE_BUFFER_HEADROOM`), a second one for overlapped
    reloads (`GPU_BUFFERS_B`; counted: an upper bound), plus the fp32 copy a cast back makes in recompute.
    CUDA-only streams and pinned buffers: modelled from the source, not traced.
    """
    fp32 = residual_is_fp32(t)
    stored = a.hidden_bytes // 2 if fp32 else a.hidden_bytes
    if stored <= UNSLOTH_MINIMUM_SIZE or layers < 2:
        return 0, 0, 0
    kept = a.hidden_bytes + 2 * stored + (a.hidden_bytes if fp32 else 0)
    return layers * a.hidden_bytes, kept, (layers - 1) * stored


def residual_is_fp32(t: TrainSpec) -> bool:
    from vramplan.estimator.activations import residual_dtype_of

    return residual_dtype_of(t) == "fp32"


def offloaded_bytes(t: TrainSpec, a: ActivationBytes, layers: int) -> tuple[int, int]:
    """(bytes moved to the host, bytes of the layer kept in flight on the GPU) for `t.activation_offload`."""
    if t.activation_offload == "none":
        return 0, 0
    if t.activation_offload == "unsloth":
        return unsloth_offload(t, a, layers)[:2]
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
    return a._replace(saved=a.saved - gone + kept)


def host_bytes(t: TrainSpec, a: ActivationBytes, layers: int) -> int:
    """Host RAM one rank's offloaded activations take at the end of forward."""
    if t.activation_offload == "unsloth":
        return unsloth_offload(t, a, layers)[2]
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
