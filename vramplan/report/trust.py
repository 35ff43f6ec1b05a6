"""How far to trust an estimate: `vramplan validate` (published measurements) and `vramplan calibration`
(runs stored by `measure --save`), and the one line an estimate prints about the overheads it used."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vramplan.report.common import gib, hanging, print_flow

if TYPE_CHECKING:
    from rich.console import Console

    from vramplan.breakdown import Breakdown
    from vramplan.trust.calibration import Calibration, RunRecord
    from vramplan.trust.validate import Validation


def validation_json(v: Validation) -> dict[str, Any]:
    """`vramplan validate --json`: every row, the summary by confidence level, exclusion counts."""
    return {
        "path": v.path,
        "rows": [
            {
                "id": r.id,
                "source": r.source,
                "framework": r.framework,
                "confidence": r.confidence,
                "config": r.config,
                "measure_kind": r.measure_kind,
                "quantity": r.mapped.quantity if r.mapped else None,
                "measured_bytes": r.measured_bytes,
                "estimated_bytes": r.estimated_bytes,
                "error": r.error,
                "headline": r.headline,
                "excluded": list(r.reasons),
                "inputs": ({"model": r.mapped.model, "gpu": r.mapped.gpu, **r.mapped.options} if r.mapped else None),
            }
            for r in v.rows
        ],
        "summary": [
            {
                "confidence": s.confidence,
                "n": s.n,
                "median_abs_error": s.median_abs_error,
                "worst_abs_error": s.worst_abs_error,
            }
            for s in v.summaries
        ],
        "exclusions": v.exclusions,
        "counts": {
            "records": len(v.rows),
            "mapped": sum(r.mapped is not None for r in v.rows),
            "headline": sum(r.headline for r in v.rows),
        },
    }


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def validation_summary_lines(v: Validation) -> list[str]:
    """The headline summary: median and worst |error| per confidence level, then exclusions by reason."""
    n_mapped = sum(r.mapped is not None for r in v.rows)
    n_head = sum(r.headline for r in v.rows)
    lines = [f"{len(v.rows)} records, {n_mapped} mapped onto estimate inputs, {n_head} in the headline"]
    for s in v.summaries:
        lines.append(
            f"  {s.confidence:>6}: n={s.n}  median |error| {_pct(s.median_abs_error)}  worst {_pct(s.worst_abs_error)}"
        )
    lines.append("excluded from the headline (records per reason; a record can have several):")
    lines += [f"  {n:3d}  {reason}" for reason, n in v.exclusions.items()]
    return lines


def render_validation(v: Validation, console: Console, show_all: bool = True) -> None:
    """The records (measured vs estimated, GB = 10⁹ B as the sources print) and the summary; without
    `show_all`, only the records that have an estimate (the rest are counted in the summary). Narrow
    terminals get one line of figures per record with its config and reason indented below."""
    rows = v.rows if show_all else [r for r in v.rows if r.estimated_bytes is not None]
    if console.width < 120:
        _render_validation_lines(rows, console)
    else:
        _render_validation_table(rows, console)
    for line in validation_summary_lines(v):
        console.print(line, highlight=False)
    if not show_all:
        console.print(f"{len(v.rows) - len(rows)} records without an estimate not shown: `vramplan validate --all`")


_KIND = {"max_memory_allocated": "alloc", "max_memory_reserved": "resv", "reserved": "resv", "nvidia-smi": "smi"}


def _validation_figures(r: Any) -> tuple[str, str, str, str]:
    measured = f"{r.measured_bytes / 1e9:.2f} {_KIND.get(r.measure_kind, '?')}"
    estimated = "—" if r.estimated_bytes is None else f"{r.estimated_bytes / 1e9:.2f}"
    error = "—" if r.error is None else f"{100 * r.error:+.1f} %"
    reason = r.reasons[0] + (f" (+{len(r.reasons) - 1})" if len(r.reasons) > 1 else "") if r.reasons else "headline"
    return measured, estimated, error, reason


def _render_validation_lines(rows: Any, console: Console) -> None:
    from rich.text import Text

    console.print("published validation set (GB = 10⁹ B): id, measured → estimated, error", highlight=False)
    for r in rows:
        measured, estimated, error, reason = _validation_figures(r)
        console.print(Text(f"{r.id}  {measured} → {estimated}  {error}", no_wrap=True, overflow="ignore"))
        detail = hanging("    ", f"{r.framework} · {r.config} · {reason}", console.width)
        console.print(Text(detail, style="dim"), soft_wrap=True)


def _render_validation_table(rows: Any, console: Console) -> None:
    from rich.table import Table
    from rich.text import Text

    t = Table(title="published validation set (GB = 10⁹ B)", title_justify="left", show_edge=False, pad_edge=False)
    for col, just in (
        ("id", "left"),
        ("framework", "left"),
        ("config", "left"),
        ("measured", "right"),
        ("estimated", "right"),
        ("error", "right"),
        ("excluded because", "left"),
    ):
        t.add_column(col, justify=just, no_wrap=col == "id")  # type: ignore[arg-type]
    for r in rows:
        measured, estimated, error, reason = _validation_figures(r)
        t.add_row(r.id, r.framework, r.config, measured, estimated, error,
                  Text(reason, style="green" if not r.reasons else "dim"))  # fmt: skip
    console.print(t)


def calibration_line(b: Breakdown) -> str:
    """ "calibrated on N runs" with the figures used, or the defaults' provenance when uncalibrated."""
    cal = b.overheads.calibration
    if cal is None:
        return "overheads: documented defaults (no calibration for this GPU; `vramplan calibration`)"
    parts = [f"calibrated on {cal.n_runs} run{'s' if cal.n_runs != 1 else ''} of {cal.gpu_key}"]
    if cal.cuda_context_bytes is not None:
        parts.append(f"CUDA context {gib(cal.cuda_context_bytes)} GiB")
    if cal.allocator_ratio is not None:
        parts.append(f"allocator +{100 * cal.allocator_ratio:.1f} %")
    if cal.residual_band is not None:
        parts.append(f"error band ±{100 * cal.residual_band:.1f} %")
    return " · ".join(parts)


def render_calibration_note(b: Breakdown, console: Console) -> None:
    if b.gpu:
        print_flow(calibration_line(b), console, style="dim")


def calibration_json(runs: list[RunRecord], cals: list[Calibration], store: str) -> dict[str, Any]:
    from dataclasses import asdict

    return {"store": store, "runs": [asdict(r) for r in runs], "calibrations": [asdict(c) for c in cals]}


def render_calibration(runs: list[RunRecord], cals: list[Calibration], store: str, console: Console) -> None:
    """Stored runs (one row each) and the per-GPU figures derived from them."""
    from rich.table import Table

    console.print(f"store: {store} ({len(runs)} run{'s' if len(runs) != 1 else ''})", highlight=False)
    if not runs:
        console.print("no runs stored: `vramplan measure ... --save` adds one; estimates use the defaults")
        return
    wide = console.width >= 120  # narrower: no time column, short headers, the GiB in the title
    t = Table(title="runs" if wide else "runs (GiB)", title_justify="left", show_edge=False, pad_edge=False)
    cols = (
        ("time", "GPU", "model", "method", "allocated GiB", "reserved GiB", "device GiB", "estimate GiB")
        if wide
        else ("GPU", "model", "method", "alloc", "resv", "device", "est.")
    )
    for col in cols:
        numeric = "GiB" in col or col in ("alloc", "resv", "device", "est.")
        t.add_column(col, justify="right" if numeric else "left", no_wrap=numeric, overflow="fold")
    for r in runs:
        est = (r.estimate or {}).get("device_bytes")
        t.add_row(
            *([r.time] if wide else []),
            r.key,
            r.model,
            str(r.inputs.get("method", "")),
            gib(r.allocated_bytes),
            gib(r.reserved_bytes),
            "—" if r.device_bytes is None else gib(r.device_bytes),
            "—" if est is None else gib(est),
        )
    console.print(t)
    c = Table(title="per GPU", title_justify="left", show_edge=False, pad_edge=False)
    for col in ("GPU", "runs", "CUDA context GiB", "allocator ratio", "error band"):
        c.add_column(col, justify="left" if col == "GPU" else "right", overflow="fold")
    for cal in cals:
        c.add_row(
            cal.gpu_key,
            str(cal.n_runs),
            "—" if cal.cuda_context_bytes is None else gib(cal.cuda_context_bytes),
            "—" if cal.allocator_ratio is None else f"{100 * cal.allocator_ratio:.1f} %",
            "—" if cal.residual_band is None else f"±{100 * cal.residual_band:.1f} %",
        )
    console.print(c)
