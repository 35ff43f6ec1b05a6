"""`vramplan validate` and `vramplan calibration`: the estimator against published figures and stored runs."""

from __future__ import annotations

import json

import click

from vramplan.cli import console


@click.command()
@click.option("--data", default=None, metavar="FILE.jsonl", help="a validation set [shipped published-dev]")
@click.option("--all", "show_all", is_flag=True, help="every record, not only those with an estimate")
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of the table")
def validate(data: str | None, show_all: bool, as_json: bool) -> None:
    """Compare the estimator with published measurements (papers, READMEs): error by confidence level."""
    from vramplan.report import trust as report
    from vramplan.trust.validate import validate as run_validate

    v = run_validate(data)
    if as_json:
        click.echo(json.dumps(report.validation_json(v)))
    else:
        report.render_validation(v, console(), show_all=show_all)


@click.command()
@click.option("--store", default=None, metavar="PATH", help="runs file [$VRAMPLAN_STORE, else user data dir]")
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of the tables")
def calibration(store: str | None, as_json: bool) -> None:
    """Runs stored by `measure --save` and the per-GPU figures `estimate` uses from them."""
    from vramplan.report import trust as report
    from vramplan.trust.calibration import calibrations, default_store, read_runs

    path = store or str(default_store())
    runs = read_runs(path)
    cals = calibrations(runs)
    if as_json:
        click.echo(json.dumps(report.calibration_json(runs, cals, path)))
    else:
        report.render_calibration(runs, cals, path, console())
