"""The profiles: `vramplan gpus` (built-in GPU profiles, or the GPUs NVML sees with `--local`) and
`vramplan models` (the built-in model profiles)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vramplan.report.common import gib

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rich.console import Console

    from vramplan.sources.local_gpu import LocalGpu
    from vramplan.spec import ModelSpec
    from vramplan.spec.gpu import GpuProfile


def gpus_json(gpus: Sequence[GpuProfile]) -> list[dict[str, Any]]:
    return [
        {"key": g.key, "name": g.name, "memory_bytes": g.memory_bytes, "compute_capability": g.compute_capability,
         "bf16": g.bf16, "fp8": g.fp8, "fp4": g.fp4, "aliases": list(g.aliases)} for g in gpus
    ]  # fmt: skip


def render_gpus(gpus: Sequence[GpuProfile], console: Console, show_all: bool = False) -> None:
    """One row per profile, smallest memory first; the key (what --gpu takes) is never cut, the aliases only
    with `show_all`: a column from 120 columns, else one wrapped line per GPU below the table (an alias is
    typed, so it is never cut either)."""
    from rich.table import Table

    t = Table(title="GPU profiles (memory in GiB = 1024³ B)", title_justify="left", show_edge=False)
    # every column but the name keeps its full width; the name gets what is left (at most 34), cut with "…"
    # (rich does not shrink a no_wrap column below its longest cell, so the cut is made here)
    key_width = max((len(g.key) for g in gpus), default=3)
    fixed = (("GiB", 6), ("cc", 4), ("bf16", 4), ("fp8", 3), ("fp4", 3))
    padding = 2 * (len(fixed) + 2) + len(fixed) + 1  # one space each side of every column, one rule between two
    name_width = min(34, console.width - key_width - sum(w for _, w in fixed) - padding)
    named = name_width >= 12  # narrower, the name (decoration) is dropped rather than a figure cut
    t.add_column("key", no_wrap=True, min_width=key_width)
    if named:
        t.add_column("name", no_wrap=True, width=name_width)
    for col, width in fixed:
        t.add_column(col, justify="right" if col == "GiB" else "left", no_wrap=True, min_width=width)
    aliases_column = show_all and console.width >= 120
    if aliases_column:
        t.add_column("aliases (also taken by --gpu)")
    for g in sorted(gpus, key=lambda g: (g.memory_bytes, g.key)):
        name = g.name.removeprefix("NVIDIA ").removeprefix("GeForce ").removeprefix("Tesla ")
        name = name if len(name) <= name_width else name[: name_width - 1] + "…"
        flags = ["yes" if flag else "no" for flag in (g.bf16, g.fp8, g.fp4)]
        cells = [g.key, *([name] if named else []), gib(g.memory_bytes), g.compute_capability, *flags]
        t.add_row(*cells, *([", ".join(g.aliases)] if aliases_column else []))
    console.print(t)
    if show_all and not aliases_column:
        from vramplan.report.common import flow

        console.print("aliases (also taken by --gpu):")
        for g in sorted(gpus, key=lambda g: (g.memory_bytes, g.key)):
            if g.aliases:  # wrapped between aliases: `rtx 2060 super` stays on one line
                first, *rest = [f"{a}," for a in g.aliases[:-1]] + [g.aliases[-1]]
                text = flow([f"  {g.key}: {first}", *rest], console.width, " ", " " * (len(g.key) + 4), lead="")
                console.print(text, soft_wrap=True, highlight=False, markup=False)
    if not show_all:
        console.print("--gpu also takes NVML names and aliases (2080ti, a100, ...): `vramplan gpus --all` lists them")


def models_json(specs: Sequence[ModelSpec]) -> list[dict[str, Any]]:
    return [
        {"name": s.name, "model_type": s.model_type, "params": s.total_params, "layers": s.num_hidden_layers,
         "hidden_size": s.hidden_size, "vocab_size": s.vocab_size} for s in specs
    ]  # fmt: skip


def render_models(specs: Sequence[ModelSpec], console: Console) -> None:
    from rich.table import Table

    # type, layers and hidden size are decoration: dropped below 110 columns, heads/kv below 72; the name is
    # never cut
    if console.width >= 110:
        cols: tuple[str, ...] = ("name", "type", "params", "layers", "hidden", "heads/kv", "vocab")
    elif console.width >= 72:
        cols = ("name", "params", "heads/kv", "vocab")
    else:
        cols = ("name", "params", "vocab")
    t = Table(title="built-in models", title_justify="left", show_edge=False)
    for col in cols:
        t.add_column(col, justify="left" if col in ("name", "type") else "right", no_wrap=True)
    for s in specs:
        cells = {"name": s.name, "type": s.model_type, "params": f"{s.total_params / 1e9:.2f} B",
                 "layers": str(s.num_hidden_layers), "hidden": str(s.hidden_size),
                 "heads/kv": f"{s.num_attention_heads}/{s.num_key_value_heads}",
                 "vocab": f"{s.vocab_size:,}"}  # fmt: skip
        t.add_row(*(cells[c] for c in cols))
    console.print(t)


def local_gpus_json(gpus: list[LocalGpu]) -> list[dict[str, Any]]:
    return [
        {"index": g.index, "name": g.name, "total_bytes": g.total_bytes, "free_bytes": g.free_bytes,
         "used_bytes": g.used_bytes, "driver": g.driver, "compute_capability": g.compute_capability,
         "profile": g.profile_key}
        for g in gpus
    ]  # fmt: skip


def render_local_gpus(gpus: list[LocalGpu], console: Console) -> None:
    from rich.table import Table

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
