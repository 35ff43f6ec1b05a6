"""Limited replays that start where the limit first matters: the bisection of `replay.limit_bounds` replays one
sequence at several limits, and each of those runs exactly as the replay without a limit up to the first event
whose cudaMalloc would take the reserved bytes past its limit.

Why: with cudaMalloc'd segments (not expandable ones) a limit enters `CachingAllocator` only in `_fits`, asked by
`_alloc_block` before anything changes (a best-fit miss changes nothing; release-and-retry comes after a
failed `_alloc_block`); and `_fits` says yes as long as `reserved + nbytes <= limit`. So a `Cursor` (a replay
with the bisection's lower end as its limit, stopped before the first event that reaches past it) holds the
state from which every limit above that end goes on alike; each limited replay continues from a copy of it
(`replay_from`), and the cursor moves on as the lower end rises. Expandable segments size their address space
from the limit (`device_bytes`), so a replay under them runs from the start (`resumable`).
"""

from __future__ import annotations

import itertools

from collections.abc import Iterable, Sequence

from vramplan.allocator.blocks import AllocatorOutOfMemory, Block, Pool
from vramplan.allocator.model import CachingAllocator
from vramplan.spec.alloc_conf import AllocatorConfig

ALLOC = 0  # as vramplan.allocator.replay's (which imports this module)


class _Reaches(Exception):
    """A cudaMalloc past the cursor's limit: the event where limited replays part from the unlimited one."""


class _StopAtLimit(CachingAllocator):
    def _fits(self, nbytes: int) -> bool:
        if self.limit_bytes is not None and self.reserved + nbytes > self.limit_bytes:
            raise _Reaches
        return True


def resumable(config: AllocatorConfig) -> bool:
    return not config.expandable_segments


class Cursor:
    """The replay of `events` without a limit, stopped before the first event whose cudaMalloc would take the
    reserved bytes past `below` (`advance`): the common start of every replay with a limit above `below`."""

    def __init__(self, events: Sequence, config: AllocatorConfig) -> None:
        self.events = events
        self.allocator = _StopAtLimit(config, None)
        self.live: dict[int, Block] = {}
        self.index = 0

    def advance(self, below: int) -> None:
        self.allocator.limit_bytes = below
        allocator, live, events = self.allocator, self.live, self.events
        malloc, free = allocator.malloc, allocator.free
        index = self.index
        try:
            for index in range(self.index, len(events)):
                op, key, nbytes = events[index]
                if op == ALLOC:
                    if nbytes > 0:
                        live[key] = malloc(nbytes)
                else:
                    block = live.pop(key, None)
                    if block is not None:
                        free(block)
            index = len(events)
        except _Reaches:
            pass  # nothing changed in this event's malloc before `_fits`
        self.index = index

    def copy(self, limit_bytes: int) -> tuple[CachingAllocator, dict[int, Block]]:
        """A plain allocator in the cursor's state, with `limit_bytes` (and, as `replay` makes it, the same
        device size), and the live blocks by event id."""
        source = self.allocator
        allocator = CachingAllocator.__new__(CachingAllocator)
        allocator.__dict__.update(source.__dict__)
        allocator.limit_bytes = limit_bytes
        allocator.device_bytes = limit_bytes
        allocator.segments = list(source.segments)
        copies: dict[int, Block] = {}

        def copied(block: Block | None) -> Block | None:
            if block is None:
                return None
            c = copies.get(id(block))
            if c is None:
                c = copies[id(block)] = Block(block.size, block.ptr, block.small, block.segment)
                c.allocated, c.mapped, c.requested = block.allocated, block.mapped, block.requested
            return c

        live = {key: copied(block) for key, block in self.live.items()}
        for name in ("small_pool", "large_pool"):
            pool: Pool = getattr(source, name)
            new = Pool(pool.small)
            new.free = list(pool.free)
            new.blocks = {key: copied(block) for key, block in pool.blocks.items()}
            new.unmapped = list(pool.unmapped)
            new.unmapped_by_ptr = {ptr: copied(block) for ptr, block in pool.unmapped_by_ptr.items()}
            setattr(allocator, name, new)
        originals = {id(b): b for b in self.live.values()}
        for pool in (source.small_pool, source.large_pool):
            originals.update((id(b), b) for b in pool.blocks.values())
            originals.update((id(b), b) for b in pool.unmapped_by_ptr.values())
        for key, c in list(copies.items()):
            block = originals[key]
            c.prev, c.next = copied(block.prev), copied(block.next)
        return allocator, live


def replay_from(cursor: Cursor, limit_bytes: int) -> tuple[int | None, int]:
    """Replay the cursor's events with `limit_bytes` (above the cursor's limit) from where the cursor stopped:
    the index of the allocation that failed, or None when the sequence ran through (as `replay.replay`), and
    the most bytes reserved at any time.

    A replay that ran through with at most R reserved runs alike at every limit from R to its own: each
    cudaMalloc that fitted took the reserved bytes to at most R, each that did not would have exceeded the
    larger limit too, so `_fits` answers alike (`Probes`)."""
    allocator, live = cursor.copy(limit_bytes)
    return run_events(allocator, live, cursor.events, cursor.index), allocator.max_reserved


class Probes:
    """Whether a sequence runs at a limit, replayed from a `Cursor` that follows the bisection's lower end, or
    known without a replay: a limit between the reserved peak of a replay that ran through and that replay's
    own limit runs (`replay_from`)."""

    def __init__(self, events: Sequence, config: AllocatorConfig) -> None:
        self.cursor = Cursor(events, config)
        self.ran: list[tuple[int, int]] = []  # (reserved peak, limit) of the replays that ran through

    def runs(self, low: int, limit_bytes: int) -> bool:
        """Whether the sequence runs at `limit_bytes` (> `low`, the bisection's lower end: no limit at or
        below it is asked afterwards)."""
        if any(peak <= limit_bytes <= limit for peak, limit in self.ran):
            return True
        self.cursor.advance(low)
        oom_event, peak = replay_from(self.cursor, limit_bytes)
        if oom_event is None:
            self.ran.append((peak, limit_bytes))
        return oom_event is None


def run_events(
    allocator: CachingAllocator, live: dict[int, Block], events: Iterable[tuple[int, int, int]], start: int = 0
) -> int | None:
    """Run `events` (from index `start` of the sequence) through `allocator`, whose live blocks by event key are
    `live`: the index of the allocation that failed, or None when the sequence ran through."""
    malloc, free = allocator.malloc, allocator.free
    for index, (op, key, nbytes) in enumerate(itertools.islice(events, start, None), start):
        if op == ALLOC:
            if nbytes <= 0:
                continue
            try:
                live[key] = malloc(nbytes)
            except AllocatorOutOfMemory:
                return index
        else:
            block = live.pop(key, None)
            if block is not None:
                free(block)
    return None
