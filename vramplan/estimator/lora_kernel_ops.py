"""axolotl's fused LoRA kernels as the symbolic walk sees them: what `LoRA_QKV`, `LoRA_O` and `LoRA_MLP` save
and hold in place of PEFT's per-linear LoRA branches (`vramplan.estimator.linear_ops`).

Source: axolotl 067b021 src/axolotl/kernels/lora.py (`matmul_lora`, `LoRA_MLP`, `LoRA_QKV`, `LoRA_O`, without
DoRA), monkeypatch/lora_kernels.py (`apply_lora_kernel_patches`: q/k/v fused when all three carry an adapter,
o_proj when it does, the gated MLP when gate, up and down do), kernels/swiglu.py. The Functions are plain
torch except the SwiGLU Triton kernel; `custom_fwd` keeps the caller's autocast, so each matmul runs in the
autocast dtype (else x's):
- dropout is applied outside the Function, once for the group (one bool mask and one dropped copy of x);
- `matmul_lora`: out = X @ W (a dequantized copy of a 4-bit W, transient), out.addmm_(X_lora @ A, B): the
  T·r product is transient, the output is the group's only new T·out tensor per projection;
- saved: X itself (the caller's tensor, no copy), the dropped copy when there is dropout, A and B cast to x's
  dtype (adapter-sized; counted with autocast's adapter copies, `activations.layer_copies`); LoRA_MLP also
  saves gate and up (T·I each) but not SwiGLU's output h, which its backward recomputes into the incoming
  gradient's buffer (`swiglu_backward` works in place: gate and up take their own gradients).
"""

from __future__ import annotations

from collections.abc import Sequence

from vramplan.estimator.walk import SymbolicTensor, Walk, WalkSettings


def kernel_group(walk: Walk, settings: WalkSettings, x: SymbolicTensor, outs: Sequence[int]) -> list[SymbolicTensor]:
    """One fused Function over x: LoRA_QKV (q, k, v) or LoRA_O (o); returns the projections' outputs."""
    x_lora = _dropout(walk, settings, x)
    walk.save(x, x_lora)
    return _projections(walk, settings, x, x_lora, outs)


def kernel_mlp(walk: Walk, settings: WalkSettings, x: SymbolicTensor, intermediate: int, hidden: int) -> SymbolicTensor:
    """LoRA_MLP: gate and up over x (dropped once for both), SwiGLU, down over h (no dropout)."""
    T = settings.T
    x_lora = _dropout(walk, settings, x)
    gate, up = _projections(walk, settings, x, x_lora, (intermediate, intermediate))
    walk.save(x, x_lora, gate, up)
    dtype = gate.dtype
    h = walk.new(T * intermediate, dtype, True)  # swiglu_forward: torch.empty((batch, seq, I))
    walk.transient(x, gate, up, h)
    lora_a = walk.new(T * settings.lora_rank, dtype, True)
    out = walk.new(T * hidden, dtype, True)
    walk.transient(h, lora_a, out)
    walk.recompute_tail = 0
    return out


def _dropout(walk: Walk, settings: WalkSettings, x: SymbolicTensor) -> SymbolicTensor:
    """`_apply_dropout` outside the Function: nn.Dropout saves its bool mask (CUDA native_dropout)."""
    if not settings.lora_dropout:
        return x
    walk.save(walk.new(x.numel, "bool", False))
    return walk.new(x.numel, x.dtype, True)


def _projections(
    walk: Walk, settings: WalkSettings, x: SymbolicTensor, x_lora: SymbolicTensor, outs: Sequence[int]
) -> list[SymbolicTensor]:
    T = settings.T
    dtype = settings.autocast_dtype or x.dtype
    results: list[SymbolicTensor] = []
    for out_features in outs:
        lora_a = walk.new(T * settings.lora_rank, dtype, True)  # X_lora @ A
        out = walk.new(T * out_features, dtype, True)
        walk.transient(x, x_lora, *results, lora_a, out)
        results.append(out)
    walk.recompute_tail = 0
    return results


def fused_lora(settings: WalkSettings, names: set[str]) -> frozenset[str]:
    """The axolotl LoRA kernels that apply: q/k/v when all three carry an adapter, o_proj, the gated MLP when
    gate, up and down do (monkeypatch/lora_kernels.py `apply_lora_kernel_patches`); attention only where it has
    separate q, k, v and o projections (`find_self_attn_in_layer`: not Phi-3's fused qkv_proj)."""
    groups = {"qkv": {"q_proj", "k_proj", "v_proj"}, "o": {"o_proj"}, "mlp": {"gate_proj", "up_proj", "down_proj"}}
    separate = {"q_proj", "k_proj", "v_proj", "o_proj"} <= names
    targets = settings.lora_targets
    return frozenset(
        k for k in settings.lora_kernels
        if groups[k] <= targets and groups[k] <= names and (k == "mlp" or separate)
    )  # fmt: skip
