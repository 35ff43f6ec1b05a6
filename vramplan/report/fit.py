"""`vramplan fit`: the largest batch per method and sequence length, the longest sequence, the largest rank."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vramplan.report.common import gib, print_flow, print_labelled, print_notes
from vramplan.report.profiles import local_gpu_line, local_gpus_json

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

    from vramplan.plan.curves import Curve
    from vramplan.plan.fit import FitTable, Limit
    from vramplan.sources.local_gpu import LocalGpu


def _limit_text(lim: Limit) -> Text:
    """`12`, `12*` (tight), `≥4096` (search cap), `0` (not even the smallest)."""
    from rich.text import Text

    if not lim.value:
        return Text("0", style="red")
    s = f"{'≥' if lim.capped else ''}{lim.value}{'*' if lim.tight else ''}"
    return Text(s, style="yellow" if lim.tight else "green")


def _optim_letters(ft: FitTable) -> dict[str, str]:
    """Each row optimizer's letter in the compact table: A, B, ... in row order."""
    optims = list(dict.fromkeys(r.optim for r in ft.rows))
    return {optim: chr(ord("A") + i) for i, optim in enumerate(optims)}


def _natural_width(table: Any, console: Console) -> int:
    from rich.measure import Measurement

    return Measurement.get(console, console.options.update_width(10**4), table).maximum


def _fit_grid(ft: FitTable, console: Console, compact: bool) -> Any:
    """The rows × sequence lengths grid; `compact` (a narrow terminal): checkpointing as `+ckpt` after the
    method, the optimizer as a letter (its name is typed, so it is never cut: the letters are spelled out below
    the table) and a shorter header."""
    from rich.table import Table

    letters = _optim_letters(ft)
    table = Table(show_edge=False, pad_edge=False)
    for col in ("method", "opt") if compact else ("method", "ckpt", "optimizer"):
        table.add_column(col, no_wrap=True)
    for s in ft.seqs:
        table.add_column(str(s), justify="right", no_wrap=True)
    table.add_column("max" if compact else "max seq", justify="right", no_wrap=True)
    for r in ft.rows:
        label = (r.method + ("+ckpt" if r.grad_ckpt else ""), letters[r.optim]) if compact else (
            r.method, "yes" if r.grad_ckpt else "no", r.optim)  # fmt: skip
        table.add_row(*label, *(_limit_text(c.batch) for c in r.cells), _limit_text(r.max_seq))
    return table


def render_fit_table(ft: FitTable, console: Console) -> None:
    from rich.text import Text

    t = ft.train
    console.print(
        f"{ft.model} on {ft.gpu.key} ({gib(ft.gpu.memory_bytes)} GiB)"
        + (f", one GPU of {ft.parallel.strategy} × {ft.parallel.gpus}" if ft.parallel else "")
        + ": largest batch that fits",
        highlight=False,
    )  # the console's width, not the table's
    table = _fit_grid(ft, console, compact=False)
    if _natural_width(table, console) > console.width:  # the optimizer as a letter, explained below the table
        table = _fit_grid(ft, console, compact=True)
    console.print(table)
    optims = _optim_letters(ft)
    if table.columns[1].header == "opt":
        print_flow(" · ".join(f"{letter} = {optim}" for optim, letter in optims.items()), console)
    print_labelled(
        "cells",
        "",
        f"largest per_device_train_batch_size whose device total (least that runs) fits; 0 = not even "
        f"batch 1; * = tight (within ±{100 * ft.error_band:.0f} % estimator error); ≥ = search cap. "
        f"max seq: the longest at batch 1, a multiple of 64. Other settings: {t.dtype} weights, "
        f"{t.mixed_precision} autocast, {t.attn}, LoRA r={t.lora_rank} {t.lora_target_preset}.",
        console,
    )
    r = ft.max_lora_rank
    if r is None:
        console.print(f"largest LoRA rank: n/a (--method {t.method} trains no adapters)")
    else:
        ckpt = "ckpt" if t.grad_ckpt else "no ckpt"
        how = f"{t.method}, batch {t.batch} × seq {t.seq}, {t.lora_target_preset}, {ckpt}, {t.optim}"
        console.print(Text.assemble(f"largest LoRA rank ({how}): r = ", _limit_text(r)))
    print_notes(ft.notes, console)


def _limit_json(lim: Limit, key: str) -> dict[str, Any]:
    b = lim.breakdown
    return {key: lim.value, "capped": lim.capped, "verdict": lim.verdict,
            "device_bytes": b.device_bytes if b else None}  # fmt: skip


def fit_json(ft: FitTable, local: LocalGpu | None = None, plot: str | None = None) -> dict[str, Any]:
    """`fit --json`: the table's cells with their verdicts and device totals, the caps, the inputs; `local_gpu`
    the GPU NVML saw for `--gpu auto`; `plot` the PNG written, if any."""
    from vramplan.plan.fit import MAX_BATCH, SEQ_MULTIPLE

    rank = ft.max_lora_rank
    return {
        "model": ft.model,
        "gpu": {"key": ft.gpu.key, "name": ft.gpu.name, "memory_bytes": ft.gpu.memory_bytes},
        "error_band": ft.error_band,
        "seqs": list(ft.seqs),
        "caps": {"batch": MAX_BATCH, "seq": ft.seq_cap, "lora_rank": ft.rank_cap,
                 "seq_multiple": SEQ_MULTIPLE},
        "rows": [
            {
                "method": r.method,
                "grad_ckpt": r.grad_ckpt,
                "optim": r.optim,
                "max_batch": [{"seq": c.seq, **_limit_json(c.batch, "batch")} for c in r.cells],
                "max_seq": _limit_json(r.max_seq, "seq"),
            }
            for r in ft.rows
        ],
        "max_lora_rank": None if rank is None else {
            **_limit_json(rank, "lora_rank"), "method": ft.train.method, "batch": ft.train.batch,
            "seq": ft.train.seq, "lora_target": list(ft.train.lora_target),
        },
        "inputs": {k: list(v) if isinstance(v, tuple) else v for k, v in ft.train.as_dict().items()},
        "notes": list(ft.notes),
        "parallel": ft.parallel.as_dict() if ft.parallel else None,
        "local_gpu": local_gpus_json([local])[0] if local else None,
        "plot": plot,
    }  # fmt: skip


def render_fit(ft: FitTable, local: LocalGpu | None, curves: list[Curve], plot: str | None, console: Console) -> None:
    """`vramplan fit`: the local GPU line (`--gpu auto`), the table, then the terminal plot (`--plot`) or where
    the PNG went (`--plot FILE`)."""
    if local is not None:
        console.print(local_gpu_line(local, ft.gpu))
    render_fit_table(ft, console)
    if plot == "-":
        import click

        from vramplan.report.plot import plot_terminal, plot_title

        title = plot_title(ft.model, ft.gpu, ft.train.batch)
        click.echo(plot_terminal(curves, ft.gpu, title, width=console.width, color=console.is_terminal))
    elif plot:
        console.print(f"plot written to {plot}")
