"""One serving setup: ServeSpec and `resolve_serve` (vLLM's engine arguments and HF `generate`'s)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

from vramplan.errors import VramplanError, did_you_mean
from vramplan.spec.checkpoint_quant import CheckpointQuant, read_checkpoint_quant
from vramplan.spec.fields import positive
from vramplan.spec.gpu import GpuProfile
from vramplan.spec.lora_targets import resolve_lora_target
from vramplan.spec.model import DTYPE_BYTES, DTYPES, QUANTS, Dtype, ModelSpec, Quant
from vramplan.spec.stack import DEFAULT_STACK, Stack, resolve_stack
from vramplan.spec.vllm_versions import CURRENT_VLLM, vllm_release

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
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "vllm_version",
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
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    enable_expert_parallel: bool = False
    vllm_version: str = "0.34"  # the release line whose start-up arithmetic applies (spec/vllm_versions.py)
    checkpoint: CheckpointQuant | None = None  # the checkpoint's own quantization_config (pre-quantized)
    stack: Stack = DEFAULT_STACK  # the transformers / peft versions `--engine hf` models (spec/stack.py)

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def kv_elem_bytes(self) -> int:
        return self.dtype_bytes if self.kv_cache_dtype == "auto" else FP8_BYTES

    @property
    def lora_resident(self) -> bool:
        return self.enable_lora and not self.merged_lora

    @property
    def quant_label(self) -> str:
        if self.checkpoint is not None:
            return self.checkpoint.label
        return self.quant if self.quant != "none" else ""

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["checkpoint"] = self.checkpoint.label if self.checkpoint is not None else None
        out["stack"] = self.stack.as_dict()
        return out


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
    tensor_parallel_size: int | None = None,
    pipeline_parallel_size: int | None = None,
    enable_expert_parallel: bool = False,
    vllm_version: str | None = None,
    stack: str | Stack | None = None,
) -> ServeSpec:
    """Validate and fill in defaults. vLLM's are `vllm serve`'s (vllm/engine/arg_utils.py
    get_batch_defaults, vllm-project/vllm@99d7eb5d: max_num_batched_tokens 2048 and max_num_seqs 256, or
    8192 / 1024 on GPUs of >= 70 GiB that are not an A100 (V1 engine; V0 kept 256 sequences and
    max(max_model_len, 2048) tokens below 32k); gpu_memory_utilization as the release's default
    (spec/vllm_versions.py: 1.0 in 0.34); max_model_len = the model's max_position_embeddings; LoRA
    max_loras 1, max_lora_rank 16). The checkpoint's own quantization_config is read (spec/checkpoint_quant.py).
    HF's: batch 1, 512 + 512 tokens. Flags of the other engine are an error rather than silently ignored.
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
        "tensor_parallel_size": tensor_parallel_size,
        "pipeline_parallel_size": pipeline_parallel_size,
        "vllm_version": vllm_version,
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
    release = vllm_release(str(_or(vllm_version, CURRENT_VLLM)))
    checkpoint = read_checkpoint_quant(m.config)
    if checkpoint is not None and quant != "none":
        raise VramplanError(f"{m.name}'s config.json is already quantized ({checkpoint.label}); drop --quant {quant}")
    if checkpoint is not None:
        notes.extend(checkpoint_notes(checkpoint, gpu, engine))
    if engine == "vllm" and m.model_type == "gemma4_text":
        notes.append(
            "Gemma 4's layers cache K and V of two shapes (global layers: global_head_dim, their own key heads): "
            "one request's KV counted layer by layer, the pool cut into blocks of the largest page (approximated)"
        )
    tp = positive(_or(tensor_parallel_size, 1), "--tensor-parallel-size")
    pp = positive(_or(pipeline_parallel_size, 1), "--pipeline-parallel-size")
    if m.num_attention_heads % tp:
        raise VramplanError(
            f"--tensor-parallel-size {tp} does not divide {m.name}'s {m.num_attention_heads} attention heads "
            "(vLLM's rule); use a divisor"
        )
    if pp > m.num_hidden_layers:
        raise VramplanError(f"--pipeline-parallel-size {pp} exceeds {m.name}'s {m.num_hidden_layers} layers")
    big = gpu is not None and gpu.memory_bytes >= 70 * GIB and "a100" not in gpu.name.lower()
    seqs = positive(_or(max_num_seqs, 1024 if big and release.engine == "v1" else 256), "--max-num-seqs")
    model_len = positive(_or(max_model_len, m.max_position_embeddings), "--max-model-len")
    if release.engine == "v0" and model_len <= 32768:  # V0: no chunked prefill below 32k tokens
        default_mnbt = max(model_len, 2048)
    else:
        default_mnbt = 8192 if big and release.engine == "v1" else 2048
    mnbt = positive(_or(max_num_batched_tokens, default_mnbt), "--max-num-batched-tokens")
    if engine == "vllm" and mnbt < seqs:
        raise VramplanError(f"--max-num-batched-tokens {mnbt} must be >= --max-num-seqs {seqs} (vLLM's rule)")
    util = float(_or(gpu_memory_utilization, release.default_gpu_memory_utilization))
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
        max_model_len=model_len,
        max_num_seqs=seqs,
        max_num_batched_tokens=mnbt,
        gpu_memory_utilization=util,
        block_size=bs,
        enforce_eager=bool(enforce_eager),
        notes=tuple(notes),
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        enable_expert_parallel=bool(enable_expert_parallel),
        vllm_version=release.version,
        checkpoint=checkpoint,
        stack=resolve_stack(stack),
    )


def checkpoint_notes(q: CheckpointQuant, gpu: GpuProfile | None, engine: str) -> list[str]:
    """What the GPU does with the format (storage is the same; the kernel differs), from vLLM 0.34's
    capability checks: FP8 W8A8 needs compute capability 8.9 (Marlin runs it weight-only from 8.0), MXFP4 /
    NVFP4 run natively from 10.0 (Blackwell) and through Marlin from 8.0, AWQ / GPTQ Marlin from 8.0."""
    notes = []
    # bf16 marks compute capability >= 8.0, fp8 >= 8.9, fp4 >= 10.0 (GpuProfile; gpus.toml, tested as a rule)
    if gpu is not None and q.format in ("fp8", "mxfp4", "nvfp4") and not gpu.bf16:
        cc = gpu.compute_capability
        notes.append(f"{q.label} has no vLLM kernel below compute capability 8.0 ({gpu.key} is {cc})")
    elif gpu is not None and q.format == "fp8" and not gpu.fp8:
        notes.append("fp8 on compute capability < 8.9: vLLM runs it weight-only through Marlin (same storage)")
    elif gpu is not None and q.format in ("mxfp4", "nvfp4") and not gpu.fp4:
        notes.append(f"{q.format} on compute capability < 10.0: weight-only through Marlin (same storage)")
    if engine == "vllm" and q.format == "aqlm":
        notes.append("aqlm: counted as aqlm's QuantizedLinear stores it; vLLM's AQLM kernels are not modelled")
    if engine == "hf" and q.format in ("mxfp4", "nvfp4"):
        notes.append(
            f"transformers dequantizes {q.format} to the model dtype where it has no kernel: counted dequantized"
        )
    return notes
