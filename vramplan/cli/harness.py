"""`vramplan measure` and `vramplan simulate`: the real training step (vramplan.measure), with the estimate
beside it. torch & co are imported inside the commands (`_harness`), never by `--help`."""

from __future__ import annotations

import json
from typing import Any

import click

from vramplan.cli import console
from vramplan.cli_options import COUNT, emit_notes, resolve_inputs, train_options
from vramplan.errors import VramplanError
from vramplan.report.common import warn

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

    out = console()
    render_measurement(r, estimate_b, out)
    if summary is not None:
        render_allocator(summary, modelled, estimate_b.peak_bytes, out, r.cuda)


@click.command()
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


@click.command()
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
