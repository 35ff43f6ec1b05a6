"""`vramplan fit --plot`: device peak against sequence length per method, in the terminal (plotext) or as a
PNG (matplotlib); both optional extras, imported when drawn."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vramplan.errors import VramplanError
from vramplan.report.common import GIB, gib

if TYPE_CHECKING:
    from vramplan.plan.curves import Curve
    from vramplan.spec.gpu import GpuProfile

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
    from vramplan.report.common import hanging

    labels = [hanging(f"  {mk} ", _curve_label(c, top), width) for mk, c in zip(marks, curves, strict=True)]
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
    if not color:  # plain text: no ANSI codes, no trailing blanks (plotext pads every row to the width)
        out = "\n".join(line.rstrip() for line in plt.uncolorize(out).splitlines())
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
    ax.set_ylabel("device total, GiB (1024³ B, least that runs)")
    ax.set_ylim(0, top)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    try:
        fig.savefig(path)
    except OSError as e:
        raise VramplanError(f"cannot write the plot to {path}: {e.strerror}") from None
