"""The caching allocator's figures from a replay of the walk's own allocation sequence (`alloc_events.py`)
through the allocator model (`vramplan.allocator`), where that route beats the fitted slack model.

Held to the replays of the 60 traced steps of the oracle grid (tests/oracle/allocator_grid.py; the traced
figures in tests/data/allocator/grid.jsonl) and of 32 held-out ones, as shares of the tensor peak: the walk
replay's share of its own peak against the traced replay's share of the traced peak
(`benchmarks/allocator_walk_replay.py`; the slack model's grid errors are left-one-family-out, the replay is
fitted to nothing), rms / worst:

| setting, checkpointing | figure | walk replay: grid; held out | slack model: grid; held out |
|---|---|---|---|
| default, off | reserved | 2.1 / 8.7 %; 0.6 / 1.7 % | 3.4 / 10.9 %; 1.9 / 3.0 % |
| default, off | least that runs | 2.0 / 5.8 %; 1.1 / 2.9 % | 3.1 / 7.3 %; 1.4 / 2.3 % |
| default, on | reserved | 5.1 / 17.1 %; 2.5 / 5.3 % | 7.1 / 19.4 %; 3.7 / 6.2 % |
| default, on | least that runs | 6.9 / 22.8 %; 4.2 / 10.2 % | 7.8 / 22.7 %; 4.6 / 9.6 % |
| expandable, off | reserved | 0.9 / 3.3 %; 0.5 / 1.1 % | 1.0 / 2.2 %; 0.8 / 1.8 % |
| expandable, off | least that runs | 0.3 / 0.9 %; 0.5 / 0.9 % | 0.9 / 1.4 %; 0.8 / 1.7 % |
| expandable, on | reserved | 1.9 / 7.8 %; 0.3 / 0.9 % | 3.3 / 12.0 %; 2.4 / 4.5 % |
| expandable, on | least that runs | 0.4 / 1.4 %; 0.3 / 0.7 % | 0.9 / 2.4 %; 0.5 / 0.8 % |

(30 grid rows per checkpointing, 16 held-out ones.) The replay's rms is the smaller everywhere, its worst case
too but for the least memory that runs under torch's defaults with checkpointing (22.8 against 22.7 % on the
grid, 10.2 against 9.6 % held out: a tie; the largest misses are 7B QLoRA at 4 × 2048, where the emitted
layer order fragments more than the traced one). Asked for (`estimate --allocator-replay`, the API's
`replay_allocator` and `replay_verdict`), `estimate` replays (`replay_route`) every step the emitter follows,
for its reserved figure and its verdict; by default it keeps the slack model, because the replay costs
0.1-0.7 s where the rest of an estimate costs milliseconds, and `fit` and `--suggest` probe with the slack model
(so that what they print a plain `estimate` reproduces). The rest keeps the slack model always:
preference stages, gradient accumulation, layer-wise optimizers, activation offloading, PEFT methods walked as
LoRA, other allocator settings.

Cost: emitting is 10-80 ms, one replay 30-400 ms (the reserved figure: what `estimate` shows) and the least
memory that runs a bisection of about six more (to 0.25 % of the peak; `replay_verdict`): 0.07 s of CPU for
Llama-3.2-1B, 0.15-0.4 s for a 7B step, 0.7 s for a 70B one. `fit` and `--suggest` probe dozens of
configurations with the slack model (`build_breakdown(replay_allocator=False)`, the default).
"""

from __future__ import annotations

import functools

from vramplan.allocator.blocks import ROUND_LARGE
from vramplan.allocator.replay import replay, smallest_limit
from vramplan.estimator.alloc_events import step_events
from vramplan.estimator.allocator_slack import AllocatorSlack
from vramplan.spec import ModelSpec, TrainSpec
from vramplan.spec.alloc_conf import DEFAULT, EXPANDABLE, AllocatorConfig

# (rms, worst) share of the tensor peak of the walk replay against the traced replays, left out of nothing (the
# replay is fitted to nothing) over the grid, then (rms, worst) over the 32 held-out traces, by (setting, gradient
# checkpointing, figure); benchmarks/allocator_walk_replay.py
REPLAY_ERRORS: dict[tuple[str, bool, str], tuple[float, float, float, float]] = {
    ("default", False, "max_reserved_bytes"): (0.021, 0.087, 0.006, 0.017),
    ("default", False, "min_limit_bytes"): (0.020, 0.058, 0.011, 0.029),
    ("default", True, "max_reserved_bytes"): (0.051, 0.171, 0.025, 0.053),
    ("default", True, "min_limit_bytes"): (0.069, 0.228, 0.042, 0.102),
    ("expandable_segments:True", False, "max_reserved_bytes"): (0.009, 0.033, 0.005, 0.011),
    ("expandable_segments:True", False, "min_limit_bytes"): (0.003, 0.009, 0.005, 0.009),
    ("expandable_segments:True", True, "max_reserved_bytes"): (0.019, 0.078, 0.003, 0.009),
    ("expandable_segments:True", True, "min_limit_bytes"): (0.004, 0.014, 0.003, 0.007),
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


@functools.lru_cache(maxsize=256)
def replayed_allocator(
    m: ModelSpec, t: TrainSpec, config: AllocatorConfig, peak_bytes: int, need: bool = True
) -> AllocatorSlack:
    """The allocator's figures beyond the tensor peak `peak_bytes`, as the walk replay's shares of its own
    peak (the sequence's live peak follows the estimate's within 2 %; its shares carry over). `need=False`:
    one replay for the reserved figure, without the bisection for the least memory that runs (the need is then
    the reserved figure, its upper bound; a verdict does not read it)."""
    events = step_events(m, t)
    unlimited = replay(events, config)
    stats = unlimited.stats
    live = stats.max_requested_bytes or 1
    setting = "expandable_segments:True" if config.expandable_segments else "default"
    reserved = max(round(peak_bytes * (stats.max_reserved_bytes / live - 1)), 0)
    need_bytes = reserved
    if need:
        limit = smallest_limit(events, config, unlimited, granularity=bisection_step(live))
        need_bytes = min(max(round(peak_bytes * (limit / live - 1)), 0), reserved)
    return AllocatorSlack(
        config=config,
        reserved_bytes=reserved,
        need_bytes=need_bytes,
        need_error=REPLAY_ERRORS[setting, t.grad_ckpt, "min_limit_bytes"][0],
    )
