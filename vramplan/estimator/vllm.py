"""vLLM start-up budget: how much memory its KV pool gets on one GPU, and what else the process holds.

At start-up vLLM loads the weights (+ preallocated LoRA slots), runs one profiling forward of
max_num_batched_tokens tokens and a sampler pass, and gives the KV cache what is left of its budget:

    available_kv = total × gpu_memory_utilization − (weights + activation peak + non-torch increase)

(vllm/v1/worker/gpu_worker.py `determine_available_memory`; vllm/utils/mem_utils.py `memory_profiling`),
`total` being what CUDA reports (torch.cuda.mem_get_info, `GpuProfile.cuda_visible_bytes`), not NVML's figure.
Releases differ in what else comes off (`--vllm-version`, spec/vllm_versions.py): up to 0.20 the CUDA graphs
are captured after the pool and sit on top of the budget; from 0.21 their estimated size is subtracted; 0.34
(current) sizes an extensible pool after warm-up and capture from the memory actually free (`pool_bytes`).
With tensor / pipeline parallelism every figure is one rank's (`rank_model`, served_weights.py), and the
pool's blocks are that rank's share of the KV heads. The pool is then cut into blocks (kvcache.py).
Worked check (tests): Llama-3-8B on an H100 (79.22 GiB, 0.9): 71.29 − 14.96 − 1.79 − 1.26 = 53.29 GiB
available, as vLLM 0.6.4 logged it (vllm-project/vllm#10511).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

from vramplan.estimator.kvcache import vllm_max_model_len, vllm_paged_kv
from vramplan.estimator.serve import (
    adapter_elem_bytes,
    adapter_params,
    dequant_bytes,
    layer_peak_elems_per_token,
    serve_weight_bytes,
)
from vramplan.serve_breakdown import ServeComponents, ServePhase, VllmPool
from vramplan.spec.gpu import capability_tuple
from vramplan.spec.vllm_versions import vllm_release
from vramplan.units import MIB

if TYPE_CHECKING:
    from vramplan.spec import ModelSpec
    from vramplan.spec.gpu import GpuProfile
    from vramplan.spec.serve import ServeSpec

# Non-torch memory that vLLM's profiling counts (cuBLAS / attention-backend workspaces; NCCL and the custom
# all-reduce buffers with TP > 1). Logged: 0.16 GiB (H100, V1, vllm-project/vllm#12126), 0.20 GiB (3090, V1,
# #14447), 0.35 GiB (3090, V0 0.6.4, #10517), 1.79 GiB (H100, V0 0.6.4, #10511), 0.25 GiB (2 × 4090, V0,
# #13061). The V0 figures include the CUDA graph pool of the previous profile and backend buffers that V1 no
# longer counts; per engine and GPU class, the largest one-GPU figure seen:
VLLM_NON_TORCH_BYTES = 256 * MIB  # V1, before Hopper
VLLM_NON_TORCH_HOPPER_BYTES = 512 * MIB  # V1 on compute capability >= 9.0 (FlashInfer / FA3 workspaces)
VLLM_V0_NON_TORCH_BYTES = 384 * MIB  # V0 (0.6.x), before Hopper: #10517's 0.35 GiB
VLLM_V0_NON_TORCH_HOPPER_BYTES = 1843 * MIB  # V0 on Hopper: #10511's 1.79 GiB
VLLM_TP_NON_TORCH_BYTES = 256 * MIB  # NCCL communicators + custom all-reduce (2 × 8 MiB IPC buffers), per rank
# Hopper and later with several GPUs: NCCL's NVLink SHARP buffers. `vllm serve meta-llama/Meta-Llama-3-8B -tp 2`
# on H100s logged non_torch_memory 3.58 GiB against 1.79 GiB at TP 1 (vLLM 0.6.4, PR #10511): +1.79 GiB.
VLLM_TP_NON_TORCH_HOPPER_BYTES = 1833 * MIB
# CUDA graphs: one graph per capture size and piecewise per decoder layer (+1 for the rest), on one memory
# pool that also keeps the largest size's activations. The 256 KiB a piece is an assumption sized to what
# vLLM logs for 1–8B models on one GPU, not fitted to one log: 0.13 GiB for a 1 GiB model
# (generative-computing/mellea#416), "CUDA graph pool memory: 0.22 GiB (actual), 0.42 GiB (estimated)" for a
# model of 2.8 GiB (vllm-project/vllm#57047); Llama-3-8B at 256 sequences gets 0.46 GiB here.
CUDA_GRAPH_PIECE_BYTES = 256 * 1024
PUNICA_SLICES = 3  # qkv_proj: the most LoRA slices of one layer (column_parallel_linear.py, @4f54575c)


def available_kv_bytes(total_bytes: int, gpu_memory_utilization: float, non_kv_bytes: int) -> int:
    """total × gpu_memory_utilization − non-KV memory (weights, activation peak, non-torch increase).

    Source: vllm/v1/worker/gpu_worker.py determine_available_memory (`requested_memory -
    profile_result.non_kv_cache_memory`), vllm-project/vllm@35d5cda1.
    """
    return int(total_bytes * gpu_memory_utilization) - non_kv_bytes


def rank_model(m: ModelSpec, s: ServeSpec) -> ModelSpec:
    """The slice of the model one GPU runs: heads and the MLP width split by tensor parallelism, KV heads
    max(1, kv_heads // tp) (vLLM replicates them below tp), ⌈layers / pp⌉ decoder layers per stage."""
    tp, pp = s.tensor_parallel_size, s.pipeline_parallel_size
    if tp == 1 and pp == 1:
        return m
    layers = -(-m.num_hidden_layers // pp)
    config = m.config
    if m.model_type == "gemma4_text":  # the global layers' own key heads split too
        from vramplan.spec.gemma4 import tensor_parallel_config

        config = tensor_parallel_config(m.config, tp)
    return replace(
        m,
        config=config,
        num_attention_heads=max(1, m.num_attention_heads // tp),
        num_key_value_heads=max(1, m.num_key_value_heads // tp),
        intermediate_size=-(-m.intermediate_size // tp),
        num_hidden_layers=layers,
        layer_types=m.layer_types[:layers],
    )


def vllm_forward_bytes(m: ModelSpec, s: ServeSpec) -> int:
    """The profile run's forward of max_num_batched_tokens tokens on one rank (`m` = rank_model): the layer
    peak (serve.py), a dequantized bnb weight, punica's fp32 LoRA shrink buffer (slices × tokens × rank)."""
    n = s.max_num_batched_tokens
    lora = PUNICA_SLICES * n * s.max_lora_rank * 4 if s.lora_resident else 0
    return n * layer_peak_elems_per_token(m) * s.dtype_bytes + dequant_bytes(m, s, fused=True) + lora


# V0's profile samples with top_p=0.99, top_k=vocab−1 (worker/model_runner.py profile_run), so its sampler
# takes the sort path of model_executor/layers/sampler.py `_apply_top_k_top_p` (vLLM 0.6.4): fp32 logits,
# sorted values, int64 indices, softmax, cumsum, int64 inverse indices, the gathered result and the final
# probabilities: 4 + 4 + 8 + 4 + 4 + 8 + 4 + 4 bytes per row element. Check: Llama-3-8B on an H100 at 8,192
# tokens, 256 sequences, logged "PyTorch activation peak memory 1.26GiB" at TP 1 and TP 2 alike (PR #10511):
# 256 · 128256 · 40 B + the hidden states 8192 · 4096 · 2 B = 1.29 GiB, above the forward's 0.84 GiB.
V0_SAMPLER_BYTES_PER_LOGIT = 40


def vllm_sampler_bytes(m: ModelSpec, s: ServeSpec) -> int:
    """The profile's sampler pass on min(max_num_seqs, max_num_batched_tokens) rows, with the forward's
    hidden states alive. V1: logits in the model dtype (gathered to the full vocabulary), their fp32 copy and
    the probabilities (gpu_model_runner.py `_dummy_sampler_run`; 0.34's second pass with every sampling
    option is not modelled apart); V0: the top-k/top-p sort path (V0_SAMPLER_BYTES_PER_LOGIT)."""
    rows = min(s.max_num_seqs, s.max_num_batched_tokens)
    hidden = s.max_num_batched_tokens * m.hidden_size * s.dtype_bytes
    if vllm_release(s.vllm_version).engine == "v0":
        return rows * m.vocab_size * V0_SAMPLER_BYTES_PER_LOGIT + hidden
    return rows * m.vocab_size * (s.dtype_bytes + 4 + 4) + hidden


def vllm_non_torch_bytes(s: ServeSpec, gpu: GpuProfile) -> int:
    """Non-torch memory vLLM's profiling counts, by engine and GPU class, + the collectives with TP > 1."""
    cc = capability_tuple(gpu.compute_capability)
    hopper = cc is None or cc >= (9, 0)  # a local GPU whose driver did not say: the larger figure
    if vllm_release(s.vllm_version).engine == "v0":
        base = VLLM_V0_NON_TORCH_HOPPER_BYTES if hopper else VLLM_V0_NON_TORCH_BYTES
    else:
        base = VLLM_NON_TORCH_HOPPER_BYTES if hopper else VLLM_NON_TORCH_BYTES
    if s.tensor_parallel_size * s.pipeline_parallel_size == 1:
        return base
    return base + (VLLM_TP_NON_TORCH_HOPPER_BYTES if hopper else VLLM_TP_NON_TORCH_BYTES)


def cuda_graph_capture_sizes(s: ServeSpec, gpu: GpuProfile) -> tuple[int, ...]:
    """Decode batch sizes vLLM captures: [1, 2, 4] + 8..248 step 8 + 256..max step 16, max =
    min(2 × max_num_seqs, 512 (1024 on compute capability 10.x), max_num_batched_tokens).
    Source: vllm 0.34.0 config/vllm.py `_set_cudagraph_sizes`."""
    if s.enforce_eager:
        return ()
    ceiling = 1024 if gpu.compute_capability.startswith("10.") else 512
    top = min(2 * s.max_num_seqs, ceiling, s.max_num_batched_tokens)
    sizes = [x for x in (1, 2, 4) if x <= top] + list(range(8, min(top, 255) + 1, 8))
    return tuple(sizes + list(range(256, top + 1, 16)))


def vllm_cuda_graph_bytes(m: ModelSpec, s: ServeSpec, gpu: GpuProfile) -> int:
    """The CUDA graph pool: pieces (sizes × (layers + 1)) × CUDA_GRAPH_PIECE_BYTES + the activations of the
    largest captured batch (`m` = rank_model); 0 with --enforce-eager."""
    sizes = cuda_graph_capture_sizes(s, gpu)
    if not sizes:
        return 0
    pieces = len(sizes) * (m.num_hidden_layers + 1)
    return pieces * CUDA_GRAPH_PIECE_BYTES + max(sizes) * layer_peak_elems_per_token(m) * s.dtype_bytes


def non_kv_bytes(m: ModelSpec, s: ServeSpec, gpu: GpuProfile) -> int:
    """What vLLM's budget holds besides the KV cache: weights and their quantization constants, LoRA slots,
    the profile's activation peak (forward or sampler), non-torch buffers (`determine_available_memory`)."""
    weights, quant_state = serve_weight_bytes(m, s)
    adapters = adapter_params(m, s) * adapter_elem_bytes(s)
    rm = rank_model(m, s)
    act = max(vllm_forward_bytes(rm, s), vllm_sampler_bytes(rm, s))
    return weights + quant_state + adapters + act + vllm_non_torch_bytes(s, gpu)


def pool_bytes(s: ServeSpec, gpu: GpuProfile, non_kv: int, activation: int, graphs: int) -> int:
    """The KV cache's share, per release (spec/vllm_versions.py): requested − non-KV (0.6, 0.10), − the
    captured graphs too (0.21), or with the extensible cache (0.34): min(requested − used, free − margin) −
    the activation peak, where used = non-KV − activation + graphs, free = total − CUDA context − used and
    margin = max(1 GiB, 0.75 × activation) (extensible_kv_cache.py `measure_kv_cache_bytes`)."""
    total, release = gpu.cuda_visible_bytes, vllm_release(s.vllm_version)
    if not release.graphs_in_budget:
        return available_kv_bytes(total, s.gpu_memory_utilization, non_kv)
    requested = math.ceil(total * s.gpu_memory_utilization)  # v1/worker/utils.py request_memory
    if not release.extensible_kv_cache:
        return requested - non_kv - graphs
    used = non_kv - activation + graphs
    free = total - gpu.overheads.cuda_context_bytes - used
    margin = max(release.margin_floor_bytes, int(activation * release.margin_fraction))
    return min(requested - used, free - margin) - activation


def highest_utilization(total: int, cuda_context_bytes: int) -> float:
    """The largest gpu_memory_utilization (2 decimals) vLLM accepts: total × it fits beside the CUDA context
    (vLLM's start-up check that free memory >= the requested budget, gpu_worker.py)."""
    return math.floor((total - cuda_context_bytes) / total * 100) / 100


def available_for(m: ModelSpec, s: ServeSpec, gpu: GpuProfile) -> int:
    """The KV pool of `s` from scratch (to re-estimate a suggested change)."""
    rm = rank_model(m, s)
    act = max(vllm_forward_bytes(rm, s), vllm_sampler_bytes(rm, s))
    return pool_bytes(s, gpu, non_kv_bytes(m, s, gpu), act, vllm_cuda_graph_bytes(rm, s, gpu))


def _problems(m: ModelSpec, s: ServeSpec, gpu: GpuProfile, pool: VllmPool) -> tuple[str, ...]:
    """Why vLLM would refuse to start, in vLLM's own terms, each with the changes that remove it: every
    change offered is re-estimated here and offered only when it works, one direction per knob, never a
    value already set."""
    out = []
    total, context = gpu.cuda_visible_bytes, gpu.overheads.cuda_context_bytes
    top = highest_utilization(total, context)
    extensible = vllm_release(s.vllm_version).extensible_kv_cache  # the budget is only a cap there
    if total - context < pool.requested_bytes and not extensible:
        out.append(
            f"free memory after the CUDA context ({total - context:,} B) is below "
            f"gpu_memory_utilization × total ({pool.requested_bytes:,} B): vLLM refuses to start; "
            f"lower --gpu-memory-utilization to {top:.2f}"
        )
    if pool.available_kv_bytes <= 0:
        candidates = []  # (setting, applies here): each is re-estimated and offered only when it works
        if s.gpu_memory_utilization < top and not extensible:
            candidates.append((f"raise --gpu-memory-utilization to {top:.2f}", {"gpu_memory_utilization": top}))
        if s.quant not in ("nf4", "fp4") and s.checkpoint is None:
            candidates.append(("use --quant nf4", {"quant": "nf4", "double_quant": True}))
        if s.tensor_parallel_size == 1 and m.num_attention_heads % 2 == 0:
            candidates.append(("spread it over two GPUs (--tensor-parallel-size 2)", {"tensor_parallel_size": 2}))
        fixes = [text for text, change in candidates if available_for(m, replace(s, **change), gpu) > 0]
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
    """The steady state of one GPU of a vLLM server (one tensor-parallel rank of the largest pipeline stage):
    resident weights, the KV pool sized by the release's budget, the activation peak (reused each step),
    non-torch buffers, CUDA graphs; the pool's tokens and concurrency; and why vLLM would refuse to start."""
    total = gpu.cuda_visible_bytes
    rm = rank_model(m, s)
    fwd, sampler = vllm_forward_bytes(rm, s), vllm_sampler_bytes(rm, s)
    act = max(fwd, sampler)
    non_torch = vllm_non_torch_bytes(s, gpu)
    graphs = vllm_cuda_graph_bytes(rm, s, gpu)
    non_kv = resident.total + act + non_torch
    avail = pool_bytes(s, gpu, non_kv, act, graphs)
    args = (max(avail, 0), s.kv_elem_bytes, s.max_model_len, s.max_num_batched_tokens, s.block_size)
    kv = vllm_paged_kv(rm, *args)
    pool = VllmPool(
        requested_bytes=math.ceil(total * s.gpu_memory_utilization),
        non_kv_bytes=non_kv,
        forward_bytes=fwd,
        sampler_bytes=sampler,
        available_kv_bytes=avail,
        kv=kv,
        max_model_len=s.max_model_len,
        max_model_len_fit=vllm_max_model_len(rm, *args),
        total_bytes=total,
        cuda_graph_bytes=graphs,
    )
    comps = replace(resident, kv_cache=kv.pool_bytes, temporaries=act, non_torch=non_torch, cuda_graphs=graphs)
    moment = "sampler" if sampler > fwd else "forward of a full token budget"
    return ServePhase("serving", comps, moment), pool, _problems(m, s, gpu, pool)
