"""A replay model of PyTorch's CUDA caching allocator: what `max_memory_allocated` and `max_memory_reserved`
become for a given sequence of tensor allocations and frees, and whether it runs within a memory limit.

Source, rule by rule: pytorch/pytorch `c10/cuda/CUDACachingAllocator.cpp` at commit
001074d25084fdb87a799823e395a50f5ec044d3 (the newest copy at hand; the installed torch 2.13 wheel is built from
cf30153c, whose source was not available: the rules below have been stable since torch 2.1, when expandable
segments arrived). Function names below are that file's.

- `round_size`: requests round up to 512 B (`kMinBlockSize`); with `roundup_power2_divisions` d > 1 and a
  request above 512·d bytes, up to the next of d equal steps between two powers of two
  (`roundup_power2_next_division`).
- `get_pool`: rounded sizes up to 1 MiB (`kSmallSize`) use the small pool, larger ones the large pool; blocks
  never move between pools.
- `get_allocation_size`: a new segment (`cudaMalloc`) is 2 MiB (`kSmallBuffer`) for small requests, 20 MiB
  (`kLargeBuffer`) for requests under 10 MiB (`kMinLargeAlloc`), else the request rounded up to 2 MiB.
- `get_free_block`: best fit, the smallest cached free block of the pool at least as large as the request
  (ties: the lower address; `BlockComparatorSize`). With `max_split_size`, a request below it never takes a
  block at or above it, and a request at or above it takes only a block less than 20 MiB
  (`max_non_split_rounding_size`, default `kLargeBuffer`) larger.
- `should_split` / `alloc_found_block`: the block found is split when the remainder is >= 512 B (small pool,
  or expandable segments), or, in the large pool, when the remainder is > 1 MiB and the request is below
  `max_split_size`; the remainder goes back to the pool. `allocated_bytes` counts the whole block handed out
  (rounded size, plus any unsplit remainder).
- `free_block` / `try_merge_blocks`: a freed block merges with its free neighbours of the same segment.
- `malloc` on a miss: `alloc_block` (new segment) → if that fails, `release_available_cached_blocks` (only with
  `max_split_size`: free cached oversize blocks, the smallest one large enough, else the largest ones) and
  retry → `release_cached_blocks` (free every cached block that is a whole segment, both pools) and retry →
  OutOfMemoryError.
- Expandable segments (`Note [Expandable Segments]`): `vramplan.allocator.expandable`.

Not modelled: several streams (`recordStream`, events), CUDA graphs' private pools, `set_per_process_memory_
fraction` and garbage collection, the order of cudaMalloc addresses (segments get increasing addresses, which
only breaks ties in best fit). A replay sees only what the tracker sees: tensor storages, not allocations
inside kernels (cuBLAS workspaces and kernel scratch go through the allocator too, outside the tracker).

Constants, blocks, pools and stats: `vramplan.allocator.blocks`. Pure Python, no torch.
`vramplan.allocator.replay` runs a traced step's allocation sequence through it.
"""

from __future__ import annotations

import bisect

from vramplan.allocator.blocks import (
    KEY_SHIFT,
    LARGE_BUFFER,
    MAX_NON_SPLIT_ROUNDING,
    MIN_BLOCK_SIZE,
    MIN_LARGE_ALLOC,
    ROUND_LARGE,
    SMALL_BUFFER,
    SMALL_SIZE,
    UNLIMITED_DEVICE_BYTES,
    AllocatorOutOfMemory,
    AllocatorStats,
    Block,
    Pool,
    Segment,
)
from vramplan.allocator.expandable import ExpandableSegments
from vramplan.spec.alloc_conf import DEFAULT, AllocatorConfig


class CachingAllocator(ExpandableSegments):
    """One device's caching allocator on the default stream. `limit_bytes`: the memory cudaMalloc can get
    (the card's free memory after the CUDA context); None for no limit."""

    def __init__(
        self, config: AllocatorConfig = DEFAULT, limit_bytes: int | None = None, device_bytes: int | None = None
    ) -> None:
        self.config = config
        self.limit_bytes = limit_bytes
        self.device_bytes = device_bytes or limit_bytes or UNLIMITED_DEVICE_BYTES
        self.small_pool = Pool(small=True)
        self.large_pool = Pool(small=False)
        self.segments: list[Segment] = []
        self._next_address = 1 << 40
        self.allocated = self.reserved = self.requested = 0
        self.max_allocated = self.max_reserved = self.max_requested = 0
        self.num_alloc_retries = 0
        self.num_segments = 0
        self.max_split = config.max_split_size_bytes
        # the common case, written out on the hot path of `malloc` and `free`: 512 B rounding, best fit and
        # splitting without max_split_size's conditions, merging without expandable segments' unmapped blocks
        # (tests/allocator/test_allocator.py holds it to the rule-by-rule path)
        self._plain_rounding = config.roundup_power2_divisions <= 1
        self._plain_fit = self.max_split is None and not config.expandable_segments

    # public interface

    def malloc(self, nbytes: int) -> Block:
        """`DeviceCachingAllocator::malloc`: a block of at least `nbytes` (> 0), or AllocatorOutOfMemory."""
        if self._plain_rounding:
            size = MIN_BLOCK_SIZE if nbytes < MIN_BLOCK_SIZE else (nbytes + MIN_BLOCK_SIZE - 1) & -MIN_BLOCK_SIZE
        else:
            size = self.round_size(nbytes)
        pool = self.small_pool if size <= SMALL_SIZE else self.large_pool
        if self._plain_fit:  # `_get_free_block` and `_alloc_found_block` without expandable segments or
            # max_split_size, written out: the hot path of a replay
            free = pool.free
            i = bisect.bisect_left(free, size << KEY_SHIFT)
            if i < len(free):
                blocks = pool.blocks
                block = blocks.pop(free[i])
                del free[i]
                remaining = block.size - size
                if (remaining >= MIN_BLOCK_SIZE) if pool.small else (remaining > SMALL_SIZE):  # `should_split`
                    rest = block
                    block = Block(size, rest.ptr, rest.small)
                    prev = block.prev = rest.prev
                    if prev is not None:
                        prev.next = block
                    block.next = rest
                    rest.prev = block
                    rest.ptr += size
                    rest.size = remaining
                    key = remaining << KEY_SHIFT | rest.ptr
                    bisect.insort(free, key)
                    blocks[key] = rest
                block.allocated = True
                block.requested = nbytes
                allocated = self.allocated = self.allocated + block.size
                requested = self.requested = self.requested + nbytes
                if allocated > self.max_allocated:
                    self.max_allocated = allocated
                if requested > self.max_requested:
                    self.max_requested = requested
                return block
            block = None
        else:
            block = self._get_free_block(pool, size)
        if block is None:
            block = self._alloc_block(pool, size)
            if block is None and self._release_available_cached_blocks(pool, size):
                block = self._alloc_block(pool, size)
            if block is None:
                self.num_alloc_retries += 1
                self.release_cached_blocks()
                block = self._alloc_block(pool, size)
            if block is None:
                raise AllocatorOutOfMemory(-1, size, self.reserved, self.allocated)
        return self._alloc_found_block(pool, block, size, nbytes)

    def free(self, block: Block) -> None:
        """`DeviceCachingAllocator::free` → `free_block`: back to the pool, merged with free neighbours
        (`try_merge_blocks`; written out without expandable segments, where every block is mapped: the hot path
        of a replay)."""
        block.allocated = False
        self.allocated -= block.size
        self.requested -= block.requested
        pool = self.small_pool if block.small else self.large_pool
        if not self._plain_fit:
            self._try_merge(block, block.prev, pool)
            self._try_merge(block, block.next, pool)
            pool.insert(block)
            return
        free, blocks = pool.free, pool.blocks
        prev = block.prev
        if prev is not None and not prev.allocated:
            key = prev.size << KEY_SHIFT | prev.ptr
            del free[bisect.bisect_left(free, key)]
            del blocks[key]
            block.ptr = prev.ptr
            block.size += prev.size
            block.prev = prev = prev.prev
            if prev is not None:
                prev.next = block
        following = block.next
        if following is not None and not following.allocated:
            key = following.size << KEY_SHIFT | following.ptr
            del free[bisect.bisect_left(free, key)]
            del blocks[key]
            block.size += following.size
            block.next = following = following.next
            if following is not None:
                following.prev = block
        key = block.size << KEY_SHIFT | block.ptr
        bisect.insort(free, key)
        blocks[key] = block

    def empty_cache(self) -> None:
        self.release_cached_blocks()

    def stats(self) -> AllocatorStats:
        return AllocatorStats(
            max_allocated_bytes=self.max_allocated,
            max_reserved_bytes=self.max_reserved,
            max_requested_bytes=self.max_requested,
            allocated_bytes=self.allocated,
            reserved_bytes=self.reserved,
            num_alloc_retries=self.num_alloc_retries,
            num_segments=self.num_segments,
        )

    def round_size(self, size: int) -> int:
        """`round_size` with `roundup_power2_next_division`."""
        if size < MIN_BLOCK_SIZE:
            return MIN_BLOCK_SIZE
        divisions = self.config.roundup_power2_divisions
        if divisions > 1 and size > MIN_BLOCK_SIZE * divisions:
            if size & (size - 1) == 0:
                return size
            floor = 1 << (size.bit_length() - 1)
            step = floor >> (divisions.bit_length() - 1)
            if step == 0:
                return floor << 1
            rounded = size & ~(step - 1)
            return size if rounded == size else rounded + step
        return MIN_BLOCK_SIZE * -(-size // MIN_BLOCK_SIZE)

    # finding and splitting blocks

    def _get_free_block(self, pool: Pool, size: int) -> Block | None:
        i = bisect.bisect_left(pool.free, size << KEY_SHIFT)
        if i == len(pool.free):
            return None
        block = pool.at(i)
        if block.segment is not None:
            # best fit by the size a block can grow to: prefer blocks not followed by unmapped space
            def expandable_size(b: Block) -> int:
                return b.size + (b.next.size if b.next is not None and not b.next.mapped else 0)

            j = i + 1
            while j < len(pool.free) and expandable_size(pool.at(j)) < expandable_size(block):
                block = pool.at(j)
                j += 1
        if self.max_split is not None:
            if size < self.max_split and block.size >= self.max_split:
                return None
            if size >= self.max_split and block.size >= size + MAX_NON_SPLIT_ROUNDING:
                return None
        pool.remove(block)
        return block

    def _should_split(self, block: Block, size: int) -> bool:
        remaining = block.size - size
        if block.small or self.config.expandable_segments:
            return remaining >= MIN_BLOCK_SIZE
        return (self.max_split is None or size < self.max_split) and remaining > SMALL_SIZE

    def _alloc_found_block(self, pool: Pool, block: Block, size: int, nbytes: int) -> Block:
        if self._should_split(block, size):
            remaining = block
            block = Block(size, remaining.ptr, remaining.small, remaining.segment)
            prev = block.prev = remaining.prev
            if prev is not None:
                prev.next = block
            block.next = remaining
            remaining.prev = block
            remaining.ptr += size
            remaining.size -= size
            key = remaining.size << KEY_SHIFT | remaining.ptr
            bisect.insort(pool.free, key)
            pool.blocks[key] = remaining
        block.allocated = True
        block.requested = nbytes
        allocated = self.allocated = self.allocated + block.size
        requested = self.requested = self.requested + nbytes
        if allocated > self.max_allocated:
            self.max_allocated = allocated
        if requested > self.max_requested:
            self.max_requested = requested
        return block

    def _try_merge(self, dst: Block, src: Block | None, pool: Pool) -> int:
        if src is None or src.allocated or dst.mapped != src.mapped:
            return 0
        if dst.prev is src:
            dst.ptr = src.ptr
            dst.prev = src.prev
            if dst.prev is not None:
                dst.prev.next = dst
        else:
            dst.next = src.next
            if dst.next is not None:
                dst.next.prev = dst
        dst.size += src.size
        if src.mapped:
            pool.remove(src)
        else:
            pool.remove_unmapped(src)
        return src.size

    # new memory

    def _fits(self, nbytes: int) -> bool:
        return self.limit_bytes is None or self.reserved + nbytes <= self.limit_bytes

    def _reserve(self, nbytes: int) -> None:
        self.reserved += nbytes
        self.num_segments += 1
        self.max_reserved = max(self.max_reserved, self.reserved)

    def _alloc_block(self, pool: Pool, size: int) -> Block | None:
        if self.config.expandable_segments:
            return self._try_allocate_expandable_block(pool, size)
        alloc_size = allocation_size(size)
        if not self._fits(alloc_size):
            return None
        self._reserve(alloc_size)
        block = Block(alloc_size, self._next_address, pool.small)
        self._next_address += alloc_size + ROUND_LARGE  # a gap: segments never merge
        return block

    def _release_available_cached_blocks(self, pool: Pool, size: int) -> bool:
        if self.max_split is None:
            return False
        key = max(size, self.max_split)
        i = bisect.bisect_left(pool.free, key << KEY_SHIFT)
        if i < len(pool.free):
            self._release_block(pool, pool.at(i))
            return True
        released = 0
        i -= 1
        while i >= 0 and released < key:
            block = pool.at(i)
            if block.size < self.max_split:
                break
            released += block.size
            self._release_block(pool, block)
            i -= 1
        return released >= key

    def release_cached_blocks(self) -> None:
        """`release_cached_blocks` → `release_blocks` on both pools: free whole cached segments; with
        expandable segments, unmap the free pages."""
        for pool in (self.large_pool, self.small_pool):
            to_unmap = []
            for key in list(pool.free):
                block = pool.blocks[key]
                if block.segment is not None:
                    to_unmap.append(block)
                elif not block.is_split:
                    self._release_block(pool, block)
            for block in to_unmap:
                self._unmap_block(pool, block)
                if not block.mapped and not block.is_split:
                    pool.remove_unmapped(block)
                    self.segments.remove(block.segment)

    def _release_block(self, pool: Pool, block: Block) -> None:
        pool.remove(block)
        self.reserved -= block.size


def allocation_size(size: int) -> int:
    """`get_allocation_size`: the segment cudaMalloc'd for a rounded request that found no cached block."""
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return ROUND_LARGE * -(-size // ROUND_LARGE)
