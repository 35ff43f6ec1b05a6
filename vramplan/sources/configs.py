"""The configs people already have, read into `vramplan.spec.resolve_train`'s keyword arguments and a model.

One reader per format, each returning a `FileSettings`: LLaMA-Factory YAML (hparams/*_args.py, LLaMA-Factory
commit ff6d4d1), axolotl YAML (utils/schemas/*.py, axolotl commit 067b021), a transformers 5.24
`TrainingArguments.to_json_string()` dump (TRL's SFTConfig adds max_length, packing), a PEFT 0.21.2
`adapter_config.json`, and a model's `config.json` (its `quantization_config`); `vramplan.sources.inputs` layers them
under the flags. Unknown keys are ignored; known keys whose values we do not model become `Unmodeled`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vramplan.errors import VramplanError, did_you_mean
from vramplan.sources.files import check_name, is_dir, parse_json, read_text, short
from vramplan.spec import OPTIM_ALIASES, OPTIMIZERS

Format = Literal["llamafactory", "axolotl", "training_args", "peft_adapter", "model_config"]


@dataclass(frozen=True, slots=True)
class Unmodeled:
    """A file setting the estimate does not model. `affects`: the resolve_train keyword it bears on ("" if
    none); a flag that sets that keyword makes the entry moot."""

    key: str
    value: str
    note: str = ""
    affects: str = ""

    def __str__(self) -> str:
        return f"{self.key}={self.value}" + (f" ({self.note})" if self.note else "")


@dataclass(frozen=True, slots=True)
class FileSettings:
    """One file read: resolve_train keywords, where each came from (`file:<path>` or `default:<tool>`)."""

    path: str
    format: Format
    settings: Mapping[str, Any]
    sources: Mapping[str, str]
    not_modeled: tuple[Unmodeled, ...]
    model: str | None


def _show(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (bool, list, dict)) else str(value)
    return text if len(text) <= 60 else text[:59] + "…"


def _set(value: Any) -> bool:
    """YAML's `key:` (None), false and empty collections mean the option is off."""
    return value not in (None, False, "", [], {})


class _Reader:
    """Collects one file's settings; `tool` names the program whose defaults fill keys the file leaves out."""

    def __init__(self, data: Mapping[str, Any], path: str, tool: str) -> None:
        self.data, self.path, self.tool = data, path, tool
        self.settings: dict[str, Any] = {}
        self.sources: dict[str, str] = {}
        self.unmodeled: list[Unmodeled] = []

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def set(self, setting: str, value: Any) -> None:
        self.settings[setting] = value
        self.sources[setting] = f"file:{self.path}"

    def default(self, setting: str, value: Any) -> None:
        if setting not in self.settings:
            self.settings[setting] = value
            self.sources[setting] = f"default:{self.tool}"

    def typed(self, key: str, kind: type) -> Any:
        v = self.data[key]
        if kind is bool:
            if isinstance(v, bool) or v in (0, 1):
                return bool(v)
            if str(v).lower() in ("true", "false"):
                return str(v).lower() == "true"
        elif kind is int and not isinstance(v, bool):
            if isinstance(v, int) or (isinstance(v, float) and v.is_integer()):
                return int(v)
            if isinstance(v, str) and re.fullmatch(r"-?[0-9]{1,18}", v.strip()):  # ASCII digits only ('²')
                return int(v)
        elif kind is float and not isinstance(v, bool):
            try:
                return float(v)
            except (TypeError, ValueError):
                pass
        what = {bool: "true or false", int: "an integer", float: "a number"}[kind]
        raise VramplanError(f"{self.path}: {key} must be {what}, got {v!r}")

    def copy(self, key: str, setting: str, kind: type) -> None:
        if self.has(key):
            self.set(setting, self.typed(key, kind))

    def skip(self, key: str, note: str = "", affects: str = "") -> None:
        self.unmodeled.append(Unmodeled(key, _show(self.data.get(key)), note, affects))

    def skip_if_set(self, keys: Sequence[str]) -> None:
        for key in keys:
            if _set(self.data.get(key)):
                self.skip(key)

    def optim(self, key: str) -> None:
        name = str(self.data[key])
        name = {"adamw_hf": "adamw_torch", "adamw_apex_fused": "adamw_torch"}.get(name, name)
        if OPTIM_ALIASES.get(name, name) in OPTIMIZERS:
            self.set("optim", name)
        else:
            self.skip(key, "optimizer not modeled; estimated with --optim", "optim")

    def quantization_config(self, qc: Mapping[str, Any]) -> None:
        """transformers' `quantization_config` (BitsAndBytesConfig.to_dict(); GPTQ/AWQ/... by their bits)."""
        method = str(qc.get("quant_method") or "bitsandbytes").lower()
        if method == "bitsandbytes":
            if qc.get("load_in_4bit"):
                quant = qc.get("bnb_4bit_quant_type") or "fp4"  # BitsAndBytesConfig's default
                self.set("quant", str(quant))
                self.set("double_quant", bool(qc.get("bnb_4bit_use_double_quant")))
            elif qc.get("load_in_8bit"):
                self.set("quant", "int8")
            return
        bits = qc.get("bits") or qc.get("w_bit") or (8 if method == "fp8" else None)
        approx = {4: "nf4", 8: "int8"}.get(bits) if isinstance(bits, int) else None
        self.unmodeled.append(
            Unmodeled(
                "quantization_config.quant_method", method,
                f"estimated as bitsandbytes {approx}" if approx else "estimated unquantized", "quant",
            )
        )  # fmt: skip
        if approx:
            self.set("quant", approx)
            self.set("double_quant", False)

    def done(self, fmt: Format, model: Any) -> FileSettings:
        return FileSettings(
            self.path, fmt, dict(self.settings), dict(self.sources), tuple(self.unmodeled),
            str(model) if _set(model) else None,
        )  # fmt: skip


# ---------------------------------------------------------------- LLaMA-Factory

_LF_DEFAULTS = (
    ("lora_rank", 8), ("lora_dropout", 0.0), ("lora_target", "all-linear"), ("seq", 2048), ("batch", 8),
    ("grad_accum", 1), ("grad_ckpt", True), ("kbit_prep", False),
)  # fmt: skip
_LF_ATTN = {"auto": "sdpa", "sdpa": "sdpa", "fa2": "flash_attention_2", "disabled": "eager"}
_LF_UNMODELED = (
    "deepspeed", "fsdp", "packing", "neat_packing", "neftune_noise_alpha", "use_galore", "use_apollo",
    "use_badam", "use_adam_mini", "use_muon", "use_llama_pro", "use_unsloth", "use_unsloth_gc",
    "enable_liger_kernel", "shift_attn", "mixture_of_depths", "upcast_layernorm", "upcast_lmhead_output",
    "additional_target", "freeze_extra_modules", "torch_compile", "rope_scaling",
)  # fmt: skip


def read_llamafactory(data: Mapping[str, Any], path: str) -> FileSettings:
    """`llamafactory-cli train x.yaml`. Defaults for keys left out (finetuning_args.py, data_args.py, HF
    TrainingArguments): LoRA, lora_rank 8, lora_dropout 0, lora_target all, freeze_trainable_layers 2,
    cutoff_len 2048, batch 8, gradient checkpointing on (model_utils/checkpointing.py), no
    prepare_model_for_kbit_training, no autocast without bf16/fp16. Trainable weights are upcast to fp32
    unless pure_bf16 (model/adapter.py `cast_trainable_params_to_fp32`): full tuning is fp32 + bf16 autocast.
    """
    r = _Reader(data, path, "llamafactory")
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
        r.skip("finetuning_type", "OFT estimated as LoRA", "method")
    method = {"full": "full", "freeze": "freeze"}.get(ft, "qlora" if bits else "lora")
    (r.set if r.has("finetuning_type") or bits else r.default)("method", method)
    if str(data.get("stage") or "sft") not in ("sft", "pt"):
        r.skip("stage", "reference/reward models not estimated")
    r.copy("lora_rank", "lora_rank", int)
    r.copy("lora_alpha", "lora_alpha", int)
    r.copy("lora_dropout", "lora_dropout", float)
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
    r.skip_if_set(_LF_UNMODELED)
    for setting, value in _LF_DEFAULTS:
        r.default(setting, value)
    return r.done("llamafactory", data.get("model_name_or_path"))


# ---------------------------------------------------------------- axolotl

_AX_ATTN = {"eager": "eager", "sdpa": "sdpa", "flash_attention_2": "flash_attention_2"}
_AX_UNMODELED = (
    "deepspeed", "fsdp", "fsdp_config", "sample_packing", "neftune_noise_alpha", "plugins", "torch_compile",
    "activation_offloading", "layer_offloading", "lora_modules_to_save", "relora", "gptq", "rl",
    "s2_attention", "unfrozen_parameters", "peft_layers_to_transform", "lora_target_parameters",
    "unsloth_lora_mlp", "unsloth_lora_qkv", "unsloth_lora_o", "unsloth_cross_entropy_loss", "lora_mlp_kernel",
    "lora_qkv_kernel", "lora_o_kernel", "cut_cross_entropy", "chunked_cross_entropy",
    "flash_attn_cross_entropy", "fp8",
)  # fmt: skip


def read_axolotl(data: Mapping[str, Any], path: str) -> FileSettings:
    """`axolotl train x.yml`. Defaults (utils/schemas/{config,training,peft}.py): no adapter = full tuning,
    lora_dropout 0, sequence_len 512, micro_batch_size 1, adamw_torch_fused, no gradient checkpointing;
    4-bit is nf4 + double quant (loaders/model.py); bf16 `auto` = bf16 where supported, else fp16
    (utils/config `resolve_dtype`), as vramplan's default; bf16 false without fp16 loads fp32.
    """
    r = _Reader(data, path, "axolotl")
    adapter = str(data.get("adapter") or "").lower()
    b4, b8 = (r.has(k) and r.typed(k, bool) for k in ("load_in_4bit", "load_in_8bit"))
    bnb = data.get("bnb_config_kwargs") or {}
    if not isinstance(bnb, Mapping):
        raise VramplanError(f"{path}: bnb_config_kwargs must be a mapping (key: value), got {_show(bnb)}")
    quant = None
    if adapter and (adapter == "qlora" or b4):
        quant = str(bnb.get("bnb_4bit_quant_type") or "nf4")
        r.set("quant", quant)
        if "bnb_4bit_use_double_quant" in bnb:
            r.set("double_quant", bool(bnb["bnb_4bit_use_double_quant"]))
    elif adapter and b8:
        quant = "int8"
        r.set("quant", quant)
    elif b4 or b8:
        r.skip("load_in_4bit" if b4 else "load_in_8bit", "no adapter: estimated unquantized", "quant")
    if adapter not in ("", "lora", "qlora"):
        r.skip("adapter", "estimated as LoRA", "method")
    method = ("qlora" if quant else "lora") if adapter else "full"
    (r.set if r.has("adapter") else r.default)("method", method)
    r.copy("lora_r", "lora_rank", int)
    r.copy("lora_alpha", "lora_alpha", int)
    r.copy("lora_dropout", "lora_dropout", float)
    modules = data.get("lora_target_modules")
    if r.has("lora_target_linear") and r.typed("lora_target_linear", bool):
        r.set("lora_target", "all-linear")
    elif _set(modules):
        r.set("lora_target", ",".join(map(str, modules)) if isinstance(modules, list) else str(modules))
    r.copy("peft_use_dora", "dora", bool)
    r.copy("sequence_len", "seq", int)
    r.copy("micro_batch_size", "batch", int)
    r.copy("gradient_accumulation_steps", "grad_accum", int)
    if r.has("optimizer"):
        r.optim("optimizer")
    gc = data.get("gradient_checkpointing")
    if gc is not None:
        r.set("grad_ckpt", _set(gc))
        if isinstance(gc, str):
            r.skip("gradient_checkpointing", "checkpoints offloaded; estimated on the GPU", "grad_ckpt")
    impl = data.get("attn_implementation")
    flags = {"flash_attention": "flash_attention_2", "sdp_attention": "sdpa", "eager_attention": "eager"}
    if impl is None:
        impl = next((v for k, v in flags.items() if r.has(k) and r.typed(k, bool)), None)
    if impl is None and _set(data.get("xformers_attention")):
        impl = "xformers"
    if impl is not None:
        if impl not in _AX_ATTN:
            key = "attn_implementation" if r.has("attn_implementation") else "xformers_attention"
            r.skip(key, "estimated as flash_attention_2 (no S×S scores)", "attn")
        r.set("attn", _AX_ATTN.get(str(impl), "flash_attention_2"))
    bf16 = data.get("bf16", "auto")
    fp16, bfloat16, float16 = (r.has(k) and r.typed(k, bool) for k in ("fp16", "bfloat16", "float16"))
    if bfloat16 or float16:  # "no AMP": weights in that dtype, no autocast
        r.set("dtype", "bf16" if bfloat16 else "fp16")
        r.set("mixed_precision", "no")
    elif bf16 is True or bf16 == "full" or fp16:
        half = "bf16" if bf16 is True or bf16 == "full" else "fp16"
        r.set("dtype", half)
        r.set("mixed_precision", half)
    elif bf16 is False:
        r.set("dtype", "fp16" if b8 else "fp32")
        r.set("mixed_precision", "no")
    r.skip_if_set(_AX_UNMODELED)
    for setting, value in (("lora_dropout", 0.0), ("seq", 512), ("batch", 1), ("grad_accum", 1),
                           ("optim", "adamw_torch_fused"), ("grad_ckpt", False)):  # fmt: skip
        r.default(setting, value)
    return r.done("axolotl", data.get("base_model"))


# ---------------------------------------------------------------- transformers, PEFT, config.json

_TA_UNMODELED = (
    "deepspeed", "fsdp", "torch_compile", "neftune_noise_alpha", "use_liger_kernel", "auto_find_batch_size",
    "optim_target_modules", "packing",
)  # fmt: skip


def read_training_args(data: Mapping[str, Any], path: str) -> FileSettings:
    """`TrainingArguments.to_json_string()` (transformers 5.24; TRL's SFTConfig adds max_length, packing).
    transformers 5 writes both `activation_checkpointing` and its deprecated alias `gradient_checkpointing`.
    The load dtype is not in it (vramplan's default applies); bf16/fp16 here are the autocast."""
    r = _Reader(data, path, "transformers")
    r.copy("per_device_train_batch_size", "batch", int)
    r.copy("gradient_accumulation_steps", "grad_accum", int)
    if r.has("bf16") or r.has("fp16"):
        bf16, fp16 = (r.has(k) and r.typed(k, bool) for k in ("bf16", "fp16"))
        r.set("mixed_precision", "bf16" if bf16 else "fp16" if fp16 else "no")
    if r.has("optim"):
        r.optim("optim")
    key = next((k for k in ("activation_checkpointing", "gradient_checkpointing") if r.has(k)), None)
    if key:
        r.set("grad_ckpt", r.typed(key, bool))
    key = next((k for k in ("max_length", "max_seq_length") if r.has(k)), None)
    if key:
        r.copy(key, "seq", int)
    r.skip_if_set(_TA_UNMODELED)
    for setting, value in (("batch", 8), ("grad_accum", 1), ("mixed_precision", "no"), ("grad_ckpt", False)):
        r.default(setting, value)
    return r.done("training_args", None)


_PEFT_UNMODELED = (
    "modules_to_save", "layers_to_transform", "rank_pattern", "alpha_pattern", "target_parameters",
    "trainable_token_indices", "layer_replication", "lora_bias",
)  # fmt: skip


def read_peft_adapter(data: Mapping[str, Any], path: str) -> FileSettings:
    """A PEFT `adapter_config.json` (LoraConfig.save_pretrained, peft 0.21.2): r, lora_alpha, lora_dropout,
    target_modules (a list; a string is a regex unless `all-linear`), use_dora, base_model_name_or_path."""
    r = _Reader(data, path, "peft")
    if str(data.get("peft_type") or "LORA").upper() != "LORA":
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
    r.skip_if_set(_PEFT_UNMODELED)
    if str(data.get("bias") or "none") != "none":
        r.skip("bias", "trainable biases not modeled")
    for setting, value in (("lora_rank", 8), ("lora_alpha", 8), ("lora_dropout", 0.0), ("lora_target", "qv")):
        r.default(setting, value)  # LoraConfig defaults; target_modules None = PEFT's per-model default
    return r.done("peft_adapter", data.get("base_model_name_or_path"))


def read_model_config(data: Mapping[str, Any], path: str) -> FileSettings:
    """A model's `config.json`: the model itself, and its `quantization_config` (a pre-quantized checkpoint
    loads quantized whatever the training config says)."""
    r = _Reader(data, path, "transformers")
    if isinstance(data.get("quantization_config"), Mapping):
        r.quantization_config(data["quantization_config"])
    return r.done("model_config", path)


# ---------------------------------------------------------------- files, format detection, layering

READERS = {
    "llamafactory": read_llamafactory,
    "axolotl": read_axolotl,
    "training_args": read_training_args,
    "peft_adapter": read_peft_adapter,
    "model_config": read_model_config,
}
# Keys only one format has, checked in this order (LLaMA-Factory and axolotl YAMLs also carry
# TrainingArguments keys, so those come last).
_SIGNATURES: tuple[tuple[Format, frozenset[str]], ...] = (
    ("peft_adapter", frozenset({"peft_type"})),
    ("model_config", frozenset({"architectures", "num_hidden_layers", "n_layer", "text_config"})),
    ("llamafactory", frozenset({"finetuning_type", "model_name_or_path", "stage", "cutoff_len", "template",
                                "quantization_bit", "lora_target", "pure_bf16", "flash_attn",
                                "disable_gradient_checkpointing"})),
    ("axolotl", frozenset({"base_model", "adapter", "micro_batch_size", "sequence_len", "lora_r", "datasets",
                           "lora_target_linear", "load_in_4bit", "load_in_8bit", "sample_packing"})),
    ("training_args", frozenset({"per_device_train_batch_size", "gradient_accumulation_steps", "optim"})),
)  # fmt: skip


def detect_format(data: Mapping[str, Any], path: str) -> Format:
    for fmt, keys in _SIGNATURES:
        if keys & data.keys():
            return fmt
    raise VramplanError(
        f"{path}: not a config vramplan reads (LLaMA-Factory or axolotl YAML, TrainingArguments JSON, "
        "adapter_config.json, config.json): none of their keys is in it"
    )


def load_file(path: str) -> Mapping[str, Any]:
    """The mapping in a YAML or JSON file; a syntax error names the file and line, a non-UTF-8 or oversized
    file is one error line (vramplan.sources.files.read_text)."""
    check_name(path, "--from")
    p = Path(path)
    if is_dir(p):
        raise VramplanError(
            f"{short(path, 120)} is a folder; pass a file in it (--from {short(path, 60)}/adapter_config.json)"
        )
    text = read_text(p, "training config")
    shown = short(path, 120)
    if p.suffix.lower() == ".json":
        data = parse_json(text, shown, "a training config")
    else:
        import yaml  # PyYAML only when a YAML file is read: `estimate --json` without --from does not load it

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            problem = getattr(e, "problem", None) or e
            raise VramplanError(f"{shown}: not valid YAML ({where}{problem})") from None
        except RecursionError:
            raise VramplanError(f"{shown}: YAML nested too deeply to be a training config") from None
    if not isinstance(data, dict):
        raise VramplanError(f"{shown}: expected a mapping of settings (key: value), got {type(data).__name__}")
    return data


def read_config(path: str) -> FileSettings:
    """Read one --from file: parse, detect the format by its keys, map it."""
    data = load_file(path)
    return READERS[detect_format(data, path)](data, path)
