"""`--recipe`: the defaults a training framework applies when you do not set them, per release.

A recipe fills the settings nobody typed (flags beat --from files beat the recipe beat vramplan's own defaults).
It covers what the framework decides, not the run's shape: batch, sequence length and the method stay yours.
Each default is read from the framework's code (file and version cited on the rule):

- `trainer`: HF `Trainer` with `bf16=True` and PEFT, vramplan's long-standing default (transformers 5.25
  `training_args.py`: `optim="adamw_torch_fused"`, `gradient_checkpointing=False`; the loss is the model's
  `ForCausalLMLoss`, loss/loss_utils.py); LoRA r=16, alpha 32, dropout 0.05 on all linear layers.
- `trl`: `SFTTrainer` + `SFTConfig` (trl 1.16.0): `gradient_checkpointing=True` (trainer/base_config.py, since
  1.0.0; TrainingArguments' False in 0.21.0); the loss through the chunked fused LM head
  (trainer/sft_trainer.py `add_fused_lm_head`, since 1.15.0; the model's own loss up to 1.14.0); a model id is
  loaded in float32 (trainer/utils.py `create_model_from_path`: `dtype` defaults to "float32") under bf16
  autocast (base_config.py: `bf16` None -> True); LoRA from `ModelConfig` (trainer/model_config.py: r=16,
  alpha 32, dropout 0.05, `lora_target_modules` None = PEFT's per-model default, q_proj/v_proj); no packing,
  no padding-free (sft_config.py).
- `llamafactory`: LLaMA-Factory (commit ff6d4d1, hparams/finetuning_args.py, model_args.py): lora_rank 8,
  dropout 0, target all, gradient checkpointing on (model/model_utils/checkpointing.py), no
  `prepare_model_for_kbit_training`, the HF loss, no packing (data_args.py `packing` None = off for sft).
- `axolotl`: axolotl (commit 067b021, utils/schemas/*.py): lora_dropout 0, gradient checkpointing off, the HF
  loss, `sample_packing` off; LoRA / QLoRA through its fused LoRA kernels (`check_auto_enable_lora_kernels`
  turns lora_qkv_kernel, lora_o_kernel and lora_mlp_kernel on unless the file sets one of them).
- `unsloth`: `FastLanguageModel.get_peft_model` defaults (r=16, lora_alpha=16, dropout 0, the seven
  projections) with `use_gradient_checkpointing="unsloth"`: its offloaded checkpointing as unsloth_zoo
  2026.10.9 runs it (`--activation-offload unsloth`, estimator/offload.py); its own kernels and loss are not
  modelled (said in the output).
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from vramplan.errors import VramplanError
from vramplan.spec.stack import PACKAGES as STACK_PACKAGES
from vramplan.spec.stack import Stack
from vramplan.spec.stack import installed_version as _installed  # the dist-info folder reader

RECIPES: tuple[str, ...] = ("trainer", "trl", "llamafactory", "axolotl", "unsloth")
DEFAULT_RECIPE = "trainer"
# The distribution each recipe's version is read from (its dist-info folder, `_installed`), and the current
# release the rules are written against when it is not installed.
PACKAGES = {"trl": "trl", "llamafactory": "llamafactory", "axolotl": "axolotl", "unsloth": "unsloth",
            "trainer": "transformers"}  # fmt: skip
# (LLaMA-Factory and axolotl: the commits whose schemas sources/configs reads; unsloth: not pinned, the
# defaults of `FastLlamaModel.get_peft_model`'s signature, unsloth/models/llama.py)
CURRENT = {"trl": "1.16.0", "llamafactory": "ff6d4d1", "axolotl": "067b021", "unsloth": "unpinned",
           "trainer": "5.25.0"}  # fmt: skip
# trl: first release with gradient_checkpointing=True in its base config (1.0.0 has it, 0.21.0 does not) and
# the first whose SFTTrainer computes the loss through `add_fused_lm_head` (1.15.0 has it, 1.14.0 does not).
TRL_GRAD_CKPT_SINCE = (1, 0, 0)
TRL_FUSED_HEAD_SINCE = (1, 15, 0)


class Recipe(NamedTuple):
    """A framework at a version, with the settings (resolve_train keywords) it defaults; `notes`: what it does
    that the estimate does not model."""

    name: str
    version: str
    version_source: str  # "installed", "named" or "current release"
    settings: tuple[tuple[str, Any], ...]
    notes: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """`trl 1.16.0`; the Trainer's version is transformers': `trainer (transformers 5.25.0)`."""
        return f"{self.name} (transformers {self.version})" if self.name == "trainer" else f"{self.name} {self.version}"


def _version_tuple(text: str) -> tuple[int, ...]:
    """(1, 16, 0) of "1.16.0"; a commit or "unpinned" reads as the newest (the current release's rules)."""
    if not re.match(r"\d", text):
        return (10**6,)
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def parse_recipe(text: str | None) -> tuple[str, str | None]:
    """`trl` or `trl==0.21` -> (name, version or None); the did-you-mean error for an unknown name."""
    from vramplan.errors import did_you_mean

    raw = str(text if text is not None else DEFAULT_RECIPE).strip()
    name, _, version = raw.partition("==")
    name = name.strip().lower().replace("-", "").replace("_", "")
    name = {"hf": "trainer", "transformers": "trainer", "llamafactorycli": "llamafactory"}.get(name, name)
    if name not in RECIPES:
        raise did_you_mean(raw, RECIPES, "--recipe value")
    version = version.strip()
    if _ and not re.fullmatch(r"\d+(\.\d+){0,2}[\w.+-]*", version):
        raise VramplanError(f"--recipe {raw!r}: the version after == must look like 0.21 or 1.16.0")
    return name, version or None


def resolve_recipe(text: str | None, method: str = "lora", stack: Stack | None = None) -> Recipe:
    """The recipe `text` names (`trl`, `trl==0.21`) at its version: named, else the `stack`'s (trl, and
    transformers for the Trainer: `--stack trl==0.21` names it too), else installed, else current."""
    name, named = parse_recipe(text)
    if not named and stack is not None and PACKAGES[name] in STACK_PACKAGES:
        version, source = stack.version(PACKAGES[name]), stack.source(PACKAGES[name])
    else:
        installed = None if named else _installed(PACKAGES[name])
        version = named or installed or CURRENT[name]
        source = "named" if named else "installed" if installed else "current release"
    settings, notes = _DEFAULTS[name](_version_tuple(version), str(method).lower())
    return Recipe(name, version, source, tuple(settings.items()), tuple(notes))


def _trainer(version: tuple[int, ...], method: str) -> tuple[dict[str, Any], list[str]]:
    return {"loss": "hf"}, []


def _trl(version: tuple[int, ...], method: str) -> tuple[dict[str, Any], list[str]]:
    settings: dict[str, Any] = {
        "grad_ckpt": version >= TRL_GRAD_CKPT_SINCE,  # before: TrainingArguments' False, passed to kbit prep
        "loss": "trl-chunked" if version >= TRL_FUSED_HEAD_SINCE else "hf",
        "dtype": "fp32",
        "mixed_precision": "bf16",
        "lora_rank": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "lora_target": "qv",
        "packing": False,
    }
    notes = ["trl loads a model id in float32 (SFTConfig model_init_kwargs dtype): --dtype bf16 if you load it"]
    if method == "qlora":
        notes.append("trl casts QLoRA adapters to bf16 (sft_trainer.py); estimated in fp32")
    return settings, notes


def _llamafactory(version: tuple[int, ...], method: str) -> tuple[dict[str, Any], list[str]]:
    settings: dict[str, Any] = {"loss": "hf", "lora_rank": 8, "lora_dropout": 0.0, "lora_target": "all-linear",
                                "grad_ckpt": True, "kbit_prep": False, "packing": False}  # fmt: skip
    if method == "full":
        settings["dtype"] = "fp32"  # cast_trainable_params_to_fp32 unless pure_bf16
    return settings, []


def _axolotl(version: tuple[int, ...], method: str) -> tuple[dict[str, Any], list[str]]:
    settings: dict[str, Any] = {"loss": "hf", "lora_dropout": 0.0, "grad_ckpt": False, "packing": False}
    if method in ("lora", "qlora"):
        # utils/schemas/config.py `check_auto_enable_lora_kernels`: lora_{qkv,o,mlp}_kernel on when unset
        settings["lora_kernels"] = "qkv,o,mlp"
    return settings, []


def _unsloth(version: tuple[int, ...], method: str) -> tuple[dict[str, Any], list[str]]:
    settings = {"lora_rank": 16, "lora_alpha": 16, "lora_dropout": 0.0, "lora_target": "all-linear",
                "grad_ckpt": True, "activation_offload": "unsloth"}  # fmt: skip
    return settings, ["unsloth's kernels and fused loss are not modelled"]


_DEFAULTS = {"trainer": _trainer, "trl": _trl, "llamafactory": _llamafactory, "axolotl": _axolotl,
             "unsloth": _unsloth}  # fmt: skip
FORMAT_RECIPES = {"llamafactory": "llamafactory", "axolotl": "axolotl", "training_args": "trainer"}
