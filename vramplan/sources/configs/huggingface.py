"""Hugging Face files: a transformers 5.24 `TrainingArguments.to_json_string()` dump (TRL's SFTConfig adds
max_length, packing), a PEFT 0.21.2 `adapter_config.json`, and a model's `config.json`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vramplan.sources.configs.reader import FileSettings, Reader
from vramplan.sources.configs.stages import read_trl_stage

_TA_UNMODELED = (
    "torch_compile", "neftune_noise_alpha", "auto_find_batch_size",
)  # fmt: skip


def read_training_args(data: Mapping[str, Any], path: str) -> FileSettings:
    """`TrainingArguments.to_json_string()` (transformers 5.24; TRL's SFTConfig adds max_length, packing).
    transformers 5 writes both `activation_checkpointing` and its deprecated alias `gradient_checkpointing`.
    The load dtype is not in it (vramplan's default applies); bf16/fp16 here are the autocast."""
    r = Reader(data, path, "transformers")
    r.copy("per_device_train_batch_size", "batch", int)
    r.copy("gradient_accumulation_steps", "grad_accum", int)
    if r.has("bf16") or r.has("fp16"):
        bf16, fp16 = (r.has(k) and r.typed(k, bool) for k in ("bf16", "fp16"))
        r.set("mixed_precision", "bf16" if bf16 else "fp16" if fp16 else "no")
    if r.has("optim"):
        r.optim("optim")
        r.optim_args()
    key = next((k for k in ("activation_checkpointing", "gradient_checkpointing") if r.has(k)), None)
    if key:
        r.set("grad_ckpt", r.typed(key, bool))
    if r.has("activation_offloading") and r.typed("activation_offloading", bool):  # TRL SFTConfig / transformers
        r.set("activation_offload", "all")
    r.no_memory_change(("gradient_checkpointing_kwargs",), "use_reentrant picks the checkpoint implementation")
    key = next((k for k in ("max_length", "max_seq_length") if r.has(k)), None)
    if key:
        r.copy(key, "seq", int)
    read_trl_stage(r, data)
    r.distributed(fsdp_config_alone=False)
    r.skip_ifis_set(_TA_UNMODELED)
    # TRL's SFTConfig: packing, padding_free (packing_strategy "bfd" implies padding-free); both fill the batch
    packed = any(r.has(k) and r.typed(k, bool) for k in ("packing", "padding_free"))
    if r.has("packing") or r.has("padding_free"):
        r.set("packing", packed)
    if r.has("use_liger_kernel") and r.typed("use_liger_kernel", bool):
        # transformers applies Liger with fused linear CE on; TRL >= 1.15's SFTTrainer turns it off (its own
        # fused head); the layer kernels (RMSNorm, SwiGLU, RoPE) are modelled
        if "packing" not in data:
            fused = (data.get("liger_kernel_config") or {}).get("fused_linear_cross_entropy", True)
            if fused:
                r.set("loss", "liger")
        r.set("liger_kernels", True)
    for setting, value in (("batch", 8), ("grad_accum", 1), ("mixed_precision", "no"), ("grad_ckpt", False)):
        r.default(setting, value)
    return r.done("training_args", None)


_PEFT_UNMODELED = (
    "layers_to_transform", "rank_pattern", "alpha_pattern",
    "trainable_token_indices", "layer_replication", "lora_bias",
)  # fmt: skip


def read_peft_adapter(data: Mapping[str, Any], path: str) -> FileSettings:
    """A PEFT `adapter_config.json` (LoraConfig.save_pretrained, peft 0.21.2): r, lora_alpha, lora_dropout,
    target_modules (a list; a string is a regex unless `all-linear`), use_dora, base_model_name_or_path."""
    r = Reader(data, path, "peft")
    from vramplan.spec.peft_method import PEFT_METHODS

    peft_type = str(data.get("peft_type") or "LORA").lower()
    if peft_type in PEFT_METHODS and peft_type != "lora":
        r.set("peft", peft_type)
        r.copy("num_virtual_tokens", "num_virtual_tokens", int)
        r.copy("oft_block_size" if peft_type == "oft" else "boft_block_size", "block_size", int)
        if peft_type == "adalora":
            r.copy("init_r", "lora_rank", int)
    elif peft_type != "lora":
        r.skip("peft_type", "estimated as LoRA", "method")
    r.set("method", "lora")
    r.copy("r", "lora_rank", int)
    r.copy("lora_alpha", "lora_alpha", int)
    r.copy("lora_dropout", "lora_dropout", float)
    tm = data.get("target_modules")
    if isinstance(tm, list) and tm:
        r.set("lora_target", ",".join(str(t) for t in tm))
    elif isinstance(tm, str) and tm:  # "all-linear", or a regex PEFT full-matches on module names
        r.set("lora_target", tm)
    r.copy("use_dora", "dora", bool)
    r.names("modules_to_save", "modules_to_save")
    r.names("target_parameters", "target_parameters")
    r.skip_ifis_set(_PEFT_UNMODELED)
    if str(data.get("bias") or "none") != "none":
        r.skip("bias", "trainable biases not modeled")
    for setting, value in (("lora_rank", 8), ("lora_alpha", 8), ("lora_dropout", 0.0), ("lora_target", "qv")):
        r.default(setting, value)  # LoraConfig defaults; target_modules None = PEFT's per-model default
    return r.done("peft_adapter", data.get("base_model_name_or_path"))


def read_model_config(data: Mapping[str, Any], path: str) -> FileSettings:
    """A model's `config.json`: the model itself, and its `quantization_config` (a pre-quantized checkpoint
    loads quantized whatever the training config says)."""
    r = Reader(data, path, "transformers")
    if isinstance(data.get("quantization_config"), Mapping):
        r.quantization_config(data["quantization_config"])
    return r.done("model_config", path)


def read_accelerate_config(data: Mapping[str, Any], path: str) -> FileSettings:
    """An accelerate config YAML (`accelerate launch --config_file`): only its distributed part
    (sources/configs/deepspeed.py `read_accelerate`); `mixed_precision` is the autocast."""
    from vramplan.sources.configs.deepspeed import read_accelerate

    r = Reader(data, path, "accelerate")
    d = read_accelerate(data, path)
    r.parallel.update(d.settings)
    r.notes += d.notes
    mp = str(data.get("mixed_precision") or "").lower()
    if mp in ("bf16", "fp16", "no"):
        r.set("mixed_precision", mp)
    return r.done("accelerate", None)
