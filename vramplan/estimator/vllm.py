"""vLLM (v1 engine) start-up budget: how much memory its KV pool gets, and what else the process holds.

At start-up vLLM loads the weights (+ preallocated LoRA slots), runs one profiling forward of
max_num_batched_tokens tokens and a sampler pass, and gives the KV cache what is left of its budget:

    available_kv = total × gpu_memory_utilization − (weights + activation peak + non-torch increase)

(vllm/v1/worker/gpu_worker.py `determine_available_memory`, vllm-project/vllm@35d5cda1;
vllm/utils/mem_utils.py `memory_profiling`, @a6d5c390). The CUDA context exists before vLLM's baseline
snapshot, and CUDA graphs are captured after the KV cache is allocated (`compile_or_warm_up_model`;
`VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS` defaults to 0), so both sit on top of the budget: the process
holds about context + total × gpu_memory_utilization + graphs. The pool is then cut into blocks (kvcache.py).
Worked check (tests): Llama-3-8B on an H100 (79.22 GiB, 0.9): 71.29 − 14.96 − 1.79 − 1.26 = 53.29 GiB
available, as vLLM logged it (vllm-project/vllm#10511).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

from vramplan.estimator.kvcache import vllm_max_model_len, vllm_paged_kv
from vramplan.estimator.overhead import MIB
from vramplan.estimator.serve import (
    adapter_elem_bytes,
    adapter_params,
    dequant_bytes,
    layer_peak_elems_per_token,
    serve_weight_bytes,
)
from vramplan.serve_breakdown import ServeComponents, ServePhase, VllmPool

if TYPE_CHECKING:
    from vramplan.spec import ModelSpec
    from vramplan.spec.gpu import GpuProfile
    from vramplan.spec.serve import ServeSpec

# Non-torch memory added during profiling (attention-backend buffers; NCCL with TP > 1). One-GPU start-up
# logs report 0.16 GiB (H100, vllm-project/vllm#12126), 0.20 GiB (3090, #14447), 0.35 GiB (3090, #10517).
VLLM_NON_TORCH_BYTES = 256 * MIB
# CUDA graphs of the decode batch sizes (up to 512): vLLM logs "Graph capturing finished in N secs, took
# X GiB"; 0.5–8B models on one GPU show 0.1–0.5 GiB (0.13 GiB for a 1 GiB model in
# generative-computing/mellea#416). 0 with --enforce-eager.
VLLM_CUDA_GRAPH_BYTES = 256 * MIB
PUNICA_SLICES = 3  # qkv_proj: the most LoRA slices of one layer (column_parallel_linear.py, @4f54575c)


def available_kv_bytes(total_bytes: int, gpu_memory_utilization: float, non_kv_bytes: int) -> int:
    """total × gpu_memory_utilization − non-KV memory (weights, activation peak, non-torch increase).

    Source: vllm/v1/worker/gpu_worker.py determine_available_memory (`requested_memory -
    profile_result.non_kv_cache_memory`), vllm-project/vllm@35d5cda1.
    """
    return int(total_bytes * gpu_memory_utilization) - non_kv_bytes


def vllm_forward_bytes(m: ModelSpec, s: ServeSpec) -> int:
    """The profile run's forward of max_num_batched_tokens tokens: the layer peak (serve.py), a dequantized
    bnb weight, punica's fp32 LoRA shrink buffer (slices × tokens × rank, `_mcp_apply`)."""
    n = s.max_num_batched_tokens
    lora = PUNICA_SLICES * n * s.max_lora_rank * 4 if s.lora_resident else 0
    return n * layer_peak_elems_per_token(m) * s.dtype_bytes + dequant_bytes(m, s, fused=True) + lora


def vllm_sampler_bytes(m: ModelSpec, s: ServeSpec) -> int:
    """The profile's sampler pass on min(max_num_seqs, max_num_batched_tokens) rows: logits in the model
    dtype, their fp32 copy and the probabilities (the profile skips top-k / top-p and logprobs:
    gpu_model_runner.py `_dummy_sampler_run`), with the forward's hidden states still alive."""
    rows = min(s.max_num_seqs, s.max_num_batched_tokens)
    hidden = s.max_num_batched_tokens * m.hidden_size * s.dtype_bytes
    return rows * m.vocab_size * (s.dtype_bytes + 4 + 4) + hidden


def non_kv_bytes(m: ModelSpec, s: ServeSpec) -> int:
    """What vLLM's budget holds besides the KV cache: weights and their quantization constants, LoRA slots,
    the profile's activation peak (forward or sampler), non-torch buffers (`determine_available_memory`)."""
    weights, quant_state = serve_weight_bytes(m, s)
    adapters = adapter_params(m, s) * adapter_elem_bytes(s)
    return (
        weights
        + quant_state
        + adapters
        + max(vllm_forward_bytes(m, s), vllm_sampler_bytes(m, s))
        + VLLM_NON_TORCH_BYTES
    )


def highest_utilization(total: int, cuda_context_bytes: int) -> float:
    """The largest gpu_memory_utilization (2 decimals) vLLM accepts: total × it fits beside the CUDA context
    (vLLM's start-up check that free memory >= the requested budget, gpu_worker.py)."""
    return math.floor((total - cuda_context_bytes) / total * 100) / 100


def _problems(m: ModelSpec, s: ServeSpec, total: int, pool: VllmPool, cuda_context_bytes: int) -> tuple[str, ...]:
    """Why vLLM would refuse to start, in vLLM's own terms, each with the changes that remove it: every
    change offered is re-estimated here and offered only when it works, one direction per knob, never a
    value already set."""
    out = []
    top = highest_utilization(total, cuda_context_bytes)
    if total - cuda_context_bytes < pool.requested_bytes:
        out.append(
            f"free memory after the CUDA context ({total - cuda_context_bytes:,} B) is below "
            f"gpu_memory_utilization × total ({pool.requested_bytes:,} B): vLLM refuses to start; "
            f"lower --gpu-memory-utilization to {top:.2f}"
        )
    if pool.available_kv_bytes <= 0:
        util = min(s.gpu_memory_utilization, top)
        fixes = []
        if s.gpu_memory_utilization < top and available_kv_bytes(total, top, pool.non_kv_bytes) > 0:
            fixes.append(f"raise --gpu-memory-utilization to {top:.2f}")
        if s.quant not in ("nf4", "fp4"):
            nf4 = replace(s, quant="nf4", double_quant=True)
            if available_kv_bytes(total, util, non_kv_bytes(m, nf4)) > 0:
                fixes.append("use --quant nf4")
        way_out = " or ".join(fixes) if fixes else "no single setting frees enough: use a GPU with more memory"
        out.append(
            "no memory left for the KV cache after weights and activations (vLLM: 'No available memory for "
            f"the cache blocks'); {way_out}"
        )
    elif pool.kv.request_bytes > pool.available_kv_bytes:
        fit = (
            f"largest --max-model-len that fits: {pool.max_model_len_fit:,}"
            if pool.max_model_len_fit > 0
            else "not even one KV block fits: raise --gpu-memory-utilization or use a larger GPU"
        )
        out.append(
            f"one {s.max_model_len:,}-token request needs {pool.kv.request_bytes:,} B of KV cache, the pool "
            f"has {pool.available_kv_bytes:,} B: vLLM refuses to start; {fit}"
        )
    return tuple(out)


def vllm_serving(
    m: ModelSpec, s: ServeSpec, gpu: GpuProfile, resident: ServeComponents
) -> tuple[ServePhase, VllmPool, tuple[str, ...]]:
    """The steady state of a vLLM server: resident weights, the KV pool sized by the budget, the activation
    peak (reused each step), non-torch buffers, CUDA graphs; the pool's tokens and concurrency; and why vLLM
    would refuse to start (the CUDA context is `gpu.overheads`')."""
    total = gpu.memory_bytes
    fwd, sampler = vllm_forward_bytes(m, s), vllm_sampler_bytes(m, s)
    act = max(fwd, sampler)
    non_kv = resident.total + act + VLLM_NON_TORCH_BYTES
    avail = available_kv_bytes(total, s.gpu_memory_utilization, non_kv)
    args = (max(avail, 0), s.kv_elem_bytes, s.max_model_len, s.max_num_batched_tokens, s.block_size)
    kv = vllm_paged_kv(m, *args)
    pool = VllmPool(
        requested_bytes=int(total * s.gpu_memory_utilization),
        non_kv_bytes=non_kv,
        forward_bytes=fwd,
        sampler_bytes=sampler,
        available_kv_bytes=avail,
        kv=kv,
        max_model_len=s.max_model_len,
        max_model_len_fit=vllm_max_model_len(m, *args),
    )
    comps = replace(
        resident,
        kv_cache=kv.pool_bytes,
        temporaries=act,
        non_torch=VLLM_NON_TORCH_BYTES,
        cuda_graphs=0 if s.enforce_eager else VLLM_CUDA_GRAPH_BYTES,
    )
    moment = "sampler" if sampler > fwd else "forward of a full token budget"
    return ServePhase("serving", comps, moment), pool, _problems(m, s, total, pool, gpu.overheads.cuda_context_bytes)
