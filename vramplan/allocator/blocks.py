"""The caching-allocator model's bookkeeping (`vramplan.allocator.model`): the sizes it rounds and carves
with, its blocks, expandable segments and pools, its out-of-memory error and its counters. Names in comments
are pytorch's `c10/cuda/CUDACachingAllocator.cpp` (commit 001074d25084fdb87a799823e395a50f5ec044d3).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

MiB = 1024**2
MIN_BLOCK_SIZE = 512  # kMinBlockSize
SMALL_SIZE = 1 * MiB  # kSmallSize: largest "small" request
SMALL_BUFFER = 2 * MiB  # kSmallBuffer: small-pool segment, and small-pool expandable page
LARGE_BUFFER = 20 * MiB  # kLargeBuffer: segment for 1–10 MiB requests, large-pool expandable page
MIN_LARGE_ALLOC = 10 * MiB  # kMinLargeAlloc
ROUND_LARGE = 2 * MiB  # kRoundLarge
MAX_NON_SPLIT_ROUNDING = LARGE_BUFFER  # CUDAAllocatorConfig max_non_split_rounding_size default
EXPANDABLE_ADDRESS_SPACE = 1.125  # ExpandableSegment: address space for 1 1/8 the device's memory
UNLIMITED_DEVICE_BYTES = 1 << 46  # address space of an expandable segment when no device size is given


class AllocatorOutOfMemory(Exception):
    """The replay's `torch.OutOfMemoryError`: no segment could be had within the limit, after releasing."""

    def __init__(self, index: int, request_bytes: int, reserved_bytes: int, allocated_bytes: int) -> None:
        super().__init__(
            f"out of memory at event {index}: tried to allocate {request_bytes} B with {reserved_bytes} B "
            f"reserved, {allocated_bytes} B allocated"
        )
        self.index = index
        self.request_bytes = request_bytes


class Block:
    __slots__ = ("allocated", "mapped", "next", "prev", "ptr", "requested", "segment", "size", "small")

    def __init__(self, size: int, ptr: int, small: bool, segment: Segment | None = None) -> None:
        self.size = size
        self.ptr = ptr
        self.small = small
        self.segment = segment  # the expandable segment, or None for a cudaMalloc segment
        self.allocated = False
        self.mapped = True
        self.prev: Block | None = None
        self.next: Block | None = None
        self.requested = 0

    @property
    def is_split(self) -> bool:
        return self.prev is not None or self.next is not None


class Segment:
    """An expandable segment: a range of address space mapped page by page (`ExpandableSegment`)."""

    __slots__ = ("base", "page", "size")

    def __init__(self, base: int, page: int, size: int) -> None:
        self.base, self.page, self.size = base, page, size


KEY_SHIFT = 64  # a free block's order key: size << 64 | address (addresses stay below 2**64)


class Pool:
    """Free blocks ordered by (size, address) (`BlockPool::blocks`; `free` holds their keys `size << KEY_SHIFT |
    address`, sorted: one int compares faster than a tuple; `blocks` the blocks by key) and unmapped ones by address."""

    __slots__ = ("blocks", "free", "small", "unmapped", "unmapped_by_ptr")

    def __init__(self, small: bool) -> None:
        self.small = small
        self.free: list[int] = []
        self.blocks: dict[int, Block] = {}
        self.unmapped: list[int] = []
        self.unmapped_by_ptr: dict[int, Block] = {}

    def insert(self, block: Block) -> None:
        key = block.size << KEY_SHIFT | block.ptr
        bisect.insort(self.free, key)
        self.blocks[key] = block

    def remove(self, block: Block) -> None:
        key = block.size << KEY_SHIFT | block.ptr
        del self.free[bisect.bisect_left(self.free, key)]
        del self.blocks[key]

    def at(self, i: int) -> Block:
        return self.blocks[self.free[i]]

    def insert_unmapped(self, block: Block) -> None:
        bisect.insort(self.unmapped, block.ptr)
        self.unmapped_by_ptr[block.ptr] = block

    def remove_unmapped(self, block: Block) -> None:
        del self.unmapped[bisect.bisect_left(self.unmapped, block.ptr)]
        del self.unmapped_by_ptr[block.ptr]


@dataclass(frozen=True, slots=True)
class AllocatorStats:
    """Peaks and counts of one replay (`torch.cuda.memory_stats()` names)."""

    max_allocated_bytes: int  # max_memory_allocated: blocks handed out, rounded
    max_reserved_bytes: int  # max_memory_reserved: segments (mapped pages) held
    max_requested_bytes: int  # requested_bytes.all.peak: the tensor-level peak
    allocated_bytes: int  # at the end of the replay
    reserved_bytes: int
    num_alloc_retries: int  # release-and-retry rounds
    num_segments: int  # cudaMalloc calls (or page-mapping calls with expandable segments)
