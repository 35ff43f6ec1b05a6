"""What every report shares: GiB figures, share bars, the title of a training result, the verdict line, the
console. GiB are binary (1024³ bytes) everywhere, and labelled as such.

rich is imported inside the functions that build rich objects, so a `--json` command never loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

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


def console() -> Console:
    from rich.console import Console

    return Console()


def listed(d: dict[str, Any]) -> dict[str, Any]:
    """`d` with its tuples as lists (JSON arrays)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def train_title(b: Any) -> str:
    """`model · method · batch B × seq S [packed] · gpu` of a training result (estimate, measurement, one GPU's
    share); a PEFT method other than LoRA after the method (`lora/ia3`), a stage other than SFT after it (`dpo
    (reference adapter)`)."""
    t = b.train
    shape = f"batch {t.batch} × seq {t.seq}" + (" packed" if t.packing else "")
    method = t.method if t.peft.name == "lora" else f"{t.method}/{t.peft.name}"
    stage = ""
    if not t.stage.is_sft:
        stage = f" · {t.stage.stage}" + (f" (reference {t.stage.reference})" if t.stage.reference != "none" else "")
        if t.stage.generates:
            stage += f" · generation {t.stage.generation}"
    return f"{b.model} · {method}{stage} · {shape}" + (f" · {b.gpu}" if b.gpu else "")


def recipe_line(t: Any) -> str:
    """`recipe: trl 1.16.0 · loss trl-chunked · gradient checkpointing`: whose defaults the step follows."""
    ckpt = "gradient checkpointing" if t.grad_ckpt else "no checkpointing"
    return f"recipe: {t.recipe} · loss {t.loss} · {ckpt}" + (" · packed" if t.packing else "")


def band_text(error_band: float) -> str:
    return f" (tight = within ±{100 * error_band:.0f} % estimator error)"


def verdict_line(b: Any, detail: str = "") -> Text:
    """`fits  on GPU (X GiB): headroom Y GiB` + `detail`, the verdict coloured, for any result with a verdict
    (`PeakAccounting`: Breakdown, ServeBreakdown)."""
    from rich.text import Text

    return Text.assemble(
        (VERDICT_TEXT[b.verdict], VERDICT_STYLE[b.verdict]),
        f"  on {b.gpu} ({gib(b.gpu_bytes)} GiB): headroom {gib(b.headroom_bytes or 0)} GiB{detail}",
    )


def print_notes(notes: Any, console: Console) -> None:
    for note in notes:
        console.print(f"[yellow]note:[/] {note}")


def calibration_json(b: Any) -> dict[str, Any]:
    """`{"calibration": {...}}` when stored runs replaced the documented overheads, else `{}`."""
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


def figures_json(b: Any) -> dict[str, Any]:
    """The keys training and serving results share (`PeakAccounting`)."""
    return {
        "peak_bytes": b.peak_bytes,
        "reserved_bytes": b.reserved_bytes,
        "device_bytes": b.device_bytes,
        "peak_phase": b.peak_phase,
        "peak_moment": b.peak_moment,
        "components": b.components.as_dict(),
        "overhead": {
            "allocator_overhead_bytes": b.allocator_overhead_bytes,
            "cuda_context_bytes": b.cuda_context_bytes,
        },
        "phases": {p.phase: {"total_bytes": p.total, "moment": p.moment, **p.components.as_dict()} for p in b.phases},
        "gpu_bytes": b.gpu_bytes,
        "headroom_bytes": b.headroom_bytes,
        "verdict": b.verdict,
        "error_band": b.error_band,
    }
