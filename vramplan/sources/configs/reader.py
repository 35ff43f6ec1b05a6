"""One training file being read: `Reader` collects resolve_train keywords, their sources and the keys not
modelled; `FileSettings` is what a reader returns."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from vramplan.errors import VramplanError
from vramplan.spec import OPTIM_ALIASES, OPTIMIZERS

Format = Literal[
    "llamafactory", "llamafactory_v1", "axolotl", "training_args", "peft_adapter", "model_config", "accelerate"
]


class Unmodeled(NamedTuple):
    """A file setting the estimate does not model. `affects`: the resolve_train keyword it bears on ("" if
    none); a flag that sets that keyword makes the entry moot."""

    key: str
    value: str
    note: str = ""
    affects: str = ""
    # "gqa" / "moe": not modelled only on a model with grouped-query attention (fewer k/v heads than query
    # heads) / with experts; on another model the entry becomes a note (vramplan.sources.inputs.plan_inputs)
    when: str = ""

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
    raw_keys: frozenset[str] = frozenset()  # the file's top-level keys (which framework wrote it)
    # resolve_parallel keywords (strategy, offload, gpus, buckets, reshard_after_forward) from the file's
    # deepspeed / fsdp / accelerate settings, and the warnings reading them gave
    parallel: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


# What is known of a key the estimate does not model, said with it (`Reader.skip_ifis_set`).
KNOWN_NOTES = {
    # HF Trainer `torch_compile` compiles the model; inductor partitions the joint graph with AOTAutograd's
    # min-cut rematerialization (recomputes pointwise ops in backward), so the eager estimate bounds the saved
    # activations from above; traced (backend aot_eager_decomp_partition, tests/estimator/test_torch_compile.py)
    "torch_compile": "estimated eager, an upper bound on activations: compiled, a small Llama saved about two "
    "thirds of eager's (LoRA and full)",
    # monkeypatch/relora.py (axolotl 067b021) `merge_and_save`: on a quantized base, per target the fp32
    # delta B·A and the merged weight on the GPU (unless relora_cpu_offload), between steps
    "relora": "the step estimated as LoRA; the merge every relora_steps (a weight-sized fp32 delta and merged "
    "weight per target) not modeled",
    "mixture_of_depths": "MoD: layers converted to mixture-of-depths, estimated as the dense model",
    "fp8": "torchao float8 linears: estimated in the bf16 / fp16 dtype",
}


def shown_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (bool, list, dict)) else str(value)
    return text if len(text) <= 60 else text[:59] + "…"


def is_set(value: Any) -> bool:
    """YAML's `key:` (None), false and empty collections mean the option is off."""
    return value not in (None, False, "", [], {})


class Reader:
    """Collects one file's settings; `tool` names the program whose defaults fill keys the file leaves out."""

    def __init__(self, data: Mapping[str, Any], path: str, tool: str) -> None:
        self.data, self.path, self.tool = data, path, tool
        self.settings: dict[str, Any] = {}
        self.sources: dict[str, str] = {}
        self.unmodeled: list[Unmodeled] = []
        self.parallel: dict[str, Any] = {}
        self.notes: list[str] = []

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

    def names(self, key: str, setting: str) -> None:
        """A list of module / parameter names (or one comma-separated string) as one comma string."""
        value = self.data.get(key)
        if isinstance(value, list) and value:
            self.set(setting, ",".join(str(v) for v in value))
        elif isinstance(value, str) and value.strip():
            self.set(setting, value)

    def skip(self, key: str, note: str = "", affects: str = "") -> None:
        self.unmodeled.append(Unmodeled(key, shown_value(self.data.get(key)), note, affects))

    def skip_ifis_set(self, keys: Sequence[str]) -> None:
        for key in keys:
            if is_set(self.data.get(key)):
                self.skip(key, KNOWN_NOTES.get(key, ""))

    def distributed(self, fsdp_config_alone: bool = True) -> None:
        """The file's `deepspeed:` and `fsdp` / `fsdp_config` keys (sources/configs/deepspeed.py); a DeepSpeed
        path that is neither on disk nor a shipped file is listed. `fsdp_config_alone`: a non-empty
        fsdp_config without `fsdp` means FSDP (axolotl's FSDP2 configs), not in a TrainingArguments dump
        (which always writes its default fsdp_config)."""
        from vramplan.sources.configs.deepspeed import fsdp_checkpointing, read_deepspeed, read_fsdp

        ds = self.data.get("deepspeed")
        if is_set(ds):
            d = read_deepspeed(ds, self.path)
            if d is None:
                self.skip("deepspeed", "file not found here nor a shipped one: pass --strategy", "strategy")
            else:
                self.parallel.update(d.settings)
                self.notes += d.notes
        fsdp, cfg = self.data.get("fsdp"), self.data.get("fsdp_config")
        if is_set(fsdp) or (fsdp_config_alone and isinstance(cfg, Mapping) and cfg and not is_set(ds)):
            d = read_fsdp(fsdp, cfg)
            self.parallel.update(d.settings)
            self.notes += d.notes
            ckpt = fsdp_checkpointing(cfg)
            if ckpt is not None and "grad_ckpt" not in self.settings:
                self.set("grad_ckpt", ckpt)

    def no_memory_change(self, keys: Sequence[str], what: str) -> None:
        """Keys set that change no tensor on the GPU (learning rates, scaling, initialisation): said, not listed."""
        found = [k for k in keys if is_set(self.data.get(k))]
        if found:
            self.notes.append(f"{', '.join(found)}: {what}, no memory change")

    def optim_args(self) -> None:
        """HF `optim_args` ("rank=64,update_proj_gap=200" or, in axolotl, a mapping): GaLore / APOLLO's rank;
        `optim_target_modules` is read as every Linear of the layers (said when it names fewer)."""
        args = self.data.get("optim_args")
        if isinstance(args, str):
            args = dict(kv.split("=", 1) for kv in args.replace(" ", "").split(",") if "=" in kv)
        if isinstance(args, Mapping) and args.get("rank") is not None and str(args["rank"]).strip().isdigit():
            self.set("optim_rank", int(str(args["rank"]).strip()))
        targets = self.data.get("optim_target_modules")
        if is_set(targets) and str(targets) not in ("all-linear", "['all-linear']"):
            self.notes.append(f"optim_target_modules={shown_value(targets)}: estimated on every Linear of the layers")

    def optim(self, key: str) -> None:
        name = str(self.data[key])
        name = {"adamw_hf": "adamw_torch", "adamw_apex_fused": "adamw_torch"}.get(name, name)
        if OPTIM_ALIASES.get(name, name) in OPTIMIZERS:
            self.set("optim", name)
        else:
            self.skip(key, "optimizer not modeled; estimated with --optim", "optim")

    def quantization_config(self, qc: Mapping[str, Any]) -> None:
        """transformers' `quantization_config`: BitsAndBytesConfig.to_dict() sets --quant; GPTQ, AWQ, FP8, AQLM,
        compressed-tensors, NVFP4 are read by resolve_train from the model config (spec/prequantized_base.py)."""
        method = str(qc.get("quant_method") or "bitsandbytes").lower()
        if method == "bitsandbytes":
            if qc.get("load_in_4bit"):
                quant = qc.get("bnb_4bit_quant_type") or "fp4"  # BitsAndBytesConfig's default
                self.set("quant", str(quant))
                self.set("double_quant", bool(qc.get("bnb_4bit_use_double_quant")))
            elif qc.get("load_in_8bit"):
                self.set("quant", "int8")
            return
        from vramplan.spec.prequantized_base import model_checkpoint

        if model_checkpoint({"quantization_config": qc}) is None:  # a format vramplan does not count
            self.unmodeled.append(
                Unmodeled("quantization_config.quant_method", method, "estimated unquantized", "quant")
            )
        # otherwise resolve_train reads the format from the model's config.json (spec/prequantized_base.py)

    def done(self, fmt: Format, model: Any) -> FileSettings:
        return FileSettings(
            self.path, fmt, dict(self.settings), dict(self.sources), tuple(self.unmodeled),
            str(model) if is_set(model) else None, frozenset(map(str, self.data)), dict(self.parallel),
            tuple(self.notes),
        )  # fmt: skip
