"""Name the moments of a traced training step for the tracker (`MemoryTracker.moment`), so that each phase's
peak says where inside the phase it was reached and each moment keeps its own peak.

The names (decoder layers i = 0 … L-1; layer 0 is the bottom one, the last backward reaches):
- forward: "inside layer i" (the decoder layer's forward; transformers 5.24 `GradientCheckpointingLayer`
  checkpoints `forward`, so module hooks run once, outside the checkpoint), "logits and loss" (from lm_head's
  forward to the end of the model's forward, set by the harness's logits label); unnamed between them
  (embedding, final norm).
- backward: "logits gradient" (from `loss.backward()` until the gradient of lm_head's input exists),
  "layer i backward" (from the gradient of layer i's output on), "layer i recompute" (a checkpointed layer's
  forward replayed inside its backward, set by the harness's recompute wrapper), "after the layers" (from the
  gradient of layer 0's input on, when that input requires grad: the embedding's backward, the end).
- optimizer: "step" (gradient clipping, `optimizer.step()`, `zero_grad`).
The estimator's moments (`vramplan/estimator/peak.py`) are these at the top layer (L-1) and the bottom one (0).
"""

from __future__ import annotations

from typing import Any

import torch

from vramplan.measure.tracker import MemoryTracker

LOGITS_AND_LOSS = "logits and loss"
LOGITS_GRADIENT = "logits gradient"
AFTER_THE_LAYERS = "after the layers"
STEP = "step"


def inside_layer(index: int) -> str:
    return f"inside layer {index}"


def layer_backward(index: int) -> str:
    return f"layer {index} backward"


def layer_recompute(index: int) -> str:
    return f"layer {index} recompute"


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers in order (every transformers 5.24 family's layer is a `GradientCheckpointingLayer`)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]


class LayerMoments:
    """Forward hooks on each decoder layer naming "inside layer i" in forward, and gradient hooks on its output
    (and on layer 0's input) naming the backward moments; the handles join the tracker's."""

    def __init__(self, model: torch.nn.Module, tracker: MemoryTracker) -> None:
        self.tracker = tracker
        for index, layer in enumerate(decoder_layers(model)):
            tracker._handles.append(layer.register_forward_pre_hook(self._before(index)))
            tracker._handles.append(layer.register_forward_hook(self._after(index)))

    def _in_first_forward(self) -> bool:
        return self.tracker.phase == "forward" and torch._C._current_graph_task_id() == -1

    def _before(self, index: int):
        def hook(module: torch.nn.Module, args: tuple) -> None:
            if not self._in_first_forward():
                return
            self.tracker.moment = inside_layer(index)
            hidden = _first_tensor(args)
            if index == 0 and hidden is not None and hidden.requires_grad:
                hidden.register_hook(self._naming(AFTER_THE_LAYERS))

        return hook

    def _after(self, index: int):
        def hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
            if not self._in_first_forward():
                return
            self.tracker.moment = None
            hidden = _first_tensor(output)
            if hidden is not None and hidden.requires_grad:
                hidden.register_hook(self._naming(layer_backward(index)))

        return hook

    def _naming(self, moment: str):
        def hook(grad: torch.Tensor) -> None:
            self.tracker.moment = moment

        return hook


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None
