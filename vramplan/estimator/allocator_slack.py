"""What the caching allocator adds to the tensor peak, without a trace: a model fitted to replays.

`vramplan simulate` replays the traced step's allocation sequence through a model of PyTorch's CUDA caching
allocator (`vramplan.allocator.model`). Where the estimator does not replay the sequence its own walk emits
(`allocator_replay.py`), it predicts the two figures of a replay from the estimate's peak phase:

- `reserved`: `max_memory_reserved` − tensor peak on a card with room to spare;
- `need`: the least memory beyond the tensor peak on which the step runs (the allocator frees cached whole
  segments, or unmaps free pages, and retries before it raises out-of-memory), which decides the verdict.

Each is a share of the tensor peak, linear in `slack_features` (1, gradient checkpointing, the logits' and the
activations' shares of the peak phase), with coefficients fitted by least squares to the replays of the
oracle grid (tests/oracle/allocator_grid.py: method × checkpointing × batch·seq × family, 60 full-size traces),
`benchmarks/allocator_slack_fit.py`. Its error against the replays, left-one-family-out and on held-out
families and shapes, is in `ERRORS`; tests/estimator/test_allocator_slack.py holds the model to them.

What the replays show (92 traces: the grid and 32 held-out ones, gemma-2-2b, llama-3-8b, phi-3-mini and
qwen2.5-7b at 2×1024 and 1×4096): under torch's default settings the slack depends on the exact order and
sizes of allocations (a cached logits segment split by a small request cannot be released); the least memory
that runs is +0.4 % to +28 % above the tensor peak on the grid, and aggregates of the peak phase predict it to
6.0 % rms (worst 23.3 %) left-one-family-out, 3.6 % rms (worst 10.9 %) held out. With `expandable_segments:True`
it is +0.1 % to +3.4 %, predicted to 0.9 % rms (worst 2.5 %) / 0.7 % (1.7 %). Replaying the allocation
sequence the walk emits (`allocator_replay.py`) does better where its order follows the traced one, and
`estimate` takes that route there; this model serves the rest and `fit`'s probes. Settings other than
expandable_segments (max_split_size_mb, roundup_power2_divisions) are replayed by `simulate`; the estimate uses
the default-settings model for them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from vramplan.spec.alloc_conf import AllocatorConfig, parse_alloc_conf
from vramplan.spec.overheads import Overheads

SETTINGS = ("default", "expandable_segments:True")
FIGURES = ("max_reserved_bytes", "min_limit_bytes")

# slack / tensor peak = Σ coefficient · feature (clamped at 0); fitted by benchmarks/allocator_slack_fit.py on
# tests/data/allocator/grid.jsonl (torch 2.13, transformers 5.24, peft 0.21, bitsandbytes 0.50)
COEFFICIENTS: dict[tuple[str, str], tuple[float, ...]] = {
    ("default", "max_reserved_bytes"): (0.0150, 0.0924, 0.1125, 0.0385),
    ("default", "min_limit_bytes"): (0.0303, 0.0305, -0.0071, 0.0117),
    ("expandable_segments:True", "max_reserved_bytes"): (0.0212, 0.0190, 0.1394, -0.0041),
    ("expandable_segments:True", "min_limit_bytes"): (0.0180, -0.0036, -0.0037, -0.0116),
}

# the model's error against the replays, as a share of the tensor peak: (rms, worst) left-one-family-out over
# the grid, and (rms, worst) on the held-out configurations (benchmarks/allocator_slack_fit.py)
ERRORS: dict[tuple[str, str], tuple[float, float, float, float]] = {
    ("default", "max_reserved_bytes"): (0.059, 0.227, 0.030, 0.069),
    ("default", "min_limit_bytes"): (0.061, 0.234, 0.037, 0.109),
    ("expandable_segments:True", "max_reserved_bytes"): (0.032, 0.162, 0.018, 0.040),
    ("expandable_segments:True", "min_limit_bytes"): (0.009, 0.025, 0.007, 0.017),
}


def setting_of(config: AllocatorConfig) -> str:
    """The fitted setting that stands for `config` (expandable segments or not)."""
    return SETTINGS[1] if config.expandable_segments else SETTINGS[0]


class PeakShape(NamedTuple):
    """What the model reads from the estimate's peak phase (bytes): its total, logits and activations. A plain
    value, so this module does not import `vramplan.breakdown` (which reads the model from a Breakdown)."""

    total: int
    logits: int
    activations: int
    grad_ckpt: bool


def slack_features(peak: PeakShape) -> tuple[float, float, float, float]:
    """(1, checkpointing, logits / peak, activations / peak) of the peak phase."""
    total = peak.total or 1
    return (1.0, 1.0 if peak.grad_ckpt else 0.0, peak.logits / total, peak.activations / total)


class AllocatorSlack(NamedTuple):
    """The caching allocator's predicted figures beyond the tensor peak (bytes) under `config`.

    `reserved_bytes`: max_memory_reserved − peak with room to spare; `need_bytes`: the least memory beyond
    the peak on which the step runs; `need_error`: the rms error of `need_bytes` as a share of the peak
    (left-one-family-out over the grid), the allocator's term in the `tight` band.
    """

    config: AllocatorConfig
    reserved_bytes: int
    need_bytes: int
    need_error: float


def allocator_slacks(peak: PeakShape) -> dict[str, AllocatorSlack]:
    """The model under each fitted setting, by its label ("default", "expandable_segments:True")."""
    from vramplan.spec.alloc_conf import DEFAULT, EXPANDABLE

    return {s: allocator_slack(peak, c) for s, c in zip(SETTINGS, (DEFAULT, EXPANDABLE), strict=True)}


def need_error(config: AllocatorConfig) -> float:
    """The rms error of the modelled least memory (share of the peak, left-one-family-out) under `config`."""
    return ERRORS[setting_of(config), "min_limit_bytes"][0]


def _share(setting: str, figure: str, features: tuple[float, ...]) -> float:
    return max(sum(c * f for c, f in zip(COEFFICIENTS[setting, figure], features, strict=True)), 0.0)


def allocator_slack(peak: PeakShape, config: AllocatorConfig) -> AllocatorSlack:
    """Predict the allocator's figures for a step whose peak phase is `peak`."""
    setting = setting_of(config)
    features = slack_features(peak)
    total = peak.total
    reserved = int(total * _share(setting, "max_reserved_bytes", features))
    need = int(total * _share(setting, "min_limit_bytes", features))
    return AllocatorSlack(config, reserved, min(need, reserved), need_error(config))


def tight_band(tensor_band: float, allocator_error: float) -> float:
    """The `tight` band of an estimate: the tensor peak's error and the allocator model's, in quadrature."""
    return math.hypot(tensor_band, allocator_error)


def error_band(overheads: Overheads, alloc_conf: str, allocator_error: float | None = None) -> float:
    """The band a training verdict uses under `overheads` and `alloc_conf` (a TrainSpec's): a measurement's,
    a replay's or a calibration's own band, else the tensor band and the allocator figures' error combined
    (`allocator_error`: the walk replay's, when it gave them; else the model's)."""
    if overheads.measured or overheads.calibrated_band:
        return overheads.error_band
    if allocator_error is None:
        allocator_error = need_error(parse_alloc_conf(alloc_conf))
    return tight_band(overheads.error_band, allocator_error)
