"""Qwen3.5 (`qwen3_5_text`, the text model of the `qwen3_5` vision-language wrapper): a ModelSpec from config.json.

transformers 5.24 models/qwen3_5/modeling_qwen3_5.py builds each decoder layer with one token mixer chosen by
`config.layer_types[i]` (configuration_qwen3_5.py: absent, every `full_attention_interval`-th layer (4) is
`full_attention`, the others `linear_attention`), then a gated MLP and two zero-centred RMSNorms:

- `linear_attention` -> `Qwen3_5GatedDeltaNet` (`linear_attn`): nn.Linear in_proj_qkv (H -> 2·key_dim + value_dim),
  in_proj_z (H -> value_dim), in_proj_b and in_proj_a (H -> value heads), out_proj (value_dim -> H), no biases;
  a depthwise nn.Conv1d (conv_dim, 1, kernel) without bias (not an nn.Linear: bitsandbytes and `all-linear`
  pass it by), `dt_bias` and `A_log` (value heads) and `Qwen3_5RMSNormGated` (value head dim);
- `full_attention` -> `Qwen3_5Attention` (`self_attn`): q_proj (H -> 2·heads·head_dim: query and output gate),
  k_proj, v_proj, o_proj (`attention_bias`), q_norm / k_norm over head_dim.

key_dim = linear_num_key_heads · linear_key_head_dim, value_dim = linear_num_value_heads · linear_value_head_dim.

Qwen3.5-MoE (`qwen3_5_moe_text`, in the `qwen3_5_moe` wrapper; transformers 5.25 models/qwen3_5_moe/
modeling_qwen3_5_moe.py) has the same layers with `Qwen3_5MoeSparseMoeBlock` for the MLP: a softmax top-k router
`gate` (Qwen3_5MoeTopKRouter.weight (E, H), not an nn.Linear; the top-k weights always renormalised), fused experts
`experts.gate_up_proj` (E, 2·moe_I, H) and `experts.down_proj` (E, H, moe_I) as nn.Parameter, an always-on
`shared_expert` (gated MLP of shared_expert_intermediate_size, nn.Linear) and `shared_expert_gate`
(nn.Linear H -> 1, no bias). PEFT 0.21.2 maps qwen3_5_moe_text to no MoE conversion (transformers'
conversion_mapping.py sends it to qwen3_5_text, which `_MOE_TARGET_MODULE_MAPPING` lacks): `gate_proj` / `up_proj` /
`down_proj` name the shared expert's nn.Linear, and the router and experts take LoRA only through an explicit
`target_parameters`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vramplan.errors import VramplanError
from vramplan.spec.fields import config_bool, config_int, config_names
from vramplan.spec.model import LinearSpec, ModelSpec, ParamSpec

# Qwen3_5TextConfig's defaults (transformers 5.24 configuration_qwen3_5.py) for the fields read here
QWEN35_TEXT_DEFAULTS: dict[str, Any] = {
    "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 128,
    "linear_value_head_dim": 128,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 32,
    "full_attention_interval": 4,
}
LAYER_KINDS = ("linear_attention", "full_attention")


def qwen35_layer_types(cfg: Mapping[str, Any], name: str, layers: int) -> tuple[str, ...]:
    """`layer_types` as Qwen3_5TextConfig.__post_init__ fills it: given, or every `full_attention_interval`-th
    layer full attention."""
    kinds = config_names(cfg, "layer_types", name, layers)
    if not kinds:
        interval = config_int(cfg, "full_attention_interval", name, default=4)
        return tuple("linear_attention" if (i + 1) % interval else "full_attention" for i in range(layers))
    unknown = sorted(set(kinds) - set(LAYER_KINDS))
    if unknown:
        raise VramplanError(
            f"model config {name!r}: layer_types holds {unknown[0]!r}; Qwen3.5 layers are {' or '.join(LAYER_KINDS)}"
        )
    return kinds


def qwen35_dims(m: ModelSpec) -> tuple[int, int, int, int, int]:
    """(key heads, value heads, key head dim, value head dim, conv kernel) of the gated DeltaNet layers."""
    c = {**QWEN35_TEXT_DEFAULTS, **m.config}
    keys = ("linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim")
    return (*(int(c[k]) for k in keys), int(c["linear_conv_kernel_dim"]))  # type: ignore[return-value]


def qwen35_spec(cfg: Mapping[str, Any], name: str, common: dict[str, Any]) -> ModelSpec:
    """The ModelSpec of a qwen3_5_text or qwen3_5_moe_text config (`common`: the fields every family reads,
    family_common.common_fields)."""
    h, heads, head_dim = common["hidden_size"], common["num_attention_heads"], common["head_dim"]
    kv = common["num_key_value_heads"]
    layers = config_int(cfg, "num_hidden_layers", name)
    moe = cfg.get("model_type") == "qwen3_5_moe_text"
    if moe:  # the experts' width (Qwen3_5MoeTextConfig has no intermediate_size)
        inter = config_int(cfg, "moe_intermediate_size", name, default=512)
    else:
        inter = config_int(cfg, "intermediate_size", name)
    kinds = qwen35_layer_types(cfg, name, layers)
    dims = {k: config_int(cfg, k, name, default=v) for k, v in QWEN35_TEXT_DEFAULTS.items()}
    key_heads, value_heads = dims["linear_num_key_heads"], dims["linear_num_value_heads"]
    if value_heads % key_heads:
        raise VramplanError(
            f"model config {name!r}: linear_num_value_heads {value_heads} is not a multiple of "
            f"linear_num_key_heads {key_heads} (the key heads are repeated over the value heads); fix the config.json"
        )
    key_dim = key_heads * dims["linear_key_head_dim"]
    value_dim = value_heads * dims["linear_value_head_dim"]
    conv_dim = 2 * key_dim + value_dim
    n_linear = kinds.count("linear_attention")
    n_full = layers - n_linear
    bias = config_bool(cfg, "attention_bias", name, False)
    linears: list[LinearSpec] = []
    mixer_tensors: list[tuple[tuple[int, ...], int]] = []
    if n_full:
        q, kvd = heads * head_dim, kv * head_dim
        for lin_name, i, o, b in (
            ("q_proj", h, 2 * q, bias),  # query and the attention output's sigmoid gate
            ("k_proj", h, kvd, bias),
            ("v_proj", h, kvd, bias),
            ("o_proj", q, h, bias),
        ):
            linears.append(LinearSpec(lin_name, i, o, b, "attn", path=f"self_attn.{lin_name}", count=n_full))
        mixer_tensors.append(((head_dim,), 2 * n_full))  # q_norm, k_norm
    if n_linear:
        for lin_name, i, o in (
            ("in_proj_qkv", h, conv_dim),
            ("in_proj_z", h, value_dim),
            ("in_proj_b", h, value_heads),
            ("in_proj_a", h, value_heads),
            ("out_proj", value_dim, h),
        ):
            linears.append(LinearSpec(lin_name, i, o, False, "attn", path=f"linear_attn.{lin_name}", count=n_linear))
        mixer_tensors += [
            ((conv_dim, 1, dims["linear_conv_kernel_dim"]), n_linear),  # conv1d.weight (no bias)
            ((value_heads,), 2 * n_linear),  # dt_bias, A_log
            ((dims["linear_value_head_dim"],), n_linear),  # norm.weight (Qwen3_5RMSNormGated)
        ]
    moe_fields: dict[str, Any] = {}
    if moe:
        moe_fields = _sparse_block(cfg, name, h, inter)
        width = moe_fields["shared_intermediate_size"]
        for lin_name, i, o in (("gate_proj", h, width), ("up_proj", h, width), ("down_proj", width, h)):
            linears.append(LinearSpec(lin_name, i, o, False, "mlp", f"mlp.shared_expert.{lin_name}"))
        linears.append(LinearSpec("shared_expert_gate", h, 1, False, "mlp", "mlp.shared_expert_gate"))
    else:
        for lin_name, i, o in (("gate_proj", h, inter), ("up_proj", h, inter), ("down_proj", inter, h)):
            linears.append(LinearSpec(lin_name, i, o, False, "mlp", path=f"mlp.{lin_name}"))
    return ModelSpec(
        model_type="qwen3_5_moe_text" if moe else "qwen3_5_text",
        intermediate_size=inter,
        num_hidden_layers=layers,
        tie_word_embeddings=config_bool(cfg, "tie_word_embeddings", name, False),
        linears=tuple(linears),
        norm="rms",
        norms_per_layer=2,
        layer_types=kinds,
        mixer_tensors=tuple(mixer_tensors),
        **moe_fields,
        **common,
    )


def _sparse_block(cfg: Mapping[str, Any], name: str, h: int, inter: int) -> dict[str, Any]:
    """Qwen3_5MoeSparseMoeBlock's fields beside its shared expert's linears (Qwen3_5MoeTextConfig defaults,
    configuration_qwen3_5_moe.py 5.25: 256 experts, top 8, shared expert 512 wide)."""
    experts = config_int(cfg, "num_experts", name, default=256)
    return {
        "mlp": "moe",
        "num_local_experts": experts,
        "num_experts_per_tok": config_int(cfg, "num_experts_per_tok", name, default=8),
        "shared_intermediate_size": config_int(cfg, "shared_expert_intermediate_size", name, default=512),
        "moe_params": (
            ParamSpec("gate.weight", (experts, h), ()),
            ParamSpec("gate_up_proj", (experts, 2 * inter, h), ()),
            ParamSpec("down_proj", (experts, h, inter), ()),
        ),
    }
