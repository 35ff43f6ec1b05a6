"""Vision-language wrappers (LLaVA, Qwen2.5/3-VL, Gemma 3, Mistral 3, Llama-3.2-Vision, ...): the text decoder as
vramplan models it, plus the vision tower and projector as frozen weights.

The text decoder: the wrapper's `text_config` with its own config class's defaults filled in (llava-1.5's hub
config.json has no `hidden_size`: LlamaConfig's default applies, as transformers' `CONFIG_MAPPING[...]
(**text_config)` does), modelled by hand when vramplan knows its family, else through the architecture table.

The tower: every tensor of the wrapper (the architecture table's `AutoModelForImageTextToText` /
`AutoModelForCausalLM` build) outside the text model (`model.language_model.`, the output embedding): vision
encoder, projector, and any other modality's encoder. It is frozen in every method (LLaMA-Factory's defaults
`freeze_vision_tower` / `freeze_multi_modal_projector`; LoRA adapts the text decoder), and bitsandbytes packs its
`nn.Linear` weights like the decoder's (transformers 5.24 integrations/bitsandbytes.py `replace_with_bnb_linear`:
every `type(module) is nn.Linear` outside `modules_to_not_convert`). Not modelled: the tower's forward
activations (no tensor of it requires grad, so autograd saves none; the transient ones are one tower layer's
for the images of a batch); image positions in the text sequence are `--image-tokens`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from vramplan.spec import architectures
from vramplan.spec.model import Approximation, ModelSpec


def text_config_filled(cfg: Mapping[str, Any], text: Mapping[str, Any]) -> dict[str, Any]:
    """The wrapper's text_config with its config class's scalar defaults where absent (lists such as
    `layer_types` are left to the class, which derives them from the layer count)."""
    mt = text.get("model_type")
    if mt not in architectures.known_types():
        return dict(text)
    arch = architectures.table()["architectures"][mt]
    derived = set(arch["derived"]) | set(arch.get("none_defaults", {}))  # head_dim: the class derives it again
    filled = {
        k: v
        for k, v in arch["defaults"].items()
        if "." not in k and not isinstance(v, (list, dict)) and v is not None and k not in derived
    }
    return {**filled, **{k: v for k, v in text.items() if v is not None}}


def text_stack_prefix(ts: tuple[architectures.Tensor, ...], keys: frozenset[str]) -> str:
    """The text decoder's layers inside the wrapper (`model.language_model.layers.*.`): what PEFT's
    target_modules are matched against (axolotl's `model.language_model.layers.[\\d]+.(mlp|self_attn)...`)."""
    counts: dict[str, int] = {}
    for t in ts:
        if t.key in keys and t.kind and ".*." in t.key:
            prefix = t.key[: t.key.index(".*.") + 3]
            counts[prefix] = counts.get(prefix, 0) + t.count
    return max(counts, key=counts.__getitem__) if counts else ""


def tower_tensors(
    cfg: Mapping[str, Any], text: Mapping[str, Any]
) -> tuple[tuple[tuple[tuple[int, ...], int, bool], ...], str, str]:
    """(every tensor outside the text model as (shape, count, bitsandbytes packs it), a note when not counted,
    the text decoder's layer prefix inside the wrapper)."""
    mt = cfg.get("model_type")
    if mt == "gemma4":  # its record holds no tower (Gemma4Config's default has none): counted by hand
        from vramplan.spec.gemma4 import gemma4_tower_tensors

        hidden = text.get("hidden_size", 2304)
        tensors, note = gemma4_tower_tensors(cfg, hidden if isinstance(hidden, int) else 2304, str(cfg.get("name", mt)))
        return tensors, note, "model.language_model.layers.*."
    if mt == "gemma3n":  # Gemma3nModel (5.25): a timm MobileNetV5 vision tower and a Conformer audio tower
        note = "its vision (timm MobileNetV5) and audio towers and their embedders are not counted"
        return (), note, "model.language_model.layers.*."
    arch = architectures.record(mt)
    if arch is None:
        return (), f"the vision tower of a {mt!s} wrapper is not counted (transformers has no record of it)", ""
    defaults = arch["defaults"]
    for sub in set(arch.get("auto_sub_configs", ("vision_config", "audio_config"))) & {"vision_config", "audio_config"}:
        # only a sub-config whose class the dict's model_type picks (LLaVA's CLIP vs SigLIP) can be another
        # tower than the record's; a fixed class (Qwen3.5's) ignores the name (meta_build.auto_sub_configs)
        user_type = (cfg.get(sub) or {}).get("model_type") if isinstance(cfg.get(sub), Mapping) else None
        default_type = defaults.get(f"{sub}.model_type")
        if user_type and default_type and user_type != default_type:
            return (
                (),
                (
                    f"the {sub.split('_')[0]} tower ({user_type}) is not counted: {mt}'s record was built with "
                    f"{default_type}"
                ),
                "",
            )
    full = {**cfg, "text_config": text}
    ts = architectures.tensors(str(mt), full)
    text_part = architectures.text_keys(str(mt), ts)
    keep32 = tuple(arch.get("keep_in_fp32_modules", ()))
    out = []
    for t in ts:
        if t.key in text_part:
            continue
        packed = (
            t.kind in ("Linear", "Conv1D")
            and t.name.endswith(".weight")
            and len(t.shape) == 2
            and not _kept(t.name.removesuffix(".weight"), keep32)
        )
        out.append((t.shape, t.count, packed))
    if not out and arch.get("auto_class") == "AutoModelForCausalLM":  # Qwen3.5: Qwen3_5ForCausalLM, text only
        only = f"AutoModelForCausalLM builds {mt}'s text model only: the checkpoint's vision tower is not loaded"
        return (), only, ""
    return tuple(out), "", text_stack_prefix(ts, text_part)


def with_tower(text_spec: ModelSpec, cfg: Mapping[str, Any], text: Mapping[str, Any]) -> ModelSpec:
    """A VLM: its text decoder's spec plus the tower as frozen tensors, and the estimate says so."""
    tower, missing, stack = tower_tensors(cfg, text)
    wrapper = str(cfg.get("model_type"))
    said = (
        f"vision-language model ({wrapper}): vision tower + projector, "
        f"{sum(_numel(s) * n for s, n, _ in tower):,} parameters, counted as frozen weights"
        + (f" ({missing})" if missing else "")
        if tower
        else f"vision-language model ({wrapper}) estimated as its text model: "
        + (missing or f"the vision tower is not counted ({wrapper}'s record holds none)")
    )
    said += "; their activations and image positions beyond --image-tokens are not in the estimate"
    if text_spec.approximation is not None:  # a generic text decoder: its band, and this note too
        a = text_spec.approximation
        approximation = a._replace(note="; ".join(x for x in (a.note, said) if x))
    else:  # a hand-modelled decoder: exact activations, the tower's weights counted exactly
        approximation = Approximation("vision", f"{text_spec.model_type} decoder, hand-modelled", 0.0, said)
    stack = stack or text_spec.module_prefix
    names = text_spec.embedding_names
    if names and text_spec.module_prefix and stack != text_spec.module_prefix:  # model.embed_tokens, in the wrapper
        old_root, new_root = (x.rpartition(".*.")[0].rpartition(".")[0] for x in (text_spec.module_prefix, stack))
        names = tuple(new_root + n[len(old_root) :] if n.startswith(old_root + ".") else n for n in names)
    return replace(
        text_spec, tower_tensors=tower, approximation=approximation, module_prefix=stack, embedding_names=names
    )


def _kept(module: str, patterns: tuple[str, ...]) -> bool:
    """transformers 5.24 quantizers/quantizers_utils.py `should_convert_module`, negated: a pattern matches from
    the start up to a module boundary, as a regex, or as a suffix."""
    boundary = r"(?:(?<=\.)|(?=\.|$))"
    return any(re.match(rf"(?:{key}){boundary}", module) or module.endswith(key) for key in patterns)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
