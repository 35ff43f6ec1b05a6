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
import functools
import gc
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch

from vramplan.breakdown import COMPONENTS, Breakdown, Components, MeasuredRun, PhaseUsage
from vramplan.errors import VramplanError
from vramplan.estimator.build import measured_breakdown
from vramplan.estimator.overhead import CUBLAS_WORKSPACE_BYTES, CUDA_CONTEXT_BYTES, Overheads
from vramplan.measure.build import TORCH_DTYPES, Built, build
from vramplan.measure.cuda_equiv import CudaAutocast, check_versions, cuda_equivalence, installed_versions
from vramplan.measure.moments import (
    LOGITS_AND_LOSS,
    LOGITS_GRADIENT,
    STEP,
    LayerMoments,
    decoder_layers,
    layer_recompute,
)
from vramplan.measure.replay import AllocatorFigures, AllocatorSummary, allocator_figures, allocator_summary
from vramplan.measure.tracker import CategoryBytes, MemoryTracker, TrackedPeak
from vramplan.spec import ModelSpec, TrainSpec
from vramplan.spec.alloc_conf import DEFAULT, AllocatorConfig, parse_alloc_conf

Device = Literal["cuda", "cpu", "meta", "fake"]
DEVICES: tuple[str, ...] = ("cuda", "cpu", "meta", "fake")
CPU_MAX_PARAMS = 2_000_000_000  # above this a CPU step takes many minutes and tens of GB of RAM
TRAINER_MAX_GRAD_NORM = 1.0  # TrainingArguments.max_grad_norm default
MEASURED_ERROR_BAND = 0.0  # a CUDA measurement has no estimator error

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class CudaFigures:
    """What the CUDA caching allocator and the driver report for the run (bytes).

    `nvml_process_bytes`: the device memory NVML attributes to this process after the steps (CUDA context plus
    what the caching allocator still reserves), None when NVML (nvidia-ml-py or the driver) is absent;
    `cuda_context_bytes` = that minus `torch.cuda.memory_reserved()` read at the same moment.
    """

    device_name: str
    total_bytes: int
    max_memory_allocated: int
    max_memory_reserved: int
    nvml_process_bytes: int | None
    cuda_context_bytes: int | None


@dataclass(frozen=True, slots=True)
class OutOfMemory:
    """Where the run ran out of memory: step (1-based, 0 = while building), phase, and the bytes reached."""

    step: int
    phase: str  # "build" | "forward" | "backward" | "optimizer"
    reached_bytes: int
    message: str


@dataclass(frozen=True, slots=True)
class MeasureResult:
    breakdown: Breakdown  # source "measure" (cuda, cpu) or "simulate" (meta, fake)
    device: Device
    steps: int  # steps completed
    tracked: TrackedPeak  # the tracker's own reading (categories as the tracker names them)
    cuda: CudaFigures | None
    oom: OutOfMemory | None
    paged_bytes: int  # bitsandbytes paged optimizer states (CUDA managed memory, outside the peak)
    seconds: float
    notes: tuple[str, ...]
    versions: tuple[tuple[str, str], ...]
    # the tracked allocation sequence, (ALLOC, id, bytes) / (FREE, id, 0), for `vramplan.measure.allocator`;
    # its first `load_events` events register what the build left on the device (weights, adapters, ...)
    events: tuple[tuple[int, int, int], ...] = ()
    load_events: int = 0

    def allocator_figures(self, config: AllocatorConfig = DEFAULT, load_warmup: bool = False) -> AllocatorFigures:
        """The traced allocation sequence replayed through the caching-allocator model under `config`;
        `load_warmup`: as if loaded by `from_pretrained(device_map=...)` (`allocator.with_load_warmup`)."""
        return allocator_figures(self.events, config, self.load_events if load_warmup else None)

    def allocator_summary(self) -> AllocatorSummary | None:
        """The step replayed under torch's defaults (both loads) and expandable segments; None if nothing was
        traced (out of memory while building)."""
        return allocator_summary(self.events, self.load_events) if self.events else None

    @property
    def outcome(self) -> Literal["ok", "oom"]:
        return "oom" if self.oom else "ok"

    @property
    def verdict(self) -> str | None:
        return "oom" if self.oom else self.breakdown.verdict


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
        with _quiet_bnb(), _bnb_cache_scope(), _fake_mode(fake), cuda_equivalence(dev, autocast_dtype) as emu:
            _build_and_train(m, t, dev, weights, tracker, emu, autocast_dtype, steps, state, notes, say)
    except (torch.OutOfMemoryError, RuntimeError) as e:
        # Out of memory is a result: the model and optimizer died with _build_and_train's frame.
        if not _is_oom(e):
            raise
        reached = torch.cuda.max_memory_allocated() if dev == "cuda" else tracker.peak_bytes
        state.oom = OutOfMemory(state.step, state.phase, int(reached), str(e).split("\n")[0][:300])
    gc.collect()
    cuda = _cuda_figures() if dev == "cuda" else None  # NVML and reserved read together, before empty_cache
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
    state.params = _param_counts(built.model)
    _train(built, t, tracker, emu, dev, autocast_dtype, steps, state, say)
    state.paged_bytes = _paged_bytes(built.optimizer)


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


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(f in record.getMessage() for f in self.fragments)


# bitsandbytes 0.50 logs a warning on every int8 matmul whose input is not fp16 (`MatMul8bitLt: inputs will be
# cast ...`: thousands per step) and, importing its CPU backend, that the optional `kernels` package is absent.
# Neither changes what is allocated; the harness drops both while it runs.
_BNB_NOISE = {
    "bitsandbytes.autograd._functions": ("inputs will be cast",),
    "bitsandbytes.backends.cpu.ops": ("kernels-community",),
}


@contextlib.contextmanager
def _quiet_bnb() -> Iterator[None]:
    filters = [(logging.getLogger(name), _DropMessages(*frags)) for name, frags in _BNB_NOISE.items()]
    for logger, f in filters:
        logger.addFilter(f)
    try:
        yield
    finally:
        for logger, f in filters:
            logger.removeFilter(f)


@contextlib.contextmanager
def _bnb_cache_scope() -> Iterator[None]:
    """Keep bitsandbytes' module-level quantization-map cache (`functional.name2qmap`) as it was.

    bitsandbytes caches the dynamic map on the device of the first tensor it quantizes; a meta-device trace
    would leave a meta map behind that a later real run in the same process cannot copy from.
    """
    import sys

    bnbf = sys.modules.get("bitsandbytes.functional")
    before = dict(bnbf.name2qmap) if bnbf is not None else None
    try:
        yield
    finally:
        bnbf = sys.modules.get("bitsandbytes.functional")
        if bnbf is not None:
            bnbf.name2qmap.clear()
            bnbf.name2qmap.update(before or {})


@contextlib.contextmanager
def _fake_mode(on: bool) -> Iterator[None]:
    if not on:
        yield
        return
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):
        yield


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
    logits = _LogitsLabel(built.causal_lm, tracker)
    _wrap_checkpointing(model, tracker, emu)
    LayerMoments(model, tracker)
    if getattr(optimizer, "is_paged", False) and dev != "cuda":
        _exclude_paged_states(optimizer, tracker)
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

    with tracker:
        for step in range(1, steps + 1):
            state.step = step
            say(f"step {step}/{steps}")
            for _ in range(t.grad_accum):
                state.phase = "forward"
                with tracker.phase_scope("forward"):
                    ids = torch.randint(0, vocab, (t.batch, t.seq), device=built.device)
                    with autocast():
                        loss = model(input_ids=ids, labels=ids).loss  # the ModelOutput (logits) dies here
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


class _LogitsLabel:
    """Label what lm_head and the loss allocate as logits: from lm_head's forward to the end of the model's
    forward, and in backward (the caller sets the label when `hooked`) until the gradient of lm_head's input
    has been computed."""

    def __init__(self, causal_lm: torch.nn.Module, tracker: MemoryTracker) -> None:
        self.tracker = tracker
        self.hooked = False
        head = causal_lm.get_output_embeddings()
        if head is not None:
            tracker._handles.append(head.register_forward_pre_hook(self._pre))
            tracker._handles.append(causal_lm.register_forward_hook(self._post))

    def _pre(self, module: torch.nn.Module, args: tuple) -> None:
        self.hooked = False
        if self.tracker.phase != "forward" or torch._C._current_graph_task_id() != -1:
            return
        self.tracker.label = "logits"
        self.tracker.moment = LOGITS_AND_LOSS
        hidden = args[0] if args else None
        if isinstance(hidden, torch.Tensor) and hidden.requires_grad:
            hidden.register_hook(self._end_of_logits_backward)
            self.hooked = True

    def _post(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        if self.tracker.phase == "forward":
            self.tracker.label = None
            self.tracker.moment = None

    def _end_of_logits_backward(self, grad: torch.Tensor) -> None:
        self.tracker.label = None
        self.tracker.moment = None


def _wrap_checkpointing(model: torch.nn.Module, tracker: MemoryTracker, emu: CudaAutocast | None) -> None:
    """Label a gradient-checkpoint recompute's allocations as activations, and reopen the emulated autocast in
    it (torch.utils.checkpoint restores CUDA autocast itself; it cannot restore an emulation); name the
    recompute's moment ("layer i recompute")."""
    index = {id(layer): i for i, layer in enumerate(decoder_layers(model))}
    for module in model.modules():
        ckpt = module.__dict__.get("_gradient_checkpointing_func")
        if ckpt is not None and not isinstance(ckpt, _RecomputeAware):
            moment = layer_recompute(index[id(module)]) if id(module) in index else "recompute"
            module._gradient_checkpointing_func = _RecomputeAware(ckpt, tracker, emu, moment)


class _RecomputeAware:
    __slots__ = ("ckpt", "emu", "moment", "tracker")

    def __init__(self, ckpt: Callable, tracker: MemoryTracker, emu: CudaAutocast | None, moment: str) -> None:
        self.ckpt, self.tracker, self.emu, self.moment = ckpt, tracker, emu, moment

    def __call__(self, function: Callable, *args: Any, **kwargs: Any) -> Any:
        return self.ckpt(functools.partial(self._run, function), *args, **kwargs)

    def _run(self, function: Callable, *args: Any, **kwargs: Any) -> Any:
        if torch._C._current_graph_task_id() == -1:  # the first forward
            return function(*args, **kwargs)
        region = self.emu.region() if self.emu is not None else contextlib.nullcontext()
        with region, self.tracker.label_scope("activations"), self.tracker.moment_scope(self.moment):
            return function(*args, **kwargs)


def _exclude_paged_states(optimizer: Any, tracker: MemoryTracker) -> None:
    """bitsandbytes pages states of tensors with >= 1e5 elements into CUDA managed memory
    (`get_state_buffer`), which `memory_allocated` never sees; off CUDA it falls back to device tensors: keep
    those out of the count."""

    def get_state_buffer(p: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if p.numel() < 1e5:  # bitsandbytes 0.50 optim/optimizer.py: small tensors are not paged
            return torch.zeros_like(p, dtype=dtype)
        with tracker.excluded():
            buf = torch.zeros_like(p, dtype=dtype)
        buf._vramplan_paged = True  # not `is_paged`: bitsandbytes would prefetch it as CUDA managed memory
        return buf

    optimizer.get_state_buffer = get_state_buffer


def _paged_bytes(optimizer: Any) -> int:
    seen: set[int] = set()
    total = 0
    for st in optimizer.state.values():
        for v in st.values():
            paged = getattr(v, "is_paged", False) or getattr(v, "_vramplan_paged", False)
            if isinstance(v, torch.Tensor) and paged and id(v) not in seen:
                seen.add(id(v))
                total += v.numel() * v.element_size()
    return total


def _param_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(total, trainable) as PEFT counts them (4-bit weights counted unpacked)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
        return int(total), int(trainable)
    seen: dict[int, torch.nn.Parameter] = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in seen.values())
    return total, sum(p.numel() for p in seen.values() if p.requires_grad)


def _cuda_figures() -> CudaFigures:
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


def components(c: CategoryBytes) -> Components:
    """Tracker categories as Breakdown components (the same names, one to one)."""
    return Components(**{name: getattr(c, name) for name in COMPONENTS})


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
