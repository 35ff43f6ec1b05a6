"""What the tracker reads: the categories and phases it counts by, and its result (`TrackedPeak`: the peak,
each phase's and each named moment's, bytes per category).

Categories (the closed set `CATEGORIES`):
- weights: frozen parameters and buffers, registered by `register_module`.
- trainable: parameters with `requires_grad`.
- quant_state: bitsandbytes tensors beside the packed weight: `Params4bit.quant_state` (absmax, code, offset,
  and with double quantization the nested `state2.absmax` / `state2.code`), `Int8Params.SCB` / `CB`.
- gradients: `param.grad` storages (relabelled by a post-accumulate-grad hook and before `optimizer.step`).
- optimizer_states: the tensors in `optimizer.state` (relabelled after each `step`; torch AdamW's
  non-capturable `step` counter is a 4-byte fp32 CPU scalar per parameter and is counted here too).
- activations: storages created while `phase == "forward"` that are still alive (saved for backward, outputs,
  the loss).
- logits: nothing by default; storages created inside `label_scope("logits")` (the harness labels the lm_head,
  the loss and their backward so). Any category can label a scope: `label_scope` overrides the phase rule.
- temporaries: everything else: allocated in backward or optimizer phases (or with no phase) and not a
  gradient or optimizer state, e.g. AdamW's `exp_avg_sq.sqrt() / c` pair, recomputed checkpoint activations.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Literal, get_args

from vramplan.breakdown import Components

Category = Literal[
    "weights",
    "trainable",
    "quant_state",
    "gradients",
    "optimizer_states",
    "activations",
    "logits",
    "temporaries",
]


Phase = Literal["forward", "backward", "optimizer"]


CATEGORIES: tuple[Category, ...] = get_args(Category)


PHASES: tuple[Phase, ...] = get_args(Phase)


@dataclass(frozen=True, slots=True)
class CategoryBytes(Components):
    """Live bytes per category at one moment (see the module docstring for what each holds): the Breakdown's
    components, one to one, read by category name."""

    @property
    def total_bytes(self) -> int:
        return sum(self.get(c) for c in CATEGORIES)

    def get(self, category: Category) -> int:
        return getattr(self, category)

    def items(self) -> tuple[tuple[Category, int], ...]:
        return tuple((c, self.get(c)) for c in CATEGORIES)


@dataclass(frozen=True, slots=True)
class PhasePeak:
    """The highest live bytes seen while `phase` was set, the breakdown then, and the moment it was in."""

    phase: Phase
    peak_bytes: int
    breakdown: CategoryBytes
    moment: str | None = None


@dataclass(frozen=True, slots=True)
class MomentPeak:
    """The highest live bytes seen while `moment` was named inside `phase`, and the breakdown then."""

    phase: Phase | None
    moment: str
    peak_bytes: int
    breakdown: CategoryBytes


@dataclass(frozen=True, slots=True)
class TrackedPeak:
    """What a `MemoryTracker` saw: the overall peak, its phase, moment and breakdown, each phase's own peak,
    and each named moment's."""

    peak_bytes: int
    peak_phase: Phase | None
    breakdown: CategoryBytes
    phases: tuple[PhasePeak, ...]
    current_bytes: int
    peak_moment: str | None = None
    moments: tuple[MomentPeak, ...] = ()

    def phase(self, name: Phase) -> PhasePeak | None:
        return next((p for p in self.phases if p.phase == name), None)

    def moment(self, phase: Phase | None, name: str) -> MomentPeak | None:
        return next((p for p in self.moments if p.phase == phase and p.moment == name), None)


class StorageEntry:
    """One tracked storage: its bytes, category, allocation sequence number, weak reference, and the id of its
    current device allocation in the event log (a resize is a new allocation)."""

    __slots__ = ("category", "event_id", "nbytes", "ref", "seq")

    def __init__(self, nbytes: int, category: Category, seq: int, ref: weakref.ref) -> None:
        self.nbytes = nbytes
        self.category = category
        self.seq = seq
        self.ref = ref
        self.event_id = seq


class PeakRecord:
    """A mutable peak record: bytes, the sequence number when reached, the per-category totals then, the phase
    and moment it was reached in."""

    __slots__ = ("breakdown", "moment", "nbytes", "phase", "seq")

    def __init__(
        self, nbytes: int, seq: int, breakdown: dict[Category, int], phase: Phase | None, moment: str | None = None
    ) -> None:
        self.nbytes = nbytes
        self.seq = seq
        self.breakdown = breakdown
        self.phase = phase
        self.moment = moment


def tracked_peak(
    peak: PeakRecord,
    phase_peaks: dict[Phase, PeakRecord],
    moment_peaks: dict[tuple[Phase | None, str], PeakRecord],
    current: int,
) -> TrackedPeak:
    """The tracker's mutable peak records as the frozen `TrackedPeak` a run returns."""
    phases = tuple(
        PhasePeak(p, phase_peaks[p].nbytes, CategoryBytes(**phase_peaks[p].breakdown), phase_peaks[p].moment)
        for p in PHASES
        if p in phase_peaks
    )
    moments = tuple(
        MomentPeak(phase, moment, record.nbytes, CategoryBytes(**record.breakdown))
        for (phase, moment), record in moment_peaks.items()
    )
    return TrackedPeak(
        peak_bytes=peak.nbytes,
        peak_phase=peak.phase,
        breakdown=CategoryBytes(**peak.breakdown),
        phases=phases,
        current_bytes=current,
        peak_moment=peak.moment,
        moments=moments,
    )
