"""Pre-quantized bases in training: what one frozen quantized linear saves for backward and holds while it
dequantizes, traced under the MemoryTracker and compared with the estimator's walk (linear_ops `_prequantized`).

The kernels are CUDA-only (gptqmodel's compiled dequantize, AWQ's GEMM, transformers' Triton FP8 matmul, AQLM's
CUDA kernels), so each is a CPU stand-in that allocates what its code allocates (spec/prequantized_base.py
cites the files): the autograd structure is the code's own (torch.matmul on the dequantized weight; an autograd
Function that saves the quantized tensors; transformers' real `FP8LinearFunction` and `_dequantize_fp8_weight`,
with its Triton forward replaced by a dequantize-and-matmul whose weight the tracker does not count, as the
kernel never materializes it). Unpacking intermediates that torch.compile / the CUDA kernels fuse are built
inside `tracker.excluded()`; what the kernel returns is counted. Tolerance: exact bytes.
"""

from __future__ import annotations

import pytest
import torch

from vramplan.estimator.linear_ops import _prequantized
from vramplan.estimator.walk import Walk, WalkSettings
from vramplan.measure.tracker import MemoryTracker
from vramplan.spec.checkpoint_quant import CheckpointQuant
from vramplan.spec.prequantized_base import training_kernel

K, N, T, GROUP = 256, 384, 64, 128  # in, out, tokens, GPTQ/AWQ group size
DTYPE = torch.bfloat16


def _dequantized(tracker: MemoryTracker, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """An N×K-element weight as a dequantize kernel returns it (fp16, the GPTQ/AWQ scales' dtype; AQLM: the
    codebooks', the model dtype); its intermediates are fused in the real kernels: not counted."""
    with tracker.excluded():
        codes = torch.randint(0, 16, (K, N), dtype=torch.int32)
        fused = (codes.to(dtype) - 8) * 0.01
    return fused.clone()


class GptqStandIn(torch.nn.Module):
    """gptqmodel 7.7.0 TorchLinear._forward_eager: dequantize_weight() (fp16), .to(x.dtype), torch.matmul."""

    def __init__(self, tracker: MemoryTracker) -> None:
        super().__init__()
        self.tracker = tracker
        self.register_buffer("qweight", torch.zeros(K * 4 // 32, N, dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = _dequantized(self.tracker)
        weights = weights.to(x.dtype)
        return torch.matmul(x, weights)


class AwqFunction(torch.autograd.Function):
    """gptqmodel 7.7.0 gemm_awq.py AwqGemmFn: saves qweight only; dequantize + matmul forward and backward."""

    @staticmethod
    def forward(ctx, x, qweight, tracker):
        ctx.save_for_backward(qweight)
        ctx.tracker = tracker
        return torch.matmul(x, _dequantized(tracker).to(x.dtype))

    @staticmethod
    def backward(ctx, grad):
        weights = _dequantized(ctx.tracker).to(grad.dtype)
        return torch.matmul(grad, weights.t()), None, None


class AqlmFunction(torch.autograd.Function):
    """aqlm 1.1.7 inference.py _QuantizedMatmul: saves its input; code1x16_matmat_dequant allocates the weight."""

    @staticmethod
    def forward(ctx, x, codes, tracker):
        ctx.save_for_backward(x, codes)
        ctx.tracker = tracker
        return torch.matmul(x, _dequantized(tracker, x.dtype))

    @staticmethod
    def backward(ctx, grad):
        return torch.matmul(grad, _dequantized(ctx.tracker, grad.dtype).t()), None, None


class QuantStandIn(torch.nn.Module):
    def __init__(self, function: type[torch.autograd.Function], tracker: MemoryTracker) -> None:
        super().__init__()
        self.function, self.tracker = function, tracker
        self.register_buffer("packed", torch.zeros(K * N // 8, dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function.apply(x, self.packed, self.tracker)


class Fp8StandIn(torch.nn.Module):
    """transformers 5.24 integrations/finegrained_fp8.py FP8LinearFunction, its own save and backward."""

    def __init__(self, tracker: MemoryTracker) -> None:
        super().__init__()
        self.tracker = tracker
        self.weight = torch.nn.Parameter(torch.zeros(N, K, dtype=torch.float8_e4m3fn), requires_grad=False)
        self.weight_scale_inv = torch.nn.Parameter(torch.ones(N // 128, K // 128), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from transformers.integrations import finegrained_fp8

        def cpu_fp8_linear(inp, weight, scale, block_size, bias, activation_scale, allow_deepgemm):
            with self.tracker.excluded():  # the Triton kernel: no weight materialized
                full = finegrained_fp8._dequantize_fp8_weight(weight, scale, block_size, inp.dtype)
                out = torch.nn.functional.linear(inp, full)
            return out.clone()

        original = finegrained_fp8.fp8_linear
        finegrained_fp8.fp8_linear = cpu_fp8_linear
        try:
            return finegrained_fp8.FP8LinearFunction.apply(
                x, self.weight, self.weight_scale_inv, [128, 128], None, None, False
            )
        finally:
            finegrained_fp8.fp8_linear = original


def _trace(make: type | tuple) -> tuple[int, int]:
    """(bytes saved for backward beyond the output, forward peak above the module) of one frozen quantized
    linear on T tokens of bf16 input that needs a gradient; the input is made in the forward (as a layer's
    normed hidden state is) and dropped after it, so it stays alive only if saved."""
    tracker = MemoryTracker(device_type="cpu")
    module = make[0](make[1], tracker) if isinstance(make, tuple) else make(tracker)
    x = torch.randn(T, K, dtype=DTYPE, requires_grad=True)
    tracker.register_module(module)
    tracker.register_tensor(x, "activations")
    with tracker:
        base = tracker.current_bytes
        tracker.reset_peaks()
        with tracker.phase_scope("forward"):
            hidden = x * 2.0  # a multiply by a number saves nothing
            out = module(hidden)
            del hidden
        forward_peak = tracker.peak_bytes - base
        saved = tracker.current_bytes - base - out.untyped_storage().nbytes()
        with tracker.phase_scope("backward"):
            out.backward(torch.ones_like(out))
    return saved, forward_peak


def _predicted(q: CheckpointQuant) -> tuple[int, int]:
    """The walk's (saved, forward peak) for the same linear: T·(per-token saved) + per-layer saved, and the
    largest live set of the op (its output and the dequantized copies; the input is counted outside)."""
    kernel = training_kernel(q, "bf16")
    settings = WalkSettings(
        masked=False, autocast_dtype=None, weight_dtype="bf16", norm_dtype="bf16", adapter_dtype="fp32",
        quantized=True, int8=False, bnb_compute_dtype="bf16", lora_targets=frozenset(), lora_dropout=False,
        lora_rank=8, dora=False, attn="sdpa", prequantized=kernel.matmul, dequant_copies=kernel.dequant_copies,
        matmul_copies=kernel.matmul_copies,
    )  # fmt: skip
    walk = Walk()
    x = walk.new(K, "bf16", True)
    walk.pinned[x.id] = x.nbytes
    _prequantized(walk, settings, x, K, N)
    saved = round(T * walk.saved_bytes.real) + walk.per_layer_saved
    return saved, max(round(T * per_token.real) + per_layer for per_token, per_layer in walk.live)


@pytest.mark.parametrize(
    ("q", "make", "saved_by_hand"),
    [
        (CheckpointQuant("gptq", source="gptq"), GptqStandIn, K * N * 2),  # the bf16 dequantized weight
        (CheckpointQuant("awq", source="awq"), (QuantStandIn, AwqFunction), 0),  # quantized tensors only
        (CheckpointQuant("aqlm", bits=2, source="aqlm"), (QuantStandIn, AqlmFunction), T * K * 2),  # the input
        (CheckpointQuant("fp8", bits=8, fp8_strategy="block", source="fp8"), Fp8StandIn, 0),
    ],
    ids=["gptq", "awq", "aqlm", "fp8"],
)
def test_prequantized_linear_saves_and_holds_what_the_walk_says(
    q: CheckpointQuant, make: type | tuple, saved_by_hand: int
) -> None:
    saved, forward_peak = _trace(make)
    predicted_saved, predicted_peak = _predicted(q)
    assert saved == saved_by_hand
    assert predicted_saved == saved
    assert predicted_peak == forward_peak
