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

from vramplan.sources.configs.reader import FileSettings, Reader, is_set, shown_value

_V1_ATTN = {"sdpa": "sdpa", "eager": "eager", "flash_attention_2": "flash_attention_2", "fa2": "flash_attention_2"}
_V1_UNMODELED = ("cp_size", "ep_size")  # context / expert parallelism, above 1


def _plugin(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    return value if isinstance(value, Mapping) else {}


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
    kernels = _plugin(data, "kernel_config")
    if kernels:
        r.skip("kernel_config", "fused kernels estimated as the unfused ops")
    strategy = str(data.get("batching_strategy") or "normal")
    if strategy != "normal":
        r.skip("batching_strategy", "estimated padded to cutoff_len")
    dataset = str(data.get("train_dataset") or "")
    if "dpo" in dataset.lower():
        r.skip("train_dataset", "preference pairs estimated as SFT")
    for key in _V1_UNMODELED:
        if r.has(key) and str(data[key]) not in ("1", "None"):
            r.skip(key, "estimated without context / expert parallelism")
    if _plugin(data, "init_config"):
        r.notes.append(
            f"init_config={shown_value(data['init_config'])}: how weights are loaded, no memory change in training"
        )
    for setting, value in (("batch", 1), ("mixed_precision", "no"), ("method", "full")):
        r.default(setting, value)
    return r.done("llamafactory_v1", data.get("model"))
