"""The estimator's caching-allocator model against the replays it was derived from and against held-out ones.

The replays (tests/data/allocator/*.jsonl) are written by benchmarks/allocator.py: the real step traced at full
size on fake / meta tensors, its allocation sequence replayed through vramplan.allocator.model.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest

from vramplan.estimator.allocator_slack import (
    ERRORS,
    FIGURES,
    SETTINGS,
    PeakShape,
    allocator_slack,
    slack_features,
)
from vramplan.estimator.peak import phases
from vramplan.sources.profiles import load_model
from vramplan.spec import resolve_train
from vramplan.spec.alloc_conf import DEFAULT, EXPANDABLE, AllocatorConfig

DATA = Path(__file__).resolve().parents[1] / "data" / "allocator"
CONFIG = {SETTINGS[0]: DEFAULT, SETTINGS[1]: EXPANDABLE}


def _rows(name: str) -> list[tuple[dict, PeakShape]]:
    out = []
    for line in (DATA / name).read_text().splitlines():
        r = json.loads(line)
        m = load_model(r["model"])
        t = resolve_train(m, **r["opts"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ph, _ = phases(m, t)
        c = max(ph, key=lambda p: p.total).components
        out.append((r, PeakShape(c.total, c.logits, c.activations, t.grad_ckpt)))
    return out


@pytest.fixture(scope="module")
def grid():
    return _rows("grid.jsonl")


@pytest.fixture(scope="module")
def held_out():
    return _rows("held_out.jsonl")


def _errors(rows, setting: str, figure: str, end_to_end: bool = False) -> list[float]:
    """(model − replay) / traced peak per row: the share alone, or the estimate's whole figure (its tensor peak
    included) against the replay's."""
    errs = []
    for r, peak in rows:
        s = allocator_slack(peak, CONFIG[setting])
        slack = s.reserved_bytes if figure == "max_reserved_bytes" else s.need_bytes
        traced = r["tensor_peak_bytes"]
        replayed = r["replay"][setting][figure]
        if end_to_end:
            errs.append((peak.total + slack - replayed) / traced)
        else:
            errs.append(slack / peak.total - (replayed / traced - 1))
    return errs


def _rms(errs: list[float]) -> float:
    return math.sqrt(sum(e * e for e in errs) / len(errs))


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("figure", FIGURES)
def test_model_within_its_stated_error_on_the_grid(grid, setting, figure):
    # in-sample: the left-one-family-out error bounds the fit's own error
    lofo_rms, lofo_worst, _, _ = ERRORS[setting, figure]
    errs = _errors(grid, setting, figure)
    assert len(errs) == 60
    assert _rms(errs) <= lofo_rms + 0.002
    # the need is clamped to the reserved figure, which can only bring it closer to the replay's (need ≤ reserved)
    assert max(abs(e) for e in errs) <= lofo_worst + 0.002


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("figure", FIGURES)
def test_model_within_its_stated_error_held_out(held_out, setting, figure):
    _, _, rms, worst = ERRORS[setting, figure]
    errs = _errors(held_out, setting, figure)
    assert _rms(errs) <= rms + 0.002
    assert max(abs(e) for e in errs) <= worst + 0.002


@pytest.mark.parametrize(("setting", "rms", "worst"), [(SETTINGS[0], 0.055, 0.23), (SETTINGS[1], 0.015, 0.06)])
def test_estimate_need_end_to_end(grid, held_out, setting, rms, worst):
    """The estimate's whole figure (its own tensor peak + the modelled need) against the replay's least memory,
    as a share of the traced peak, over the grid and the held-out configurations (92 traces).

    Measured: 4.8 % rms under torch's defaults, 0.9 % with expandable segments. The worst cases are the
    allocator model's: under default settings the checkpointed full fine-tunes of Qwen2.5-1.5B fragment by up
    to +28 %, which the model puts near +8 % (−22.4 % at 4 × 2048). (The tensor peak of a tied-embedding full
    fine-tune, 7-10 % under the trace at seq 512 before, is exact since the backward's sum of the tied weight's
    two gradient contributions is modelled: peak.py.)
    """
    errs = _errors(grid + held_out, setting, "min_limit_bytes", end_to_end=True)
    assert _rms(errs) < rms
    assert max(abs(e) for e in errs) < worst


def test_default_need_error_is_stated_not_hidden(grid):
    # the default-settings need is the hard case: the stated error must be what the grid shows, not less
    errs = _errors(grid, SETTINGS[0], "min_limit_bytes")
    assert ERRORS[SETTINGS[0], "min_limit_bytes"][0] >= _rms(errs) - 0.002


def test_features_and_setting():
    c = PeakShape(total=10, logits=1, activations=3, grad_ckpt=True)
    assert slack_features(c) == (1.0, 1.0, 0.1, 0.3)
    # max_split_size_mb is replayed by simulate only: the estimate uses the default-settings model for it
    capped = allocator_slack(c, AllocatorConfig(max_split_size_bytes=128 * 1024**2))
    default = allocator_slack(c, DEFAULT)
    assert (capped.reserved_bytes, capped.need_bytes) == (default.reserved_bytes, default.need_bytes)


def test_need_never_exceeds_reserved(grid):
    for _, peak in grid:
        for config in (DEFAULT, EXPANDABLE):
            s = allocator_slack(peak, config)
            assert 0 <= s.need_bytes <= s.reserved_bytes
