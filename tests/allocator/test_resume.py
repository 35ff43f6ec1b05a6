"""Limited replays resumed from a cursor (vramplan/allocator/resume.py) against replays from event 0: the same
failing event and reserved peak at every limit, the same bisection, and the limits known without a replay."""

from __future__ import annotations

import random

import pytest

from vramplan.allocator.replay import ALLOC, FREE, replay
from vramplan.allocator.resume import Cursor, Probes, replay_from
from vramplan.spec.alloc_conf import DEFAULT, parse_alloc_conf

MiB = 1024**2
CONFIGS = [DEFAULT, parse_alloc_conf("max_split_size_mb:64"), parse_alloc_conf("roundup_power2_divisions:4")]


def sequence(seed: int, n: int = 1500) -> list[tuple[int, int, int]]:
    """Allocations of every pool's sizes (small, 1-10 MiB, large) freed in a shuffled order, live bytes
    rising and falling, so that limits between the tensor peak and the reserved peak release and fail."""
    rng = random.Random(seed)
    out, live = [], []
    for key in range(n):
        size = rng.choice((rng.randint(1, 1 << 20), rng.randint(1 << 20, 10 * MiB), rng.randint(10 * MiB, 90 * MiB)))
        out.append((ALLOC, key, size))
        live.append(key)
        while live and rng.random() < 0.45 + 0.1 * (len(live) > 40):
            out.append((FREE, live.pop(rng.randrange(len(live))), 0))
    return out


def bisection(events, config, granularity):
    """`replay.limit_bounds`' bisection with every limit replayed from event 0."""
    unlimited = replay(events, config)
    high, low = unlimited.stats.max_reserved_bytes, unlimited.stats.max_requested_bytes - 1
    while high - low > granularity:
        middle = max((low + high) // 2 // granularity * granularity, low + granularity)
        if middle >= high:
            break
        if replay(events, config, limit_bytes=middle).ok:
            high = middle
        else:
            low = middle
    return low, high


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("seed", [1, 2])
def test_resumed_replay_is_the_replay_from_the_start(config, seed):
    events = sequence(seed)
    unlimited = replay(events, config).stats
    low, high = unlimited.max_requested_bytes - 1, unlimited.max_reserved_bytes
    cursor = Cursor(events, config)
    outcomes = set()
    for below in (low, (low + high) // 2):
        cursor.advance(below)
        assert 0 < cursor.index < len(events)
        for limit in [*range(below + 1, high, (high - below) // 13), high]:
            full = replay(events, config, limit_bytes=limit)
            assert replay_from(cursor, limit) == (full.oom_event, full.stats.max_reserved_bytes)
            outcomes.add(full.ok)
    assert outcomes == {True, False}  # limits that fail (released, retried, out of memory) and that run


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_known_limits_run_as_replayed(config):
    events = sequence(3)
    unlimited = replay(events, config).stats
    probes = Probes(events, config)
    low = unlimited.max_requested_bytes - 1
    for limit in range(low + 1, unlimited.max_reserved_bytes, (unlimited.max_reserved_bytes - low) // 9):
        probes.runs(low, limit)
    assert probes.ran
    for peak, limit in probes.ran:
        for inside in (peak, (peak + limit) // 2):
            assert replay(events, config, limit_bytes=inside).stats == replay(events, config, limit_bytes=limit).stats


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("granularity", [2 * MiB, 16 * MiB])
def test_limit_bounds_as_replayed_from_the_start(config, granularity):
    from vramplan.allocator.replay import limit_bounds

    for seed in (4, 5):
        events = sequence(seed)
        assert limit_bounds(events, config, granularity=granularity) == bisection(events, config, granularity)
