"""LoRA targets as PEFT takes them: presets (`all-linear`, `attn`, `qv`), comma lists of module names or
dotted-path suffixes, and regex strings, resolved onto the linears (and fused MoE parameters) of a ModelSpec."""

from __future__ import annotations

from vramplan.errors import VramplanError
from vramplan.spec.model import LinearSpec, ModelSpec, ParamSpec

LORA_TARGET_PRESETS: tuple[str, ...] = ("all-linear", "attn", "qv")

# PEFT's per-architecture default targets (peft/utils/constants.py,
# TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, peft 0.21.2). phi3 has no entry there (PEFT asks for
# target_modules); vramplan's `qv` for it is the fused qkv_proj.
PEFT_DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "mixtral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "qwen3": ("q_proj", "v_proj"),
    "gemma": ("q_proj", "v_proj"),
    "gemma2": ("q_proj", "v_proj"),
    "gemma3_text": ("q_proj", "v_proj"),
    "phi": ("q_proj", "v_proj", "fc1", "fc2"),
    "phi3": ("qkv_proj",),
    "gpt_neox": ("query_key_value",),
    "bloom": ("query_key_value",),
}


def lora_moe_targets(model: ModelSpec, targets: tuple[str, ...]) -> tuple[ParamSpec, ...]:
    """The MoE parameters PEFT adapts (lora.ParamWrapper) for these `target_modules` names."""
    return tuple(p for p in model.moe_params if set(p.peft_names) & set(targets))


REGEX_CHARACTERS = frozenset("*+?[](){}|\\^$")
# where each hand-modelled family's decoder layers and their attention / MLP modules sit (transformers 5.24)
_LAYER_MODULES: dict[str, tuple[str, str, str]] = {
    "gpt_neox": ("gpt_neox.layers.", "attention", "mlp"),
    "bloom": ("transformer.h.", "self_attention", "mlp"),
}


def module_names(model: ModelSpec, layer: int = 0) -> list[tuple[LinearSpec, str]]:
    """Each decoder-layer linear with its full module name in layer `layer`, as PEFT matches targets against."""
    if model.approximation is not None:  # generic: the table's layer stack and paths
        prefix = model.module_prefix.replace("*", str(layer))
        return [(lin, f"{prefix}{lin.path}") for lin in model.linears]
    stack, attn, mlp = _LAYER_MODULES.get(model.model_type, ("model.layers.", "self_attn", "mlp"))
    return [(lin, f"{stack}{layer}.{attn if lin.group == 'attn' else mlp}.{lin.name}") for lin in model.linears]


def _regex_targets(model: ModelSpec, pattern: str) -> tuple[str, ...]:
    """The linears a regex target_modules selects (peft 0.21 tuners_utils `match_target_against_key`:
    `re.fullmatch(pattern, key)`), held to select the same ones in the first and the last layer."""
    import re

    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise VramplanError(f"LoRA target {pattern!r} is not a regular expression ({e})") from None
    first = [lin.name for lin, key in module_names(model) if regex.fullmatch(key)]
    last = [lin.name for lin, key in module_names(model, model.num_hidden_layers - 1) if regex.fullmatch(key)]
    if first != last:
        raise VramplanError(
            f"LoRA target {pattern!r} selects different linears in different layers of {model.name}; vramplan "
            "adapts the same linears in every layer: give a pattern that does not depend on the layer index"
        )
    if not first:
        example = module_names(model)[0][1] if model.linears else "?"
        raise VramplanError(
            f"LoRA target {pattern!r} matches no linear of {model.name} (PEFT full-matches module names such as "
            f"{example!r}); use e.g. '.*\\.(q_proj|v_proj)' or a comma list"
        )
    return tuple(first)


def resolve_lora_target(model: ModelSpec, target: str) -> tuple[tuple[str, ...], str]:
    """Map `all-linear` / `attn` / `qv` / a comma list onto PEFT `target_modules` names of this model.

    `all-linear` is every `nn.Linear` of the decoder layers (not lm_head) and, on Mixtral, the router and
    experts by their transformers-4 names `gate`, `w1`, `w3`, `w2`: PEFT 0.21.2 resolves "all-linear" on
    transformers 5 to exactly these and adapts the router / expert parameters through `target_parameters`
    (peft/utils/transformers_weight_conversion.py `_resolve_string_target_modules`).
    """
    names = tuple(lin.name for lin in model.linears)
    moe_names = tuple(n for p in model.moe_params for n in p.peft_names)
    if not isinstance(target, str):
        raise VramplanError(f"--lora-target takes a preset or a comma list of module names, got {target!r}")
    if target.strip().lower() in LORA_TARGET_PRESETS:
        target = target.strip().lower()
    if target == "all-linear":
        return names + moe_names, target
    if target == "attn":
        return tuple(lin.name for lin in model.linears if lin.group == "attn"), target
    if target == "qv":
        return PEFT_DEFAULT_TARGETS.get(model.model_type, names[:1]), target
    if set(target) & REGEX_CHARACTERS:  # PEFT: a string target_modules is a regex, full-matched on module names
        return _regex_targets(model, target), "custom"
    wanted = tuple(t.strip() for t in target.split(",") if t.strip())
    if "all" in wanted:  # LLaMA-Factory's spelling of all-linear
        return names + moe_names, "all-linear"
    if any(t not in names + moe_names for t in wanted):
        # PEFT: a list entry matches a module whose name is the entry or ends with "." + entry (self_attn.q_proj)
        by_suffix = {t: [lin.name for lin, key in module_names(model) if key == t or key.endswith(f".{t}")]
                     for t in wanted}  # fmt: skip
        if all(by_suffix.values()):
            found = [n for t in wanted for n in by_suffix[t]]
            return tuple(dict.fromkeys(found)), "custom"
    bad = [t for t in wanted if t not in names + moe_names]
    if bad or not wanted:
        from vramplan.errors import did_you_mean

        raise did_you_mean(
            bad[0] if bad else target,
            (*LORA_TARGET_PRESETS, *names, *moe_names),
            "LoRA target",
            f"{model.name} has: {', '.join(names + moe_names)}",
        )
    for p in lora_moe_targets(model, wanted):
        missing = [n for n in p.peft_names if n not in wanted]
        if missing:  # PEFT: "Cannot convert PEFT target(s) w1 without also targeting w3 ..."
            present = ",".join(n for n in p.peft_names if n in wanted)
            raise VramplanError(
                f"LoRA target {present} of {model.name} is fused with {','.join(missing)} into {p.name} "
                f"in transformers 5; add {','.join(missing)} to --lora-target"
            )
    return wanted, "custom"
