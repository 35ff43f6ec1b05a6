"""`vramplan estimate`'s output: the breakdown (one GPU's share on several), the calibration used, and the
advice: ranked one-GPU changes (`plan.advice.Suggestion`) or multi-GPU alternatives."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vramplan.report.common import gib
from vramplan.report.parallel import parallel_advice_lines, parallel_json, render_parallel
from vramplan.report.train import breakdown_json

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rich.console import Console

    from vramplan.estimator.parallel_plan import ParallelPlan
    from vramplan.plan.advice import Suggestion
    from vramplan.sources.inputs import Plan


def advice_lines(suggestions: Sequence[Suggestion]) -> list[str]:
    """One line per suggestion: the change, the device total with it, the verdict, what it saves and costs."""
    return [
        f"{s.change}: {gib(s.device_bytes)} GiB → {s.verdict} (saves {gib(s.saved_bytes)} GiB; {s.cost_text})"
        for s in suggestions
    ]


def suggestions_json(suggestions: Sequence[Suggestion]) -> list[dict[str, Any]]:
    return [
        {"change": s.change, "cost": s.cost, "device_bytes": s.device_bytes, "verdict": s.breakdown.verdict}
        for s in suggestions
    ]


def estimate_json(pp: ParallelPlan, plan: Plan, suggestions: Sequence[Suggestion] | None) -> dict[str, Any]:
    """`estimate --json`: one GPU's breakdown, the inputs with where each came from, the parallel plan, and
    `suggestions` (ranked changes) when asked for (not None)."""
    extra: dict[str, Any] = {"parallel": parallel_json(pp)}
    if suggestions is not None:
        extra["suggestions"] = suggestions_json(suggestions)
    out = breakdown_json(pp.breakdown, extra)
    skipped = [str(u) for u in plan.not_modeled]
    out["inputs"].update(sources=dict(plan.sources), not_modeled=skipped, model_config=plan.model_config)
    out["inputs"]["file_notes"] = list(plan.file_notes)  # what reading the files assumed or found memory-neutral
    return out


def render_advice(lines: list[str], console: Console) -> None:
    from vramplan.report.common import print_labelled

    for line in lines:
        print_labelled("advice", "cyan", line, console)


def render_estimate(
    pp: ParallelPlan,
    suggestions: Sequence[Suggestion],
    alternatives: tuple[ParallelPlan, ...],
    console: Console,
) -> None:
    """The breakdown, the calibration line, then the multi-GPU alternatives or the one-GPU suggestions."""
    from vramplan.report.trust import render_calibration_note  # tables only: `--json` does not load it

    render_parallel(pp, console)
    render_calibration_note(pp.breakdown, console)
    if alternatives:
        render_advice(parallel_advice_lines(alternatives), console)
    elif suggestions:
        render_advice(advice_lines(suggestions), console)
