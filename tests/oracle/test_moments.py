"""Named moments against the trace: the estimator's peak moment is where the traced step peaked, and each
moment the tracker can observe holds the estimated bytes.

The harness names the traced moments (vramplan/measure/moments.py: "inside layer i", "layer i recompute",
...); the estimator's (vramplan/estimator/peak.py) are the same instants at the top layer (L-1) and the
bottom one (0). Tolerance: the oracle's PEAK_TOL (3 %) of the traced moment. Under checkpointing the
tracker's "layer i backward" spans the instant the recompute returns (its graph still alive), so there the
estimated layer backward is held to be no more than the traced one, not equal to it.
"""

from __future__ import annotations

import functools
import warnings

import pytest

from tests.oracle.conftest import PEAK_TOL
from tests.oracle.grid import BASE, CASES, SMALL_LLAMA
from vramplan.estimator import peak
from vramplan.spec import model_spec_from_config, resolve_train

LAYER_BACKWARDS = {
    peak.TOP_LAYER_BACKWARD,
    peak.TOP_LAYER_DORA_BACKWARD,
    peak.BOTTOM_LAYER_BACKWARD,
    peak.BOTTOM_LAYER_DORA_BACKWARD,
}
TRACED_CASES = ("lora", "lora-ckpt", "full", "full-ckpt", "qlora", "lora-dora-ckpt")

# (case, estimated moment) -> why the estimate misses the traced moment: strict, so a fix turns it into a failure
KNOWN_GAPS: dict[tuple[str, str], str] = {
    ("qlora", peak.INSIDE_TOP_LAYER): "checkpointed 4-bit layer's forward: ~6 % under the traced 'inside layer 3' "
    "(not the forward peak, which the loss holds)",
}


def _traced_name(moment: str, layers: int) -> str:
    top, bottom = layers - 1, 0
    return {
        peak.LOSS: "logits and loss",
        peak.INSIDE_TOP_LAYER: f"inside layer {top}",
        peak.LOSS_BACKWARD: "logits gradient",
        peak.HEAD_BACKWARD: "logits gradient",  # the tracker's span runs until lm_head's input gradient exists
        peak.TOP_LAYER_RECOMPUTE: f"layer {top} recompute",
        peak.TOP_LAYER_BACKWARD: f"layer {top} backward",
        peak.TOP_LAYER_DORA_BACKWARD: f"layer {top} backward",
        peak.BOTTOM_LAYER_RECOMPUTE: f"layer {bottom} recompute",
        peak.BOTTOM_LAYER_BACKWARD: f"layer {bottom} backward",
        peak.BOTTOM_LAYER_DORA_BACKWARD: f"layer {bottom} backward",
        peak.END_OF_BACKWARD: "after the layers",
        peak.OPTIMIZER_STEP: "step",
    }[moment]


@functools.cache
def _traced(case: str):
    from vramplan.measure.harness import run_step

    m = model_spec_from_config(SMALL_LLAMA, "small-llama")
    t = resolve_train(m, **{**BASE, **CASES[case]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = run_step(m, t, device="cpu", steps=2)
    assert r.oom is None, r.oom
    return m, t, r


@pytest.mark.parametrize("case", TRACED_CASES)
def test_each_phase_peaks_at_the_estimated_moment(case):
    m, t, r = _traced(case)
    estimated, _ = peak.phases(m, t)
    layers = m.num_hidden_layers
    for usage in estimated:
        traced = r.tracked.phase(usage.phase)
        assert traced.moment == _traced_name(usage.moment, layers), (usage.phase, usage.moment)
    top = max(estimated, key=lambda p: p.total)
    assert r.tracked.peak_phase == top.phase
    assert r.tracked.peak_moment == _traced_name(top.moment, layers)
    assert r.breakdown.peak_moment == r.tracked.peak_moment  # the measured Breakdown names it too


@pytest.mark.parametrize("case", TRACED_CASES)
def test_each_observable_moment_holds_the_traced_bytes(case):
    m, t, r = _traced(case)
    candidates, _ = peak.moments(m, t)
    compared, problems, gaps = 0, [], []
    for usage in candidates:
        traced = r.tracked.moment(usage.phase, _traced_name(usage.moment, m.num_hidden_layers))
        if traced is None:  # e.g. "after the layers" when layer 0's input needs no gradient
            continue
        compared += 1
        layer_backward = usage.moment in LAYER_BACKWARDS
        # lm_head's backward is the later instant of the traced "logits gradient" span: no more than its peak
        if (t.grad_ckpt and layer_backward) or usage.moment == peak.HEAD_BACKWARD:
            ok = usage.total <= traced.peak_bytes * (1 + PEAK_TOL)
        else:
            ok = abs(usage.total - traced.peak_bytes) <= PEAK_TOL * traced.peak_bytes
        line = f"{usage.phase} / {usage.moment}: estimated {usage.total:,} vs traced {traced.peak_bytes:,}"
        if (case, usage.moment) in KNOWN_GAPS:
            (problems if ok else gaps).append(f"known gap closed: {line}" if ok else line)
        elif not ok:
            problems.append(line)
    assert compared >= 6, f"only {compared} moments observed"
    assert len(gaps) == sum(1 for c, _ in KNOWN_GAPS if c == case), gaps
    assert not problems, "\n".join(problems)
