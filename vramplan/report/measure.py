"""`vramplan measure` / `simulate`: the measured (or traced) breakdown beside the estimate, with the error."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vramplan.breakdown import COMPONENT_LABELS
from vramplan.report.common import VERDICT_STYLE, gib, print_flow, print_notes, train_title, verdict_line
from vramplan.report.train import breakdown_json

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

    from vramplan.breakdown import Breakdown


# A part whose measured size is under this share of the measured tensor peak gets its error as a difference
# in MiB, not a ratio: 4 KiB estimated against 1 byte traced is "+409,500 %" but changes nothing that matters
# (Mixtral-8x7B QLoRA: 640 MiB of logits estimated against 0 traced printed "+8191999900.0 %").
RELATIVE_ERROR_MIN_SHARE = 0.001
MIB = 1024**2


def error_pct(estimated: int, measured: int, peak: int = 0) -> float | None:
    """(estimated − measured) / measured in %; None when nothing was measured or when `measured` is under
    RELATIVE_ERROR_MIN_SHARE of `peak` (the measured tensor peak), where the ratio says nothing."""
    if measured <= 0 or measured < RELATIVE_ERROR_MIN_SHARE * peak:
        return None
    return 100.0 * (estimated - measured) / measured


def _err_text(estimated: int, measured: int, peak: int = 0) -> Text:
    """The error cell: `+1.2 %`; `Δ +3.0 MiB` for a part too small beside the peak for a ratio; `—` when
    both are zero."""
    from rich.text import Text

    if estimated == measured == 0:
        return Text("—", style="dim")
    e = error_pct(estimated, measured, peak)
    if e is None:
        diff = (estimated - measured) / MIB
        small = abs(estimated - measured) <= RELATIVE_ERROR_MIN_SHARE * max(peak, measured)
        return Text(f"Δ {diff:+.1f} MiB", style="green" if small else "yellow")
    style = "green" if abs(e) <= 5 else ("yellow" if abs(e) <= 15 else "red")
    return Text("0.0 %" if abs(e) < 0.05 else f"{e:+.1f} %", style=style)


def oom_line(r: Any) -> str:
    """'does not fit: out of memory in backward of step 1, after reaching X GiB' for a MeasureResult's oom."""
    o = r.oom
    where = "while building the model" if o.phase == "build" else f"in {o.phase} of step {o.step}"
    return f"does not fit: out of memory {where}, after reaching {gib(o.reached_bytes)} GiB"


def measurement_json(r: Any, estimate: Breakdown) -> dict[str, Any]:
    """`estimate --json`'s shape filled with the measurement (`r`: a vramplan.measure MeasureResult), plus the
    measured-only fields and the estimate beside it with the error per component."""
    b = r.breakdown
    comps = b.components.as_dict()
    est = estimate.components.as_dict()
    extra: dict[str, Any] = {
        "device": r.device,
        "steps": r.steps,
        "outcome": r.outcome,
        "verdict": r.verdict,
        "oom": None
        if r.oom is None
        else {
            "step": r.oom.step,
            "phase": r.oom.phase,
            "reached_bytes": r.oom.reached_bytes,
            "message": r.oom.message,
        },
        "cuda": None
        if r.cuda is None
        else {
            "device_name": r.cuda.device_name,
            "total_bytes": r.cuda.total_bytes,
            "max_memory_allocated": r.cuda.max_memory_allocated,
            "max_memory_reserved": r.cuda.max_memory_reserved,
            "nvml_process_bytes": r.cuda.nvml_process_bytes,
            "cuda_context_bytes": r.cuda.cuda_context_bytes,
        },
        "seconds": round(r.seconds, 2),
        "versions": dict(r.versions),
        "estimate": breakdown_json(estimate),
        "error_pct": {
            **{k: error_pct(est[k], comps[k], b.peak_bytes) for k in comps},
            "peak_bytes": error_pct(estimate.peak_bytes, b.peak_bytes),
        },
        "error_bytes": {
            **{k: est[k] - comps[k] for k in comps},
            "peak_bytes": estimate.peak_bytes - b.peak_bytes,
        },
    }
    return breakdown_json(b, extra)


def render_measurement(r: Any, estimate: Breakdown, console: Console) -> None:
    """The measured (or traced) breakdown and the estimate side by side, component by component, with error.

    `r`: a vramplan.measure MeasureResult. Components are compared at each one's own peak; the phase rows
    compare each phase's peak.
    """
    from rich.table import Table
    from rich.text import Text

    b = r.breakdown
    kind = {"cuda": "measured on CUDA", "cpu": "traced on CPU", "meta": "traced on meta tensors",
            "fake": "traced on fake tensors"}[r.device]  # fmt: skip
    title = f"{train_title(b)} · {kind}, {r.steps} step{'s' if r.steps != 1 else ''} vs estimate"
    print_flow(title, console)
    t = Table(show_edge=False, pad_edge=False)
    measured = "measured GiB" if r.device == "cuda" else "traced GiB"
    for col, just in (("component", "left"), (measured, "right"), ("estimated GiB", "right"),
                      ("error", "right")):  # fmt: skip
        t.add_column(col, justify=just)
    comps, est = b.components.as_dict(), estimate.components.as_dict()
    for name in comps:
        if comps[name] or est[name]:
            err = _err_text(est[name], comps[name], b.peak_bytes)
            t.add_row(COMPONENT_LABELS[name], gib(comps[name]), gib(est[name]), err)
    t.add_row(
        Text(f"tensor peak (measured in {b.peak_phase}, estimated in {estimate.peak_phase})", style="bold"),
        Text(gib(b.peak_bytes), style="bold"),
        Text(gib(estimate.peak_bytes), style="bold"),
        _err_text(estimate.peak_bytes, b.peak_bytes),
    )
    est_phases = {p.phase: p.total for p in estimate.phases}
    for p in b.phases:
        if p.phase in est_phases:
            t.add_row(
                f"  {p.phase} phase peak",
                gib(p.total),
                gib(est_phases[p.phase]),
                _err_text(est_phases[p.phase], p.total),
            )
    if r.cuda is not None:
        c = r.cuda
        t.add_row(
            "torch max_memory_allocated",
            gib(c.max_memory_allocated),
            gib(estimate.peak_bytes),
            _err_text(estimate.peak_bytes, c.max_memory_allocated),
        )
        t.add_row(
            "torch max_memory_reserved",
            gib(c.max_memory_reserved),
            gib(estimate.reserved_bytes),
            _err_text(estimate.reserved_bytes, c.max_memory_reserved),
        )
        nvml = c.nvml_process_bytes
        t.add_row(
            "NVML, this process (now)",
            "—" if nvml is None else gib(nvml),
            # NVML shows what is reserved (with room on the card) plus the context, not the least that runs
            gib(estimate.reserved_bytes + estimate.cuda_context_bytes),
            Text("—", style="dim")
            if nvml is None
            else _err_text(estimate.reserved_bytes + estimate.cuda_context_bytes, nvml),
        )
    else:
        t.add_row(
            Text("device total (traced: replayed allocator)", style="dim"),
            gib(b.device_bytes),
            gib(estimate.device_bytes),
            _err_text(estimate.device_bytes, b.device_bytes),
        )
    if r.paged_bytes or estimate.paged_bytes:
        t.add_row(
            "paged optimizer states (managed, apart)",
            gib(r.paged_bytes),
            gib(estimate.paged_bytes),
            _err_text(estimate.paged_bytes, r.paged_bytes),
        )
    console.print(t)
    print_flow(
        f"params: {b.params_total:,} total, {b.params_trainable:,} trainable · {r.seconds:.1f} s · "
        "error = (estimated − measured) / measured · Δ = estimated − measured, for a part under "
        f"{100 * RELATIVE_ERROR_MIN_SHARE:g} % of the peak · GiB = 1024³ B",
        console,
    )
    if r.oom is not None:
        console.print(Text(oom_line(r), style=VERDICT_STYLE["oom"]))
    elif b.gpu_bytes is not None and b.verdict is not None:
        how = "" if r.cuda is not None else " (traced peak, replayed allocator, modelled CUDA context)"
        console.print(verdict_line(b, how, console.width), soft_wrap=True)
    # the step's own notes (b.train.notes) went to stderr as warnings before the table (cli emit_notes)
    print_notes(b.notes, console)


class Progress:
    """Harness progress (building, quantizing layer i/N, step k/N) on stderr: a rich status line on a terminal,
    plain lines otherwise."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.status = self.console.status("starting") if self.console.is_terminal else None

    def __enter__(self) -> Progress:
        if self.status is not None:
            self.status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.status is not None:
            self.status.stop()

    def __call__(self, message: str) -> None:
        if self.status is not None:
            self.status.update(message)
        elif not message.startswith(("quantizing layer", "initializing layer")):
            import click

            click.echo(message, err=True)
