"""CUDA's autocast, applied on any device: the op lists of `torch.autocast("cuda")` at the Python level.

`torch.autocast` does nothing for meta tensors, and on CPU it applies the CPU policy, not CUDA's. `CudaAutocast`
applies CUDA's lists (a TorchFunctionMode, above autograd, so the casts are recorded and saved as on CUDA), with
the cast cache for fp32 leaf tensors that require grad, and answers `torch.is_autocast_enabled()` as CUDA would
(PEFT's bnb LoRA asks it). Part of the harness's CUDA equivalence (cuda_equiv.py, where the rest is listed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

# CUDA autocast op lists, torch 2.13 aten/src/ATen/autocast_mode.cpp (by op name; in-place ops are not cast).
LOWER_PRECISION_OPS = frozenset({
    "_convolution", "conv1d", "conv2d", "conv3d", "conv_tbc", "conv_transpose1d", "conv_transpose2d",
    "conv_transpose3d", "convolution", "prelu", "addmm", "addmv", "addr", "matmul", "einsum", "mm", "mv",
    "linalg_vecdot", "linear", "addbmm", "baddbmm", "bmm", "chain_matmul", "linalg_multi_dot",
    "_thnn_fused_lstm_cell", "_thnn_fused_gru_cell", "lstm_cell", "gru_cell", "rnn_tanh_cell",
    "rnn_relu_cell",
    "_scaled_dot_product_flash_attention", "scaled_dot_product_attention",
})  # fmt: skip
FP32_OPS = frozenset({
    "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal", "rsqrt",
    "sinh", "tan", "pow", "softplus", "layer_norm", "native_layer_norm", "group_norm", "frobenius_norm",
    "nuclear_norm", "cosine_similarity", "poisson_nll_loss", "cosine_embedding_loss", "nll_loss",
    "nll_loss2d",
    "hinge_embedding_loss", "kl_div", "l1_loss", "smooth_l1_loss", "huber_loss", "mse_loss",
    "margin_ranking_loss", "multilabel_margin_loss", "soft_margin_loss", "triplet_margin_loss",
    "multi_margin_loss", "binary_cross_entropy_with_logits", "dist", "pdist", "cdist", "renorm", "logsumexp",
})  # fmt: skip
FP32_SET_OPT_DTYPE_OPS = frozenset({
    "prod", "softmax", "log_softmax", "cumprod", "cumsum", "linalg_vector_norm", "linalg_matrix_norm", "sum",
})  # fmt: skip
PROMOTE_OPS = frozenset({
    "addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "vdot", "grid_sampler", "index_put",
    "tensordot",
    "scatter_add", "cat", "stack",
})  # fmt: skip
_DUNDER = {"__matmul__": "matmul", "__rmatmul__": "matmul", "__pow__": "pow", "__rpow__": "pow"}


def _op_name(func: Any) -> str:
    name = getattr(func, "__name__", "")
    if name in _DUNDER:
        return _DUNDER[name]
    if name.endswith(".default") or "." in name:  # OpOverload names such as "mm.default"
        name = name.split(".")[0]
    return name


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _map(obj: Any, fn) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (list, tuple)):
        mapped = [_map(item, fn) for item in obj]
        return type(obj)(mapped) if isinstance(obj, tuple) and not hasattr(obj, "_fields") else mapped
    if isinstance(obj, dict):
        return {k: _map(v, fn) for k, v in obj.items()}
    return obj


class CudaAutocast(TorchFunctionMode):
    """CUDA's `torch.autocast(dtype=...)` policy, applied by hand (for meta, fake and CPU tensors).

    Open `region()` where the Trainer's autocast is on: the forward, and each gradient-checkpoint recompute
    (torch.utils.checkpoint restores CUDA autocast there). The mode is pushed only inside regions: a torch
    function mode is switched off inside its own handler, so a mode left on around `loss.backward()` would be
    off during the recompute. The cast cache holds the low-precision copy of each fp32 leaf tensor that
    requires grad until the outermost region closes, as `cached_cast` does (autocast_mode.cpp).
    """

    _current: CudaAutocast | None = None

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype
        self._depth = 0
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def active(cls) -> CudaAutocast | None:
        """The instance whose region is open, if any."""
        cur = cls._current
        return cur if cur is not None and cur._depth > 0 else None

    @property
    def enabled(self) -> bool:
        return self._depth > 0

    @contextlib.contextmanager
    def region(self) -> Iterator[CudaAutocast]:
        previous = CudaAutocast._current
        CudaAutocast._current = self
        if self._depth == 0:
            super().__enter__()
        self._depth += 1
        try:
            yield self
        finally:
            self._depth -= 1
            if self._depth == 0:
                super().__exit__(None, None, None)
                self._cache.clear()
            CudaAutocast._current = previous

    def cast(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if not t.is_floating_point() or t.dtype in (dtype, torch.float64):
            return t
        cacheable = (
            dtype == self.dtype and t.dtype == torch.float32 and t.requires_grad and t.is_leaf
            and not t._is_view()
        )  # fmt: skip
        if cacheable:
            hit = self._cache.get(id(t))
            if hit is not None and hit[0] is t:
                return hit[1]
        out = t.to(dtype)
        if cacheable:
            self._cache[id(t)] = (t, out)
        return out

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._depth == 0:
            return func(*args, **kwargs)
        name = _op_name(func)
        if name in LOWER_PRECISION_OPS:
            args, kwargs = _map((args, kwargs), lambda t: self.cast(t, self.dtype))
        elif name in FP32_OPS:
            args, kwargs = _map((args, kwargs), lambda t: self.cast(t, torch.float32))
        elif name in FP32_SET_OPT_DTYPE_OPS:
            floats = [t for t in _tensors(args) if t.is_floating_point()]
            if kwargs.get("dtype") is None and floats and any(t.dtype != torch.float32 for t in floats):
                kwargs = {**kwargs, "dtype": torch.float32}
        elif name in PROMOTE_OPS:
            floats = [t for t in _tensors(args) if t.is_floating_point()]
            if floats:
                widest = max((t.dtype for t in floats), key=lambda d: torch.finfo(d).bits)
                args = _map(args, lambda t: t.to(widest) if t.is_floating_point() else t)
        return func(*args, **kwargs)


_original_is_autocast_enabled = torch.is_autocast_enabled
_original_get_autocast_dtype = torch.get_autocast_dtype


def is_autocast_enabled(*args: Any, **kwargs: Any) -> bool:
    device = args[0] if args else kwargs.get("device_type")
    if (device is None or device == "cuda") and CudaAutocast.active() is not None:
        return True
    return _original_is_autocast_enabled(*args, **kwargs)


def get_autocast_dtype(device_type: str) -> torch.dtype:
    active = CudaAutocast.active()
    if device_type == "cuda" and active is not None:
        return active.dtype
    return _original_get_autocast_dtype(device_type)
