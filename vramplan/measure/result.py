"""What a measured or traced step returns: `MeasureResult` (the Breakdown, the tracker's reading, the CUDA
counters, an out-of-memory error, the allocation sequence for the caching-allocator replay)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vramplan.allocator.replay import AllocatorFigures, AllocatorSummary, allocator_figures, allocator_summary
from vramplan.breakdown import Breakdown
from vramplan.measure.tracked import TrackedPeak
from vramplan.spec.alloc_conf import DEFAULT, AllocatorConfig

Device = Literal["cuda", "cpu", "meta", "fake"]
DEVICES: tuple[str, ...] = ("cuda", "cpu", "meta", "fake")


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
    # the tracked allocation sequence, (ALLOC, id, bytes) / (FREE, id, 0), for `vramplan.allocator.model`;
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
