"""Activations moved to host RAM during the step: offloaded gradient checkpointing and activation offloading.

- `checkpoints` (Unsloth's `use_gradient_checkpointing="unsloth"`, LLaMA-Factory `use_unsloth_gc`, axolotl
  `activation_offloading: legacy`, whose offload_cpu.py is Unsloth's checkpointer): each checkpointed layer input is copied to the host in forward and
  back to the GPU just before that layer's recompute (unsloth_zoo/gradient_checkpointing.py
  `Unsloth_Offloaded_Gradient_Checkpointer`: `saved_hidden_states = hidden_states.to("cpu",
  non_blocking=True)` in forward, `.to("cuda")` in backward). On the GPU: the one input in flight.
- `all` (transformers / TRL `activation_offloading=True`, axolotl `activation_offloading: true / disk /
  hidden_states` and `gradient_checkpointing: offload / offload_disk`, which axolotl rewrites to them): a
  saved-tensor hook moves every tensor autograd saves in the decoder layers to pinned host memory and
  overlaps the copies back in backward (trl 1.16 models/activation_offloading.py `OffloadActivations`, from
  torchtune: tensors of at least `min_offload_size` 1024 B, `use_streams`, `max_fwd_stash_size` 5 tensors;
  `get_act_offloading_ctx_manager` runs the output head under `NoOpManager`: the logits stay on the GPU). On
  the GPU: one layer's saved set and the next one coming back (`use_streams`); with checkpointing the saved
  tensors are the layer inputs, two of them on the GPU.

Host RAM: what left the GPU, per rank (`host_bytes`); pinned, so it is not pageable.
"""

from __future__ import annotations

import dataclasses

from vramplan.estimator.activations import ActivationBytes
from vramplan.spec import TrainSpec

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
