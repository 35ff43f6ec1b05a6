"""The caching allocator's figures for `simulate` / `measure`: the replays, the estimator's model and, on CUDA,
torch's own counters, as a share of the tensor peak (GiB = 1024³ B)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from vramplan.estimator.allocator_slack import AllocatorSlack


def _gib(n: int) -> str:
    return f"{n / 1024**3:.2f}"


def _cell(nbytes: int, peak: int) -> str:
    return f"{_gib(nbytes)} {100 * (nbytes / peak - 1):+.1f}%" if peak else _gib(nbytes)


SHORT = {
    "default": "defaults",
    "default, from_pretrained(device_map) load": "defaults, from_pretrained",
    "expandable_segments:True": "expandable_segments",
}


def allocator_json(summary: Any, estimated: dict[str, AllocatorSlack], cuda: Any = None) -> dict[str, Any]:
    """`summary`: a vramplan.allocator.model AllocatorSummary; `estimated`: the estimator's model per setting
    label ("default", "expandable_segments:True"); `cuda`: the run's CudaFigures or None."""
    out: dict[str, Any] = {"replay": {}, "estimate": {}}
    for label, f in summary.rows():
        out["replay"][label] = {
            "tensor_peak_bytes": f.tensor_peak_bytes,
            "max_memory_allocated": f.max_allocated_bytes,
            "max_memory_reserved": f.max_reserved_bytes,
            "min_free_bytes": f.min_limit_bytes,
        }
    for label, s in estimated.items():
        out["estimate"][label] = {
            "reserved_slack_bytes": s.reserved_bytes,
            "need_slack_bytes": s.need_bytes,
            "need_error": s.need_error,
        }
    if cuda is not None:
        out["cuda"] = {
            "max_memory_allocated": cuda.max_memory_allocated,
            "max_memory_reserved": cuda.max_memory_reserved,
        }
    return out


def render_allocator(
    summary: Any, estimated: dict[str, AllocatorSlack], estimate_peak: int, console: Console, cuda: Any = None
) -> None:
    """One row per allocator setting: the replay's max_memory_allocated, max_memory_reserved and the least free
    memory on which the step runs, then the estimator's reserved / least memory for the same setting."""
    peak = summary.default.tensor_peak_bytes
    t = Table(
        title="caching allocator: the traced allocations replayed (GiB, share of the tensor peak)",
        title_justify="left",
        show_edge=False,
        pad_edge=False,
    )
    for col in ("PYTORCH_CUDA_ALLOC_CONF", "allocated", "reserved", "runs on", "estimate"):
        t.add_column(col, justify="left" if col == "PYTORCH_CUDA_ALLOC_CONF" else "right")
    for label, f in summary.rows():
        s = estimated.get(label)
        est = (
            Text("—", style="dim")
            if s is None
            else f"{100 * s.reserved_bytes / estimate_peak:+.1f}% / {100 * s.need_bytes / estimate_peak:+.1f}%"
        )
        t.add_row(
            SHORT.get(label, label),
            _cell(f.max_allocated_bytes, peak),
            _cell(f.max_reserved_bytes, peak),
            _cell(f.min_limit_bytes, peak),
            est,
        )
    if cuda is not None:
        t.add_row(
            Text("measured on CUDA", style="bold"),
            _cell(cuda.max_memory_allocated, peak),
            _cell(cuda.max_memory_reserved, peak),
            Text("—", style="dim"),
            "",
        )
    console.print(t)
    console.print(
        "allocated / reserved = torch.cuda.max_memory_allocated / max_memory_reserved; runs on = the least memory "
        "the allocator must get (card − CUDA context): it frees cached segments and retries before an "
        "out-of-memory error; estimate = the estimator's reserved / runs on",
        style="dim",
        highlight=False,
    )
