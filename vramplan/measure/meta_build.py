"""Building a transformers model type on the meta device from its config class's defaults (with one field
changed), and reading what the class itself declares: the pieces `vramplan.measure.architectures` records the
table from."""

from __future__ import annotations

import json
import warnings
from typing import Any

import torch

from vramplan.spec.architectures import flatten

SKIP_FIELDS = ("_id", "_ids", "num_labels", "transformers_version")
NOT_STRUCTURAL = ("return_", "output_", "use_cache", "torchscript", "is_encoder_decoder", "tie_encoder",
                  "add_cross_attention", "chunk_size", "tie_word_embeddings")  # fmt: skip
# config values some classes need before they can build from defaults at all (one line each, with the reason)
BUILD_FIXES: dict[str, dict[str, Any]] = {
    "reformer": {"is_decoder": True},  # ReformerModelWithLMHead asserts is_decoder
    "dbrx": {"attn_config": {"rope_theta": 500000.0}},  # DbrxAttentionConfig has no rope_theta default (DBRX's)
    "nemotron": {"num_key_value_heads": 8},  # NemotronConfig leaves it None, its attention divides by it (Minitron's)
    # Lfm2MoeConfig leaves layer_types None and derives none, while Lfm2MoeDecoderLayer reads
    # `config.layer_types[layer_idx]` (configuration_lfm2_moe.py, modeling_lfm2_moe.py:479, 5.25): the layers of
    # its docstring checkpoint LiquidAI/LFM2-8B-A1B (24 layers, attention at 2, 6, 10, 14, 18, 21; its hub
    # config.json as copied in find_string ids 61253251750 and 56276023557), which follow the layer count below
    "lfm2_moe": {"num_hidden_layers": 24, "layer_types": [
        "full_attention" if i in (2, 6, 10, 14, 18, 21) else "conv" for i in range(24)]},
}


# string patterns a config class turns into a per-layer list and pops (not in to_dict(): the table cannot see
# them): nemotron_h's `hybrid_override_pattern` "M-M*-E" (configuration_nemotron_h.py 5.24, _pattern_to_list)
PATTERN_FIELDS: dict[str, tuple[str, ...]] = {"nemotron_h": ("hybrid_override_pattern", "mtp_hybrid_override_pattern")}


def pattern_fields(model_type: str) -> dict[str, dict[str, Any]]:
    """{pattern kwarg: {"field": the list it becomes, "chars": {character: list value}}}, probed from the config
    class: each printable character alone as the pattern, kept when the class takes it."""
    import string

    from transformers import AutoConfig

    out: dict[str, dict[str, Any]] = {}
    base = flatten(AutoConfig.for_model(model_type).to_dict())
    for kwarg in PATTERN_FIELDS.get(model_type, ()):
        chars: dict[str, Any] = {}
        field = None
        for c in string.ascii_letters + string.digits + string.punctuation:
            try:
                flat = flatten(AutoConfig.for_model(model_type, **{kwarg: c * 3}).to_dict())
            except Exception:
                continue
            moved = [k for k, v in flat.items() if isinstance(v, list) and v != base.get(k) and len(v) == 3]
            if len(moved) == 1 and len(set(flat[moved[0]])) == 1:
                field = field or moved[0]
                if moved[0] == field:
                    chars[c] = flat[field][0]
        if field:
            out[kwarg] = {"field": field, "chars": chars}
    return out


def size_fields(flat: dict[str, Any]) -> dict[str, int]:
    return {
        k: v
        for k, v in flat.items()
        if isinstance(v, int) and not isinstance(v, bool) and v > 0 and not k.endswith(SKIP_FIELDS)
    }


def list_counts(flat: dict[str, Any]) -> dict[str, int]:
    """`count(layer_types=full_attention)`: how many entries of a per-layer list take each value, and
    `count(layer_types)` its length (nemotron_h's layer count is its `layers_block_type`'s length)."""
    out: dict[str, int] = {}
    for k, v in flat.items():
        if isinstance(v, list) and v and all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in v):
            out[f"count({k})"] = len(v)
            for x in set(v):
                out[f"count({k}={x})"] = sum(1 for y in v if y == x)
    return out


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in flat.items():
        parts = k.split(".")
        d = out
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = v
    return out


def make_config(model_type: str, changes: dict[str, Any]):
    from transformers import AutoConfig

    fixes = BUILD_FIXES.get(model_type, {})
    base = AutoConfig.for_model(model_type, **fixes)
    kwargs = {**fixes}
    for k, v in changes.items():
        top, _, rest = k.partition(".")
        if rest:
            sub = kwargs.get(top) or getattr(base, top).to_dict()
            sub = flatten(sub)
            if isinstance(sub.get(rest), int) and sub[rest] != v:  # per-layer lists follow a new layer count:
                sub = {key: x for key, x in sub.items() if not (isinstance(x, list) and len(x) == sub[rest])}
            sub[rest] = v
            kwargs[top] = _nest(sub)
        else:
            kwargs[k] = v
    layers = kwargs.get("num_hidden_layers")
    for k, v in fixes.items():  # a fix's per-layer list follows a new layer count (its pattern, cut or repeated)
        if isinstance(v, list) and k not in changes and len(v) == fixes.get("num_hidden_layers") != layers:
            kwargs[k] = [v[i % len(v)] for i in range(layers)]
    return AutoConfig.for_model(model_type, **kwargs)


def build(config) -> tuple[dict[str, Any], dict[str, list], dict[str, str], str | None]:
    """(flat config fields, {key: [shape, count, module class if Linear/Conv1D]}, those weights, output key)."""
    import transformers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            model = getattr(transformers, auto_class(config.model_type)).from_config(config)
    linear_weights = {
        f"{n}.weight": type(mod).__name__
        for n, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) or type(mod).__name__ == "Conv1D"
    }
    params: dict[str, list] = {}
    shapes_seen: dict[str, list[list[int]]] = {}
    for name, p in model.named_parameters():
        key = param_key(name)
        shape = list(p.shape)
        seen = shapes_seen.setdefault(key, [])
        if shape not in seen:
            seen.append(shape)
        if seen.index(shape):  # the same name in another shape (layers of another kind): its own key, numbered
            key = f"{key}#{seen.index(shape) + 1}"  # in order of first appearance, so it is the same in every sample
        entry = params.setdefault(key, [shape, 0, linear_weights.get(name)])
        entry[1] += 1
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    out_key = None
    if out_emb is not None and getattr(out_emb, "weight", None) is not None:
        names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        full = names.get(id(out_emb.weight))
        if full is not None:
            out_key = param_key(full)
            if out_key not in params:  # tied: not in named_parameters(); record its shape anyway
                params[out_key] = [list(out_emb.weight.shape), 0, type(out_emb).__name__]
    flat = flatten(config.to_dict())
    return flat, params, linear_weights, out_key


def auto_class(model_type: str) -> str:
    """The class that builds the whole model: a causal LM, or a vision-language model (its text decoder,
    vision tower and projector; transformers 5.24 `MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES`)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return "AutoModelForCausalLM" if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES else "AutoModelForImageTextToText"


def model_types() -> list[str]:
    """Every causal-LM and image-text-to-text model type of the installed transformers."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    return sorted(set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) | set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES))


def param_key(name: str) -> str:
    return ".".join("*" if part.isdigit() else part for part in name.split("."))


def sub_config_defaults(model_type: str) -> dict[str, dict[str, Any]]:
    """For each sub-config (`vision_config`, `text_config`, ...): its own class's defaults. A wrapper's defaults
    for a sub-config can differ from them (LlavaConfig builds a 1024-wide CLIP when given none), and a
    config.json that gives the sub-config as a dict starts from the class's (`CONFIG_MAPPING[type](**dict)`)."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type, **BUILD_FIXES.get(model_type, {}))
    out: dict[str, dict[str, Any]] = {}
    for name in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, name, None)
        if sub is None or not hasattr(sub, "to_dict"):
            continue
        try:
            fresh = type(sub)().to_dict()
        except Exception:  # a sub-config class without defaults of its own: the wrapper's are all there is
            continue
        out[name] = {k: v for k, v in flatten(fresh).items() if jsonable(v) and not k.endswith(SKIP_FIELDS)}
    return out


def auto_sub_configs(model_type: str) -> list[str]:
    """The sub-configs whose class a config.json's `model_type` picks (`sub_configs = {"vision_config":
    AutoConfig}`: LLaVA's CLIP or SigLIP, `CONFIG_MAPPING[type](**dict)`). The others have a fixed class
    (Qwen3_5Config's `Qwen3_5VisionConfig`) that ignores the dict's `model_type`: Qwen3.5's hub config says
    `"model_type": "qwen3_5"` in its vision_config and builds the Qwen3_5VisionConfig tower all the same
    (transformers 5.25 configuration_utils.py, PreTrainedConfig sub-config handling)."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    subs = getattr(CONFIG_MAPPING[model_type], "sub_configs", {}) or {}
    return sorted(name for name, cls in subs.items() if cls is AutoConfig)


def keep_in_fp32(model_type: str) -> set[str]:
    """Module names the model class keeps in fp32 and bitsandbytes leaves unquantized (`_keep_in_fp32_modules`,
    `_keep_in_fp32_modules_strict`; transformers quantizers/base.py get_modules_to_not_convert)."""
    import transformers
    from transformers.models.auto import modeling_auto

    causal = auto_class(model_type) == "AutoModelForCausalLM"
    mapping = (
        modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        if causal
        else modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    )
    class_names = mapping[model_type]
    names: set[str] = set()
    for class_name in (class_names,) if isinstance(class_names, str) else class_names:
        cls = getattr(transformers, class_name, None)
        for attr in ("_keep_in_fp32_modules", "_keep_in_fp32_modules_strict"):
            names |= set(getattr(cls, attr, None) or ())
    return names


def jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
    except TypeError:
        return False
    return True
