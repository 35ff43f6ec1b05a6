"""The generic path (architecture table + stand-in walk) against the exact one, on hand-modelled families run
as if they were unknown: parameter counts equal, device total within the band it declares.

The band itself is the largest difference over benchmarks/generic_band.py's 624 rows; here a sample of
settings per built-in profile must stay inside it (so a change that widens the gap fails here).
"""

from __future__ import annotations

import pytest

from vramplan.api import estimate
from vramplan.errors import VramplanError
from vramplan.sources.profiles import load_model, load_model_config
from vramplan.spec import model_spec_from_config
from vramplan.spec.generic import generic_model_spec

PROFILES = ("llama-3.1-8b", "qwen2.5-7b", "mistral-7b", "gemma-2-2b", "phi-3-mini", "phi-2", "qwen3-8b", "bloom-560m")


def _generic(name: str):
    _, cfg = load_model_config(name)
    return generic_model_spec({k: v for k, v in cfg.items() if k != "vramplan_profile"}, name)


@pytest.mark.parametrize("name", PROFILES)
def test_generic_counts_equal_exact(name: str) -> None:
    exact, generic = load_model(name), _generic(name)
    assert generic.total_params == exact.total_params
    assert generic.linear_weight_params == exact.linear_weight_params


@pytest.mark.parametrize("name", PROFILES)
@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_generic_within_band(name: str, method: str) -> None:
    generic = _generic(name)
    a = estimate(load_model(name), gpu="a100-80gb", method=method, seq=2048, batch=2).device_bytes
    b = estimate(generic, gpu="a100-80gb", method=method, seq=2048, batch=2).device_bytes
    assert abs(b - a) / a <= generic.approximation.error_band


def test_generic_estimate_says_so() -> None:
    b = estimate(_generic("llama-3.2-1b"), gpu="3060ti", method="qlora")
    assert b.approximation is not None
    assert b.approximation.kind == "generic"
    assert b.error_band > estimate("llama-3.2-1b", gpu="3060ti", method="qlora").error_band


def test_unknown_and_unbuildable_types_refused() -> None:
    with pytest.raises(VramplanError, match="model_type"):
        model_spec_from_config({"model_type": "no_such_model", "hidden_size": 8}, "x")
    with pytest.raises(VramplanError, match="transformers could not build"):
        model_spec_from_config({"model_type": "gpt2", "n_embd": None, "n_layer": "two"}, "x")


# falcon's fused query_key_value takes its out features from two booleans: `multi_query` (hidden + 2 * head_dim
# at FalconConfig's default True, 3 * hidden off: falcon-rw) and `new_decoder_architecture` ((heads + 2 *
# num_kv_heads) * head_dim: falcon-40b / 180b, whatever multi_query says); the table records each shape under
# the booleans it holds for (measure/architectures.py: a flip that reshapes a tensor is sampled on its own).
FALCON_ATTENTION = [  # (multi_query, new_decoder_architecture, query heads, num_kv_heads in config.json)
    (True, False, 71, 71),  # falcon-7b's config.json: FalconAttention uses one K/V head whatever num_kv_heads says
    (False, False, 71, 71),  # falcon-rw: as many K/V heads as query heads
    (False, True, 64, 8),  # falcon-40b's 128:8 grouping, halved
    (True, True, 64, 8),
]


@pytest.mark.parametrize(("multi_query", "new_arch", "heads", "kv_field"), FALCON_ATTENTION)
def test_generic_kv_heads_are_the_attention_modules(
    multi_query: bool, new_arch: bool, heads: int, kv_field: int
) -> None:
    """The K/V heads the walk and the KV cache use are those of transformers' attention module, not the config
    field (FalconConfig keeps num_kv_heads = 71 for falcon-7b; FalconAttention projects to 1 head)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = {"model_type": "falcon", "hidden_size": heads * 8, "num_attention_heads": heads, "num_hidden_layers": 2,
           "vocab_size": 128, "multi_query": multi_query, "new_decoder_architecture": new_arch,
           "num_kv_heads": kv_field, "parallel_attn": True, "bias": False}  # fmt: skip
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(transformers.FalconConfig(**cfg))
    attention = model.transformer.h[0].self_attention
    assert generic_model_spec(cfg, "tiny-falcon").num_key_value_heads == attention.num_kv_heads
