"""`vramplan estimate`: one training step's peak on one GPU (or one GPU's share of several)."""

from __future__ import annotations

import json
from typing import Any

import click

from vramplan.cli import console
from vramplan.cli_options import emit_notes, parallel_options, parallel_plan, resolve_plan, train_options
from vramplan.errors import VramplanError


@click.command()
@click.argument("model", required=False)
@train_options
@parallel_options
@click.option("--suggest", is_flag=True, help="rank the cheapest changes that make it fit (needs --gpu)")
@click.option(
    "--allocator-model",
    type=click.Choice(["auto", "replay", "slack"]),
    default=None,
    help="the caching allocator's reserved figure and the verdict: auto (default) replays the step's own "
    "allocation sequence where that could change the verdict (device total near the card; 0.05-0.7 s), "
    "replay wherever the step is walked, slack the fitted slack model (milliseconds)",
)
@click.option(
    "--allocator-replay/--no-allocator-replay",
    default=None,
    help="--allocator-model replay / slack",
)
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of the table")
def estimate(
    model: str | None,
    gpu: str | None,
    suggest: bool,
    allocator_model: str | None,
    allocator_replay: bool | None,
    as_json: bool,
    **kw: Any,
) -> None:
    """Estimate the peak GPU memory of one training step of MODEL.

    MODEL: a built-in name (`vramplan models`), a config.json or its folder, or a hub id (the local HF cache,
    else its built-in profile); optional when a --from file names the model.
    """
    from vramplan.api import estimate as run_estimate

    m, t, g, plan = resolve_plan(model, gpu, kw)
    emit_notes(t)
    if allocator_replay is not None and allocator_model is not None:
        raise VramplanError("give --allocator-model or --allocator-replay / --no-allocator-replay, not both")
    if allocator_replay is not None:
        allocator_model = "replay" if allocator_replay else "slack"
    chosen = allocator_model or "auto"
    pp = parallel_plan(m, t, run_estimate(m, gpu=g, train=t, allocator_model=chosen), kw)
    b = pp.breakdown  # one GPU's share; the one-GPU estimate itself when pp.spec.plain
    if suggest and g is None:
        raise VramplanError("--suggest needs a GPU to fit: add --gpu NAME (see `vramplan gpus`)")
    # advice: ranked one-GPU changes (plan.advice.suggest, run once) or other multi-GPU layouts; JSON lists the
    # suggestions with --suggest only, the table also when it does not fit (the best two)
    wants_advice = g is not None and (suggest if as_json else suggest or b.verdict != "fits")
    suggestions, alternatives = [], ()
    if wants_advice and pp.spec.plain:
        from vramplan.plan.advice import suggest as run_suggest

        suggestions = run_suggest(m, t, g, limit=6 if suggest else 2, allocator_model=chosen)
    elif wants_advice and not as_json:
        from vramplan.estimator.distributed import alternatives as run_alternatives

        alternatives = run_alternatives(m, t, pp)
    if as_json:
        from vramplan.report.estimate import estimate_json

        click.echo(json.dumps(estimate_json(pp, plan, suggestions if suggest else None)))
        return
    from vramplan.report.estimate import render_estimate

    render_estimate(pp, suggestions, alternatives, console())
