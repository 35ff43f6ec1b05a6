"""Reading one field of a config.json: its type and its range, or one error line naming the field and the file.

A config.json is user input: it may be hand-edited (`hidden_size: -4096`, `"big"`), truncated, or from
another library. Every shape field is an integer in `SHAPE_LIMITS`: far above any released model, low
enough that the estimator's integer products stay exact and fast and every search over a shape stays short.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vramplan.errors import VramplanError

# Largest released values (for scale): hidden 16384, intermediate 53248, 126 layers (Llama-3.1-405B);
# vocab 262144 (Gemma 3); 10,485,760 positions (Llama-4-Scout); 256 routed experts (DeepSeek-V3).
SHAPE_LIMITS: dict[str, int] = {
    "hidden_size": 2**17,
    "intermediate_size": 2**20,
    "num_hidden_layers": 2**12,
    "num_attention_heads": 2**12,
    "num_key_value_heads": 2**12,
    "head_dim": 2**12,
    "vocab_size": 2**23,
    "max_position_embeddings": 2**27,
    "num_local_experts": 2**12,
    "num_experts_per_tok": 2**12,
    "sliding_window": 2**27,
    "max_window_layers": 2**12,
    "sliding_window_pattern": 2**12,  # Gemma 3: every n-th layer global
    # Falcon-H1's Mamba-2 mixer (Falcon-H1-34B: d_ssm 8192, 128 heads, state 256, chunk 256)
    "mamba_d_ssm": 2**20,
    "mamba_expand": 2**6,
    "mamba_n_heads": 2**12,
    "mamba_d_head": 2**12,
    "mamba_d_state": 2**12,
    "mamba_n_groups": 2**12,
    "mamba_d_conv": 2**8,
    "mamba_chunk_size": 2**16,
    # Qwen3.5's gated DeltaNet layers (32 value heads of 128 in the released checkpoints)
    "linear_conv_kernel_dim": 2**8,
    "linear_key_head_dim": 2**12,
    "linear_value_head_dim": 2**12,
    "linear_num_key_heads": 2**12,
    "linear_num_value_heads": 2**12,
    "full_attention_interval": 2**12,
}
SHAPE_ALIASES = {"n_embed": "hidden_size", "n_head": "num_attention_heads", "n_layer": "num_hidden_layers",
                 "seq_length": "max_position_embeddings", "num_experts": "num_local_experts",
                 "moe_intermediate_size": "intermediate_size", "n_routed_experts": "num_local_experts",
                 "n_shared_experts": "num_local_experts", "n_group": "num_local_experts",
                 "topk_group": "num_local_experts", "first_k_dense_replace": "num_hidden_layers",
                 "q_lora_rank": "intermediate_size", "kv_lora_rank": "intermediate_size",
                 "qk_rope_head_dim": "head_dim", "qk_nope_head_dim": "head_dim", "v_head_dim": "head_dim",
                 "shared_expert_intermediate_size": "intermediate_size",
                 "global_head_dim": "head_dim", "num_global_key_value_heads": "num_key_value_heads",
                 "top_k_experts": "num_experts_per_tok", "num_kv_shared_layers": "num_hidden_layers",
                 "hidden_size_per_layer_input": "hidden_size", "vocab_size_per_layer_input": "vocab_size",
                 "patch_size": "head_dim", "position_embedding_size": "max_position_embeddings",
                 "no_rope_layer_interval": "num_hidden_layers"}  # fmt: skip
# Falcon's and GPT-BigCode's own names (FalconConfig, GPTBigCodeConfig: n_embd, n_positions, n_inner)
SHAPE_ALIASES.update({"num_kv_heads": "num_key_value_heads", "ffn_hidden_size": "intermediate_size",
                      "num_ln_in_parallel_attn": "num_hidden_layers", "n_embd": "hidden_size",
                      "n_positions": "max_position_embeddings", "n_inner": "intermediate_size"})  # fmt: skip
SHAPE_ALIASES |= {"altup_num_inputs": "num_attention_heads", "laurel_rank": "intermediate_size"}  # Gemma 3n
SHAPE_ALIASES |= {"intermediate_size_mlp": "intermediate_size", "attention_chunk_size": "max_position_embeddings"}
_MISSING = object()


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def config_int(cfg: Mapping[str, Any], key: str, name: str, default: Any = _MISSING, low: int = 1) -> Any:
    """`cfg[key]` as an int in [low, SHAPE_LIMITS[key]]; `default` when absent or null (an error without one).

    A bool, a float, a string or a value outside the range is an error naming `key` and the file `name`.
    """
    value = cfg.get(key)
    if value is None:
        if default is _MISSING:
            raise VramplanError(f"model config {name!r} has no {key!r}; is it a causal-LM config.json?")
        return default
    limit = SHAPE_LIMITS[SHAPE_ALIASES.get(key, key)]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= limit:
        raise VramplanError(
            f"model config {name!r}: {key} must be an integer from {low} to {limit:,}, got {_shown(value)}; "
            "fix the config.json"
        )
    return value


def config_str(cfg: Mapping[str, Any], key: str, name: str, default: Any = _MISSING) -> Any:
    """`cfg[key]` as a string (`model_type`, `hidden_act`); `default` when absent or null."""
    value = cfg.get(key)
    if value is None:
        if default is _MISSING:
            raise VramplanError(f"model config {name!r} has no {key!r}; is it a causal-LM config.json?")
        return default
    if not isinstance(value, str) or not value or len(value) > 100:
        raise VramplanError(f"model config {name!r}: {key} must be a name, got {_shown(value)}; fix the config.json")
    return value


def config_bool(cfg: Mapping[str, Any], key: str, name: str, default: bool) -> bool:
    """`cfg[key]` as a bool (`tie_word_embeddings`, `attention_bias`, ...); `default` when absent, false when
    null (as `bool(cfg.get(key, default))` reads it)."""
    if key not in cfg:
        return default
    value = cfg[key]
    if value is None:
        return False
    if not isinstance(value, bool):
        raise VramplanError(f"model config {name!r}: {key} must be true or false, got {_shown(value)}")
    return value


def config_names(cfg: Mapping[str, Any], key: str, name: str, length: int) -> tuple[str, ...]:
    """`cfg[key]` as `length` strings (`layer_types`, one per layer); () when absent or null."""
    value = cfg.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or len(value) != length:
        raise VramplanError(
            f"model config {name!r}: {key} must list {length} names (one per layer), got {_shown(value)}"
        )
    return tuple(value)


def positive(value: Any, flag: str, limit: int | None = None) -> int:
    """`value` as an int in [1, limit]; else the error naming the flag, the value and the range."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:39] + "…"
        raise VramplanError(f"{flag} must be a positive integer, got {shown}")
    if limit is not None and value > limit:
        raise VramplanError(f"{flag} {value:,} is beyond vramplan's limit of {limit:,}; is it a typo?")
    return value


def quantization_config(config: Mapping[str, Any]) -> Any:
    """A config.json's `quantization_config`, or its `text_config`'s (a vision-language wrapper's), as written
    (spec/checkpoint_quant.py reads it); None or empty when the checkpoint is not pre-quantized. Apart from
    the reader so that an unquantized model does not load it (cold start, tests/test_cold_start.py)."""
    text = config.get("text_config")
    return config.get("quantization_config") or (text.get("quantization_config") if isinstance(text, Mapping) else None)
