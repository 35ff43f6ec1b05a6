"""How each vLLM release sizes its KV cache at start-up (`--vllm-version`), so a log of any of them can be
reproduced. Read from the code of each release (vllm-project/vllm):

- "0.6" (V0 engine, 0.6.x; `worker/worker.py determine_num_available_blocks`, `utils.memory_profiling`):
  budget = total × gpu_memory_utilization − (weights + the profile run's torch peak + non-torch); the profile
  run is max_num_batched_tokens = max(max_model_len, 2048) without chunked prefill (on by default only past
  32,768 tokens, then 2048); CUDA graphs are captured after the pool and sit on top of the budget.
- "0.10" (V1 engine, 0.8–0.20; `v1/worker/gpu_worker.py determine_available_memory`): the same budget, with
  chunked prefill always on (max_num_batched_tokens 2048, or 8192 on >= 70 GiB GPUs but the A100); graphs
  on top.
- "0.21" (0.21–0.33): the CUDA graph memory is estimated by a throwaway capture and subtracted from the budget
  (`VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS`, default on "since v0.21.0" as gpu_worker.py says); the
  default gpu_memory_utilization is CacheConfig.DEFAULT_GPU_MEMORY_UTILIZATION = 0.92 as in 0.34 (the release
  that moved it from 0.9 is not pinned here).
- "0.34" (0.34.0, the current release): the extensible KV cache is on by default on CUDA
  (`CacheConfig.enable_extensible_kv_cache`): gpu_memory_utilization defaults to 1.0 and the pool is sized
  after warm-up and graph capture from the memory actually free, keeping free the activation peak plus a
  margin of max(1 GiB, 0.75 × peak) (`v1/worker/extensible_kv_cache.py measure_kv_cache_bytes`,
  KV_CACHE_MARGIN_FLOOR_BYTES, KV_CACHE_MARGIN_FRACTION).
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True, slots=True)
class VllmRelease:
    version: str
    engine: str  # "v0" | "v1"
    default_gpu_memory_utilization: float
    graphs_in_budget: bool  # the CUDA graphs' memory is taken from the budget before the pool is sized
    extensible_kv_cache: bool
    act_order_index: bool  # GPTQ act-order keeps g_idx + its sort permutation (gptq_marlin.py)
    margin_floor_bytes: int = 0
    margin_fraction: float = 0.0


VLLM_RELEASES: dict[str, VllmRelease] = {
    "0.6": VllmRelease("0.6", "v0", 0.9, graphs_in_budget=False, extensible_kv_cache=False, act_order_index=True),
    "0.10": VllmRelease("0.10", "v1", 0.9, graphs_in_budget=False, extensible_kv_cache=False, act_order_index=True),
    "0.21": VllmRelease("0.21", "v1", 0.92, graphs_in_budget=True, extensible_kv_cache=False, act_order_index=True),
    "0.34": VllmRelease(
        "0.34",
        "v1",
        1.0,
        graphs_in_budget=True,
        extensible_kv_cache=True,
        act_order_index=False,
        margin_floor_bytes=1 * GIB,
        margin_fraction=0.75,
    ),
}
VLLM_VERSIONS: tuple[str, ...] = tuple(VLLM_RELEASES)
CURRENT_VLLM = "0.34"


def vllm_release(version: str) -> VllmRelease:
    """'0.8.5' -> the behaviour of the release line it belongs to ("0.10" covers 0.8–0.20)."""
    parts = version.lower().removeprefix("v").split(".")
    try:
        minor = int(parts[1]) if parts[0] == "0" and len(parts) > 1 else -1
    except ValueError:
        minor = -1
    if minor < 0:
        from vramplan.errors import VramplanError

        raise VramplanError(
            f"--vllm-version {version!r} is not a 0.x release; use one of {', '.join(VLLM_VERSIONS)} (or e.g. 0.8.5)"
        )
    if minor <= 7:
        return VLLM_RELEASES["0.6"]
    if minor <= 20:
        return VLLM_RELEASES["0.10"]
    if minor <= 33:
        return VLLM_RELEASES["0.21"]
    return VLLM_RELEASES["0.34"]
