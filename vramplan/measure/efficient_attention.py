"""A CPU stand-in for CUDA's memory-efficient SDPA kernel where torch's CPU kernels differ from it: a value head
dim that is not the query's (multi-head latent attention: DeepSeek-V3's q / k of 192, v of 128).

On CUDA, `F.scaled_dot_product_attention` with q / k / v head dims that differ cannot take the flash kernel (torch
2.13 aten/src/ATen/native/transformers/sdp_utils.cpp `check_head_dim_size_flash`: one head dim for all three) and
runs `_scaled_dot_product_efficient_attention`, which saves q, k, v, its output (allocated token-major, B·S·H·Dv,
returned transposed) and an fp32 logsumexp (B·H·S, S padded to 32), and whose backward allocates the three input
gradients and an fp32 `delta` (B·H·S). On CPU the flash kernel refuses such shapes too and torch falls back to the
math path, which saves the B·H·S² probabilities in fp32. This Function allocates and saves what the CUDA kernel
does, computing head by head so that its S² temporaries stay small (the kernel tiles them on chip).
"""

from __future__ import annotations

import math

import torch

# the logsumexp's sequence dim, padded to a multiple of 32 (the kernel's query block; torch 2.13
# aten/src/ATen/native/transformers/cuda/attention.cu `_efficient_attention_forward`, its meta kernel too)
LOGSUMEXP_ALIGNMENT = 32


class EfficientAttentionStandIn(torch.autograd.Function):
    """softmax(q·kᵀ·scale [causal]) · v, saved and allocated as CUDA's memory-efficient kernel (module docstring)."""

    @staticmethod
    def forward(ctx, query, key, value, is_causal: bool, scale: float | None):  # type: ignore[override]
        batch, heads, seq, _ = query.shape
        scale = scale if scale is not None else 1 / math.sqrt(query.shape[-1])
        out = query.new_empty(batch, seq, heads, value.shape[-1]).transpose(1, 2)
        padded = -(-seq // LOGSUMEXP_ALIGNMENT) * LOGSUMEXP_ALIGNMENT
        logsumexp = torch.empty(batch, heads, padded, dtype=torch.float32, device=query.device)
        groups = heads // key.shape[1]
        for b in range(batch):
            for h in range(heads):
                scores = _scores(query[b, h], key[b, h // groups], scale, is_causal)
                logsumexp[b, h, :seq] = torch.logsumexp(scores, -1)
                out[b, h] = (torch.softmax(scores, -1) @ value[b, h // groups].float()).to(out.dtype)
        ctx.save_for_backward(query, key, value, out, logsumexp)
        ctx.is_causal, ctx.scale = is_causal, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        query, key, value, out, logsumexp = ctx.saved_tensors
        batch, heads = query.shape[:2]
        groups = heads // key.shape[1]
        grad_query, grad_key, grad_value = (torch.zeros_like(t) for t in (query, key, value))
        delta = (grad_out.float() * out.float()).sum(-1)  # the kernel's fp32 B·H·S row sums
        for b in range(batch):
            for h in range(heads):
                kv = h // groups
                scores = _scores(query[b, h], key[b, kv], ctx.scale, ctx.is_causal)
                probs = torch.exp(scores - logsumexp[b, h, : scores.shape[0], None])
                grad = grad_out[b, h].float()
                grad_value[b, kv] += (probs.T @ grad).to(grad_value.dtype)
                grad_scores = probs * (grad @ value[b, kv].float().T - delta[b, h, :, None])
                grad_query[b, h] = (grad_scores @ key[b, kv].float() * ctx.scale).to(grad_query.dtype)
                grad_key[b, kv] += (grad_scores.T @ query[b, h].float() * ctx.scale).to(grad_key.dtype)
        return grad_query, grad_key, grad_value, None, None


def _scores(query: torch.Tensor, key: torch.Tensor, scale: float, is_causal: bool) -> torch.Tensor:
    scores = (query.float() @ key.float().T) * scale
    if is_causal:
        seq = scores.shape[-1]
        scores = scores.masked_fill(torch.ones(seq, seq, dtype=torch.bool).triu(1), float("-inf"))
    return scores


def needs_stand_in(query: torch.Tensor, value: torch.Tensor, attn_mask, dropout_p: float) -> bool:
    """Real CPU tensors whose value head dim differs from the query's, causal without a mask, no dropout."""
    return (
        query.device.type == "cpu"
        and value.shape[-1] != query.shape[-1]
        and attn_mask is None
        and dropout_p == 0.0
        and not isinstance(query, torch._subclasses.fake_tensor.FakeTensor)
    )
