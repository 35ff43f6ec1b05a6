"""Breakdown: the one result type of `estimate`, `measure` and `simulate`.

Component names are a closed set, so an estimate and a measurement line up key by key.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

if TYPE_CHECKING:
    from vramplan.spec.model import Approximation
    from vramplan.spec.overheads import Overheads
    from vramplan.spec.train import TrainSpec

Phase = Literal["forward", "backward", "optimizer"]
PHASES: tuple[Phase, ...] = ("forward", "backward", "optimizer")
Verdict = Literal["fits", "tight", "oom"]

COMPONENT_LABELS: dict[str, str] = {
    "weights": "weights",
    "quant_state": "quantization constants",
    "trainable": "trainable parameters",
    "gradients": "gradients",
    "optimizer_states": "optimizer states",
    "activations": "activations (saved for backward)",
    "logits": "logits / loss",
    "temporaries": "temporaries (workspace)",
}


@dataclass(frozen=True, slots=True)
class Components:
    """Bytes per component at one instant (tensor level: what `torch.cuda.memory_allocated` counts).

    `weights` are frozen parameters; `trainable` are the trainable parameters (LoRA adapters, or every
    trained parameter of full / freeze tuning).
    """

    weights: int = 0
    quant_state: int = 0
    trainable: int = 0
    gradients: int = 0
    optimizer_states: int = 0
    activations: int = 0
    logits: int = 0
    temporaries: int = 0

    @property
    def total(self) -> int:
        return (
            self.weights
            + self.quant_state
            + self.trainable
            + self.gradients
            + self.optimizer_states
            + self.activations
            + self.logits
            + self.temporaries
        )

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COMPONENTS}


COMPONENTS: tuple[str, ...] = tuple(f.name for f in fields(Components))


@dataclass(frozen=True, slots=True)
class PhaseUsage:
    """A phase's usage at its peak, and the moment inside the phase that peak is (the estimator's names in
    `estimator/peak.py`, the harness's in `measure/harness.py`; "" when unnamed)."""

    phase: Phase
    components: Components
    moment: str = ""

    @property
    def total(self) -> int:
        return self.components.total


class PeakAccounting:
    """The arithmetic every result with phases, overheads and a GPU shares (training `Breakdown`, serving
    `ServeBreakdown`): the peak phase, the three memory figures, headroom and the verdict.

    Needs `phases` (each with `phase`, `moment`, `components`, `total`), `allocator_overhead_bytes`,
    `overheads` and `gpu_bytes`.
    """

    __slots__ = ()

    @property
    def cuda_context_bytes(self) -> int:
        return self.overheads.cuda_context_bytes

    @property
    def error_band(self) -> float:
        """Relative error of the estimator used for the `tight` verdict."""
        return self.overheads.error_band

    @property
    def peak(self):
        return max(self.phases, key=lambda p: p.total)

    @property
    def peak_phase(self) -> str:
        return self.peak.phase

    @property
    def peak_moment(self) -> str:
        """The moment inside the peak phase ("" when its phases name none)."""
        return self.peak.moment

    @property
    def components(self):
        return self.peak.components

    @property
    def peak_bytes(self) -> int:
        return self.peak.total

    @property
    def reserved_bytes(self) -> int:
        return self.peak_bytes + self.allocator_overhead_bytes

    @property
    def allocator_need_bytes(self) -> int:
        """What the caching allocator must be able to get beyond the tensor peak for the step to run (it frees
        cached segments and retries before an out-of-memory error); a training Breakdown models it, other
        results take the whole slack."""
        return self.allocator_overhead_bytes

    @property
    def device_bytes(self) -> int:
        """The least device memory the step runs on: tensor peak + the allocator's need + CUDA context. With
        room to spare the process holds up to `reserved_bytes` + the context (nvidia-smi)."""
        return self.peak_bytes + self.allocator_need_bytes + self.cuda_context_bytes

    @property
    def headroom_bytes(self) -> int | None:
        return None if self.gpu_bytes is None else self.gpu_bytes - self.device_bytes

    def _verdict(self, refused: bool = False) -> Verdict | None:
        """`oom` above the GPU's memory (or when `refused`); `tight` when within the estimator's error band of
        it; else `fits`."""
        if self.gpu_bytes is None:
            return None
        if refused or self.device_bytes > self.gpu_bytes:
            return "oom"
        if self.device_bytes * (1 + self.error_band) > self.gpu_bytes:
            return "tight"
        return "fits"


class MeasuredRun(NamedTuple):
    """Where a measured or traced step ran: `device` (cuda, cpu, meta, fake) and the steps completed."""

    device: str
    steps: int


@dataclass(frozen=True, slots=True)
class Breakdown(PeakAccounting):
    """Peak memory of one steady-state training step, where it goes, and whether it fits.

    `peak_bytes` is the tensor-level peak (`torch.cuda.max_memory_allocated`); `reserved_bytes` adds the
    caching allocator's slack (`max_memory_reserved`); `device_bytes` is the least device memory the step runs
    on (the peak, what the allocator must be able to get beyond it, the CUDA context): the verdict compares
    it with the GPU. Paged (CUDA managed) optimizer states are outside all three and reported as `paged_bytes`.
    Built only by `vramplan.estimator.build` (`build_breakdown`, `measured_breakdown`).

    Inputs, typed: `train` (the resolved step), `gpu` (its gpus.toml key, "local", or the CUDA device a
    measurement ran on; None without a GPU) and `overheads` (CUDA context, allocator, error band and the
    calibration they came from). `notes`: what a measurement adds to `train.notes`; `run`: where it ran.
    """

    model: str
    phases: tuple[PhaseUsage, ...]
    params_total: int
    params_trainable: int
    paged_bytes: int
    train: TrainSpec
    gpu: str | None
    gpu_bytes: int | None
    overheads: Overheads
    source: Literal["estimate", "measure", "simulate"] = "estimate"
    notes: tuple[str, ...] = ()
    run: MeasuredRun | None = None
    approximation: Approximation | None = None  # a generic family (spec/generic.py): its band is in `overheads`
    host_bytes: int = 0  # host RAM holding offloaded activations (estimator/offload.py), outside the GPU figures
    # the allocator's figures from a replay of the walk's allocation sequence (estimator/allocator_replay.py, an
    # AllocatorSlack), where that route is taken; None: the slack model's. They give `reserved_bytes`; the
    # verdict's need and band too only with `replay_verdict` (else the slack model's, as `fit` probes)
    replayed_allocator: Any = None
    replay_verdict: bool = False

    @property
    def allocator(self):
        """The estimator's caching-allocator figures for this step: the walk replay's where it was taken
        (`vramplan.estimator.allocator_replay`), else the slack model's (`vramplan.estimator.allocator_slack`)."""
        if self.replayed_allocator is not None:
            return self.replayed_allocator
        return self.model_allocator

    @property
    def model_allocator(self):
        """The slack model's figures (`vramplan.estimator.allocator_slack`)."""
        from vramplan.estimator.allocator_slack import allocator_slack
        from vramplan.spec.alloc_conf import parse_alloc_conf

        return allocator_slack(self.peak_shape, parse_alloc_conf(self.train.alloc_conf))

    @property
    def verdict_allocator(self):
        """The allocator figures the verdict uses: the walk replay's with `replay_verdict`, else the model's."""
        if self.replayed_allocator is not None and self.replay_verdict:
            return self.replayed_allocator
        return self.model_allocator

    @property
    def peak_shape(self):
        """The peak phase as the allocator model reads it (`vramplan.estimator.allocator_slack.PeakShape`)."""
        from vramplan.estimator.allocator_slack import PeakShape

        c = self.components
        return PeakShape(c.total, c.logits, c.activations, self.train.grad_ckpt)

    def _overhead_of(self, allocator) -> int:
        o = self.overheads
        if o.measured or o.calibrated_ratio:
            return o.allocator_bytes(self.peak_bytes)
        from vramplan.spec.overheads import CUBLAS_WORKSPACE_BYTES

        return allocator.reserved_bytes + CUBLAS_WORKSPACE_BYTES

    @property
    def allocator_overhead_bytes(self) -> int:
        """max_memory_reserved − tensor peak (+ cuBLAS workspace): measured or replayed, a calibration's ratio,
        else the estimator's (`allocator`). A walk replay's reserved figure beside the model's need is at least
        that need (the allocator cannot run the step on less than it reserves with room to spare)."""
        overhead = self._overhead_of(self.allocator)
        if self.replayed_allocator is not None and not self.replay_verdict:
            overhead = max(overhead, self.allocator_need_bytes)
        return overhead

    @property
    def allocator_need_bytes(self) -> int:
        o = self.overheads
        if o.measured_need_bytes is not None:
            return o.measured_need_bytes
        if o.measured:
            return o.allocator_bytes(self.peak_bytes)
        from vramplan.spec.overheads import CUBLAS_WORKSPACE_BYTES

        allocator = self.verdict_allocator
        return min(allocator.need_bytes + CUBLAS_WORKSPACE_BYTES, self._overhead_of(allocator))

    @property
    def error_band(self) -> float:
        """The `tight` band: measured, calibrated or replayed figures carry their own; an estimate adds its
        verdict's allocator error to the tensor peak's (`estimator.allocator_slack.tight_band`)."""
        from vramplan.estimator.allocator_slack import error_band

        replayed = self.replayed_allocator if self.replay_verdict else None
        return error_band(self.overheads, self.train.alloc_conf, replayed.need_error if replayed else None)

    @property
    def all_notes(self) -> tuple[str, ...]:
        return (*self.train.notes, *self.notes)

    @property
    def verdict(self) -> Verdict | None:
        return self._verdict()
