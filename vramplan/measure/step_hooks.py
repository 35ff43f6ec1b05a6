"""Hooks the harness sets on the model and optimizer of a step: the logits label, gradient-checkpoint
recomputes as activations (with their moment and the emulated autocast), bitsandbytes' paged states kept out of
the count, and PEFT's parameter counts."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import torch

from vramplan.measure.cuda_equiv import CudaAutocast
from vramplan.measure.moments import LOGITS_AND_LOSS, decoder_layers, layer_recompute
from vramplan.measure.tracker import MemoryTracker


class LogitsLabel:
    """Label what lm_head and the loss allocate as logits: from lm_head's forward to the end of the model's
    forward, and in backward (the caller sets the label when `hooked`) until the gradient of lm_head's input
    has been computed."""

    def __init__(self, causal_lm: torch.nn.Module, tracker: MemoryTracker) -> None:
        self.tracker = tracker
        self.hooked = False
        head = causal_lm.get_output_embeddings()
        if head is not None:
            tracker._handles.append(head.register_forward_pre_hook(self._pre))
            tracker._handles.append(causal_lm.register_forward_hook(self._post))

    def _pre(self, module: torch.nn.Module, args: tuple) -> None:
        self.hooked = False
        if self.tracker.phase != "forward" or torch._C._current_graph_task_id() != -1:
            return
        self.tracker.label = "logits"
        self.tracker.moment = LOGITS_AND_LOSS
        hidden = args[0] if args else None
        if isinstance(hidden, torch.Tensor) and hidden.requires_grad:
            hidden.register_hook(self._end_of_logits_backward)
            self.hooked = True

    def _post(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        if self.tracker.phase == "forward":
            self.tracker.label = None
            self.tracker.moment = None

    def _end_of_logits_backward(self, grad: torch.Tensor) -> None:
        self.tracker.label = None
        self.tracker.moment = None


def wrap_checkpointing(model: torch.nn.Module, tracker: MemoryTracker, emu: CudaAutocast | None) -> None:
    """Label a gradient-checkpoint recompute's allocations as activations, and reopen the emulated autocast in
    it (torch.utils.checkpoint restores CUDA autocast itself; it cannot restore an emulation); name the
    recompute's moment ("layer i recompute")."""
    index = {id(layer): i for i, layer in enumerate(decoder_layers(model))}
    for module in model.modules():
        ckpt = module.__dict__.get("_gradient_checkpointing_func")
        if ckpt is not None and not isinstance(ckpt, RecomputeAware):
            moment = layer_recompute(index[id(module)]) if id(module) in index else "recompute"
            module._gradient_checkpointing_func = RecomputeAware(ckpt, tracker, emu, moment)


class RecomputeAware:
    __slots__ = ("ckpt", "emu", "moment", "tracker")

    def __init__(self, ckpt: Callable, tracker: MemoryTracker, emu: CudaAutocast | None, moment: str) -> None:
        self.ckpt, self.tracker, self.emu, self.moment = ckpt, tracker, emu, moment

    def __call__(self, function: Callable, *args: Any, **kwargs: Any) -> Any:
        return self.ckpt(functools.partial(self._run, function), *args, **kwargs)

    def _run(self, function: Callable, *args: Any, **kwargs: Any) -> Any:
        if torch._C._current_graph_task_id() == -1:  # the first forward
            return function(*args, **kwargs)
        region = self.emu.region() if self.emu is not None else contextlib.nullcontext()
        with region, self.tracker.label_scope("activations"), self.tracker.moment_scope(self.moment):
            return function(*args, **kwargs)


def exclude_paged_states(optimizer: Any, tracker: MemoryTracker) -> None:
    """bitsandbytes pages states of tensors with >= 1e5 elements into CUDA managed memory
    (`get_state_buffer`), which `memory_allocated` never sees; off CUDA it falls back to device tensors: keep
    those out of the count."""

    def get_state_buffer(p: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if p.numel() < 1e5:  # bitsandbytes 0.50 optim/optimizer.py: small tensors are not paged
            return torch.zeros_like(p, dtype=dtype)
        with tracker.excluded():
            buf = torch.zeros_like(p, dtype=dtype)
        buf._vramplan_paged = True  # not `is_paged`: bitsandbytes would prefetch it as CUDA managed memory
        return buf

    optimizer.get_state_buffer = get_state_buffer


def paged_bytes(optimizer: Any) -> int:
    seen: set[int] = set()
    total = 0
    for st in optimizer.state.values():
        for v in st.values():
            paged = getattr(v, "is_paged", False) or getattr(v, "_vramplan_paged", False)
            if isinstance(v, torch.Tensor) and paged and id(v) not in seen:
                seen.add(id(v))
                total += v.numel() * v.element_size()
    return total


def param_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(total, trainable) as PEFT counts them (4-bit weights counted unpacked)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
        return int(total), int(trainable)
    seen: dict[int, torch.nn.Parameter] = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in seen.values())
    return total, sum(p.numel() for p in seen.values() if p.requires_grad)
