"""Counting what exists before tracking and relabelling by hook: the part of `MemoryTracker`
(`vramplan.measure.tracker`) that knows modules and optimizers. A model's parameters (weights / trainable),
buffers and bitsandbytes quant state are registered; a post-accumulate-grad hook relabels each `.grad` as
gradients, optimizer step hooks relabel gradients before `step()` and `optimizer.state` tensors after it.

Source: torch 2.13 `torch/optim/optimizer.py` (`register_step_pre_hook` / `register_step_post_hook`),
`torch/_tensor.py` (`register_post_accumulate_grad_hook`), bitsandbytes 0.50 `functional.QuantState`.
"""

from __future__ import annotations

from typing import Any

import torch

from vramplan.measure.tensors import leaf_tensors, quant_state_tensors
from vramplan.measure.tracked import CATEGORIES, Category


class Registration:
    """`MemoryTracker`'s registration methods; they count through its storage bookkeeping (`_counts`, `_track`,
    `_assign`, `_entries`) and keep their hook handles in `_handles`."""

    __slots__ = ()

    def register_tensor(self, tensor: torch.Tensor, category: Category) -> None:
        """Count `tensor`'s storage under `category` (or move it there if already counted)."""
        if category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r}; expected one of {', '.join(CATEGORIES)}")
        for t in leaf_tensors(tensor):
            if self._counts(t):
                self._assign(t.untyped_storage(), category)

    def register_module(self, module: torch.nn.Module) -> None:
        """Count parameters (weights / trainable), buffers (weights) and bitsandbytes quant state.

        Installs a post-accumulate-grad hook on each trainable parameter that relabels its `.grad` storage as
        gradients. Shared (tied) parameters count once.
        """
        for param in module.parameters():
            self.register_tensor(param, "trainable" if param.requires_grad else "weights")
            if param.requires_grad:
                self._handles.append(param.register_post_accumulate_grad_hook(self._on_grad_accumulated))
            if param.grad is not None:
                self.register_tensor(param.grad, "gradients")
        for buf in module.buffers():
            self.register_tensor(buf, "weights")
        for sub in module.modules():
            for tensor in quant_state_tensors(sub):
                # Add-only: `Int8Params.CB` aliases the int8 weight, which stays under weights.
                if self._counts(tensor) and tensor.untyped_storage()._cdata not in self._entries:
                    self._track(tensor.untyped_storage(), "quant_state")

    def register_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Relabel gradients before each `step()` and `optimizer.state` tensors after it.

        States are created lazily inside the first `step()`; until the post-step hook runs they count as
        temporaries, and the relabel then moves them in the recorded peaks too.
        """
        self._handles.append(optimizer.register_step_pre_hook(self._on_step_pre))
        self._handles.append(optimizer.register_step_post_hook(self._on_step_post))
        self._relabel_optimizer_states(optimizer)

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _on_grad_accumulated(self, param: torch.Tensor) -> None:
        if param.grad is not None:
            self.register_tensor(param.grad, "gradients")

    def _on_step_pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self.register_tensor(param.grad, "gradients")

    def _on_step_post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._relabel_optimizer_states(optimizer)

    def _relabel_optimizer_states(self, optimizer: torch.optim.Optimizer) -> None:
        for state in optimizer.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    self.register_tensor(value, "optimizer_states")
