"""CPU stand-ins for Liger's layer kernels (Liger-Kernel 0.8.5): what each allocates and saves, the math aside.

Liger's ops are Triton kernels launched from Python autograd Functions; the Functions decide what is
allocated and saved, the kernels only read and write those buffers. Each stand-in below is that Function with
the kernel replaced by torch math run with the tracker excluded (its temporaries are registers on the GPU),
writing into the same buffers:
- `LigerRMSNormFunction` (ops/rms_norm.py, casting_mode "llama", in_place=True): forward Y = empty like X,
  RSTD = empty (rows, fp32), saves X, W, RSTD; backward writes dX into dY, dW through an (sm_count, H) fp32
  buffer (sm_count 1 off CUDA, as Liger's own `rms_norm_backward` sets it).
- `LigerSiLUMulFunction` (ops/swiglu.py): forward c = empty like a, saves a and b; backward writes da, db into
  a and b in place.
- `LigerRopeFunction` (ops/rope.py): rotates q and k in place in their [batch, seq, heads, dim] storage,
  saves cos and sin.
`apply_liger_stand_ins` patches a model as `apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True)`
does on an instance (transformers/monkey_patch.py `_apply_liger_kernel_to_instance`): every RMSNorm's and gated
MLP's forward, and the module's `apply_rotary_pos_emb`.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from vramplan.measure.tracker import MemoryTracker

_TRACKER: list[MemoryTracker] = []  # the tracker of the run in progress (set by apply_liger_stand_ins)


def _excluded() -> Any:
    return _TRACKER[-1].excluded()


class RMSNormStandIn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x = x.contiguous()
        y = torch.empty_like(x)
        rstd = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
        with _excluded():
            x32 = x.float()
            inverse = torch.rsqrt(x32.pow(2).mean(-1) + eps)
            rstd.copy_(inverse)
            y.copy_((x32 * inverse.unsqueeze(-1)).to(x.dtype) * weight.to(x.dtype))
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, None]:
        x, weight, rstd = ctx.saved_tensors
        dy = dy.contiguous()
        partial_dw = (
            torch.empty((1, x.shape[-1]), dtype=torch.float32, device=x.device) if ctx.needs_input_grad[1] else None
        )
        with _excluded():
            x32, r = x.float(), rstd.unsqueeze(-1)
            normed = x32 * r
            m = dy.float() * weight.float()
            dx = r * (m - normed * (m * normed).mean(-1, keepdim=True))
            if partial_dw is not None:
                partial_dw.copy_((dy.float() * normed).reshape(-1, x.shape[-1]).sum(0, keepdim=True))
            dy.copy_(dx.to(dy.dtype))  # in_place=True: dX is dY
        dw = partial_dw.sum(dim=0).to(weight.dtype) if partial_dw is not None else None
        return dy, dw, None


class SiLUMulStandIn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        c = torch.empty_like(a)
        with _excluded():
            c.copy_(torch.nn.functional.silu(a.float()).to(b.dtype) * b)
        ctx.save_for_backward(a, b)
        return c

    @staticmethod
    def backward(ctx: Any, dc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = ctx.saved_tensors
        with _excluded():
            a32 = a.float()
            sig = torch.sigmoid(a32)
            silu = a32 * sig
            db = dc.float() * silu
            da = dc.float() * (silu * (1 - sig) + sig) * b.float()
            a.copy_(da.to(a.dtype))
            b.copy_(db.to(b.dtype))
        return a, b


class RopeStandIn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        q, k = q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous()  # [batch, seq, heads, dim]
        with _excluded():
            for x in (q, k):
                c, s = cos.unsqueeze(2).to(x.dtype), sin.unsqueeze(2).to(x.dtype)
                half = x.shape[-1] // 2
                rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
                x.copy_(x * c + rotated * s)
        ctx.save_for_backward(cos, sin)
        return q.transpose(1, 2), k.transpose(1, 2)

    @staticmethod
    def backward(ctx: Any, dq: torch.Tensor, dk: torch.Tensor):
        cos, sin = ctx.saved_tensors
        dq, dk = dq.transpose(1, 2).contiguous(), dk.transpose(1, 2).contiguous()
        with _excluded():
            for x in (dq, dk):
                c, s = cos.unsqueeze(2).to(x.dtype), sin.unsqueeze(2).to(x.dtype)
                half = x.shape[-1] // 2
                back = x * s
                x.copy_(x * c + torch.cat((back[..., half:], -back[..., :half]), dim=-1))
        return dq.transpose(1, 2), dk.transpose(1, 2), None, None


_ORIGINAL_ROPE: dict[str, Any] = {}  # modeling module name -> its own apply_rotary_pos_emb


def _patched_rope(module_name: str) -> Any:
    """`apply_rotary_pos_emb` of a modeling module: the stand-in while the Liger run's tracker is active (its
    forward and its backward's recomputes), the module's own otherwise."""
    original = _ORIGINAL_ROPE[module_name]

    def rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *args: Any, **kwargs: Any):
        from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

        if _TRACKER and _TRACKER[-1] in _get_current_dispatch_mode_stack():
            return RopeStandIn.apply(q, k, cos, sin)
        return original(q, k, cos, sin, *args, **kwargs)

    return rope


def apply_liger_stand_ins(causal_lm: torch.nn.Module, tracker: MemoryTracker) -> None:
    """Patch `causal_lm` (an RMSNorm, gated-MLP family) with the stand-ins for Liger's RMSNorm, SwiGLU, RoPE."""
    _TRACKER[:] = [tracker]
    for module in causal_lm.modules():
        name = type(module).__name__
        if name.endswith("RMSNorm") and hasattr(module, "weight"):
            eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))
            module.forward = lambda x, module=module, eps=eps: RMSNormStandIn.apply(x, module.weight, eps)
        elif all(hasattr(module, p) for p in ("gate_proj", "up_proj", "down_proj")):
            module.forward = lambda x, module=module: module.down_proj(
                SiLUMulStandIn.apply(module.gate_proj(x), module.up_proj(x))
            )
    modeling = sys.modules[type(causal_lm).__module__]
    if hasattr(modeling, "apply_rotary_pos_emb") and modeling.__name__ not in _ORIGINAL_ROPE:
        _ORIGINAL_ROPE[modeling.__name__] = modeling.apply_rotary_pos_emb
        modeling.apply_rotary_pos_emb = _patched_rope(modeling.__name__)
