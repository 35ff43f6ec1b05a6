"""One GPU's share of a data-parallel run: `ParallelPlan`, the result of `estimator.distributed.shard`.

Apart from the engines' rules so that a one-GPU command without an engine (`--gpus 1 --strategy ddp`, the
defaults) gets its plan without loading them (`ParallelPlan.one_gpu`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from vramplan.breakdown import Breakdown
    from vramplan.spec.parallel import ParallelSpec


class ParallelPlan(NamedTuple):
    """One GPU of a data-parallel run: its Breakdown (verdict per GPU), engine buffers in it, host RAM."""

    spec: ParallelSpec
    breakdown: Breakdown  # one rank's GPU
    single: Breakdown  # the one-GPU estimate it was derived from
    buffers: tuple[tuple[str, int], ...]  # engine-added bytes at the peak phase, by name (in `temporaries`)
    host_offload_bytes_per_rank: int
    master_weights_bytes: int = 0  # ZeRO's fp32 master copy on this GPU (inside `optimizer_states`)

    @property
    def per_gpu_bytes(self) -> int:
        return self.breakdown.device_bytes

    @property
    def total_bytes(self) -> int:
        return self.per_gpu_bytes * self.spec.gpus

    @property
    def host_offload_bytes(self) -> int:
        """Host RAM per node held by offloaded states (steady state; DeepSpeed's estimator adds 50 %)."""
        return self.host_offload_bytes_per_rank * self.spec.ranks_per_node

    @classmethod
    def one_gpu(cls, p: ParallelSpec, single: Breakdown) -> ParallelPlan:
        """The plan of one GPU without an engine (`p.plain`): the one-GPU Breakdown as it is (DDP does not wrap
        a single rank), the plan `distributed.shard` derives for it (tests/estimator/test_distributed.py)."""
        return cls(p, single, single, (), 0)


__all__ = ["ParallelPlan"]
