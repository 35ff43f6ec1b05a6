"""`vramplan serve`: the memory to serve a model with vLLM or HF generate."""

from __future__ import annotations

import json
from typing import Any

import click

from vramplan.cli import console
from vramplan.cli_options import resolve_gpu, serve_options
from vramplan.report.common import warn


@click.command()
@click.argument("model")
@serve_options
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of the table")
def serve(model: str, gpu: str | None, as_json: bool, **kw: Any) -> None:
    """Estimate the GPU memory to serve MODEL (weights + KV cache + adapters) with vLLM or HF generate.

    vLLM: the KV-cache tokens its pool holds and the concurrency at --max-model-len, as vLLM logs at start.
    """
    from vramplan.api import estimate_serve

    b = estimate_serve(model, gpu=resolve_gpu(gpu), **kw)
    for note in b.serve.notes:
        warn(note)
    if as_json:
        from vramplan.report.serve import serve_json

        click.echo(json.dumps(serve_json(b)))
        return
    from vramplan.report.serve import render_serve

    render_serve(b, console())
