"""One serving setup: ServeSpec and `resolve_serve` (vLLM's engine arguments and HF `generate`'s)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

from vramplan.errors import VramplanError, did_you_mean
from vramplan.spec.fields import positive
from vramplan.spec.gpu import GpuProfile
from vramplan.spec.lora_targets import resolve_lora_target
from vramplan.spec.model import DTYPE_BYTES, DTYPES, QUANTS, Dtype, ModelSpec, Quant

VLLM_BLOCK_SIZE = 16  # tokens per KV block: vLLM CacheConfig.block_size default on CUDA
FP8_BYTES = 1  # vLLM --kv-cache-dtype fp8 / fp8_e4m3 / fp8_e5m2: one byte per element
KV_CACHE_DTYPES: tuple[str, ...] = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")  # vllm/config/cache.py CacheDType

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
    # choices are case-insensitive, as resolve_train's are
    engine = str(engine).lower()
    dtype, quant, kv_cache_dtype = (None if v is None else str(v).lower() for v in (dtype, quant, kv_cache_dtype))
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
    max_loras = positive(_or(max_loras, 1), "--max-loras")
    max_lora_rank = positive(_or(max_lora_rank, 16), "--max-lora-rank")
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
    seqs = positive(_or(max_num_seqs, 1024 if big else 256), "--max-num-seqs")
    mnbt = positive(_or(max_num_batched_tokens, 8192 if big else 2048), "--max-num-batched-tokens")
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
        batch=positive(_or(batch, 1), "--batch"),
        prompt_tokens=positive(_or(prompt_tokens, 512), "--prompt-tokens"),
        new_tokens=positive(_or(new_tokens, 512), "--new-tokens"),
        max_model_len=positive(_or(max_model_len, m.max_position_embeddings), "--max-model-len"),
        max_num_seqs=seqs,
        max_num_batched_tokens=mnbt,
        gpu_memory_utilization=util,
        block_size=bs,
        enforce_eager=bool(enforce_eager),
        notes=tuple(notes),
    )
