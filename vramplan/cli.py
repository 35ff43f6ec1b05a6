"""The `vramplan` command: parse the options, call the library once, render through vramplan.report.

Option groups and the resolution of their values live in cli_options.py; the arithmetic in vramplan.estimator,
vramplan.plan and vramplan.api; JSON and tables in vramplan.report. Heavy libraries (torch, transformers,
peft, bitsandbytes) are imported only inside `measure` / `simulate`, rich only when a table is drawn.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from vramplan.cli_options import (
    COUNT,
    emit_notes,
    parallel_options,
    parallel_plan,
    resolve_gpu,
    resolve_inputs,
    resolve_parallel_spec,
    resolve_plan,
    seq_list_option,
    serve_options,
    train_options,
)
from vramplan.errors import VramplanError
from vramplan.report.common import warn


def _console():  # rich is imported lazily: `--json` and `--help` don't pay for it
    from vramplan.report.common import console

    return console()


class _Group(click.Group):
    """One error style: a VramplanError anywhere in a command, and click's own usage errors (a bad option
    value, an unknown option or command, a missing argument), become one `error: …` line on stderr and exit
    code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VramplanError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else ctx.command_path
            message = e.format_message().replace("\n", " ")
            click.echo(f"error: {message} (see `{where} --help`)", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vramplan")
def main() -> None:
    """Plan GPU memory for fine-tuning and serving LLMs. Sizes are GiB (1024³ bytes)."""
    from vramplan.report.common import encodable_streams

    encodable_streams()  # a non-UTF-8 terminal gets ASCII, not a UnicodeEncodeError


@main.command()
@click.argument("model", required=False)
@train_options
@parallel_options
@click.option("--suggest", is_flag=True, help="rank the cheapest changes that make it fit (needs --gpu)")
@click.option(
    "--allocator-replay",
    is_flag=True,
    help="the caching allocator's reserved figure and the verdict from a replay of the step's own "
    "allocation sequence (smaller error; 0.1-0.7 s) instead of the slack model (`fit` probes with the "
    "model)",
)
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of the table")
def estimate(
    model: str | None, gpu: str | None, suggest: bool, allocator_replay: bool, as_json: bool, **kw: Any
) -> None:
    """Estimate the peak GPU memory of one training step of MODEL.

    MODEL: a built-in name (`vramplan models`), a config.json or its folder, or a hub id (the local HF cache,
    else its built-in profile); optional when a --from file names the model.
    """
    from vramplan.api import estimate as run_estimate

    m, t, g, plan = resolve_plan(model, gpu, kw)
    emit_notes(t)
    replay = {"replay_allocator": allocator_replay, "replay_verdict": allocator_replay}
    pp = parallel_plan(m, t, run_estimate(m, gpu=g, train=t, **replay), kw)
    b = pp.breakdown  # one GPU's share; the one-GPU estimate itself when pp.spec.plain
    if suggest and g is None:
        raise VramplanError("--suggest needs a GPU to fit: add --gpu NAME (see `vramplan gpus`)")
    # advice: ranked one-GPU changes (plan.advice.suggest, run once) or other multi-GPU layouts; JSON lists the
    # suggestions with --suggest only, the table also when it does not fit (the best two)
    wants_advice = g is not None and (suggest if as_json else suggest or b.verdict != "fits")
    suggestions, alternatives = [], ()
    if wants_advice and pp.spec.plain:
        from vramplan.plan.advice import suggest as run_suggest

        suggestions = run_suggest(m, t, g, limit=6 if suggest else 2)
    elif wants_advice and not as_json:
        from vramplan.estimator.distributed import alternatives as run_alternatives

        alternatives = run_alternatives(m, t, pp)
    if as_json:
        from vramplan.report.estimate import estimate_json

        click.echo(json.dumps(estimate_json(pp, plan, suggestions if suggest else None)))
        return
    from vramplan.report.estimate import render_estimate

    render_estimate(pp, suggestions, alternatives, _console())


@main.command()
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
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of the table")
def fit(
    model: str | None, gpu: str | None, seq_list: str | None, plot: str | None, as_json: bool, **kw: Any
) -> None:  # fmt: skip
    """What fits on a GPU: the largest batch per method and sequence length, the longest sequence, the largest
    LoRA rank.

    Rows: full, LoRA, QLoRA; only the method you chose when you chose one (--method, or a --from file's
    finetuning type), each without / with gradient checkpointing, with --optim and with 8-bit AdamW. A cell is
    the largest batch whose verdict is `fits` or `tight` (* = tight).
    """
    from vramplan.plan.fit import fit_table, parse_seqs, peak_curves

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
    ft = fit_table(m, t, g, seqs, methods, parallel=p)
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

    render_fit(ft, local, curves, plot, _console())


@main.command()
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
            report.render_local_gpus(found, _console())
        return
    from vramplan.sources.profiles import load_gpus

    rows = list(load_gpus().values())
    if as_json:
        click.echo(json.dumps(report.gpus_json(rows)))
    else:
        report.render_gpus(rows, _console(), show_all=show_all)


@main.command()
@click.option("--json", "as_json", is_flag=True)
def models(as_json: bool) -> None:
    """The built-in model profiles, with parameter counts."""
    from vramplan.report import profiles as report
    from vramplan.sources.profiles import builtin_model_names, load_model, load_model_config
    from vramplan.spec import SUPPORTED_MODEL_TYPES
    from vramplan.spec.architectures import known_types

    specs, pending = [], []  # pending: config.json kept for a model type the estimator does not build yet
    for n in builtin_model_names():
        cfg = load_model_config(n)[1]
        model_type = str((cfg.get("text_config") or cfg).get("model_type", cfg.get("model_type")))
        if model_type in SUPPORTED_MODEL_TYPES or model_type in known_types():  # hand-modelled or generic
            specs.append(load_model(n))
        else:
            pending.append(f"{n} ({model_type})")
    if as_json:
        click.echo(json.dumps(report.models_json(specs)))
        return
    con = _console()
    report.render_models(specs, con)
    if pending:  # wrapped at the console's width, between names (a name is never cut)
        con.print("config only, model type not estimated yet: " + ", ".join(pending), highlight=False)


@main.command()
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

    render_serve(b, _console())


@main.command()
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
        report.render_validation(v, _console(), show_all=show_all)


@main.command()
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
        report.render_calibration(runs, cals, path, _console())


HARNESS_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate")


def _harness(command: str):
    """vramplan.measure.harness, or one line naming what to install when torch & co are missing (the
    quickstart's `pip install vramplan` installs the estimator only)."""
    try:
        import vramplan.measure.harness as harness
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in HARNESS_PACKAGES:
            raise
        raise VramplanError(
            f"`vramplan {command}` runs the real training step and needs {e.name}, which is not installed: "
            "pip install torch (the CPU build is enough), then pip install 'vramplan[measure]'"
        ) from None
    return harness


def _measured(r, estimate_b, as_json: bool) -> None:
    from vramplan.estimator.allocator_slack import allocator_slacks

    summary = r.allocator_summary()
    modelled = allocator_slacks(estimate_b.peak_shape)
    if as_json:
        from vramplan.report.allocator import allocator_json
        from vramplan.report.measure import measurement_json

        out = measurement_json(r, estimate_b)
        if summary is not None:
            out["allocator_replays"] = allocator_json(summary, modelled, r.cuda)
        click.echo(json.dumps(out))
        return
    from vramplan.report.allocator import render_allocator
    from vramplan.report.measure import render_measurement

    console = _console()
    render_measurement(r, estimate_b, console)
    if summary is not None:
        render_allocator(summary, modelled, estimate_b.peak_bytes, console, r.cuda)


@main.command()
@click.argument("model", required=False)
@train_options
@click.option("--steps", type=COUNT, default=3, show_default=True, help="training steps (states appear in 1)")
@click.option(
    "--device",
    type=click.Choice(["cuda", "cpu"], case_sensitive=False),
    default=None,
    help="[cuda if torch sees one, else cpu]",
)
@click.option("--weights", default=None, metavar="PATH", help="from_pretrained(PATH), not random weights")
@click.option("--save", is_flag=True, help="add this CUDA run to the calibration store")
@click.option("--store", default=None, metavar="PATH", help="--save's file [$VRAMPLAN_STORE, else user dir]")
@click.option("--json", "as_json", is_flag=True, help="estimate's JSON shape, measured, plus measured fields")
def measure(
    model: str | None,
    gpu: str | None,
    steps: int,
    device: str | None,
    weights: str | None,
    save: bool,
    store: str | None,
    as_json: bool,
    **kw: Any,
) -> None:
    """Run real training steps of MODEL (transformers + peft + bitsandbytes) and measure their memory.

    On CUDA: torch's max_memory_allocated / max_memory_reserved, NVML's figure for this process and the
    tracked breakdown; an out-of-memory error is a result (verdict oom). On CPU: the same step, traced tensor
    by tensor with the kernels CUDA would run (models up to 2B parameters). The estimate is printed beside it.
    """
    from vramplan.api import estimate as run_estimate

    m, t, g = resolve_inputs(model, gpu, kw)
    emit_notes(t)
    if t.stack.named:
        warn("the harness runs the installed libraries: --stack shapes only the estimate printed beside it")
    if save and device == "cpu":  # refused before torch is imported (seconds)
        raise VramplanError("--save stores CUDA measurements; --device cpu has none")
    harness = _harness("measure")
    if device is None:
        device = "cuda" if harness.torch.cuda.is_available() else "cpu"
    if save and device != "cuda":
        raise VramplanError(f"--save stores CUDA measurements; --device {device} has none")
    from vramplan.report.measure import Progress

    with Progress() as progress:
        r = harness.run_step(m, t, device=device, steps=steps, weights=weights, gpu=g, progress=progress)
    estimate_b = run_estimate(m, gpu=g, train=t)
    _measured(r, estimate_b, as_json)  # shown first: a store that cannot be written loses nothing on screen
    if save and r.oom is None:
        from vramplan.measure.cuda_run import run_record
        from vramplan.trust.calibration import append_run

        record = run_record(r, estimate_b)
        try:
            path = append_run(record, store)
        except VramplanError as e:
            from dataclasses import asdict, is_dataclass

            line = json.dumps(asdict(record) if is_dataclass(record) else record, default=list)
            raise VramplanError(f"{e}; the run, to append by hand: {line}") from None
        click.echo(f"saved to {path}", err=True)


@main.command()
@click.argument("model", required=False)
@train_options
@click.option("--steps", type=COUNT, default=2, show_default=True, help="training steps to trace")
@click.option("--json", "as_json", is_flag=True, help="estimate's JSON shape, traced, plus traced fields")
def simulate(model: str | None, gpu: str | None, steps: int, as_json: bool, **kw: Any) -> None:
    """Trace real training steps of MODEL at full size without memory (fake / meta tensors, no GPU needed).

    The real transformers + peft + bitsandbytes code runs on tensors that have shapes but no data; the
    tracker records what CUDA would allocate (tensor level) and the estimate is printed beside it.
    """
    from vramplan.api import estimate as run_estimate

    m, t, g = resolve_inputs(model, gpu, kw)
    emit_notes(t)
    if t.stack.named:
        warn("the harness runs the installed libraries: --stack shapes only the estimate printed beside it")
    harness = _harness("simulate")
    from vramplan.report.measure import Progress

    with Progress() as progress:
        r = harness.simulate(m, t, steps=steps, gpu=g, progress=progress)
    _measured(r, run_estimate(m, gpu=g, train=t), as_json)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
