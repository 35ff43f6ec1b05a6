"""A --from file: parse it (YAML or JSON), detect its format by the keys only that format has, map it with the
format's reader. Imported only when a command has --from files: `estimate MODEL` without one reads no format.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vramplan.errors import VramplanError
from vramplan.sources.configs.axolotl import read_axolotl
from vramplan.sources.configs.huggingface import (
    read_accelerate_config,
    read_model_config,
    read_peft_adapter,
    read_training_args,
)
from vramplan.sources.configs.llamafactory import read_llamafactory
from vramplan.sources.configs.llamafactory_v1 import read_llamafactory_v1
from vramplan.sources.configs.reader import FileSettings, Format
from vramplan.sources.files import check_name, is_dir, parse_json, read_text, short

READERS = {
    "llamafactory": read_llamafactory,
    "llamafactory_v1": read_llamafactory_v1,
    "axolotl": read_axolotl,
    "training_args": read_training_args,
    "peft_adapter": read_peft_adapter,
    "model_config": read_model_config,
    "accelerate": read_accelerate_config,
}
# Keys only one format has, checked in this order (LLaMA-Factory and axolotl YAMLs also carry
# TrainingArguments keys, so those come last).
_SIGNATURES: tuple[tuple[Format, frozenset[str]], ...] = (
    ("peft_adapter", frozenset({"peft_type"})),
    ("model_config", frozenset({"architectures", "num_hidden_layers", "n_layer", "text_config"})),
    ("llamafactory_v1", frozenset({"model_class", "peft_config", "dist_config", "kernel_config", "quant_config",
                                   "optim_config", "train_dataset"})),
    ("llamafactory", frozenset({"finetuning_type", "model_name_or_path", "stage", "cutoff_len", "template",
                                "quantization_bit", "lora_target", "pure_bf16", "flash_attn",
                                "disable_gradient_checkpointing"})),
    ("axolotl", frozenset({"base_model", "adapter", "micro_batch_size", "sequence_len", "lora_r", "datasets",
                           "lora_target_linear", "load_in_4bit", "load_in_8bit", "sample_packing"})),
    ("training_args", frozenset({"per_device_train_batch_size", "gradient_accumulation_steps", "optim"})),
    ("accelerate", frozenset({"distributed_type", "compute_environment"})),
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
