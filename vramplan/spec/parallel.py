"""The multi-GPU request: strategy, GPU count, offload, validated against the training step (ParallelSpec).

Mirrors spec.py for one more input: the engines (DDP, DeepSpeed ZeRO, PyTorch FSDP) and what each can do;
the arithmetic lives in vramplan.estimator.distributed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

from vramplan.errors import VramplanError, did_you_mean
from vramplan.spec import TrainSpec
from vramplan.units import ceil_div

Strategy = Literal["ddp", "zero1", "zero2", "zero3", "fsdp", "fsdp-hybrid"]
Offload = Literal["none", "optimizer", "params"]
STRATEGIES: tuple[str, ...] = ("ddp", "zero1", "zero2", "zero3", "fsdp", "fsdp-hybrid")
OFFLOADS: tuple[str, ...] = ("none", "optimizer", "params")
STRATEGY_ALIASES = {"full_shard": "fsdp", "hybrid_shard": "fsdp-hybrid", "fsdp_hybrid": "fsdp-hybrid",
                    "hsdp": "fsdp-hybrid"}  # fmt: skip
DEFAULT_GPUS_PER_NODE = 8
# DeepSpeed ZeRO defaults, in elements (runtime/zero/config.py DeepSpeedZeroConfig, DeepSpeed @ edaa7221).
REDUCE_BUCKET_SIZE = 500_000_000  # reduce_bucket_size = 5e8
STAGE3_PREFETCH_BUCKET_SIZE = 50_000_000  # stage3_prefetch_bucket_size = 5e7
STAGE3_MAX_LIVE_PARAMETERS = 1_000_000_000  # stage3_max_live_parameters = 1e9
STAGE3_PARAM_PERSISTENCE_THRESHOLD = 100_000  # stage3_param_persistence_threshold = 1e5
AUTO = "auto"  # a DeepSpeed JSON value the HF integration fills from the model (`ZeroBuckets.resolved`)


class ZeroBuckets(NamedTuple):
    """The DeepSpeed `zero_optimization` sizes that allocate device memory, in elements, or "auto".

    "auto" is what transformers' `HfTrainerDeepSpeedConfig.trainer_config_finalize` fills from the model's
    hidden size h (integrations/deepspeed.py, transformers 5.24): reduce_bucket_size = h², and under stage 3
    stage3_prefetch_bucket_size = int(0.9 · h²), stage3_param_persistence_threshold = 10 · h.
    `overlap_comm`: None = DeepSpeed's default (True for stage 3 only, config.py `overlap_comm_valid`).
    """

    reduce_bucket_size: int | str = REDUCE_BUCKET_SIZE
    stage3_prefetch_bucket_size: int | str = STAGE3_PREFETCH_BUCKET_SIZE
    stage3_param_persistence_threshold: int | str = STAGE3_PARAM_PERSISTENCE_THRESHOLD
    stage3_max_live_parameters: int = STAGE3_MAX_LIVE_PARAMETERS
    overlap_comm: bool | None = None

    def resolved(self, hidden_size: int) -> ZeroBuckets:
        """Every "auto" replaced as the HF integration replaces it for a model of `hidden_size`."""
        h = hidden_size

        def fill(value: int | str, auto: int) -> int:
            return auto if value == AUTO else int(value)

        return ZeroBuckets(
            fill(self.reduce_bucket_size, h * h),
            fill(self.stage3_prefetch_bucket_size, int(0.9 * h * h)),
            fill(self.stage3_param_persistence_threshold, 10 * h),
            self.stage3_max_live_parameters,
            self.overlap_comm,
        )

    def as_dict(self) -> dict[str, object]:
        return self._asdict()


@dataclass(frozen=True, slots=True)
class ParallelSpec:
    """How a run is spread: `gpus` ranks, `gpus_per_node` per machine, one engine, optional host offload."""

    strategy: Strategy = "ddp"
    gpus: int = 1
    gpus_per_node: int = DEFAULT_GPUS_PER_NODE
    offload: Offload = "none"
    notes: tuple[str, ...] = ()
    buckets: ZeroBuckets = ZeroBuckets()  # DeepSpeed's sizes (a `deepspeed:` JSON); unused by DDP / FSDP
    reshard_after_forward: bool = True  # FSDP: False = SHARD_GRAD_OP / FSDP2 reshard_after_forward=False

    @property
    def plain(self) -> bool:
        """One GPU and no engine: the one-GPU estimate as it is."""
        return self.gpus == 1 and self.strategy == "ddp"

    @property
    def shard_size(self) -> int:
        """Ranks one copy of the model states is split over: 1 (DDP), all (ZeRO, FSDP), a node (hybrid)."""
        if self.strategy == "ddp":
            return 1
        if self.strategy == "fsdp-hybrid":
            return min(self.gpus, self.gpus_per_node)
        return self.gpus

    @property
    def ranks_per_node(self) -> int:
        return min(self.gpus, self.gpus_per_node)

    @property
    def nodes(self) -> int:
        return ceil_div(self.gpus, self.gpus_per_node)

    @property
    def stage(self) -> int:
        """ZeRO stage (1, 2, 3), 0 for DDP and FSDP."""
        return int(self.strategy[-1]) if self.strategy.startswith("zero") else 0

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"strategy": self.strategy, "gpus": self.gpus, "gpus_per_node": self.gpus_per_node,
                                  "shard_size": self.shard_size, "offload": self.offload}  # fmt: skip
        if self.stage and self.buckets != ZeroBuckets():
            out["deepspeed"] = self.buckets.as_dict()
        if self.strategy.startswith("fsdp") and not self.reshard_after_forward:
            out["reshard_after_forward"] = False
        return out


def resolve_parallel(
    t: TrainSpec,
    *,
    gpus: int = 1,
    strategy: str | None = None,
    gpus_per_node: int = DEFAULT_GPUS_PER_NODE,
    offload: str = "none",
    buckets: ZeroBuckets | None = None,
    reshard_after_forward: bool = True,
) -> ParallelSpec:
    """Validate a multi-GPU request against the training step; warnings go to `notes`, errors raise."""
    for flag, val in (("--gpus", gpus), ("--gpus-per-node", gpus_per_node)):
        if val is None or val < 1:
            raise VramplanError(f"{flag} must be a positive integer, got {val!r}")
    s = (strategy or "ddp").lower()
    s = STRATEGY_ALIASES.get(s, s)
    if s not in STRATEGIES:
        raise did_you_mean(str(strategy), STRATEGIES, "--strategy", "ddp, zero1|zero2|zero3 = DeepSpeed, fsdp")
    if offload not in OFFLOADS:
        raise did_you_mean(str(offload), OFFLOADS, "--offload value")
    notes: list[str] = []
    if offload != "none" and s == "ddp":
        raise VramplanError("--offload needs a sharding engine: --strategy zero1|zero2|zero3 or fsdp (not ddp)")
    if offload == "params" and s in ("zero1", "zero2"):
        raise VramplanError(
            f"--offload params needs --strategy zero3 or fsdp: {s} keeps every parameter on every GPU "
            "(DeepSpeed offload_param is stage 3 only); use --offload optimizer"
        )
    if offload == "optimizer" and s.startswith("fsdp"):
        raise VramplanError(
            "FSDP's CPUOffload moves parameters, gradients and optimizer states together: "
            "use --offload params (or --strategy zero3 --offload optimizer)"
        )
    if s == "fsdp-hybrid" and gpus > gpus_per_node and gpus % gpus_per_node:
        raise VramplanError(
            f"--strategy fsdp-hybrid shards within nodes of --gpus-per-node {gpus_per_node}: "
            f"--gpus {gpus} is not a multiple of it"
        )
    sharded_weights = s in ("zero3", "fsdp", "fsdp-hybrid")
    if sharded_weights and t.quant == "int8":
        raise VramplanError(
            f"--quant int8 weights cannot be sharded by {s} (bitsandbytes' quant_storage exists for 4-bit "
            "only): use --quant nf4, or --strategy ddp|zero1|zero2"
        )
    if gpus == 1 and s != "ddp":
        if s.startswith("zero"):
            notes.append(
                f"--strategy {s} with --gpus 1 partitions nothing; DeepSpeed still adds fp32 master weights "
                "and buckets: planned as DeepSpeed on one GPU"
            )
        else:
            notes.append(f"--strategy {s} with --gpus 1 shards nothing (FSDP switches to NO_SHARD): one-GPU plan")
    elif s == "fsdp-hybrid" and gpus <= gpus_per_node:
        notes.append(f"fsdp-hybrid on one node of {gpus_per_node} GPUs shards like fsdp")
    if s != "ddp" and t.checkpoint is not None:
        notes.append(
            f"{s} with a pre-quantized {t.checkpoint.label} base: its engine states planned as for the model "
            "in the load dtype (the quantized storage is counted on one GPU only)"
        )
    if sharded_weights and t.quant in ("nf4", "fp4"):
        store = "float16" if t.compute_dtype == "fp16" else "bfloat16"
        notes.append(
            f"{s} shards 4-bit weights only with bnb_4bit_quant_storage={store} (equal to torch_dtype and "
            "the engine's mixed precision); planned with it set"
        )
    return ParallelSpec(
        strategy=s,  # type: ignore[arg-type]
        gpus=int(gpus),
        gpus_per_node=int(gpus_per_node),
        offload=offload,  # type: ignore[arg-type]
        notes=tuple(notes),
        buckets=buckets or ZeroBuckets(),
        reshard_after_forward=bool(reshard_after_forward),
    )
