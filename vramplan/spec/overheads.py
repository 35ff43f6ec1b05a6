"""What only a GPU shows: the CUDA context, the caching allocator's slack, and the estimator's error band.

- CUDA context: the driver's per-process state plus the kernels of torch, cuBLAS and cuDNN loaded at first
  use; invisible to `torch.cuda.memory_allocated`, visible in nvidia-smi. With lazy module loading
  (CUDA_MODULE_LOADING=LAZY, the default since CUDA 11.7 / torch 1.13) it is typically 300–500 MiB on
  Ampere/Ada with torch 2.x (PyTorch docs, "CUDA semantics: memory management"; HF accelerate's
  model-memory-usage notes). We use 450 MiB, and a calibration from `measure` on the user's GPU replaces it.
- cuBLAS workspace: CUBLAS_WORKSPACE_CONFIG default ":4096:8" + ":16:8" (torch/cuda/__init__ docs,
  cuBLAS docs "cublasSetWorkspace"): 4 MiB × 8 + 16 KiB × 8 per handle/stream, allocated through the
  caching allocator (counted in memory_allocated since torch 2.3): ~32 MiB.
- Caching allocator: for a training step, `estimator/allocator_replay.py` replays the walk's own allocation
  sequence through a model of PyTorch's CUDA caching allocator (`vramplan/allocator/model.py`,
  c10/cuda/CUDACachingAllocator.cpp) for max_memory_reserved and the least memory the allocator must get for
  the step to run, where that route is the more accurate, and `estimator/allocator_slack.py` predicts both
  from replays of traced steps elsewhere (and in `fit`'s probes); a
  calibration's measured ratio (reserved / allocated − 1) replaces the predicted reserved figure; `simulate`
  uses the replay itself. Serving with transformers keeps a flat 10 % of the peak (`ALLOCATOR_OVERHEAD_RATIO`).
- Error band: ±6 %, a chosen margin for the overheads above, which are defaults until calibrated; the tensor
  peak itself is within 1.3 % of the traced step (docs/accuracy.md). For an estimate the allocator figures' own
  error (rms of the least memory that runs against the replays, `allocator_slack.need_error` or the walk
  replay's `allocator_replay.REPLAY_ERRORS`) is added in
  quadrature (`vramplan.estimator.allocator_slack.tight_band`) until a calibration's measured residual replaces it.

These figures travel as one typed value, `Overheads`, attached to the GPU a command plans for
(`GpuProfile.overheads`). The documented defaults are `Overheads()`; `vramplan.trust.calibration.calibrate`
(the only code that reads the user's calibration store) replaces them with a GPU's `Calibration`, once per
command, so estimate, fit, advice and serve all compute with the same figures.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024**2
CUDA_CONTEXT_BYTES = 450 * MIB
CUBLAS_WORKSPACE_BYTES = 8 * 4 * MIB + 8 * 16 * 1024
ALLOCATOR_OVERHEAD_RATIO = 0.10
ERROR_BAND = 0.06


@dataclass(frozen=True, slots=True)
class Calibration:
    """Figures of one GPU derived from its stored runs (`vramplan.trust.calibration.derive`); None where no run
    gives them."""

    gpu_key: str
    n_runs: int
    cuda_context_bytes: int | None
    allocator_ratio: float | None
    residual_band: float | None


@dataclass(frozen=True, slots=True)
class Overheads:
    """What a GPU adds to the tensor peak, and how far the estimate is trusted there.

    `allocator_bytes(peak)` is the caching allocator's slack plus the cuBLAS workspace as a flat ratio (serving;
    a training `Breakdown` uses the allocator model unless a calibration gives the ratio); with
    `measured_allocator_bytes` set (a CUDA measurement: max_memory_reserved − max_memory_allocated; a replay:
    its max_memory_reserved − peak) it is that figure, and `measured_need_bytes` the least memory beyond the
    peak on which the step ran (a replay's). `calibration`: the stored runs these figures came from, or None
    for the documented defaults.
    """

    cuda_context_bytes: int = CUDA_CONTEXT_BYTES
    allocator_ratio: float = ALLOCATOR_OVERHEAD_RATIO
    error_band: float = ERROR_BAND
    calibration: Calibration | None = None
    measured_allocator_bytes: int | None = None
    measured_need_bytes: int | None = None

    @property
    def measured(self) -> bool:
        return self.measured_allocator_bytes is not None

    @property
    def calibrated_ratio(self) -> bool:
        return self.calibration is not None and self.calibration.allocator_ratio is not None

    @property
    def calibrated_band(self) -> bool:
        return self.calibration is not None and self.calibration.residual_band is not None

    def allocator_bytes(self, peak_bytes: int) -> int:
        if self.measured_allocator_bytes is not None:
            return self.measured_allocator_bytes
        return allocator_overhead_bytes(peak_bytes, self.allocator_ratio) + CUBLAS_WORKSPACE_BYTES

    @classmethod
    def calibrated(cls, cal: Calibration | None) -> Overheads:
        """The defaults, with each figure `cal` gives replacing its default."""
        if cal is None:
            return cls()
        return cls(
            cuda_context_bytes=CUDA_CONTEXT_BYTES if cal.cuda_context_bytes is None else cal.cuda_context_bytes,
            allocator_ratio=ALLOCATOR_OVERHEAD_RATIO if cal.allocator_ratio is None else cal.allocator_ratio,
            error_band=ERROR_BAND if cal.residual_band is None else cal.residual_band,
            calibration=cal,
        )


def allocator_overhead_bytes(peak_bytes: int, ratio: float = ALLOCATOR_OVERHEAD_RATIO) -> int:
    return int(peak_bytes * ratio)
