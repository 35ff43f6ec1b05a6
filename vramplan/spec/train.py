"""The training step's inputs: TrainSpec and `resolve_train` (method, dtypes, LoRA, batch, sequence, optimizer).

Names follow HF TrainingArguments, PEFT's LoraConfig and bitsandbytes' BitsAndBytesConfig.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vramplan.errors import VramplanError
from vramplan.spec.alloc_conf import parse_alloc_conf
from vramplan.spec.counts import LIMITS
from vramplan.spec.family_traits import SINK_FAMILIES
from vramplan.spec.fields import positive, quantization_config
from vramplan.spec.lora_settings import moe_lora_checks, resolve_lora_kernels, resolve_lora_selection
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
    Quant,
)
from vramplan.spec.optimizer_choice import resolve_optim
from vramplan.spec.peft_method import BOTTLENECK_NAMES, LORA, PeftMethod, bottleneck_error, resolve_peft
from vramplan.spec.remote_code import attention_only as remote_attention_only
from vramplan.spec.stack import DEFAULT_STACK, Stack, resolve_stack
from vramplan.spec.stage import SFT, StageSpec, resolve_stage, stage_loss
from vramplan.spec.train_notes import (
    contradictions,
    gemma4_notes,
    layer_offload_setting,
    sink_attention_notes,
    unquantized_linears_note,
)

if TYPE_CHECKING:
    from vramplan.spec.checkpoint_quant import CheckpointQuant

# How the loss is computed (vramplan/estimator/loss.py): transformers' ForCausalLMLoss over the full logits, TRL's
# chunked fused LM head, Liger's fused linear cross-entropy, Apple's cut-cross-entropy.
LOSSES: tuple[str, ...] = ("hf", "trl-chunked", "liger", "cce")


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
    loss: str = "hf"  # one of LOSSES
    packing: bool = False  # packed / padding-free batches: every token real, position_ids per sequence
    liger_kernels: bool = False  # Liger's RMSNorm / SwiGLU / RoPE kernels (apply_liger_kernel_to_<model>)
    recipe: str = "trainer"  # the framework whose defaults filled the unset settings, with its version
    notes: tuple[str, ...] = ()  # warnings raised while resolving (e.g. bf16 -> fp16 on a T4)
    stage: StageSpec = SFT  # SFT, reward modelling, preference or RL (spec/stage.py)
    peft: PeftMethod = LORA  # the PEFT method of a LoRA-family run (spec/peft_method.py)
    image_tokens: int = 0  # a VLM's image positions, included in `seq` (`--image-tokens`)
    # ---- LoRA targets beyond the decoder layers' linears (spec/lora_targets.py) ----
    lora_layers: tuple[tuple[str, int], ...] = ()  # targets a regex selects in only some layers: how many
    lora_embeddings: tuple[str, ...] = ()  # "embed_tokens" / "lm_head" adapted by LoRA
    modules_to_save: tuple[str, ...] = ()  # "embed_tokens" / "lm_head": trainable full copies
    target_parameters: tuple[tuple[str, tuple[int, ...], int], ...] = ()  # (name, shape, instances), ParamWrapper
    optim_rank: int = 0  # GaLore / APOLLO projection rank (0 for other optimizers)
    # activations moved to host RAM: "checkpoints" (the first Unsloth offloaded checkpointer, LLaMA-Factory's
    # and axolotl's copies), "unsloth" (unsloth_zoo's current one), "all" (activation offloading);
    # vramplan/estimator/offload.py
    activation_offload: str = "none"
    # axolotl `layer_offloading`: the decoder layers' frozen parameters in pinned host RAM, streamed through the
    # GPU a layer at a time (vramplan/estimator/offload.py `layer_offload_bytes`)
    layer_offload: bool = False
    # a pre-quantized base other than bitsandbytes (GPTQ, AWQ, FP8, AQLM, compressed-tensors, NVFP4): its
    # format, read from the checkpoint's quantization_config (spec/prequantized_base.py); `quant` is then "none"
    checkpoint: CheckpointQuant | None = None
    stack: Stack = DEFAULT_STACK  # the library versions modelled and their rules (spec/stack.py)
    # axolotl's fused LoRA autograd Functions in place of PEFT's per-linear branches: "qkv", "o", "mlp"
    # (axolotl kernels/lora.py; vramplan/estimator/lora_kernel_ops.py)
    lora_kernels: tuple[str, ...] = ()

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
        """Every setting by name, the stage's flattened in (`stage`, `reference`, `pref_beta`, ...)."""
        skip = ("stage", "peft", "checkpoint", "stack")
        out = {name: getattr(self, name) for name in self.__slots__ if name not in skip}  # type: ignore[attr-defined]
        out["checkpoint"] = self.checkpoint.label if self.checkpoint else None  # a pre-quantized base's format
        return {**out, **self.stage.as_dict(), **self.peft.as_dict(), "stack": self.stack.as_dict()}


def _choice(value: Any, choices: tuple[str, ...], flag: str) -> str | None:
    """`value` lowercased if it is one of `choices` (case-insensitive, as `--gpu` and MODEL are), None as
    None; else the did-you-mean error."""
    if value is None:
        return None
    from vramplan.errors import did_you_mean

    text = str(value)
    if text.lower() not in choices:
        raise did_you_mean(text, choices, f"{flag} value")
    return text.lower()


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
    optim: str | None = None,
    grad_ckpt: bool | None = None,
    attn: str = "sdpa",
    freeze_trainable_layers: int = 2,
    alloc_conf: str | None = None,
    image_tokens: int = 0,
    modules_to_save: str | None = None,
    target_parameters: str | None = None,
    gpu_compute_capability: str | None = None,
    explicit: Collection[str] = (),
    loss: str = "hf",
    packing: bool = False,
    recipe: str = "trainer",
    liger_kernels: bool = False,
    optim_rank: int | None = None,
    activation_offload: str = "none",
    layer_offload: bool = False,
    lora_kernels: str | None = None,
    peft: str | None = None,
    num_virtual_tokens: int | None = None,
    block_size: int | None = None,
    checkpoint: CheckpointQuant | None = None,
    checkpoint_name: str = "",
    stack: str | Stack | None = None,
    **stage: Any,
) -> TrainSpec:
    """Fill in the defaults of the common HF Trainer / PEFT recipe for `method` and validate everything.

    Defaults: batch 1, seq 1024, bf16 autocast (fp16 on GPUs without bf16); QLoRA = nf4 + double quant +
    kbit prep + gradient checkpointing; LoRA = bf16 weights; full = pure bf16; r=16, alpha=32, dropout 0.05,
    all-linear; the Trainer's default optimizer for the `stack` (`adamw_torch_fused` from transformers 4.54 with
    torch >= 2.8, else `adamw_torch`); SDPA attention; the caching
    allocator's defaults (`alloc_conf`, PYTORCH_CUDA_ALLOC_CONF syntax, e.g. "expandable_segments:True").

    Choices are case-insensitive (`--method QLoRA`). Counts are limited (LIMITS). Contradictions become
    `notes` (warnings): FlashAttention-2 below Ampere (`gpu_compute_capability`), a sequence longer than the
    model's context, and settings in `explicit` (those the user set) that the chosen method does not read.
    `stage` holds spec/stage.py's keywords (`stage`, `reference`, `pref_beta`, ...: `resolve_stage`).
    A pre-quantized base (`checkpoint`, else the model config's `quantization_config`, else the format the
    quantization words of its hub name imply, `checkpoint_name` "AWQ") is resolved by spec/prequantized_base.py.
    """
    from vramplan.errors import did_you_mean

    notes: list[str] = []
    if str(method).lower().replace("-", "_") in BOTTLENECK_NAMES:
        raise bottleneck_error("--method", str(method))
    if method is None or str(method).lower() not in METHODS:
        raise did_you_mean(str(method), METHODS, "method")
    method = str(method).lower()
    half = "bf16" if gpu_bf16 else "fp16"
    dtype = _choice(dtype, DTYPES, "--dtype")
    mixed_precision = _choice(mixed_precision, MIXED, "--mixed-precision")
    quant = _choice(quant, QUANTS, "--quant")
    attn = _choice(attn, ATTNS, "--attn")
    loss = _choice(loss, LOSSES, "--loss") or "hf"
    stack = resolve_stack(stack)  # the installed versions unless named (spec/stack.py)
    optim = stack.trainer_default_optim if optim is None else str(optim).lower()
    if not gpu_bf16:
        if dtype == "bf16":
            notes.append("this GPU has no bf16: --dtype bf16 switched to fp16")
            dtype = "fp16"
        if mixed_precision == "bf16":
            notes.append("this GPU has no bf16: --mixed-precision bf16 switched to fp16")
            mixed_precision = "fp16"
    dtype = dtype or half
    mixed_precision = mixed_precision or half
    if checkpoint_name or checkpoint is not None or quantization_config(model.config):
        # a pre-quantized base: its readers are loaded only then (an unquantized model's cold start)
        from vramplan.spec.checkpoint_quant import assumed_from_name
        from vramplan.spec.prequantized_base import model_checkpoint, resolve_base

        named = assumed_from_name(checkpoint_name) if checkpoint_name else None
        checkpoint = checkpoint or model_checkpoint(model.config)
        stored = checkpoint or named
        if stored is not None and stored.format == "bitsandbytes" and quant is None and double_quant is None:
            double_quant = stored.bnb_double_quant  # the checkpoint's bnb_4bit_use_double_quant
        checkpoint, quant, method, base_notes = resolve_base(stored, quant, method, checkpoint is None)
        notes += base_notes
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
    offloads = ("none", "checkpoints", "unsloth", "all")  # vramplan/estimator/offload.py
    activation_offload = _choice(activation_offload, offloads, "--activation-offload") or "none"
    if activation_offload in ("checkpoints", "unsloth"):
        if grad_ckpt is False:
            notes.append(f"--activation-offload {activation_offload} offloads checkpointed layer inputs: "
                         "checkpointing turned on")  # fmt: skip
        grad_ckpt = True
    if grad_ckpt is None:
        grad_ckpt = method == "qlora" and kbit_prep  # prepare_model_for_kbit_training turns it on
    optim, optim_rank = resolve_optim(optim, optim_rank, grad_accum, notes)
    lora_rank = positive(lora_rank, "--lora-rank", LIMITS["lora_rank"])
    if lora_alpha is not None:
        lora_alpha = positive(lora_alpha, "--lora-alpha", LIMITS["lora_alpha"])
    if isinstance(lora_dropout, bool) or not isinstance(lora_dropout, (int, float)) or not 0.0 <= lora_dropout < 1.0:
        raise VramplanError(f"--lora-dropout must be a number in [0, 1), got {lora_dropout!r}")
    batch = positive(batch, "--batch", LIMITS["batch"])
    seq = positive(seq, "--seq", LIMITS["seq"])
    if image_tokens:  # a VLM's image positions join the text in the decoder: every activation and the logits
        image_tokens = positive(image_tokens, "--image-tokens", LIMITS["seq"])
        if not model.tower_tensors:
            notes.append(f"--image-tokens {image_tokens}: {model.name} has no vision tower; added to --seq anyway")
        seq = positive(seq + image_tokens, "--seq + --image-tokens", LIMITS["seq"])
    grad_accum = positive(grad_accum, "--grad-accum", LIMITS["grad_accum"])
    if isinstance(freeze_trainable_layers, bool) or not isinstance(freeze_trainable_layers, int):
        raise VramplanError(f"--freeze-trainable-layers must be an integer, got {freeze_trainable_layers!r}")
    uses_lora = method in ("lora", "qlora")
    peft_method, peft_notes = resolve_peft(peft, num_virtual_tokens, block_size)
    notes += peft_notes
    if peft_method.name != "lora" and not uses_lora:
        raise VramplanError(f"--peft {peft_method.name} trains adapters: use --method lora (or qlora), not {method}")
    targets, preset, selection, saved, params = resolve_lora_selection(
        model, lora_target, explicit, modules_to_save, target_parameters, uses_lora, peft_method, notes
    )
    # transformers 5.24 refuses SDPA for these (`_supports_sdpa = False`): gemma2 (logit softcapping) and
    # bloom (ALiBi); HF picks eager for them by default
    eager_only = {"gemma2": ("sdpa",), "bloom": ("sdpa", "flash_attention_2")}.get(model.model_type, ())
    remote_attn = remote_attention_only(model.model_type)  # remote code computing attention itself (BTLM)
    if remote_attn == "eager":
        eager_only = ("sdpa", "flash_attention_2", "flex_attention")
    if attn in eager_only:
        where = "its remote code" if remote_attn else "transformers"
        notes.append(f"{model.model_type} has no {attn} attention in {where}: using eager")
        attn = "eager"
    notes += sink_attention_notes(model, attn, "attn" in set(explicit))
    if model.model_type in SINK_FAMILIES and attn == "sdpa":
        attn = "eager"
    moe_lora_checks(
        model,
        targets,
        preset,
        params,
        uses_lora=uses_lora,
        dora=dora,
        lora_dropout=lora_dropout,
        kbit_prep=kbit_prep,
        quant=quant,
        mixed_precision=mixed_precision,
        dtype=dtype,
        notes=notes,
    )
    # said when it moves the weights (falcon: every linear); a small router's (Llama 4) is counted, not said
    if quant != "none" and model.unquantizable_linear_params * 100 > model.linear_weight_params:
        notes.append(unquantized_linears_note(model, kbit_prep, dtype))
    if model.model_type == "gemma4_text":
        notes += gemma4_notes(model, grad_ckpt, bool(uses_lora and params))
    if model.model_type == "gemma3n_text" and quant != "none":  # spec/gemma3n.py UNQUANTIZABLE
        notes.append("Gemma 3n: AltUp's correction_coefs / prediction_coefs clamp their weight in training, which "
                     "fails on a bitsandbytes weight: estimated unquantized (llm_int8_skip_modules)")  # fmt: skip
    notes += contradictions(
        model, method, quant, attn, seq, kbit_prep, double_quant, gpu_compute_capability, set(explicit)
    )
    if method == "freeze" and not 1 <= freeze_trainable_layers <= model.num_hidden_layers:
        raise VramplanError(
            f"--freeze-trainable-layers must be between 1 and {model.num_hidden_layers} "
            f"(layers of {model.name}), got {freeze_trainable_layers!r}"
        )
    loss = stage_loss(loss, stage, set(explicit), str(recipe), notes)
    kernels = resolve_lora_kernels(lora_kernels, method, dora, peft_method.name, notes)
    layer_offload = layer_offload_setting(
        layer_offload, method, grad_ckpt, checkpoint is not None, model.from_table, notes
    )
    stage_spec, stage_notes = resolve_stage(uses_lora=uses_lora, **stage)
    notes += stage_notes
    return TrainSpec(
        peft=peft_method,
        stage=stage_spec,
        method=method,  # type: ignore[arg-type]
        dtype=dtype,  # type: ignore[arg-type]
        mixed_precision=mixed_precision,  # type: ignore[arg-type]
        quant=quant,  # type: ignore[arg-type]
        double_quant=bool(double_quant) and quant in ("nf4", "fp4"),
        kbit_prep=bool(kbit_prep) and quant != "none",
        batch=batch,
        seq=seq,
        grad_accum=grad_accum,
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
        loss=loss,
        packing=bool(packing),
        liger_kernels=bool(liger_kernels),
        recipe=str(recipe),
        notes=tuple(notes),
        image_tokens=int(image_tokens or 0),
        lora_layers=selection.layers,
        lora_embeddings=selection.embeddings,
        modules_to_save=saved,
        target_parameters=params,
        optim_rank=int(optim_rank),
        checkpoint=checkpoint,
        activation_offload=activation_offload,
        layer_offload=layer_offload,
        stack=stack,
        lora_kernels=kernels,
    )
