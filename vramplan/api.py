"""The library's front door: estimate a training step or a serving setup by name, as the CLI does.

Names (models, GPUs) are resolved through `vramplan.sources`; a GPU given by name carries the user's stored
calibration (`vramplan.trust.calibration.calibrate`); the arithmetic is `vramplan.estimator.build`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vramplan.estimator.build import build_breakdown
from vramplan.sources.profiles import find_gpu, load_model
from vramplan.spec import ModelSpec, TrainSpec, resolve_train

if TYPE_CHECKING:
    from vramplan.breakdown import Breakdown
    from vramplan.serve_breakdown import ServeBreakdown
    from vramplan.spec.gpu import GpuProfile
    from vramplan.spec.serve import ServeSpec


def _gpu(gpu: str | GpuProfile | None) -> GpuProfile | None:
    """A name is looked up and calibrated from the store; a GpuProfile is used as given (its overheads)."""
    if not isinstance(gpu, str):
        return gpu
    from vramplan.trust.calibration import calibrate  # the store is read only for a GPU named here

    return calibrate(find_gpu(gpu))


def estimate(
    model: str | ModelSpec,
    *,
    gpu: str | GpuProfile | None = None,
    train: TrainSpec | None = None,
    **options: Any,
) -> Breakdown:
    """Estimate the peak memory of one training step.

    `model`: a built-in name (`vramplan models`), a path to a config.json (or its folder), a cached hub id,
    or a ModelSpec. `gpu`: a name or alias (`vramplan gpus`), whose stored calibration (`vramplan
    calibration`) replaces the default CUDA context, allocator ratio and error band, or a GpuProfile (used with
    its own `overheads`). `options`: the keyword arguments of `vramplan.spec.resolve_train` (method, batch,
    seq, lora_rank, optim, grad_ckpt, ...), or a resolved `train`.

    >>> b = estimate("llama-2-7b", method="qlora", gpu="3060ti")
    >>> b.verdict, b.peak_phase
    """
    m = load_model(model) if isinstance(model, str) else model
    g = _gpu(gpu)
    t = train or resolve_train(
        m, gpu_bf16=g.bf16 if g else True, gpu_compute_capability=g.compute_capability if g else None, **options
    )
    return build_breakdown(m, t, g)


def estimate_serve(
    model: str | ModelSpec,
    *,
    gpu: str | GpuProfile | None = None,
    serve: ServeSpec | None = None,
    **options: Any,
) -> ServeBreakdown:
    """Estimate the serving memory of `model` with vLLM (default) or transformers generate (`engine="hf"`).

    `options`: the keyword arguments of `vramplan.spec.serve.resolve_serve`, or a resolved `serve`. vLLM
    needs a `gpu`: its KV pool is a fraction of the GPU's memory.

    >>> b = estimate_serve("llama-3-8b", gpu="4090", max_model_len=8192, max_num_seqs=16)
    >>> b.vllm.kv.tokens, b.vllm.kv.max_concurrency
    """
    from vramplan.spec.serve import resolve_serve

    m = load_model(model) if isinstance(model, str) else model
    g = _gpu(gpu)
    s = serve or resolve_serve(m, g, **options)
    return build_breakdown(m, s, g)


__all__ = ["estimate", "estimate_serve"]
