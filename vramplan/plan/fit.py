"""What fits: the largest batch / sequence / LoRA rank on a GPU, by bisection over the analytic estimator.

Every search relies on monotonicity: the device peak never falls when batch, seq or LoRA rank grows
(property-tested in tests/estimator/test_invariants.py). So "fits" is true up to some value and false
after it, and a doubling (galloping) search followed by bisection finds that value in O(log n) estimates
(~0.4 ms each), without re-resolving the inputs: each probe is a `dataclasses.replace` of a TrainSpec.

"Fits" means verdict `fits` or `tight` (device total ≤ the GPU's memory); `tight` results are flagged,
since they are within the estimator's error band (`estimator.overhead.error_band`: the GPU's overheads and the
allocator model's error under `--alloc-conf`).
The searches themselves are `vramplan.plan.search`'s; suggestions (what to change when it does not fit) live in
`vramplan.plan.advice`, the plot's curves in `vramplan.plan.curves`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

from vramplan.breakdown import Breakdown, Verdict
from vramplan.errors import VramplanError
from vramplan.estimator.allocator_slack import error_band
from vramplan.estimator.build import AllocatorModel, build_breakdown
from vramplan.estimator.distributed import shard
from vramplan.plan.search import largest, settle
from vramplan.spec import ModelSpec, TrainSpec, resolve_train
from vramplan.spec.counts import LIMITS, parse_count
from vramplan.spec.fields import positive
from vramplan.spec.gpu import GpuProfile
from vramplan.spec.parallel import ParallelSpec

FIT_METHODS: tuple[str, ...] = ("full", "lora", "qlora")
DEFAULT_SEQS: tuple[int, ...] = (512, 1024, 2048, 4096, 8192)
DEFAULT_SEQ = 1024  # `estimate`'s default --seq: the "chosen" sequence of the rank search
# 8-bit row: bitsandbytes AdamW8bit keeps its states on the device, so the verdict counts them. Paged
# optimizers move states to CUDA managed memory (outside the verdict); `--suggest` offers them.
EIGHT_BIT_OPTIM = "adamw_8bit"
LOW_MEMORY_OPTIMS = frozenset({"adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"})
MAX_BATCH = 4096  # search cap (per_device_train_batch_size); a cell at the cap is reported as "≥"
MAX_SEQ_COLUMNS = 16  # `fit --seq a,b,...`: one column each, a batch search per column and row
SEQ_MULTIPLE = 64  # longest sequence is rounded down to a multiple of 64 tokens (cutoff_len granularity;
# flash/SDPA kernels tile the sequence in 64/128-token blocks)


@dataclass(frozen=True, slots=True)
class Limit:
    """The largest value of one setting that fits (0 = not even the smallest), and its estimate there."""

    value: int
    capped: bool  # the search stopped at its cap: the true limit is at least `value`
    breakdown: Breakdown | None  # at `value`; None when value == 0

    @property
    def verdict(self) -> Verdict | None:
        return self.breakdown.verdict if self.breakdown else None

    @property
    def tight(self) -> bool:
        return self.verdict == "tight"


@dataclass(frozen=True, slots=True)
class Cell:
    seq: int
    batch: Limit  # the largest per_device_train_batch_size at this seq


@dataclass(frozen=True, slots=True)
class FitRow:
    """One method variant: the largest batch at each sequence length, and the longest sequence at batch 1."""

    train: TrainSpec  # the variant at the chosen batch / seq
    cells: tuple[Cell, ...]
    max_seq: Limit  # at batch 1, a multiple of SEQ_MULTIPLE (exact below it)

    @property
    def method(self) -> str:
        return self.train.method

    @property
    def grad_ckpt(self) -> bool:
        return self.train.grad_ckpt

    @property
    def optim(self) -> str:
        return self.train.optim


@dataclass(frozen=True, slots=True)
class FitTable:
    model: str
    gpu: GpuProfile
    error_band: float
    seqs: tuple[int, ...]
    rows: tuple[FitRow, ...]
    train: TrainSpec  # the chosen settings (batch, seq, method, ...)
    max_lora_rank: Limit | None  # None when the chosen method has no LoRA
    rank_cap: int
    seq_cap: int
    notes: tuple[str, ...] = ()
    parallel: ParallelSpec | None = None  # cells are per GPU of this multi-GPU run


# ---------------------------------------------------------------- primitives


def run(
    m: ModelSpec,
    t: TrainSpec,
    gpu: GpuProfile,
    parallel: ParallelSpec | None = None,
    allocator_model: AllocatorModel = "slack",
) -> Breakdown:
    """One estimate on `gpu` with its overheads (calibrated once by the command); no re-resolving of `t`.
    With `parallel` (--gpus, --strategy, ...): one GPU's share of the run (vramplan.estimator.distributed),
    which fits or not per GPU. `allocator_model`: "slack" for the searches' probes (milliseconds), `estimate`'s
    "auto" for what is printed (`settle`)."""
    b = build_breakdown(m, t, gpu, allocator_model=allocator_model)
    return b if parallel is None or parallel.plain else shard(m, t, parallel, b).breakdown


def fits(b: Breakdown) -> bool:
    """Predicted to fit: `fits` or `tight` (device total ≤ the GPU's memory)."""
    return b.verdict in ("fits", "tight")


def _limit(
    m: ModelSpec,
    gpu: GpuProfile,
    vary: Callable[[int], TrainSpec],
    lo: int,
    cap: int,
    known_bad: int | None = None,
    parallel: ParallelSpec | None = None,
    printed: AllocatorModel = "auto",
) -> Limit:
    """The limit the slack model's probes find (`largest`), then settled with the verdict of `printed`
    (`estimate`'s own, "auto": the allocator replay where it could change the verdict), so that what is printed
    `estimate` reproduces: one or two estimates more, replays only near the card."""
    seen: dict[int, Breakdown] = {}

    def ok(n: int) -> bool:
        seen[n] = run(m, vary(n), gpu, parallel)
        return fits(seen[n])

    n = largest(ok, lo, cap, known_bad)
    if printed != "slack":
        n = settle(lambda k: fits_printed(m, vary(k), gpu, parallel, printed), n, lo, cap)
        seen = {}
    if n < lo:
        return Limit(0, False, None)
    return Limit(n, n == cap, seen.get(n) or run(m, vary(n), gpu, parallel, printed))


def fits_printed(
    m: ModelSpec, t: TrainSpec, gpu: GpuProfile, parallel: ParallelSpec | None, printed: AllocatorModel
) -> bool:
    """`fits(run(m, t, gpu, parallel, printed))`, for "auto" on one GPU without the whole bisection for the
    least memory that runs: only until it decides the verdict (`allocator_replay.replay_fits`)."""
    plain = parallel is None or parallel.plain
    if printed != "auto" or not plain or not t.stage.is_sft:
        return fits(run(m, t, gpu, parallel, printed))
    from vramplan.estimator.allocator_replay import replay_fits, replay_route
    from vramplan.spec.alloc_conf import parse_alloc_conf

    b = run(m, t, gpu)
    if not replay_route(t, parse_alloc_conf(t.alloc_conf)):
        return fits(b)
    return replay_fits(m, t, b)


def max_batch(
    m: ModelSpec,
    t: TrainSpec,
    gpu: GpuProfile,
    known_bad: int | None = None,
    parallel: ParallelSpec | None = None,
    printed: AllocatorModel = "auto",
) -> Limit:
    """Largest per_device_train_batch_size that fits at `t.seq` (0 = not even batch 1)."""
    return _limit(m, gpu, lambda b: dataclasses.replace(t, batch=b), 1, MAX_BATCH, known_bad, parallel, printed)


def max_seq(
    m: ModelSpec,
    t: TrainSpec,
    gpu: GpuProfile,
    cap: int,
    good: int = 0,
    bad: int | None = None,
    parallel: ParallelSpec | None = None,
    printed: AllocatorModel = "auto",
) -> Limit:
    """Longest sequence that fits at `t.batch`, rounded down to a multiple of SEQ_MULTIPLE (exact below it).

    `good` / `bad`: sequence lengths already known to fit / not to fit (from the table's columns).
    `printed`: the allocator model of the verdict it is settled with (`_limit`).
    """
    step = SEQ_MULTIPLE
    k_cap = cap // step
    k_bad = None if bad is None else math.ceil(bad / step)
    lim = _limit(
        m, gpu, lambda k: dataclasses.replace(t, seq=k * step), max(1, good // step), k_cap, k_bad, parallel, printed
    )
    if lim.value:
        return Limit(lim.value * step, lim.capped, lim.breakdown)
    return _limit(m, gpu, lambda s: dataclasses.replace(t, seq=s), 1, min(step - 1, cap), None, parallel, printed)


def max_lora_rank(
    m: ModelSpec,
    t: TrainSpec,
    gpu: GpuProfile,
    cap: int,
    parallel: ParallelSpec | None = None,
    printed: AllocatorModel = "auto",
) -> Limit | None:
    """Largest LoRA r that fits with every other setting of `t`; None when `t` trains no LoRA."""
    if not t.uses_lora:
        return None
    return _limit(m, gpu, lambda r: dataclasses.replace(t, lora_rank=r), 1, cap, None, parallel, printed)


# ---------------------------------------------------------------- the table


def parse_seqs(text: str | None) -> tuple[tuple[int, ...], int]:
    """`--seq 512,1024,4k` -> (sorted unique lengths, the chosen one = the first typed); `k` = ×1024.

    Without `--seq`: DEFAULT_SEQS, and `estimate`'s default 1024 as the chosen one.
    """
    if text is None:
        return DEFAULT_SEQS, DEFAULT_SEQ
    parts = [p for p in str(text).split(",") if p.strip()]
    if not parts:
        raise VramplanError(f"--seq takes positive integers separated by commas (e.g. 512,1024,4k), got {text!r}")
    if len(parts) > MAX_SEQ_COLUMNS:
        raise VramplanError(f"--seq lists {len(parts)} lengths; the table shows at most {MAX_SEQ_COLUMNS}")
    vals = [positive(parse_count(p, "--seq"), "--seq", LIMITS["seq"]) for p in parts]
    return tuple(sorted(set(vals))), vals[0]


def variant(m: ModelSpec, t: TrainSpec, gpu: GpuProfile, method: str, grad_ckpt: bool, optim: str) -> TrainSpec:
    """`t` with another method / checkpointing / optimizer, resolved as `estimate` would.

    Quantization settings (--quant, --double-quant, --kbit-prep) carry over only to the same method; other
    methods get their defaults (QLoRA: nf4 + double quant + kbit prep).
    """
    same = method == t.method
    target = ",".join(t.lora_target) if t.lora_target_preset == "custom" else t.lora_target_preset
    return resolve_train(
        m,
        gpu_bf16=gpu.bf16,
        gpu_compute_capability=gpu.compute_capability,
        method=method,
        dtype=t.dtype,
        mixed_precision=t.mixed_precision,
        quant=t.quant if same else None,
        double_quant=t.double_quant if same else None,
        kbit_prep=t.kbit_prep if same else None,
        batch=t.batch,
        seq=t.seq,
        grad_accum=t.grad_accum,
        lora_rank=t.lora_rank,
        lora_alpha=t.lora_alpha,
        lora_dropout=t.lora_dropout,
        lora_target=target,
        dora=t.dora,
        optim=optim,
        grad_ckpt=grad_ckpt,
        attn=t.attn,
        freeze_trainable_layers=t.freeze_trainable_layers,
        optim_rank=t.optim_rank if optim == t.optim and t.optim_rank else None,
        # offloaded checkpointing is checkpointing: the rows without it do not offload
        activation_offload=t.activation_offload if grad_ckpt or t.activation_offload == "all" else "none",
    )


def row_variants(m: ModelSpec, t: TrainSpec, gpu: GpuProfile, methods: tuple[str, ...]) -> list[TrainSpec]:
    """Each method without / with gradient checkpointing, with `t.optim` and (unless already 8-bit or paged)
    bitsandbytes 8-bit AdamW."""
    optims = (t.optim,) if t.optim in LOW_MEMORY_OPTIMS else (t.optim, EIGHT_BIT_OPTIM)
    return [variant(m, t, gpu, meth, ckpt, opt) for meth in methods for ckpt in (False, True) for opt in optims]


def fit_row(
    m: ModelSpec,
    t: TrainSpec,
    gpu: GpuProfile,
    seqs: tuple[int, ...],
    seq_cap: int,
    parallel: ParallelSpec | None = None,
    printed: AllocatorModel = "auto",
) -> FitRow:
    """Largest batch per (ascending) seq, then the longest seq at batch 1, each bracketed by the last.

    A longer sequence never allows a larger batch, so each column's limit + 1 bounds the next column's
    search, and a 0 ends the row; the columns also bracket the longest-sequence search.
    """
    cells: list[Cell] = []
    bound: int | None = None
    for s in seqs:
        if bound == 1:  # the previous column was 0: a longer sequence cannot fit either
            cells.append(Cell(s, Limit(0, False, None)))
            continue
        lim = max_batch(m, dataclasses.replace(t, seq=s), gpu, known_bad=bound, parallel=parallel, printed=printed)
        cells.append(Cell(s, lim))
        bound = None if lim.capped else lim.value + 1
    good = max((c.seq for c in cells if c.batch.value), default=0)
    bad = min((c.seq for c in cells if not c.batch.value), default=None)
    longest = max_seq(
        m, dataclasses.replace(t, batch=1), gpu, seq_cap, good=good, bad=bad, parallel=parallel, printed=printed
    )
    return FitRow(train=t, cells=tuple(cells), max_seq=longest)


def fit_table(
    m: ModelSpec,
    t: TrainSpec,
    gpu: GpuProfile,
    seqs: tuple[int, ...] = DEFAULT_SEQS,
    methods: tuple[str, ...] | None = None,
    parallel: ParallelSpec | None = None,
    printed: AllocatorModel = "auto",
) -> FitTable:
    """The `vramplan fit` table: rows = `methods` (default full, LoRA, QLoRA) × gradient checkpointing off/on
    × optimizer (`t.optim`, 8-bit AdamW), columns = `seqs`, cells = the largest batch that fits; per row the
    longest sequence at batch 1 (searched up to the larger of the model's context and the longest column);
    and the largest LoRA rank at `t`'s own settings (searched up to hidden_size). Searched with the slack
    model, each printed value settled with the verdict of `printed` (`estimate`'s "auto" unless told)."""
    seqs = tuple(sorted(set(seqs)))
    if not seqs or seqs[0] < 1:
        raise VramplanError("fit needs at least one positive sequence length (--seq)")
    seq_cap = max(m.max_position_embeddings, seqs[-1])
    rank_cap = m.hidden_size
    variants = row_variants(m, t, gpu, methods or FIT_METHODS)
    rows = tuple(fit_row(m, v, gpu, seqs, seq_cap, parallel, printed) for v in variants)
    notes = tuple(dict.fromkeys(n for r in rows for n in r.train.notes))
    return FitTable(
        model=m.name,
        gpu=gpu,
        error_band=max(verdict_band(gpu, r.train, printed) for r in rows),
        seqs=seqs,
        rows=rows,
        train=t,
        max_lora_rank=max_lora_rank(m, t, gpu, rank_cap, parallel, printed),
        rank_cap=rank_cap,
        seq_cap=seq_cap,
        notes=notes,
        parallel=None if parallel is None or parallel.plain else parallel,
    )


def verdict_band(gpu: GpuProfile, t: TrainSpec, printed: AllocatorModel = "auto") -> float:
    """The `tight` band of `t`'s printed verdicts near the card: the allocator replay's (its error by
    checkpointing) where `printed` replays and its route takes `t`, else the slack model's."""
    from vramplan.estimator.allocator_replay import REPLAY_ERRORS, replay_route
    from vramplan.estimator.allocator_slack import setting_of
    from vramplan.spec.alloc_conf import parse_alloc_conf

    config = parse_alloc_conf(t.alloc_conf)
    if printed == "slack" or not replay_route(t, config):
        return error_band(gpu.overheads, t.alloc_conf)
    replay_error = REPLAY_ERRORS[setting_of(config), t.grad_ckpt, "min_limit_bytes"][0]
    return error_band(gpu.overheads, t.alloc_conf, replay_error)
