"""The caching allocator's figures from a replay of the walk's own allocation sequence (`alloc_events.py`)
through the allocator model (`vramplan.allocator`), where that route beats the fitted slack model.

Held to the replays of the 60 traced steps of the oracle grid (tests/oracle/allocator_grid.py; the traced
figures in tests/data/allocator/grid.jsonl) and of 32 held-out ones, as shares of the tensor peak: the walk
replay's share of its own peak against the traced replay's share of the traced peak
(`benchmarks/allocator_walk_replay.py`; the slack model's grid errors are left-one-family-out, the replay is
fitted to nothing), rms / worst:

| setting, checkpointing | figure | walk replay: grid; held out | slack model: grid; held out |
|---|---|---|---|
| default, off | reserved | 1.4 / 6.1 %; 0.6 / 1.8 % | 3.4 / 10.9 %; 1.8 / 2.9 % |
| default, off | least that runs | 1.9 / 5.7 %; 1.1 / 2.9 % | 3.4 / 7.3 %; 1.5 / 2.6 % |
| default, on | reserved | 5.3 / 20.2 %; 2.6 / 5.6 % | 7.6 / 22.7 %; 3.7 / 6.8 % |
| default, on | least that runs | 7.3 / 22.8 %; 4.2 / 10.3 % | 7.8 / 23.3 %; 4.9 / 10.9 % |
| expandable, off | reserved | 0.4 / 0.9 %; 0.5 / 1.1 % | 1.1 / 2.0 %; 0.8 / 1.7 % |
| expandable, off | least that runs | 0.3 / 0.8 %; 0.4 / 0.8 % | 0.9 / 1.4 %; 0.8 / 1.7 % |
| expandable, on | reserved | 1.7 / 8.6 %; 0.3 / 0.7 % | 4.3 / 16.1 %; 2.3 / 3.9 % |
| expandable, on | least that runs | 0.4 / 0.9 %; 0.3 / 1.0 % | 0.9 / 2.4 %; 0.5 / 0.8 % |

(30 grid rows per checkpointing, 16 held-out ones.) The replay's rms and worst case are the smaller in every row
(the least memory that runs under torch's defaults with checkpointing: 22.8 against 23.3 % on the grid, 10.3
against 10.9 % held out); the largest misses are checkpointed steps at 4 × 2048 (7B QLoRA, a 1B full fine-tune),
where the emitted layer order fragments more than the traced one. `estimate` replays (`replay_route`) every step the emitter
follows whose verdict the replay could change (`may_change_verdict`: a GPU, and the slack model's device total
within `VERDICT_WINDOW` of the card's thresholds), for its reserved figure and its verdict; elsewhere the verdict
is the same either way and it keeps the slack model's figures, in milliseconds. `fit` and `--suggest` probe with
the slack model and check what they print with that verdict (`replay_fits`: the bisection only until the
verdict is decided). The rest keeps the slack model always: preference stages, gradient accumulation,
layer-wise optimizers, activation offloading, PEFT methods walked as LoRA, other allocator settings.

Cost (CPU): emitting is 3-25 ms, one replay 7-70 ms (the reserved figure) and the least memory that runs a
bisection of about six more (to 0.25 % of the peak): 40-250 ms, 0.2 s for a 7B QLoRA step
(docs/caching-allocator.md).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vramplan.allocator.blocks import ROUND_LARGE
from vramplan.allocator.replay import Replay, limit_bounds, replay, smallest_limit
from vramplan.estimator.alloc_events import step_events
from vramplan.estimator.allocator_slack import AllocatorSlack, setting_of, tight_band
from vramplan.spec import ModelSpec, TrainSpec
from vramplan.spec.alloc_conf import DEFAULT, EXPANDABLE, AllocatorConfig, parse_alloc_conf

if TYPE_CHECKING:
    from vramplan.breakdown import Breakdown

# (rms, worst) share of the tensor peak of the walk replay against the traced replays, left out of nothing (the
# replay is fitted to nothing) over the grid, then (rms, worst) over the 32 held-out traces, by (setting, gradient
# checkpointing, figure); benchmarks/allocator_walk_replay.py
REPLAY_ERRORS: dict[tuple[str, bool, str], tuple[float, float, float, float]] = {
    ("default", False, "max_reserved_bytes"): (0.014, 0.061, 0.006, 0.018),
    ("default", False, "min_limit_bytes"): (0.019, 0.057, 0.011, 0.029),
    ("default", True, "max_reserved_bytes"): (0.053, 0.202, 0.026, 0.056),
    ("default", True, "min_limit_bytes"): (0.073, 0.228, 0.042, 0.103),
    ("expandable_segments:True", False, "max_reserved_bytes"): (0.004, 0.009, 0.005, 0.011),
    ("expandable_segments:True", False, "min_limit_bytes"): (0.003, 0.008, 0.004, 0.008),
    ("expandable_segments:True", True, "max_reserved_bytes"): (0.017, 0.086, 0.003, 0.007),
    ("expandable_segments:True", True, "min_limit_bytes"): (0.004, 0.009, 0.003, 0.010),
}


# How far the walk replay's least memory that runs lands from the slack model's, as a share of the tensor peak
# (replay − model): over the 107 configurations of tests/data/allocator/walk_replay_reference.jsonl (the grid,
# the held-out ones, issue 19's and test_alloc_events' VARIED), −5.4 … +23.2 % under torch's defaults and
# −1.2 … +1.6 % with expandable segments (benchmarks/allocator_replay_identity.py --window). A verdict the replay
# could change lies within these of the card's thresholds; rounded out to (below, above):
VERDICT_WINDOW: dict[str, tuple[float, float]] = {
    "default": (0.10, 0.30),
    "expandable_segments:True": (0.03, 0.05),
}


BISECTION_PARTS = 400  # the least memory that runs, to 1/400 of the peak (`bisection_step`)


def replay_route(t: TrainSpec, config: AllocatorConfig) -> bool:
    """Whether the estimate's allocator figures come from the walk replay (module docstring)."""
    if config not in (DEFAULT, EXPANDABLE):
        return False
    if not t.stage.is_sft or t.grad_accum > 1 or t.optim.endswith("_layerwise"):
        return False  # other step structures: a reference model, gradients across micro-batches, per-param steps
    offloads = t.activation_offload != "none" or t.layer_offload
    return not offloads and not t.peft.error_band and not t.peft.prompt_learning


def bisection_step(peak_bytes: int) -> int:
    """The resolution of the least memory that runs: 1/400 of the peak (0.25 %, a tenth of the replay's rms
    error) in 2 MiB steps, at least 2 MiB; about half the replays of a 2 MiB bisection."""
    return max(ROUND_LARGE, peak_bytes // BISECTION_PARTS // ROUND_LARGE * ROUND_LARGE)


@dataclass(frozen=True, slots=True)
class _Replayed:
    """A step's emitted sequence under one setting: the events, their replay with no limit, and the outcome
    of every limited replay made so far (the bisection's, shared by a verdict's early stop and the full one)."""

    events: list
    unlimited: Replay
    outcomes: dict[int, bool]

    @property
    def live(self) -> int:
        return self.unlimited.stats.max_requested_bytes or 1

    def figures(self, t: TrainSpec, peak_bytes: int, limit: int | None) -> AllocatorSlack:
        """The figures beyond `peak_bytes` as the sequence's shares of its own live peak, the least memory
        that runs being `limit` (None: not sought, the reserved figure stands for it)."""
        live, config = self.live, self.unlimited.config
        reserved = max(round(peak_bytes * (self.unlimited.stats.max_reserved_bytes / live - 1)), 0)
        need_bytes = reserved if limit is None else min(max(round(peak_bytes * (limit / live - 1)), 0), reserved)
        return AllocatorSlack(
            config=config,
            reserved_bytes=reserved,
            need_bytes=need_bytes,
            need_error=REPLAY_ERRORS[setting_of(config), t.grad_ckpt, "min_limit_bytes"][0],
        )


@functools.lru_cache(maxsize=32)
def _replayed(m: ModelSpec, t: TrainSpec, config: AllocatorConfig) -> _Replayed:
    events = step_events(m, t)
    return _Replayed(events, replay(events, config), {})


@functools.lru_cache(maxsize=256)
def replayed_allocator(
    m: ModelSpec, t: TrainSpec, config: AllocatorConfig, peak_bytes: int, need: bool = True
) -> AllocatorSlack:
    """The allocator's figures beyond the tensor peak `peak_bytes`, as the walk replay's shares of its own
    peak (the sequence's live peak follows the estimate's within 2 %; its shares carry over). `need=False`:
    one replay for the reserved figure, without the bisection for the least memory that runs (the need is then
    the reserved figure, its upper bound; a verdict does not read it)."""
    r = _replayed(m, t, config)
    if not need:
        return r.figures(t, peak_bytes, None)
    limit = smallest_limit(r.events, config, r.unlimited, bisection_step(r.live), r.outcomes)
    return r.figures(t, peak_bytes, limit)


def replay_fits(m: ModelSpec, t: TrainSpec, b: Breakdown) -> bool:
    """Whether `b` (an estimate of `t` with the slack model's figures) fits (`fits` or `tight`) with the
    walk replay's verdict, as `build_breakdown(..., allocator_model="auto")` gives it, stopping the bisection
    for the least memory that runs as soon as its interval lies on one side of the card: the device total
    grows with that limit, and the bisection's result lies in (low, high]. What is left of the bisection a
    later estimate of `t` resumes (`_Replayed.outcomes`), so a verdict-only look costs only what it replays."""
    if not may_change_verdict(b):
        return b.verdict in ("fits", "tight")
    config = parse_alloc_conf(t.alloc_conf)
    r = _replayed(m, t, config)
    peak = b.peak_bytes

    def runs_within(limit: int) -> bool:
        replayed = dataclasses.replace(b, replayed_allocator=r.figures(t, peak, limit), replay_verdict=True)
        return replayed.verdict in ("fits", "tight")

    def decided(low: int, high: int) -> bool:
        return runs_within(high) or not runs_within(low + 1)

    high = limit_bounds(r.events, config, r.unlimited, bisection_step(r.live), r.outcomes, decided)[1]
    return runs_within(high)


def may_change_verdict(b: Breakdown) -> bool:
    """Whether the walk replay could give `b` (an estimate with the slack model's figures) another verdict:
    a GPU to compare with, and the device total within `VERDICT_WINDOW` of the thresholds (`tight` from the
    card over 1 + the larger of the two bands, `oom` above the card). Elsewhere both give the same verdict
    over every configuration replayed, and `estimate` keeps the slack model's figures (no replay: milliseconds)."""
    if b.gpu_bytes is None:
        return False
    config = parse_alloc_conf(b.train.alloc_conf)
    setting = setting_of(config)
    below, above = VERDICT_WINDOW[setting]
    replay_band = tight_band(b.overheads.error_band, REPLAY_ERRORS[setting, b.train.grad_ckpt, "min_limit_bytes"][0])
    band = max(b.error_band, replay_band)
    device, peak = b.device_bytes, b.peak_bytes
    return device - below * peak <= b.gpu_bytes and (device + above * peak) * (1 + band) > b.gpu_bytes
