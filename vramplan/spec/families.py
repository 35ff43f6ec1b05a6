"""The hand-modelled families (HAND_MODELLED_TYPES): a ModelSpec built from a Hugging Face config.json.

The module layout each family gets mirrors what transformers 5.24 builds (modeling_<family>.py), so parameter
counts are exact and LoRA / bitsandbytes targeting sees the same `nn.Linear` names as PEFT and transformers do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from vramplan.errors import VramplanError
from vramplan.spec.falcon_h1 import falcon_h1_spec
from vramplan.spec.family_common import common_fields, every_nth_full, required
from vramplan.spec.family_traits import (
    DEEPSEEK_MOE,
    FUSED_GATE_UP,
    HAND_MODELLED_TYPES,
    NOPE_FAMILIES,
    PROJECTION_QK_NORM,
    SANDWICH_NORM,
)
from vramplan.spec.fields import config_bool, config_int, config_names, config_str
from vramplan.spec.mla import glm4_moe_model_spec, mla_model_spec, with_defaults
from vramplan.spec.model import LinearSpec, ModelSpec, ParamSpec
from vramplan.spec.neox import neox_like_spec, phi_spec, starcoder2_spec


def text_config(cfg: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    inner = cfg.get("text_config")
    if inner is not None and not isinstance(inner, Mapping):
        raise VramplanError(f"model config {name!r}: text_config must be a JSON object, got {type(inner).__name__}")
    return {**inner, "model_type": inner.get("model_type", cfg.get("model_type"))} if inner else cfg


# Gemma3TextConfig's defaults (transformers 5.24 configuration_gemma3.py) for the fields the builder reads: a
# Gemma 3 VLM's hub config.json carries a sparse text_config (gemma-3-12b-it: 7 keys) that transformers fills
GEMMA3_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262_208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131_072, "tie_word_embeddings": True, "attention_bias": False,
    "query_pre_attn_scalar": 256, "sliding_window": 4096, "final_logit_softcapping": None,
    "attn_logit_softcapping": None, "sliding_window_pattern": 6,
}  # fmt: skip


def gemma3_layer_types(cfg: Mapping[str, Any], name: str, layers: int) -> tuple[str, ...]:
    """`layer_types` as Gemma3TextConfig.__post_init__ fills it when config.json has none: every
    `sliding_window_pattern`-th layer (default 6) full attention, the others sliding (5 local : 1 global)."""
    if cfg.get("layer_types"):
        return config_names(cfg, "layer_types", name, layers)
    return every_nth_full(layers, config_int(cfg, "sliding_window_pattern", name, default=6))


def all_layers_routed(cfg: Mapping[str, Any]) -> bool:
    """Whether every decoder layer of a qwen3_moe config routes its tokens to experts: Qwen3MoeDecoderLayer
    builds a dense Qwen3MoeMLP where `layer_idx in mlp_only_layers` or `(layer_idx + 1) % decoder_sparse_step`
    (modeling_qwen3_moe.py, 5.24). The published checkpoints (Qwen3-30B-A3B, Qwen3-235B-A22B) route every
    layer; a config that does not is counted by the generic path (spec/generic.py)."""
    if cfg.get("model_type") != "qwen3_moe":
        return True
    sparse_step, experts = cfg.get("decoder_sparse_step", 1), cfg.get("num_experts", 128)
    return not cfg.get("mlp_only_layers") and sparse_step == 1 and experts != 0


def _check_shapes(m: ModelSpec) -> ModelSpec:
    """Relations between fields that transformers needs to build the model (modeling_llama.py `repeat_kv`:
    num_key_value_groups = heads // kv_heads; the MoE router picks top-k of the experts)."""
    if m.num_attention_heads % m.num_key_value_heads:
        raise VramplanError(
            f"model config {m.name!r}: num_attention_heads {m.num_attention_heads} is not a multiple of "
            f"num_key_value_heads {m.num_key_value_heads}; fix the config.json"
        )
    if m.num_experts_per_tok > m.num_local_experts > 0:
        raise VramplanError(
            f"model config {m.name!r}: num_experts_per_tok {m.num_experts_per_tok} exceeds num_local_experts "
            f"{m.num_local_experts}; fix the config.json"
        )
    if m.head_dim < 1:
        raise VramplanError(
            f"model config {m.name!r}: hidden_size {m.hidden_size} is smaller than num_attention_heads "
            f"{m.num_attention_heads} (head_dim would be 0); set head_dim or fix the config.json"
        )
    return m


def known_model_spec(cfg: Mapping[str, Any], name: str) -> ModelSpec:
    """The ModelSpec of a hand-modelled family (HAND_MODELLED_TYPES) from a Hugging Face `config.json`
    mapping (the keys transformers reads); every field it reads is type- and range-checked
    (vramplan.spec.fields). Any family: `vramplan.spec.config.model_spec_from_config`."""
    wrapper = cfg.get("model_type") if cfg.get("text_config") is not None else None
    cfg = text_config(cfg, name)
    mt = config_str(cfg, "model_type", name)
    if mt == "gemma3_text":
        cfg = {**GEMMA3_TEXT_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None or "softcapping" in k}}
    if mt == "gemma4_text":
        from vramplan.spec.gemma4 import GEMMA4_TEXT_DEFAULTS

        cfg = {**GEMMA4_TEXT_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None or "softcapping" in k}}
    if mt == "gemma3n_text":
        from vramplan.spec.gemma3n import GEMMA3N_TEXT_DEFAULTS

        cfg = {**GEMMA3N_TEXT_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None or "softcapping" in k}}
    if mt not in HAND_MODELLED_TYPES:
        raise VramplanError(f"model config {name!r}: model_type {mt!r} is not hand-modelled")
    if mt in ("gpt_neox", "bloom"):
        return _check_shapes(neox_like_spec(cfg, name, mt))
    if mt == "phi":
        return _check_shapes(phi_spec(cfg, name))
    if mt == "starcoder2":
        return _check_shapes(starcoder2_spec(cfg, name))
    if mt in ("falcon", "gpt_bigcode"):
        from vramplan.spec.falcon_bigcode import falcon_spec, gpt_bigcode_spec

        return _check_shapes((falcon_spec if mt == "falcon" else gpt_bigcode_spec)(cfg, name))
    if mt == "cohere2":
        # Cohere2Config.__post_init__ (5.25): head_dim = hidden_size // num_attention_heads whatever config.json
        # says; num_key_value_heads defaults to the heads; sliding_window 4096, every 4th layer full attention
        h, heads = required(cfg, "hidden_size", name), required(cfg, "num_attention_heads", name)
        cfg = {**cfg, "head_dim": h // heads, "sliding_window": cfg.get("sliding_window", 4096)}
    if mt == "falcon_h1":
        return _check_shapes(falcon_h1_spec(cfg, name))
    if mt in ("qwen2", "qwen3"):
        config_int(cfg, "max_window_layers", name, default=28, low=0)  # read by kvcache.layer_windows
    if mt in ("qwen3_5_text", "qwen3_5_moe_text"):
        from vramplan.spec.qwen35 import qwen35_spec

        h, heads = required(cfg, "hidden_size", name), required(cfg, "num_attention_heads", name)
        m = qwen35_spec(cfg, name, common_fields(cfg, name, h, heads))
        return _check_shapes(replace(m, text_of=str(wrapper)) if wrapper else m)
    if mt == "gemma4_text":
        from vramplan.spec.gemma4 import gemma4_spec

        h, heads = required(cfg, "hidden_size", name), required(cfg, "num_attention_heads", name)
        m = gemma4_spec(cfg, name, common_fields(cfg, name, h, heads))
        return _check_shapes(replace(m, text_of=str(wrapper)) if wrapper else m)
    if mt == "gemma3n_text":
        from vramplan.spec.gemma3n import gemma3n_spec

        h, heads = required(cfg, "hidden_size", name), required(cfg, "num_attention_heads", name)
        m = gemma3n_spec(cfg, name, common_fields(cfg, name, h, heads))
        return _check_shapes(replace(m, text_of=str(wrapper)) if wrapper else m)
    if mt == "llama4_text":
        from vramplan.spec.llama4 import LLAMA4_TEXT_DEFAULTS, llama4_spec

        cfg = {**LLAMA4_TEXT_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
        m = llama4_spec(cfg, name, no_rope_layers(cfg, name, required(cfg, "num_hidden_layers", name)))
        return _check_shapes(replace(m, text_of=str(wrapper)) if wrapper else m)
    if mt == "qwen3_moe" and not all_layers_routed(cfg):
        raise VramplanError(f"model config {name!r}: a qwen3_moe with dense MLP layers is not hand-modelled")
    if mt in DEEPSEEK_MOE:
        cfg = with_defaults(cfg, mt)
        h, heads = required(cfg, "hidden_size", name), required(cfg, "num_attention_heads", name)
        common = common_fields(cfg, name, h, heads)
        if mt == "glm4_moe":
            return _check_shapes(glm4_moe_model_spec(cfg, name, common))
        return _check_shapes(mla_model_spec(cfg, name, mt, common))
    m = _llama_like(cfg, name, mt)
    return _check_shapes(replace(m, text_of=str(wrapper)) if wrapper else m)


def _llama_like(cfg: Mapping[str, Any], name: str, mt: str) -> ModelSpec:
    h = required(cfg, "hidden_size", name)
    heads = required(cfg, "num_attention_heads", name)
    c = common_fields(cfg, name, h, heads)
    inter = required(cfg, "intermediate_size", name)
    layers = required(cfg, "num_hidden_layers", name)
    q, kv = heads * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    bias_default = mt == "gpt_oss"  # GptOssConfig.attention_bias defaults to True (q, k, v and o)
    # InternLM3Config.attribute_map (5.25): config.json's `qkv_bias` is attention_bias, `bias` is mlp_bias
    bias_key, mlp_bias_key = ("qkv_bias", "bias") if mt == "internlm3" else ("attention_bias", "mlp_bias")
    qkv_bias = True if mt == "qwen2" else config_bool(cfg, bias_key, name, bias_default)
    # Qwen2Attention / Glm4Attention (5.25): o_proj has no bias whatever attention_bias says
    o_bias = False if mt in ("qwen2", "glm4") else config_bool(cfg, bias_key, name, bias_default)
    if mt == "glm4":
        qkv_bias = config_bool(cfg, "attention_bias", name, True)  # Glm4Config.attention_bias defaults to True
    mlp_bias = config_bool(cfg, mlp_bias_key, name, False)
    if mt == "phi3":
        attn = (
            LinearSpec("qkv_proj", h, q + 2 * kv, False, "attn"),
            LinearSpec("o_proj", q, h, False, "attn"),
        )
    else:
        attn = (
            LinearSpec("q_proj", h, q, qkv_bias, "attn"),
            LinearSpec("k_proj", h, kv, qkv_bias, "attn"),
            LinearSpec("v_proj", h, kv, qkv_bias, "attn"),
            LinearSpec("o_proj", q, h, o_bias, "attn"),
        )
    other: tuple[ParamSpec, ...] = ()
    experts = top_k = 0
    if mt == "mixtral":
        # transformers 5 MixtralExperts: gate_up_proj (E, 2I, H) and down_proj (E, H, I) as nn.Parameter,
        # MixtralTopKRouter.weight (E, H): no nn.Linear in the MoE block (modeling_mixtral.py, 5.24).
        experts = required(cfg, "num_local_experts", name)
        top_k = config_int(cfg, "num_experts_per_tok", name, default=2)
        other = (
            ParamSpec("gate.weight", (experts, h), ("gate",)),
            ParamSpec("gate_up_proj", (experts, 2 * inter, h), ("w1", "w3")),
            ParamSpec("down_proj", (experts, h, inter), ("w2",)),
        )
        mlp: tuple[LinearSpec, ...] = ()
        mlp_kind = "moe"
    elif mt == "qwen3_moe":
        # Qwen3MoeExperts: gate_up_proj (E, 2·moe_I, H), down_proj (E, H, moe_I); Qwen3MoeTopKRouter.weight (E, H)
        # (modeling_qwen3_moe.py, 5.24). PEFT 0.21.2 resolves qwen3_moe through transformers' conversion mapping
        # to qwen2_moe's `_MOE_TARGET_MODULE_MAPPING`: `gate`, `gate_proj` + `up_proj`, `down_proj` (its
        # transformers-4 names; `all-linear` includes them) become `target_parameters`.
        experts = required(cfg, "num_experts", name)
        top_k = config_int(cfg, "num_experts_per_tok", name, default=8)
        inter = config_int(cfg, "moe_intermediate_size", name, default=768)
        other = (
            ParamSpec("gate.weight", (experts, h), ("gate",)),
            ParamSpec("gate_up_proj", (experts, 2 * inter, h), ("gate_proj", "up_proj")),
            ParamSpec("down_proj", (experts, h, inter), ("down_proj",)),
        )
        mlp = ()
        mlp_kind = "moe"
    elif mt == "gpt_oss":
        other = _gpt_oss_params(cfg, name, h, heads)
        experts, inter = other[0].shape[0], other[2].shape[-1] // 2
        top_k = config_int(cfg, "num_experts_per_tok", name, default=4)
        mlp = ()
        mlp_kind = "moe"
    elif mt in FUSED_GATE_UP:
        mlp = (
            LinearSpec("gate_up_proj", h, 2 * inter, False, "mlp"),
            LinearSpec("down_proj", inter, h, False, "mlp"),
        )
        mlp_kind = "gated_fused"
    else:
        mlp = (
            LinearSpec("gate_proj", h, inter, mlp_bias, "mlp"),
            LinearSpec("up_proj", h, inter, mlp_bias, "mlp"),
            LinearSpec("down_proj", inter, h, mlp_bias, "mlp"),
        )
        mlp_kind = "gated"
    tie_default = mt in ("gemma", "gemma2", "gemma3_text", "cohere2", "smollm3")  # SmolLM3Config: tied
    window = _sliding_window(cfg, name, mt)
    if mt == "gemma3_text":
        layer_types = gemma3_layer_types(cfg, name, layers)
    elif mt == "cohere2":  # Cohere2Config.__post_init__: `sliding_window_pattern` (default 4): 3 sliding, 1 full
        layer_types = gemma3_layer_types({"sliding_window_pattern": 4, **cfg}, name, layers)
    elif mt == "gpt_oss" and not cfg.get("layer_types"):
        # GptOssConfig.__post_init__ (5.24): sliding first, alternating with full attention
        layer_types = every_nth_full(layers, 2)
    elif mt in ("olmo3", "exaone4") and not cfg.get("layer_types"):
        layer_types = _every_nth_full_layer_types(cfg, name, mt, layers)
    elif mt in ("ministral", "smollm3") and not cfg.get("layer_types"):
        layer_types = _default_layer_types(cfg, name, mt, layers, window)
    else:
        layer_types = config_names(cfg, "layer_types", name, layers) if cfg.get("layer_types") else ()
    # q_norm / k_norm: OLMo 2 / 3 over the whole q and k projections, qwen3's and EXAONE 4's over head_dim
    head_norms = 2 * c["head_dim"] if mt in ("qwen3", "qwen3_moe", "gemma3_text", "exaone4") else 0
    if mt in PROJECTION_QK_NORM:
        head_norms = q + kv
    return ModelSpec(
        model_type=mt,
        intermediate_size=inter,
        num_hidden_layers=layers,
        tie_word_embeddings=config_bool(cfg, "tie_word_embeddings", name, tie_default),
        linears=attn + mlp,
        norm="rms",
        norms_per_layer=4 if mt in SANDWICH_NORM else 1 if mt == "cohere2" else 2,
        parallel_residual=mt == "cohere2",  # Cohere2DecoderLayer: residual + attention(x̂) + mlp(x̂), one norm
        head_norm_params=head_norms,
        moe_params=other,
        mlp=mlp_kind,
        num_local_experts=experts,
        num_experts_per_tok=top_k,
        sliding_window=window,
        layer_types=layer_types,
        no_rope_layers=no_rope_layers(cfg, name, layers) if mt in NOPE_FAMILIES else (),
        **c,
    )


def _every_nth_full_layer_types(cfg: Mapping[str, Any], name: str, mt: str, layers: int) -> tuple[str, ...]:
    """`layer_types` as the config class fills it when config.json has none (transformers 5.25): Olmo3Config
    every 4th layer full attention, the others sliding; Exaone4Config every `sliding_window_pattern`-th (default
    4), none sliding without a `sliding_window` (`sliding_window_pattern = 0`, which transformers' own rule then
    divides by: a config that sets no window names its layer_types)."""
    if mt == "olmo3":
        return every_nth_full(layers, 4)
    if cfg.get("sliding_window", 4096) is None:
        raise VramplanError(
            f"model config {name!r}: exaone4 without sliding_window needs layer_types (Exaone4Config divides by a "
            "sliding_window_pattern of 0); add layer_types to the config.json"
        )
    pattern = cfg.get("sliding_window_pattern", 4)
    if isinstance(pattern, bool) or not isinstance(pattern, int) or pattern < 1:
        raise VramplanError(
            f"model config {name!r}: sliding_window_pattern {pattern!r} without layer_types (Exaone4Config reads "
            "only an integer pattern); add layer_types to the config.json"
        )
    return every_nth_full(layers, pattern)


def _sliding_window(cfg: Mapping[str, Any], name: str, mt: str) -> int | None:
    """The window sliding layers attend: the config's `sliding_window` (class defaults: GptOssConfig 128,
    MinistralConfig 4096, 5.25), none where `use_sliding_window` is false (Qwen2 / Qwen3, and SmolLM3, whose
    SmolLM3Config defaults it to False: modeling_smollm3.py gives a layer a window only when it is set);
    Olmo3Config / Exaone4Config default 4096; Olmo2Model and Glm4Model build a causal mask only (a stray key in
    config.json is not read)."""
    default = {"gpt_oss": 128, "ministral": 4096, "olmo3": 4096, "exaone4": 4096}.get(mt)
    if mt in ("olmo2", "glm4") or not config_bool(cfg, "use_sliding_window", name, mt != "smollm3"):
        return None
    if "sliding_window" in cfg and cfg["sliding_window"] is None:
        return None  # an explicit null: no window, whatever the class default
    return config_int(cfg, "sliding_window", name, default=default)


def _default_layer_types(cfg: Mapping[str, Any], name: str, mt: str, layers: int, window: int | None):
    """`layer_types` as the config class fills it when config.json has none (5.25): MinistralConfig every layer
    sliding when there is a window; SmolLM3Config the NoPE layers sliding when `use_sliding_window` and a window
    are set, every other layer full attention."""
    if mt == "ministral":
        return ("sliding_attention" if window is not None else "full_attention",) * layers
    nope = set(no_rope_layers(cfg, name, layers))
    return tuple("sliding_attention" if window is not None and i in nope else "full_attention" for i in range(layers))


def no_rope_layers(cfg: Mapping[str, Any], name: str, layers: int) -> tuple[int, ...]:
    """The layers that skip RoPE (SmolLM3: `no_rope_layers[i] == 0`; without the list, SmolLM3Config.__post_init__
    (5.25) makes every `no_rope_layer_interval`-th layer one: `(i + 1) % interval == 0`)."""
    flags = cfg.get("no_rope_layers")
    if flags is None:
        interval = config_int(cfg, "no_rope_layer_interval", name, default=4)
        return tuple(i for i in range(layers) if (i + 1) % interval == 0)
    flags_ok = isinstance(flags, list) and len(flags) >= layers
    if not flags_ok or any(f not in (0, 1) or isinstance(f, float) for f in flags):
        raise VramplanError(
            f"model config {name!r}: no_rope_layers must be a list of {layers} or more 0 / 1 flags; fix the config.json"
        )
    return tuple(i for i in range(layers) if not flags[i])


def _gpt_oss_params(cfg: Mapping[str, Any], name: str, h: int, heads: int) -> tuple[ParamSpec, ...]:
    """gpt-oss's per-layer parameters outside its nn.Linears (modeling_gpt_oss.py, transformers 5.24):
    GptOssTopKRouter weight (E, H) and bias (E,); GptOssExperts gate_up_proj (E, H, 2I) stored transposed
    (`is_transposed=True`: input dim first, gate and up interleaved), gate_up_proj_bias (E, 2I), down_proj
    (E, I, H), down_proj_bias (E, H); GptOssAttention.sinks (heads,). None is an nn.Linear: bitsandbytes leaves
    them in the load dtype, and PEFT 0.21.2 maps no transformers-4 names for gpt_oss (no
    `_MOE_TARGET_MODULE_MAPPING` entry), so `all-linear` adapts q/k/v/o only; the experts take LoRA only through
    an explicit `target_parameters`."""
    experts = config_int(cfg, "num_local_experts", name, default=128)
    inter = required(cfg, "intermediate_size", name)
    return (
        ParamSpec("router.weight", (experts, h), ()),
        ParamSpec("router.bias", (experts,), ()),
        ParamSpec("gate_up_proj", (experts, h, 2 * inter), ()),
        ParamSpec("gate_up_proj_bias", (experts, 2 * inter), ()),
        ParamSpec("down_proj", (experts, inter, h), ()),
        ParamSpec("down_proj_bias", (experts, h), ()),
        ParamSpec("sinks", (heads,), ()),
    )
