"""Run real training steps under the tracker and return the same `Breakdown` the estimator returns.

One step is what the HF Trainer runs (transformers 5.24 `Trainer.training_step` / `_inner_training_loop`):
for each of `grad_accum` micro-batches a forward under autocast (forward only) whose `ModelOutput` is dropped
except the loss (`compute_loss` returns the loss alone), the loss divided by `grad_accum`, `backward()`; then
`clip_grad_norm_(1.0)`, `optimizer.step()`, `zero_grad(set_to_none=True)`. Inputs: random token ids, labels =
input_ids, no attention mask (one unpadded sequence per row, so SDPA runs causal without a mask). Several
steps run (default 3) so the steady state (optimizer states alive, gradients of earlier micro-batches alive)
is in the peak; the peak is over all steps, and each phase keeps its own peak.

Tracker categories map onto `Breakdown` components: weights → weights, trainable → trainable, quant_state,
gradients, optimizer_states, activations (storages created in forward and still alive; allocations of a
gradient-checkpoint recompute are labelled activations too, as the estimator counts the recomputed layer),
logits (everything allocated inside `lm_head` and the loss in forward, and in backward until the gradient of
lm_head's input exists), temporaries (the rest: backward workspace, optimizer-step temporaries).

Devices: "cuda" (real run; adds `max_memory_allocated`, `max_memory_reserved`, NVML's figure for this process;
an out-of-memory error is a result), "cpu" (real tensors, CUDA-equivalent kernels, `cuda_equiv`), "meta" and
"fake" (no memory: meta tensors, or FakeTensorMode on a fake cpu device; quantized models always trace on
meta).
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Callable
from typing import Any

import torch

from vramplan.allocator.replay import allocator_figures
from vramplan.breakdown import COMPONENTS, Breakdown, Components, MeasuredRun, PhaseUsage
from vramplan.errors import VramplanError
from vramplan.estimator.build import measured_breakdown
from vramplan.measure.build import TORCH_DTYPES, Built, build
from vramplan.measure.cuda_equiv import CudaAutocast, check_versions, cuda_equivalence, installed_versions
from vramplan.measure.cuda_run import cuda_figures
from vramplan.measure.losses import loss_function
from vramplan.measure.moments import (
    LOGITS_GRADIENT,
    STEP,
    LayerMoments,
)
from vramplan.measure.result import DEVICES, CudaFigures, Device, MeasureResult, OutOfMemory
from vramplan.measure.run_context import bnb_cache_scope, fake_mode, quiet_bnb
from vramplan.measure.step_hooks import (
    LogitsLabel,
    exclude_paged_states,
    paged_bytes,
    param_counts,
    wrap_checkpointing,
)
from vramplan.measure.tracked import CategoryBytes, TrackedPeak
from vramplan.measure.tracker import MemoryTracker
from vramplan.spec import ModelSpec, TrainSpec
from vramplan.spec.alloc_conf import parse_alloc_conf
from vramplan.spec.overheads import CUBLAS_WORKSPACE_BYTES, CUDA_CONTEXT_BYTES, Overheads

CPU_MAX_PARAMS = 2_000_000_000  # above this a CPU step takes many minutes and tens of GB of RAM
TRAINER_MAX_GRAD_NORM = 1.0  # TrainingArguments.max_grad_norm default
MEASURED_ERROR_BAND = 0.0  # a CUDA measurement has no estimator error

Progress = Callable[[str], None]


def resolve_device(device: str, t: TrainSpec) -> tuple[Device, str | None]:
    """Validate `device`; quantized models trace on meta (bitsandbytes' Params4bit cannot wrap fakes)."""
    if device not in DEVICES:
        from vramplan.errors import did_you_mean

        raise did_you_mean(device, DEVICES, "device")
    if device == "cuda" and not torch.cuda.is_available():
        build_kind = "a CPU-only build" if torch.version.cuda is None else "no GPU visible"
        raise VramplanError(
            f"--device cuda: torch {torch.__version__} sees no CUDA device ({build_kind}); "
            "use --device cpu for small models, or `vramplan simulate`"
        )
    if device == "fake" and t.quant != "none":
        return "meta", "quantized model traced on the meta device (bitsandbytes cannot wrap fake tensors)"
    return device, None  # type: ignore[return-value]


CPU_RAM_SHARE = 0.8  # of physical memory a CPU step may plan to use; past it the allocator fails mid-step


def physical_memory_bytes() -> int | None:
    """This machine's RAM (POSIX sysconf), or None where it cannot be read."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_cpu_size(m: ModelSpec, t: TrainSpec | None = None) -> None:
    """Refuse up front what a CPU step cannot finish: over CPU_MAX_PARAMS parameters, or a tensor peak
    (the analytic estimate, within its error band of the traced one) over CPU_RAM_SHARE of the RAM, which
    would otherwise end in an allocator error after a minute of building."""
    if m.total_params > CPU_MAX_PARAMS:
        raise VramplanError(
            f"{m.name} ({m.total_params / 1e9:.1f}B parameters) on CPU is impractical: use "
            f"`vramplan simulate` or a GPU (`measure --device cpu` takes models up to "
            f"{CPU_MAX_PARAMS / 1e9:.0f}B)"
        )
    ram = physical_memory_bytes()
    if t is None or ram is None:
        return
    from vramplan.estimator.peak import phases

    peak = max(p.total for p in phases(m, t)[0])
    if peak > CPU_RAM_SHARE * ram:
        raise VramplanError(
            f"this step needs about {peak / 1024**3:,.1f} GiB (estimated), over {CPU_RAM_SHARE:.0%} of this "
            f"machine's {ram / 1024**3:,.1f} GiB of RAM: lower --batch / --seq, or use `vramplan simulate`"
        )


def simulate(
    m: ModelSpec, t: TrainSpec, *, steps: int = 2, gpu: Any = None, progress: Progress | None = None
) -> MeasureResult:
    """Trace the real step at full size without memory: fake tensors, or meta tensors for quantized models."""
    return run_step(m, t, device="fake", steps=steps, gpu=gpu, progress=progress)


def run_step(
    model_spec: ModelSpec,
    train_spec: TrainSpec,
    device: str = "cpu",
    steps: int = 3,
    *,
    weights: str | None = None,
    gpu: Any = None,
    progress: Progress | None = None,
) -> MeasureResult:
    """Build `model_spec` for `train_spec` on `device`, run `steps` training steps under the tracker.

    `gpu`: a `GpuProfile` for the verdict (on CUDA the local card is used when None). A CUDA (or simulated)
    `torch.OutOfMemoryError` is returned as `result.oom`, after freeing the model and emptying the cache.
    """
    m, t = model_spec, train_spec
    if steps < 1:
        raise VramplanError(f"--steps must be a positive integer, got {steps!r}")
    check_versions()
    dev, note = resolve_device(device, t)
    if dev == "cpu":
        check_cpu_size(m, t)
    notes: list[str] = [note] if note else []
    say = progress or (lambda _msg: None)
    autocast_dtype = TORCH_DTYPES[t.mixed_precision] if t.mixed_precision != "no" else None
    start = time.perf_counter()
    if dev == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    fake = dev == "fake"
    state = _RunState()
    tracker = MemoryTracker(device_type="cpu" if fake else dev, record_events=True)
    try:
        with quiet_bnb(), bnb_cache_scope(), fake_mode(fake), cuda_equivalence(dev, autocast_dtype) as emu:
            _build_and_train(m, t, dev, weights, tracker, emu, autocast_dtype, steps, state, notes, say)
    except (torch.OutOfMemoryError, RuntimeError) as e:
        # Out of memory is a result: the model and optimizer died with _build_and_train's frame.
        if not _is_oom(e):
            raise
        reached = torch.cuda.max_memory_allocated() if dev == "cuda" else tracker.peak_bytes
        state.oom = OutOfMemory(state.step, state.phase, int(reached), str(e).split("\n")[0][:300])
    gc.collect()
    cuda = cuda_figures() if dev == "cuda" else None  # NVML and reserved read together, before empty_cache
    tracker.remove_hooks()
    gc.collect()
    if dev == "cuda":
        torch.cuda.empty_cache()
    tracked = tracker.result()
    events = tuple(tracker.events or ())
    b = _breakdown(m, t, dev, tracked, state, cuda, gpu, notes, events)
    return MeasureResult(
        breakdown=b,
        device=dev,
        steps=state.steps_done,
        tracked=tracked,
        cuda=cuda,
        oom=state.oom,
        paged_bytes=state.paged_bytes,
        seconds=time.perf_counter() - start,
        notes=tuple(notes),
        versions=installed_versions(),
        events=events,
        load_events=state.load_events,
    )


def _build_and_train(
    m: ModelSpec,
    t: TrainSpec,
    dev: str,
    weights: str | None,
    tracker: MemoryTracker,
    emu: CudaAutocast | None,
    autocast_dtype: torch.dtype | None,
    steps: int,
    state: _RunState,
    notes: list[str],
    say: Progress,
) -> None:
    state.phase = "build"
    built = build(m, t, dev, weights=weights, progress=say)
    notes += built.notes
    state.params = param_counts(built.model)
    _train(built, t, tracker, emu, dev, autocast_dtype, steps, state, say)
    state.paged_bytes = paged_bytes(built.optimizer)


def _is_oom(e: BaseException) -> bool:
    """torch's OutOfMemoryError, or a kernel's RuntimeError saying so (bitsandbytes' CUDA ops raise those)."""
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


class _RunState:
    __slots__ = ("load_events", "oom", "paged_bytes", "params", "phase", "step", "steps_done")

    def __init__(self) -> None:
        self.step = 0
        self.steps_done = 0
        self.phase = "build"
        self.oom: OutOfMemory | None = None
        self.paged_bytes = 0
        self.params: tuple[int, int] = (0, 0)
        self.load_events = 0


def _train(
    built: Built,
    t: TrainSpec,
    tracker: MemoryTracker,
    emu: CudaAutocast | None,
    dev: str,
    autocast_dtype: torch.dtype | None,
    steps: int,
    state: _RunState,
    say: Progress,
) -> None:
    model, optimizer = built.model, built.optimizer
    tracker.register_module(model)
    tracker.register_optimizer(optimizer)
    logits = LogitsLabel(built.causal_lm, tracker)
    wrap_checkpointing(model, tracker, emu)
    LayerMoments(model, tracker)
    if getattr(optimizer, "is_paged", False) and dev != "cuda":
        exclude_paged_states(optimizer, tracker)
    vocab = built.causal_lm.config.get_text_config().vocab_size
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state.load_events = len(tracker.events or ())

    def autocast() -> contextlib.AbstractContextManager:
        if autocast_dtype is None:
            return contextlib.nullcontext()
        if dev == "cuda":
            return torch.autocast("cuda", dtype=autocast_dtype)
        assert emu is not None
        return emu.region()

    # the model's loss, or TRL's fused LM head (measure/losses.py)
    with loss_function(built, t, tracker) as forward, tracker:
        for step in range(1, steps + 1):
            state.step = step
            say(f"step {step}/{steps}")
            for _ in range(t.grad_accum):
                state.phase = "forward"
                with tracker.phase_scope("forward"):
                    ids = torch.randint(0, vocab, (t.batch, t.seq), device=built.device)
                    with autocast():
                        loss = forward(ids)  # the ModelOutput (logits) dies here
                    if t.grad_accum > 1:
                        loss = loss / t.grad_accum
                state.phase = "backward"
                with tracker.phase_scope("backward"):
                    tracker.label = "logits" if logits.hooked else None
                    tracker.moment = LOGITS_GRADIENT if logits.hooked else None
                    loss.backward()
                    tracker.label = None
                    tracker.moment = None
                del loss, ids
            state.phase = "optimizer"
            with tracker.phase_scope("optimizer"), tracker.moment_scope(STEP):
                torch.nn.utils.clip_grad_norm_(params, TRAINER_MAX_GRAD_NORM)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            state.steps_done = step


def components(c: CategoryBytes) -> Components:
    """Tracker categories as Breakdown components (the same names, one to one)."""
    return Components(**{name: getattr(c, name) for name in COMPONENTS})


def traced_moments(tracker) -> tuple[tuple[PhaseUsage, ...], dict[str, Components]]:
    """A finished trace's phases (with the moment each peaked at) and its named moments, as components."""
    tracked = tracker.result()
    phases = tuple(PhaseUsage(p.phase, components(p.breakdown), p.moment or "") for p in tracked.phases)
    return phases, {mp.moment: components(mp.breakdown) for mp in tracked.moments if mp.moment}


def _breakdown(
    m: ModelSpec,
    t: TrainSpec,
    dev: str,
    tracked: TrackedPeak,
    state: _RunState,
    cuda: CudaFigures | None,
    gpu: Any,
    notes: list[str],
    events: tuple[tuple[int, int, int], ...] = (),
) -> Breakdown:
    phases = tuple(PhaseUsage(p.phase, components(p.breakdown), p.moment or "") for p in tracked.phases)
    if not phases:  # out of memory while building: nothing traced but what was loaded
        phases = (PhaseUsage("forward", Components(weights=tracked.current_bytes)),)
    peak = max(p.total for p in phases)
    if cuda is not None:
        if cuda.cuda_context_bytes is not None:
            context = cuda.cuda_context_bytes
        else:
            context = CUDA_CONTEXT_BYTES
            notes.append("NVML unavailable: CUDA context is the modelled figure, not measured")
        overheads = Overheads(
            cuda_context_bytes=context,
            error_band=MEASURED_ERROR_BAND,
            measured_allocator_bytes=max(cuda.max_memory_reserved - peak, 0),
        )
        gpu_bytes = gpu.memory_bytes if gpu is not None else cuda.total_bytes
    elif events:
        # a trace: the caching allocator replayed on its allocation sequence under the step's alloc_conf, with
        # the cuBLAS workspace (not a tensor) on top; the CUDA context is the documented default
        f = allocator_figures(events, parse_alloc_conf(t.alloc_conf))
        overheads = Overheads(
            measured_allocator_bytes=f.max_reserved_bytes - peak + CUBLAS_WORKSPACE_BYTES,
            measured_need_bytes=f.min_limit_bytes - peak + CUBLAS_WORKSPACE_BYTES,
        )
        gpu_bytes = gpu.memory_bytes if gpu is not None else None
    else:
        overheads = Overheads()  # nothing traced (out of memory while building): the documented defaults
        gpu_bytes = gpu.memory_bytes if gpu is not None else None
    total, trainable = state.params
    return measured_breakdown(
        m.name,
        t,
        phases,
        params_total=total,
        params_trainable=trainable,
        paged_bytes=state.paged_bytes,
        gpu=getattr(gpu, "key", None) if gpu is not None else (cuda.device_name if cuda else None),
        gpu_bytes=gpu_bytes,
        overheads=overheads,
        source="simulate" if dev in ("meta", "fake") else "measure",
        notes=tuple(notes),
        run=MeasuredRun(device=dev, steps=state.steps_done),
    )
