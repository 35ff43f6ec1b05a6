"""Several GPUs (estimator/distributed.py): one GPU's share, the run's totals, and the alternatives."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vramplan.report.common import gib, train_title
from vramplan.report.train import render_breakdown

if TYPE_CHECKING:
    from rich.console import Console

    from vramplan.estimator.parallel_plan import ParallelPlan
    from vramplan.spec.parallel import ParallelSpec


def parallel_json(pp: ParallelPlan) -> dict[str, Any]:
    """The "parallel" object of `estimate --json`: one GPU's device total, all GPUs', host RAM for offload."""
    return {
        **pp.spec.as_dict(),
        "per_gpu_bytes": pp.per_gpu_bytes,
        "total_bytes": pp.total_bytes,
        "host_offload_bytes": pp.host_offload_bytes,
        "host_offload_bytes_per_rank": pp.host_offload_bytes_per_rank,
        "master_weights_bytes": pp.master_weights_bytes,
        "buffers": {name: n for name, n in pp.buffers},
        "verdict_per_gpu": pp.breakdown.verdict,
        "single_gpu_device_bytes": pp.single.device_bytes,
        "notes": list(pp.spec.notes),
    }


def render_parallel(pp: ParallelPlan, console: Console) -> None:
    """One GPU's table (verdict per GPU), then the run's totals; just the table for one plain GPU."""
    from vramplan.estimator.zero import DS_ADDITIONAL_BUFFER_FACTOR

    p, b = pp.spec, pp.breakdown
    if p.plain:
        render_breakdown(b, console)
        return
    off = f", offload {p.offload}" if p.offload != "none" else ""
    render_breakdown(b, console, train_title(b) + f" · {p.strategy} × {p.gpus} GPUs{off}: one GPU")
    nodes = f"{p.nodes} node{'s' if p.nodes > 1 else ''} × {p.ranks_per_node}"
    console.print(
        f"{p.strategy} on {p.gpus} GPUs ({nodes}; model states split {p.shard_size} ways): "
        f"per GPU {gib(pp.per_gpu_bytes)} GiB, all GPUs {gib(pp.total_bytes)} GiB"
    )
    for name, n in pp.buffers:
        if gib(n) != gib(0):
            console.print(f"  engine buffer: {name} {gib(n)} GiB (in temporaries)")
    if pp.master_weights_bytes:
        console.print(f"  fp32 master weights: {gib(pp.master_weights_bytes)} GiB (in optimizer states)")
    if p.offload != "none":
        host, ds = pp.host_offload_bytes, DS_ADDITIONAL_BUFFER_FACTOR
        line = f"host RAM per node for --offload {p.offload}: {gib(host)} GiB"
        if p.stage:
            line += f" (DeepSpeed's estimator adds {100 * (ds - 1):.0f} %: {gib(host * ds)} GiB)"
        console.print(line)
    console.print(f"one GPU, no engine: {gib(pp.single.device_bytes)} GiB (peak in {pp.single.peak_phase})")


def parallel_flags(p: ParallelSpec) -> str:
    """The CLI flags that select `p`'s engine and offload."""
    return f"--strategy {p.strategy}" + (f" --offload {p.offload}" if p.offload != "none" else "")


def parallel_advice_lines(alts: tuple[ParallelPlan, ...]) -> list[str]:
    """`estimator.distributed.alternatives` as advice: the flags, per-GPU total and verdict of each."""
    return [
        f"{parallel_flags(alt.spec)}: {gib(alt.per_gpu_bytes)} GiB per GPU → {alt.breakdown.verdict}"
        + (f", host RAM {gib(alt.host_offload_bytes)} GiB per node" if alt.spec.offload != "none" else "")
        for alt in alts
    ]
