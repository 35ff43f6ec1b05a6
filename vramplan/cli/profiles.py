"""`vramplan gpus` and `vramplan models`: the built-in profiles (and the GPUs of this machine)."""

from __future__ import annotations

import json

import click

from vramplan.cli import console


@click.command()
@click.option("--local", is_flag=True, help="the GPUs NVML sees in this machine: name, total and free memory")
@click.option("--all", "show_all", is_flag=True, help="also every alias --gpu takes")
@click.option("--json", "as_json", is_flag=True)
def gpus(local: bool, show_all: bool, as_json: bool) -> None:
    """The GPU profiles: memory (GiB; NVML's total, else the marketed size), compute capability, bf16 / fp8 / fp4."""
    from vramplan.report import profiles as report

    if local:
        from vramplan.sources.local_gpu import query_local_gpus

        found = query_local_gpus()
        if as_json:
            click.echo(json.dumps(report.local_gpus_json(found)))
        else:
            report.render_local_gpus(found, console())
        return
    from vramplan.sources.profiles import load_gpus

    rows = list(load_gpus().values())
    if as_json:
        click.echo(json.dumps(report.gpus_json(rows)))
    else:
        report.render_gpus(rows, console(), show_all=show_all)


@click.command()
@click.option("--json", "as_json", is_flag=True)
def models(as_json: bool) -> None:
    """The built-in model profiles, with parameter counts."""
    from vramplan.report import profiles as report
    from vramplan.sources.profiles import builtin_model_names, load_model, load_model_config
    from vramplan.spec import SUPPORTED_MODEL_TYPES

    specs, pending = [], []  # pending: config.json kept for a model type the estimator does not build yet
    for n in builtin_model_names():
        cfg = load_model_config(n)[1]
        model_type = str((cfg.get("text_config") or cfg).get("model_type", cfg.get("model_type")))
        if model_type in SUPPORTED_MODEL_TYPES:  # hand-modelled or generic
            specs.append(load_model(n))
        else:
            pending.append(f"{n} ({model_type})")
    if as_json:
        click.echo(json.dumps(report.models_json(specs)))
        return
    con = console()
    report.render_models(specs, con)
    if pending:  # wrapped at the console's width, between names (a name is never cut)
        con.print("config only, model type not estimated yet: " + ", ".join(pending), highlight=False)
