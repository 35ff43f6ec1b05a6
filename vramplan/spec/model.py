"""The inputs: a model's shapes (ModelSpec, read from a Hugging Face config.json) and a training step (TrainSpec).

The module layout each family gets mirrors what transformers 5.24 builds (modeling_<family>.py), so parameter
counts are exact and LoRA / bitsandbytes targeting sees the same `nn.Linear` names as PEFT and transformers do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from vramplan.errors import VramplanError
from vramplan.spec.fields import config_bool, config_int, config_names, config_str

Method = Literal["full", "lora", "qlora", "freeze"]
Dtype = Literal["bf16", "fp16", "fp32"]
MixedPrecision = Literal["bf16", "fp16", "no"]
Quant = Literal["none", "nf4", "fp4", "int8"]
Attn = Literal["eager", "sdpa", "flash_attention_2"]

DTYPE_BYTES: dict[str, int] = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}
METHODS: tuple[str, ...] = ("full", "lora", "qlora", "freeze")
DTYPES: tuple[str, ...] = ("bf16", "fp16", "fp32")
MIXED: tuple[str, ...] = ("bf16", "fp16", "no")
QUANTS: tuple[str, ...] = ("none", "nf4", "fp4", "int8")
ATTNS: tuple[str, ...] = ("eager", "sdpa", "flash_attention_2")

# Families whose decoder layer is Llama-shaped (separate q/k/v/o, gated MLP, RMSNorm).
LLAMA_LIKE = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "mixtral", "phi3"})
SUPPORTED_MODEL_TYPES = frozenset(LLAMA_LIKE | {"gpt_neox", "bloom", "phi"})
# `head_dim` when config.json has none: a fixed class default here (transformers 5.24 Qwen3Config 128,
# GemmaConfig / Gemma2Config 256), hidden_size // num_attention_heads for every other family.
HEAD_DIM_DEFAULTS: dict[str, int] = {"qwen3": 128, "gemma": 256, "gemma2": 256}


@dataclass(frozen=True, slots=True)
class LinearSpec:
    """One `nn.Linear` of a decoder layer, under its transformers attribute name."""

    name: str
    in_features: int
    out_features: int
    bias: bool
    group: Literal["attn", "mlp"]
    path: str = ""  # the module's path inside the decoder layer (`self_attn.q_proj`), for LoRA target matching
    count: int = 0  # instances in the whole model; 0: one per decoder layer (the hand-modelled families)

    @property
    def weight_params(self) -> int:
        return self.in_features * self.out_features

    @property
    def params(self) -> int:
        return self.weight_params + (self.out_features if self.bias else 0)


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """A per-layer weight that is a plain `nn.Parameter`, not an `nn.Linear` (Mixtral's router and experts).

    `shape` as transformers registers it: (out, in), or (experts, out, in) for stacked experts. PEFT adapts it
    through `target_parameters` (lora.ParamWrapper) when its transformers-4 Linear names `peft_names` are in
    `target_modules` (peft/utils/transformers_weight_conversion.py `_MOE_TARGET_MODULE_MAPPING`, peft 0.21.2);
    a fused weight (gate_up_proj = w1 + w3) gets rank r · len(peft_names) (PEFT's `rank_pattern`).
    """

    name: str
    shape: tuple[int, ...]
    peft_names: tuple[str, ...]

    @property
    def experts(self) -> int:
        return self.shape[0] if len(self.shape) == 3 else 1

    @property
    def in_features(self) -> int:
        return self.shape[-1]

    @property
    def out_features(self) -> int:
        return self.shape[-2]

    @property
    def params(self) -> int:
        return self.experts * self.out_features * self.in_features


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Shapes of a causal LM, everything the estimator needs and nothing more.

    `linears` are the per-layer `nn.Linear` modules; `norm_params` the per-layer norm parameters;
    `moe_params` the per-layer weights that are not in a Linear or norm (Mixtral's router weight and
    3-D expert tensors, which transformers 5 stores as plain `nn.Parameter`s), summed in `other_layer_params`.
    """

    name: str
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int
    linears: tuple[LinearSpec, ...]
    norm: Literal["rms", "layer"]
    norms_per_layer: int
    head_norm_params: int = 0  # per layer: qwen3's q_norm/k_norm over head_dim
    moe_params: tuple[ParamSpec, ...] = ()
    embed_norm: bool = False  # bloom's word_embeddings_layernorm
    lm_head_bias: bool = False  # phi
    mlp: Literal["gated", "gated_fused", "plain", "moe"] = "gated"
    parallel_residual: bool = False  # gpt_neox, phi: attention and MLP read the same normed input
    num_local_experts: int = 0
    num_experts_per_tok: int = 0
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()
    attn_softcap: bool = False  # gemma2 attn_logit_softcapping: tanh on the scores (eager attention)
    final_softcap: bool = False  # gemma2 final_logit_softcapping: tanh on the logits
    hidden_act: str = "silu"  # ACT2FN name; "gelu_new" (phi) is a Python tanh-GELU that saves 3 more tensors
    config: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # ---- generic families (spec/generic.py): counted from the architecture table, walked as a stand-in ----
    other_tensors: tuple[tuple[tuple[int, ...], int], ...] = ()  # (shape, count) of every non-Linear tensor
    approximation: Approximation | None = None
    walk_basis: ModelSpec | None = None  # the hand-modelled layer the activations are walked on
    walk_roles: tuple[tuple[str, str], ...] = ()  # (linear name here, its name in walk_basis)
    module_prefix: str = ""  # generic: the decoder layers' module names (`model.layers.*.`)

    def instances(self, lin: LinearSpec) -> int:
        """How many times the model holds this linear (once per decoder layer unless counted otherwise)."""
        return lin.count or self.num_hidden_layers

    # ---- parameter counts by module kind (exact; tests compare them to transformers on meta) ----
    @property
    def norm_size(self) -> int:
        """Parameters of one norm over hidden_size (RMSNorm: weight; LayerNorm: weight + bias)."""
        return self.hidden_size * (2 if self.norm == "layer" else 1)

    @property
    def embed_params(self) -> int:
        """Generic families: every parameter outside the decoder-layer linears (embeddings, norms, ...)."""
        if self.approximation is not None:
            return sum(_numel(shape) * n for shape, n in self.other_tensors)
        return self.vocab_size * self.hidden_size + (self.norm_size if self.embed_norm else 0)

    @property
    def lm_head_params(self) -> int:
        """0 when tied to the embeddings (counted once, as `model.parameters()` does)."""
        if self.tie_word_embeddings or self.approximation is not None:
            return 0
        return self.vocab_size * self.hidden_size + (self.vocab_size if self.lm_head_bias else 0)

    @property
    def other_layer_params(self) -> int:
        return sum(p.params for p in self.moe_params)

    @property
    def attn_params_per_layer(self) -> int:
        return sum(lin.params for lin in self.linears if lin.group == "attn")

    @property
    def mlp_params_per_layer(self) -> int:
        return sum(lin.params for lin in self.linears if lin.group == "mlp") + self.other_layer_params

    @property
    def norm_params_per_layer(self) -> int:
        return self.norms_per_layer * self.norm_size + self.head_norm_params

    @property
    def layer_params(self) -> int:
        return self.attn_params_per_layer + self.mlp_params_per_layer + self.norm_params_per_layer

    @property
    def final_norm_params(self) -> int:
        return 0 if self.approximation is not None else self.norm_size

    @property
    def total_params(self) -> int:
        if self.approximation is not None:  # exact: every tensor the architecture table lists
            return sum(lin.params * self.instances(lin) for lin in self.linears) + self.embed_params
        return (
            self.embed_params
            + self.num_hidden_layers * self.layer_params
            + self.final_norm_params
            + self.lm_head_params
        )

    @property
    def linear_weight_params(self) -> int:
        """Weights of all decoder-layer `nn.Linear`s: what bitsandbytes quantizes (lm_head excluded)."""
        return sum(lin.weight_params * self.instances(lin) for lin in self.linears)

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim


@dataclass(frozen=True, slots=True)
class Approximation:
    """A family estimated through another one's activation walk: what stands in, and how far it can be off."""

    kind: str  # "generic"
    basis: str  # "llama-like walk"
    error_band: float  # relative: measured on the hand-modelled families run as if unknown (spec/generic.py)
    note: str = ""  # e.g. "text model only: the vision tower is not counted"


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _req(cfg: Mapping[str, Any], key: str, name: str) -> int:
    """A required shape field: an integer in its range (vramplan.spec.fields.SHAPE_LIMITS)."""
    return config_int(cfg, key, name)


def _text_config(cfg: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    inner = cfg.get("text_config")
    if inner is not None and not isinstance(inner, Mapping):
        raise VramplanError(f"model config {name!r}: text_config must be a JSON object, got {type(inner).__name__}")
    return {**inner, "model_type": inner.get("model_type", cfg.get("model_type"))} if inner else cfg


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
    """The ModelSpec of a hand-modelled family (SUPPORTED_MODEL_TYPES) from a Hugging Face `config.json`
    mapping (the keys transformers reads); every field it reads is type- and range-checked
    (vramplan.spec.fields). Any family: `vramplan.spec.config.model_spec_from_config`."""
    cfg = _text_config(cfg, name)
    mt = config_str(cfg, "model_type", name)
    if mt not in SUPPORTED_MODEL_TYPES:
        raise VramplanError(f"model config {name!r}: model_type {mt!r} is not hand-modelled")
    if mt in ("gpt_neox", "bloom"):
        return _check_shapes(_neox_like(cfg, name, mt))
    if mt == "phi":
        return _check_shapes(_phi(cfg, name))
    if mt in ("qwen2", "qwen3"):
        config_int(cfg, "max_window_layers", name, default=28, low=0)  # read by kvcache.layer_windows
    return _check_shapes(_llama_like(cfg, name, mt))


# transformers 5.24 config classes' default `hidden_act` where it is not SiLU
DEFAULT_ACT = {"phi": "gelu_new", "gpt_neox": "gelu", "bloom": "bloom_gelu", "gemma": "gelu_pytorch_tanh",
               "gemma2": "gelu_pytorch_tanh"}  # fmt: skip


def _common(cfg: Mapping[str, Any], name: str, h: int, heads: int) -> dict[str, Any]:
    kv = config_int(cfg, "num_key_value_heads", name, default=heads)
    head_dim = config_int(cfg, "head_dim", name, default=HEAD_DIM_DEFAULTS.get(cfg.get("model_type", ""), h // heads))
    return {
        "name": name,
        "hidden_size": h,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": head_dim,
        "vocab_size": _req(cfg, "vocab_size", name),
        "max_position_embeddings": config_int(
            cfg, "max_position_embeddings", name, default=config_int(cfg, "seq_length", name, default=2048)
        ),
        # Gemma2Config defaults: attn_logit_softcapping 50.0, final_logit_softcapping 30.0
        "attn_softcap": cfg.get("model_type") == "gemma2" and cfg.get("attn_logit_softcapping", 50.0) is not None,
        "final_softcap": cfg.get("model_type") == "gemma2" and cfg.get("final_logit_softcapping", 30.0) is not None,
        "hidden_act": config_str(
            cfg,
            "hidden_activation",
            name,
            config_str(cfg, "hidden_act", name, DEFAULT_ACT.get(cfg["model_type"], "silu")),
        ),
        "config": dict(cfg),
    }


def _llama_like(cfg: Mapping[str, Any], name: str, mt: str) -> ModelSpec:
    h = _req(cfg, "hidden_size", name)
    heads = _req(cfg, "num_attention_heads", name)
    c = _common(cfg, name, h, heads)
    inter = _req(cfg, "intermediate_size", name)
    layers = _req(cfg, "num_hidden_layers", name)
    q, kv = heads * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    qkv_bias = True if mt == "qwen2" else config_bool(cfg, "attention_bias", name, False)
    o_bias = False if mt == "qwen2" else config_bool(cfg, "attention_bias", name, False)
    mlp_bias = config_bool(cfg, "mlp_bias", name, False)
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
        experts = _req(cfg, "num_local_experts", name)
        top_k = config_int(cfg, "num_experts_per_tok", name, default=2)
        other = (
            ParamSpec("gate.weight", (experts, h), ("gate",)),
            ParamSpec("gate_up_proj", (experts, 2 * inter, h), ("w1", "w3")),
            ParamSpec("down_proj", (experts, h, inter), ("w2",)),
        )
        mlp: tuple[LinearSpec, ...] = ()
        mlp_kind = "moe"
    elif mt == "phi3":
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
    tie_default = mt in ("gemma", "gemma2")
    layer_types = config_names(cfg, "layer_types", name, layers) if cfg.get("layer_types") else ()
    return ModelSpec(
        model_type=mt,
        intermediate_size=inter,
        num_hidden_layers=layers,
        tie_word_embeddings=config_bool(cfg, "tie_word_embeddings", name, tie_default),
        linears=attn + mlp,
        norm="rms",
        norms_per_layer=4 if mt == "gemma2" else 2,
        head_norm_params=2 * c["head_dim"] if mt == "qwen3" else 0,
        moe_params=other,
        mlp=mlp_kind,
        num_local_experts=experts,
        num_experts_per_tok=top_k,
        sliding_window=(
            config_int(cfg, "sliding_window", name, default=None)
            if config_bool(cfg, "use_sliding_window", name, True)
            else None
        ),
        layer_types=layer_types,
        **c,
    )


def _neox_like(cfg: Mapping[str, Any], name: str, mt: str) -> ModelSpec:
    if mt == "bloom":
        h = config_int(cfg, "hidden_size", name, default=None) or _req(cfg, "n_embed", name)
        heads = config_int(cfg, "n_head", name, default=None) or _req(cfg, "num_attention_heads", name)
        layers = config_int(cfg, "n_layer", name, default=None) or _req(cfg, "num_hidden_layers", name)
        inter = 4 * h
        tie = config_bool(cfg, "tie_word_embeddings", name, True)
    else:
        h = _req(cfg, "hidden_size", name)
        heads = _req(cfg, "num_attention_heads", name)
        layers = _req(cfg, "num_hidden_layers", name)
        inter = _req(cfg, "intermediate_size", name)
        tie = config_bool(cfg, "tie_word_embeddings", name, False)
    c = _common({**cfg, "num_key_value_heads": None, "head_dim": None}, name, h, heads)
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


def _phi(cfg: Mapping[str, Any], name: str) -> ModelSpec:
    h = _req(cfg, "hidden_size", name)
    heads = _req(cfg, "num_attention_heads", name)
    c = _common(cfg, name, h, heads)
    inter = _req(cfg, "intermediate_size", name)
    q, kv = heads * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    qk_ln = config_bool(cfg, "qk_layernorm", name, False)
    return ModelSpec(
        model_type="phi",
        intermediate_size=inter,
        num_hidden_layers=_req(cfg, "num_hidden_layers", name),
        tie_word_embeddings=config_bool(cfg, "tie_word_embeddings", name, False),
        linears=(
            LinearSpec("q_proj", h, q, True, "attn"),
            LinearSpec("k_proj", h, kv, True, "attn"),
            LinearSpec("v_proj", h, kv, True, "attn"),
            LinearSpec("dense", q, h, True, "attn"),
            LinearSpec("fc1", h, inter, True, "mlp"),
            LinearSpec("fc2", inter, h, True, "mlp"),
        ),
        norm="layer",
        norms_per_layer=1,
        head_norm_params=2 * 2 * c["head_dim"] if qk_ln else 0,
        lm_head_bias=True,
        mlp="plain",
        parallel_residual=True,
        **c,
    )


# ---------------------------------------------------------------- the training step
