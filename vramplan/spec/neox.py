"""The families with an ungated MLP and LayerNorms (transformers 5.24 modeling_gpt_neox.py, modeling_bloom.py,
modeling_phi.py: parallel blocks; 5.25 modeling_starcoder2.py: sequential): their ModelSpec from a config.json."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vramplan.spec.family_common import common_fields, required
from vramplan.spec.fields import config_bool, config_int, config_str
from vramplan.spec.model import LinearSpec, ModelSpec


def neox_like_spec(cfg: Mapping[str, Any], name: str, mt: str) -> ModelSpec:
    if mt == "bloom":
        h = config_int(cfg, "hidden_size", name, default=None) or required(cfg, "n_embed", name)
        heads = config_int(cfg, "n_head", name, default=None) or required(cfg, "num_attention_heads", name)
        layers = config_int(cfg, "n_layer", name, default=None) or required(cfg, "num_hidden_layers", name)
        inter = 4 * h
        tie = config_bool(cfg, "tie_word_embeddings", name, True)
    else:
        h = required(cfg, "hidden_size", name)
        heads = required(cfg, "num_attention_heads", name)
        layers = required(cfg, "num_hidden_layers", name)
        inter = required(cfg, "intermediate_size", name)
        tie = config_bool(cfg, "tie_word_embeddings", name, False)
    c = common_fields({**cfg, "num_key_value_heads": None, "head_dim": None}, name, h, heads)
    bias = config_bool(cfg, "attention_bias", name, True) if mt == "gpt_neox" else True
    return ModelSpec(
        model_type=mt,
        intermediate_size=inter,
        num_hidden_layers=layers,
        tie_word_embeddings=tie,
        linears=(
            LinearSpec("query_key_value", h, 3 * h, bias, "attn"),
            LinearSpec("dense", h, h, bias, "attn"),
            LinearSpec("dense_h_to_4h", h, inter, True, "mlp"),
            LinearSpec("dense_4h_to_h", inter, h, True, "mlp"),
        ),
        norm="layer",
        norms_per_layer=2,
        embed_norm=mt == "bloom",
        mlp="plain",
        parallel_residual=config_bool(cfg, "use_parallel_residual", name, True) if mt == "gpt_neox" else False,
        **c,
    )


def phi_spec(cfg: Mapping[str, Any], name: str) -> ModelSpec:
    h = required(cfg, "hidden_size", name)
    heads = required(cfg, "num_attention_heads", name)
    c = common_fields(cfg, name, h, heads)
    inter = required(cfg, "intermediate_size", name)
    q, kv = heads * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    qk_ln = config_bool(cfg, "qk_layernorm", name, False)
    return ModelSpec(
        model_type="phi",
        intermediate_size=inter,
        num_hidden_layers=required(cfg, "num_hidden_layers", name),
        tie_word_embeddings=config_bool(cfg, "tie_word_embeddings", name, False),
        linears=separate_qkv_linears(h, q, kv, inter, True, ("dense", "fc1", "fc2")),
        norm="layer",
        norms_per_layer=1,
        head_norm_params=2 * 2 * c["head_dim"] if qk_ln else 0,
        lm_head_bias=True,
        mlp="plain",
        parallel_residual=True,
        **c,
    )


def starcoder2_spec(cfg: Mapping[str, Any], name: str) -> ModelSpec:
    """StarCoder2 (transformers 5.25 modeling_starcoder2.py): a Mistral-shaped sequential layer (q / k / v / o,
    GQA, RoPE, a sliding window on every layer when `sliding_window` is set) with nn.LayerNorm (weight + bias)
    before the attention and the MLP, an ungated MLP c_fc -> gelu_pytorch_tanh -> c_proj, a bias on every
    linear (`use_bias`, default True), tied embeddings by default (Starcoder2Config, 5.25: num_key_value_heads
    2, tie_word_embeddings True, hidden_act gelu_pytorch_tanh)."""
    h = required(cfg, "hidden_size", name)
    heads = required(cfg, "num_attention_heads", name)
    kv = config_int(cfg, "num_key_value_heads", name, default=2)
    c = common_fields({**cfg, "num_key_value_heads": kv}, name, h, heads)
    inter = required(cfg, "intermediate_size", name)
    q, kv_dim = heads * c["head_dim"], kv * c["head_dim"]
    bias = config_bool(cfg, "use_bias", name, True)
    config_str(cfg, "hidden_act", name, "gelu_pytorch_tanh")
    return ModelSpec(
        model_type="starcoder2",
        intermediate_size=inter,
        num_hidden_layers=required(cfg, "num_hidden_layers", name),
        tie_word_embeddings=config_bool(cfg, "tie_word_embeddings", name, True),
        linears=separate_qkv_linears(h, q, kv_dim, inter, bias, ("o_proj", "c_fc", "c_proj")),
        norm="layer",
        norms_per_layer=2,
        mlp="plain",
        sliding_window=config_int(cfg, "sliding_window", name, default=None),
        **c,
    )


def separate_qkv_linears(
    h: int, q: int, kv: int, inter: int, bias: bool, names: tuple[str, str, str]
) -> tuple[LinearSpec, ...]:
    """q / k / v projections, the attention's output and an ungated MLP's two linears (`names`: the output
    projection's, the MLP's up and down names: Phi's dense / fc1 / fc2, StarCoder2's o_proj / c_fc / c_proj)."""
    out, up, down = names
    return (
        LinearSpec("q_proj", h, q, bias, "attn"),
        LinearSpec("k_proj", h, kv, bias, "attn"),
        LinearSpec("v_proj", h, kv, bias, "attn"),
        LinearSpec(out, q, h, bias, "attn"),
        LinearSpec(up, h, inter, bias, "mlp"),
        LinearSpec(down, inter, h, bias, "mlp"),
    )
