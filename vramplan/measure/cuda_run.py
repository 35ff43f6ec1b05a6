"""What only a CUDA run shows: torch's allocator counters, NVML's figure for this process, and the run as a
calibration-store record."""

from __future__ import annotations

import os
from typing import Any

import torch

from vramplan.breakdown import Breakdown
from vramplan.errors import VramplanError
from vramplan.measure.result import CudaFigures, MeasureResult


def cuda_figures() -> CudaFigures:
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    nvml = nvml_process_bytes(index)
    reserved = int(torch.cuda.memory_reserved(index))
    return CudaFigures(
        device_name=props.name,
        total_bytes=int(props.total_memory),
        max_memory_allocated=int(torch.cuda.max_memory_allocated(index)),
        max_memory_reserved=int(torch.cuda.max_memory_reserved(index)),
        nvml_process_bytes=nvml,
        cuda_context_bytes=None if nvml is None else max(nvml - reserved, 0),
    )


def nvml_process_bytes(index: int = 0) -> int | None:
    """Device memory NVML attributes to this process (context + reserved), or None without NVML."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                return int(proc.usedGpuMemory)
        return None
    except pynvml.NVMLError:
        return None
    finally:
        pynvml.nvmlShutdown()


def run_record(r: MeasureResult, estimate: Breakdown | None = None) -> dict[str, Any]:
    """A CUDA run as a calibration-store record (`vramplan.trust.calibration.RunRecord`'s fields, schema 1).

    `device_bytes` is the device memory at the peak: `max_memory_reserved` + the CUDA context NVML showed.
    """
    if r.cuda is None or r.oom is not None:
        raise VramplanError(
            "--save stores completed CUDA measurements; this run "
            + ("ran out of memory" if r.oom is not None else f"ran on {r.device}")
        )
    from vramplan.sources.local_gpu import query_local_gpus
    from vramplan.sources.profiles import _gpu_index, _norm

    c = r.cuda
    try:
        driver: str | None = query_local_gpus()[torch.cuda.current_device()].driver
    except (VramplanError, IndexError):
        driver = None
    inputs = {k: list(v) if isinstance(v, tuple) else v for k, v in r.breakdown.train.as_dict().items()}
    return {
        "gpu_name": c.device_name,
        "gpu_key": _gpu_index().get(_norm(c.device_name)),
        "driver": driver,
        "cuda": torch.version.cuda,
        "versions": {**dict(r.versions), "vramplan": _vramplan_version()},
        "model": r.breakdown.model,
        "inputs": inputs,
        "allocated_bytes": c.max_memory_allocated,
        "reserved_bytes": c.max_memory_reserved,
        "device_bytes": (None if c.cuda_context_bytes is None else c.max_memory_reserved + c.cuda_context_bytes),
        "tracker": r.breakdown.components.as_dict(),
        "estimate": None
        if estimate is None
        else {
            "peak_bytes": estimate.peak_bytes,
            "reserved_bytes": estimate.reserved_bytes,
            "device_bytes": estimate.device_bytes,
        },
    }


def _vramplan_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vramplan")
    except PackageNotFoundError:
        return "unknown"
