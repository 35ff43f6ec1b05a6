"""The candidate moments of one step of any training stage: SFT's (estimator/peak.py), the preference / RL
trainers' (estimator/preference.py) or EBFT's (estimator/ebft.py, which builds on GRPO's), so that neither
of the two stage modules imports the other to dispatch."""

from __future__ import annotations

from vramplan.breakdown import PhaseUsage
from vramplan.spec import ModelSpec, TrainSpec


def stage_moments(m: ModelSpec, t: TrainSpec, gpu_bytes: int | None = None) -> tuple[tuple[PhaseUsage, ...], int]:
    """The candidate moments of a step of `t.stage` (SFT's unchanged), and the paged optimizer bytes.
    `gpu_bytes` sizes a colocated vLLM engine's share."""
    if t.stage.stage == "asft":
        from vramplan.estimator.asft import asft_moments

        return asft_moments(m, t)
    if t.stage.stage == "ebft":
        from vramplan.estimator.ebft import ebft_moments

        return ebft_moments(m, t, gpu_bytes)
    from vramplan.estimator.preference import preference_moments

    return preference_moments(m, t, gpu_bytes)
