"""A config.json to a ModelSpec, for any family: hand-modelled ones exactly (spec/families.py), every other type
through the architecture table (spec/generic.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vramplan.spec.families import known_model_spec, text_config
from vramplan.spec.fields import config_str
from vramplan.spec.model import SUPPORTED_MODEL_TYPES, ModelSpec


def model_spec_from_config(cfg: Mapping[str, Any], name: str) -> ModelSpec:
    """Build a ModelSpec from a Hugging Face `config.json` mapping (a VLM wrapper's `text_config` is used, and
    the estimate then says it is the text model only)."""
    text = text_config(cfg, name)
    if config_str(text, "model_type", name) not in SUPPORTED_MODEL_TYPES:
        from vramplan.spec.generic import generic_model_spec  # the architecture table: read only when needed

        return generic_model_spec(text, name, text_only=text is not cfg)
    return known_model_spec(cfg, name)
