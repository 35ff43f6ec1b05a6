"""LoRA targets as PEFT takes them: presets, module names, dotted paths and regexes matched against the model's
module names (peft 0.21.2 tuners/tuners_utils.py `check_target_module_exists`), and the MoE parameters PEFT
adapts through `target_parameters`.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    "falcon_h1": ("q_proj", "v_proj"),  # no PEFT entry (PEFT asks for target_modules): the attention's
    "qwen3_moe": ("q_proj", "v_proj"),  # no PEFT entry (PEFT asks for target_modules): qwen3's
    "gpt_oss": ("q_proj", "v_proj"),  # no PEFT entry either: the Llama-shaped attention's
    # no PEFT entry: the up-projections that make the queries and the keys / values (q_proj without q_lora_rank)
    "deepseek_v3": ("q_b_proj", "kv_b_proj"),
    "glm4_moe_lite": ("q_b_proj", "kv_b_proj"),
    "glm4_moe": ("q_proj", "v_proj"),  # no PEFT entry: as Llama's
    "qwen3_5_text": ("q_proj", "v_proj"),  # no PEFT entry: qwen3's (the full-attention layers only)
    "qwen3_5_moe_text": ("q_proj", "v_proj"),  # no PEFT entry either: as qwen3_5_text's
    "gemma": ("q_proj", "v_proj"),
    "gemma2": ("q_proj", "v_proj"),
    "gemma3_text": ("q_proj", "v_proj"),
    "olmo2": ("q_proj", "v_proj"),  # no PEFT entry for olmo2 / olmo3 / exaone4: as Llama's
    "olmo3": ("q_proj", "v_proj"),
    "exaone4": ("q_proj", "v_proj"),
    # no PEFT entry for gemma4_text (its gemma4 wrapper's: `.*language_model\..*\.(q_proj|v_proj)`); v_proj only
    # in the layers that have one (not the k = v global layers nor the KV-shared ones)
    "gemma4_text": ("q_proj", "v_proj"),
    "phi": ("q_proj", "v_proj", "fc1", "fc2"),
    "phi3": ("qkv_proj",),
    "gpt_neox": ("query_key_value",),
    "bloom": ("query_key_value",),
    # no PEFT 0.21.2 entry (PEFT asks for target_modules): as Llama's (Gemma 3n: v_proj only in the layers that
    # have one, not the KV-shared ones)
    **dict.fromkeys(("glm4", "starcoder2", "cohere2", "smollm3", "granite"), ("q_proj", "v_proj")),
    **dict.fromkeys(("ministral", "ministral3", "internlm3", "gemma3n_text"), ("q_proj", "v_proj")),
    "falcon": ("query_key_value",),
    "gpt_bigcode": ("attn.c_attn",),  # PEFT's `c_attn` (vramplan names gpt_bigcode's linears by their paths)
    "llama4_text": ("q_proj", "v_proj"),  # PEFT 0.21.2 constants.py "llama4" (its text model: the same)
}


# Modules PEFT 0.21 refuses to wrap with LoRA on Mamba-based models (tuners/tuners_utils.py
# `_check_lora_target_modules_mamba`: out_proj and conv1d of falcon_h1, mamba, mamba2, falcon_mamba, nemotron_h;
# the hand-modelled one here is falcon_h1, whose conv1d is not an nn.Linear and so never a target)
MAMBA_LORA_REFUSED = {"falcon_h1": "out_proj"}


def without_mamba_refused(model: ModelSpec, names: tuple[str, ...], explicit: bool) -> tuple[tuple[str, ...], str]:
    """The LoRA targets PEFT takes on a Mamba-based model, and a note: the default all-linear without the
    mixer's out_proj (PEFT raises on it); a target list that names it, or an explicit all-linear, is refused."""
    refused = MAMBA_LORA_REFUSED.get(model.model_type)
    if refused not in names:
        return names, ""
    if explicit:
        kept = ",".join(n for n in names if n != refused)
        raise VramplanError(
            f"PEFT refuses LoRA on {refused} of a Mamba-based model ({model.model_type}: 'Module {refused!r} is "
            f"incompatible'); drop it from --lora-target, e.g. --lora-target {kept}"
        )
    kept = tuple(n for n in names if n != refused)
    return kept, f"LoRA on all linears but the Mamba mixer's {refused}, which PEFT refuses on {model.model_type}"


def lora_moe_targets(model: ModelSpec, targets: tuple[str, ...]) -> tuple[ParamSpec, ...]:
    """The MoE parameters PEFT adapts (lora.ParamWrapper) for these `target_modules` names."""
    return tuple(p for p in model.moe_params if set(p.peft_names) & set(targets))


REGEX_CHARACTERS = frozenset("*+?[](){}|\\^$")
# where each hand-modelled family's decoder layers and their attention / MLP modules sit (transformers 5.24)
_LAYER_MODULES: dict[str, tuple[str, str, str]] = {
    "gpt_neox": ("gpt_neox.layers.", "attention", "mlp"),
    "bloom": ("transformer.h.", "self_attention", "mlp"),
    "falcon": ("transformer.h.", "self_attention", "mlp"), "gpt_bigcode": ("transformer.h.", "attn", "mlp"),
}
# their input and output embeddings' module names (the other families: model.embed_tokens, lm_head)
_EMBEDDINGS: dict[str, tuple[str, str]] = {
    "gpt_neox": ("gpt_neox.embed_in", "lm_head"),  # transformers 5 renamed embed_out
    "bloom": ("transformer.word_embeddings", "lm_head"),
    "falcon": ("transformer.word_embeddings", "lm_head"), "gpt_bigcode": ("transformer.wte", "lm_head"),
}


def module_names(model: ModelSpec, layer: int = 0) -> list[tuple[LinearSpec, str]]:
    """Each decoder-layer linear with its full module name in layer `layer`, as PEFT matches targets against."""
    if model.from_table:  # generic: the table's layer stack and paths
        prefix = model.module_prefix.replace("*", str(layer))
        return [(lin, f"{prefix}{lin.path}") for lin in model.linears]
    stack, attn, mlp = _LAYER_MODULES.get(model.model_type, ("model.layers.", "self_attn", "mlp"))
    if model.module_prefix:  # inside a VLM wrapper: `model.language_model.layers.`
        stack = model.module_prefix.removesuffix("*.")
    return [
        (lin, f"{stack}{layer}.{lin.path or (attn if lin.group == 'attn' else mlp) + '.' + lin.name}")
        for lin in model.linears
    ]


def converted_away(model: ModelSpec, names: tuple[str, ...]) -> tuple[str, ...]:
    """`names` without the linears PEFT never adapts on this model: those whose last name is one of the MoE
    conversion's transformers-4 names (peft 0.21.2 utils/transformers_weight_conversion.py
    `_convert_peft_config_moe` moves a target ending in `gate_proj` / `up_proj` / `down_proj` to the fused experts'
    target_parameters and drops it from target_modules, so DeepSeek-V3's dense and shared-experts MLPs of those
    names get no adapter, whether named by all-linear, a list or a regex)."""
    moe_names = {n for p in model.moe_params for n in p.peft_names}
    linears = {lin.name for lin in model.linears}
    return tuple(n for n in names if n not in linears or n in moe_names or n.rsplit(".", 1)[-1] not in moe_names)


def _compile(pattern: str):
    import re

    try:
        return re.compile(pattern)
    except re.error as e:
        raise VramplanError(f"LoRA target {pattern!r} is not a regular expression ({e})") from None


# the layer kind (`layer_types`) whose layers hold a token mixer's linears, by the mixer's attribute: Qwen3.5's
# gated attention in `full_attention` layers, its gated DeltaNet in `linear_attention` ones (spec/qwen35.py)
_MIXER_KINDS = {"self_attn": "full_attention", "linear_attn": "linear_attention"}


def holding_layers(model: ModelSpec, lin: LinearSpec) -> tuple[int, ...] | None:
    """The indices of the decoder layers that hold `lin` (all of them unless the model holds it in only part of
    its layers: a MoE model's dense / expert layers, a hybrid's layers of one kind), or None when not known."""
    n = model.num_hidden_layers
    if model.instances(lin) == n:
        return tuple(range(n))
    if lin.only:
        dense = set(model.dense_mlp_layers)
        return tuple(i for i in range(n) if (i in dense) == (lin.only == "dense"))
    kind = _MIXER_KINDS.get(lin.path.partition(".")[0])
    held = tuple(i for i, k in enumerate(model.layer_types) if k == kind) if kind else ()
    return held if held and len(model.layer_types) == n and len(held) == model.instances(lin) else None


def _regex_targets(model: ModelSpec, pattern: str) -> tuple[tuple[str, ...], tuple[tuple[str, int], ...]]:
    """The linears a regex target_modules selects (peft 0.21 tuners_utils `match_target_against_key`:
    `re.fullmatch(pattern, key)`), and for those it selects in only some of the layers holding them, in how
    many (`model.layers.(3|7|11)\\.self_attn...`; on Qwen3.5 a pattern naming its full-attention layers selects
    the attention wherever it exists). A linear held in only part of the layers where it is not known which
    (a generic hybrid) is counted in all of them or none."""
    regex = _compile(pattern)
    per_layer = [
        {lin.name for lin, key in module_names(model, layer) if regex.fullmatch(key)}
        for layer in range(model.num_hidden_layers)
    ]
    chosen, layers = [], []
    for lin in model.linears:
        held = holding_layers(model, lin)
        hits = [i for i, names in enumerate(per_layer) if lin.name in names and (held is None or i in held)]
        if not hits:
            continue
        chosen.append(lin.name)
        if held is None and len(hits) < model.num_hidden_layers:
            raise VramplanError(
                f"LoRA target {pattern!r} selects {lin.path or lin.name} in some layers of {model.name}, which "
                "holds it in only part of its layers; give a pattern that does not depend on the layer index"
            )
        if held is not None and len(hits) < len(held):
            layers.append((lin.name, len(hits)))
    return tuple(chosen), tuple(layers)


def embedding_modules(model: ModelSpec) -> dict[str, tuple[str, int, int]]:
    """The input and output embeddings by role, as (module name, in, out): PEFT can adapt them with LoRA
    (lora.Embedding: r·(vocab + hidden); lora.Linear on lm_head: the same) or train a copy (modules_to_save)."""
    if model.embedding_names:
        embed, head = model.embedding_names
    else:
        embed, head = _EMBEDDINGS.get(model.model_type, ("model.embed_tokens", "lm_head"))
        if model.module_prefix:  # inside a VLM wrapper: `model.language_model.embed_tokens`
            embed = model.module_prefix.removesuffix("layers.*.") + embed.rpartition(".")[2]
    v, h = model.vocab_size, model.hidden_size
    return {"embed_tokens": (embed, v, h), "lm_head": (head, h, v)}


def _module_matches(entry: str, key: str) -> bool:
    """PEFT's list rule (tuners_utils.py `check_target_module_exists`): the name, or a suffix after a dot."""
    return key == entry or key.endswith(f".{entry}")


def _embedding_roles(model: ModelSpec, entries: tuple[str, ...], regex: str | None = None) -> tuple[str, ...]:
    found = []
    for role, (name, _, _) in embedding_modules(model).items():
        if (regex is not None and _compile(regex).fullmatch(name)) or any(_module_matches(e, name) for e in entries):
            found.append(role)
    return tuple(found)


def resolve_modules_to_save(model: ModelSpec, modules: str | None) -> tuple[str, ...]:
    r"""PEFT `modules_to_save` (axolotl `lora_modules_to_save`, LLaMA-Factory `additional_target`): full
    trainable copies (ModulesToSaveWrapper) of the embeddings / lm_head, by role. Matching: peft 0.21.2
    `re.match(rf"(^|.*\.){m}($|\..*)", key)`."""
    import re

    if not modules:
        return ()
    entries = tuple(m.strip() for m in str(modules).split(",") if m.strip())
    roles = []
    for entry in entries:
        found = [role for role, (name, _, _) in embedding_modules(model).items()
                 if re.match(rf"(^|.*\.){entry}($|\..*)", name)]  # fmt: skip
        if not found:
            names = ", ".join(name for name, _, _ in embedding_modules(model).values())
            raise VramplanError(
                f"modules_to_save {entry!r}: vramplan models trainable copies of the embeddings only ({names} "
                f"in {model.name}); drop it or name one of those"
            )
        roles += found
    return tuple(dict.fromkeys(roles))


def resolve_target_parameters(model: ModelSpec, params: str | None) -> tuple[tuple[str, tuple[int, ...], int], ...]:
    """PEFT `target_parameters` (lora.ParamWrapper on a 3-D expert tensor or another nn.Parameter): the
    tensors named, as (path, shape, instances). An entry matches a parameter whose name is it or ends in
    "." + it (peft 0.21.2 tuners/lora/model.py `_create_and_replace` for target_parameters)."""
    if not params:
        return ()
    out = []
    tensors = model.layer_parameters
    for entry in (p.strip() for p in str(params).split(",") if p.strip()):
        found = [match for t in tensors for match in _layer_matches(model, t, entry)]
        if not found:
            shown = ", ".join(t[0] for t in tensors) or "none"
            raise VramplanError(
                f"target_parameters {entry!r} names no parameter of {model.name}'s layers that is not in an "
                f"nn.Linear (it has: {shown})"
            )
        out += found
    return tuple(dict.fromkeys(out))


def _layer_matches(
    model: ModelSpec, tensor: tuple[str, tuple[int, ...], int], entry: str
) -> list[tuple[str, tuple[int, ...], int]]:
    """The instances of a decoder-layer parameter that a `target_parameters` entry names: every layer's (the
    entry names its path inside the layer, `mlp.experts.gate_up_proj`), or some layers' only (the entry carries
    a layer index, `7.mlp.experts.gate_up_proj`, as OpenAI's gpt-oss fine-tuning cookbook writes it): one
    (path in that layer, shape, 1) per layer."""
    path, shape, instances = tensor
    stack = model.module_prefix.replace("*", "0") if model.module_prefix else "model.layers.0."
    if instances != model.num_hidden_layers or not path.startswith(stack) or not stack.endswith(".0."):
        return [tensor] if path == entry or path.endswith(f".{entry}") else []
    inside, head = path[len(stack) :], stack[: -len("0.")]
    paths = [f"{head}{i}.{inside}" for i in range(instances)]
    layers = [p for p in paths if p == entry or p.endswith(f".{entry}")]
    if len(layers) == instances:
        return [tensor]
    return [(p, shape, 1) for p in layers]


def resolve_lora_target(model: ModelSpec, target: str) -> tuple[tuple[str, ...], str]:
    """The decoder-layer linears (and Mixtral's router / expert names) `target` selects, and its preset."""
    selection = select_lora_targets(model, target)
    return selection.names, selection.preset


@dataclass(frozen=True, slots=True)
class LoraSelection:
    """What a `target_modules` value adapts: decoder-layer linears by name (in every layer the model holds them
    unless `layers` says in how many), and the embeddings by role (`embed_tokens`, `lm_head`)."""

    names: tuple[str, ...]
    preset: str
    layers: tuple[tuple[str, int], ...] = ()
    embeddings: tuple[str, ...] = ()
    unmatched: tuple[str, ...] = ()  # list entries that match no module: PEFT skips them when another matches


def select_lora_targets(model: ModelSpec, target: str, modules_to_save: tuple[str, ...] = ()) -> LoraSelection:
    """`target` as PEFT takes it; the embeddings in `modules_to_save` (roles) are not LoRA targets (PEFT excludes
    a module it saves from the adapter's targets)."""
    if not isinstance(target, str):
        raise VramplanError(f"--lora-target takes a preset or a comma list of module names, got {target!r}")
    entries = tuple(t.strip() for t in target.split(",") if t.strip())
    if set(target) & REGEX_CHARACTERS:
        names, layers = _regex_targets(model, target)
        roles = _embedding_roles(model, (), regex=target)
        if not names and not roles:
            example = module_names(model)[0][1] if model.linears else "?"
            raise VramplanError(
                f"LoRA target {target!r} matches no linear of {model.name} (PEFT full-matches module names such as "
                f"{example!r}); use e.g. '.*\\.(q_proj|v_proj)' or a comma list"
            )
        selection = LoraSelection(names, "custom", layers, roles)
    else:
        roles = _embedding_roles(model, entries)
        rest = [e for e in entries if not _embedding_roles(model, (e,))]
        if roles and not rest:
            selection = LoraSelection((), "custom", (), roles)
        else:
            listed = ",".join(rest) if roles else target
            unmatched = _unmatched_entries(model, listed) if roles or not _single(listed) else ()
            if unmatched:  # PEFT 0.21 raises only when no entry matched (tuners_utils.py `inject_adapter`)
                listed = ",".join(t for t in listed.split(",") if t.strip() and t.strip() not in unmatched)
            names, preset = _linear_targets(model, listed) if listed else ((), "custom")
            selection = LoraSelection(names, preset, (), roles, unmatched)
    kept = tuple(r for r in selection.embeddings if r not in modules_to_save)
    names = converted_away(model, selection.names)
    return LoraSelection(names, selection.preset, selection.layers, kept, selection.unmatched)


def _entry_matches(model: ModelSpec, entry: str) -> list[str]:
    """The decoder-layer linears a `target_modules` list entry selects, as PEFT matches it: the module's name is
    the entry or ends with "." + entry (tuners_utils.py `check_target_module_exists`)."""
    return [lin.name for lin, key in module_names(model) if key == entry or key.endswith(f".{entry}")]


def _single(target: str) -> bool:
    return len([t for t in target.split(",") if t.strip()]) <= 1


def _unmatched_entries(model: ModelSpec, target: str) -> tuple[str, ...]:
    """The entries of a comma list that match no module of `model`, as PEFT matches a list entry (the module's
    name is the entry or ends with "." + entry; tuners_utils.py `check_target_module_exists`), when at least one
    other entry matches: PEFT 0.21 adapts what matched and skips the rest, so a file written for several
    families (`q_proj` on an MLA model) trains. Presets and "all" are not entries."""
    wanted = [t.strip() for t in target.split(",") if t.strip()]
    if any(t.lower() in LORA_TARGET_PRESETS or t == "all" for t in wanted):
        return ()
    moe_names = {n for p in model.moe_params for n in p.peft_names}
    found = {t: t in moe_names or bool(_entry_matches(model, t)) for t in wanted}
    if not any(found.values()):
        return ()  # nothing matched: the error of `_linear_targets`, as PEFT raises
    return tuple(t for t in wanted if not found[t])


def _linear_targets(model: ModelSpec, target: str) -> tuple[tuple[str, ...], str]:
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
        default = PEFT_DEFAULT_TARGETS.get(model.model_type, names[:1])
        if model.mla and not model.mla.q_lora_rank:
            default = tuple("q_proj" if n == "q_b_proj" else n for n in default)
        return default, target
    if set(target) & REGEX_CHARACTERS:  # PEFT: a string target_modules is a regex, full-matched on module names
        return _regex_targets(model, target)[0], "custom"
    wanted = tuple(t.strip() for t in target.split(",") if t.strip())
    if "all" in wanted:  # LLaMA-Factory's spelling of all-linear
        return names + moe_names, "all-linear"
    if any(t not in names + moe_names for t in wanted):
        # PEFT: a list entry matches a module whose name is the entry or ends with "." + entry (self_attn.q_proj)
        by_suffix = {t: _entry_matches(model, t) for t in wanted}
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
