"""Strided EBFT (axolotl `rl: ebft`, `ebft.mode: strided`): the estimate (vramplan/estimator/ebft.py) held to
the CPU stand-in of axolotl 0.19.0's `AxolotlStridedEBFTTrainer.compute_loss` on the grid's tiny Llama
(vramplan/measure/ebft.py): every phase's peak and the named moments (the strided generation, the feature
forward) within EBFT_TOL. Components are not compared one by one: the tracker files the saved float32
log-probs under activations, the estimate under logits."""

from __future__ import annotations

import warnings

import pytest

from tests.oracle.grid import BASE, SMALL_LLAMA

pytest.importorskip("peft")

# the strided generation's eager attention and the feature forward's L + 1 hidden states are modelled from
# their source; what is left (LoRA dropout masks in the no-grad forwards, small index tensors) stays within 4 %
EBFT_TOL = 0.04
CASES = {
    "strided": {},
    "strided-ckpt": {"grad_ckpt": True},
    "strided-ce": {"ebft_ce": True, "seq": 96},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_strided_ebft_step_matches_the_stand_in(case):
    from vramplan.estimator.peak import largest_per_phase
    from vramplan.estimator.stage_moments import stage_moments
    from vramplan.measure.ebft import trace_strided_ebft
    from vramplan.spec import model_spec_from_config, resolve_train

    m = model_spec_from_config(SMALL_LLAMA, "small-llama")
    t = resolve_train(m, **{**BASE, "batch": 1, "stage": "ebft", "ebft_mode": "strided", **CASES[case]})
    candidates, _ = stage_moments(m, t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced, named = trace_strided_ebft(m, t)
    by_phase = {p.phase: p for p in traced}
    problems = []
    for e in largest_per_phase(candidates):
        tp = by_phase[e.phase]
        if abs(e.total - tp.total) > EBFT_TOL * tp.total:
            problems.append(f"{e.phase}: estimated {e.total:,} vs traced {tp.total:,}")
    for c in candidates:
        if c.moment in ("strided generation", "feature forward"):
            tm = named[c.moment]
            if abs(c.total - tm.total) > EBFT_TOL * tm.total:
                problems.append(f"{c.moment}: estimated {c.total:,} vs traced {tm.total:,}")
    assert not problems, "\n".join(problems)
