"""What only a GPU shows: the CUDA context, the caching allocator's slack, and the estimator's error band.

- CUDA context: the driver's per-process state plus the kernels of torch, cuBLAS and cuDNN loaded at first
  use; invisible to `torch.cuda.memory_allocated`, visible in nvidia-smi. With lazy module loading
  (CUDA_MODULE_LOADING=LAZY, the default since CUDA 11.7 / torch 1.13) it is typically 300–500 MiB on
  Ampere/Ada with torch 2.x (PyTorch docs, "CUDA semantics: memory management"; HF accelerate's
  model-memory-usage notes). We use 450 MiB, and a calibration from `measure` on the user's GPU replaces it.
- cuBLAS workspace: CUBLAS_WORKSPACE_CONFIG default ":4096:8" + ":16:8" (torch/cuda/__init__ docs,
  cuBLAS docs "cublasSetWorkspace"): 4 MiB × 8 + 16 KiB × 8 per handle/stream, allocated through the
  caching allocator (counted in memory_allocated since torch 2.3): ~32 MiB.
- Caching allocator: reserved − allocated. Blocks round up to 512 B (small pool) / 2 MiB segments and large
  blocks are split without returning memory; published A100 runs of the HF stack show max_memory_reserved
  7–20 % above max_memory_allocated (shared/TRACING-NOTES.md). We model 10 % of the peak.
- Error band: a meta-device trace of the real code agrees with max_memory_allocated of published A100 runs
  within about ±6 % (TRACING-NOTES.md), so `tight` means within 6 % of the GPU's memory until calibration.
  `error_band_for(gpu_key)` is the one place the band is read (estimate, fit, advice thread it into
  `build_breakdown(error_band=...)`); it will return the accuracy grid's measured error combined with the
  calibration residuals of that GPU, and returns the constant until then.
"""

from __future__ import annotations

MIB = 1024**2
CUDA_CONTEXT_BYTES = 450 * MIB
CUBLAS_WORKSPACE_BYTES = 8 * 4 * MIB + 8 * 16 * 1024
ALLOCATOR_OVERHEAD_RATIO = 0.10
ERROR_BAND = 0.06


def error_band_for(gpu_key: str | None) -> float:
    """Relative error of the estimator's device total on `gpu_key` (a gpus.toml key, "local", or None).

    `tight` = predicted to fit with less headroom than this fraction of the peak: the residual band of the
    calibration stored for this GPU (`vramplan.trust.calibration.derive`) when its runs carry an estimate, else the
    ±6 % agreement of traced peaks with published A100 runs (module docstring).
    """
    from vramplan.trust.calibration import derive

    cal = derive(gpu_key)
    return cal.residual_band if cal is not None and cal.residual_band is not None else ERROR_BAND


def allocator_overhead_bytes(peak_bytes: int, ratio: float = ALLOCATOR_OVERHEAD_RATIO) -> int:
    return int(peak_bytes * ratio)
