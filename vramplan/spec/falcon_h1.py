"""Falcon-H1 (transformers 5.24 modeling_falcon_h1.py): its ModelSpec from a config.json."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vramplan.errors import VramplanError
from vramplan.spec.family_common import common_fields, required
from vramplan.spec.fields import config_bool, config_int
from vramplan.spec.model import LinearSpec, MambaSpec, ModelSpec


def falcon_h1_spec(cfg: Mapping[str, Any], name: str) -> ModelSpec:
    """Falcon-H1 (transformers 5.24 modeling_falcon_h1.py / configuration_falcon_h1.py): every decoder layer
    runs a Llama attention (`self_attn`) and a Mamba-2 mixer (`mamba`) on the same normed input, then a gated
    MLP (`feed_forward`); FalconH1Config's defaults for the fields config.json leaves out (mamba_d_ssm 1024,
    or mamba_expand · hidden when null; 128 heads of d_ssm // heads ("auto"); state 256; 1 group; conv 4;
    chunk 256; conv bias; no in_proj bias (mamba_proj_bias), no out_proj bias (projectors_bias); gated RMSNorm
    only with mamba_rms_norm). The muP multipliers are scalars and a non-persistent buffer: no parameters."""
    h = required(cfg, "hidden_size", name)
    heads = required(cfg, "num_attention_heads", name)
    c = common_fields(cfg, name, h, heads)
    inter = config_int(cfg, "intermediate_size", name, default=14336)
    layers = required(cfg, "num_hidden_layers", name)
    if "mamba_d_ssm" in cfg and cfg["mamba_d_ssm"] is None:
        d_ssm = config_int(cfg, "mamba_expand", name, default=2) * h
    else:
        d_ssm = config_int(cfg, "mamba_d_ssm", name, default=1024)
    ssm_heads = config_int(cfg, "mamba_n_heads", name, default=128)
    head_dim = d_ssm // ssm_heads if cfg.get("mamba_d_head", "auto") == "auto" else None
    head_dim = head_dim or config_int(cfg, "mamba_d_head", name)
    if d_ssm % ssm_heads or head_dim * ssm_heads != d_ssm:  # FalconH1Config.validate_architecture
        raise VramplanError(
            f"model config {name!r}: mamba_n_heads {ssm_heads} × mamba_d_head {head_dim} must equal the mixer's "
            f"width {d_ssm} (mamba_d_ssm, or mamba_expand × hidden_size); fix the config.json"
        )
    mamba = MambaSpec(
        d_ssm=d_ssm,
        heads=ssm_heads,
        head_dim=head_dim,
        state=config_int(cfg, "mamba_d_state", name, default=256),
        groups=config_int(cfg, "mamba_n_groups", name, default=1),
        conv_kernel=config_int(cfg, "mamba_d_conv", name, default=4),
        chunk=config_int(cfg, "mamba_chunk_size", name, default=256),
        conv_bias=config_bool(cfg, "mamba_conv_bias", name, True),
        rms_norm=config_bool(cfg, "mamba_rms_norm", name, False),
    )
    if ssm_heads % mamba.groups:
        raise VramplanError(
            f"model config {name!r}: mamba_n_heads {ssm_heads} is not a multiple of mamba_n_groups "
            f"{mamba.groups}; fix the config.json"
        )
    q, kv = heads * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    attn_bias = config_bool(cfg, "attention_bias", name, False)
    mlp_bias = config_bool(cfg, "mlp_bias", name, False)
    linears = (
        LinearSpec("q_proj", h, q, attn_bias, "attn", "self_attn.q_proj"),
        LinearSpec("k_proj", h, kv, attn_bias, "attn", "self_attn.k_proj"),
        LinearSpec("v_proj", h, kv, attn_bias, "attn", "self_attn.v_proj"),
        LinearSpec("o_proj", q, h, attn_bias, "attn", "self_attn.o_proj"),
        LinearSpec("in_proj", h, mamba.projection, config_bool(cfg, "mamba_proj_bias", name, False), "ssm",
                   "mamba.in_proj"),
        LinearSpec("out_proj", d_ssm, h, config_bool(cfg, "projectors_bias", name, False), "ssm", "mamba.out_proj"),
        LinearSpec("gate_proj", h, inter, mlp_bias, "mlp", "feed_forward.gate_proj"),
        LinearSpec("up_proj", h, inter, mlp_bias, "mlp", "feed_forward.up_proj"),
        LinearSpec("down_proj", inter, h, mlp_bias, "mlp", "feed_forward.down_proj"),
    )  # fmt: skip
    return ModelSpec(
        model_type="falcon_h1",
        intermediate_size=inter,
        num_hidden_layers=layers,
        tie_word_embeddings=config_bool(cfg, "tie_word_embeddings", name, False),
        linears=linears,
        norm="rms",
        norms_per_layer=2,  # input_layernorm, pre_ff_layernorm
        mamba=mamba,
        **c,
    )
