"""`vramplan fit`: the largest batch, sequence and rank that fit a GPU, and the peak curves of --plot."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from vramplan.cli import console
from vramplan.cli_options import (
    emit_notes,
    parallel_options,
    resolve_parallel_spec,
    resolve_plan,
    train_options,
)
from vramplan.errors import VramplanError


def seq_list_option(f: Callable) -> Callable:
    """`fit` takes a list of sequence lengths: its --seq replaces train_options' single one."""
    f.__click_params__ = [p for p in f.__click_params__ if p.name != "seq"]  # type: ignore[attr-defined]
    return click.option(
        "--seq", "seq_list", default=None, metavar="N[,N...]",
        help="sequence lengths (columns) [512,1024,2048,4096,8192]; the first is the rank search's [1024]",
    )(f)  # fmt: skip


@click.command()
@click.argument("model", required=False)
@seq_list_option
@train_options
@parallel_options
@click.option(
    "--plot",
    default=None,
    is_flag=False,
    flag_value="-",
    metavar="[FILE.png]",
    help="peak vs sequence length per method (at --batch): in the terminal, or a PNG file",
)
@click.option(
    "--allocator-model",
    type=click.Choice(["auto", "slack"]),
    default="auto",
    show_default=True,
    help="the verdict each printed value is checked with: auto, `estimate`'s (the allocator replay where it "
    "could change the verdict; seconds for a 7B model on a small card), slack the fitted model's (probes only)",
)
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of the table")
def fit(
    model: str | None,
    gpu: str | None,
    seq_list: str | None,
    plot: str | None,
    allocator_model: str,
    as_json: bool,
    **kw: Any,
) -> None:  # fmt: skip
    """What fits on a GPU: the largest batch per method and sequence length, the longest sequence, the largest
    LoRA rank.

    Rows: full, LoRA, QLoRA; only the method you chose when you chose one (--method, or a --from file's
    finetuning type), each without / with gradient checkpointing, with --optim and with 8-bit AdamW. A cell is
    the largest batch whose verdict is `fits` or `tight` (* = tight).
    """
    from vramplan.plan.curves import peak_curves
    from vramplan.plan.fit import fit_table, parse_seqs

    if gpu is None:
        raise VramplanError("fit needs a GPU: --gpu NAME (see `vramplan gpus`) or --gpu auto")
    if plot == "-" and as_json:
        raise VramplanError("the terminal plot cannot go with --json; write a file instead: --plot out.png")
    seqs, kw["seq"] = parse_seqs(seq_list)
    m, t, g, plan = resolve_plan(model, gpu, kw)
    emit_notes(t)
    # typed (`flag`) or written in a --from file (`file:PATH`); not a tool's default (`default:llamafactory`)
    chosen = plan.sources.get("method", "default")
    methods = (t.method,) if chosen == "flag" or chosen.startswith("file:") else None
    p = resolve_parallel_spec(t, kw)
    ft = fit_table(m, t, g, seqs, methods, parallel=p, printed=allocator_model)  # type: ignore[arg-type]
    curves = peak_curves(m, t, g, seqs, methods, parallel=p) if plot else []
    local = None
    if gpu == "auto":
        from vramplan.sources.local_gpu import query_local_gpus

        local = query_local_gpus()[0]
    if plot and plot != "-":
        from vramplan.report.plot import plot_png, plot_title

        plot_png(curves, g, plot_title(m.name, g, t.batch), plot, ft.error_band)
    if as_json:
        from vramplan.report.fit import fit_json

        click.echo(json.dumps(fit_json(ft, local, plot)))
        return
    from vramplan.report.fit import render_fit

    render_fit(ft, local, curves, plot, console())
