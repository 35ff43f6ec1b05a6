"""A config.json to a ModelSpec, for any family: hand-modelled ones exactly (spec/families.py), every other type
through the architecture table (spec/generic.py), a vision-language wrapper as its text decoder plus its
vision tower and projector as frozen weights (spec/vision.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from vramplan.spec.families import all_layers_routed, known_model_spec, text_config
from vramplan.spec.family_traits import HAND_MODELLED_TYPES
from vramplan.spec.fields import config_str
from vramplan.spec.model import ModelSpec
from vramplan.spec.remote_code import mamba_ssm_as_transformers, mamba_ssm_layout


def model_spec_from_config(cfg: Mapping[str, Any], name: str, linearized_experts: bool = False) -> ModelSpec:
    """Build a ModelSpec from a Hugging Face `config.json` mapping. A wrapper's `text_config` (VLMs, and
    composite configs such as Gemma 3's) is read with its class's defaults filled in; the estimate then counts
    the vision tower and projector as frozen weights, or says that it could not. `linearized_experts`: axolotl's
    `llama4_linearized_experts` (Llama 4's experts as per-expert nn.Linear, spec/llama4.py)."""
    if cfg.get("model_type") is not None:
        config_str(cfg, "model_type", name)  # a list or a number is one error line, not a lookup's TypeError
    elif mamba_ssm_layout(cfg):  # state-spaces/mamba-2.8b's own config.json: transformers' mamba, converted
        spec = model_spec_from_config(mamba_ssm_as_transformers(cfg, name), name)
        said = (f"{name} is mamba_ssm's config.json (no model_type): estimated as transformers' mamba it converts to "
                "(convert_mamba_ssm_checkpoint_to_pytorch.py; the -hf repository), which is what transformers loads")
        a = spec.approximation
        return replace(spec, approximation=a._replace(note="; ".join(x for x in (said, a.note) if x)) if a else None)
    if linearized_experts:  # axolotl's per-expert nn.Linear layout: counted from its tensors (spec/generic.py)
        hand = HAND_MODELLED_TYPES - {"llama4_text"}
    else:
        hand = HAND_MODELLED_TYPES
    if "text_config" not in cfg and cfg.get("model_type") in hand and all_layers_routed(cfg):
        return known_model_spec(cfg, name)  # the common case: the architecture table is not read
    from vramplan.spec import architectures  # read only when needed (a 3 MB table)
    from vramplan.spec.generic import generic_model_spec
    from vramplan.spec.vision import text_config_filled, with_tower

    entry = architectures.record(cfg.get("model_type"))
    if entry is not None and entry.get("wrapper") and "remote_class" in entry:  # a remote-code VLM (MOSS-VL):
        text = cfg.get("text_config")  # its record holds text model and tower together, read as a whole
        return with_tower(generic_model_spec(cfg, name, text_part=True), cfg, text if isinstance(text, Mapping) else {})
    inner = cfg.get("text_config")
    default = entry["defaults"].get("text_config.model_type") if entry else None
    if default and (inner is None or (isinstance(inner, Mapping) and not inner.get("model_type"))):
        # no text_config, or one without model_type: the wrapper class's default text model (LlavaConfig: llama)
        cfg = {**cfg, "text_config": {**(inner or {}), "model_type": default}}
    text = text_config(cfg, name)
    if text is not cfg:
        text = text_config_filled(cfg, text)
        # transformers 5 ties the output embedding by the wrapper's flag (Mistral3Config: True, MistralConfig: False)
        tie = cfg.get("tie_word_embeddings", entry["defaults"].get("tie_word_embeddings") if entry else None)
        if isinstance(tie, bool):
            text = {**text, "tie_word_embeddings": tie}
    mt = config_str(text, "model_type", name)
    known = architectures.known_types()
    if mt in hand and all_layers_routed(text):
        spec = known_model_spec(text, name)
    elif text is not cfg and mt not in known and cfg.get("model_type") in known:
        # a text model type that exists only inside its wrapper (qwen2_5_vl_text): the wrapper's record, text part
        spec = generic_model_spec({**cfg, "text_config": text}, name, text_part=True)
    else:
        spec = generic_model_spec(text, name, linearized_experts=linearized_experts)
    return spec if text is cfg else with_tower(spec, cfg, text)
