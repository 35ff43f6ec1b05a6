"""Llama 4's text model (`llama4_text`, and `llama4` wrappers through `text_config`): every parameter tensor, by hand.

The architecture table (spec/architectures.py) records llama4_text at its config class's defaults, where every
layer routes (`interleave_moe_layer_step` 1): it has no rule for the dense layers of Maverick (step 2). This
module lists the tensors transformers 5.24 builds (models/llama4/modeling_llama4.py, configuration_llama4.py):

- every layer: `self_attn.{q,k,v,o}_proj` (nn.Linear, bias = attention_bias), `input_layernorm` and
  `post_attention_layernorm` (RMSNorm weights); `qk_norm` (Llama4TextL2Norm) has no parameter;
- the layers in `moe_layers` (Llama4TextConfig.__post_init__: given, else `range(step - 1, layers, step)` with
  step = `interleave_moe_layer_step`): `feed_forward.router` (Llama4Router, an nn.Linear subclass: bitsandbytes'
  `type(module) is nn.Linear` check leaves it unquantized), `feed_forward.shared_expert.{gate,up,down}_proj`
  (Llama4TextMLP at `intermediate_size`), and the experts: Llama4TextExperts' fused `gate_up_proj` (E, H, 2I)
  and `down_proj` (E, I, H) plain nn.Parameters, or, with axolotl's `llama4_linearized_experts`, its
  replacement (axolotl src/axolotl/monkeypatch/models/llama4/modeling.py, commit 102fdac6) with per-expert
  nn.Linear ModuleLists `gate_projs` / `up_projs` (H -> I) and `down_projs` (I -> H): quantized by
  bitsandbytes, targetable by PEFT;
- the other layers: `feed_forward.{gate,up,down}_proj` (Llama4TextMLP at `intermediate_size_mlp`);
- `model.embed_tokens`, `model.norm`, `lm_head` (absent when tied; Llama4TextConfig does not tie by default).

tests/estimator/test_params.py holds the counts to `from_config` on the meta device, both layouts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from vramplan.errors import VramplanError
from vramplan.spec.architectures import Tensor

if TYPE_CHECKING:
    from vramplan.spec.model import ModelSpec


def moe_layers(cfg: Mapping[str, Any], fields: Mapping[str, Any], layers: int, name: str) -> tuple[int, ...]:
    """The layer indices that route tokens to experts (Llama4TextConfig.__post_init__, 5.24)."""
    given = cfg.get("moe_layers")
    if given is not None:
        if not isinstance(given, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in given):
            raise VramplanError(f"model config {name!r}: moe_layers must be a list of layer indices, got {given!r}")
        return tuple(i for i in given if 0 <= i < layers)
    step = fields.get("interleave_moe_layer_step", 1)
    if not isinstance(step, int) or isinstance(step, bool) or step < 1:
        raise VramplanError(
            f"model config {name!r}: interleave_moe_layer_step must be a positive integer, got {step!r}"
        )
    return tuple(range(step - 1, layers, step))


def text_tensors(
    cfg: Mapping[str, Any], fields: Mapping[str, Any], name: str, linearized_experts: bool = False
) -> tuple[Tensor, ...]:
    """Every parameter tensor of a Llama4ForCausalLM built from `cfg` (`fields`: the config class's values,
    spec/architectures.config_fields), in the architecture table's key format (layer index as `*`)."""

    def field(key: str) -> int:
        value = fields.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise VramplanError(f"model config {name!r}: {key} must be a positive integer, got {value!r}")
        return value

    h, layers, vocab = field("hidden_size"), field("num_hidden_layers"), field("vocab_size")
    heads, kv_heads, head_dim = field("num_attention_heads"), field("num_key_value_heads"), field("head_dim")
    inter, inter_mlp, experts = field("intermediate_size"), field("intermediate_size_mlp"), field("num_local_experts")
    routed = len(moe_layers(cfg, fields, layers, name))
    dense = layers - routed
    stack = "model.layers.*."
    out = [Tensor("model.embed_tokens.weight", (vocab, h), 1, None)]
    bias = fields.get("attention_bias") is True
    for proj, n_out, n_in in (("q", heads * head_dim, h), ("k", kv_heads * head_dim, h),
                              ("v", kv_heads * head_dim, h), ("o", h, heads * head_dim)):  # fmt: skip
        out.append(Tensor(f"{stack}self_attn.{proj}_proj.weight", (n_out, n_in), layers, "Linear"))
        if bias:
            out.append(Tensor(f"{stack}self_attn.{proj}_proj.bias", (n_out,), layers, None))
    out += [
        Tensor(f"{stack}{norm}.weight", (h,), layers, None) for norm in ("input_layernorm", "post_attention_layernorm")
    ]
    if routed:
        moe = f"{stack}feed_forward."
        out.append(Tensor(moe + "router.weight", (experts, h), routed, "Llama4Router"))
        out += [
            Tensor(moe + "shared_expert.gate_proj.weight", (inter, h), routed, "Linear"),
            Tensor(moe + "shared_expert.up_proj.weight", (inter, h), routed, "Linear"),
            Tensor(moe + "shared_expert.down_proj.weight", (h, inter), routed, "Linear"),
        ]
        if linearized_experts:
            out += [
                Tensor(moe + "experts.gate_projs.weight", (inter, h), routed * experts, "Linear"),
                Tensor(moe + "experts.up_projs.weight", (inter, h), routed * experts, "Linear"),
                Tensor(moe + "experts.down_projs.weight", (h, inter), routed * experts, "Linear"),
            ]
        else:
            out += [
                Tensor(moe + "experts.gate_up_proj", (experts, h, 2 * inter), routed, None),
                Tensor(moe + "experts.down_proj", (experts, inter, h), routed, None),
            ]
    if dense:
        mlp = f"{stack}feed_forward."
        out += [
            Tensor(mlp + "gate_proj.weight", (inter_mlp, h), dense, "Linear"),
            Tensor(mlp + "up_proj.weight", (inter_mlp, h), dense, "Linear"),
            Tensor(mlp + "down_proj.weight", (h, inter_mlp), dense, "Linear"),
        ]
    out.append(Tensor("model.norm.weight", (h,), 1, None))
    if fields.get("tie_word_embeddings") is not True:
        out.append(Tensor("lm_head.weight", (vocab, h), 1, "Linear"))
    return tuple(out)


# Llama4TextConfig's class defaults (transformers 5.25 configuration_llama4.py) for the fields the hand-modelled
# builder reads: a llama4 wrapper's text_config may leave any of them out
LLAMA4_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 202_048, "hidden_size": 5120, "intermediate_size": 8192, "intermediate_size_mlp": 16_384,
    "num_hidden_layers": 48, "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128,
    "hidden_act": "silu", "max_position_embeddings": 131_072, "tie_word_embeddings": False,
    "num_experts_per_tok": 1, "num_local_experts": 16, "interleave_moe_layer_step": 1, "use_qk_norm": True,
    "no_rope_layer_interval": 4, "attention_chunk_size": 8192, "attn_temperature_tuning": True,
    "attention_bias": False,
}  # fmt: skip


def llama4_spec(cfg: Mapping[str, Any], name: str, nope: tuple[int, ...]) -> ModelSpec:
    """Llama4ForCausalLM's layout as a hand-modelled ModelSpec (`cfg`: LLAMA4_TEXT_DEFAULTS filled in): the
    tensors of `text_tensors` (fused experts), walked layer by layer (estimator/llama4_ops.py):

    - `dense_mlp_layers`: the layers outside `moe_layers`, a Llama4TextMLP of `intermediate_size_mlp`
      (`feed_forward.{gate,up,down}_proj`); the routed ones hold the router and the fused experts
      (`moe_params`) and the shared expert (`feed_forward.shared_expert.*`, `intermediate_size` wide);
    - `no_rope_layers`: the NoPE layers (`no_rope_layers[i] == 0`, by default every 4th), full attention with
      the temperature-tuned query and no qk-norm; the others rotate q / k, L2-norm them (`use_qk_norm`) and
      attend in `attention_chunk_size` chunks (`layer_types` "chunked_attention", Llama4TextConfig.__post_init__).
    The router is an nn.Linear subclass whose forward returns a tuple: bitsandbytes leaves it in the load
    dtype and it is no LoRA target here (PEFT 0.21.2 wraps it under all-linear and fails in its forward).
    `nope`: the NoPE layer indices (families.no_rope_layers: SmolLM3's rule is Llama4TextConfig's)."""
    from vramplan.spec.family_common import common_fields, required
    from vramplan.spec.fields import config_bool, config_int
    from vramplan.spec.model import LinearSpec, ModelSpec, ParamSpec

    h, heads = required(cfg, "hidden_size", name), required(cfg, "num_attention_heads", name)
    common = common_fields(cfg, name, h, heads)
    layers = required(cfg, "num_hidden_layers", name)
    inter, inter_mlp = required(cfg, "intermediate_size", name), required(cfg, "intermediate_size_mlp", name)
    experts, top_k = required(cfg, "num_local_experts", name), config_int(cfg, "num_experts_per_tok", name)
    q, kv = heads * common["head_dim"], common["num_key_value_heads"] * common["head_dim"]
    bias = config_bool(cfg, "attention_bias", name, False)
    routed = moe_layers(cfg, cfg, layers, name)
    dense = tuple(i for i in range(layers) if i not in routed)
    linears = [
        LinearSpec("q_proj", h, q, bias, "attn"), LinearSpec("k_proj", h, kv, bias, "attn"),
        LinearSpec("v_proj", h, kv, bias, "attn"), LinearSpec("o_proj", q, h, bias, "attn"),
    ]  # fmt: skip
    only_dense, only_moe = ("dense" if routed else ""), ("moe" if dense else "")
    if dense:
        linears += [
            LinearSpec(f"feed_forward.{n}", i, o, False, "mlp", f"feed_forward.{n}", only=only_dense)
            for n, i, o in (("gate_proj", h, inter_mlp), ("up_proj", h, inter_mlp), ("down_proj", inter_mlp, h))
        ]
    if routed:
        linears += [
            LinearSpec(f"shared_expert.{n}", i, o, False, "mlp", f"feed_forward.shared_expert.{n}", only=only_moe)
            for n, i, o in (("gate_proj", h, inter), ("up_proj", h, inter), ("down_proj", inter, h))
        ]
    moe = (
        (
            ParamSpec("router.weight", (experts, h), ()),
            ParamSpec("gate_up_proj", (experts, h, 2 * inter), ()),
            ParamSpec("down_proj", (experts, inter, h), ()),
        )
        if routed
        else ()
    )
    chunk = cfg.get("attention_chunk_size")
    if chunk is not None:
        chunk = config_int(cfg, "attention_chunk_size", name)
    return ModelSpec(
        **common,
        model_type="llama4_text",
        intermediate_size=inter if routed else inter_mlp,
        num_hidden_layers=layers,
        tie_word_embeddings=config_bool(cfg, "tie_word_embeddings", name, False),
        linears=tuple(linears),
        norm="rms",
        norms_per_layer=2,
        moe_params=moe,
        mlp="moe" if routed else "gated",
        num_local_experts=experts if routed else 0,
        num_experts_per_tok=top_k if routed else 0,
        layer_types=tuple(
            "chunked_attention" if i not in nope and chunk is not None else "full_attention" for i in range(layers)
        ),
        sliding_window=chunk,  # the chunked layers' cache window (DynamicCache: chunk-size sliding layers)
        no_rope_layers=nope,
        dense_mlp_layers=dense if routed else (),
        dense_intermediate_size=inter_mlp if routed and dense else 0,
        shared_intermediate_size=inter if routed else 0,
    )
