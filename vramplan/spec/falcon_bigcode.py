"""Falcon (transformers 5.25 modeling_falcon.py) and GPT-BigCode (modeling_gpt_bigcode.py: StarCoder 1,
SantaCoder): their ModelSpec from a config.json, with the config classes' defaults (configuration_falcon.py,
configuration_gpt_bigcode.py) where config.json leaves a field out, as transformers fills them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vramplan.errors import VramplanError
from vramplan.spec.family_common import common_fields
from vramplan.spec.fields import config_bool, config_int, config_str
from vramplan.spec.model import LinearSpec, ModelSpec


def falcon_spec(cfg: Mapping[str, Any], name: str) -> ModelSpec:
    """Falcon: one fused `query_key_value` whose width the attention kind sets (FalconAttention, 5.25):
    `new_decoder_architecture` (Falcon-40B / 180B / 11B) (heads + 2·num_kv_heads)·head_dim, else `multi_query`
    (Falcon-7B, FalconConfig's default) hidden + 2·head_dim (one K/V head whatever `num_kv_heads` says), else
    3·hidden (Falcon-RW); `dense`, an ungated MLP `dense_h_to_4h` -> `activation` (default gelu) ->
    `dense_4h_to_h` of `ffn_hidden_size` (default 4·hidden); a bias on each under `bias` (default False).
    Every linear is a FalconLinear, an nn.Linear subclass that transformers' bitsandbytes replacement skips
    (`type(module) is nn.Linear`): `quantizable=False`. Norms: a LayerNorm before the attention, and one before
    the MLP unless the block is parallel off one norm (`parallel_attn`, default True: one `input_layernorm`;
    the new decoder: `ln_attn` and `ln_mlp` unless `num_ln_in_parallel_attn` is 1). RoPE, or ALiBi under
    `alibi` (no rotary; the bias joins the attention mask). The lm_head is tied by default."""
    h = config_int(cfg, "hidden_size", name, default=None) or config_int(cfg, "n_embed", name, default=4544)
    heads = config_int(cfg, "num_attention_heads", name, default=71)
    new_decoder = config_bool(cfg, "new_decoder_architecture", name, False)
    multi_query = config_bool(cfg, "multi_query", name, True)
    parallel = config_bool(cfg, "parallel_attn", name, True)
    num_kv = config_int(cfg, "num_kv_heads", name, default=heads)
    kv = num_kv if (new_decoder or not multi_query) else 1
    layer_norms = config_int(cfg, "num_ln_in_parallel_attn", name, default=2 if new_decoder else 1)
    if new_decoder and not parallel or (parallel and not new_decoder and layer_norms == 2):
        raise VramplanError(
            f"model config {name!r}: FalconDecoderLayer cannot run new_decoder_architecture={new_decoder}, "
            f"parallel_attn={parallel}, num_ln_in_parallel_attn={layer_norms} (transformers 5.25 builds norms its "
            "forward does not call); fix the config.json"
        )
    if h % heads:
        raise VramplanError(f"model config {name!r}: hidden_size {h} is not a multiple of num_attention_heads {heads}")
    head_dim = h // heads
    inter = config_int(cfg, "ffn_hidden_size", name, default=None) or 4 * h
    act = config_str(cfg, "activation", name, "gelu")
    c = common_fields(
        {**cfg, "vocab_size": cfg.get("vocab_size", 65024), "num_key_value_heads": kv, "head_dim": head_dim,
         "hidden_act": act, "max_position_embeddings": cfg.get("max_position_embeddings", 2048)},
        name, h, heads,
    ) | {"config": dict(cfg)}  # fmt: skip
    bias = config_bool(cfg, "bias", name, False)
    qkv_out = (heads + 2 * kv) * head_dim if new_decoder else (h + 2 * head_dim if multi_query else 3 * h)
    linears = (
        LinearSpec("query_key_value", h, qkv_out, bias, "attn", quantizable=False),
        LinearSpec("dense", h, h, bias, "attn", quantizable=False),
        LinearSpec("dense_h_to_4h", h, inter, bias, "mlp", quantizable=False),
        LinearSpec("dense_4h_to_h", inter, h, bias, "mlp", quantizable=False),
    )
    return ModelSpec(
        model_type="falcon",
        intermediate_size=inter,
        num_hidden_layers=config_int(cfg, "num_hidden_layers", name, default=32),
        tie_word_embeddings=config_bool(cfg, "tie_word_embeddings", name, True),
        linears=linears,
        norm="layer",
        norms_per_layer=1 if parallel and layer_norms == 1 else 2,
        mlp="plain",
        parallel_residual=parallel or new_decoder,
        rope=not config_bool(cfg, "alibi", name, False),
        **c,
    )


def gpt_bigcode_spec(cfg: Mapping[str, Any], name: str) -> ModelSpec:
    """GPT-BigCode (StarCoder 1, SantaCoder): GPT-2's sequential block, `ln_1` -> attention -> residual,
    `ln_2` -> MLP -> residual, LayerNorms with biases; one fused `c_attn` (hidden + 2·kv_heads·head_dim: one K/V
    head under `multi_query`, GPTBigCodeConfig's default, else every head), `attn.c_proj`, MLP `c_fc` ->
    `activation_function` (default gelu_pytorch_tanh) -> `mlp.c_proj` of `n_inner` (default 4·n_embd), a bias on
    every linear; learned position embeddings `wpe` (n_positions × n_embd) beside `wte`; the lm_head tied by
    default. The config's names (attribute_map): n_embd, n_head, n_layer, n_positions. Its dropouts (resid_pdrop,
    embd_pdrop, attn_pdrop, 0.1 by default) are the walk's (family_traits.model_dropout)."""

    def field(key: str, alias: str, default: int) -> int:
        return config_int(cfg, key, name, default=None) or config_int(cfg, alias, name, default=default)

    h = field("n_embd", "hidden_size", 768)
    heads = field("n_head", "num_attention_heads", 12)
    if h % heads:
        raise VramplanError(f"model config {name!r}: n_embd {h} is not a multiple of n_head {heads}")
    multi_query = config_bool(cfg, "multi_query", name, True)
    if config_bool(cfg, "add_cross_attention", name, False):
        raise VramplanError(f"model config {name!r}: a gpt_bigcode with cross-attention is not a causal LM vramplan models")
    kv, head_dim = (1 if multi_query else heads), h // heads
    positions = field("n_positions", "max_position_embeddings", 1024)
    inter = config_int(cfg, "n_inner", name, default=None) or 4 * h
    act = config_str(cfg, "activation_function", name, "gelu_pytorch_tanh")
    c = common_fields(
        {**cfg, "vocab_size": cfg.get("vocab_size", 50257), "num_key_value_heads": kv, "head_dim": head_dim,
         "hidden_act": act, "max_position_embeddings": positions},
        name, h, heads,
    ) | {"config": dict(cfg)}  # fmt: skip
    return ModelSpec(
        model_type="gpt_bigcode",
        intermediate_size=inter,
        num_hidden_layers=field("n_layer", "num_hidden_layers", 12),
        tie_word_embeddings=config_bool(cfg, "tie_word_embeddings", name, True),
        linears=(
            LinearSpec("attn.c_attn", h, h + 2 * kv * head_dim, True, "attn", path="attn.c_attn"),
            LinearSpec("attn.c_proj", h, h, True, "attn", path="attn.c_proj"),
            LinearSpec("mlp.c_fc", h, inter, True, "mlp", path="mlp.c_fc"),
            LinearSpec("mlp.c_proj", inter, h, True, "mlp", path="mlp.c_proj"),
        ),
        norm="layer",
        norms_per_layer=2,
        mlp="plain",
        rope=False,
        position_embeddings=positions,
        **c,
    )
