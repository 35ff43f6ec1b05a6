"""A model's shapes (ModelSpec and its parts) and the names of the choices a run makes (method, dtype, quant, attn).

The families that build a ModelSpec from a config.json: `vramplan.spec.families` (hand-modelled) and
`vramplan.spec.generic` (any other causal LM transformers builds).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, NamedTuple

Method = Literal["full", "lora", "qlora", "freeze"]
Dtype = Literal["bf16", "fp16", "fp32"]
MixedPrecision = Literal["bf16", "fp16", "no"]
Quant = Literal["none", "nf4", "fp4", "int8"]
Attn = Literal["eager", "sdpa", "flash_attention_2", "flex_attention"]

DTYPE_BYTES: dict[str, int] = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}
METHODS: tuple[str, ...] = ("full", "lora", "qlora", "freeze")
DTYPES: tuple[str, ...] = ("bf16", "fp16", "fp32")
MIXED: tuple[str, ...] = ("bf16", "fp16", "no")
QUANTS: tuple[str, ...] = ("none", "nf4", "fp4", "int8")
ATTNS: tuple[str, ...] = ("eager", "sdpa", "flash_attention_2", "flex_attention")


class LinearSpec(NamedTuple):
    """One `nn.Linear` of a decoder layer, under its transformers attribute name."""

    name: str
    in_features: int
    out_features: int
    bias: bool
    group: Literal["attn", "mlp", "ssm"]
    path: str = ""  # the module's path inside the decoder layer (`self_attn.q_proj`), for LoRA target matching
    count: int = 0  # instances in the whole model; 0: one per decoder layer (the hand-modelled families)
    # bitsandbytes replaces it: transformers 5.24 replace_with_bnb_linear takes `type(module) is nn.Linear` or
    # Conv1D only, so a subclass (Falcon's FalconLinear, Llama 4's router) stays in the load dtype
    quantizable: bool = True
    only: Literal["", "dense", "moe"] = ""  # hand-modelled MoE with dense layers: held only by that kind of layer

    @property
    def weight_params(self) -> int:
        return self.in_features * self.out_features

    @property
    def params(self) -> int:
        return self.weight_params + (self.out_features if self.bias else 0)


class ParamSpec(NamedTuple):
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
        return self.shape[-2] if len(self.shape) > 1 else 1  # a vector (gpt-oss's router bias, sinks): one row

    @property
    def params(self) -> int:
        return _numel(self.shape)


class MambaSpec(NamedTuple):
    """The Mamba-2 mixer of a hybrid decoder layer (Falcon-H1: transformers 5.24 modeling_falcon_h1.py
    `FalconH1Mixer`): `in_proj` (hidden -> gate z, x·B·C, dt), a depthwise causal conv1d over x·B·C, the chunked
    SSD scan over `heads` heads of `head_dim` with `groups` B/C groups of `state`, an optional gated RMSNorm
    (`mamba_rms_norm`), `out_proj`. Its linears are in ModelSpec.linears (group "ssm"); these are its other
    parameters: conv1d weight (conv_dim, 1, kernel) and bias, dt_bias, A_log, D (heads each), the norm weight."""

    d_ssm: int  # heads · head_dim
    heads: int
    head_dim: int
    state: int
    groups: int
    conv_kernel: int
    chunk: int
    conv_bias: bool
    rms_norm: bool

    @property
    def conv_dim(self) -> int:
        return self.d_ssm + 2 * self.groups * self.state

    @property
    def projection(self) -> int:
        """in_proj's output features: gate z (d_ssm), x·B·C (conv_dim), dt (heads)."""
        return self.d_ssm + self.conv_dim + self.heads

    @property
    def params(self) -> int:
        """Per layer, outside in_proj / out_proj."""
        conv = self.conv_dim * self.conv_kernel + (self.conv_dim if self.conv_bias else 0)
        return conv + 3 * self.heads + (self.d_ssm if self.rms_norm else 0)


class MlaSpec(NamedTuple):
    """Multi-head latent attention's shapes (transformers 5.24 DeepseekV3Attention, modeling_deepseek_v3.py):
    q through a `q_lora_rank` bottleneck (0: one q_proj), k / v through a `kv_lora_rank` latent plus one shared
    `qk_rope_head_dim` rotary key; per head a query / key of qk_nope + qk_rope and a value of v_head_dim."""

    q_lora_rank: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    rope_interleave: bool

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def norm_params(self) -> int:
        """q_a_layernorm (q_lora_rank) and kv_a_layernorm (kv_lora_rank) RMSNorm weights."""
        return self.q_lora_rank + self.kv_lora_rank


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
    head_norm_params: int = 0  # per layer: q_norm/k_norm (qwen3's over head_dim; OLMo 2/3's over q_dim, kv_dim)
    moe_params: tuple[ParamSpec, ...] = ()
    embed_norm: bool = False  # bloom's word_embeddings_layernorm
    position_embeddings: int = 0  # rows of a learned position embedding beside the tokens' (gpt_bigcode's wpe)
    lm_head_bias: bool = False  # phi
    mlp: Literal["gated", "gated_fused", "plain", "moe"] = "gated"
    parallel_residual: bool = False  # gpt_neox, phi: attention and MLP read the same normed input
    num_local_experts: int = 0
    num_experts_per_tok: int = 0
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()
    attn_softcap: bool = False  # gemma2/3 attn_logit_softcapping: tanh on the scores (eager attention)
    final_softcap: bool = False  # gemma2/3 final_logit_softcapping: tanh on the logits
    no_rope_layers: tuple[int, ...] = ()  # smollm3: the NoPE layers (indices), which skip RoPE
    rope: bool = True  # False: the ModelSpec a NoPE layer walks (walk.layer_specs)
    text_of: str = ""  # a vision-language wrapper's model_type whose text_config this is (gemma3): text model only
    hidden_act: str = "silu"  # ACT2FN name; "gelu_new" (phi) is a Python tanh-GELU that saves 3 more tensors
    mamba: MambaSpec | None = None  # falcon_h1: the Mamba-2 mixer beside the attention in every layer
    mla: MlaSpec | None = None  # multi-head latent attention (spec/mla.py)
    dense_mlp_layers: tuple[int, ...] = ()  # MoE families: the layers with a dense MLP (first_k_dense_replace)
    dense_intermediate_size: int = 0  # their MLP width (intermediate_size; the experts' is `intermediate_size`)
    shared_intermediate_size: int = 0  # an MoE layer's always-on shared-experts MLP (0: none)
    fp32_params: int = 0  # parameters transformers keeps in fp32 whatever the load dtype (_keep_in_fp32_modules)
    config: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # ---- generic families (spec/generic.py): counted from the architecture table, walked as a stand-in ----
    other_tensors: tuple[tuple[tuple[int, ...], int], ...] = ()  # (shape, count) of every non-Linear tensor
    approximation: Approximation | None = None
    walk_basis: ModelSpec | None = None  # the hand-modelled layer the activations are walked on
    walk_roles: tuple[tuple[str, str], ...] = ()  # (linear name here, its name in walk_basis)
    module_prefix: str = ""  # generic: the decoder layers' module names (`model.layers.*.`)
    # ---- vision-language wrappers (spec/vision.py): the vision tower and projector, frozen ----
    tower_tensors: tuple[tuple[tuple[int, ...], int, bool], ...] = ()  # (shape, count, bitsandbytes packs it)
    table_expert_params: int = 0  # generic MoE: parameters in fused 3-D expert tensors (not nn.Linear)
    # generic: every per-layer parameter outside an nn.Linear (path in the layer, shape, instances), for PEFT's
    # target_parameters; and the input / output embeddings' module names
    table_layer_parameters: tuple[tuple[str, tuple[int, ...], int], ...] = ()
    embedding_names: tuple[str, ...] = ()
    # hand-modelled hybrids: per-layer tensors that exist only in layers of one kind and are neither an
    # nn.Linear nor a hidden-size norm (Qwen3.5's conv1d, dt_bias, A_log, gated norm; q_norm / k_norm), as
    # (shape, instances in the model)
    mixer_tensors: tuple[tuple[tuple[int, ...], int], ...] = ()
    # the hash, computed on first use: lru_caches key on the spec several times per estimate, and the
    # generated __hash__ would hash every field (the linears' tuple among them) each time
    _hash: int | None = field(default=None, init=False, repr=False, compare=False)

    def __hash__(self) -> int:
        """The frozen dataclass's hash (of the compared fields, in order), kept after the first call."""
        if self._hash is None:
            object.__setattr__(self, "_hash", hash(tuple(getattr(self, name) for name in _HASHED)))
        return self._hash  # type: ignore[return-value]

    def __setstate__(self, state: list[Any]) -> None:
        """Unpickling (the frozen slots dataclass's), the kept hash dropped: str hashes differ between processes."""
        for f, value in zip(fields(self), state, strict=True):
            object.__setattr__(self, f.name, value)
        object.__setattr__(self, "_hash", None)

    @property
    def layer_parameters(self) -> tuple[tuple[str, tuple[int, ...], int], ...]:
        """(full name in layer 0, shape, instances) of each decoder-layer parameter that is not an nn.Linear
        weight (Mixtral's router and 3-D experts): what PEFT's `target_parameters` can name."""
        if self.from_table:
            prefix = self.module_prefix.replace("*", "0")
            return tuple((prefix + path, shape, n) for path, shape, n in self.table_layer_parameters)
        layer = self.dense_mlp_layers[-1] + 1 if self.dense_mlp_layers else 0  # the first MoE layer
        stack = self.module_prefix.replace("*", "0") if self.module_prefix else f"model.layers.{layer}."
        paths = {"gate.weight": "mlp.gate.weight", "router.weight": "mlp.router.weight",
                 "router.bias": "mlp.router.bias", "sinks": "self_attn.sinks"}  # fmt: skip
        experts = "experts." if self.model_type == "gemma4_text" else "mlp.experts."  # Gemma 4: beside its `mlp`
        if self.model_type == "gemma4_text":
            paths = {"router.scale": "router.scale", "router.per_expert_scale": "router.per_expert_scale"}
        return tuple(
            (stack + paths.get(p.name, f"{experts}{p.name}"), p.shape, self.moe_layers) for p in self.moe_params
        )

    @property
    def moe_layers(self) -> int:
        """Decoder layers that route their tokens to experts (all but the dense-MLP ones)."""
        return self.num_hidden_layers - len(self.dense_mlp_layers) if self.moe_params else 0

    @property
    def fused_expert_params(self) -> int:
        """Parameters in 3-D expert tensors (transformers 5 `MixtralExperts.gate_up_proj` (E, 2I, H) and the
        like): plain `nn.Parameter`s, so bitsandbytes does not quantize them and PEFT adapts them only through
        `target_parameters`."""
        if self.from_table:
            return self.table_expert_params
        return self.moe_layers * sum(p.params for p in self.moe_params if len(p.shape) == 3)

    @property
    def from_table(self) -> bool:
        """Counted from the architecture table (spec/generic.py), not from a hand-modelled layout."""
        return self.walk_basis is not None

    @property
    def tower_params(self) -> int:
        """Vision tower + projector parameters (a VLM wrapper's; 0 for a text model), frozen in every method."""
        return sum(_numel(shape) * n for shape, n, _ in self.tower_tensors)

    @property
    def quantized_weight_params(self) -> int:
        """Every weight bitsandbytes replaces: the decoder-layer linears and the tower's `nn.Linear`s
        (transformers 5.24 replace_with_bnb_linear: every `type(module) is nn.Linear` / Conv1D outside
        `modules_to_not_convert` = output embedding, last module, `_keep_in_fp32_modules`)."""
        linears = sum(lin.weight_params * self.instances(lin) for lin in self.linears if lin.quantizable)
        return linears + sum(_numel(shape) * n for shape, n, packed in self.tower_tensors if packed)

    @property
    def unquantizable_linear_params(self) -> int:
        """Decoder-layer linear weights bitsandbytes leaves alone (an `nn.Linear` subclass: FalconLinear)."""
        return sum(lin.weight_params * self.instances(lin) for lin in self.linears if not lin.quantizable)

    def instances(self, lin: LinearSpec) -> int:
        """How many times the model holds this linear (once per decoder layer unless counted otherwise)."""
        if lin.only:
            dense = len(self.dense_mlp_layers)
            return dense if lin.only == "dense" else self.num_hidden_layers - dense
        return lin.count or self.num_hidden_layers

    # ---- parameter counts by module kind (exact; tests compare them to transformers on meta) ----
    @property
    def norm_size(self) -> int:
        """Parameters of one norm over hidden_size (RMSNorm: weight; LayerNorm: weight + bias)."""
        return self.hidden_size * (2 if self.norm == "layer" else 1)

    @property
    def embed_params(self) -> int:
        """Generic families: every parameter outside the decoder-layer linears (embeddings, norms, ...)."""
        if self.from_table:
            return sum(_numel(shape) * n for shape, n in self.other_tensors)
        rows = self.vocab_size + self.position_embeddings
        return rows * self.hidden_size + (self.norm_size if self.embed_norm else 0)

    @property
    def lm_head_params(self) -> int:
        """0 when tied to the embeddings (counted once, as `model.parameters()` does)."""
        if self.tie_word_embeddings or self.from_table:
            return 0
        return self.vocab_size * self.hidden_size + (self.vocab_size if self.lm_head_bias else 0)

    @property
    def other_layer_params(self) -> int:
        return sum(p.params for p in self.moe_params)

    def layer_linears(self, dense: bool = False) -> tuple[LinearSpec, ...]:
        """The linears of one decoder layer: of a routed one (the top layers), or of a dense-MLP one."""
        skip = "moe" if dense else "dense"
        return tuple(lin for lin in self.linears if lin.only != skip)

    @property
    def attention_sink_params(self) -> int:
        """gpt-oss's learned attention sinks (`self_attn.sinks`, one per head): part of the attention."""
        return sum(p.params for p in self.moe_params if p.name == "sinks")

    @property
    def attn_params_per_layer(self) -> int:
        return sum(lin.params for lin in self.linears if lin.group == "attn") + self.attention_sink_params

    @property
    def mlp_params_per_layer(self) -> int:
        """The top layer's MLP (a routed one when the model has experts)."""
        mlp = sum(lin.params for lin in self.layer_linears() if lin.group == "mlp")
        return mlp + self.other_layer_params - self.attention_sink_params

    @property
    def ssm_params_per_layer(self) -> int:
        """A hybrid layer's Mamba mixer: in_proj, out_proj and the mixer's other parameters (MambaSpec.params)."""
        linears = sum(lin.params for lin in self.linears if lin.group == "ssm")
        return linears + (self.mamba.params if self.mamba else 0)

    @property
    def norm_params_per_layer(self) -> int:
        return self.norms_per_layer * self.norm_size + self.head_norm_params + (self.mla.norm_params if self.mla else 0)

    @property
    def layer_params(self) -> int:
        """One decoder layer's parameters: the top one's (routed, when the bottom layers are dense); a hybrid's
        (layers of two token mixers, Qwen3.5) mean layer, rounded down."""
        if self.mixer_tensors or any(lin.count for lin in self.linears):
            return self.decoder_params // self.num_hidden_layers
        return (
            self.attn_params_per_layer + self.mlp_params_per_layer + self.ssm_params_per_layer
            + self.norm_params_per_layer
        )  # fmt: skip

    @property
    def decoder_params(self) -> int:
        """Every decoder layer's parameters together (hand-modelled families)."""
        linears = sum(lin.params * self.instances(lin) for lin in self.linears)
        mixers = sum(_numel(shape) * n for shape, n in self.mixer_tensors)
        mamba = self.mamba.params if self.mamba else 0  # a hybrid-SSM layer's mixer outside its linears
        routed = self.moe_layers * self.other_layer_params  # routers and fused experts: routed layers only
        return linears + mixers + routed + self.num_hidden_layers * (mamba + self.norm_params_per_layer)

    @property
    def final_norm_params(self) -> int:
        return 0 if self.from_table else self.norm_size

    @property
    def total_params(self) -> int:
        if self.from_table:  # exact: every tensor the architecture table lists
            text = sum(lin.params * self.instances(lin) for lin in self.linears) + self.embed_params
        else:
            text = self.embed_params + self.decoder_params + self.final_norm_params + self.lm_head_params
        return text + self.tower_params

    @property
    def linear_weight_params(self) -> int:
        """Weights of all decoder-layer `nn.Linear`s (lm_head excluded); bitsandbytes quantizes those that are
        `quantizable` (`quantized_weight_params`)."""
        return sum(lin.weight_params * self.instances(lin) for lin in self.linears)

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim


_HASHED: tuple[str, ...] = tuple(f.name for f in fields(ModelSpec) if f.compare)


class Approximation(NamedTuple):
    """A family estimated through another one's activation walk: what stands in, and how far it can be off."""

    kind: str  # "generic" (from the architecture table), "vision" (a hand-modelled decoder inside a VLM), "remote"
    basis: str  # "llama-like walk"
    error_band: float  # relative: measured on the hand-modelled families run as if unknown (spec/generic.py)
    note: str = ""  # e.g. "text model only: the vision tower is not counted"


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
