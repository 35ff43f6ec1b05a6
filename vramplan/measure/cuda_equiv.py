"""Make a CPU, meta or fake-tensor trace allocate what the same step allocates on CUDA.

The estimator models what CUDA runs, so the oracle has to trace the same kernels. Five places where torch
picks another kernel off CUDA change what autograd saves, bitsandbytes picks another int8 matmul off CUDA, and
one transformers check cannot run on meta tensors:

- dropout: off CUDA, `F.dropout` takes the non-fused path (`input * bernoulli_(noise) / (1 - p)`) and saves
  the noise tensor in the input's dtype (fp32 for PEFT's fp32 LoRA inputs); CUDA's `native_dropout` saves a
  bool mask (aten/src/ATen/native/Dropout.cpp `is_fused_kernel_acceptable`: CUDA, XPU, lazy, privateuse1
  only). Patched: training dropout with 0 < p < 1 runs `torch.native_dropout` (it has CPU and meta kernels).
- SDPA: on meta (and fake) tensors `F.scaled_dot_product_attention` takes the math path, which saves the
  B·H·S² probabilities. Patched there (not on real CPU tensors, whose flash kernel already saves q, k, v,
  output and the fp32 logsumexp, as CUDA's flash does: `test_cpu_sdpa_saves_what_cuda_flash_saves`) to the op
  CUDA would pick (`cuda_sdpa_backend`), both of which have meta kernels. On real CPU tensors a value head dim
  other than the query's (multi-head latent attention) leaves the CPU flash kernel for math; CUDA runs the
  memory-efficient kernel: `efficient_attention.EfficientAttentionStandIn` allocates and saves what it does.
- autocast: `torch.autocast` does nothing for meta tensors, and on CPU it applies the CPU policy, not CUDA's.
  `CudaAutocast` applies CUDA's op lists at the Python level (a TorchFunctionMode, above autograd, so the
  casts are recorded and saved as on CUDA), with the cast cache for fp32 leaf tensors that require grad, and
  answers `torch.is_autocast_enabled()` as CUDA would (PEFT's bnb LoRA asks it). The harness enters it around
  the forward and around each gradient-checkpoint recompute (which restores autocast on CUDA).
- AdamW: `fused=True` refuses meta tensors although `_fused_adamw_` has a meta kernel: "meta" is added to the
  fused-capable devices during the trace. (foreach vs for-loop is set explicitly by `trainer_setup.build_optimizer`.)
- LLM.int8: `bitsandbytes.matmul` sends training CPU (and XPU) inputs to `MatMul8bitFp`, which dequantizes the
  whole int8 weight to the input's dtype in forward and backward and keeps only its input; CUDA runs
  `MatMul8bitLt` (autograd/_functions.py, 0.50.2: the input cast to fp16 and quantized row-wise in forward; a
  weight-sized `CB` copy in the input's dtype in backward). Patched: `bitsandbytes.matmul` (the name
  `Linear8bitLt.forward` calls) always runs `MatMul8bitLt`, whose int8 ops have CPU and meta kernels.
- MoE experts: transformers 5 runs a Mixtral-style experts block through `torch.nn.functional.grouped_mm`
  (integrations/moe.py `_grouped_mm`), in the weights' dtype. CUDA's `_grouped_mm` takes any dtype: bf16 on
  sm90/sm100 goes to CUTLASS, everything else to `_grouped_mm_fallback`, a loop of `mm_out` into one output
  (aten/src/ATen/native/cuda/GroupedBlas.cpp `_grouped_mm_cuda`, GroupedMMUtils.h), as the CPU kernel does.
  torch 2.13's meta kernel (`_meta_grouped_mm_common`) accepts bf16 only, so a meta or fake trace of fp32
  experts (kbit prep upcasts them: they are not `nn.Linear`, bitsandbytes leaves them unquantized) or fp16 ones
  failed. Patched on meta / fake: `GroupedMmAnyDtype`, a dispatch mode that answers a non-bf16 `_grouped_mm`
  with the output the real kernels allocate (torch's own `_create_grouped_mm_output_tensor`); autograd's
  node, its saved tensors and the backward's `_grouped_mm` calls are torch's own.
- transformers `find_packed_sequence_indices` calls `bool(tensor.all())` (fails on meta) and reports packing
  for every fake tensor (it counts fake tensors as tracing), which would make the model build an explicit mask
  and leave the flash kernel. The harness never packs sequences: patched to return None off CUDA.

These lean on private or version-specific behaviour; `check_versions` warns when the installed versions are
not the ones they were checked against (`PINNED`), and tests/measure/test_cuda_equiv.py checks each patch.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from importlib import metadata
from typing import Any, Literal

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vramplan.measure.cuda_autocast import CudaAutocast, get_autocast_dtype, is_autocast_enabled
from vramplan.measure.efficient_attention import EfficientAttentionStandIn, needs_stand_in

# Versions the patches were written against and checked with (major.minor prefixes).
PINNED: tuple[tuple[str, str], ...] = (
    ("torch", "2.13"),
    ("transformers", "5.25"),
    ("peft", "0.21"),
    ("bitsandbytes", "0.50"),
)

SdpaBackend = Literal["flash", "efficient", "math"]
FLASH_MAX_HEAD_DIM = 256  # sdp_utils.cpp check_head_dim_size_flash (torch 2.13)


def installed_versions() -> tuple[tuple[str, str], ...]:
    out = []
    for name, _ in PINNED:
        try:
            out.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            out.append((name, "absent"))
    return tuple(out)


def version_mismatches() -> list[str]:
    """'name installed (patches checked with X)' for every pinned package whose version differs."""
    have = dict(installed_versions())
    return [
        f"{name} {have[name]} (patches checked with {want}.x)"
        for name, want in PINNED
        if not (have[name] == want or have[name].startswith(want + "."))
    ]


def check_versions() -> None:
    """Warn once per process when the installed stack differs from the versions the patches were checked
    with."""
    bad = version_mismatches()
    if bad:
        warnings.warn(
            "vramplan's CUDA-equivalence patches were checked with other versions: "
            + ", ".join(bad)
            + "; traced numbers may differ from a CUDA run",
            RuntimeWarning,
            stacklevel=2,
        )


# ---- dropout -----------------------------------------------------------------------------------------------

_original_dropout = torch.nn.functional.dropout


def cuda_dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """`F.dropout` as CUDA runs it: `native_dropout`, which saves a bool mask (not an input-dtype noise
    tensor)."""
    if training and 0.0 < p < 1.0 and not inplace and input.numel() > 0:
        return torch.native_dropout(input, p, True)[0]
    return _original_dropout(input, p, training, inplace)


# ---- scaled dot product attention --------------------------------------------------------------------------

_original_sdpa = torch.nn.functional.scaled_dot_product_attention


def cuda_sdpa_backend(
    dtype: torch.dtype, has_mask: bool, head_dim: int, value_head_dim: int | None = None
) -> SdpaBackend:
    """The SDPA kernel torch 2.13 picks on an Ampere-or-newer GPU (sdp_utils.cpp `select_sdp_backend`).

    Flash: fp16/bf16, no explicit mask, one head_dim <= 256 for q, k and v (GQA supported natively;
    `check_head_dim_size_flash`). Memory-efficient: masks, fp32, a value head dim of its own (multi-head latent
    attention). Math otherwise (it saves the B·H·S² probabilities). Pre-Ampere GPUs (T4) run the efficient
    kernel where flash would run; both save the output and an fp32 logsumexp, so the memory is the same to
    within padding.
    """
    same_dims = value_head_dim is None or value_head_dim == head_dim
    if not has_mask and dtype in (torch.float16, torch.bfloat16) and head_dim <= FLASH_MAX_HEAD_DIM and same_dims:
        return "flash"
    if dtype in (torch.float16, torch.bfloat16, torch.float32):
        return "efficient"
    return "math"


def cuda_sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """`F.scaled_dot_product_attention` routed to the aten op CUDA would run (saved tensors as on CUDA)."""
    autocast = CudaAutocast.active()
    if autocast is not None:  # sdpa is a lower-precision op in CUDA's autocast policy
        query, key, value = (autocast.cast(t, autocast.dtype) for t in (query, key, value))
    if needs_stand_in(query, value, attn_mask, dropout_p):  # real CPU tensors (efficient_attention.py)
        return EfficientAttentionStandIn.apply(query, key, value, is_causal, scale)
    backend = cuda_sdpa_backend(query.dtype, attn_mask is not None, query.shape[-1], value.shape[-1])
    if backend == "flash":
        return torch.ops.aten._scaled_dot_product_flash_attention(
            query, key, value, dropout_p, is_causal, False, scale=scale
        )[0]
    if backend == "efficient":
        if enable_gqa and key.shape[1] != query.shape[1]:
            groups = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
        bias = _efficient_attn_bias(attn_mask, query)
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
        return torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, bias, needs_grad, dropout_p, is_causal, scale=scale
        )[0]
    return _original_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)


def _cpu_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """Real CPU tensors: the CPU kernels, except a value head dim of its own (math on CPU, the memory-efficient
    kernel on CUDA): `EfficientAttentionStandIn`, after CUDA autocast's casts."""
    if not needs_stand_in(query, value, attn_mask, dropout_p):
        return _original_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
    autocast = CudaAutocast.active()
    if autocast is not None:
        query, key, value = (autocast.cast(t, autocast.dtype) for t in (query, key, value))
    return EfficientAttentionStandIn.apply(query, key, value, is_causal, scale)


MEM_EFF_ALIGNMENT = 16  # attention.cpp preprocess_mask: the bias's last dim is padded to a multiple of 16


def _efficient_attn_bias(mask: torch.Tensor | None, query: torch.Tensor) -> torch.Tensor | None:
    """torch 2.13 attention.cpp: a bool mask becomes an additive bias in the query dtype
    (`convert_boolean_attn_mask`), padded to a multiple of 16 in its last dim and expanded (a view) to
    B·H·S·S."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        bias = torch.zeros(mask.shape, dtype=query.dtype, device=mask.device)
        mask = bias.masked_fill_(mask.logical_not(), float("-inf"))
    last = mask.shape[-1]
    if last % MEM_EFF_ALIGNMENT:
        pad = MEM_EFF_ALIGNMENT - last % MEM_EFF_ALIGNMENT
        mask = torch.nn.functional.pad(mask, (0, pad))[..., :last]
    b, h, s = query.shape[0], query.shape[1], query.shape[2]
    return mask.expand(b, h, s, last)


# ---- transformers' packed-sequence detection ---------------------------------------------------------------


def _no_packed_sequences(position_ids: torch.Tensor) -> None:
    """The harness feeds one unpadded sequence per row: nothing is packed (transformers masking_utils)."""
    return None


# ---- bitsandbytes LLM.int8 matmul ---------------------------------------------------------------------------


def cuda_int8_matmul(
    A: torch.Tensor,
    B: torch.Tensor,
    out: torch.Tensor | None = None,
    state: Any = None,
    threshold: float = 0.0,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """`bitsandbytes.matmul` as it runs on CUDA: `MatMul8bitLt` whatever the device (0.50.2 sends training
    CPU/XPU inputs to `MatMul8bitFp`)."""
    from bitsandbytes.autograd._functions import MatMul8bitLt, MatmulLtState

    state = state or MatmulLtState()
    if threshold > 0.0:
        state.threshold = threshold
    return MatMul8bitLt.apply(A, B, out, bias, state)


def _int8_matmul_as_on_cuda():
    try:
        import bitsandbytes
    except ImportError:  # no bitsandbytes: no int8 layers to route
        return contextlib.nullcontext()
    return patched(bitsandbytes, "matmul", cuda_int8_matmul)


# ---- MoE grouped matmul -------------------------------------------------------------------------------------


class GroupedMmAnyDtype(TorchDispatchMode):
    """`aten._grouped_mm` on meta / fake tensors for any dtype, as CUDA's and the CPU kernel run it.

    torch 2.13's meta kernel checks `mat_a.dtype == mat_b.dtype == bfloat16` (the CUTLASS fast path's rule),
    while `_grouped_mm_cuda` sends every other dtype to `_grouped_mm_fallback`, which writes into the one
    output `create_grouped_gemm_output_tensor` made (GroupedBlas.cpp, GroupedMMUtils.h). bf16 operands keep
    the meta kernel; the others get that output from torch's `_create_grouped_mm_output_tensor` (shape, dtype
    `out_dtype or mat_a.dtype`), allocated through the modes below this one (a fake tensor under
    FakeTensorMode). A dispatch mode sits below autograd, so what the node saves is torch's own.
    """

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._grouped_mm.default:
            mat_a, mat_b = args[0], args[1]
            offs = args[2] if len(args) > 2 else kwargs.get("offs")
            out_dtype = args[4] if len(args) > 4 else kwargs.get("out_dtype")
            bf16 = mat_a.dtype == mat_b.dtype == torch.bfloat16 and out_dtype in (None, torch.bfloat16)
            if not bf16 and (mat_a.device.type == "meta" or _is_fake(mat_a)):
                from torch._meta_registrations import _create_grouped_mm_output_tensor

                return _create_grouped_mm_output_tensor(mat_a, mat_b, offs, out_dtype)
        return func(*args, **kwargs)


def _is_fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


# ---- all together ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    """`obj.name = value` inside the block, the old value back after it."""
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def _fused_devices_with_meta():
    import torch.optim.optimizer as optimizer_module

    original = optimizer_module._get_fused_kernels_supported_devices

    def devices() -> list[str]:
        return [*original(), "meta"]

    return patched(optimizer_module, "_get_fused_kernels_supported_devices", devices)


@contextlib.contextmanager
def cuda_equivalence(device_type: str, autocast_dtype: torch.dtype | None) -> Iterator[CudaAutocast | None]:
    """Apply the patches for a trace on `device_type` ("cpu", "meta", or "fake"); nothing on "cuda".

    Yields a `CudaAutocast` (open its `region()` around the forward) when
    `autocast_dtype` is set and the device is not CUDA, else None (on CUDA use `torch.autocast`).
    """
    if device_type == "cuda":
        yield None
        return
    import transformers.masking_utils as masking_utils

    with contextlib.ExitStack() as stack:
        stack.enter_context(patched(torch.nn.functional, "dropout", cuda_dropout))
        stack.enter_context(patched(masking_utils, "find_packed_sequence_indices", _no_packed_sequences))
        stack.enter_context(_int8_matmul_as_on_cuda())
        if device_type in ("meta", "fake"):
            stack.enter_context(patched(torch.nn.functional, "scaled_dot_product_attention", cuda_sdpa))
            stack.enter_context(GroupedMmAnyDtype())
        else:  # real CPU tensors: only a value head dim of its own leaves the CPU flash kernel
            stack.enter_context(patched(torch.nn.functional, "scaled_dot_product_attention", _cpu_sdpa))
        if device_type == "meta":
            stack.enter_context(_fused_devices_with_meta())
        mode = None
        if autocast_dtype is not None:
            stack.enter_context(patched(torch, "is_autocast_enabled", is_autocast_enabled))
            stack.enter_context(patched(torch, "get_autocast_dtype", get_autocast_dtype))
            mode = CudaAutocast(autocast_dtype)
        yield mode
