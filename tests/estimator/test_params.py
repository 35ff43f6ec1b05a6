"""Parameter counts are exact: ModelSpec vs transformers 5.24 built on meta, LoRA/DoRA vs PEFT 0.21.2.

Oracles: `AutoModelForCausalLM.from_config` on the meta device (every built-in profile and TINY_CONFIGS),
split by module kind; `get_peft_model(...).get_nb_trainable_parameters()` on the tiny CPU models.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from tests.conftest import TINY_CONFIGS
from vramplan.errors import VramplanError
from vramplan.estimator.params import count_params, lora_targets, model_tensor_shapes, numel, trainable_shapes
from vramplan.sources.profiles import builtin_model_names, load_model_config
from vramplan.spec import remote_code
from vramplan.spec import (
    HAND_MODELLED_TYPES,
    ModelSpec,
    TrainSpec,
    lora_moe_targets,
    model_spec_from_config,
    resolve_lora_target,
    resolve_train,
)
from vramplan.spec.architectures import known_types

# PEFT warns that the gate_up_proj rank/alpha pattern matched no *module*; it does apply to the parameter
# (the counts below check the doubled rank).
pytestmark = pytest.mark.filterwarnings("ignore:The following (rank|alpha)_pattern keys:RuntimeWarning")

KINDS = ("embed", "attn", "mlp", "ssm", "norm", "lm_head")
LORA_R, LORA_ALPHA = 8, 16
PRESETS = ("all-linear", "attn", "qv", "custom")


def _builtin_config(name: str) -> dict[str, Any]:
    _, cfg = load_model_config(name)
    return {k: v for k, v in cfg.items() if k != "vramplan_profile"}


def _build(cfg: dict[str, Any], device: str = "meta") -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))


def _kind(path: str, module: Any) -> str:
    """Module kind of a parameter's owner, in ModelSpec's split (bloom's embedding LayerNorm is `embed`)."""
    parts = path.split(".")
    if parts[-1] == "lm_head":
        return "lm_head"
    if parts[-1] == "embed_tokens_per_layer":  # Gemma 4's per-layer embeddings: with the spec's mixer tensors
        return "attn"
    if parts[-1] == "altup":  # Gemma 3n's AltUp correct_output_scale (its own parameter): a mixer tensor too
        return "attn"
    if {"altup", "laurel", "altup_projections", "altup_unembed_projections"} & set(parts):  # Gemma 3n's linears
        return "norm" if "norm" in type(module).__name__.lower() else "mlp"
    if any("embed" in p for p in parts) or parts[-1] in ("wte", "wpe"):  # GPT-BigCode's token / position tables
        return "embed"
    if "mamba" in parts:  # Falcon-H1's mixer: in_proj, out_proj, conv1d, dt_bias, A_log, D, its gated norm
        return "ssm"
    if "norm" in type(module).__name__.lower():  # RMSNorm, LayerNorm, also qwen3 q_norm and phi q_layernorm
        return "norm"
    if {"router", "experts"} & set(parts) or parts[-1].startswith("per_layer_"):  # Gemma 4's MoE block and PLE
        return "mlp"
    if "mlp" in parts or "feed_forward" in parts:  # incl. Mixtral's router and experts; Falcon-H1's MLP
        return "mlp"
    if {"self_attn", "attention", "self_attention", "linear_attn", "attn"} & set(parts):  # attn: GPT-BigCode  # linear_attn: Qwen3.5's DeltaNet
        return "attn"
    raise AssertionError(f"unclassified parameter owner {path} ({type(module).__name__})")


def _hf_counts(model: Any) -> dict[str, int]:
    """Parameters by kind, each tensor once (a tied lm_head is the embedding and counts under `embed`)."""
    counts = dict.fromkeys(KINDS, 0)
    seen: set[int] = set()
    for path, module in model.named_modules():
        for p in module.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                counts[_kind(path, module)] += p.numel()
    return counts


def _our_counts(m: ModelSpec) -> dict[str, int]:
    layers = m.num_hidden_layers
    if m.mixer_tensors:  # a hybrid (Qwen3.5): linears by their instances; the mixers' own tensors (conv1d, gates,
        # head norms) count with the mixer (`_assert_counts_match`)
        mixers = sum(numel(shape) * n for shape, n in m.mixer_tensors)
        return {
            "embed": m.embed_params,
            "attn": sum(lin.params * m.instances(lin) for lin in m.linears if lin.group == "attn") + mixers,
            # with a Qwen3.5-MoE's routers and fused experts (`moe_params`, in every layer)
            "mlp": sum(lin.params * m.instances(lin) for lin in m.linears if lin.group == "mlp")
            + m.moe_layers * m.other_layer_params,
            "ssm": 0,
            "norm": layers * m.norm_params_per_layer + m.final_norm_params,
            "lm_head": m.lm_head_params,
        }
    return {
        "embed": m.embed_params,
        "attn": layers * m.attn_params_per_layer,
        "mlp": sum(lin.params * m.instances(lin) for lin in m.linears if lin.group == "mlp")
        + m.moe_layers * m.other_layer_params
        - layers * m.attention_sink_params,
        "ssm": layers * m.ssm_params_per_layer,
        "norm": layers * m.norm_params_per_layer + m.final_norm_params,
        "lm_head": m.lm_head_params,
    }


def _layer_linears(model: Any) -> set[tuple[str, int, int, bool]]:
    """(name, in, out, bias) of the `nn.Linear`s in decoder layer 0: what LoRA and bitsandbytes see."""
    import torch

    decoder = model.get_decoder()
    if not hasattr(decoder, "layers") and hasattr(decoder, "model"):  # Llama4ForCausalLM's get_decoder is itself
        decoder = decoder.model
    layers = decoder.layers if hasattr(decoder, "layers") else decoder.h  # bloom: transformer.h
    kinds = getattr(model.config.get_text_config(), "layer_types", None) or [None]
    # layer 0, and for a hybrid (Qwen3.5) the first layer of each kind
    hybrid = "linear_attention" in kinds
    chosen = [layers[kinds.index(kind)] for kind in dict.fromkeys(kinds)] if hybrid else [layers[0]]
    if model.config.get_text_config().model_type in ("gemma4_text", "gemma3n_text"):  # shapes by layer: all
        chosen = list(layers)
    return {
        (path.rsplit(".", 1)[-1], mod.in_features, mod.out_features, mod.bias is not None)
        for layer in chosen
        for path, mod in layer.named_modules()
        # Llama 4's router subclasses nn.Linear and returns a tuple: a parameter here (ModelSpec.moe_params)
        if isinstance(mod, torch.nn.Linear) and type(mod).__name__ != "Llama4Router"
    }


def _assert_counts_match(cfg: dict[str, Any], name: str) -> None:
    m = model_spec_from_config(cfg, name)
    model = _build(cfg)
    hf = _hf_counts(model)
    if m.mixer_tensors:  # the mixers' head norms (q_norm / k_norm, the DeltaNet's gated norm) count with the mixer
        hf["attn"] += hf["norm"] - m.num_hidden_layers * m.norm_params_per_layer - m.final_norm_params
        hf["norm"] = m.num_hidden_layers * m.norm_params_per_layer + m.final_norm_params
    assert _our_counts(m) == hf
    assert m.total_params == sum(p.numel() for p in model.parameters())
    layer0 = m.layer_linears(dense=0 in m.dense_mlp_layers)  # layer 0's (dense when the model has dense layers)
    ours_linears = {
        (lin.name.rsplit(".", 1)[-1], lin.in_features, lin.out_features, lin.bias)
        for lin in layer0
        # Gemma 4's PLE projection sits in the model, not a layer; so do Gemma 3n's AltUp projections
        if lin.path != "per_layer_model_projection" and not lin.path.startswith("altup_")
    }
    assert ours_linears == _layer_linears(model)
    ours = Counter({shape: 0 for shape, _ in model_tensor_shapes(m)})
    for shape, n in model_tensor_shapes(m):
        ours[shape] += n
    assert +ours == Counter(tuple(p.shape) for p in model.parameters())


def _text_model_type(cfg: dict[str, Any]) -> str:
    return str((cfg.get("text_config") or cfg).get("model_type", cfg.get("model_type")))


ESTIMATED = [n for n in builtin_model_names() if _text_model_type(_builtin_config(n)) in HAND_MODELLED_TYPES]
# Profiles of a model type the generic path counts (spec/generic.py: gemma3, qwen3_moe, gpt_oss...)
PENDING = [
    n
    for n in builtin_model_names()
    if n not in ESTIMATED
    and (_text_model_type(_builtin_config(n)) in known_types() or _builtin_config(n)["model_type"] in known_types())
]
# Profiles kept as config data for a model type vramplan cannot estimate yet (qwen3_5, gemma4, nemotron_h...)
# (a remote-code type's profiles, qwen-7b and mimo-7b-rl, are held by tests/spec/test_remote_code.py)
CONFIG_ONLY = [
    n
    for n in builtin_model_names()
    if n not in ESTIMATED and n not in PENDING and remote_code.layout(_text_model_type(_builtin_config(n))) is None
]
# Model types whose generic count differs from transformers' today: an xfail that must start passing (strict)
# once spec/generic.py counts them, so the marker cannot outlive the bug.
GENERIC_MISCOUNTS = {
    "deepseek_v2": "the generic path counts 16.25 of DeepSeek-V2-Lite's 15.75 B parameters",
    "jamba": "the generic path counts 51.76 of Jamba v0.1's 51.57 B parameters",
    "deepseek_v4": "the generic path counts 284.40 of DeepSeek-V4-Flash's 284.33 B parameters",
    "glm_moe_dsa": "the generic path counts 745.28 of GLM-5.2's 743.38 B parameters",
    "dbrx": "transformers 5.25's DbrxFFNConfig refuses the hub's int moe_normalize_expert_weights 1 (float or None)",
    "llama-3.2-11b-vision": "the generic path counts 8.349 of MllamaForCausalLM's 9.775 B parameters",
}


def _pending_param(name: str) -> Any:
    why = GENERIC_MISCOUNTS.get(name) or GENERIC_MISCOUNTS.get(_text_model_type(_builtin_config(name)))
    return pytest.param(name, marks=pytest.mark.xfail(reason=why, strict=True)) if why else name


@pytest.mark.parametrize("name", ESTIMATED)
def test_builtin_model_counts_match_transformers(name: str) -> None:
    """A vision-language wrapper (mistral3 around a mistral text model): the whole model counted exactly
    (spec/vision.py: the vision tower and projector too), its text model by the hand-modelled family."""
    cfg = _builtin_config(name)
    if "text_config" in cfg:
        import torch
        import transformers
        from transformers import AutoConfig

        from vramplan.measure.architectures import auto_class

        hf = AutoConfig.for_model(**cfg)
        spec = model_spec_from_config(cfg, name)
        with torch.device("meta"):
            whole = getattr(transformers, auto_class(cfg["model_type"])).from_config(hf)
        assert spec.total_params == sum(p.numel() for p in whole.parameters())
        text = hf.get_text_config()
        tied = {**text.to_dict(), "tie_word_embeddings": spec.tie_word_embeddings}  # the wrapper's flag ties it
        assert spec.total_params - spec.tower_params == model_spec_from_config(tied, name).total_params
        cfg = text.to_dict()
    _assert_counts_match(cfg, name)


@pytest.mark.parametrize("name", [_pending_param(n) for n in PENDING])
def test_generic_profile_is_a_valid_config_with_exact_counts(name: str) -> None:
    """transformers' config class takes the profile as it is; the generic path (spec/generic.py) counts it
    exactly: `from_config` on the meta device of the whole model (a VLM with its vision tower, spec/vision.py)."""
    import torch
    import transformers
    from transformers import AutoConfig

    from vramplan.measure.architectures import auto_class

    cfg = _builtin_config(name)
    hf = AutoConfig.for_model(**cfg)
    text = hf.get_text_config()
    assert (text.model_type, text.num_hidden_layers, text.hidden_size) == (
        _text_model_type(cfg), (cfg.get("text_config") or cfg).get("num_hidden_layers", text.num_hidden_layers),
        (cfg.get("text_config") or cfg).get("hidden_size", text.hidden_size),
    )  # fmt: skip
    spec = model_spec_from_config(cfg, name)
    assert spec.approximation is not None
    with torch.device("meta"):
        model = getattr(transformers, auto_class(cfg["model_type"])).from_config(hf)
    assert spec.total_params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", CONFIG_ONLY)
def test_config_only_profile_is_a_config_transformers_builds(name: str) -> None:
    """A profile vramplan cannot estimate yet is still transformers' own config: its config class takes every
    key, the text model builds from it on the meta device, and vramplan refuses it in one line."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    cfg = _builtin_config(name)
    text = AutoConfig.for_model(**cfg).get_text_config()
    declared = cfg.get("text_config") or cfg
    assert text.model_type == _text_model_type(cfg)
    for key in ("num_hidden_layers", "hidden_size", "vocab_size"):
        if key in declared:
            assert getattr(text, key) == declared[key], key
    # a VLM's text config with no causal-LM class of its own (qwen3_vl_text) builds as the bare text model
    auto = AutoModelForCausalLM if type(text) in AutoModelForCausalLM._model_mapping else AutoModel
    with torch.device("meta"):
        model = auto.from_config(text)
    assert sum(p.numel() for p in model.parameters()) > 0
    with pytest.raises(VramplanError, match="unknown model_type"):
        model_spec_from_config(cfg, name)


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_tiny_model_counts_match_transformers(family: str) -> None:
    _assert_counts_match(dict(TINY_CONFIGS[family]), f"tiny-{family}")


def _without(cfg: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k not in keys}


# Config keys left to the family's defaults, and bias / norm switches the built-in profiles leave off.
VARIANTS: dict[str, dict[str, Any]] = {
    **{f"{f}-default-tie": _without(c, "tie_word_embeddings") for f, c in TINY_CONFIGS.items()},
    # (MinistralAttention reads `getattr(config, "head_dim", ...)`, None without one: transformers 5.25 cannot build it)
    **{f"{f}-default-head-dim": _without(c, "head_dim") for f, c in TINY_CONFIGS.items()
       if "head_dim" in c and f != "ministral"},
    "llama-biases": {**TINY_CONFIGS["llama"], "attention_bias": True, "mlp_bias": True},
    "qwen3-attention-bias": {**TINY_CONFIGS["qwen3"], "attention_bias": True},
    "gemma-attention-bias": {**TINY_CONFIGS["gemma"], "attention_bias": True},
    "gpt_neox-no-attention-bias": {**TINY_CONFIGS["gpt_neox"], "attention_bias": False},
    "gpt_neox-tied": {**TINY_CONFIGS["gpt_neox"], "tie_word_embeddings": True},
    "bloom-untied": {**TINY_CONFIGS["bloom"], "tie_word_embeddings": False},
    "phi-qk-layernorm": {**TINY_CONFIGS["phi"], "qk_layernorm": True},
    "llama-tied": {**TINY_CONFIGS["llama"], "tie_word_embeddings": True},
    "mixtral-8-experts-top-1": {**TINY_CONFIGS["mixtral"], "num_local_experts": 8, "num_experts_per_tok": 1},
    # Gemma 4's switches (configuration_gemma4.py, 5.25): the 26B-A4B MoE block, KV-shared top layers with a
    # double-wide MLP, no k = v, per-layer embeddings (E2B / E4B), a saved config's per_layer_config
    "gemma4-moe": {**TINY_CONFIGS["gemma4_text"], "enable_moe_block": True, "num_experts": 4, "top_k_experts": 2,
                   "moe_intermediate_size": 32},
    "gemma4-kv-shared-double-wide": {**TINY_CONFIGS["gemma4_text"], "num_hidden_layers": 5, "num_kv_shared_layers": 2,
                                     "use_double_wide_mlp": True, "layer_types": ["sliding_attention", "full_attention",
                                     "sliding_attention", "sliding_attention", "full_attention"]},
    "gemma4-no-k-eq-v": {**TINY_CONFIGS["gemma4_text"], "attention_k_eq_v": False},
    "gemma4-per-layer-embeddings": {**TINY_CONFIGS["gemma4_text"], "hidden_size_per_layer_input": 8,
                                    "vocab_size_per_layer_input": 128},
    "gemma4-per-layer-config": {
        **_without(TINY_CONFIGS["gemma4_text"], "global_head_dim", "num_global_key_value_heads"),
        "per_layer_config": {"02": {"head_dim": 24, "num_key_value_heads": 1}},
    },
    "internlm3-biases": {**TINY_CONFIGS["internlm3"], "qkv_bias": True, "bias": True},
    "granite-biases": {**TINY_CONFIGS["granite"], "attention_bias": True, "mlp_bias": True},
    "smollm3-nope-list": {**TINY_CONFIGS["smollm3"], "no_rope_layers": [0, 1], "mlp_bias": True},
    "ministral-default-window": _without(TINY_CONFIGS["ministral"], "sliding_window", "layer_types"),
    # Falcon's attention kinds (FalconConfig, 5.25): the new decoder (falcon-40b: K/V groups, ln_attn + ln_mlp;
    # Falcon2-11B: one norm), Falcon-RW (every head its own K/V, ALiBi, sequential, biases); a config.json that
    # sets `num_kv_heads` beside multi_query (falcon-7b's: 71, one K/V head used)
    "falcon-new-decoder": {**TINY_CONFIGS["falcon"], "new_decoder_architecture": True, "num_kv_heads": 2},
    "falcon-new-decoder-one-ln": {**TINY_CONFIGS["falcon"], "new_decoder_architecture": True, "num_kv_heads": 2,
                                  "num_ln_in_parallel_attn": 1},
    "falcon-rw": {**TINY_CONFIGS["falcon"], "multi_query": False, "parallel_attn": False, "alibi": True,
                  "bias": True},
    "falcon-kv-heads-field": {**TINY_CONFIGS["falcon"], "num_kv_heads": 4, "bias": True},
    "falcon-defaults": {"model_type": "falcon", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
                        "vocab_size": 256},
    "gpt_bigcode-mha": {**TINY_CONFIGS["gpt_bigcode"], "multi_query": False},
    "gpt_bigcode-defaults": {"model_type": "gpt_bigcode", "n_embd": 64, "n_head": 4, "n_layer": 2, "vocab_size": 256},
    # Gemma 3n's switches (configuration_gemma3n.py, 5.25): per-layer MLP widths (MatFormer), no KV sharing, a
    # 12-layer model of the class's layer_types and sparsity defaults (every 5th layer full, the first 10
    # sparse), an AltUp stack of 2, attention biases, the default vocab_size_per_layer_input
    "gemma3n-per-layer-widths": {**TINY_CONFIGS["gemma3n_text"], "intermediate_size": [128, 96, 96, 64, 64]},
    "gemma3n-no-kv-sharing": {**TINY_CONFIGS["gemma3n_text"], "num_kv_shared_layers": 0},
    "gemma3n-class-defaults": {
        **_without(TINY_CONFIGS["gemma3n_text"], "layer_types", "activation_sparsity_pattern"),
        "num_hidden_layers": 12, "num_kv_shared_layers": 5,
    },
    "gemma3n-altup-2-biases": {**TINY_CONFIGS["gemma3n_text"], "altup_num_inputs": 2, "attention_bias": True},
}  # fmt: skip


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_config_variant_counts_match_transformers(variant: str) -> None:
    _assert_counts_match(dict(VARIANTS[variant]), variant)


# ---------------------------------------------------------------- LoRA / DoRA adapters vs PEFT


def _lora_target(m: ModelSpec, preset: str) -> str:
    """The preset, or for `custom` a comma list of the first and the last Linear of the layer."""
    if preset != "custom":
        return preset
    return ",".join(dict.fromkeys((m.linears[0].name, m.linears[-1].name)))


def _peft_adapted(peft_model: Any) -> set[str]:
    """What PEFT put an adapter on: Linear leaf names, and `target_parameters` names for lora.ParamWrapper."""
    from peft.tuners.lora import LoraLayer, ParamWrapper

    out = set()
    for path, module in peft_model.named_modules():
        leaf = path.rsplit(".", 1)[-1]
        if leaf.isdigit():  # a ModuleList's Linear (Gemma 3n's `altup_projections.0`): named with its list
            leaf = ".".join(path.split(".")[-2:])
        if isinstance(module, ParamWrapper):  # the router weight `gate.weight`, experts' `gate_up_proj`, ...
            out.add(f"{leaf}.weight" if module.parameter_name == "weight" else module.parameter_name)
        elif isinstance(module, LoraLayer):
            out.add(leaf)
    return out


def _our_adapted(m: ModelSpec, t: TrainSpec) -> set[str]:
    # leaf names, as PEFT's modules show them (GPT-BigCode's linears are named by their paths: attn.c_proj;
    # Llama 4's `feed_forward.gate_proj`, `shared_expert.gate_proj`)
    leaves = (lin.name.split(".") for lin in lora_targets(m, t))  # a ModuleList's item keeps its list's name
    linears = {".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1] for parts in leaves}
    return linears | {p.name for p in lora_moe_targets(m, t.lora_target)}


def _assert_matches_peft(m: ModelSpec, t: TrainSpec, peft_model: Any) -> None:
    trainable, total = peft_model.get_nb_trainable_parameters()
    ours = count_params(m, t)
    assert (ours.trainable, ours.total) == (trainable, total)
    assert _our_adapted(m, t) == _peft_adapted(peft_model)
    want: Counter[tuple[int, ...]] = Counter()
    for shape, n in trainable_shapes(m, t):
        want[shape] += n
    assert want == Counter(tuple(p.shape) for p in peft_model.parameters() if p.requires_grad)


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_lora_counts_match_peft(family: str, preset: str, dora: bool) -> None:
    from peft import LoraConfig, get_peft_model

    m = model_spec_from_config(TINY_CONFIGS[family], f"tiny-{family}")
    target = _lora_target(m, preset)
    model = _build(TINY_CONFIGS[family])
    if dora and lora_moe_targets(m, resolve_lora_target(m, target)[0]):
        # Mixtral's router/experts go through lora.ParamWrapper, which rejects DoRA; so do we (Qwen3-MoE's
        # all-linear reaches only the attention: PEFT maps no expert names for it).
        with pytest.raises(VramplanError, match="DoRA"):
            resolve_train(m, method="lora", lora_target=target, dora=True)
        targets = list(resolve_lora_target(m, target)[0])
        with pytest.raises(ValueError, match="use_dora"):
            get_peft_model(model, LoraConfig(r=LORA_R, target_modules=targets, use_dora=True))
        return
    t = resolve_train(m, method="lora", lora_rank=LORA_R, lora_alpha=LORA_ALPHA, lora_target=target, dora=dora)
    config = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, target_modules=list(t.lora_target), use_dora=dora)
    _assert_matches_peft(m, t, get_peft_model(model, config))


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_all_linear_matches_peft(family: str) -> None:
    from peft import LoraConfig, get_peft_model

    m = model_spec_from_config(TINY_CONFIGS[family], f"tiny-{family}")
    t = resolve_train(m, method="lora", lora_rank=LORA_R, lora_target="all-linear")
    config = LoraConfig(r=LORA_R, target_modules="all-linear")
    if family == "falcon_h1":
        # PEFT 0.21 refuses out_proj of a Mamba mixer, so its all-linear fails; asked for explicitly, so do we;
        # by default we take all-linear without out_proj (a note says so), which PEFT adapts as a list
        with pytest.raises(ValueError, match="out_proj' is incompatible"):
            get_peft_model(_build(TINY_CONFIGS[family]), config)
        with pytest.raises(VramplanError, match="drop it from --lora-target"):
            resolve_train(m, method="lora", lora_target="all-linear", explicit=("lora_target",))
        assert "out_proj" not in t.lora_target
        assert any("out_proj" in note for note in t.notes)
        config = LoraConfig(r=LORA_R, target_modules=list(t.lora_target))
    if family == "llama4_text":
        # PEFT's all-linear wraps Llama4Router too (its forward then fails): we take the other linears, with a note
        assert any("Llama 4's router" in note for note in t.notes)
        config = LoraConfig(r=LORA_R, target_modules=list(t.lora_target))
    _assert_matches_peft(m, t, get_peft_model(_build(TINY_CONFIGS[family]), config))


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_qv_matches_peft_default_targets(family: str) -> None:
    from peft import LoraConfig, get_peft_model
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS
    from peft.utils.error import NoMatchingPeftModuleError

    m = model_spec_from_config(TINY_CONFIGS[family], f"tiny-{family}")
    t = resolve_train(m, method="lora", lora_rank=LORA_R, lora_target="qv")
    model = _build(TINY_CONFIGS[family])
    if family not in PEFT_DEFAULTS:
        # phi3, qwen3_moe, falcon_h1, gpt_oss, glm4_moe, qwen3_5_text, qwen3_5_moe_text: PEFT 0.21.2 has no
        # default and asks for target_modules; vramplan's `qv` is phi3's fused qkv_proj, the MLA families' q / kv
        # up-projections, the others' q_proj + v_proj (as qwen3's default).
        mla = {"deepseek_v3": ("q_b_proj", "kv_b_proj"), "glm4_moe_lite": ("q_b_proj", "kv_b_proj")}
        assert t.lora_target == {"phi3": ("qkv_proj",), **mla}.get(family, ("q_proj", "v_proj"))
        with pytest.raises(ValueError, match="target_modules"):
            get_peft_model(model, LoraConfig())
        return
    try:
        peft_model = get_peft_model(model, LoraConfig(r=LORA_R))
    except NoMatchingPeftModuleError:
        # Mixtral: PEFT 0.21.2's v4->v5 MoE config conversion (convert_peft_config_for_transformers) turns
        # target_modules=None into an empty set before the default mapping is looked up, so LoraConfig()
        # adapts nothing. Our `qv` is the mapping's entry.
        assert family == "mixtral"
        assert t.lora_target == tuple(PEFT_DEFAULTS[family])
        return
    _assert_matches_peft(m, t, peft_model)


def test_mixtral_fused_experts_and_dropout_follow_peft() -> None:
    """PEFT rejects w1 without w3 (fused into gate_up_proj) and lora_dropout != 0 on the experts."""
    from peft import LoraConfig, get_peft_model

    m = model_spec_from_config(TINY_CONFIGS["mixtral"], "tiny-mixtral")
    with pytest.raises(VramplanError, match="w3"):
        resolve_train(m, method="lora", lora_target="q_proj,w1")
    with pytest.raises(ValueError, match="w3"):
        get_peft_model(_build(TINY_CONFIGS["mixtral"]), LoraConfig(target_modules=["q_proj", "w1"]))
    t = resolve_train(m, method="lora", lora_target="all-linear", lora_dropout=0.05)
    assert any("lora_dropout" in note for note in t.notes)
    config = LoraConfig(target_modules=list(t.lora_target), lora_dropout=0.05)
    with pytest.raises(ValueError, match="lora_dropout"):
        get_peft_model(_build(TINY_CONFIGS["mixtral"]), config)
    attn_only = resolve_train(m, method="lora", lora_target="attn", lora_dropout=0.05, seq=256)
    assert not attn_only.notes  # seq 256 = the tiny config's context: no length warning either


@pytest.mark.parametrize("targets", ["experts.gate_up_proj", "experts.gate_up_proj,experts.down_proj"])
def test_gemma4_expert_target_parameters_match_peft(targets: str) -> None:
    """Gemma 4's experts sit beside its MLP (`layers.N.experts.*`): PEFT's `target_parameters` adapters on them
    counted as PEFT 0.21.2 builds them (LoRA on the attention too)."""
    from peft import LoraConfig, get_peft_model

    cfg = dict(VARIANTS["gemma4-moe"])
    m = model_spec_from_config(cfg, "gemma4-moe")
    t = resolve_train(
        m, method="lora", lora_rank=LORA_R, lora_target="attn", lora_dropout=0.0, target_parameters=targets
    )
    config = LoraConfig(r=LORA_R, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        target_parameters=targets.split(","))  # fmt: skip
    peft_model = get_peft_model(_build(cfg, "cpu"), config)
    assert count_params(m, t).trainable == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
