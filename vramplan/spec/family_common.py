"""What every hand-modelled family reads the same way from a config.json: the attention shape, the vocabulary,
the activation and soft-capping defaults of transformers 5.24's config classes (`common_fields`), for the
family builders (spec/families.py, spec/neox.py, spec/falcon_h1.py, spec/qwen35.py, spec/mla.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vramplan.spec.family_traits import HEAD_DIM_DEFAULTS
from vramplan.spec.fields import config_int, config_str


def required(cfg: Mapping[str, Any], key: str, name: str) -> int:
    """A required shape field: an integer in its range (vramplan.spec.fields.SHAPE_LIMITS)."""
    return config_int(cfg, key, name)


# transformers 5.24 config classes' default `hidden_act` where it is not SiLU
DEFAULT_ACT = {"phi": "gelu_new", "gpt_neox": "gelu", "bloom": "bloom_gelu", "gemma": "gelu_pytorch_tanh",
               "gemma2": "gelu_pytorch_tanh", "gemma3_text": "gelu_pytorch_tanh",
               "starcoder2": "gelu_pytorch_tanh", "gemma4_text": "gelu_pytorch_tanh",
               "gemma3n_text": "gelu_pytorch_tanh"}  # fmt: skip
# Softcapping defaults of the config classes (transformers 5.24): Gemma2Config attn 50.0 / final 30.0,
# Gemma3TextConfig None / None (the Gemma 3 checkpoints set both to null)
SOFTCAP_DEFAULTS: dict[str, tuple[float | None, float | None]] = {
    "gemma2": (50.0, 30.0), "gemma3_text": (None, None), "gemma4_text": (None, None),
    "gemma3n_text": (None, 30.0),  # Gemma3nTextConfig (5.25): final_logit_softcapping 30.0, no attention softcap
}  # Gemma4TextConfig (5.25): final_logit_softcapping None; no attention softcap field


def common_fields(cfg: Mapping[str, Any], name: str, h: int, heads: int) -> dict[str, Any]:
    kv = config_int(cfg, "num_key_value_heads", name, default=heads)
    head_dim = config_int(cfg, "head_dim", name, default=HEAD_DIM_DEFAULTS.get(cfg.get("model_type", ""), h // heads))
    return {
        "name": name,
        "hidden_size": h,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": head_dim,
        "vocab_size": required(cfg, "vocab_size", name),
        "max_position_embeddings": config_int(
            cfg, "max_position_embeddings", name, default=config_int(cfg, "seq_length", name, default=2048)
        ),
        "attn_softcap": _softcap(cfg, 0, "attn_logit_softcapping"),
        "final_softcap": _softcap(cfg, 1, "final_logit_softcapping"),
        "hidden_act": config_str(
            cfg,
            "hidden_activation",
            name,
            config_str(cfg, "hidden_act", name, DEFAULT_ACT.get(cfg["model_type"], "silu")),
        ),
        "config": dict(cfg),
    }


def _softcap(cfg: Mapping[str, Any], index: int, key: str) -> bool:
    if index == 0 and cfg.get("model_type") == "gemma3_text":
        return False  # Gemma3Attention.forward passes no `softcap` to the attention function (5.24): never applied
    defaults = SOFTCAP_DEFAULTS.get(cfg.get("model_type", ""))
    return defaults is not None and cfg.get(key, defaults[index]) is not None


def every_nth_full(layers: int, pattern: int) -> tuple[str, ...]:
    """Every `pattern`-th layer full attention, the others sliding: the rule the config classes fill
    `layer_types` by (Gemma3TextConfig, Gemma4TextConfig, Cohere2Config, GptOssConfig,
    Olmo3Config, Exaone4Config)."""
    return tuple("sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers))
