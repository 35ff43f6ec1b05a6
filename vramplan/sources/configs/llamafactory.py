"""LLaMA-Factory YAML (hparams/*_args.py, LLaMA-Factory commit ff6d4d1)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vramplan.errors import did_you_mean
from vramplan.sources.configs.reader import FileSettings, Reader, Unmodeled
from vramplan.sources.configs.stages import read_llamafactory_stage

_LF_DEFAULTS = (
    ("lora_rank", 8), ("lora_dropout", 0.0), ("lora_target", "all-linear"), ("seq", 2048), ("batch", 8),
    ("grad_accum", 1), ("grad_ckpt", True), ("kbit_prep", False), ("loss", "hf"),
)  # fmt: skip
_LF_ATTN = {"auto": "sdpa", "sdpa": "sdpa", "fa2": "flash_attention_2", "disabled": "eager"}
_LF_UNMODELED = (
    "neftune_noise_alpha", "use_llama_pro", "use_unsloth",
    "shift_attn", "mixture_of_depths", "upcast_layernorm", "upcast_lmhead_output",
    "freeze_extra_modules", "torch_compile", "rope_scaling",
)  # fmt: skip


def read_llamafactory(data: Mapping[str, Any], path: str) -> FileSettings:
    """`llamafactory-cli train x.yaml`. Defaults for keys left out (finetuning_args.py, data_args.py, HF
    TrainingArguments): LoRA, lora_rank 8, lora_dropout 0, lora_target all, freeze_trainable_layers 2,
    cutoff_len 2048, batch 8, gradient checkpointing on (model_utils/checkpointing.py), no
    prepare_model_for_kbit_training, no autocast without bf16/fp16. Trainable weights are upcast to fp32
    unless pure_bf16 (model/adapter.py `cast_trainable_params_to_fp32`): full tuning is fp32 + bf16 autocast.
    """
    r = Reader(data, path, "llamafactory")
    ft = str(data.get("finetuning_type") or "lora")
    if ft not in ("lora", "oft", "full", "freeze"):
        raise did_you_mean(ft, ("lora", "oft", "full", "freeze"), "finetuning_type", path)
    bits = r.typed("quantization_bit", int) if r.has("quantization_bit") else None
    if bits is not None:
        quant = "int8" if bits == 8 else str(data.get("quantization_type") or "nf4")
        r.set("quant", quant)
        if str(data.get("quantization_method") or "bnb").lower() not in ("bnb", "bitsandbytes"):
            r.skip("quantization_method", f"estimated as bitsandbytes {quant}", "quant")
        elif bits not in (4, 8):
            r.skip("quantization_bit", f"estimated as bitsandbytes {quant}", "quant")
        r.copy("double_quantization", "double_quant", bool)
    if ft == "oft":
        r.set("peft", "oft")
        r.copy("oft_block_size", "block_size", int)
    method = {"full": "full", "freeze": "freeze"}.get(ft, "qlora" if bits else "lora")
    (r.set if r.has("finetuning_type") or bits else r.default)("method", method)
    read_llamafactory_stage(r, data)
    r.copy("lora_rank", "lora_rank", int)
    r.copy("lora_alpha", "lora_alpha", int)
    r.copy("lora_dropout", "lora_dropout", float)
    r.names("additional_target", "modules_to_save")  # LLaMA-Factory: PEFT modules_to_save
    if r.has("lora_target"):
        target = ",".join(t.strip() for t in str(data["lora_target"]).split(","))
        r.set("lora_target", "all-linear" if target == "all" else target)
    r.copy("use_dora", "dora", bool)
    if r.has("freeze_trainable_layers"):
        n = r.typed("freeze_trainable_layers", int)
        if n < 0:
            note = "the first layers train; estimated as the last"
            r.skip("freeze_trainable_layers", note, "freeze_trainable_layers")
        r.set("freeze_trainable_layers", abs(n))
    if str(data.get("freeze_trainable_modules") or "all") != "all":
        r.skip("freeze_trainable_modules", "estimated as all modules of the trainable layers")
    r.copy("cutoff_len", "seq", int)
    r.copy("per_device_train_batch_size", "batch", int)
    r.copy("gradient_accumulation_steps", "grad_accum", int)
    pure, bf16, fp16 = (r.has(k) and r.typed(k, bool) for k in ("pure_bf16", "bf16", "fp16"))
    if pure:
        r.set("dtype", "bf16")
        r.set("mixed_precision", "no")
        if method in ("lora", "qlora"):
            r.skip("pure_bf16", "LoRA weights kept in bf16; estimated in fp32", "dtype")
    else:
        if bf16 or fp16:
            r.set("mixed_precision", "bf16" if bf16 else "fp16")
            r.set("dtype", "bf16" if bf16 else "fp16")  # model_args.compute_dtype: the load dtype
        else:
            r.default("mixed_precision", "no")
        if method == "full":
            r.set("dtype", "fp32")
        elif method == "freeze":
            r.unmodeled.append(Unmodeled("finetuning_type", "freeze", "fp32 upcast of trainable layers"))
    if r.has("optim"):
        r.optim("optim")
    if r.has("flash_attn"):
        fa = str(data["flash_attn"])
        if fa == "fa3":
            r.skip("flash_attn", "estimated as flash_attention_2", "attn")
        elif fa not in _LF_ATTN:
            raise did_you_mean(fa, (*_LF_ATTN, "fa3"), "flash_attn", path)
        r.set("attn", _LF_ATTN.get(fa, "flash_attention_2"))
    if r.has("disable_gradient_checkpointing"):
        r.set("grad_ckpt", not r.typed("disable_gradient_checkpointing", bool))
    if r.has("use_unsloth_gc") and r.typed("use_unsloth_gc", bool):  # model_utils/checkpointing.py: Unsloth's
        r.set("activation_offload", "checkpoints")  # offloaded checkpointing (layer inputs to the host)
    _optimizers(r, data)
    r.no_memory_change(("loraplus_lr_ratio", "loraplus_lr_embedding", "use_rslora", "pissa_init", "pissa_iter",
                        "pissa_convert"), "LoRA+ learning rates, rsLoRA scaling and PiSSA initialisation")  # fmt: skip
    r.distributed()
    r.skip_ifis_set(_LF_UNMODELED)
    # packing (data_args.py; None = on for stage pt only) and neat_packing (packing without cross-attention,
    # padding-free with position_ids) both fill every micro-batch with cutoff_len real tokens
    packed = any(r.has(k) and r.typed(k, bool) for k in ("packing", "neat_packing"))
    r.set("packing", packed) if r.has("packing") or r.has("neat_packing") else r.default(
        "packing", str(data.get("stage") or "sft") == "pt"
    )
    if r.has("enable_liger_kernel") and r.typed("enable_liger_kernel", bool):
        # model_utils/liger_kernel.py: apply_liger_kernel_to_<model> with its defaults (fused linear CE on,
        # off only when a stage needs the logits: not sft / pt)
        if str(data.get("stage") or "sft") in ("sft", "pt"):
            r.set("loss", "liger")
        r.set("liger_kernels", True)
    for setting, value in _LF_DEFAULTS:
        r.default(setting, value)
    return r.done("llamafactory", data.get("model_name_or_path"))


# ---------------------------------------------------------------- axolotl


def _optimizers(r: Reader, data: Mapping[str, Any]) -> None:
    """LLaMA-Factory's optimizer switches (hparams/finetuning_args.py; model/.../trainer_utils.py
    `create_custom_optimizer`): GaLore / APOLLO wrap the `optim` (adamw_torch, adamw_8bit, adafactor) at
    galore_rank / apollo_rank 16, layer-wise with *_layerwise; BAdam (mode layer) trains one decoder layer at a
    time; Adam-mini, Muon."""
    base = str(data.get("optim") or "adamw_torch")
    for flag, name, rank_key in (("use_galore", "galore", "galore_rank"), ("use_apollo", "apollo", "apollo_rank")):
        if r.has(flag) and r.typed(flag, bool):
            kind = {"adamw_8bit": "adamw_8bit", "adamw_bnb_8bit": "adamw_8bit", "adafactor": "adafactor"}.get(
                base, "adamw"
            )
            optim = f"{name}_{kind if name == 'galore' else 'adamw'}"
            if r.has(f"{name}_layerwise") and r.typed(f"{name}_layerwise", bool):
                optim += "_layerwise"
            r.set("optim", optim)
            r.set("optim_rank", r.typed(rank_key, int) if r.has(rank_key) else 16)
            if str(data.get(f"{name}_target") or "all") != "all":
                r.notes.append(f"{name}_target={data[f'{name}_target']}: estimated on every Linear of the layers")
    if r.has("use_badam") and r.typed("use_badam", bool):
        r.set("optim", "badam")
        r.set("method", "freeze")
        r.set("freeze_trainable_layers", 1)
        if str(data.get("badam_mode") or "layer") != "layer":
            r.notes.append("badam_mode=ratio: estimated as mode layer (one decoder layer active)")
    if r.has("use_adam_mini") and r.typed("use_adam_mini", bool):
        r.set("optim", "adam_mini")
    if r.has("use_muon") and r.typed("use_muon", bool):
        r.set("optim", "muon")
