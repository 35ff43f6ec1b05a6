"""ServeBreakdown: the result of `estimate_serve`, apart from training's `Breakdown`.

Serving has its own closed set of components (a KV cache, no gradients or optimizer states) and its own
phases (prefill / decode for transformers generate, one steady state for vLLM), so it does not widen
breakdown.py's `Components`; the names it shares with it (weights, quant_state, adapters, logits,
temporaries) mean the same thing, so JSON consumers read both the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Literal

from vramplan.breakdown import PeakAccounting

if TYPE_CHECKING:
    from vramplan.spec.overheads import Overheads
    from vramplan.spec.serve import ServeSpec

ServeVerdict = Literal["fits", "tight", "oom"]

SERVE_COMPONENT_LABELS: dict[str, str] = {
    "weights": "weights",
    "quant_state": "quantization constants",
    "adapters": "LoRA adapters",
    "kv_cache": "KV cache",
    "logits": "logits / sampling",
    "temporaries": "temporaries (workspace)",
    "non_torch": "non-torch buffers (vLLM)",
    "cuda_graphs": "CUDA graphs (vLLM)",
}


@dataclass(frozen=True, slots=True)
class ServeComponents:
    """Bytes per component at one instant; `non_torch` and `cuda_graphs` are not torch tensors (vLLM only)."""

    weights: int = 0
    quant_state: int = 0
    adapters: int = 0
    kv_cache: int = 0
    logits: int = 0
    temporaries: int = 0
    non_torch: int = 0
    cuda_graphs: int = 0

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


SERVE_COMPONENTS: tuple[str, ...] = tuple(f.name for f in fields(ServeComponents))


@dataclass(frozen=True, slots=True)
class ServePhase:
    phase: Literal["prefill", "decode", "serving"]
    components: ServeComponents
    moment: str = ""  # the instant the phase's usage is taken at (as `PhaseUsage.moment`)

    @property
    def total(self) -> int:
        return self.components.total


@dataclass(frozen=True, slots=True)
class PagedKV:
    """vLLM's KV pool for `available_bytes`: what it logs at start-up.

    `tokens` is "GPU KV cache size: N tokens"; `max_concurrency` is "Maximum concurrency for
    {max_model_len} tokens per request: X.XXx"; `pool_bytes` the KV tensors allocated.
    """

    page_bytes: int
    group_size: int  # layers sharing one pool tensor (all layers when uniform)
    num_groups: int
    num_blocks: int
    block_size: int
    blocks_per_request: int  # blocks one max_model_len request needs, summed over groups
    request_bytes: int  # check_enough_kv_cache_memory's `needed_memory` for one max_model_len request

    @property
    def tokens(self) -> int:
        return self.num_blocks // self.num_groups * self.block_size

    @property
    def pool_bytes(self) -> int:
        return self.group_size * self.page_bytes * self.num_blocks

    @property
    def max_concurrency(self) -> float:
        return self.num_blocks / self.blocks_per_request


@dataclass(frozen=True, slots=True)
class VllmPool:
    """vLLM's start-up arithmetic: the memory budget and the KV pool it leaves."""

    requested_bytes: int  # total × gpu_memory_utilization
    non_kv_bytes: int  # weights + LoRA slots + profiled activation peak + non-torch increase
    forward_bytes: int  # profile run: forward of max_num_batched_tokens
    sampler_bytes: int  # profile run: sampler on max_num_seqs rows
    available_kv_bytes: int  # requested − non_kv ("Available KV cache memory")
    kv: PagedKV
    max_model_len: int
    max_model_len_fit: int  # largest max_model_len one request of which fits the pool
    total_bytes: int = 0  # the CUDA-visible total vLLM budgets from (torch.cuda.mem_get_info)
    cuda_graph_bytes: int = 0  # the captured graphs' pool (in the budget from vLLM 0.21 on)


@dataclass(frozen=True, slots=True)
class ServeBreakdown(PeakAccounting):
    """Peak memory of serving, where it goes and whether it fits; for vLLM also the KV pool it allocates.

    Totals as in `Breakdown`: `peak_bytes` tensors (+ vLLM's non-torch buffers and CUDA graphs),
    `reserved_bytes` + the caching allocator's slack, `device_bytes` + the CUDA context (nvidia-smi).
    """

    model: str
    engine: Literal["vllm", "hf"]
    phases: tuple[ServePhase, ...]  # hf: prefill, decode; vllm: serving
    params_total: int
    adapter_params: int
    allocator_overhead_bytes: int
    serve: ServeSpec
    gpu: str | None
    gpu_bytes: int | None
    overheads: Overheads
    vllm: VllmPool | None = None
    problems: tuple[str, ...] = ()  # why vLLM would refuse to start or run out of memory

    @property
    def verdict(self) -> ServeVerdict | None:
        """`oom` above the GPU's memory or when vLLM would refuse to start; `tight` within the error band."""
        return self._verdict(refused=bool(self.problems))
