"""The library's front door: estimate a training step or a serving setup by name, as the CLI does.

Names (models, GPUs) are resolved through `vramplan.sources`; a GPU given by name carries the user's stored
calibration (`vramplan.trust.calibration.calibrate`); the arithmetic is `vramplan.estimator.build`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vramplan.errors import VramplanError
from vramplan.estimator.build import ALLOCATOR_MODELS, build_breakdown
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
    replay_allocator: bool = False,
    replay_verdict: bool = False,
    allocator_model: str = "auto",
    **options: Any,
) -> Breakdown:
    """Estimate the peak memory of one training step.

    `model`: a built-in name (`vramplan models`), a path to a config.json (or its folder), a cached hub id,
    or a ModelSpec. `gpu`: a name or alias (`vramplan gpus`), whose stored calibration (`vramplan
    calibration`) replaces the default CUDA context, allocator ratio and error band, or a GpuProfile (used with
    its own `overheads`). `options`: the keyword arguments of `vramplan.spec.resolve_train` (method, batch,
    seq, lora_rank, optim, grad_ckpt, loss, packing, ...), or a resolved `train`; `recipe="trl"` fills the
    options not given with that framework's defaults (vramplan.spec.recipe). `allocator_model`: where the caching
    allocator's reserved figure and the verdict's least memory that runs come from (docs/caching-allocator.md):
    "auto", a replay of the step's own allocation sequence where it could change the verdict (0.05-0.7 s of
    CPU), else the slack model; "replay" wherever the step is walked; "slack" the slack model. The former
    switches: `replay_allocator` ("replay" for the reserved figure) and `replay_verdict` (for the verdict too).

    >>> b = estimate("llama-2-7b", method="qlora", gpu="3060ti")
    >>> b.verdict, b.peak_phase
    """
    m = load_model(model) if isinstance(model, str) else model
    g = _gpu(gpu)
    if options.get("recipe") is not None:  # the framework's defaults under the options given
        from vramplan.spec.recipe import resolve_recipe
        from vramplan.spec.stack import resolve_stack

        stack = resolve_stack(options.get("stack"))
        recipe = resolve_recipe(options["recipe"], options.get("method", "qlora"), stack)
        options = {**dict(recipe.settings), **options, "recipe": recipe.label, "stack": stack}
    if isinstance(model, str) and train is None and not {"checkpoint", "checkpoint_name", "quant"} & set(options):
        from vramplan.sources.profiles import find_model_config

        words = find_model_config(model).prequantized  # `-AWQ`: a built-in profile stood in for the checkpoint
        if words:
            options = {**options, "checkpoint_name": words}
    t = train or resolve_train(
        m, gpu_bf16=g.bf16 if g else True, gpu_compute_capability=g.compute_capability if g else None, **options
    )
    if allocator_model not in ALLOCATOR_MODELS:
        raise VramplanError(f"allocator_model {allocator_model!r}: one of {', '.join(ALLOCATOR_MODELS)}")
    return build_breakdown(
        m,
        t,
        g,
        replay_allocator=replay_allocator,
        replay_verdict=replay_verdict,
        allocator_model=allocator_model,  # type: ignore[arg-type]
    )


def estimate_serve(
    model: str | ModelSpec,
    *,
    gpu: str | GpuProfile | None = None,
    serve: ServeSpec | None = None,
    **options: Any,
) -> ServeBreakdown:
    """Estimate the serving memory of `model` with vLLM (default) or transformers generate (`engine="hf"`).

    `options`: the keyword arguments of `vramplan.spec.serve.resolve_serve`, or a resolved `serve`;
    `gpu_memory_gib` replaces the GPU's CUDA-visible total (any card: without `gpu`, a bf16-capable one of
    compute capability 8.0). vLLM needs a `gpu` or `gpu_memory_gib`: its KV pool is a fraction of the memory.

    >>> b = estimate_serve("llama-3-8b", gpu="4090", max_model_len=8192, max_num_seqs=16)
    >>> b.vllm.kv.tokens, b.vllm.kv.max_concurrency
    """
    from vramplan.spec.serve import resolve_serve

    m = load_model(model) if isinstance(model, str) else model
    g = _gpu(gpu)
    gpu_memory_gib = options.pop("gpu_memory_gib", None)
    if gpu_memory_gib is not None:
        from vramplan.spec.gpu import with_cuda_total

        g = with_cuda_total(g, gpu_memory_gib)
    s = serve or resolve_serve(m, g, **options)
    if isinstance(model, str) and s.checkpoint is None and s.quant == "none":
        from dataclasses import replace

        from vramplan.sources.profiles import find_model_config

        words = find_model_config(model).prequantized  # `-AWQ`, `-GPTQ-Int4`: a built-in profile stood in
        if words:
            note = (
                f"{model} ({words}) was resolved to a built-in profile without its quantization_config: "
                "counted unquantized; pass the checkpoint's config.json (or its folder) to count its format"
            )
            s = replace(s, notes=(*s.notes, note))
    return build_breakdown(m, s, g)


__all__ = ["estimate", "estimate_serve"]
