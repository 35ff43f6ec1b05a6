"""Replays of a traced step's allocation sequence through the caching-allocator model (`allocator.py`): the
peaks with room to spare, the least memory on which the step runs, and the load variants.

Events are `(ALLOC, id, bytes)` when a storage appears and `(FREE, id, 0)` when it dies, as
`MemoryTracker(record_events=True)` records them. Pure Python, no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from vramplan.allocator.blocks import ROUND_LARGE, AllocatorStats
from vramplan.allocator.model import CachingAllocator
from vramplan.allocator.resume import Probes, resumable, run_events
from vramplan.spec.alloc_conf import DEFAULT, EXPANDABLE, AllocatorConfig

ALLOC, FREE = 0, 1
Event = tuple[int, int, int]  # (ALLOC, id, bytes) or (FREE, id, 0)


@dataclass(frozen=True, slots=True)
class Replay:
    """One replay of an event sequence: the allocator's peaks, or where it ran out of memory."""

    config: AllocatorConfig
    limit_bytes: int | None
    stats: AllocatorStats
    oom_event: int | None  # index of the allocation that failed, None when the sequence ran through

    @property
    def ok(self) -> bool:
        return self.oom_event is None


def replay(
    events: Iterable[Event],
    config: AllocatorConfig = DEFAULT,
    limit_bytes: int | None = None,
    device_bytes: int | None = None,
) -> Replay:
    """Run `events` through a fresh allocator. Zero-byte allocations take no block (`allocate`: `size != 0`)."""
    allocator = CachingAllocator(config, limit_bytes, device_bytes)
    failed = run_events(allocator, {}, events)
    return Replay(config, limit_bytes, allocator.stats(), failed)


def with_load_warmup(events: Sequence[Event], load_events: int | None = None) -> list[Event]:
    """`events` preceded by transformers' `caching_allocator_warmup` (5.24 modeling_utils.py): before
    `from_pretrained(device_map=...)` loads the weights it allocates and frees one tensor of the model's byte
    count, so the weights are split off one cached segment instead of each taking its own. The model's bytes are
    those of the first `load_events` events (`MeasureResult.load_events`: what was registered before the first
    step), or of the leading run of allocations; the real load (bitsandbytes quantizes each weight from a bf16
    copy on the device) is not traced.
    """
    if load_events is None:
        load_events = next((i for i, (op, _, _) in enumerate(events) if op == FREE), len(events))
    load_bytes = sum(nbytes for op, _, nbytes in events[:load_events] if op == ALLOC)
    warmup_id = min((key for _, key, _ in events), default=0) - 1
    return [(ALLOC, warmup_id, load_bytes), (FREE, warmup_id, 0), *events]


def smallest_limit(
    events: Sequence[Event],
    config: AllocatorConfig = DEFAULT,
    unlimited: Replay | None = None,
    granularity: int = ROUND_LARGE,
    outcomes: dict[int, bool] | None = None,
) -> int:
    """The least memory (to `granularity`) on which the sequence runs: bisection between the largest request
    peak and the unlimited reserved peak, replaying with release-and-retry at each limit.

    Success is not strictly monotonic in the limit (a tighter limit changes which segments are released and
    so the layout); bisection returns a limit that runs, with every tested limit below it failing.
    `outcomes`: whether the sequence ran at each limit already replayed (read and filled: a bisection of the
    same sequence resumes where another stopped, `limit_bounds`).
    """
    return limit_bounds(events, config, unlimited, granularity, outcomes)[1]


def limit_bounds(
    events: Sequence[Event],
    config: AllocatorConfig = DEFAULT,
    unlimited: Replay | None = None,
    granularity: int = ROUND_LARGE,
    outcomes: dict[int, bool] | None = None,
    decided: Callable[[int, int], bool] | None = None,
) -> tuple[int, int]:
    """`smallest_limit`'s bisection as (low, high): its result is `high`, and lies in (low, high] at every
    step. `decided(low, high)`: stop as soon as it says the interval is narrow enough for the caller (the
    bisection is the same up to there: a later call with the same `outcomes` resumes it)."""
    unlimited = unlimited or replay(events, config)
    outcomes = {} if outcomes is None else outcomes
    high = unlimited.stats.max_reserved_bytes
    low = unlimited.stats.max_requested_bytes - 1  # below the tensor peak nothing runs
    probes = None  # every replay at a limit above `low` starts alike, some are known (`resume.py`)
    while high - low > granularity:
        if decided is not None and decided(low, high):
            break
        middle = (low + high) // 2 // granularity * granularity
        if middle <= low:
            middle = low + granularity
        if middle >= high:
            break
        if middle not in outcomes:
            if resumable(config):
                probes = probes or Probes(events, config)
                outcomes[middle] = probes.runs(low, middle)
            else:
                outcomes[middle] = replay(events, config, limit_bytes=middle).ok
        if outcomes[middle]:
            high = middle
        else:
            low = middle
    return low, high


@dataclass(frozen=True, slots=True)
class AllocatorFigures:
    """What the caching allocator makes of one traced step under one setting (bytes).

    `max_allocated_bytes` / `max_reserved_bytes`: `torch.cuda.max_memory_allocated()` / `max_memory_reserved()`
    on a card with room to spare; `min_limit_bytes`: the least memory the allocator must be able to get for the
    step to run (release-and-retry included), i.e. the card's memory minus the CUDA context and anything else.
    """

    config: AllocatorConfig
    tensor_peak_bytes: int
    max_allocated_bytes: int
    max_reserved_bytes: int
    min_limit_bytes: int
    num_segments: int

    def share(self, nbytes: int) -> float:
        """`nbytes` above the tensor peak, as a fraction of it."""
        return nbytes / self.tensor_peak_bytes - 1 if self.tensor_peak_bytes else 0.0


def allocator_figures(
    events: Sequence[Event], config: AllocatorConfig = DEFAULT, load_events: int | None = None
) -> AllocatorFigures:
    """Replay `events` without a limit, then bisect for the least limit on which they run. `load_events`: model
    the weights loaded by `from_pretrained(device_map=...)` (`with_load_warmup`), the first `load_events` events
    being the load; None: allocated one by one as they were registered (`model.to("cuda")`, or the harness's own
    build)."""
    if load_events is not None:
        events = with_load_warmup(events, load_events)
    unlimited = replay(events, config)
    s = unlimited.stats
    return AllocatorFigures(
        config=config,
        tensor_peak_bytes=s.max_requested_bytes,
        max_allocated_bytes=s.max_allocated_bytes,
        max_reserved_bytes=s.max_reserved_bytes,
        min_limit_bytes=smallest_limit(events, config, unlimited) if events else 0,
        num_segments=s.num_segments,
    )


@dataclass(frozen=True, slots=True)
class AllocatorSummary:
    """A traced step replayed under torch's defaults (weights allocated one by one, as the harness builds them
    and as `model.to("cuda")` does; and loaded by `from_pretrained(device_map=...)`) and under
    expandable_segments:True."""

    default: AllocatorFigures
    default_from_pretrained: AllocatorFigures
    expandable: AllocatorFigures

    def rows(self) -> tuple[tuple[str, AllocatorFigures], ...]:
        return (
            ("default", self.default),
            ("default, from_pretrained(device_map) load", self.default_from_pretrained),
            ("expandable_segments:True", self.expandable),
        )


def allocator_summary(events: Sequence[Event], load_events: int) -> AllocatorSummary:
    """The three replays of `AllocatorSummary` (a few seconds for a 7B step)."""
    return AllocatorSummary(
        default=allocator_figures(events, DEFAULT),
        default_from_pretrained=allocator_figures(events, DEFAULT, load_events),
        expandable=allocator_figures(events, EXPANDABLE),
    )
