"""The data of `vramplan fit --plot`: device total against sequence length, one curve per method
(`report/plot.py` draws them)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from vramplan.plan.fit import FIT_METHODS, run, variant
from vramplan.spec import ModelSpec, TrainSpec
from vramplan.spec.gpu import GpuProfile
from vramplan.spec.parallel import ParallelSpec


@dataclass(frozen=True, slots=True)
class Curve:
    """Device total (bytes, the least that runs) against sequence length for one method at a fixed batch."""

    label: str
    seqs: tuple[int, ...]
    device_bytes: tuple[int, ...]


def plot_seqs(seqs: tuple[int, ...], per_octave: int = 4) -> tuple[int, ...]:
    """The x grid: `seqs` plus `per_octave` geometric steps per doubling between the shortest and longest;
    when they are under four octaves apart, two octaves either side (a single --seq still draws a curve)."""
    lo, hi = min(seqs), max(seqs)
    if hi < 16 * lo:
        lo, hi = max(1, lo // 4), hi * 4
    n = max(1, round(math.log2(hi / lo) * per_octave))
    grid = {round(lo * (hi / lo) ** (i / n)) for i in range(n + 1)}
    return tuple(sorted(grid | set(seqs)))


def peak_curves(
    m: ModelSpec,
    t: TrainSpec,
    gpu: GpuProfile,
    seqs: tuple[int, ...],
    methods: tuple[str, ...] | None = None,
    parallel: ParallelSpec | None = None,
) -> list[Curve]:
    """One curve per method at `t.batch`, with `t`'s checkpointing (or the method's default) and optimizer."""
    xs = plot_seqs(seqs)
    out = []
    for meth in methods or FIT_METHODS:
        ckpt = t.grad_ckpt if meth == t.method else meth == "qlora"
        v = variant(m, t, gpu, meth, ckpt, t.optim)
        ys = tuple(run(m, dataclasses.replace(v, seq=s), gpu, parallel).device_bytes for s in xs)
        label = f"{meth}{' + ckpt' if v.grad_ckpt else ''} · {v.optim}"
        out.append(Curve(label=label, seqs=xs, device_bytes=ys))
    return out
