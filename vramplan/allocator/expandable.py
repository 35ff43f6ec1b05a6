"""The caching allocator's expandable segments (`PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`), as the
part of `CachingAllocator` (`vramplan.allocator.model`) that maps and unmaps pages instead of cudaMalloc'ing
segments. Source: pytorch/pytorch `c10/cuda/CUDACachingAllocator.cpp`, the commit `model.py` names.

Rules (`Note [Expandable Segments]`, `find_expandable_block`, `map_block`, `try_allocate_expandable_block`,
`unmap_block`): one segment per pool with address space for 1⅛ of the card, mapped in 2 MiB pages (small pool)
or 20 MiB pages (large pool). A miss maps just enough pages at the lowest address where free + unmapped space
fits the request (usually the segment's end, merging with the free block before it); best fit prefers blocks
that cannot grow into unmapped space; split whenever the remainder is >= 512 B; on a failed map, free pages
are unmapped and the map retried.
"""

from __future__ import annotations

from vramplan.allocator.blocks import EXPANDABLE_ADDRESS_SPACE, LARGE_BUFFER, SMALL_BUFFER, Block, Pool, Segment


class ExpandableSegments:
    """`CachingAllocator`'s expandable-segment methods; they use its reservation (`_fits`, `_reserve`, `reserved`),
    merging (`_try_merge`), segments and address counter."""

    __slots__ = ()

    def _find_expandable_block(self, pool: Pool, size: int) -> Block:
        def allocatable(b: Block | None) -> bool:
            return b is not None and not b.allocated

        for ptr in pool.unmapped:
            candidate = pool.unmapped_by_ptr[ptr]
            if allocatable(candidate.prev):
                candidate = candidate.prev
            room, b = 0, candidate
            while room < size and allocatable(b):
                room += b.size
                b = b.next
            if room >= size:
                return candidate
        page = SMALL_BUFFER if pool.small else LARGE_BUFFER
        pages = -(-int(self.device_bytes * EXPANDABLE_ADDRESS_SPACE) // page)
        segment = Segment(self._next_address, page, pages * page)
        self._next_address += segment.size + page
        self.segments.append(segment)
        block = Block(segment.size, segment.base, pool.small, segment)
        block.mapped = False
        pool.insert_unmapped(block)
        return block

    def _map_block(self, pool: Pool, block: Block, size: int) -> bool:
        segment = block.segment
        assert segment is not None
        assert not block.mapped
        offset = block.ptr - segment.base
        mapped = (-(-(offset + size) // segment.page) - offset // segment.page) * segment.page
        if not self._fits(mapped):
            return False
        pool.remove_unmapped(block)
        block.mapped = True
        if mapped < block.size:
            remaining = Block(block.size - mapped, block.ptr + mapped, block.small, segment)
            remaining.mapped = False
            remaining.prev, remaining.next = block, block.next
            if block.next is not None:
                block.next.prev = remaining
            block.next = remaining
            pool.insert_unmapped(remaining)
            block.size = mapped
        self._try_merge(block, block.prev, pool)
        self._try_merge(block, block.next, pool)
        pool.insert(block)
        self._reserve(mapped)
        return True

    def _try_allocate_expandable_block(self, pool: Pool, size: int) -> Block | None:
        candidate = self._find_expandable_block(pool, size)
        if not candidate.mapped and not self._map_block(pool, candidate, min(candidate.size, size)):
            return None
        while candidate.size < size:
            following = candidate.next
            assert following is not None
            if not self._map_block(pool, following, min(size - candidate.size, following.size)):
                return None
            candidate = following  # map_block merged the free candidate into it
        pool.remove(candidate)
        return candidate

    def _unmap_block(self, pool: Pool, block: Block) -> None:
        segment = block.segment
        assert segment is not None
        offset = block.ptr - segment.base
        begin = -(-offset // segment.page)
        end = (offset + block.size) // segment.page
        if begin >= end:
            return
        pool.remove(block)
        start = segment.base + begin * segment.page
        length = (end - begin) * segment.page
        before = start - block.ptr
        if before > 0:
            head = Block(before, block.ptr, block.small, segment)
            head.prev, head.next = block.prev, block
            if block.prev is not None:
                block.prev.next = head
            block.prev = head
            pool.insert(head)
        after = block.size - before - length
        if after > 0:
            tail = Block(after, start + length, block.small, segment)
            tail.prev, tail.next = block, block.next
            if block.next is not None:
                block.next.prev = tail
            block.next = tail
            pool.insert(tail)
        block.ptr, block.size, block.mapped = start, length, False
        self._try_merge(block, block.prev, pool)
        self._try_merge(block, block.next, pool)
        pool.insert_unmapped(block)
        self.reserved -= length
