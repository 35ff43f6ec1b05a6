"""Searches over the estimator: suggestions that make a configuration fit, largest batch / sequence / rank."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from vramplan.breakdown import Breakdown
from vramplan.estimate.peak import build_breakdown
from vramplan.profiles import GpuProfile
from vramplan.spec import ModelSpec, TrainSpec, resolve_lora_target

# Cost to the user of each change: 0 = free, 1 = slower, 2 = changes the training recipe, 3 = less data/step
COST_LABEL = {0: "free", 1: "slower", 2: "changes the recipe", 3: "fewer tokens per step"}


@dataclass(frozen=True, slots=True)
class Suggestion:
    change: str
    cost: int
    breakdown: Breakdown

    @property
    def device_bytes(self) -> int:
        return self.breakdown.device_bytes


def _run(m: ModelSpec, t: TrainSpec, gpu: GpuProfile) -> Breakdown:
    return build_breakdown(m, t, gpu.memory_bytes, {"model": m.name, "gpu": gpu.key, **t.as_dict()})


def _candidates(m: ModelSpec, t: TrainSpec) -> list[tuple[str, int, TrainSpec]]:
    rep = dataclasses.replace
    out: list[tuple[str, int, TrainSpec]] = []
    if t.attn == "eager":
        out.append(("--attn sdpa (no S×S attention matrix)", 0, rep(t, attn="sdpa")))
    if not t.grad_ckpt:
        out.append(("--grad-ckpt (recompute activations, ~30 % slower)", 1, rep(t, grad_ckpt=True)))
    if t.optim in ("adamw_torch", "adamw_torch_fused", "lion_32bit"):
        out.append(("--optim adamw_8bit (8-bit AdamW states)", 2, rep(t, optim="adamw_8bit")))
        out.append(("--optim paged_adamw_8bit (states in managed memory)", 2, rep(t, optim="paged_adamw_8bit")))
    if t.method in ("full", "freeze"):
        out.append(("--method lora", 2, rep(t, method="lora", dtype=t.compute_dtype, grad_ckpt=t.grad_ckpt)))
    if t.method in ("full", "freeze", "lora"):
        out.append(
            (
                "--method qlora (nf4 base, kbit prep, checkpointing)",
                2,
                rep(t, method="qlora", quant="nf4", double_quant=True, kbit_prep=True, grad_ckpt=True),
            )
        )
    if t.kbit_prep:
        out.append(("--no-kbit-prep (no fp32 upcast of embeddings/norms/lm_head)", 0, rep(t, kbit_prep=False)))
    if t.uses_lora and t.lora_target_preset == "all-linear":
        targets, _ = resolve_lora_target(m, "attn")
        out.append(("--lora-target attn", 2, rep(t, lora_target=targets, lora_target_preset="attn")))
    if t.batch > 1:
        ga = t.grad_accum * t.batch
        out.append(
            (f"--batch 1 --grad-accum {ga} (same effective batch)", 1, rep(t, batch=1, grad_accum=ga))
        )
    if t.seq > 256:
        out.append((f"--seq {t.seq // 2}", 3, rep(t, seq=t.seq // 2)))
    return out


def suggest(m: ModelSpec, t: TrainSpec, gpu: GpuProfile, limit: int = 6) -> list[Suggestion]:
    """Single changes ranked: those that make it fit first (cheapest, then most memory saved), then the rest
    by memory saved. Each carries its computed breakdown."""
    now = _run(m, t, gpu).device_bytes
    found = []
    for label, cost, t2 in _candidates(m, t):
        b = _run(m, t2, gpu)
        if b.device_bytes < now:
            found.append(Suggestion(label, cost, b))
    order = {"fits": 0, "tight": 1, "oom": 2}
    found.sort(key=lambda s: (order[s.breakdown.verdict or "oom"], s.cost, s.device_bytes))
    return found[:limit]


def advice_lines(m: ModelSpec, t: TrainSpec, gpu: GpuProfile, n: int = 2) -> list[str]:
    from vramplan.report import gib

    return [
        f"{s.change}: {gib(s.device_bytes)} GiB → {s.breakdown.verdict} ({COST_LABEL[s.cost]})"
        for s in suggest(m, t, gpu, limit=n)
    ]
