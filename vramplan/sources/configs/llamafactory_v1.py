"""LLaMA-Factory's v1 config format (`llamafactory-cli` v1; examples/v1): `model:`, `peft_config:`,
`quant_config:`, `dist_config:`, `optim_config:`, `micro_batch_size:`, `cutoff_len:`.

Read from src/llamafactory/v1/config/{model_args,training_args,data_args}.py (hiyouga/LLaMA-Factory @ 1212919 /
00577a8): each `*_config` is a plugin mapping named by `name`; no `peft_config` is full fine-tuning;
micro_batch_size defaults to 1, bf16 to false, flash_attn to sdpa. Settings v1 leaves to its plugins and that
vramplan has no v1 default for (gradient checkpointing, the load dtype) keep vramplan's defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vramplan.sources.configs.reader import FileSettings, Reader, Unmodeled, is_set, shown_value

_V1_ATTN = {"sdpa": "sdpa", "eager": "eager", "flash_attention_2": "flash_attention_2", "fa2": "flash_attention_2"}
_V1_UNMODELED = ("cp_size", "ep_size")  # context / expert parallelism, above 1


def _plugin(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    return value if isinstance(value, Mapping) else {}


# LLaMA-Factory v1 applies Liger only to these model types (kernels/liger_kernel_ops.py _LIGER_FN_BY_MODEL_TYPE)
_LIGER_MODELS = ("qwen3",)


def _kernels(r: Reader, kernels: Mapping[str, Any], model: str) -> None:
    """`kernel_config: {name: ...}` (plugins/model_plugins/kernels/interface.py `apply_kernels`, comma-separated
    names): `auto` applies the NPU kernels only (`_AUTO_KERNELS` has no CUDA entry): nothing on a GPU;
    `liger_kernel` calls `apply_liger_kernel_to_<qwen3...>` with its defaults (RoPE, RMSNorm, SwiGLU, fused
    linear cross-entropy) on Qwen3 / Qwen3.5 types and leaves other models alone."""
    if not kernels:
        return
    names = [n.strip() for n in str(kernels.get("name") or "").split(",") if n.strip()]
    for name in names:
        if name == "auto":
            r.notes.append("kernel_config name auto: LLaMA-Factory v1's automatic kernels are NPU ones, none on a GPU")
        elif name == "liger_kernel" and any(k in model.lower() for k in _LIGER_MODELS):
            r.set("liger_kernels", True)
            if not kernels.get("require_logits"):
                r.set("loss", "liger")
        elif name == "liger_kernel":
            r.notes.append(f"kernel_config name liger_kernel: LLaMA-Factory v1 applies it to Qwen3 types only, "
                           f"not {model or 'this model'}")  # fmt: skip
        else:
            r.unmodeled.append(Unmodeled("kernel_config", name, "estimated as the unfused ops"))


def _batching(r: Reader, strategy: str) -> None:
    """`batching_strategy` (plugins/trainer_plugins/batching.py): padding_free packs micro_batch_size samples,
    each cut to cutoff_len, into one row with position_ids (`_pack_padding_free_samples`); dynamic_padding_free
    packs up to micro_batch_size × cutoff_len tokens into one row; dynamic_batching pads rows within that token
    budget. Each holds at most micro_batch_size × cutoff_len tokens: the estimate's batch × seq."""
    if strategy in ("padding_free", "dynamic_padding_free"):
        r.set("packing", True)
        if r.settings.get("attn", "sdpa") == "sdpa" and r.settings.get("batch", 1) > 1:
            note = "SDPA's packed-sequence mask covers the one row of batch × seq tokens: estimated per sample"
            r.unmodeled.append(Unmodeled("batching_strategy", strategy, note))
    elif strategy == "dynamic_batching":
        r.notes.append("batching_strategy=dynamic_batching: padded rows within micro_batch_size × cutoff_len "
                       "tokens, estimated at that budget (the worst case)")  # fmt: skip
    elif strategy != "normal":
        r.skip("batching_strategy", "estimated padded to cutoff_len")


def read_llamafactory_v1(data: Mapping[str, Any], path: str) -> FileSettings:
    r = Reader(data, path, "llamafactory-v1")
    peft, quant, dist, optim = (
        _plugin(data, k) for k in ("peft_config", "quant_config", "dist_config", "optim_config")
    )
    kind = str(peft.get("name") or "full").lower()
    bits = quant.get("quantization_bit")
    if quant and str(quant.get("name") or "bnb").lower() in ("bnb", "auto", "bitsandbytes") and bits in (4, 8):
        r.set("quant", "int8" if bits == 8 else "nf4")
    elif quant:
        r.skip("quant_config", "estimated unquantized", "quant")
    if kind == "lora":
        r.set("method", "qlora" if "quant" in r.settings else "lora")
        for key, setting, typ in (("r", "lora_rank", int), ("lora_alpha", "lora_alpha", int),
                                  ("lora_dropout", "lora_dropout", float)):  # fmt: skip
            if peft.get(key) is not None:
                r.set(setting, typ(peft[key]))
        target = peft.get("target_modules")
        if is_set(target):
            names = target if isinstance(target, list) else str(target).split(",")
            joined = ",".join(str(n).strip() for n in names)
            r.set("lora_target", "all-linear" if joined in ("all", "all-linear") else joined)
    elif kind == "freeze":
        r.set("method", "freeze")
        if peft.get("freeze_trainable_layers") is not None:
            r.set("freeze_trainable_layers", abs(int(peft["freeze_trainable_layers"])))
        if str(peft.get("freeze_trainable_modules") or "all") != "all" or is_set(peft.get("freeze_extra_modules")):
            r.skip("peft_config", "freeze_trainable_modules / freeze_extra_modules estimated as all modules")
    elif kind == "full":
        r.set("method", "full")
    else:
        r.skip("peft_config", f"{kind} estimated as LoRA", "method")
        r.set("method", "lora")
    r.copy("micro_batch_size", "batch", int)
    r.copy("cutoff_len", "seq", int)
    if r.has("bf16"):
        r.set("mixed_precision", "bf16" if r.typed("bf16", bool) else "no")
    if r.has("flash_attn"):
        r.set("attn", _V1_ATTN.get(str(data["flash_attn"]).lower(), "sdpa"))
    name = str(optim.get("name") or "").lower()
    if name:
        if name in ("muon", "adam_mini"):
            r.set("optim", name)
        elif name not in ("adamw", "adamw_torch"):
            r.skip("optim_config", f"{name} estimated with --optim", "optim")
    engine = str(dist.get("name") or "").lower()
    if engine.startswith("fsdp"):
        from vramplan.sources.configs.deepspeed import read_fsdp

        d = read_fsdp(None, {k: v for k, v in dist.items() if k != "name"})
        r.parallel.update(d.settings)
        r.notes += d.notes
    elif engine == "deepspeed":
        from vramplan.sources.configs.deepspeed import read_deepspeed

        d = read_deepspeed(dist.get("config_file") or {}, path)
        if d is None:
            r.skip("dist_config", "DeepSpeed file not found here nor a shipped one: pass --strategy", "strategy")
        else:
            r.parallel.update(d.settings)
            r.notes += d.notes
    elif engine:
        r.skip("dist_config", f"{engine} not planned: pass --strategy", "strategy")
    _kernels(r, _plugin(data, "kernel_config"), str(data.get("model") or ""))
    _batching(r, str(data.get("batching_strategy") or "normal"))
    dataset = str(data.get("train_dataset") or "")
    if "dpo" in dataset.lower():
        # v1 picks the trainer by command (launcher.py `llamafactory-cli dpo` -> trainers/dpo_trainer.py); a
        # preference dataset means that command. DPOTrainer: pref_loss sigmoid (a reference: the adapter
        # disabled under LoRA, a deep copy otherwise, `_init_ref_model`), orpo / simpo (none); the logits are
        # materialized (`_extract_chosen_rejected_logps`)
        loss = str(data.get("pref_loss") or "sigmoid").lower()
        r.set("stage", {"orpo": "orpo", "simpo": "simpo"}.get(loss, "dpo"))
        r.set("fused_lm_head", False)
        r.copy("pref_beta", "pref_beta", float)
        r.notes.append(f"train_dataset={dataset}: preference pairs, run as `llamafactory-cli dpo`")
    for key in _V1_UNMODELED:
        if r.has(key) and str(data[key]) not in ("1", "None"):
            what = "sequence split across ranks" if key == "cp_size" else "experts split across ranks"
            r.skip(key, f"{what}: estimated whole on one GPU (an upper bound)")
    if _plugin(data, "init_config"):
        r.notes.append(
            f"init_config={shown_value(data['init_config'])}: how weights are loaded, no memory change in training"
        )
    for setting, value in (("batch", 1), ("mixed_precision", "no"), ("method", "full")):
        r.default(setting, value)
    return r.done("llamafactory_v1", data.get("model"))
