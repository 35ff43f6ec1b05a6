"""CPU stand-ins for axolotl's fused LoRA kernels (axolotl 067b021 src/axolotl/kernels/lora.py): the autograd
Functions `LoRA_QKV`, `LoRA_O`, `LoRA_MLP` without DoRA or biases, allocation for allocation.

The Functions are torch code (`matmul_lora`: `torch.matmul` then `out.addmm_(X_lora @ A, B)`; the backward's
`torch.empty_like` + `addmm_` LoRA gradients) except the SwiGLU Triton kernel (kernels/swiglu.py): its forward
fills `torch.empty((batch, seq, I))`; its backward writes h, d_gate and d_up into the incoming gradient, gate
and up in place. The stand-ins run the same torch calls; only SwiGLU's arithmetic runs excluded from the
tracker (registers on the GPU), writing into those buffers. `apply_lora_kernel_stand_ins` patches a PEFT-wrapped
Llama-shaped model as `apply_lora_kernel_patches` does (monkeypatch/lora_kernels.py): q/k/v when all three carry
an adapter, o_proj, the gated MLP when gate, up and down do; dropout is applied outside the Functions, one mask
for the group (`_apply_dropout`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from vramplan.measure.tracker import MemoryTracker

_TRACKER: list[MemoryTracker] = []
# model types whose attention forward is transformers' LlamaAttention.forward without biases (the stand-in's)
STAND_IN_TYPES = ("llama", "mistral")


def _lora(proj: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, Any]:
    """`get_lora_parameters`: base weight, lora_A / lora_B weights, scaling, dropout module."""
    name = proj.active_adapters[0]
    return (proj.base_layer.weight, proj.lora_A[name].weight, proj.lora_B[name].weight, proj.scaling[name],
            proj.lora_dropout[name])  # fmt: skip


def _matmul_lora(x: torch.Tensor, w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, s: float,
                 x_drop: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    batch, seq, _ = x.shape
    x2 = x.view(-1, x.shape[-1])
    out = torch.matmul(x2, w.t())
    lora_in = x2 if x_drop is None else x_drop.view(-1, x_drop.shape[-1])
    out.addmm_(lora_in @ a.t().to(x.dtype), b.t().to(x.dtype), alpha=s)
    return out.view(batch, seq, -1)


def _lora_grads(dy: torch.Tensor, x_lora_t: torch.Tensor, a: torch.Tensor, b: torch.Tensor, s: float):
    """(grad_B = dy @ B, d_A, d_B) as the kernels' backward computes them (empty_like + addmm_)."""
    grad_b = dy @ b
    d_a = torch.empty_like(a.t())
    d_b = torch.empty_like(b.t())
    d_a.addmm_(x_lora_t, grad_b, alpha=s, beta=0)
    d_b.addmm_(a @ x_lora_t, dy, alpha=s, beta=0)
    return grad_b, d_a.t(), d_b.t()


class LoraGroup(torch.autograd.Function):
    """LoRA_QKV (three projections) and LoRA_O (one) over the same X."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, x_drop: torch.Tensor | None, spec: Sequence[tuple], *params):
        dtype = x.dtype
        pairs = zip(spec, params[0::2], params[1::2], strict=True)
        outs = [_matmul_lora(x, w, a, b, s, x_drop) for (w, s), a, b in pairs]
        ctx.save_for_backward(x, x if x_drop is None else x_drop, *(p.to(dtype) for p in params))
        ctx.spec, ctx.has_dropout = spec, x_drop is not None
        return tuple(outs)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor):
        x, x_lora, *ab = ctx.saved_tensors
        batch, seq = x.shape[:2]
        x_lora_t = x_lora.view(-1, x_lora.shape[-1]).t()
        flat = [g.reshape(-1, g.shape[-1]) for g in grads]
        lora = [_lora_grads(g, x_lora_t, a, b, s) for g, a, b, (_, s) in zip(flat, ab[0::2], ab[1::2], ctx.spec,
                                                                             strict=True)]  # fmt: skip
        grad_x = torch.mm(flat[0], ctx.spec[0][0])
        for g, (w, _) in zip(flat[1:], ctx.spec[1:], strict=True):
            grad_x.addmm_(g, w)
        grad_x_drop = torch.zeros_like(x_lora.view(-1, x_lora.shape[-1])) if ctx.has_dropout else None
        for (grad_b, _, _), a, (_, s) in zip(lora, ab[0::2], ctx.spec, strict=True):
            (grad_x_drop if grad_x_drop is not None else grad_x).addmm_(grad_b, a, alpha=s)
        drop = grad_x_drop.view(batch, seq, -1) if grad_x_drop is not None else None
        return grad_x.view(batch, seq, -1), drop, None, *(g for _, d_a, d_b in lora for g in (d_a, d_b))


def _swiglu_into(out: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> None:
    with _TRACKER[-1].excluded():
        out.copy_(F.silu(gate.float()).to(gate.dtype) * up)


class LoraMLP(torch.autograd.Function):
    """LoRA_MLP (SwiGLU): gate and up over X, h = swiglu(gate, up), down over h."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, x_drop: torch.Tensor | None, spec: Sequence[tuple], *params):
        (gw, gs), (uw, us), (dw, ds) = spec
        ga, gb, ua, ub, da, db = params
        gate = _matmul_lora(x, gw, ga, gb, gs, x_drop)
        up = _matmul_lora(x, uw, ua, ub, us, x_drop)
        h = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
        _swiglu_into(h, gate, up)
        out = _matmul_lora(h, dw, da, db, ds, None)
        dtype = x.dtype
        ctx.save_for_backward(x, x if x_drop is None else x_drop, gate, up, *(p.to(dtype) for p in params))
        ctx.spec, ctx.has_dropout = spec, x_drop is not None
        return out

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor):
        x, x_lora, gate, up, ga, gb, ua, ub, da, db = ctx.saved_tensors
        (gw, gs), (uw, us), (dw, ds) = ctx.spec
        batch, seq, hidden = x.shape
        dy = grad_output.view(-1, grad_output.shape[-1])
        x_lora = x_lora.view(-1, x_lora.shape[-1])
        gate, up = gate.view(-1, gate.shape[-1]), up.view(-1, up.shape[-1])
        # grad_down = matmul_lora(grad_output, down_weight.t(), ..., down_B_t, down_A_t, s)
        grad_down = torch.matmul(dy, dw)
        grad_down.addmm_(dy @ db, da, alpha=ds)
        with _TRACKER[-1].excluded():  # swiglu_backward: h -> grad_down, d_gate -> gate, d_up -> up, in place
            g32 = gate.float()
            sig = torch.sigmoid(g32)
            silu = g32 * sig
            d_gate = (grad_down.float() * up.float() * sig * (1 + g32 * (1 - sig))).to(gate.dtype)
            d_up = (grad_down.float() * silu).to(up.dtype)
            grad_down.copy_((silu * up.float()).to(grad_down.dtype))
            gate.copy_(d_gate)
            up.copy_(d_up)
        h, grad_gate, grad_up = grad_down, gate, up
        _, d_down_a, d_down_b = _lora_grads(dy, h.t(), da, db, ds)
        x_lora_t = x_lora.t()
        grad_b_up, d_up_a, d_up_b = _lora_grads(grad_up, x_lora_t, ua, ub, us)
        grad_b_gate, d_gate_a, d_gate_b = _lora_grads(grad_gate, x_lora_t, ga, gb, gs)
        dx = torch.matmul(grad_up, uw)
        dx.addmm_(grad_gate, gw)
        dx_drop = None
        if ctx.has_dropout:
            dx_drop = torch.zeros_like(x_lora)
            dx_drop.addmm_(grad_b_up, ua, alpha=us)
            dx_drop.addmm_(grad_b_gate, ga, alpha=gs)
            dx_drop = dx_drop.view(batch, seq, hidden)
        else:
            dx.addmm_(grad_b_up, ua, alpha=us)
            dx.addmm_(grad_b_gate, ga, alpha=gs)
        return (dx.view(batch, seq, hidden), dx_drop, None, d_gate_a, d_gate_b, d_up_a, d_up_b, d_down_a, d_down_b)


def _group(function: Callable, projections: Sequence[Any], x: torch.Tensor) -> Any:
    parts = [_lora(p) for p in projections]
    dropout = parts[0][4]
    x_drop = None if isinstance(dropout, torch.nn.Identity) or not dropout.training else dropout(x)
    spec = tuple((w, s) for w, _, _, s, _ in parts)
    params = [t for _, a, b, _, _ in parts for t in (a, b)]
    return function.apply(x, x_drop, spec, *params)


def _attention_forward(self: Any, hidden_states: torch.Tensor, position_embeddings: Any, attention_mask: Any,
                       *args: Any, fused: frozenset[str], **kwargs: Any) -> tuple[torch.Tensor, Any]:  # fmt: skip
    """transformers 5.24 LlamaAttention.forward with axolotl's `apply_qkv` / `apply_o` in place of the projections."""
    from transformers.models.llama import modeling_llama

    kwargs.pop("cache", None)
    kwargs.pop("past_key_values", None)
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.head_dim)
    if "qkv" in fused:
        q, k, v = _group(LoraGroup, (self.q_proj, self.k_proj, self.v_proj), hidden_states)
    else:
        q, k, v = self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)
    q, k, v = (t.view(hidden_shape).transpose(1, 2) for t in (q, k, v))
    cos, sin = position_embeddings
    q, k = modeling_llama.apply_rotary_pos_emb(q, k, cos, sin)
    interface = modeling_llama.ALL_ATTENTION_FUNCTIONS.get_interface(
        self.config._attn_implementation, modeling_llama.eager_attention_forward
    )
    out, weights = interface(self, q, k, v, attention_mask, dropout=0.0, scaling=self.scaling, **kwargs)
    out = out.reshape(*input_shape, -1).contiguous()
    out = _group(LoraGroup, (self.o_proj,), out)[0] if "o" in fused else self.o_proj(out)
    return out, weights


def apply_lora_kernel_stand_ins(causal_lm: Any, kernels: Sequence[str], tracker: MemoryTracker) -> None:
    """Patch every decoder layer of a PEFT-wrapped Llama-shaped model (instance methods, as axolotl does)."""
    import functools
    import types

    _TRACKER.append(tracker)
    for layer in causal_lm.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        fused = frozenset(
            k for k, projections in (("qkv", (attn.q_proj, attn.k_proj, attn.v_proj)), ("o", (attn.o_proj,)))
            if k in kernels and all(hasattr(p, "lora_A") for p in projections)
        )  # fmt: skip
        if fused:
            attn.forward = types.MethodType(functools.partial(_attention_forward, fused=fused), attn)
        if "mlp" in kernels and all(hasattr(mlp, n) and hasattr(getattr(mlp, n), "lora_A")
                                    for n in ("gate_proj", "up_proj", "down_proj")):  # fmt: skip
            projections = (mlp.gate_proj, mlp.up_proj, mlp.down_proj)
            mlp.forward = types.MethodType(lambda self, x, p=projections: _group(LoraMLP, p, x), mlp)
