"""The multi-head latent attention families (MLA_FAMILIES): DeepSeek-V3 (`deepseek_v3`, and DeepSeek-R1 on it)
and GLM-4.7-Flash (`glm4_moe_lite`, whose attention is DeepseekV3Attention and whose MoE is GLM-4.5's, the same
sigmoid group-limited router), a ModelSpec from a config.json as transformers 5.24 builds them.

Per decoder layer (modeling_deepseek_v3.py / modeling_glm4_moe_lite.py, 5.24):
- attention: `q_a_proj` (hidden -> q_lora_rank) -> `q_a_layernorm` -> `q_b_proj` (-> heads·(qk_nope + qk_rope)),
  or one `q_proj` when q_lora_rank is None; `kv_a_proj_with_mqa` (hidden -> kv_lora_rank + qk_rope) ->
  `kv_a_layernorm` over the latent -> `kv_b_proj` (-> heads·(qk_nope + v_head_dim)); `o_proj` (heads·v -> hidden).
  Biases on q_a / kv_a / o under `attention_bias`.
- MLP: a dense gated MLP (intermediate_size) in the layers `first_k_dense_replace` names (deepseek_v3: the first
  k; glm4_moe_lite: `mlp_layer_types` "dense", by default layer 0 only), elsewhere the MoE: the router
  (`gate.weight` (E, hidden), kept in fp32 whatever the load dtype: `_keep_in_fp32_modules_strict`, with an fp32
  `e_score_correction_bias` buffer), fused experts `gate_up_proj` (E, 2·moe_I, hidden) and `down_proj`
  (E, hidden, moe_I) as nn.Parameter, and a shared-experts gated MLP of moe_I · n_shared_experts (nn.Linear).
- norms: input / post-attention RMSNorm over hidden, q_a_layernorm, kv_a_layernorm.
The multi-token-prediction layer of the checkpoints (`num_nextn_predict_layers`) is not built (the model skips
`model.layers.61.*` on load), so it is not counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vramplan.errors import VramplanError
from vramplan.spec.fields import config_bool, config_int, config_names
from vramplan.spec.model import LinearSpec, MlaSpec, ModelSpec, ParamSpec

# DeepseekV3Config / Glm4MoeLiteConfig class defaults (transformers 5.24) for the fields read here
CONFIG_DEFAULTS: dict[str, dict[str, Any]] = {
    "deepseek_v3": {
        "vocab_size": 129_280, "hidden_size": 7168, "intermediate_size": 18_432, "moe_intermediate_size": 2048,
        "num_hidden_layers": 61, "num_attention_heads": 128, "n_shared_experts": 1, "n_routed_experts": 256,
        "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_rope_head_dim": 64, "v_head_dim": 128,
        "qk_nope_head_dim": 128, "n_group": 8, "topk_group": 4, "num_experts_per_tok": 8,
        "first_k_dense_replace": 3, "norm_topk_prob": True, "max_position_embeddings": 4096,
        "rope_interleave": True, "tie_word_embeddings": False,
    },
    "glm4_moe_lite": {
        "vocab_size": 154_880, "hidden_size": 2048, "intermediate_size": 10_240, "moe_intermediate_size": 1536,
        "num_hidden_layers": 47, "num_attention_heads": 20, "n_shared_experts": 1, "n_routed_experts": 64,
        "kv_lora_rank": 512, "q_lora_rank": 768, "qk_rope_head_dim": 64, "v_head_dim": 256,
        "qk_nope_head_dim": 192, "n_group": 1, "topk_group": 1, "num_experts_per_tok": 4,
        "norm_topk_prob": True, "max_position_embeddings": 202_752, "rope_interleave": True,
        "tie_word_embeddings": False,
    },
    "glm4_moe": {
        "vocab_size": 151_552, "hidden_size": 4096, "intermediate_size": 10_944, "moe_intermediate_size": 1408,
        "num_hidden_layers": 46, "num_attention_heads": 96, "num_key_value_heads": 8, "n_shared_experts": 1,
        "n_routed_experts": 128, "n_group": 1, "topk_group": 1, "num_experts_per_tok": 8,
        "first_k_dense_replace": 1, "norm_topk_prob": True, "max_position_embeddings": 131_072,
        "tie_word_embeddings": False,
    },
}  # fmt: skip


def dense_mlp_layers(cfg: Mapping[str, Any], name: str, mt: str, layers: int) -> tuple[int, ...]:
    """The layers with a dense MLP: deepseek_v3 `layer_idx < first_k_dense_replace` (DeepseekV3DecoderLayer);
    glm4_moe_lite `mlp_layer_types[i] == "dense"`, by default ["dense"] + ["sparse"] · (layers - 1)
    (Glm4MoeLiteConfig.__post_init__); glm4_moe `layer_idx >= first_k_dense_replace` routes (default 1)."""
    if mt == "glm4_moe_lite":
        if cfg.get("mlp_layer_types"):
            kinds = config_names(cfg, "mlp_layer_types", name, layers)
            return tuple(i for i, kind in enumerate(kinds) if kind == "dense")
        return (0,)
    first = config_int(cfg, "first_k_dense_replace", name, default=CONFIG_DEFAULTS[mt]["first_k_dense_replace"], low=0)
    return tuple(range(min(first, layers)))


def with_defaults(cfg: Mapping[str, Any], mt: str) -> dict[str, Any]:
    """config.json over the config class's defaults (an explicit null q_lora_rank stays: one q_proj)."""
    return {**CONFIG_DEFAULTS[mt], **{k: v for k, v in cfg.items() if v is not None or k == "q_lora_rank"}}


def mla_model_spec(cfg: Mapping[str, Any], name: str, mt: str, common: dict[str, Any]) -> ModelSpec:
    """The ModelSpec of a deepseek_v3 / glm4_moe_lite config.json (`with_defaults` applied); `common`:
    family_common.common_fields's fields."""
    defaults = CONFIG_DEFAULTS[mt]

    def field(key: str, low: int = 1) -> int:
        return config_int(cfg, key, name, default=defaults[key], low=low)

    h, heads, layers = field("hidden_size"), field("num_attention_heads"), field("num_hidden_layers")
    q_rank = config_int(cfg, "q_lora_rank", name, default=None)
    kv_rank, rope, nope, v_dim = (
        field("kv_lora_rank"),
        field("qk_rope_head_dim"),
        field("qk_nope_head_dim"),
        field("v_head_dim"),
    )
    bias = config_bool(cfg, "attention_bias", name, False)
    qk = nope + rope
    query = (
        (LinearSpec("q_a_proj", h, q_rank, bias, "attn"), LinearSpec("q_b_proj", q_rank, heads * qk, False, "attn"))
        if q_rank
        else (LinearSpec("q_proj", h, heads * qk, False, "attn"),)
    )
    attention = (
        *query,
        LinearSpec("kv_a_proj_with_mqa", h, kv_rank + rope, bias, "attn"),
        LinearSpec("kv_b_proj", kv_rank, heads * (nope + v_dim), False, "attn"),
        LinearSpec("o_proj", heads * v_dim, h, bias, "attn"),
    )
    mlp, moe, moe_fields = deepseek_moe(cfg, name, mt, h, layers, defaults)
    mla = MlaSpec(
        q_lora_rank=q_rank or 0,
        kv_lora_rank=kv_rank,
        qk_nope_head_dim=nope,
        qk_rope_head_dim=rope,
        v_head_dim=v_dim,
        rope_interleave=config_bool(cfg, "rope_interleave", name, True),
    )
    return ModelSpec(
        **{**common, "head_dim": rope, "config": dict(cfg)},
        model_type=mt,
        num_hidden_layers=layers,
        tie_word_embeddings=config_bool(cfg, "tie_word_embeddings", name, False),
        linears=attention + mlp,
        norm="rms",
        norms_per_layer=2,
        moe_params=moe,
        mla=mla,
        **moe_fields,
    )


def deepseek_moe(
    cfg: Mapping[str, Any], name: str, mt: str, h: int, layers: int, defaults: Mapping[str, Any]
) -> tuple[tuple[LinearSpec, ...], tuple[ParamSpec, ...], dict[str, Any]]:
    """DeepSeek-V3's MoE layout (also GLM-4.5's `glm4_moe`, GLM-4.7-Flash's): dense bottom layers, then the
    group-limited router, fused experts and a shared-experts MLP. Returns the MLP linears, the per-routed-layer
    parameters and the ModelSpec fields that describe them."""

    def field(key: str, low: int = 1) -> int:
        return config_int(cfg, key, name, default=defaults[key], low=low)

    experts, top_k = field("n_routed_experts"), field("num_experts_per_tok")
    groups, top_groups = field("n_group"), field("topk_group")
    if experts % groups or top_groups > groups or top_k > experts:
        raise VramplanError(
            f"model config {name!r}: n_routed_experts {experts}, n_group {groups}, topk_group {top_groups} and "
            f"num_experts_per_tok {top_k} do not make a group-limited router (experts a multiple of the groups, "
            "topk_group <= n_group); fix the config.json"
        )
    moe_inter, shared = field("moe_intermediate_size"), field("n_shared_experts", low=0)
    inter = field("intermediate_size")
    dense = dense_mlp_layers(cfg, name, mt, layers)
    mlp: tuple[LinearSpec, ...] = ()
    if dense:
        mlp += tuple(
            LinearSpec(f"mlp.{n}", i, o, False, "mlp", f"mlp.{n}", only="dense" if len(dense) < layers else "")
            for n, i, o in (("gate_proj", h, inter), ("up_proj", h, inter), ("down_proj", inter, h))
        )
    routed = len(dense) < layers
    if routed and shared:
        width = moe_inter * shared
        mlp += tuple(
            LinearSpec(f"shared_experts.{n}", i, o, False, "mlp", f"mlp.shared_experts.{n}", only="moe")
            for n, i, o in (("gate_proj", h, width), ("up_proj", h, width), ("down_proj", width, h))
        )
    # PEFT 0.21.2 maps deepseek_v3 / glm4_moe_lite through transformers' conversion mapping to qwen2_moe's
    # `_MOE_TARGET_MODULE_MAPPING`: `gate`, `gate_proj` + `up_proj`, `down_proj` become target_parameters (and leave
    # target_modules, so the dense and shared MLPs' nn.Linear of those names get no adapter: spec/lora_targets.py)
    moe: tuple[ParamSpec, ...] = (
        (
            ParamSpec("gate.weight", (experts, h), ("gate",)),
            ParamSpec("gate_up_proj", (experts, 2 * moe_inter, h), ("gate_proj", "up_proj")),
            ParamSpec("down_proj", (experts, h, moe_inter), ("down_proj",)),
        )
        if routed
        else ()
    )
    fields = {
        "intermediate_size": moe_inter if routed else inter,
        "mlp": "moe" if routed else "gated",
        "num_local_experts": experts if routed else 0,
        "num_experts_per_tok": top_k if routed else 0,
        "dense_mlp_layers": dense if routed else (),
        "dense_intermediate_size": inter,
        "shared_intermediate_size": moe_inter * shared if routed else 0,
        "fp32_params": (layers - len(dense)) * experts * h if routed else 0,
    }
    return mlp, moe, fields


def glm4_moe_model_spec(cfg: Mapping[str, Any], name: str, common: dict[str, Any]) -> ModelSpec:
    """GLM-4.5 / GLM-4.5-Air (`glm4_moe`, modeling_glm4_moe.py, 5.24): Llama-shaped GQA attention (q / k / v biases
    under `attention_bias`, o_proj without; rotary on `partial_rotary_factor` of head_dim, default 0.5, which
    changes no tensor size; q / k RMSNorm over head_dim under `use_qk_norm`) and DeepSeek-V3's MoE
    (`deepseek_moe`). `cfg`: `with_defaults` applied."""
    h, heads, layers = common["hidden_size"], common["num_attention_heads"], config_int(cfg, "num_hidden_layers", name)
    head_dim, kv = common["head_dim"], common["num_key_value_heads"]
    bias = config_bool(cfg, "attention_bias", name, False)
    attention = (
        LinearSpec("q_proj", h, heads * head_dim, bias, "attn"),
        LinearSpec("k_proj", h, kv * head_dim, bias, "attn"),
        LinearSpec("v_proj", h, kv * head_dim, bias, "attn"),
        LinearSpec("o_proj", heads * head_dim, h, False, "attn"),
    )
    mlp, moe, moe_fields = deepseek_moe(cfg, name, "glm4_moe", h, layers, CONFIG_DEFAULTS["glm4_moe"])
    return ModelSpec(
        **common,
        model_type="glm4_moe",
        num_hidden_layers=layers,
        tie_word_embeddings=config_bool(cfg, "tie_word_embeddings", name, False),
        linears=attention + mlp,
        norm="rms",
        norms_per_layer=2,
        head_norm_params=2 * head_dim if config_bool(cfg, "use_qk_norm", name, False) else 0,
        moe_params=moe,
        **moe_fields,
    )
