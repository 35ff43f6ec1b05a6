"""Every input of one estimate and where it came from: flags, --from files, the model's config.json, defaults.

Layers, lowest first: vramplan's defaults (resolve_train's, which click's option defaults repeat); the tool's
own defaults for keys a file leaves out (`default:llamafactory`: LLaMA-Factory's lora_rank 8); the files'
values, a later --from over an earlier one; the model config.json's `quantization_config` (a pre-quantized
checkpoint loads quantized whatever the training config says); flags the user typed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vramplan.errors import VramplanError
from vramplan.sources.configs.huggingface import read_model_config
from vramplan.sources.configs.reader import FileSettings, Unmodeled
from vramplan.sources.profiles import find_model_config
from vramplan.spec import ModelSpec, model_spec_from_config
from vramplan.spec.recipe import FORMAT_RECIPES, Recipe, resolve_recipe


@dataclass(frozen=True, slots=True)
class Plan:
    """`settings`: resolve_train's keywords. `sources`: per setting and for `model`, where its value came
    from: `flag`, `file:<path>`, `default` (vramplan's) or `default:<tool>` (the tool's default for a key its
    file leaves out). `not_modeled`: file settings the estimate ignores. `model_config`: its origin."""

    model: ModelSpec
    settings: Mapping[str, Any]
    sources: Mapping[str, str]
    not_modeled: tuple[Unmodeled, ...]
    model_config: str
    recipe: Recipe | None = None  # the framework whose defaults filled what nobody set (spec/recipe.py)
    parallel: Mapping[str, Any] = field(default_factory=dict)  # resolve_parallel keywords from the files
    file_notes: tuple[str, ...] = ()  # warnings from reading the files' distributed settings


def plan_inputs(model: str | None, files: Sequence[str], flags: Mapping[str, Any], typed: Collection[str] = ()) -> Plan:
    """Layer `flags` (a command's option values; `typed`: those the user set) over the --from `files` and the
    model's quantization_config. `model`: MODEL / --model, else the model the last naming file names."""
    read: list[FileSettings] = []
    if files:  # the format readers (LLaMA-Factory, axolotl, ...) are loaded only with a file to read
        from vramplan.sources.configs.formats import read_config

        read = [read_config(f) for f in files]
    settings = dict(flags)
    sources = {k: "flag" if k in typed else "default" for k in flags}

    def apply(fs: FileSettings, tool_defaults: bool | None) -> None:
        for k, v in fs.settings.items():
            layer_ok = tool_defaults is None or fs.sources[k].startswith("default:") == tool_defaults
            if k not in typed and layer_ok:
                settings[k], sources[k] = v, fs.sources[k]

    for tool_defaults in (True, False):
        for fs in read:
            apply(fs, tool_defaults)
    if model:
        sources["model"] = "flag"
    else:
        named = [fs for fs in read if fs.model]
        if not named:
            raise VramplanError(
                "no model: pass MODEL or --model (a built-in name, a config.json or its folder, a hub id)"
                + (", or a --from file that names one (model_name_or_path, base_model)" if read else "")
            )
        model, sources["model"] = named[-1].model, f"file:{named[-1].path}"
    mc = find_model_config(model)
    where = mc.origin.split(":", 1)[1] if mc.origin.startswith(("hf-cache:", "hub:")) else mc.origin
    quant = read_model_config(mc.config, where)
    if "quant" in quant.settings and settings.get("method") == "lora" and "method" not in typed:
        settings["method"], sources["method"] = "qlora", f"file:{where}"  # LoRA on a quantized checkpoint
    apply(quant, None)
    # axolotl's llama4_linearized_experts: a model layout, not a training setting (spec/llama4.py); axolotl
    # patches only when the config's top-level model_type is llama4 (loaders/patch_manager.py)
    linearized = bool(settings.pop("linearized_experts", False)) and mc.config.get("model_type") == "llama4"
    sources.pop("linearized_experts", None)
    spec = model_spec_from_config(mc.config, mc.name, linearized_experts=linearized)
    target = settings.get("lora_target")
    if isinstance(target, str) and set(target.split(",")) == {lin.name for lin in spec.linears}:
        settings["lora_target"] = "all-linear"  # PEFT saves all-linear as the list of every Linear
    recipe = _apply_recipe(settings, sources, read, typed)
    unmodeled = [u for fs in (*read, quant) for u in fs.not_modeled if u.affects not in typed]
    # a difference only a model with grouped-query attention / experts has, on a model without them
    has = {"gqa": spec.num_key_value_heads != spec.num_attention_heads, "moe": spec.num_local_experts > 0}
    moot = [u for u in unmodeled if u.when and not has[u.when]]
    unmodeled = [u for u in unmodeled if u not in moot]
    if mc.prequantized and "quant" not in typed:  # a GPTQ/AWQ/bnb copy resolved offline to a built-in profile
        from vramplan.spec.checkpoint_quant import assumed_from_name

        if assumed_from_name(mc.prequantized) is not None:  # the format its name implies (said by resolve_train)
            settings["checkpoint_name"], sources["checkpoint_name"] = mc.prequantized, f"name:{mc.name}"
        else:
            note = f"pre-quantized checkpoint: the architecture of {mc.origin}, its {mc.prequantized} format not read"
            unmodeled.append(Unmodeled("model", f"{mc.name} ({mc.prequantized})", note + "; --quant sets one", "quant"))
    unmodeled += [Unmodeled("recipe", recipe.name, note) for note in recipe.notes if "not modelled" in note]
    parallel: dict[str, Any] = {}
    for fs in read:
        parallel.update(fs.parallel)
    why = {"gqa": "no grouped-query attention: k/v not repeated", "moe": "no experts: nothing swapped"}
    moot_notes = [f"{u.key}={u.value}: no memory change on {spec.name} ({why[u.when]})" for u in moot]
    notes = tuple(dict.fromkeys([*(n for fs in read for n in fs.notes), *moot_notes]))
    return Plan(spec, settings, sources, tuple(dict.fromkeys(unmodeled)), mc.origin, recipe, parallel, notes)


def _apply_recipe(
    settings: dict[str, Any], sources: dict[str, str], read: Sequence[FileSettings], typed: Collection[str]
) -> Recipe:
    """Fill the settings still at vramplan's defaults with the recipe's: `--recipe` when typed, else the
    framework of the last --from file that has one (a TrainingArguments JSON with SFTConfig's keys is TRL's),
    else the default recipe."""
    from vramplan.spec.stack import resolve_stack

    stack = settings["stack"] = resolve_stack(settings.get("stack"))  # once: the recipe's version reads it
    text, origin = (settings.get("recipe"), "flag") if "recipe" in typed else (None, "default")
    if text is None:
        for fs in reversed(read):
            if fs.format in FORMAT_RECIPES:
                sft = fs.format == "training_args" and "packing" in fs.raw_keys
                text, origin = ("trl" if sft else FORMAT_RECIPES[fs.format]), f"file:{fs.path}"
                break
    recipe = resolve_recipe(text, str(settings.get("method", "lora")), stack)
    for key, value in recipe.settings:
        if sources.get(key, "default") == "default":
            settings[key], sources[key] = value, f"recipe:{recipe.name}"
    settings["recipe"] = recipe.label
    sources["recipe"] = origin
    return recipe
