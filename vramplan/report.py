"""Rendering only: rich tables and bars, JSON. GiB (binary, 1024³ bytes) everywhere, labelled as such."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from vramplan.breakdown import COMPONENT_LABELS, Breakdown

GIB = 1024**3
VERDICT_STYLE = {"fits": "bold green", "tight": "bold yellow", "oom": "bold red"}
VERDICT_TEXT = {"fits": "fits", "tight": "tight", "oom": "does not fit"}


def gib(n: int | float) -> str:
    return f"{n / GIB:.2f}"


def bar(frac: float, width: int = 24) -> str:
    frac = min(max(frac, 0.0), 1.0)
    full = int(frac * width)
    rest = frac * width - full
    return "█" * full + ("▌" if rest >= 0.5 else "") if frac > 0 else ""


def breakdown_json(b: Breakdown, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": b.model,
        "source": b.source,
        "peak_bytes": b.peak_bytes,
        "reserved_bytes": b.reserved_bytes,
        "device_bytes": b.device_bytes,
        "paged_bytes": b.paged_bytes,
        "peak_phase": b.peak_phase,
        "components": b.components.as_dict(),
        "overhead": {
            "allocator_overhead_bytes": b.allocator_overhead_bytes,
            "cuda_context_bytes": b.cuda_context_bytes,
        },
        "phases": {p.phase: {"total_bytes": p.total, **p.components.as_dict()} for p in b.phases},
        "gpu_bytes": b.gpu_bytes,
        "headroom_bytes": b.headroom_bytes,
        "verdict": b.verdict,
        "error_band": b.error_band,
        "params": {"total": b.params_total, "trainable": b.params_trainable},
        "inputs": {k: list(v) if isinstance(v, tuple) else v for k, v in b.inputs.items()},
    }
    if extra:
        out.update(extra)
    return out


def render_breakdown(b: Breakdown, console: Console, title: str | None = None) -> None:
    inp = b.inputs
    head = title or (
        f"{b.model} · {inp.get('method')} · batch {inp.get('batch')} × seq {inp.get('seq')}"
        + (f" · {inp['gpu']}" if inp.get("gpu") else "")
    )
    t = Table(title=head, title_justify="left", show_edge=False, pad_edge=False)
    t.add_column("component")
    t.add_column("GiB", justify="right")
    t.add_column("share")
    comps = b.components.as_dict()
    dev = max(b.device_bytes, 1)
    for name, val in comps.items():
        if val:
            t.add_row(COMPONENT_LABELS[name], gib(val), bar(val / dev))
    t.add_row(Text(f"tensor peak ({b.peak_phase})", style="bold"), Text(gib(b.peak_bytes), style="bold"), "")
    t.add_row("allocator overhead (reserved − allocated)", gib(b.allocator_overhead_bytes),
              bar(b.allocator_overhead_bytes / dev))
    t.add_row("CUDA context", gib(b.cuda_context_bytes), bar(b.cuda_context_bytes / dev))
    t.add_row(Text("device total (as nvidia-smi)", style="bold"), Text(gib(b.device_bytes), style="bold"), "")
    if b.paged_bytes:
        t.add_row("paged optimizer states (managed, apart)", gib(b.paged_bytes), "")
    console.print(t)
    console.print(
        f"params: {b.params_total:,} total, {b.params_trainable:,} trainable "
        f"({100 * b.params_trainable / max(b.params_total, 1):.3g} %) · peak in {b.peak_phase} · units GiB = 1024³ B"
    )
    if b.gpu_bytes is not None and b.verdict is not None:
        head_gib = gib(b.headroom_bytes or 0)
        console.print(
            Text.assemble(
                (VERDICT_TEXT[b.verdict], VERDICT_STYLE[b.verdict]),
                f"  on {inp.get('gpu')} ({gib(b.gpu_bytes)} GiB): headroom {head_gib} GiB"
                f" (tight = within ±{100 * b.error_band:.0f} % estimator error)",
            )
        )
    for note in inp.get("notes", ()):
        console.print(f"[yellow]note:[/] {note}")


def render_advice(lines: list[str], console: Console) -> None:
    for line in lines:
        console.print(f"[cyan]advice:[/] {line}")
