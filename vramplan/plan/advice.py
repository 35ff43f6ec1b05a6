"""What to change when a configuration does not fit: concrete changes, each with its computed peak, verdict.

Every suggestion is one `TrainSpec` edit estimated in full (never a guessed saving). Ranking: changes that
make it fit come first, cheapest first (cost to the user, below), then fewer changes, `fits` before
`tight`, lower peak; changes that do not make it fit follow, by memory saved. When no single change fits,
pairs of changes from different groups are tried, and the cheapest pairs that fit are offered first.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

from vramplan.breakdown import Breakdown, Verdict
from vramplan.estimator.build import AllocatorModel
from vramplan.plan.fit import SEQ_MULTIPLE, fits, fits_printed, max_seq, run
from vramplan.plan.search import largest, settle
from vramplan.spec import ModelSpec, TrainSpec, resolve_lora_target
from vramplan.spec.alloc_conf import parse_alloc_conf
from vramplan.spec.gpu import GpuProfile

# Cost to the user of each change: 0 = free, 1 = slower, 2 = changes the training recipe (accuracy may move),
# 3 = less data per step
COST_LABEL = {0: "free", 1: "slower", 2: "changes the recipe", 3: "fewer tokens per step"}
# Pairs combine changes of different groups, in this order (a method change before its LoRA targets).
GROUPS: tuple[str, ...] = (
    "stage",
    "alloc",
    "attn",
    "ckpt",
    "optim",
    "method",
    "kbit",
    "target",
    "dora",
    "batch",
    "seq",
)
FULL_PRECISION_OPTIMS = frozenset({"adamw_torch", "adamw_torch_fused", "lion_32bit", "paged_adamw_32bit"})


@dataclass(frozen=True, slots=True)
class Suggestion:
    change: str  # the flags to pass, with a short reason; "A + B" for a pair
    cost: int  # the largest COST_LABEL key among the changes
    breakdown: Breakdown  # the estimate with the change applied
    saved_bytes: int = 0  # device bytes saved against the unchanged configuration
    cost_text: str = ""  # COST_LABEL of each change, joined

    @property
    def device_bytes(self) -> int:
        return self.breakdown.device_bytes

    @property
    def verdict(self) -> Verdict | None:
        return self.breakdown.verdict


@dataclass(frozen=True, slots=True)
class _Change:
    group: str
    label: str
    cost: int
    train: TrainSpec


def _changes(m: ModelSpec, t: TrainSpec, gpu: GpuProfile) -> list[_Change]:
    """Every single change that could lower the peak of `t`, with the resulting TrainSpec."""
    rep = dataclasses.replace
    out: list[_Change] = []
    if not t.stage.is_sft:  # preference / RL levers (plan/stage_levers.py)
        from vramplan.plan.stage_levers import stage_levers

        out += [_Change("stage", lever.label, lever.cost, lever.train) for lever in stage_levers(t)]
    if not parse_alloc_conf(t.alloc_conf).expandable_segments:
        expandable = parse_alloc_conf(",".join(filter(None, ("expandable_segments:True", t.alloc_conf)))).text
        out.append(
            _Change(
                "alloc",
                f"--alloc-conf {expandable} (export PYTORCH_CUDA_ALLOC_CONF={expandable}: less fragmentation)",
                0,
                rep(t, alloc_conf=expandable),
            )
        )
    if t.attn == "eager":
        out.append(
            _Change("attn", "--attn sdpa (or flash_attention_2): no S×S attention matrix", 0, rep(t, attn="sdpa"))
        )
    if not t.grad_ckpt:
        out.append(_Change("ckpt", "--grad-ckpt (recompute activations, ~30 % slower)", 1, rep(t, grad_ckpt=True)))
    if t.optim in FULL_PRECISION_OPTIMS:
        out.append(_Change("optim", "--optim adamw_8bit (8-bit AdamW states)", 2, rep(t, optim="adamw_8bit")))
        out.append(
            _Change(
                "optim",
                "--optim paged_adamw_8bit (8-bit states in managed memory)",
                2,
                rep(t, optim="paged_adamw_8bit"),
            )
        )
    elif t.optim == "adamw_8bit":
        out.append(
            _Change(
                "optim",
                "--optim paged_adamw_8bit (states spill to host RAM when short)",
                1,
                rep(t, optim="paged_adamw_8bit"),
            )
        )
    if t.method in ("full", "freeze"):
        out.append(_Change("method", "--method lora", 2, rep(t, method="lora", dtype=t.compute_dtype)))
    if t.method in ("full", "freeze", "lora"):
        out.append(
            _Change(
                "method",
                "--method qlora (nf4 base, kbit prep, checkpointing)",
                2,
                rep(t, method="qlora", quant="nf4", double_quant=True, kbit_prep=True, grad_ckpt=True),
            )
        )
    if t.kbit_prep:
        out.append(
            _Change(
                "kbit",
                # kbit prep is what turns checkpointing on by default: keep it on explicitly, as estimated
                "--no-kbit-prep"
                + (" --grad-ckpt" if t.grad_ckpt else "")
                + " (no fp32 upcast of embeddings/norms/lm_head)",
                2,
                rep(t, kbit_prep=False),
            )
        )
    if t.uses_lora:
        smaller = {"all-linear": ("attn", "qv"), "attn": ("qv",)}.get(t.lora_target_preset, ())
        for preset in smaller:
            targets, _ = resolve_lora_target(m, preset)
            if targets != t.lora_target:
                out.append(
                    _Change(
                        "target",
                        f"--lora-target {preset} ({', '.join(targets)})",
                        2,
                        rep(t, lora_target=targets, lora_target_preset=preset),
                    )
                )
        if t.dora:
            out.append(_Change("dora", "--no-dora (no merged weight in forward)", 2, rep(t, dora=False)))
    if t.batch > 1:
        out.append(_batch_change(m, t, gpu))
    if t.seq > 1 and not fits(run(m, t, gpu)):  # when it fits, a shorter sequence only costs tokens
        out.append(_seq_change(m, t, gpu))
    return out


DIVISOR_TRIALS = 4096  # per end of largest_divisor_at_most's search


def largest_divisor_at_most(n: int, cap: int, trials: int = DIVISOR_TRIALS) -> int:
    """The largest divisor of `n` that is <= `cap`, searched from both ends in at most 2·`trials` steps:
    down from `cap`, and through the cofactors n // d for d up from ceil(n / cap). Each end stops at the
    first divisor, which is the largest one <= cap; 1 when neither end finds one within `trials`."""
    if cap >= n:
        return n
    for b in range(cap, max(1, cap - trials), -1):
        if n % b == 0:
            return b
    first = -(-n // cap)
    for d in range(first, first + trials):
        if n % d == 0:
            return n // d
    return 1


def _batch_change(m: ModelSpec, t: TrainSpec, gpu: GpuProfile, printed: AllocatorModel = "slack") -> _Change:
    """The largest smaller batch dividing the effective batch that fits (else 1), with the accumulation
    steps that keep per_device_train_batch_size × gradient_accumulation_steps unchanged.

    Every candidate b < batch accumulates (eff / b >= 2), and the estimate reads only grad_accum > 1
    (estimator/peak.py), so the largest batch that fits is one bisection at grad_accum 2 (log2 of the batch
    estimates, not one per batch), then the largest divisor of eff at or below it. `printed`: the verdict the
    limit is settled with (`search.settle`; "slack": the probes' own)."""
    eff = t.batch * t.grad_accum
    accumulating = dataclasses.replace(t, grad_accum=2)
    limit = largest(lambda b: fits(run(m, dataclasses.replace(accumulating, batch=b), gpu)), 1, t.batch - 1)
    if printed != "slack":
        at = functools.partial(dataclasses.replace, accumulating)
        limit = settle(lambda b: fits_printed(m, at(batch=b), gpu, None, printed), limit, 1, t.batch - 1)
    best = largest_divisor_at_most(eff, max(limit, 1))
    ga = eff // best
    label = f"--batch {best} --grad-accum {ga} (same effective batch {eff})"
    return _Change("batch", label, 1, dataclasses.replace(t, batch=best, grad_accum=ga))


def _seq_change(m: ModelSpec, t: TrainSpec, gpu: GpuProfile, printed: AllocatorModel = "slack") -> _Change:
    """The longest shorter sequence that fits at this batch (`t.seq` itself does not); half the sequence
    when none does. max_seq rounds to a multiple of SEQ_MULTIPLE from SEQ_MULTIPLE on, and the label says so.
    `printed`: the verdict the longest is settled with ("slack" for the probes; `suggest` settles the kept)."""
    lim = max_seq(m, t, gpu, cap=t.seq - 1, printed=printed)
    if lim.value:
        which = f"the longest multiple of {SEQ_MULTIPLE}" if lim.value >= SEQ_MULTIPLE else "the longest"
        return _Change(
            "seq",
            f"--seq {lim.value} ({which} that fits; now {t.seq})",
            3,
            dataclasses.replace(t, seq=lim.value),
        )
    s = max(1, t.seq // 2)
    return _Change("seq", f"--seq {s}", 3, dataclasses.replace(t, seq=s))


def _suggestion(changes: list[_Change], b: Breakdown, now: int) -> Suggestion:
    costs = [c.cost for c in changes]
    return Suggestion(
        change=" + ".join(c.label for c in changes),
        cost=max(costs),
        breakdown=b,
        saved_bytes=now - b.device_bytes,
        cost_text=", ".join(dict.fromkeys(COST_LABEL[k] for k in sorted(costs))),
    )


def _rank(s: Suggestion) -> tuple:
    n = s.change.count(" + ") + 1
    if fits(s.breakdown):
        return (0, s.cost, n, s.verdict == "tight", s.device_bytes)
    return (1, -s.saved_bytes, s.cost, n)


def suggest(
    m: ModelSpec, t: TrainSpec, gpu: GpuProfile, limit: int = 6, allocator_model: AllocatorModel = "auto"
) -> list[Suggestion]:
    """Changes that lower the peak of `t` on `gpu`, ranked (see the module); pairs when no single one fits.
    Probed with the slack model; the suggestions kept are estimated again as `estimate` does (`allocator_model`:
    the allocator replay where it could change the verdict) and ranked again, so that what is printed a plain
    `estimate` with the change reproduces; a pair (offered only as what makes it fit) that does not fit then
    is dropped for the next one."""
    found = _ranked(m, t, gpu)
    if allocator_model == "slack":
        return [s for s, _ in found[:limit]]
    now = run(m, t, gpu, allocator_model=allocator_model).device_bytes
    checked: list[Suggestion] = []
    for _probed, changes in found:
        if len(checked) == limit:
            break
        last = changes[-1]
        if last.group in ("seq", "batch"):  # "the longest / largest that fits": settled with the printed verdict
            base = changes[0].train if len(changes) == 2 else t
            redo = _seq_change if last.group == "seq" else _batch_change
            changes = [*changes[:-1], redo(m, base, gpu, allocator_model)]
        b = run(m, changes[-1].train, gpu, allocator_model=allocator_model)
        if len(changes) == 2 and not fits(b):
            continue
        checked.append(_suggestion(changes, b, now))
    checked.sort(key=_rank)
    return checked


def _ranked(m: ModelSpec, t: TrainSpec, gpu: GpuProfile) -> list[tuple[Suggestion, list[_Change]]]:
    """Every suggestion the slack model's probes find, ranked, with its changes."""
    now = run(m, t, gpu).device_bytes
    singles: list[tuple[Suggestion, list[_Change]]] = []
    for c in _changes(m, t, gpu):
        b = run(m, c.train, gpu)
        if b.device_bytes < now:
            singles.append((_suggestion([c], b, now), [c]))
    found = list(singles)
    if not any(fits(s.breakdown) for s, _ in singles):
        for a in _changes(m, t, gpu):
            for c in _changes(m, a.train, gpu):
                if GROUPS.index(c.group) <= GROUPS.index(a.group):
                    continue
                b = run(m, c.train, gpu)
                if fits(b):
                    found.append((_suggestion([a, c], b, now), [a, c]))
    found.sort(key=lambda pair: _rank(pair[0]))
    return found
