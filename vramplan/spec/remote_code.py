"""Model types that exist only as remote code (`trust_remote_code=True`, a modeling file in the hub repository),
as layouts in the architecture table's record format (spec/architectures.py), keyed by model_type.

transformers 5.25 has no class for these types, so the generator (vramplan.measure.architectures) cannot record
them: each layout below is written from the remote modeling file it names, every tensor under the name that file
builds (`transformer.h.*.attn.c_attn.weight`), so LoRA targets (`c_attn`, `w1`, `c_fc2`) resolve as PEFT would
match them. The config fields each layout reads are `required`: a config.json without one is one error line,
never a guessed default (the remote config classes' defaults are not the checkpoints'). Activations are walked
on the Llama stand-in like every table type (spec/generic.py), with the layout's `roles` saying which Llama
projection each linear plays; `frozen` stacks (MiMo's MTP layers, unused by the training forward) are counted as
weights with no gradient or optimizer state, as a VLM's tower is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vramplan.errors import VramplanError

Expr = list  # [[coefficient, [field, ...]], ...]: a sum of terms, as in architectures.json


def _x(*factors: int | str) -> Expr:
    """One term: integer/fraction coefficients and field names multiplied (`_x(3, "n_embd")`)."""
    coef: int | str = 1
    fields = []
    for f in factors:
        if isinstance(f, int) or ("/" in f and "//" not in f):
            coef = f
        else:
            fields.append(f)
    return [[coef, fields]]


def _t(shape: tuple[Expr, ...], count: Expr, linear: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"shape": list(shape), "count": count, "linear": linear, **extra}


def _record(params: dict[str, dict[str, Any]], **rest: Any) -> dict[str, Any]:
    return {"attribute_map": {}, "defaults": {}, "derived": {}, "none_defaults": {}, "keep_in_fp32_modules": [],
            "sub_config_defaults": {}, "unresolved": [], "params": params, "roles": {}, "frozen": [], **rest}  # fmt: skip


ONE = _x()


def _qwen() -> dict[str, Any]:
    """Qwen-1 (QWenLMHeadModel, modeling_qwen.py of Qwen/Qwen-7B; copy zhangningboo/Qwen-7B@1ff20863,
    find_string id 1777346645): QWenAttention's `c_attn = nn.Linear(hidden_size, 3 * projection_size)` (bias
    always), `c_proj = nn.Linear(hidden_size, projection_size, bias=not no_bias)` with projection_size =
    kv_channels * num_attention_heads; QWenMLP's w1, w2 (hidden -> intermediate_size // 2) and c_proj, biases
    under `not no_bias`, `a1 * silu(a2)` with a1 = w1(x), a2 = w2(x); RMSNorm ln_1 / ln_2 / ln_f (weight only);
    lm_head `nn.Linear(hidden_size, vocab_size, bias=False)`."""
    h, layers, proj = "hidden_size", "num_hidden_layers", ("kv_channels", "num_attention_heads")
    ff = _x("1/2", "intermediate_size")  # intermediate_size // 2 (even in every Qwen-1 config)
    biased = {"when": {"no_bias": False}}
    p = "transformer.h.*."
    return _record(
        {
            "transformer.wte.weight": _t((_x("vocab_size"), _x(h)), ONE),
            p + "ln_1.weight": _t((_x(h),), _x(layers)),
            p + "attn.c_attn.weight": _t((_x(3, *proj), _x(h)), _x(layers), "Linear"),
            p + "attn.c_attn.bias": _t((_x(3, *proj),), _x(layers)),
            p + "attn.c_proj.weight": _t((_x(*proj), _x(h)), _x(layers), "Linear"),
            p + "attn.c_proj.bias": _t((_x(*proj),), _x(layers), **biased),
            p + "ln_2.weight": _t((_x(h),), _x(layers)),
            p + "mlp.w1.weight": _t((ff, _x(h)), _x(layers), "Linear"),
            p + "mlp.w1.bias": _t((ff,), _x(layers), **biased),
            p + "mlp.w2.weight": _t((ff, _x(h)), _x(layers), "Linear"),
            p + "mlp.w2.bias": _t((ff,), _x(layers), **biased),
            p + "mlp.c_proj.weight": _t((_x(h), ff), _x(layers), "Linear"),
            p + "mlp.c_proj.bias": _t((_x(h),), _x(layers), **biased),
            "transformer.ln_f.weight": _t((_x(h),), ONE),
            "lm_head.weight": _t((_x("vocab_size"), _x(h)), ONE, "Linear", untied=True),
        },
        remote_class="QWenLMHeadModel (modeling_qwen.py)",
        required=("vocab_size", h, "intermediate_size", layers, "num_attention_heads", "kv_channels", "no_bias"),
        attribute_map={"head_dim": "kv_channels"},  # QWenAttention's hidden_size_per_attention_head
        # a1 * silu(a2): w2 passes the SiLU (Llama's gate_proj), w1 multiplies it (up_proj)
        roles={"attn.c_proj": ["o_proj"], "mlp.w1": ["up_proj"], "mlp.w2": ["gate_proj"], "mlp.c_proj": ["down_proj"]},
        defaults={"tie_word_embeddings": True},  # PretrainedConfig's, when config.json does not say
        walk="RMSNorm, fused c_attn, SiLU-gated MLP, rotary: the Llama layer itself (SDPA with a boolean "
        "causal mask, or flash-attn when installed: QWenAttention.forward)",
    )


def _btlm() -> dict[str, Any]:
    """BTLM (BTLMLMHeadModel, modeling_btlm.py of cerebras/btlm-3b-8k-base): GPT-2's module tree with SwiGLU,
    ALiBi and muP. Module names and shapes as that file builds them, read from its ports that keep them
    (text-generation-inference's custom_modeling btlm, find_string id 33128250796: c_attn / c_proj with bias,
    c_fc and c_fc2 when `activation_function == "swiglu"`, LayerNorm ln_1 / ln_2 / ln_f with bias,
    `relative_pe = AlibiPositionEmbeddingLayer(num_heads)` holding `slopes` as an nn.Parameter of (heads, 1)
    when `position_embedding_type == "alibi"`; AutoGPTQ's btlm.py names the same quantized modules, attn.c_attn,
    attn.c_proj, mlp.c_fc, mlp.c_fc2, mlp.c_proj). The learned `wpe` exists only without ALiBi (as JAIS, its
    Cerebras sibling: `wpe ... if position_embedding_type != "alibi"`). c_attn / c_proj / c_fc / c_fc2 are
    GPT-2's Conv1D (weight stored (in, out)); `n_inner` None means 4 * n_embd (GPT-2's rule)."""
    h, layers, inner = "n_embd", "n_layer", "n_inner"
    p = "transformer.h.*."
    swiglu = {"when": {"activation_function": "swiglu"}}
    return _record(
        {
            "transformer.wte.weight": _t((_x("vocab_size"), _x(h)), ONE),
            "transformer.wpe.weight": _t((_x("n_positions"), _x(h)), ONE, when={"position_embedding_type": "learned"}),
            "transformer.relative_pe.slopes": _t((_x("n_head"), ONE), ONE, when={"position_embedding_type": "alibi"}),
            p + "ln_1.weight": _t((_x(h),), _x(layers)),
            p + "ln_1.bias": _t((_x(h),), _x(layers)),
            p + "attn.c_attn.weight": _t((_x(h), _x(3, h)), _x(layers), "Conv1D"),
            p + "attn.c_attn.bias": _t((_x(3, h),), _x(layers)),
            p + "attn.c_proj.weight": _t((_x(h), _x(h)), _x(layers), "Conv1D"),
            p + "attn.c_proj.bias": _t((_x(h),), _x(layers)),
            p + "ln_2.weight": _t((_x(h),), _x(layers)),
            p + "ln_2.bias": _t((_x(h),), _x(layers)),
            p + "mlp.c_fc.weight": _t((_x(h), _x(inner)), _x(layers), "Conv1D"),
            p + "mlp.c_fc.bias": _t((_x(inner),), _x(layers)),
            p + "mlp.c_fc2.weight": _t((_x(h), _x(inner)), _x(layers), "Conv1D", **swiglu),
            p + "mlp.c_fc2.bias": _t((_x(inner),), _x(layers), **swiglu),
            p + "mlp.c_proj.weight": _t((_x(inner), _x(h)), _x(layers), "Conv1D"),
            p + "mlp.c_proj.bias": _t((_x(h),), _x(layers)),
            "transformer.ln_f.weight": _t((_x(h),), ONE),
            "transformer.ln_f.bias": _t((_x(h),), ONE),
            "lm_head.weight": _t((_x("vocab_size"), _x(h)), ONE, "Linear", untied=True),
        },
        remote_class="BTLMLMHeadModel (modeling_btlm.py)",
        required=("vocab_size", h, layers, "n_head", "activation_function", "position_embedding_type"),
        attribute_map={"hidden_size": h, "num_hidden_layers": layers, "num_attention_heads": "n_head",
                       "max_position_embeddings": "n_positions", "intermediate_size": inner},  # fmt: skip
        none_defaults={inner: _x(4, h)},
        # x1 * silu(x2) with x1 = c_fc(x), x2 = c_fc2(x) (SwiGLUActivation)
        roles={"attn.c_proj": ["o_proj"], "mlp.c_fc": ["up_proj"], "mlp.c_fc2": ["gate_proj"],
               "mlp.c_proj": ["down_proj"]},  # fmt: skip
        defaults={"tie_word_embeddings": True},
        # BTLMAttention._attn: matmul, + ALiBi bias, softmax, matmul (no SDPA / flash path in the remote code)
        attention_only="eager",
        walk="LayerNorm (walked as RMSNorm), Conv1D c_attn, SwiGLU MLP, eager attention with an ALiBi bias",
    )


def _mimo() -> dict[str, Any]:
    """MiMo (MiMoForCausalLM, modeling_mimo.py of XiaomiMiMo/MiMo-7B-RL; copy dt-3t/TeGu@9e9fac3a, find_string
    id 15035413402): Qwen2ForCausalLM (transformers' own Qwen2Attention, bias on q/k/v, Qwen2MLP, Qwen2RMSNorm)
    plus `model.mtp_layers`, `num_nextn_predict_layers` MiMoMTPLayers of a Qwen2 attention + MLP, input_proj
    (2 * hidden -> hidden, no bias) and token_layernorm / hidden_layernorm / input_layernorm /
    post_attention_layernorm / final_layernorm. MiMoModel.forward is Qwen2Model's: the MTP layers run only in
    get_mtp_logits (speculative decoding), so a training step gives them no gradient (frozen here)."""
    h, layers, mtp = "hidden_size", "num_hidden_layers", "num_nextn_predict_layers"
    q, kv = _x("head_dim", "num_attention_heads"), _x("head_dim", "num_key_value_heads")

    def block(prefix: str, count: Expr) -> dict[str, dict[str, Any]]:
        return {
            prefix + "self_attn.q_proj.weight": _t((q, _x(h)), count, "Linear"),
            prefix + "self_attn.q_proj.bias": _t((q,), count),
            prefix + "self_attn.k_proj.weight": _t((kv, _x(h)), count, "Linear"),
            prefix + "self_attn.k_proj.bias": _t((kv,), count),
            prefix + "self_attn.v_proj.weight": _t((kv, _x(h)), count, "Linear"),
            prefix + "self_attn.v_proj.bias": _t((kv,), count),
            prefix + "self_attn.o_proj.weight": _t((_x(h), q), count, "Linear"),
            prefix + "mlp.gate_proj.weight": _t((_x("intermediate_size"), _x(h)), count, "Linear"),
            prefix + "mlp.up_proj.weight": _t((_x("intermediate_size"), _x(h)), count, "Linear"),
            prefix + "mlp.down_proj.weight": _t((_x(h), _x("intermediate_size")), count, "Linear"),
            prefix + "input_layernorm.weight": _t((_x(h),), count),
            prefix + "post_attention_layernorm.weight": _t((_x(h),), count),
        }

    m = "model.mtp_layers.*."
    return _record(
        {
            "model.embed_tokens.weight": _t((_x("vocab_size"), _x(h)), ONE),
            **block("model.layers.*.", _x(layers)),
            "model.norm.weight": _t((_x(h),), ONE),
            **block(m, _x(mtp)),
            **{m + f"{n}.weight": _t((_x(h),), _x(mtp)) for n in ("token_layernorm", "hidden_layernorm",
                                                                   "final_layernorm")},  # fmt: skip
            m + "input_proj.weight": _t((_x(h), _x(2, h)), _x(mtp), "Linear"),
            "lm_head.weight": _t((_x("vocab_size"), _x(h)), ONE, "Linear", untied=True),
        },
        remote_class="MiMoForCausalLM (modeling_mimo.py)",
        required=("vocab_size", h, "intermediate_size", layers, "num_attention_heads", "num_key_value_heads", mtp),
        none_defaults={"head_dim": _x("hidden_size//num_attention_heads")},  # Qwen2Attention's rule
        defaults={"tie_word_embeddings": False},  # Qwen2Config's
        frozen=["model.mtp_layers."],
        walk="Qwen2 decoder layers (the Llama layer with q/k/v bias), transformers' own attention",
    )


def _moss_vl() -> dict[str, Any]:
    """MOSS-VL (OpenMOSS-Team/MOSS-VL-*): a Qwen3-VL vision encoder and a Qwen3 text decoder whose layers listed
    in `text_config.cross_attention_layers` are cross-attention layers (Mllama's pattern) reading the vision
    tokens. Names and shapes from OpenMOSS/MOSS-VL@913ce869 sglang/python/sglang/srt/models/moss_vl.py (find_string
    id 59273042730), whose load_weights maps the checkpoint's names (model.language_model.layers.N.self_attn.q_proj,
    .cross_attn.q_proj, .mlp.gate_proj, model.visual.blocks.N.attn.qkv, model.separator_token, lm_head): text
    self-attention layers Qwen3's (q/k/v/o, q_norm / k_norm of head_dim, bias under attention_bias); a
    cross-attention layer holds cross_attn q/k/v/o with q_norm / k_norm, the MLP, two RMSNorms and the tanh gates
    cross_attn_attn_gate / cross_attn_mlp_gate (one element each); the vision blocks Qwen3-VL's (LayerNorm norm1 /
    norm2, fused qkv and proj with bias, linear_fc1 / linear_fc2 with bias), patch_embed a Conv3d with bias,
    pos_embed of num_position_embeddings, and one merger over the last state and the deepstack features
    concatenated: a LayerNorm per feature, linear_fc1 (F -> F) and linear_fc2 (F -> out_hidden_size) with
    F = hidden_size * spatial_merge_size² * (1 + len(deepstack_visual_indexes))."""
    t, v = "text_config.", "vision_config."
    h, layers = t + "hidden_size", t + "num_hidden_layers"
    cross = "count(text_config.cross_attention_layers)"
    selfs = [[1, [layers]], [-1, [cross]]]
    q, kv = _x(t + "head_dim", t + "num_attention_heads"), _x(t + "head_dim", t + "num_key_value_heads")
    inter = _x(t + "intermediate_size")
    biased = {"when": {t + "attention_bias": True}}
    p = "model.language_model.layers.*."
    text: dict[str, dict[str, Any]] = {"model.language_model.embed_tokens.weight": _t((_x(t + "vocab_size"), _x(h)), ONE)}
    for attn, count in (("self_attn", selfs), ("cross_attn", _x(cross))):
        a = p + attn + "."
        for name, shape in (("q_proj", (q, _x(h))), ("k_proj", (kv, _x(h))), ("v_proj", (kv, _x(h))),
                            ("o_proj", (_x(h), q))):  # fmt: skip
            text[a + name + ".weight"] = _t(shape, count, "Linear")
            text[a + name + ".bias"] = _t((shape[0],), count, **biased)
        text[a + "q_norm.weight"] = _t((_x(t + "head_dim"),), count)
        text[a + "k_norm.weight"] = _t((_x(t + "head_dim"),), count)
    text |= {
        p + "cross_attn_attn_gate": _t((ONE,), _x(cross)),
        p + "cross_attn_mlp_gate": _t((ONE,), _x(cross)),
        p + "mlp.gate_proj.weight": _t((inter, _x(h)), _x(layers), "Linear"),
        p + "mlp.up_proj.weight": _t((inter, _x(h)), _x(layers), "Linear"),
        p + "mlp.down_proj.weight": _t((_x(h), inter), _x(layers), "Linear"),
        p + "input_layernorm.weight": _t((_x(h),), _x(layers)),
        p + "post_attention_layernorm.weight": _t((_x(h),), _x(layers)),
        "model.language_model.norm.weight": _t((_x(h),), ONE),
        "lm_head.weight": _t((_x(t + "vocab_size"), _x(h)), ONE, "Linear", untied=True),
    }
    vh, depth, b = _x(v + "hidden_size"), _x(v + "depth"), "model.visual.blocks.*."
    merged = _x("merger_width")
    vision = {
        "model.visual.patch_embed.proj.weight": _t(
            (vh, _x(v + "in_channels"), _x(v + "temporal_patch_size"), _x(v + "patch_size"), _x(v + "patch_size")), ONE
        ),
        "model.visual.patch_embed.proj.bias": _t((vh,), ONE),
        "model.visual.pos_embed.weight": _t((_x(v + "num_position_embeddings"), vh), ONE),
        b + "norm1.weight": _t((vh,), depth), b + "norm1.bias": _t((vh,), depth),
        b + "norm2.weight": _t((vh,), depth), b + "norm2.bias": _t((vh,), depth),
        b + "attn.qkv.weight": _t((_x(3, v + "hidden_size"), vh), depth, "Linear"),
        b + "attn.qkv.bias": _t((_x(3, v + "hidden_size"),), depth),
        b + "attn.proj.weight": _t((vh, vh), depth, "Linear"),
        b + "attn.proj.bias": _t((vh,), depth),
        b + "mlp.linear_fc1.weight": _t((_x(v + "intermediate_size"), vh), depth, "Linear"),
        b + "mlp.linear_fc1.bias": _t((_x(v + "intermediate_size"),), depth),
        b + "mlp.linear_fc2.weight": _t((vh, _x(v + "intermediate_size")), depth, "Linear"),
        b + "mlp.linear_fc2.bias": _t((vh,), depth),
        "model.visual.merger.norms.*.weight": _t((vh,), _x("merger_features")),
        "model.visual.merger.norms.*.bias": _t((vh,), _x("merger_features")),
        "model.visual.merger.linear_fc1.weight": _t((merged, merged), ONE, "Linear"),
        "model.visual.merger.linear_fc1.bias": _t((merged,), ONE),
        "model.visual.merger.linear_fc2.weight": _t((_x(v + "out_hidden_size"), merged), ONE, "Linear"),
        "model.visual.merger.linear_fc2.bias": _t((_x(v + "out_hidden_size"),), ONE),
        "model.separator_token": _t((_x(v + "out_hidden_size"),), ONE),
    }  # fmt: skip
    return _record(
        {**text, **vision},
        remote_class="MossVLForConditionalGeneration (OpenMOSS MOSS-VL)",
        required=(t + "vocab_size", h, t + "intermediate_size", layers, t + "num_attention_heads",
                  t + "num_key_value_heads", t + "head_dim", t + "cross_attention_layers", v + "hidden_size",
                  v + "depth", v + "intermediate_size", v + "in_channels", v + "temporal_patch_size",
                  v + "patch_size", v + "num_position_embeddings", v + "spatial_merge_size", v + "out_hidden_size",
                  v + "deepstack_visual_indexes"),  # fmt: skip
        defaults={t + "attention_bias": False, "tie_word_embeddings": False},  # Qwen3Config's
        wrapper=True,
        walk="Qwen3 decoder layers (the Llama layer with q/k norms); the cross-attention layers walked as "
        "self-attention over the text (their keys and values come from the image tokens)",
    )


def _merger_fields(fields: dict[str, Any]) -> None:
    """MOSS-VL's merger width: vision hidden_size · spatial_merge_size² · (1 + deepstack features)."""
    deep = fields.get("count(vision_config.deepstack_visual_indexes)", 0)
    hidden, merge = fields.get("vision_config.hidden_size"), fields.get("vision_config.spatial_merge_size")
    if isinstance(hidden, int) and isinstance(merge, int):
        fields["merger_features"] = 1 + deep
        fields["merger_width"] = hidden * merge * merge * (1 + deep)


# model_type -> layout; add a type here with the remote file it was read from, and a test holding its count
LAYOUTS: dict[str, dict[str, Any]] = {"qwen": _qwen(), "btlm": _btlm(), "mimo": _mimo(), "moss_vl": _moss_vl()}
FIELD_HOOKS = {"moss_vl": _merger_fields}


def layout(model_type: Any) -> dict[str, Any] | None:
    return LAYOUTS.get(model_type) if isinstance(model_type, str) else None


def attention_only(model_type: str) -> str | None:
    """The attention the remote code always computes, whatever `attn_implementation` says (BTLM: eager)."""
    entry = LAYOUTS.get(model_type)
    return entry.get("attention_only") if entry else None


def check_required(model_type: str, cfg: Mapping[str, Any], name: str) -> None:
    """One error line naming every field the layout reads that this config.json does not give as it must."""
    entry = LAYOUTS[model_type]
    bad = []
    for key in entry["required"]:
        value, given = _lookup(cfg, key)
        if key.endswith(("cross_attention_layers", "deepstack_visual_indexes")):
            ok = isinstance(value, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in value)
        elif key in ("no_bias",):
            ok = isinstance(value, bool)
        elif key in ("activation_function", "position_embedding_type"):
            ok = isinstance(value, str)
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        if not ok:
            bad.append(f"{key}={value!r}" if given else key)
    if bad:
        raise VramplanError(
            f"{name}: a {model_type} config.json ({entry['remote_class']}, remote code) needs "
            + ", ".join(bad[:4])
            + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
            + " as that code reads it; give the hub repository's config.json"
        )


def _lookup(cfg: Mapping[str, Any], key: str) -> tuple[Any, bool]:
    """(value, present) of a dotted key (`text_config.hidden_size`) in a nested config."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None, False
        node = node[part]
    return node, True


# mamba_ssm's own config.json (state-spaces/mamba-2.8b: d_model, n_layer, vocab_size, ssm_cfg; no model_type) and
# the MambaConfig fields transformers' conversion reads it into (convert_mamba_ssm_checkpoint_to_pytorch.py,
# transformers 4.39-4.57, `convert_ssm_config_to_hf_config`: hidden_size = d_model, intermediate_size =
# 2 * d_model, time_step_rank = ceil(d_model / 16), num_hidden_layers = n_layer, vocab_size padded up to
# pad_vocab_size_multiple); the ssm_cfg keys mamba_ssm's Mamba block takes, as MambaConfig names them
MAMBA_SSM_KEYS = ("d_model", "n_layer", "vocab_size")
_SSM_CFG = {"d_state": "state_size", "d_conv": "conv_kernel", "expand": "expand", "dt_rank": "time_step_rank",
            "conv_bias": "use_conv_bias", "bias": "use_bias"}  # fmt: skip


def mamba_ssm_layout(cfg: Mapping[str, Any]) -> bool:
    """A config.json in mamba_ssm's own layout (no model_type; d_model, n_layer, vocab_size)."""
    return cfg.get("model_type") is None and all(k in cfg for k in MAMBA_SSM_KEYS) and "hidden_size" not in cfg


def mamba_ssm_as_transformers(cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    """transformers' `mamba` config for a mamba_ssm config.json: the same tensors (backbone.embeddings,
    backbone.layers.*.mixer.in_proj / conv1d / x_proj / dt_proj / A_log / D / out_proj, backbone.norm_f) the
    converted checkpoint (state-spaces/mamba-2.8b-hf) holds. Anything the conversion cannot carry is one line."""
    ssm = cfg.get("ssm_cfg") or {}
    fix = "; estimate its transformers conversion instead (config.json with model_type 'mamba', e.g. the -hf repository)"
    if not isinstance(ssm, Mapping) or ssm.get("layer", "Mamba1") != "Mamba1":
        raise VramplanError(f"{name}: a mamba_ssm config.json with ssm_cfg {ssm!r} (not a Mamba1 block) has no "
                            f"transformers model_type vramplan reads as is{fix}")  # fmt: skip
    unknown = sorted(set(ssm) - set(_SSM_CFG) - {"layer"})
    if unknown or cfg.get("rms_norm", True) is not True or cfg.get("attn_layer_idx"):
        said = f"ssm_cfg keys {unknown}" if unknown else "rms_norm false or attention layers"
        raise VramplanError(f"{name}: a mamba_ssm config.json with {said}: transformers' MambaConfig has no such "
                            f"setting{fix}")  # fmt: skip
    for key in MAMBA_SSM_KEYS:
        value = cfg[key]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise VramplanError(f"{name}: mamba_ssm config field {key!r} is {value!r}; a positive integer is needed")
    multiple = cfg.get("pad_vocab_size_multiple", 1)
    vocab = cfg["vocab_size"]
    if isinstance(multiple, int) and multiple > 1 and vocab % multiple:
        vocab += multiple - vocab % multiple
    out = {"model_type": "mamba", "hidden_size": cfg["d_model"], "num_hidden_layers": cfg["n_layer"],
           "vocab_size": vocab, "tie_word_embeddings": cfg.get("tie_embeddings", True),
           "time_step_rank": -(-cfg["d_model"] // 16),  # mamba_ssm's dt_rank "auto", as the conversion sets it
           "residual_in_fp32": cfg.get("residual_in_fp32", True)}  # fmt: skip
    out |= {_SSM_CFG[k]: v for k, v in ssm.items() if k in _SSM_CFG and v != "auto"}
    return out
