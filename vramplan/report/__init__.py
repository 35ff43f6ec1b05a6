"""Rendering only: rich tables and bars, JSON. GiB (binary, 1024³ bytes) everywhere, labelled as such."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from vramplan.breakdown import COMPONENT_LABELS, Breakdown
from vramplan.errors import VramplanError

if TYPE_CHECKING:
    from vramplan.estimator.distributed import ParallelPlan
    from vramplan.plan.fit import Curve, FitTable, Limit
    from vramplan.serve_breakdown import ServeBreakdown
    from vramplan.sources.local_gpu import LocalGpu
    from vramplan.spec.gpu import GpuProfile
    from vramplan.spec.parallel import ParallelSpec
    from vramplan.trust.calibration import Calibration, RunRecord
    from vramplan.trust.validate import Validation

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


def _figures_json(b: Any) -> dict[str, Any]:
    """The keys training and serving results share (`PeakAccounting`)."""
    return {
        "peak_bytes": b.peak_bytes,
        "reserved_bytes": b.reserved_bytes,
        "device_bytes": b.device_bytes,
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
    }


def _listed(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _calibration_json(b: Any) -> dict[str, Any]:
    cal = b.overheads.calibration
    if cal is None:
        return {}
    return {
        "calibration": {
            "gpu_key": cal.gpu_key,
            "n_runs": cal.n_runs,
            "cuda_context_bytes": cal.cuda_context_bytes,
            "allocator_ratio": cal.allocator_ratio,
            "residual_band": cal.residual_band,
        }
    }


def train_inputs_json(b: Breakdown) -> dict[str, Any]:
    """The resolved inputs of a training result: model, GPU, the TrainSpec, the calibration used, and for a
    measurement the device, steps and every note."""
    out = {"model": b.model, "gpu": b.gpu, **_listed(b.train.as_dict()), **_calibration_json(b)}
    if b.run is not None:
        out.update(device=b.run.device, steps=b.run.steps)
    out["notes"] = list(b.all_notes)
    return out


def serve_inputs_json(b: ServeBreakdown) -> dict[str, Any]:
    return {"model": b.model, "gpu": b.gpu, **_listed(b.serve.as_dict()), **_calibration_json(b)}


def _train_title(b: Breakdown) -> str:
    t = b.train
    return f"{b.model} · {t.method} · batch {t.batch} × seq {t.seq}" + (f" · {b.gpu}" if b.gpu else "")


def breakdown_json(b: Breakdown, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": b.model,
        "source": b.source,
        **_figures_json(b),
        "paged_bytes": b.paged_bytes,
        "params": {"total": b.params_total, "trainable": b.params_trainable},
        "inputs": train_inputs_json(b),
    }
    if extra:
        out.update(extra)
    return out


def render_breakdown(b: Breakdown, console: Console, title: str | None = None) -> None:
    head = title or _train_title(b)
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
    t.add_row(
        "caching allocator: needed to run",
        gib(b.allocator_need_bytes),
        bar(b.allocator_need_bytes / dev),
    )
    t.add_row("CUDA context", gib(b.cuda_context_bytes), bar(b.cuda_context_bytes / dev))
    t.add_row(Text("device total (least that runs)", style="bold"), Text(gib(b.device_bytes), style="bold"), "")
    t.add_row(
        Text(f"  max_memory_reserved with room ({b.train.alloc_conf or 'allocator defaults'})", style="dim"),
        Text(gib(b.reserved_bytes), style="dim"),
        "",
    )
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
                f"  on {b.gpu} ({gib(b.gpu_bytes)} GiB): headroom {head_gib} GiB"
                f" (tight = within ±{100 * b.error_band:.0f} % estimator error)",
            )
        )
    for note in b.all_notes:
        console.print(f"[yellow]note:[/] {note}")


def render_advice(lines: list[str], console: Console) -> None:
    for line in lines:
        console.print(f"[cyan]advice:[/] {line}")


# ---------------------------------------------------------------- vramplan fit / gpus --local


def _limit_text(lim: Limit) -> Text:
    """`12`, `12*` (tight), `≥4096` (search cap), `0` (not even the smallest)."""
    if not lim.value:
        return Text("0", style="red")
    s = f"{'≥' if lim.capped else ''}{lim.value}{'*' if lim.tight else ''}"
    return Text(s, style="yellow" if lim.tight else "green")


def render_fit_table(ft: FitTable, console: Console) -> None:
    t = ft.train
    table = Table(
        title=f"{ft.model} on {ft.gpu.key} ({gib(ft.gpu.memory_bytes)} GiB)"
        + (f", one GPU of {ft.parallel.strategy} × {ft.parallel.gpus}" if ft.parallel else "")
        + ": largest batch that fits",
        title_justify="left",
        show_edge=False,
        pad_edge=False,
    )
    for col in ("method", "ckpt", "optimizer"):
        table.add_column(col, no_wrap=True)
    for s in ft.seqs:
        table.add_column(str(s), justify="right", no_wrap=True)
    table.add_column("max seq", justify="right", no_wrap=True)
    for r in ft.rows:
        table.add_row(r.method, "yes" if r.grad_ckpt else "no", r.optim,
                      *(_limit_text(c.batch) for c in r.cells), _limit_text(r.max_seq))  # fmt: skip
    console.print(table)
    console.print(
        f"cells: largest per_device_train_batch_size whose device total (least that runs) fits; 0 = not even "
        f"batch 1; * = tight (within ±{100 * ft.error_band:.0f} % estimator error); ≥ = search cap. "
        f"max seq: the longest at batch 1, a multiple of 64. Other settings: {t.dtype} weights, "
        f"{t.mixed_precision} autocast, {t.attn}, LoRA r={t.lora_rank} {t.lora_target_preset}."
    )
    r = ft.max_lora_rank
    if r is None:
        console.print(f"largest LoRA rank: n/a (--method {t.method} trains no adapters)")
    else:
        ckpt = "ckpt" if t.grad_ckpt else "no ckpt"
        how = f"{t.method}, batch {t.batch} × seq {t.seq}, {t.lora_target_preset}, {ckpt}, {t.optim}"
        console.print(Text.assemble(f"largest LoRA rank ({how}): r = ", _limit_text(r)))
    for note in ft.notes:
        console.print(f"[yellow]note:[/] {note}")


def _limit_json(lim: Limit, key: str) -> dict[str, Any]:
    b = lim.breakdown
    return {key: lim.value, "capped": lim.capped, "verdict": lim.verdict,
            "device_bytes": b.device_bytes if b else None}  # fmt: skip


def fit_json(ft: FitTable, extra: dict[str, Any] | None = None) -> dict[str, Any]:
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
        **(extra or {}),
    }  # fmt: skip


PLOT_MARKERS = ("•", "+", "x", "o", "*", "#", "@", "%")  # one character per curve: readable without colour


def _plot_top(curves: list[Curve], gpu: GpuProfile) -> float:
    """y-axis top (GiB): the highest curve, but at most 2.5× the GPU (what matters is near the line)."""
    highest = max((b for c in curves for b in c.device_bytes), default=gpu.memory_bytes)
    return 1.05 * max(gpu.memory_bytes * 1.2, min(highest, gpu.memory_bytes * 2.5)) / GIB


def _curve_label(c: Curve, top_gib: float) -> str:
    low = min(c.device_bytes)
    return c.label if low / GIB <= top_gib else f"{c.label} (above the chart: {gib(low)} GiB and up)"


def plot_title(model: str, gpu: GpuProfile, batch: int) -> str:
    return f"{model} on {gpu.key}: device peak vs sequence length, batch {batch}"


def plot_terminal(
    curves: list[Curve], gpu: GpuProfile, title: str, width: int = 100, height: int = 24, color: bool = True
) -> str:
    """Device peak (GiB) against sequence length, one line per curve, the GPU's memory as a horizontal line,
    as a string (plotext ≥ 6's figure API; plotext 5's module API). `width` is clamped to 60–120 columns."""
    width = min(max(width, 60), 120)
    try:
        import plotext as plt
    except ImportError:
        raise VramplanError("the terminal plot needs plotext: pip install 'vramplan[plot]'") from None
    import math

    # x is log2(seq) on a linear axis, ticks labelled in tokens (plotext's log scale drops custom ticks)
    xs = sorted({s for c in curves for s in c.seqs})
    ticks = [s for s in xs if s & (s - 1) == 0] or xs  # powers of two where there are any
    ticks = sorted({xs[0], *ticks, xs[-1]})
    tick_x, tick_labels = [math.log2(s) for s in ticks], [str(s) for s in ticks]
    cap = f"{gpu.key} {gib(gpu.memory_bytes)} GiB"
    xlabel = "sequence length (tokens, log scale)"
    top = _plot_top(curves, gpu)
    marks = [PLOT_MARKERS[i % len(PLOT_MARKERS)] for i in range(len(curves))]
    labels = [f"  {mk} {_curve_label(c, top)}" for mk, c in zip(marks, curves, strict=True)]
    legend = "\n".join([*labels, f"  ─ {cap}"])
    if hasattr(plt, "figure") and hasattr(plt.figure, "signal"):  # plotext 6
        fig = plt.figure
        fig.clear()
        for mk, c in zip(marks, curves, strict=True):
            sig = fig.signal([math.log2(s) for s in c.seqs], [b / GIB for b in c.device_bytes], marker=mk)
            sig.lines()
            fig.draw(sig)
        fig.line(gpu.memory_bytes / GIB, "horizontal")
        fig.title(title)
        fig.label(xlabel, axis="x")
        fig.label("GiB", axis="y")
        fig.ruler("x").ticks(tick_x, tick_labels)
        fig.ruler("x").lim(tick_x[0], tick_x[-1])  # explicit: a curve wholly above `top` skews plotext's own
        fig.ruler("y").lim(0, top)
        fig.plot_size(width, height)
        out = fig.build().string()
        fig.clear()
    else:  # pragma: no cover - plotext 5
        plt.clear_figure()
        for mk, c in zip(marks, curves, strict=True):
            plt.plot([math.log2(s) for s in c.seqs], [b / GIB for b in c.device_bytes], marker=mk)
        plt.hline(gpu.memory_bytes / GIB)
        plt.title(title)
        plt.xlabel(xlabel)
        plt.ylabel("GiB")
        plt.xticks(tick_x, tick_labels)
        plt.xlim(tick_x[0], tick_x[-1])
        plt.ylim(0, top)
        plt.plotsize(width, height)
        out = plt.build()
        plt.clear_figure()
    out = out if color else plt.uncolorize(out)
    return f"{out.rstrip()}\n{legend}"


def plot_png(curves: list[Curve], gpu: GpuProfile, title: str, path: str, error_band: float) -> None:
    """The same plot as a PNG (matplotlib, no pyplot state), the `tight` zone shaded under the capacity."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import FixedLocator, NullLocator
    except ImportError:
        raise VramplanError("--plot FILE needs matplotlib: pip install 'vramplan[plot]'") from None
    fig = Figure(figsize=(9, 5.5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    top = _plot_top(curves, gpu)
    for c in curves:
        ys = [b / GIB for b in c.device_bytes]
        ax.plot(c.seqs, ys, marker="o", markersize=3, label=_curve_label(c, top))
    cap = gpu.memory_bytes / GIB
    ax.axhline(cap, color="black", linewidth=1.5, label=f"{gpu.name}: {gib(gpu.memory_bytes)} GiB")
    ax.axhspan(cap / (1 + error_band), cap, color="gold", alpha=0.3,
               label=f"tight (within ±{100 * error_band:.0f} % estimator error)")  # fmt: skip
    xs = sorted({s for c in curves for s in c.seqs})
    ax.set_xscale("log", base=2)
    ticks = [s for s in xs if s & (s - 1) == 0] or xs
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(s) for s in ticks])
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("device peak, GiB (1024³ B, as nvidia-smi)")
    ax.set_ylim(0, top)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    try:
        fig.savefig(path)
    except OSError as e:
        raise VramplanError(f"cannot write the plot to {path}: {e.strerror}") from None


def local_gpus_json(gpus: list[LocalGpu]) -> list[dict[str, Any]]:
    return [
        {"index": g.index, "name": g.name, "total_bytes": g.total_bytes, "free_bytes": g.free_bytes,
         "used_bytes": g.used_bytes, "driver": g.driver, "compute_capability": g.compute_capability,
         "profile": g.profile_key}
        for g in gpus
    ]  # fmt: skip


def render_local_gpus(gpus: list[LocalGpu], console: Console) -> None:
    t = Table(title="GPUs NVML sees in this machine (GiB = 1024³ B)", title_justify="left", show_edge=False)
    for col in ("#", "name", "total", "free", "used", "cc", "profile"):
        t.add_column(col, justify="right" if col in ("total", "free", "used") else "left")
    for g in gpus:
        t.add_row(str(g.index), g.name, gib(g.total_bytes), gib(g.free_bytes), gib(g.used_bytes),
                  g.compute_capability, g.profile_key or "(none)")  # fmt: skip
    console.print(t)
    if gpus:
        console.print(f"driver {gpus[0].driver}; `--gpu auto` plans with GPU 0's free memory")
    else:
        console.print("NVML sees no GPU in this machine")


def local_gpu_line(g: LocalGpu, profile: GpuProfile) -> str:
    """One line for `--gpu auto`: what NVML sees and what is planned with."""
    match = f"profile {g.profile_key}" if g.profile_key else "no matching profile"
    return (
        f"local GPU {g.index}: {g.name}, {gib(g.total_bytes)} GiB total, {gib(g.free_bytes)} GiB free now "
        f"({match}); planning with the free {gib(profile.memory_bytes)} GiB"
    )


# ---------------------------------------------------------------- several GPUs (estimate.distributed)


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
    title = _train_title(b) + f" · {p.strategy} × {p.gpus} GPUs{off}: one GPU"
    render_breakdown(b, console, title)
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


# ---------------------------------------------------------------- vramplan serve


def serve_json(b: ServeBreakdown) -> dict[str, Any]:
    """`vramplan serve --json`: the keys of `breakdown_json` where they mean the same, plus `vllm`."""
    out: dict[str, Any] = {
        "model": b.model,
        "engine": b.engine,
        "source": "estimate",
        **_figures_json(b),
        "params": {"total": b.params_total, "adapters": b.adapter_params},
        "problems": list(b.problems),
        "inputs": serve_inputs_json(b),
    }
    if b.vllm is not None:
        v = b.vllm
        out["vllm"] = {
            "requested_bytes": v.requested_bytes,
            "non_kv_bytes": v.non_kv_bytes,
            "forward_bytes": v.forward_bytes,
            "sampler_bytes": v.sampler_bytes,
            "available_kv_bytes": v.available_kv_bytes,
            "page_bytes": v.kv.page_bytes,
            "block_size": v.kv.block_size,
            "num_blocks": v.kv.num_blocks,
            "kv_cache_tokens": v.kv.tokens,
            "max_model_len": v.max_model_len,
            "max_concurrency": round(v.kv.max_concurrency, 4),
            "max_model_len_fit": v.max_model_len_fit,
        }
    return out


def render_serve(b: ServeBreakdown, console: Console) -> None:
    """Components table, vLLM's own start-up lines (KV tokens, concurrency), verdict with headroom."""
    from vramplan.serve_breakdown import SERVE_COMPONENT_LABELS

    s = b.serve
    gpu = f" · {b.gpu}" if b.gpu else ""
    lora = f" · LoRA {s.max_loras} × r{s.max_lora_rank}" if s.enable_lora else ""
    quant = f" · {s.quant}" if s.quant != "none" else ""
    if b.engine == "vllm":
        head = f"{b.model} · vLLM · max_model_len {s.max_model_len:,} · {s.dtype}{quant}{lora}{gpu}"
    else:
        head = (
            f"{b.model} · transformers generate · batch {s.batch} × ({s.prompt_tokens} prompt + "
            f"{s.new_tokens} new tokens) · {s.dtype}{quant}{lora}{gpu}"
        )
    console.print(Text(head, style="italic"))
    t = Table(show_edge=False, pad_edge=False)
    t.add_column("component")
    t.add_column("GiB", justify="right")
    t.add_column("share")
    dev = max(b.device_bytes, 1)
    for name, val in b.components.as_dict().items():
        if val:
            t.add_row(SERVE_COMPONENT_LABELS[name], gib(val), bar(val / dev))
    t.add_row(Text(f"peak ({b.peak_phase})", style="bold"), Text(gib(b.peak_bytes), style="bold"), "")
    if b.allocator_overhead_bytes:
        t.add_row("allocator overhead (reserved − allocated)", gib(b.allocator_overhead_bytes),
                  bar(b.allocator_overhead_bytes / dev))  # fmt: skip
    t.add_row("CUDA context", gib(b.cuda_context_bytes), bar(b.cuda_context_bytes / dev))
    t.add_row(Text("device total (as nvidia-smi)", style="bold"), Text(gib(b.device_bytes), style="bold"), "")
    console.print(t)
    if b.vllm is not None:
        v = b.vllm
        console.print(
            f"vLLM budget: {s.gpu_memory_utilization} × {gib(b.gpu_bytes or 0)} GiB = "
            f"{gib(v.requested_bytes)} GiB − {gib(v.non_kv_bytes)} GiB (weights, activation peak, non-torch) "
            f"= {gib(max(v.available_kv_bytes, 0))} GiB for the KV cache, in {v.kv.num_blocks:,} blocks of "
            f"{v.kv.block_size} tokens ({v.kv.page_bytes:,} B per layer)"
        )
        console.print(Text(f"GPU KV cache size: {v.kv.tokens:,} tokens", style="bold"))
        conc = f"Maximum concurrency for {v.max_model_len:,} tokens per request: {v.kv.max_concurrency:.2f}x"
        console.print(Text(conc, style="bold"))
    if b.gpu_bytes is not None and b.verdict is not None:
        console.print(
            Text.assemble(
                (VERDICT_TEXT[b.verdict], VERDICT_STYLE[b.verdict]),
                f"  on {b.gpu} ({gib(b.gpu_bytes)} GiB): headroom {gib(b.headroom_bytes or 0)} GiB"
                f" (tight = within ±{100 * b.error_band:.0f} % estimator error) · units GiB = 1024³ B",
            )
        )
    for p in b.problems:
        console.print(f"[red]problem:[/] {p}")
    for note in s.notes:
        console.print(f"[yellow]note:[/] {note}")


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


def render_validation(v: Validation, console: Console) -> None:
    """Table of every record (measured vs estimated, GB = 10⁹ B as the sources print) and the summary."""
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
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in v.rows:
        kind = {
            "max_memory_allocated": "alloc",
            "max_memory_reserved": "resv",
            "reserved": "resv",
            "nvidia-smi": "smi",
        }.get(r.measure_kind, "?")
        t.add_row(
            r.id,
            r.framework,
            r.config,
            f"{r.measured_bytes / 1e9:.2f} {kind}",
            "—" if r.estimated_bytes is None else f"{r.estimated_bytes / 1e9:.2f}",
            "—" if r.error is None else f"{100 * r.error:+.1f} %",
            Text(r.reasons[0] + (f" (+{len(r.reasons) - 1})" if len(r.reasons) > 1 else ""), style="dim")
            if r.reasons
            else Text("headline", style="green"),
        )
    console.print(t)
    for line in validation_summary_lines(v):
        console.print(line, highlight=False)


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
        console.print(calibration_line(b), style="dim", highlight=False)


def calibration_json(runs: list[RunRecord], cals: list[Calibration], store: str) -> dict[str, Any]:
    from dataclasses import asdict

    return {"store": store, "runs": [asdict(r) for r in runs], "calibrations": [asdict(c) for c in cals]}


def render_calibration(runs: list[RunRecord], cals: list[Calibration], store: str, console: Console) -> None:
    """Stored runs (one row each) and the per-GPU figures derived from them."""
    console.print(f"store: {store} ({len(runs)} run{'s' if len(runs) != 1 else ''})", highlight=False)
    if not runs:
        console.print("no runs stored: `vramplan measure ... --save` adds one; estimates use the defaults")
        return
    t = Table(title="runs", title_justify="left", show_edge=False, pad_edge=False)
    cols = ("time", "GPU", "model", "method", "allocated GiB", "reserved GiB", "device GiB", "estimate GiB")
    for col in cols:
        t.add_column(col, justify="right" if "GiB" in col else "left")
    for r in runs:
        est = (r.estimate or {}).get("device_bytes")
        t.add_row(
            r.time,
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
        c.add_column(col, justify="left" if col == "GPU" else "right")
    for cal in cals:
        c.add_row(
            cal.gpu_key,
            str(cal.n_runs),
            "—" if cal.cuda_context_bytes is None else gib(cal.cuda_context_bytes),
            "—" if cal.allocator_ratio is None else f"{100 * cal.allocator_ratio:.1f} %",
            "—" if cal.residual_band is None else f"±{100 * cal.residual_band:.1f} %",
        )
    console.print(c)


# ---- measure / simulate: the measurement beside the estimate ----------------------------------------------


def error_pct(estimated: int, measured: int) -> float | None:
    """(estimated − measured) / measured in %, None when nothing was measured."""
    return None if measured == 0 else 100.0 * (estimated - measured) / measured


def _err_text(estimated: int, measured: int) -> Text:
    e = error_pct(estimated, measured)
    if e is None:
        return Text("—" if estimated == 0 else "n/a", style="dim")
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
            **{k: error_pct(est[k], comps[k]) for k in comps},
            "peak_bytes": error_pct(estimate.peak_bytes, b.peak_bytes),
        },
    }
    return breakdown_json(b, extra)


def render_measurement(r: Any, estimate: Breakdown, console: Console) -> None:
    """The measured (or traced) breakdown and the estimate side by side, component by component, with error.

    `r`: a vramplan.measure MeasureResult. Components are compared at each one's own peak; the phase rows
    compare each phase's peak.
    """
    b = r.breakdown
    kind = {"cuda": "measured on CUDA", "cpu": "traced on CPU", "meta": "traced on meta tensors",
            "fake": "traced on fake tensors"}[r.device]  # fmt: skip
    title = (
        f"{b.model} · {b.train.method} · batch {b.train.batch} × seq {b.train.seq} · {kind}, "
        f"{r.steps} step{'s' if r.steps != 1 else ''} vs estimate"
    )
    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    measured = "measured GiB" if r.device == "cuda" else "traced GiB"
    for col, just in (("component", "left"), (measured, "right"), ("estimated GiB", "right"),
                      ("error", "right")):  # fmt: skip
        t.add_column(col, justify=just)
    comps, est = b.components.as_dict(), estimate.components.as_dict()
    for name in comps:
        if comps[name] or est[name]:
            err = _err_text(est[name], comps[name])
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
    console.print(
        f"params: {b.params_total:,} total, {b.params_trainable:,} trainable · {r.seconds:.1f} s · "
        "error = (estimated − measured) / measured · GiB = 1024³ B",
        highlight=False,
    )
    if r.oom is not None:
        console.print(Text(oom_line(r), style=VERDICT_STYLE["oom"]))
    elif b.gpu_bytes is not None and b.verdict is not None:
        console.print(
            Text.assemble(
                (VERDICT_TEXT[b.verdict], VERDICT_STYLE[b.verdict]),
                f"  on {b.gpu} ({gib(b.gpu_bytes)} GiB): headroom {gib(b.headroom_bytes or 0)} GiB"
                + ("" if r.cuda is not None else " (traced peak, replayed allocator, modelled CUDA context)"),
            )
        )
    for note in b.all_notes:
        console.print(f"[yellow]note:[/] {note}")
