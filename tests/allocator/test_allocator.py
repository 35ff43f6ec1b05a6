"""The caching-allocator replay, driven through the behaviours c10/cuda/CUDACachingAllocator.cpp documents.

Each expected figure is derived by hand from the rule named in the test (see vramplan/allocator/model.py for
the source commit), not read back from the model.
"""

from __future__ import annotations

import contextlib

import pytest

from vramplan.allocator.blocks import KEY_SHIFT
from vramplan.allocator.model import CachingAllocator, allocation_size
from vramplan.allocator.replay import ALLOC, FREE, replay, smallest_limit
from vramplan.errors import VramplanError
from vramplan.spec.alloc_conf import DEFAULT, EXPANDABLE, AllocatorConfig, parse_alloc_conf

KiB, MiB = 1024, 1024**2


def events(*steps: tuple[str, int, int]) -> list[tuple[int, int, int]]:
    """("a", id, bytes) / ("f", id, 0) → replay events."""
    return [(ALLOC if op == "a" else FREE, key, nbytes) for op, key, nbytes in steps]


# rounding and segment sizes


def test_round_size_512_and_power2_divisions():
    a = CachingAllocator()
    assert a.round_size(1) == 512  # kMinBlockSize
    assert a.round_size(513) == 2 * 512
    assert a.round_size(10 * MiB + 1) == 10 * MiB + 512
    four = CachingAllocator(AllocatorConfig(roundup_power2_divisions=4))
    # 1200 MiB lies in [1024, 2048) MiB, four steps of 256 MiB: 1024, 1280, 1536, 1792 → 1280 MiB (the source's
    # own example, in MiB so that it is above 512 B · 4 where round_size applies the divisions)
    assert four.round_size(1200 * MiB) == 1280 * MiB
    assert four.round_size(1024 * MiB) == 1024 * MiB  # a power of two stays
    assert four.round_size(1000) == 1024  # at most 512 B · 4: only the 512 B rounding


def test_allocation_size_per_request_class():
    assert allocation_size(512) == 2 * MiB  # small: kSmallBuffer
    assert allocation_size(1 * MiB) == 2 * MiB  # kSmallSize itself is small
    assert allocation_size(1 * MiB + 512) == 20 * MiB  # 1–10 MiB: kLargeBuffer
    assert allocation_size(10 * MiB) == 10 * MiB  # from kMinLargeAlloc: rounded to 2 MiB
    assert allocation_size(11 * MiB) == 12 * MiB


def test_small_requests_pack_into_one_2mib_segment():
    r = replay(events(("a", 1, 1000), ("a", 2, 1000), ("a", 3, 100 * KiB)))
    assert r.stats.max_reserved_bytes == 2 * MiB
    assert r.stats.max_allocated_bytes == 1024 + 1024 + 100 * KiB  # 512-rounded blocks, split off one segment
    assert r.stats.max_requested_bytes == 1000 + 1000 + 100 * KiB
    assert r.stats.num_segments == 1


def test_small_and_large_pools_never_share_a_segment():
    # a 1 MiB request is small; the 20 MiB segment of a 3 MiB request stays out of its reach
    r = replay(events(("a", 1, 3 * MiB), ("a", 2, 1 * MiB)))
    assert r.stats.max_reserved_bytes == 20 * MiB + 2 * MiB


# split, merge, best fit


def test_a_split_serves_the_next_request_from_the_remainder():
    # 3 MiB → a 20 MiB segment split into 3 MiB + 17 MiB (remainder > 1 MiB); 5 MiB fits the 17 MiB remainder
    r = replay(events(("a", 1, 3 * MiB), ("a", 2, 5 * MiB)))
    assert r.stats.max_reserved_bytes == 20 * MiB
    assert r.stats.max_allocated_bytes == 3 * MiB + 5 * MiB
    assert r.stats.num_segments == 1


def test_no_split_when_the_large_remainder_is_at_most_1mib():
    # 11.5 MiB → a 12 MiB segment; the 0.5 MiB remainder is not split off, and allocated counts the whole block
    r = replay(events(("a", 1, 11 * MiB + 512 * KiB)))
    assert r.stats.max_allocated_bytes == 12 * MiB
    assert r.stats.max_requested_bytes == 11 * MiB + 512 * KiB


def test_freed_neighbours_merge_back_into_the_whole_segment():
    # 3 + 5 MiB split one 20 MiB segment; once both are freed it is one 20 MiB block again, so an 18 MiB request
    # (≥ 10 MiB: rounded to 512 B only) fits it without a new segment
    merged = replay(events(("a", 1, 3 * MiB), ("a", 2, 5 * MiB), ("f", 1, 0), ("f", 2, 0), ("a", 3, 18 * MiB)))
    assert merged.stats.max_reserved_bytes == 20 * MiB
    # with the 5 MiB block still alive the free pieces are 3 and 12 MiB: 18 MiB needs its own segment
    apart = replay(events(("a", 1, 3 * MiB), ("a", 2, 5 * MiB), ("f", 1, 0), ("a", 3, 18 * MiB)))
    assert apart.stats.max_reserved_bytes == 20 * MiB + 18 * MiB


def test_best_fit_takes_the_smallest_block_that_fits():
    # cached: a 40 MiB and a 24 MiB segment. 22 MiB takes the 24 MiB one (2 MiB remainder split off), so a
    # following 38 MiB request still finds the 40 MiB block: nothing new is reserved
    r = replay(
        events(
            ("a", 1, 40 * MiB),
            ("a", 2, 24 * MiB),
            ("f", 1, 0),
            ("f", 2, 0),
            ("a", 3, 22 * MiB),
            ("a", 4, 38 * MiB),
        )
    )
    assert r.stats.max_reserved_bytes == 40 * MiB + 24 * MiB
    assert r.stats.num_segments == 2


# oversize blocks (max_split_size_mb)


def test_oversize_blocks_are_not_split_for_small_requests():
    steps = events(("a", 1, 40 * MiB), ("f", 1, 0), ("a", 2, 8 * MiB))
    # default: 8 MiB takes the cached 40 MiB block (best fit) and splits it
    assert replay(steps).stats.max_reserved_bytes == 40 * MiB
    # max_split_size 32 MiB: a request under it never takes a block at or above it → a new 20 MiB segment
    capped = AllocatorConfig(max_split_size_bytes=32 * MiB)
    assert replay(steps, capped).stats.max_reserved_bytes == 40 * MiB + 20 * MiB


def test_oversize_block_serves_a_large_request_within_20mib_unsplit():
    capped = AllocatorConfig(max_split_size_bytes=32 * MiB)
    # 36 MiB ≥ max_split_size takes the 40 MiB block (< 36 + 20 MiB) and does not split it: allocated = 40 MiB
    r = replay(events(("a", 1, 40 * MiB), ("f", 1, 0), ("a", 2, 36 * MiB)), capped)
    assert (r.stats.max_reserved_bytes, r.stats.max_allocated_bytes) == (40 * MiB, 40 * MiB)
    # 60 MiB cannot use it (60 > 40) and 100 MiB cached is too large for a 70 MiB request (≥ 70 + 20 MiB? no: 100
    # ≥ 90) → new segment
    r = replay(events(("a", 1, 100 * MiB), ("f", 1, 0), ("a", 2, 70 * MiB)), capped)
    assert r.stats.max_reserved_bytes == 100 * MiB + 70 * MiB


# release and retry before OOM


def test_release_cached_segments_and_retry_before_oom():
    # limit 64 MiB: a cached free 40 MiB segment + a new 50 MiB one would be 90 MiB; the allocator frees the
    # whole cached segment and retries: 50 MiB
    steps = events(("a", 1, 40 * MiB), ("f", 1, 0), ("a", 2, 50 * MiB))
    r = replay(steps, limit_bytes=64 * MiB)
    assert r.ok
    assert r.stats.num_alloc_retries == 1
    assert r.stats.reserved_bytes == 50 * MiB
    assert replay(steps).stats.max_reserved_bytes == 90 * MiB  # no limit: nothing is released


def test_split_segments_are_not_released():
    # the 17 MiB free remainder of a split 20 MiB segment stays reserved while its 3 MiB block lives, so a
    # 50 MiB request after a cached 30 MiB segment needs 20 + 50 = 70 MiB
    steps = events(("a", 1, 3 * MiB), ("a", 2, 30 * MiB), ("f", 2, 0), ("a", 3, 50 * MiB))
    assert not replay(steps, limit_bytes=68 * MiB).ok
    assert replay(steps, limit_bytes=70 * MiB).ok


def test_out_of_memory_names_the_failing_event():
    r = replay(events(("a", 1, 40 * MiB), ("a", 2, 30 * MiB)), limit_bytes=64 * MiB)
    assert r.oom_event == 1


def test_smallest_limit_is_below_the_unlimited_reserved_peak():
    steps = events(("a", 1, 40 * MiB), ("f", 1, 0), ("a", 2, 50 * MiB))
    # unlimited: 90 MiB reserved; at 50 MiB it runs by releasing the cached 40 MiB segment; 48 MiB cannot hold 50
    assert smallest_limit(steps) == 50 * MiB


def test_zero_byte_storages_take_no_block():
    r = replay(events(("a", 1, 0), ("f", 1, 0)))
    assert r.stats.max_reserved_bytes == 0


# expandable segments


def test_expandable_segment_grows_in_20mib_pages_and_stays_one_block():
    # 3 MiB maps one 20 MiB page; 30 MiB: the 17 MiB free tail plus one more page (17 + 20 ≥ 30) → 40 MiB.
    # Without expandable segments: 20 MiB + a 30 MiB segment.
    steps = events(("a", 1, 3 * MiB), ("a", 2, 30 * MiB))
    assert replay(steps, EXPANDABLE).stats.max_reserved_bytes == 40 * MiB
    assert replay(steps, DEFAULT).stats.max_reserved_bytes == 50 * MiB


def test_expandable_small_pool_maps_2mib_pages():
    r = replay(events(("a", 1, 1000), ("a", 2, 1 * MiB)), EXPANDABLE)
    assert r.stats.max_reserved_bytes == 2 * MiB  # 1024 B + 1 MiB: one 2 MiB page
    r = replay(events(("a", 1, 1000), ("a", 2, 1 * MiB), ("a", 3, 1 * MiB)), EXPANDABLE)
    assert r.stats.max_reserved_bytes == 2 * MiB + 2 * MiB  # 1024 B + 2 MiB > 2 MiB: a second page


def test_expandable_reuses_a_freed_range_and_extends_it():
    # 30 MiB (two pages, 40 MiB), freed: one free 40 MiB mapped block. 50 MiB: the block plus one more page.
    # Without expandable segments a new 50 MiB segment is added to the cached 30 MiB one.
    steps = events(("a", 1, 30 * MiB), ("f", 1, 0), ("a", 2, 50 * MiB))
    assert replay(steps, EXPANDABLE).stats.max_reserved_bytes == 60 * MiB
    assert replay(steps, DEFAULT).stats.max_reserved_bytes == 30 * MiB + 50 * MiB


def test_expandable_unmaps_free_pages_and_retries():
    # 50 MiB maps three pages (0–60 MiB); 5 MiB sits at 50–55; freeing the 50 MiB leaves 0–50 free. 60 MiB
    # needs pages at the end (55 MiB more → three pages, 120 MiB). Limit 80 MiB: the retry unmaps the two free
    # whole pages 0–40 (reserved 20 MiB) and maps three at the end: 80 MiB. At 70 MiB it cannot.
    steps = events(("a", 1, 50 * MiB), ("a", 2, 5 * MiB), ("f", 1, 0), ("a", 3, 60 * MiB))
    r = replay(steps, EXPANDABLE, limit_bytes=80 * MiB)
    assert r.ok
    assert r.stats.num_alloc_retries == 1
    assert r.stats.reserved_bytes == 80 * MiB
    assert not replay(steps, EXPANDABLE, limit_bytes=70 * MiB).ok


# PYTORCH_CUDA_ALLOC_CONF


def test_parse_alloc_conf():
    assert parse_alloc_conf(None) == DEFAULT
    assert parse_alloc_conf("expandable_segments:True") == EXPANDABLE
    c = parse_alloc_conf("max_split_size_mb:128, roundup_power2_divisions:4,garbage_collection_threshold:0.6")
    assert (c.max_split_size_bytes, c.roundup_power2_divisions) == (128 * MiB, 4)
    assert c.text == "max_split_size_mb:128,roundup_power2_divisions:4"


@pytest.mark.parametrize(
    "text", ["expandable_segments:yes", "max_split_size_mb:1", "roundup_power2_divisions:3", "foo:1", "junk"]
)
def test_parse_alloc_conf_rejects(text):
    with pytest.raises(VramplanError, match="--alloc-conf"):
        parse_alloc_conf(text)


# the tracker's event log


@pytest.fixture(scope="module")
def tiny_llama_events():
    from tests.conftest import TINY_CONFIGS
    from vramplan.measure.harness import run_step
    from vramplan.spec import model_spec_from_config, resolve_train

    m = model_spec_from_config(TINY_CONFIGS["llama"], "tiny-llama")
    return run_step(m, resolve_train(m, method="lora", seq=32, batch=2), device="cpu", steps=2)


def test_tracker_records_allocations_frees_and_resizes():
    import torch

    from vramplan.measure.tracker import MemoryTracker

    tracker = MemoryTracker(device_type="cpu", record_events=True)
    with tracker:
        x = torch.empty(3 * MiB, dtype=torch.uint8)
        y = torch.empty(5 * MiB, dtype=torch.uint8)
        del x
        y.resize_(6 * MiB)  # a new 6 MiB storage, then the 5 MiB one freed (resize_bytes_cuda's order)
    assert tracker.events is not None
    kinds = [(op, nbytes) for op, _, nbytes in tracker.events]
    assert kinds == [(ALLOC, 3 * MiB), (ALLOC, 5 * MiB), (FREE, 0), (ALLOC, 6 * MiB), (FREE, 0)]
    ids = [key for _, key, _ in tracker.events]
    assert ids[2] == ids[0]  # the frees name the storages allocated first
    assert ids[4] == ids[1]
    r = replay(tracker.events)
    # 3 and 5 MiB split one 20 MiB segment; 6 MiB does not fit the freed 3 MiB block, best fit takes the 12 MiB
    # remainder; at most 5 + 6 MiB are alive at once (the resize's new storage before the old one is freed)
    assert r.stats.max_requested_bytes == 5 * MiB + 6 * MiB
    assert r.stats.max_reserved_bytes == 20 * MiB
    del y


def test_tracker_keeps_no_events_unless_asked():
    from vramplan.measure.tracker import MemoryTracker

    assert MemoryTracker().events is None


def test_tiny_llama_step_replays_to_the_tracked_peak(tiny_llama_events):
    r = tiny_llama_events
    figures = replay(r.events).stats
    assert figures.max_requested_bytes == r.tracked.peak_bytes  # the event log carries the tracker's peak
    assert r.tracked.peak_bytes <= figures.max_allocated_bytes <= figures.max_reserved_bytes
    # the load: every registered tensor (weights, adapters) before the first step, allocations only
    assert r.load_events > 0
    assert all(op == ALLOC for op, _, _ in r.events[: r.load_events])
    warm = r.allocator_figures(load_warmup=True)
    assert warm.tensor_peak_bytes == r.tracked.peak_bytes


@pytest.mark.slow
def test_stored_replays_are_current():
    """A grid row traced and replayed again gives the figures stored in tests/data/allocator/grid.jsonl (the
    replay is deterministic; a change in the stack or the harness shows here first)."""
    import json
    from pathlib import Path

    from tests.oracle.allocator_grid import label_of
    from vramplan.allocator.replay import allocator_figures
    from vramplan.measure.harness import simulate
    from vramplan.sources.profiles import load_model
    from vramplan.spec import resolve_train

    path = Path(__file__).resolve().parents[1] / "data" / "allocator" / "grid.jsonl"
    stored = {r["label"]: r for r in map(json.loads, path.read_text().splitlines())}
    name, opts = "llama-3.2-1b", {"method": "qlora", "grad_ckpt": True, "batch": 1, "seq": 512}
    m = load_model(name)
    r = simulate(m, resolve_train(m, **opts), steps=2)
    row = stored[label_of(name, opts)]
    assert r.breakdown.peak_bytes == row["tensor_peak_bytes"]
    for config in (DEFAULT, EXPANDABLE):
        f = allocator_figures(r.events, config)
        want = row["replay"][config.label]
        assert (f.max_allocated_bytes, f.max_reserved_bytes, f.min_limit_bytes) == (
            want["max_allocated_bytes"],
            want["max_reserved_bytes"],
            want["min_limit_bytes"],
        )


@pytest.mark.slow
def test_load_warmup_packs_the_weights_into_one_segment():
    from vramplan.allocator.replay import with_load_warmup

    # three 8 MiB weights (1–10 MiB requests): one by one they take a 20 MiB segment for the first two (8 + 8,
    # 4 MiB left) and a second for the third; after a 24 MiB warmup allocation is freed, all three split it
    weights = events(("a", 1, 8 * MiB), ("a", 2, 8 * MiB), ("a", 3, 8 * MiB), ("a", 4, 30 * MiB), ("f", 4, 0))
    assert replay(weights).stats.max_reserved_bytes == 20 * MiB + 20 * MiB + 30 * MiB
    warm = with_load_warmup(weights)
    assert warm[0] == (ALLOC, -1 + min(k for _, k, _ in weights), 3 * 8 * MiB + 30 * MiB)  # the leading run
    # warmup: one 54 MiB segment, freed; the weights and the 30 MiB tensor split it exactly
    assert replay(warm).stats.max_reserved_bytes == 54 * MiB


# invariants over random sequences (hypothesis)

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from vramplan.allocator.model import AllocatorOutOfMemory  # noqa: E402

_SIZES = st.one_of(
    st.integers(1, 1 * MiB),  # small pool
    st.integers(1 * MiB + 1, 10 * MiB),  # 20 MiB segments
    st.integers(10 * MiB, 300 * MiB),  # own segments
)
_CONFIGS = st.sampled_from([DEFAULT, EXPANDABLE, AllocatorConfig(max_split_size_bytes=64 * MiB)])


def _blocks(allocator: CachingAllocator, live: dict) -> list:
    """Every block: live ones, cached free ones and unmapped ones, by address."""
    blocks = list(live.values())
    for pool in (allocator.small_pool, allocator.large_pool):
        blocks += list(pool.blocks.values()) + list(pool.unmapped_by_ptr.values())
    return sorted(blocks, key=lambda b: b.ptr)


def _check_pool_keys(allocator: CachingAllocator) -> None:
    """Each pool's best-fit order: its keys sorted, one per free block, each the block's (size, address)."""
    for pool in (allocator.small_pool, allocator.large_pool):
        assert pool.free == sorted(pool.free)
        assert set(pool.free) == set(pool.blocks)
        assert len(pool.free) == len(pool.blocks)
        for key, block in pool.blocks.items():
            assert (key >> KEY_SHIFT, key & ((1 << KEY_SHIFT) - 1)) == (block.size, block.ptr)
            assert not block.allocated
            assert block.mapped
            assert block.small == pool.small


def _check(allocator: CachingAllocator, live: dict) -> None:
    _check_pool_keys(allocator)
    blocks = _blocks(allocator, live)
    assert len({b.ptr for b in blocks}) == len(blocks)  # no block twice
    # reserved is exactly the mapped blocks; allocated exactly the live ones
    assert allocator.reserved == sum(b.size for b in blocks if b.mapped)
    assert allocator.allocated == sum(b.size for b in live.values())
    for b in blocks:
        if b.next is not None:
            assert b.next.prev is b
            assert b.ptr + b.size == b.next.ptr  # neighbours are contiguous
            # two free neighbours of the same kind would have merged
            assert b.allocated or b.next.allocated or b.mapped != b.next.mapped


@settings(max_examples=60, deadline=None)
@given(
    config=_CONFIGS,
    steps=st.lists(st.tuples(st.booleans(), _SIZES, st.integers(0, 30)), min_size=1, max_size=60),
    limit_mib=st.one_of(st.none(), st.integers(100, 2000)),
)
def test_block_bookkeeping_holds_on_random_sequences(config, steps, limit_mib):
    limit = None if limit_mib is None else limit_mib * MiB
    allocator = CachingAllocator(config, limit_bytes=limit, device_bytes=4096 * MiB)
    live: dict = {}
    for key, (alloc, nbytes, victim) in enumerate(steps):
        if alloc or not live:
            with contextlib.suppress(AllocatorOutOfMemory):  # a refused request leaves the state consistent too
                live[key] = allocator.malloc(nbytes)
        else:
            allocator.free(live.pop(sorted(live)[victim % len(live)]))
        _check(allocator, live)
        assert allocator.requested <= allocator.allocated <= allocator.reserved
        assert limit is None or allocator.reserved <= limit
    for key in list(live):
        allocator.free(live.pop(key))
    allocator.release_cached_blocks()
    _check(allocator, live)
    assert allocator.reserved == 0  # everything freed and released: every segment whole, every page free


def test_the_allocator_package_is_pure_python():
    """`vramplan.allocator` left `measure` so the estimator can replay: importing it loads no torch and nothing
    of the harness (a fresh interpreter, as `vramplan estimate` starts)."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "import vramplan.allocator.replay, vramplan.allocator.model\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'torch' or m.startswith('vramplan.measure'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(st.tuples(st.booleans(), _SIZES, st.integers(0, 30)), min_size=1, max_size=80),
    limit_mib=st.one_of(st.none(), st.integers(100, 2000)),
)
def test_the_written_out_hot_path_equals_the_rule_by_rule_one(steps, limit_mib):
    """Under torch's defaults `malloc` and `free` take a written-out path (rounding, best fit, split, merge in
    one function each, for speed); the same sequence through the rule-by-rule functions (`round_size`,
    `_get_free_block`, `_alloc_found_block`, `_try_merge`) gives the same blocks, counters and failures."""
    limit = None if limit_mib is None else limit_mib * MiB
    fast = CachingAllocator(DEFAULT, limit_bytes=limit)
    ruled = CachingAllocator(DEFAULT, limit_bytes=limit)
    ruled._plain_rounding = ruled._plain_fit = False
    live: dict = {}
    for key, (alloc, nbytes, victim) in enumerate(steps):
        if alloc or not live:
            outcomes = []
            for allocator in (fast, ruled):
                try:
                    outcomes.append(allocator.malloc(nbytes))
                except AllocatorOutOfMemory:
                    outcomes.append(None)
            assert (outcomes[0] is None) == (outcomes[1] is None)
            if outcomes[0] is not None:
                live[key] = tuple(outcomes)
        else:
            pair = live.pop(sorted(live)[victim % len(live)])
            fast.free(pair[0])
            ruled.free(pair[1])
        layouts = [
            [(b.ptr, b.size, b.allocated) for b in _blocks(a, {k: v[i] for k, v in live.items()})]
            for i, a in enumerate((fast, ruled))
        ]
        assert layouts[0] == layouts[1]
        assert fast.stats() == ruled.stats()
