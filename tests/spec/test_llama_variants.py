"""The Llama-like variants' per-layer fields read as transformers 5.25's config classes fill them: SmolLM3's NoPE
layers and sliding layers, Ministral's sliding layers and window, InternLM3's bias keys. Oracle: the config
object `AutoConfig.for_model` builds (and, for the NoPE flags, each built attention's `use_rope`)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import TINY_CONFIGS
from vramplan.spec import model_spec_from_config

VARIANTS: dict[str, dict[str, Any]] = {
    "smollm3": TINY_CONFIGS["smollm3"],
    "smollm3-interval-4": {**TINY_CONFIGS["smollm3"], "num_hidden_layers": 8, "no_rope_layer_interval": 4},
    "smollm3-list": {**TINY_CONFIGS["smollm3"], "no_rope_layers": [0, 1]},
    "smollm3-sliding": {**TINY_CONFIGS["smollm3"], "use_sliding_window": True, "sliding_window": 32},
    "ministral": TINY_CONFIGS["ministral"],
    "ministral-defaults": {
        k: v for k, v in TINY_CONFIGS["ministral"].items() if k not in ("sliding_window", "layer_types")
    },
    "ministral-no-window": {**TINY_CONFIGS["ministral"], "sliding_window": None, "layer_types": None},
    "ministral3": TINY_CONFIGS["ministral3"],
}


def _config(cfg: dict[str, Any]):
    from transformers import AutoConfig

    cfg = dict(cfg)
    return AutoConfig.for_model(cfg.pop("model_type"), **cfg)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_layer_fields_match_the_config_class(variant: str) -> None:
    cfg = VARIANTS[variant]
    m = model_spec_from_config(cfg, variant)
    real = _config(cfg)
    layers = real.num_hidden_layers
    window = real.sliding_window if getattr(real, "use_sliding_window", True) else None
    assert m.sliding_window == window
    real_types = tuple(getattr(real, "layer_types", None) or ())
    assert (m.layer_types or ("full_attention",) * layers) == (real_types or ("full_attention",) * layers)
    flags = getattr(real, "no_rope_layers", None)
    assert m.no_rope_layers == (tuple(i for i in range(layers) if not flags[i]) if flags else ())


@pytest.mark.parametrize("variant", ["smollm3", "smollm3-interval-4"])
def test_nope_layers_are_the_built_attentions_without_rope(variant: str) -> None:
    """The layers that skip RoPE in the built model (SmolLM3Attention.use_rope, modeling_smollm3.py 5.25) are the
    ones the walk takes without it (walk.layer_specs)."""
    import torch
    from transformers import AutoModelForCausalLM

    from vramplan.estimator.walk import layer_specs

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(_config(VARIANTS[variant]))
    built = tuple(i for i, layer in enumerate(model.model.layers) if not layer.self_attn.use_rope)
    m = model_spec_from_config(VARIANTS[variant], variant)
    assert built
    assert tuple(i for i, spec in enumerate(layer_specs(m)) if not spec.rope) == built


@pytest.mark.parametrize("bias", [False, True])
def test_internlm3_bias_keys(bias: bool) -> None:
    """config.json's `qkv_bias` / `bias` are InternLM3Config's attention_bias / mlp_bias (attribute_map)."""
    cfg = {**TINY_CONFIGS["internlm3"], "qkv_bias": bias, "bias": bias}
    real = _config(cfg)
    m = model_spec_from_config(cfg, "internlm3")
    assert {li.name: li.bias for li in m.linears} == {
        **dict.fromkeys(("q_proj", "k_proj", "v_proj", "o_proj"), real.attention_bias),
        **dict.fromkeys(("gate_proj", "up_proj", "down_proj"), real.mlp_bias),
    }


def test_bad_no_rope_layers_is_one_error() -> None:
    from vramplan.errors import VramplanError

    with pytest.raises(VramplanError, match="no_rope_layers"):
        model_spec_from_config({**TINY_CONFIGS["smollm3"], "no_rope_layers": [1]}, "bad")
