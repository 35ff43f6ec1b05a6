"""OLMo 2 / OLMo 3 / EXAONE 4 specs against transformers 5.25's own config classes and modules (meta device)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import TINY_CONFIGS
from vramplan.errors import VramplanError
from vramplan.spec import model_spec_from_config

EIGHT_LAYERS = {**TINY_CONFIGS["llama"], "num_hidden_layers": 8}


def _hf_config(cfg: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    return AutoConfig.for_model(**cfg)


@pytest.mark.parametrize(
    "cfg",
    [
        {**EIGHT_LAYERS, "model_type": "olmo3"},  # Olmo3Config: every 4th layer full
        {**EIGHT_LAYERS, "model_type": "exaone4"},  # Exaone4Config: sliding_window_pattern 4
        {**EIGHT_LAYERS, "model_type": "exaone4", "sliding_window_pattern": 3},
        {**EIGHT_LAYERS, "model_type": "olmo3", "layer_types": ["full_attention"] * 8},
    ],
    ids=["olmo3-default", "exaone4-default", "exaone4-pattern3", "olmo3-explicit"],
)
def test_layer_types_and_window_as_transformers_fills_them(cfg: dict[str, Any]) -> None:
    m = model_spec_from_config(cfg, "m")
    hf = _hf_config(cfg)
    assert list(m.layer_types) == list(hf.layer_types)
    assert m.sliding_window == hf.sliding_window


def test_olmo2_has_no_sliding_window() -> None:
    """Olmo2Config has no sliding window: a stray key in config.json is not read by the model."""
    m = model_spec_from_config({**TINY_CONFIGS["olmo2"], "sliding_window": 8}, "olmo2")
    assert m.sliding_window is None
    assert m.layer_types == ()


@pytest.mark.parametrize(
    ("family", "q_shape", "k_shape"),
    [("olmo2", (4 * 16,), (2 * 16,)), ("olmo3", (4 * 16,), (2 * 16,)), ("exaone4", (16,), (16,))],
)  # heads·head_dim / kv_heads·head_dim over the whole projection (OLMo), head_dim per head (EXAONE 4)
def test_qk_norm_shapes_match_the_modules(family: str, q_shape: tuple[int, ...], k_shape: tuple[int, ...]) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(_hf_config(TINY_CONFIGS[family]))
    attention = model.model.layers[0].self_attn
    assert (tuple(attention.q_norm.weight.shape), tuple(attention.k_norm.weight.shape)) == (q_shape, k_shape)
    m = model_spec_from_config(TINY_CONFIGS[family], family)
    assert m.head_norm_params == q_shape[0] + k_shape[0]


@pytest.mark.parametrize(
    "extra",
    [{"sliding_window_pattern": "LLLG"}, {"sliding_window": None}],
    ids=["string-pattern", "no-window"],
)
def test_exaone4_without_layer_types_that_transformers_cannot_fill_is_refused(extra: dict[str, Any]) -> None:
    """Exaone4Config computes `(i + 1) % sliding_window_pattern` (a string, or 0 without a window, fails)."""
    cfg = {**EIGHT_LAYERS, "model_type": "exaone4", **extra}
    with pytest.raises(VramplanError, match="layer_types"):
        model_spec_from_config(cfg, "m")
    with pytest.raises((TypeError, ZeroDivisionError)):
        _hf_config(cfg)
