"""One training step's estimate (or measurement) as a table of components and as JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vramplan.breakdown import COMPONENT_LABELS
from vramplan.report.common import (
    band_text,
    bar,
    calibration_json,
    figures_json,
    gib,
    listed,
    print_flow,
    print_labelled,
    print_notes,
    recipe_line,
    stack_line,
    train_title,
    verdict_line,
)

if TYPE_CHECKING:
    from rich.console import Console

    from vramplan.breakdown import Breakdown


def train_inputs_json(b: Breakdown) -> dict[str, Any]:
    """The resolved inputs of a training result: model, GPU, the TrainSpec, the calibration used, and for a
    measurement the device, steps and every note."""
    out = {"model": b.model, "gpu": b.gpu, **listed(b.train.as_dict()), **calibration_json(b)}
    if b.run is not None:
        out.update(device=b.run.device, steps=b.run.steps)
    out["notes"] = list(b.all_notes)
    if b.approximation is not None:
        a = b.approximation
        out["approximation"] = {"kind": a.kind, "basis": a.basis, "error_band": a.error_band,
                                **({"note": a.note} if a.note else {})}  # fmt: skip
    return out


def allocator_figures_json(b: Breakdown) -> dict[str, Any]:
    """Where the caching allocator's figures come from and, for an estimate, their stated error against the
    replays of traced steps (shares of the tensor peak): the walk replay's
    (`vramplan.estimator.allocator_replay.REPLAY_ERRORS`) or the slack model's (`allocator_slack.ERRORS`)."""
    from vramplan.estimator.allocator_slack import ERRORS, setting_of
    from vramplan.spec.alloc_conf import parse_alloc_conf

    o = b.overheads
    setting = setting_of(parse_alloc_conf(b.train.alloc_conf))
    replayed = b.replayed_allocator is not None and not (o.measured or o.calibrated_ratio)
    if o.measured:
        source = "measured" if b.run is not None and b.run.device == "cuda" else "replay"
    elif o.calibrated_ratio:
        source = "calibration"
    elif replayed:
        source = "walk replay" if b.replay_verdict else "walk replay (reserved), model (need)"
    else:
        source = "model"
    out: dict[str, Any] = {
        "setting": setting,
        "source": source,
        "reserved_slack_bytes": b.allocator_overhead_bytes,
        "need_bytes": b.allocator_need_bytes,
    }
    if not o.measured:
        basis = ("rms", "worst", "held_out_rms", "held_out_worst")
        walk = "the walk's allocation sequence replayed, against replays of the 60 traced steps of the oracle grid"
        model = "the slack model, left-one-family-out over the 60-trace grid"
        ckpt = b.train.grad_ckpt
        reserved = ERRORS[setting, "max_reserved_bytes"]
        need = ERRORS[setting, "min_limit_bytes"]
        if replayed or b.replay_verdict:  # the replay's table: its module (and the allocator) only when replayed
            from vramplan.estimator.allocator_replay import REPLAY_ERRORS

            if replayed:
                reserved = REPLAY_ERRORS[setting, ckpt, "max_reserved_bytes"]
            if b.replay_verdict:
                need = REPLAY_ERRORS[setting, ckpt, "min_limit_bytes"]
        out["model_error"] = {
            "basis": "share of the tensor peak; reserved: "
            + (walk if replayed else model)
            + "; need: "
            + (walk if b.replay_verdict else model)
            + "; and 32 held-out traces",
            "reserved": dict(zip(basis, reserved, strict=True)),
            "need": dict(zip(basis, need, strict=True)),
        }
    return out


def breakdown_json(b: Breakdown, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": b.model,
        "source": b.source,
        **figures_json(b),
        "allocator": allocator_figures_json(b),
        "paged_bytes": b.paged_bytes,
        "host_bytes": b.host_bytes,
        "params": {"total": b.params_total, "trainable": b.params_trainable},
        "inputs": train_inputs_json(b),
    }
    if extra:
        out.update(extra)
    return out


def render_breakdown(b: Breakdown, console: Console, title: str | None = None) -> None:
    """Components with their share of the device total, the peak, the overheads, the verdict, the notes."""
    from rich.table import Table
    from rich.text import Text

    from vramplan.spec.alloc_conf import parse_alloc_conf

    print_flow(title or train_title(b), console)  # wrapped between its items, not at the table's width
    t = Table(show_edge=False, pad_edge=False)
    t.add_column("component")
    t.add_column("GiB", justify="right")
    t.add_column("share")
    comps = b.components.as_dict()
    dev = max(b.device_bytes, 1)
    for name, val in comps.items():
        if val:
            t.add_row(COMPONENT_LABELS[name], gib(val), bar(val / dev))
    t.add_row(Text(f"tensor peak ({b.peak_phase})", style="bold"), Text(gib(b.peak_bytes), style="bold"), "")
    t.add_row(
        "caching allocator: needed to run",
        gib(b.allocator_need_bytes),
        bar(b.allocator_need_bytes / dev),
    )
    t.add_row("CUDA context", gib(b.cuda_context_bytes), bar(b.cuda_context_bytes / dev))
    t.add_row(Text("device total (least that runs)", style="bold"), Text(gib(b.device_bytes), style="bold"), "")
    setting = "expandable" if parse_alloc_conf(b.train.alloc_conf).expandable_segments else "defaults"
    t.add_row(Text(f"  max_memory_reserved ({setting})", style="dim"), Text(gib(b.reserved_bytes), style="dim"), "")
    if b.paged_bytes:
        t.add_row("paged optimizer states (managed, apart)", gib(b.paged_bytes), "")
    if b.host_bytes:
        t.add_row("offloaded activations (host RAM, apart)", gib(b.host_bytes), "")
    console.print(t)
    print_flow(
        f"params: {b.params_total:,} total, {b.params_trainable:,} trainable "
        f"({100 * b.params_trainable / max(b.params_total, 1):.3g} %) · peak in {b.peak_phase}"
        f"{f' ({b.peak_moment})' if b.peak_moment else ''} · units GiB = 1024³ B",
        console,
    )
    console.print(recipe_line(b.train))
    if stack_line(b.train):
        print_flow(stack_line(b.train), console)
    if b.gpu_bytes is not None and b.verdict is not None:
        console.print(verdict_line(b, band_text(b.error_band), console.width), soft_wrap=True)
    # the step's own notes (b.train.notes) went to stderr as warnings before the table (cli emit_notes)
    print_notes(b.notes, console)
    if b.approximation is not None:
        a = b.approximation
        if a.kind == "vision":  # a hand-modelled decoder inside a VLM wrapper: exact, with what is left out
            print_labelled("note", "yellow", a.note, console)
        else:
            print_labelled(
                "approximated",
                "yellow",
                f"{b.model} is not hand-modelled: parameters exact from "
                + ("its remote modeling code's layout" if a.kind == "remote" else "transformers' module tree")
                + f", activations from a {a.basis} (±{100 * a.error_band:.0f} % more error, in the band)"
                + (f"; {a.note}" if a.note else ""),
                console,
            )
