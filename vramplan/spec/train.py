"""The training step's inputs: TrainSpec and `resolve_train` (method, dtypes, LoRA, batch, sequence, optimizer).

Names follow HF TrainingArguments, PEFT's LoraConfig and bitsandbytes' BitsAndBytesConfig.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vramplan.errors import VramplanError
from vramplan.spec.alloc_conf import parse_alloc_conf
from vramplan.spec.model import (
    ATTNS,
    DTYPES,
    METHODS,
    MIXED,
    QUANTS,
    Attn,
    Dtype,
    Method,
    MixedPrecision,
    ModelSpec,
    ParamSpec,
    Quant,
)

OPTIMIZERS: tuple[str, ...] = (
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_8bit",
    "adamw_bnb_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "sgd",
    "adafactor",
    "lion_32bit",
)
OPTIM_ALIASES = {"adamw_bnb_8bit": "adamw_8bit"}
LORA_TARGET_PRESETS: tuple[str, ...] = ("all-linear", "attn", "qv")

# PEFT's per-architecture default targets (peft/utils/constants.py,
# TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, peft 0.21.2). phi3 has no entry there (PEFT asks for
# target_modules); vramplan's `qv` for it is the fused qkv_proj.
PEFT_DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "mixtral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "qwen3": ("q_proj", "v_proj"),
    "gemma": ("q_proj", "v_proj"),
    "gemma2": ("q_proj", "v_proj"),
    "phi": ("q_proj", "v_proj", "fc1", "fc2"),
    "phi3": ("qkv_proj",),
    "gpt_neox": ("query_key_value",),
    "bloom": ("query_key_value",),
}


@dataclass(frozen=True, slots=True)
class TrainSpec:
    """One training step, every setting resolved (no None): what `estimate`, `measure` and `simulate` share.

    Names follow HF: `per_device_train_batch_size` is `batch`, `gradient_accumulation_steps` `grad_accum`,
    PEFT's `r` is `lora_rank`, bitsandbytes' `bnb_4bit_use_double_quant` is `double_quant`.
    """

    method: Method
    dtype: Dtype  # dtype the unquantized weights are loaded in (`torch_dtype`)
    mixed_precision: MixedPrecision  # autocast dtype of the Trainer (`bf16=True` -> "bf16"), or "no"
    quant: Quant
    double_quant: bool
    kbit_prep: bool
    batch: int
    seq: int
    grad_accum: int
    lora_rank: int
    lora_alpha: int
    lora_dropout: float
    lora_target: tuple[str, ...]  # resolved module names
    lora_target_preset: str  # what the user asked for: "all-linear", "attn", "qv" or "custom"
    dora: bool
    optim: str
    grad_ckpt: bool
    attn: Attn
    freeze_trainable_layers: int
    alloc_conf: str = ""  # PYTORCH_CUDA_ALLOC_CONF as modelled (`spec.alloc_conf`); "" = torch's defaults
    notes: tuple[str, ...] = ()  # warnings raised while resolving (e.g. bf16 -> fp16 on a T4)

    @property
    def uses_lora(self) -> bool:
        return self.method in ("lora", "qlora")

    @property
    def compute_dtype(self) -> Dtype:
        """Dtype matmuls run in: the autocast dtype, else the weight dtype (bnb_4bit_compute_dtype for 4-bit)."""
        return self.dtype if self.mixed_precision == "no" else self.mixed_precision

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]


def _positive(value: int, flag: str) -> int:
    if value is None or value < 1:
        raise VramplanError(f"{flag} must be a positive integer, got {value!r}")
    return int(value)


def lora_moe_targets(model: ModelSpec, targets: tuple[str, ...]) -> tuple[ParamSpec, ...]:
    """The MoE parameters PEFT adapts (lora.ParamWrapper) for these `target_modules` names."""
    return tuple(p for p in model.moe_params if set(p.peft_names) & set(targets))


def resolve_lora_target(model: ModelSpec, target: str) -> tuple[tuple[str, ...], str]:
    """Map `all-linear` / `attn` / `qv` / a comma list onto PEFT `target_modules` names of this model.

    `all-linear` is every `nn.Linear` of the decoder layers (not lm_head) and, on Mixtral, the router and
    experts by their transformers-4 names `gate`, `w1`, `w3`, `w2`: PEFT 0.21.2 resolves "all-linear" on
    transformers 5 to exactly these and adapts the router / expert parameters through `target_parameters`
    (peft/utils/transformers_weight_conversion.py `_resolve_string_target_modules`).
    """
    names = tuple(lin.name for lin in model.linears)
    moe_names = tuple(n for p in model.moe_params for n in p.peft_names)
    if target == "all-linear":
        return names + moe_names, target
    if target == "attn":
        return tuple(lin.name for lin in model.linears if lin.group == "attn"), target
    if target == "qv":
        return PEFT_DEFAULT_TARGETS.get(model.model_type, names[:1]), target
    wanted = tuple(t.strip() for t in target.split(",") if t.strip())
    if "all" in wanted:  # LLaMA-Factory's spelling of all-linear
        return names + moe_names, "all-linear"
    bad = [t for t in wanted if t not in names + moe_names]
    if bad or not wanted:
        from vramplan.errors import did_you_mean

        raise did_you_mean(
            bad[0] if bad else target,
            (*LORA_TARGET_PRESETS, *names, *moe_names),
            "LoRA target",
            f"{model.name} has: {', '.join(names + moe_names)}",
        )
    for p in lora_moe_targets(model, wanted):
        missing = [n for n in p.peft_names if n not in wanted]
        if missing:  # PEFT: "Cannot convert PEFT target(s) w1 without also targeting w3 ..."
            present = ",".join(n for n in p.peft_names if n in wanted)
            raise VramplanError(
                f"LoRA target {present} of {model.name} is fused with {','.join(missing)} into {p.name} "
                f"in transformers 5; add {','.join(missing)} to --lora-target"
            )
    return wanted, "custom"


def resolve_train(
    model: ModelSpec,
    *,
    gpu_bf16: bool = True,
    method: str = "qlora",
    dtype: str | None = None,
    mixed_precision: str | None = None,
    quant: str | None = None,
    double_quant: bool | None = None,
    kbit_prep: bool | None = None,
    batch: int = 1,
    seq: int = 1024,
    grad_accum: int = 1,
    lora_rank: int = 16,
    lora_alpha: int | None = None,
    lora_dropout: float = 0.05,
    lora_target: str = "all-linear",
    dora: bool = False,
    optim: str = "adamw_torch_fused",
    grad_ckpt: bool | None = None,
    attn: str = "sdpa",
    freeze_trainable_layers: int = 2,
    alloc_conf: str | None = None,
) -> TrainSpec:
    """Fill in the defaults of the common HF Trainer / PEFT recipe for `method` and validate everything.

    Defaults: batch 1, seq 1024, bf16 autocast (fp16 on GPUs without bf16); QLoRA = nf4 + double quant +
    kbit prep + gradient checkpointing; LoRA = bf16 weights; full = pure bf16; r=16, alpha=32, dropout 0.05,
    all-linear; `adamw_torch_fused` (HF Trainer default with torch >= 2.8); SDPA attention; the caching
    allocator's defaults (`alloc_conf`, PYTORCH_CUDA_ALLOC_CONF syntax, e.g. "expandable_segments:True").
    """
    from vramplan.errors import did_you_mean

    notes: list[str] = []
    if method not in METHODS:
        raise did_you_mean(method, METHODS, "method")
    half = "bf16" if gpu_bf16 else "fp16"
    for flag, val, choices in (
        ("--dtype", dtype, DTYPES),
        ("--mixed-precision", mixed_precision, MIXED),
        ("--quant", quant, QUANTS),
        ("--attn", attn, ATTNS),
    ):
        if val is not None and val not in choices:
            raise did_you_mean(str(val), choices, f"{flag} value")
    if not gpu_bf16:
        if dtype == "bf16":
            notes.append("this GPU has no bf16: --dtype bf16 switched to fp16")
            dtype = "fp16"
        if mixed_precision == "bf16":
            notes.append("this GPU has no bf16: --mixed-precision bf16 switched to fp16")
            mixed_precision = "fp16"
    dtype = dtype or half
    mixed_precision = mixed_precision or half
    if quant is None:
        quant = "nf4" if method == "qlora" else "none"
    if method == "qlora" and quant == "none":
        raise VramplanError("--method qlora needs a quantized base: --quant nf4|fp4|int8 (or use --method lora)")
    if method in ("full", "freeze") and quant != "none":
        raise VramplanError(
            f"--quant {quant} cannot be combined with --method {method}: quantized weights cannot be trained; "
            "use --method qlora (LoRA on a quantized base)"
        )
    if method == "lora" and quant != "none":
        method = "qlora"
        notes.append(f"--method lora with --quant {quant} is QLoRA: method set to qlora")
    if double_quant is None:
        double_quant = quant in ("nf4", "fp4")
    if kbit_prep is None:
        kbit_prep = quant != "none"
    if grad_ckpt is None:
        grad_ckpt = method == "qlora" and kbit_prep  # prepare_model_for_kbit_training turns it on
    optim = OPTIM_ALIASES.get(optim, optim)
    if optim not in OPTIMIZERS:
        raise did_you_mean(optim, OPTIMIZERS, "optimizer", "HF TrainingArguments.optim names")
    lora_rank = _positive(lora_rank, "--lora-rank")
    if not 0.0 <= lora_dropout < 1.0:
        raise VramplanError(f"--lora-dropout must be in [0, 1), got {lora_dropout!r}")
    targets, preset = resolve_lora_target(model, lora_target)
    # transformers 5.24 refuses SDPA for these (`_supports_sdpa = False`): gemma2 (logit softcapping) and
    # bloom (ALiBi); HF picks eager for them by default
    eager_only = {"gemma2": ("sdpa",), "bloom": ("sdpa", "flash_attention_2")}.get(model.model_type, ())
    if attn in eager_only:
        notes.append(f"{model.model_type} has no {attn} attention in transformers: using eager")
        attn = "eager"
    moe = lora_moe_targets(model, targets) if method in ("lora", "qlora") else ()
    if moe and dora:
        raise VramplanError(
            f"--dora cannot adapt {model.name}'s router/experts ({', '.join(p.name for p in moe)}): PEFT's "
            "lora.ParamWrapper does not support DoRA; use --lora-target attn or --no-dora"
        )
    if moe and lora_dropout > 0:
        notes.append(
            f"PEFT rejects lora_dropout != 0 on {model.name}'s router/experts (lora.ParamWrapper): "
            "train with --lora-dropout 0 (estimated as given) or --lora-target attn"
        )
    if method == "freeze" and not 1 <= freeze_trainable_layers <= model.num_hidden_layers:
        raise VramplanError(
            f"--freeze-trainable-layers must be between 1 and {model.num_hidden_layers} "
            f"(layers of {model.name}), got {freeze_trainable_layers!r}"
        )
    return TrainSpec(
        method=method,  # type: ignore[arg-type]
        dtype=dtype,  # type: ignore[arg-type]
        mixed_precision=mixed_precision,  # type: ignore[arg-type]
        quant=quant,  # type: ignore[arg-type]
        double_quant=bool(double_quant) and quant in ("nf4", "fp4"),
        kbit_prep=bool(kbit_prep) and quant != "none",
        batch=_positive(batch, "--batch"),
        seq=_positive(seq, "--seq"),
        grad_accum=_positive(grad_accum, "--grad-accum"),
        lora_rank=lora_rank,
        lora_alpha=lora_alpha if lora_alpha is not None else 2 * lora_rank,
        lora_dropout=float(lora_dropout),
        lora_target=targets,
        lora_target_preset=preset,
        dora=bool(dora),
        optim=optim,
        grad_ckpt=bool(grad_ckpt),
        attn=attn,  # type: ignore[arg-type]
        freeze_trainable_layers=int(freeze_trainable_layers),
        alloc_conf=parse_alloc_conf(alloc_conf).text,
        notes=tuple(notes),
    )
