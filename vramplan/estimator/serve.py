"""Serving and generation: weights + KV cache + adapters, for transformers `generate()` and for vLLM.

`estimate_serve` is the entry point; the vLLM budget lives in vllm.py (it builds on the pieces here).

- `hf`: one `model.generate(batch × prompt_tokens, max_new_tokens=new_tokens)` with transformers 5.24.
  Two phases: prefill (the prompt's cache + the prefill's layer workspace) and the last decode step (the
  full cache + the cat copy of one layer). Logits: generate sets `logits_to_keep=1`, so the lm_head emits
  one row per sequence (generation/utils.py: `model_kwargs["logits_to_keep"] = 1`), copied to fp32
  (`outputs.logits[:, -1].to(copy=True, dtype=torch.float32)`), processed and softmaxed.
  Online LoRA: `PeftModel.from_pretrained(autocast_adapter_dtype=True)` upcasts bf16/fp16 adapters to fp32
  (peft 0.21.2 peft_model.py / tuners_utils.cast_adapter_dtype): 4 B per adapter parameter.
- `vllm`: see vllm.py. Both engines share the weight storage rules of weights.py.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from vramplan.errors import VramplanError, did_you_mean
from vramplan.estimator.kvcache import (
    FP8_BYTES,
    KV_CACHE_DTYPES,
    VLLM_BLOCK_SIZE,
    hf_cache_step_transient_bytes,
    hf_generate_cache_bytes,
)
from vramplan.estimator.overhead import (
    ALLOCATOR_OVERHEAD_RATIO,
    CUBLAS_WORKSPACE_BYTES,
    CUDA_CONTEXT_BYTES,
    allocator_overhead_bytes,
    error_band_for,
)
from vramplan.estimator.params import lora_params_per_linear
from vramplan.estimator.weights import bnb_4bit_bytes, bnb_int8_bytes
from vramplan.serve_breakdown import ServeBreakdown, ServeComponents, ServePhase
from vramplan.sources.profiles import GpuProfile
from vramplan.spec import DTYPE_BYTES, DTYPES, QUANTS, Dtype, ModelSpec, Quant, resolve_lora_target

Engine = Literal["vllm", "hf"]
ENGINES: tuple[str, ...] = ("vllm", "hf")
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm/config/lora.py MaxLoRARanks
VLLM_BLOCK_SIZES = (1, 8, 16, 32, 64, 128, 256)  # vllm/config/cache.py BlockSize
GIB = 1024**3
VLLM_ONLY = (
    "max_model_len",
    "max_num_seqs",
    "max_num_batched_tokens",
    "gpu_memory_utilization",
    "block_size",
)
HF_ONLY = ("batch", "prompt_tokens", "new_tokens")


@dataclass(frozen=True, slots=True)
class ServeSpec:
    """One serving setup, every setting resolved. Names follow vLLM's engine args and HF `generate`."""

    engine: Engine
    dtype: Dtype  # model dtype (vLLM --dtype, HF torch_dtype); the KV cache and vLLM's LoRA slots follow it
    quant: Quant  # bitsandbytes on the decoder linears (vLLM --quantization bitsandbytes: nf4)
    double_quant: bool
    kv_cache_dtype: str  # vLLM --kv-cache-dtype: auto (= dtype) | fp8 | fp8_e4m3 | fp8_e5m2
    enable_lora: bool
    max_loras: int  # adapters resident on the GPU (vLLM slots; PEFT adapters loaded)
    max_lora_rank: int
    lora_target: tuple[str, ...]
    merged_lora: bool  # adapter merged into the base weights: no adapter memory
    batch: int  # hf: sequences per generate() call
    prompt_tokens: int
    new_tokens: int  # hf: max_new_tokens
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    gpu_memory_utilization: float
    block_size: int
    enforce_eager: bool
    notes: tuple[str, ...] = ()

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def kv_elem_bytes(self) -> int:
        return self.dtype_bytes if self.kv_cache_dtype == "auto" else FP8_BYTES

    @property
    def lora_resident(self) -> bool:
        return self.enable_lora and not self.merged_lora

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _positive(value: Any, flag: str) -> int:
    if not isinstance(value, int) or value < 1:
        raise VramplanError(f"{flag} must be a positive integer, got {value!r}")
    return value


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def resolve_serve(
    m: ModelSpec,
    gpu: GpuProfile | None = None,
    *,
    engine: str = "vllm",
    dtype: str | None = None,
    quant: str | None = None,
    double_quant: bool = True,
    kv_cache_dtype: str = "auto",
    enable_lora: bool = False,
    max_loras: int | None = None,
    max_lora_rank: int | None = None,
    lora_target: str = "all-linear",
    merged_lora: bool = False,
    batch: int | None = None,
    prompt_tokens: int | None = None,
    new_tokens: int | None = None,
    max_model_len: int | None = None,
    max_num_seqs: int | None = None,
    max_num_batched_tokens: int | None = None,
    gpu_memory_utilization: float | None = None,
    block_size: int | None = None,
    enforce_eager: bool = False,
) -> ServeSpec:
    """Validate and fill in defaults. vLLM's are `vllm serve`'s (vllm/engine/arg_utils.py
    get_batch_defaults, vllm-project/vllm@99d7eb5d: max_num_batched_tokens 2048 and max_num_seqs 256, or
    8192 / 1024 on GPUs of >= 70 GiB that are not an A100; gpu_memory_utilization 0.9; max_model_len = the
    model's max_position_embeddings; LoRA max_loras 1, max_lora_rank 16). HF's: batch 1, 512 + 512 tokens.
    Flags of the other engine are an error rather than silently ignored.
    """
    notes: list[str] = []
    if engine not in ENGINES:
        raise did_you_mean(engine, ENGINES, "--engine value")
    engine_only = {
        "max_model_len": max_model_len,
        "max_num_seqs": max_num_seqs,
        "max_num_batched_tokens": max_num_batched_tokens,
        "gpu_memory_utilization": gpu_memory_utilization,
        "block_size": block_size,
        "batch": batch,
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
    }
    for name in VLLM_ONLY if engine == "hf" else HF_ONLY:
        if engine_only[name] is not None:
            other = "vllm" if engine == "hf" else "hf"
            raise VramplanError(f"--{name.replace('_', '-')} applies to --engine {other}, not --engine {engine}")
    if engine == "hf" and enforce_eager:
        raise VramplanError("--enforce-eager applies to --engine vllm (CUDA graphs), not --engine hf")
    for flag, val, choices in (
        ("--dtype", dtype, DTYPES),
        ("--quant", quant, QUANTS),
        ("--kv-cache-dtype", kv_cache_dtype, KV_CACHE_DTYPES),
    ):
        if val is not None and val not in choices:
            raise did_you_mean(str(val), choices, f"{flag} value")
    if engine == "hf" and kv_cache_dtype != "auto":
        raise VramplanError(
            f"--kv-cache-dtype {kv_cache_dtype} is a vLLM option; transformers' DynamicCache keeps K and V "
            "in the model dtype (use --kv-cache-dtype auto or --engine vllm)"
        )
    bf16 = gpu.bf16 if gpu else True
    if dtype == "bf16" and not bf16:
        notes.append(f"{gpu.key if gpu else 'this GPU'} has no bf16: --dtype bf16 switched to fp16")
        dtype = "fp16"
    dtype = dtype or ("bf16" if bf16 else "fp16")
    quant = quant or "none"
    if engine == "vllm" and quant in ("fp4", "int8"):
        notes.append(f"vLLM quantizes in flight to nf4 only; --quant {quant} needs a pre-quantized checkpoint")
    enable_lora = enable_lora or max_loras is not None or max_lora_rank is not None
    max_loras = _positive(_or(max_loras, 1), "--max-loras")
    max_lora_rank = _positive(_or(max_lora_rank, 16), "--max-lora-rank")
    if engine == "vllm" and max_lora_rank not in VLLM_MAX_LORA_RANKS:
        raise did_you_mean(
            str(max_lora_rank), map(str, VLLM_MAX_LORA_RANKS), "--max-lora-rank value", "vLLM's MaxLoRARanks"
        )
    if merged_lora and max_loras > 1:
        raise VramplanError(
            f"--merged-lora merges one adapter into the base weights; it cannot serve --max-loras {max_loras}"
        )
    targets, _ = resolve_lora_target(m, lora_target)
    if max_model_len is not None and max_model_len > m.max_position_embeddings:
        raise VramplanError(
            f"--max-model-len {max_model_len} exceeds {m.name}'s max_position_embeddings "
            f"{m.max_position_embeddings}; vLLM refuses it"
        )
    big = gpu is not None and gpu.memory_bytes >= 70 * GIB and "a100" not in gpu.name.lower()
    seqs = _positive(_or(max_num_seqs, 1024 if big else 256), "--max-num-seqs")
    mnbt = _positive(_or(max_num_batched_tokens, 8192 if big else 2048), "--max-num-batched-tokens")
    if engine == "vllm" and mnbt < seqs:
        raise VramplanError(f"--max-num-batched-tokens {mnbt} must be >= --max-num-seqs {seqs} (vLLM's rule)")
    util = float(_or(gpu_memory_utilization, 0.9))
    if not 0.0 < util <= 1.0:
        raise VramplanError(f"--gpu-memory-utilization must be in (0, 1], got {gpu_memory_utilization!r}")
    bs = _or(block_size, VLLM_BLOCK_SIZE)
    if bs not in VLLM_BLOCK_SIZES:
        raise did_you_mean(str(bs), map(str, VLLM_BLOCK_SIZES), "--block-size value")
    return ServeSpec(
        engine=engine,  # type: ignore[arg-type]
        dtype=dtype,  # type: ignore[arg-type]
        quant=quant,  # type: ignore[arg-type]
        double_quant=bool(double_quant) and quant in ("nf4", "fp4"),
        kv_cache_dtype=kv_cache_dtype,
        enable_lora=enable_lora,
        max_loras=max_loras,
        max_lora_rank=max_lora_rank,
        lora_target=targets,
        merged_lora=bool(merged_lora),
        batch=_positive(_or(batch, 1), "--batch"),
        prompt_tokens=_positive(_or(prompt_tokens, 512), "--prompt-tokens"),
        new_tokens=_positive(_or(new_tokens, 512), "--new-tokens"),
        max_model_len=_positive(_or(max_model_len, m.max_position_embeddings), "--max-model-len"),
        max_num_seqs=seqs,
        max_num_batched_tokens=mnbt,
        gpu_memory_utilization=util,
        block_size=bs,
        enforce_eager=bool(enforce_eager),
        notes=tuple(notes),
    )


# ---------------------------------------------------------------- pieces both engines share


def serve_weight_bytes(m: ModelSpec, s: ServeSpec) -> tuple[int, int]:
    """(weights, quantization constants): decoder linears packed by bitsandbytes, the rest in the model dtype.

    Same storage rules as training (weights.py, bitsandbytes 0.50.2): lm_head, embeddings and norms stay
    unquantized. vLLM's in-flight bnb is nf4 with double quantization (model_loader/bitsandbytes_loader.py
    `quantize_4bit(..., compress_statistics=True, quant_type="nf4")`); its fused qkv / gate_up tensors
    change the absmax block count by less than one block each.
    """
    p = s.dtype_bytes
    if s.quant == "none":
        return m.total_params * p, 0
    packed = state = 0
    for lin in m.linears:
        if s.quant == "int8":
            w, q = bnb_int8_bytes(lin.out_features, lin.in_features)
        else:
            w, q = bnb_4bit_bytes(lin.weight_params, s.double_quant)
        packed, state = packed + w, state + q
    rest = (m.total_params - m.linear_weight_params) * p
    return m.num_hidden_layers * packed + rest, m.num_hidden_layers * state


def adapter_params(m: ModelSpec, s: ServeSpec) -> int:
    """LoRA parameters resident on the GPU: max_loras × layers × Σ_targets r·(in + out); 0 when merged.

    vLLM preallocates every supported linear at max_lora_rank (or `lora_target_modules`), as slices of its
    fused qkv / gate_up that add up to the same r·(in + out) per HF linear (base_linear.py / column_parallel_
    linear.py `create_lora_weights`, vllm-project/vllm@1ace43ed, @4f54575c).
    """
    if not s.lora_resident:
        return 0
    r = s.max_lora_rank
    per_layer = sum(lora_params_per_linear(lin, r, False) for lin in m.linears if lin.name in s.lora_target)
    return s.max_loras * m.num_hidden_layers * per_layer


def adapter_elem_bytes(s: ServeSpec) -> int:
    """PEFT (hf) keeps adapters in fp32 (autocast_adapter_dtype=True); vLLM's slots use lora_dtype "auto" =
    the model dtype (vllm/config/lora.py, vllm-project/vllm@a78dc92f)."""
    return 4 if s.engine == "hf" else s.dtype_bytes


def layer_peak_elems_per_token(m: ModelSpec) -> int:
    """Elements per token alive at the peak of one decoder layer's inference forward (the cache aside).

    MLP: gated 3·I (HF: activation output, up output, their product; vLLM: fused gate_up 2·I + SiluAndMul
    I), plain 2·I, MoE experts_per_tok · 3·I; attention: q, k, v, output and GQA's repeated k, v
    (4·q_dim + 2·kv_dim); the larger of the two, plus the residual stream (residual, hidden, normed: 3·h).
    Check: vLLM's profile runs of Llama-3.1-8B on a 3090 at 20,000 / 29,000 tokens (no chunking) report
    2.07 / 2.99 GiB of activation peak (vllm-project/vllm#10517); this gives 2.06 / 2.99 GiB.
    Source: transformers 5.24 modeling_llama.py LlamaMLP.forward; vllm/model_executor/models/llama.py.
    """
    i = m.intermediate_size
    mlp = {"plain": 2 * i, "moe": max(m.num_experts_per_tok, 1) * 3 * i}.get(m.mlp, 3 * i)
    attn = 4 * m.q_dim + 2 * m.kv_dim
    return max(mlp, attn) + 3 * m.hidden_size


def dequant_bytes(m: ModelSpec, s: ServeSpec, fused: bool) -> int:
    """A 4-bit weight dequantized to the model dtype: bitsandbytes `matmul_4bit` dequantizes the whole
    weight for inputs of more than one row (gemv_4bit only for a single token). The largest linear, or
    vLLM's fused qkv / gate_up when `fused`."""
    if s.quant not in ("nf4", "fp4"):
        return 0
    sizes = [lin.weight_params for lin in m.linears]
    if fused and m.mlp == "gated":
        sizes += [m.hidden_size * (m.q_dim + 2 * m.kv_dim), m.hidden_size * 2 * m.intermediate_size]
    return max(sizes) * s.dtype_bytes


# ---------------------------------------------------------------- transformers generate


def hf_logits_bytes(m: ModelSpec, s: ServeSpec) -> int:
    """batch × vocab × (dtype + 3 · 4): the lm_head's one row per sequence (logits_to_keep=1), its fp32
    copy, the processed scores and the softmax probabilities (do_sample).
    Source: transformers 5.24 generation/utils.py `_sample`.
    """
    return s.batch * m.vocab_size * (s.dtype_bytes + 3 * 4)


def hf_lora_workspace_bytes(m: ModelSpec, s: ServeSpec, tokens: int) -> int:
    """PEFT's unmerged LoRA branch on the largest target, fp32: x cast to the adapter dtype, lora_A's
    output (r), lora_B's output and its scaled copy (peft/tuners/lora/layer.py Linear.forward)."""
    targets = [lin for lin in m.linears if lin.name in s.lora_target]
    if not s.lora_resident or not targets:
        return 0
    big = max(targets, key=lambda lin: lin.in_features + 2 * lin.out_features)
    return tokens * (big.in_features + s.max_lora_rank + 2 * big.out_features) * 4


def hf_phases(m: ModelSpec, s: ServeSpec, resident: ServeComponents) -> tuple[ServePhase, ...]:
    """Prefill and the last decode step of one generate() call, on top of the `resident` weights."""
    b, p, n, e, dt = s.batch, s.prompt_tokens, s.new_tokens, s.kv_elem_bytes, s.dtype_bytes
    per_token = layer_peak_elems_per_token(m) * dt
    logits = hf_logits_bytes(m, s)
    prefill = replace(
        resident,
        kv_cache=hf_generate_cache_bytes(m, b, p, 1, e),
        logits=logits,
        temporaries=b * p * per_token + dequant_bytes(m, s, fused=False) + hf_lora_workspace_bytes(m, s, b * p),
    )
    if n == 1:
        return (ServePhase("prefill", prefill),)
    decode = replace(
        resident,
        kv_cache=hf_generate_cache_bytes(m, b, p, n, e),
        logits=logits,
        temporaries=hf_cache_step_transient_bytes(m, b, p, n, e)
        + b * per_token
        + (dequant_bytes(m, s, fused=False) if b > 1 else 0)
        + hf_lora_workspace_bytes(m, s, b),
    )
    return ServePhase("prefill", prefill), ServePhase("decode", decode)


def estimate_serve(
    model: str | ModelSpec,
    *,
    gpu: str | GpuProfile | None = None,
    serve: ServeSpec | None = None,
    **options: Any,
) -> ServeBreakdown:
    """Estimate the serving memory of `model` with vLLM (default) or transformers generate (`engine="hf"`).

    `options`: the keyword arguments of `resolve_serve`, or a resolved `serve`. vLLM needs a `gpu`: its KV
    pool is a fraction of the GPU's memory.

    >>> b = estimate_serve("llama-3-8b", gpu="4090", max_model_len=8192, max_num_seqs=16)
    >>> b.vllm.kv.tokens, b.vllm.kv.max_concurrency
    """
    from vramplan.estimator.vllm import vllm_breakdown  # vllm.py builds on this module's pieces
    from vramplan.sources.profiles import find_gpu, load_model

    m = load_model(model) if isinstance(model, str) else model
    g = find_gpu(gpu) if isinstance(gpu, str) else gpu
    s = serve or resolve_serve(m, g, **options)
    w, q = serve_weight_bytes(m, s)
    resident = ServeComponents(weights=w, quant_state=q, adapters=adapter_params(m, s) * adapter_elem_bytes(s))
    inputs = {"model": m.name, "gpu": g.key if g else None, **s.as_dict()}
    if s.engine == "vllm":
        if g is None:
            raise VramplanError("--engine vllm sizes its KV pool from the GPU's memory: add --gpu NAME (vramplan gpus)")
        return vllm_breakdown(m, s, g, resident, inputs)
    phases = hf_phases(m, s, resident)
    peak = max(p.total for p in phases)
    return ServeBreakdown(
        model=m.name,
        engine="hf",
        phases=phases,
        params_total=m.total_params,
        adapter_params=adapter_params(m, s),
        allocator_overhead_bytes=allocator_overhead_bytes(peak, ALLOCATOR_OVERHEAD_RATIO) + CUBLAS_WORKSPACE_BYTES,
        cuda_context_bytes=CUDA_CONTEXT_BYTES,
        gpu_bytes=g.memory_bytes if g else None,
        error_band=error_band_for(g.key if g else None),
        inputs=inputs,
    )
