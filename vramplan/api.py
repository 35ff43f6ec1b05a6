"""The library's front door: `estimate` a training step by name, as the CLI does, without the CLI."""

from __future__ import annotations

from typing import Any

from vramplan.breakdown import Breakdown
from vramplan.estimator.overhead import error_band_for
from vramplan.estimator.peak import build_breakdown
from vramplan.sources.profiles import GpuProfile, find_gpu, load_model
from vramplan.spec import ModelSpec, TrainSpec, resolve_train
from vramplan.trust.calibration import derive


def estimate(
    model: str | ModelSpec,
    *,
    gpu: str | GpuProfile | None = None,
    train: TrainSpec | None = None,
    **options: Any,
) -> Breakdown:
    """Estimate the peak memory of one training step.

    `model`: a built-in name (`vramplan models`), a path to a config.json (or its folder), a cached hub id,
    or a ModelSpec. `gpu`: a name or alias (`vramplan gpus`) or a GpuProfile. `options`: the keyword
    arguments of `vramplan.spec.resolve_train` (method, batch, seq, lora_rank, optim, grad_ckpt, ...), or a
    resolved `train`. A calibration stored for the GPU (`vramplan calibration`) replaces the default CUDA
    context, allocator ratio and error band; `inputs["calibration"]` then holds its figures.

    >>> b = estimate("llama-2-7b", method="qlora", gpu="3060ti")
    >>> b.verdict, b.peak_phase
    """
    m = load_model(model) if isinstance(model, str) else model
    g = find_gpu(gpu) if isinstance(gpu, str) else gpu
    t = train or resolve_train(m, gpu_bf16=g.bf16 if g else True, **options)
    inputs: dict[str, Any] = {"model": m.name, "gpu": g.key if g else None, **t.as_dict()}
    band = error_band_for(g.key if g else None)
    cal = derive(g.key if g else None)
    calibrated: dict[str, Any] = {}
    if cal is not None:
        inputs["calibration"] = {
            "gpu_key": cal.gpu_key,
            "n_runs": cal.n_runs,
            "cuda_context_bytes": cal.cuda_context_bytes,
            "allocator_ratio": cal.allocator_ratio,
            "residual_band": cal.residual_band,
        }
        if cal.cuda_context_bytes is not None:
            calibrated["cuda_context_bytes"] = cal.cuda_context_bytes
        if cal.allocator_ratio is not None:
            calibrated["allocator_ratio"] = cal.allocator_ratio
    return build_breakdown(m, t, g.memory_bytes if g else None, inputs, error_band=band, **calibrated)


__all__ = ["estimate"]
