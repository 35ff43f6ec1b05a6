"""The inputs: a model's shapes (ModelSpec, read from a Hugging Face config.json) and a training step (TrainSpec).

The module layout each family gets mirrors what transformers 5.24 builds (modeling_<family>.py), so parameter
counts are exact and LoRA / bitsandbytes targeting sees the same `nn.Linear` names as PEFT and transformers do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from vramplan.errors import VramplanError

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

    # ---- parameter counts by module kind (exact; tests compare them to transformers on meta) ----
    @property
    def norm_size(self) -> int:
        """Parameters of one norm over hidden_size (RMSNorm: weight; LayerNorm: weight + bias)."""
        return self.hidden_size * (2 if self.norm == "layer" else 1)

    @property
    def embed_params(self) -> int:
        return self.vocab_size * self.hidden_size + (self.norm_size if self.embed_norm else 0)

    @property
    def lm_head_params(self) -> int:
        """0 when tied to the embeddings (counted once, as `model.parameters()` does)."""
        if self.tie_word_embeddings:
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
        return self.norm_size

    @property
    def total_params(self) -> int:
        return (
            self.embed_params
            + self.num_hidden_layers * self.layer_params
            + self.final_norm_params
            + self.lm_head_params
        )

    @property
    def linear_weight_params(self) -> int:
        """Weights of all decoder-layer `nn.Linear`s: what bitsandbytes quantizes (lm_head excluded)."""
        return self.num_hidden_layers * sum(lin.weight_params for lin in self.linears)

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim


def _req(cfg: Mapping[str, Any], key: str, name: str) -> Any:
    if key not in cfg or cfg[key] is None:
        raise VramplanError(f"model config {name!r} has no {key!r}; is it a causal-LM config.json?")
    return cfg[key]


def _text_config(cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    inner = cfg.get("text_config")
    return {**inner, "model_type": inner.get("model_type", cfg.get("model_type"))} if inner else cfg


def model_spec_from_config(cfg: Mapping[str, Any], name: str) -> ModelSpec:
    """Build a ModelSpec from a Hugging Face `config.json` mapping (the keys transformers reads)."""
    cfg = _text_config(cfg)
    mt = _req(cfg, "model_type", name)
    if mt not in SUPPORTED_MODEL_TYPES:
        from vramplan.errors import did_you_mean

        raise did_you_mean(mt, SUPPORTED_MODEL_TYPES, "model_type", f"in {name}")
    if mt in ("gpt_neox", "bloom"):
        return _neox_like(cfg, name, mt)
    if mt == "phi":
        return _phi(cfg, name)
    return _llama_like(cfg, name, mt)


# transformers 5.24 config classes' default `hidden_act` where it is not SiLU
DEFAULT_ACT = {"phi": "gelu_new", "gpt_neox": "gelu", "bloom": "bloom_gelu", "gemma": "gelu_pytorch_tanh",
               "gemma2": "gelu_pytorch_tanh"}  # fmt: skip


def _common(cfg: Mapping[str, Any], name: str, h: int, heads: int) -> dict[str, Any]:
    kv = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or HEAD_DIM_DEFAULTS.get(cfg.get("model_type", ""), h // heads)
    return {
        "name": name,
        "hidden_size": h,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": head_dim,
        "vocab_size": _req(cfg, "vocab_size", name),
        "max_position_embeddings": cfg.get("max_position_embeddings") or cfg.get("seq_length") or 2048,
        # Gemma2Config defaults: attn_logit_softcapping 50.0, final_logit_softcapping 30.0
        "attn_softcap": cfg.get("model_type") == "gemma2" and cfg.get("attn_logit_softcapping", 50.0) is not None,
        "final_softcap": cfg.get("model_type") == "gemma2" and cfg.get("final_logit_softcapping", 30.0) is not None,
        "hidden_act": str(
            cfg.get("hidden_activation") or cfg.get("hidden_act") or DEFAULT_ACT.get(cfg.get("model_type"), "silu")
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
    qkv_bias = True if mt == "qwen2" else bool(cfg.get("attention_bias", False))
    o_bias = False if mt == "qwen2" else bool(cfg.get("attention_bias", False))
    mlp_bias = bool(cfg.get("mlp_bias", False))
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
        top_k = cfg.get("num_experts_per_tok", 2)
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
    layer_types = tuple(cfg.get("layer_types") or ())
    return ModelSpec(
        model_type=mt,
        intermediate_size=inter,
        num_hidden_layers=layers,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", tie_default)),
        linears=attn + mlp,
        norm="rms",
        norms_per_layer=4 if mt == "gemma2" else 2,
        head_norm_params=2 * c["head_dim"] if mt == "qwen3" else 0,
        moe_params=other,
        mlp=mlp_kind,
        num_local_experts=experts,
        num_experts_per_tok=top_k,
        sliding_window=cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None,
        layer_types=layer_types,
        **c,
    )


def _neox_like(cfg: Mapping[str, Any], name: str, mt: str) -> ModelSpec:
    if mt == "bloom":
        h = cfg.get("hidden_size") or _req(cfg, "n_embed", name)
        heads = cfg.get("n_head") or _req(cfg, "num_attention_heads", name)
        layers = cfg.get("n_layer") or _req(cfg, "num_hidden_layers", name)
        inter = 4 * h
        tie = bool(cfg.get("tie_word_embeddings", True))
    else:
        h = _req(cfg, "hidden_size", name)
        heads = _req(cfg, "num_attention_heads", name)
        layers = _req(cfg, "num_hidden_layers", name)
        inter = _req(cfg, "intermediate_size", name)
        tie = bool(cfg.get("tie_word_embeddings", False))
    c = _common({**cfg, "num_key_value_heads": None, "head_dim": None}, name, h, heads)
    bias = bool(cfg.get("attention_bias", True)) if mt == "gpt_neox" else True
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
        parallel_residual=bool(cfg.get("use_parallel_residual", True)) if mt == "gpt_neox" else False,
        **c,
    )


def _phi(cfg: Mapping[str, Any], name: str) -> ModelSpec:
    h = _req(cfg, "hidden_size", name)
    heads = _req(cfg, "num_attention_heads", name)
    c = _common(cfg, name, h, heads)
    inter = _req(cfg, "intermediate_size", name)
    q, kv = heads * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    qk_ln = bool(cfg.get("qk_layernorm", False))
    return ModelSpec(
        model_type="phi",
        intermediate_size=inter,
        num_hidden_layers=_req(cfg, "num_hidden_layers", name),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
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

OPTIMIZERS: tuple[str, ...] = (
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_8bit",
    "adamw_bnb_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "sgd",
    "adafactor",
    "lion_32bit",
)
OPTIM_ALIASES = {"adamw_bnb_8bit": "adamw_8bit"}
LORA_TARGET_PRESETS: tuple[str, ...] = ("all-linear", "attn", "qv")

# PEFT's per-architecture default targets (peft/utils/constants.py,
# TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, peft 0.21.2). phi3 has no entry there (PEFT asks for
# target_modules); vramplan's `qv` for it is the fused qkv_proj.
PEFT_DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "mixtral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "qwen3": ("q_proj", "v_proj"),
    "gemma": ("q_proj", "v_proj"),
    "gemma2": ("q_proj", "v_proj"),
    "phi": ("q_proj", "v_proj", "fc1", "fc2"),
    "phi3": ("qkv_proj",),
    "gpt_neox": ("query_key_value",),
    "bloom": ("query_key_value",),
}


@dataclass(frozen=True, slots=True)
class TrainSpec:
    """One training step, every setting resolved (no None): what `estimate`, `measure` and `simulate` share.

    Names follow HF: `per_device_train_batch_size` is `batch`, `gradient_accumulation_steps` `grad_accum`,
    PEFT's `r` is `lora_rank`, bitsandbytes' `bnb_4bit_use_double_quant` is `double_quant`.
    """

    method: Method
    dtype: Dtype  # dtype the unquantized weights are loaded in (`torch_dtype`)
    mixed_precision: MixedPrecision  # autocast dtype of the Trainer (`bf16=True` -> "bf16"), or "no"
    quant: Quant
    double_quant: bool
    kbit_prep: bool
    batch: int
    seq: int
    grad_accum: int
    lora_rank: int
    lora_alpha: int
    lora_dropout: float
    lora_target: tuple[str, ...]  # resolved module names
    lora_target_preset: str  # what the user asked for: "all-linear", "attn", "qv" or "custom"
    dora: bool
    optim: str
    grad_ckpt: bool
    attn: Attn
    freeze_trainable_layers: int
    notes: tuple[str, ...] = ()  # warnings raised while resolving (e.g. bf16 -> fp16 on a T4)

    @property
    def uses_lora(self) -> bool:
        return self.method in ("lora", "qlora")

    @property
    def compute_dtype(self) -> Dtype:
        """Dtype matmuls run in: the autocast dtype, else the weight dtype (bnb_4bit_compute_dtype for 4-bit)."""
        return self.dtype if self.mixed_precision == "no" else self.mixed_precision

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]


def _positive(value: int, flag: str) -> int:
    if value is None or value < 1:
        raise VramplanError(f"{flag} must be a positive integer, got {value!r}")
    return int(value)


def lora_moe_targets(model: ModelSpec, targets: tuple[str, ...]) -> tuple[ParamSpec, ...]:
    """The MoE parameters PEFT adapts (lora.ParamWrapper) for these `target_modules` names."""
    return tuple(p for p in model.moe_params if set(p.peft_names) & set(targets))


def resolve_lora_target(model: ModelSpec, target: str) -> tuple[tuple[str, ...], str]:
    """Map `all-linear` / `attn` / `qv` / a comma list onto PEFT `target_modules` names of this model.

    `all-linear` is every `nn.Linear` of the decoder layers (not lm_head) and, on Mixtral, the router and
    experts by their transformers-4 names `gate`, `w1`, `w3`, `w2`: PEFT 0.21.2 resolves "all-linear" on
    transformers 5 to exactly these and adapts the router / expert parameters through `target_parameters`
    (peft/utils/transformers_weight_conversion.py `_resolve_string_target_modules`).
    """
    names = tuple(lin.name for lin in model.linears)
    moe_names = tuple(n for p in model.moe_params for n in p.peft_names)
    if target == "all-linear":
        return names + moe_names, target
    if target == "attn":
        return tuple(lin.name for lin in model.linears if lin.group == "attn"), target
    if target == "qv":
        return PEFT_DEFAULT_TARGETS.get(model.model_type, names[:1]), target
    wanted = tuple(t.strip() for t in target.split(",") if t.strip())
    if "all" in wanted:  # LLaMA-Factory's spelling of all-linear
        return names + moe_names, "all-linear"
    bad = [t for t in wanted if t not in names + moe_names]
    if bad or not wanted:
        from vramplan.errors import did_you_mean

        raise did_you_mean(
            bad[0] if bad else target,
            (*LORA_TARGET_PRESETS, *names, *moe_names),
            "LoRA target",
            f"{model.name} has: {', '.join(names + moe_names)}",
        )
    for p in lora_moe_targets(model, wanted):
        missing = [n for n in p.peft_names if n not in wanted]
        if missing:  # PEFT: "Cannot convert PEFT target(s) w1 without also targeting w3 ..."
            present = ",".join(n for n in p.peft_names if n in wanted)
            raise VramplanError(
                f"LoRA target {present} of {model.name} is fused with {','.join(missing)} into {p.name} "
                f"in transformers 5; add {','.join(missing)} to --lora-target"
            )
    return wanted, "custom"


def resolve_train(
    model: ModelSpec,
    *,
    gpu_bf16: bool = True,
    method: str = "qlora",
    dtype: str | None = None,
    mixed_precision: str | None = None,
    quant: str | None = None,
    double_quant: bool | None = None,
    kbit_prep: bool | None = None,
    batch: int = 1,
    seq: int = 1024,
    grad_accum: int = 1,
    lora_rank: int = 16,
    lora_alpha: int | None = None,
    lora_dropout: float = 0.05,
    lora_target: str = "all-linear",
    dora: bool = False,
    optim: str = "adamw_torch_fused",
    grad_ckpt: bool | None = None,
    attn: str = "sdpa",
    freeze_trainable_layers: int = 2,
) -> TrainSpec:
    """Fill in the defaults of the common HF Trainer / PEFT recipe for `method` and validate everything.

    Defaults: batch 1, seq 1024, bf16 autocast (fp16 on GPUs without bf16); QLoRA = nf4 + double quant +
    kbit prep + gradient checkpointing; LoRA = bf16 weights; full = pure bf16; r=16, alpha=32, dropout 0.05,
    all-linear; `adamw_torch_fused` (HF Trainer default with torch >= 2.8); SDPA attention.
    """
    from vramplan.errors import did_you_mean

    notes: list[str] = []
    if method not in METHODS:
        raise did_you_mean(method, METHODS, "method")
    half = "bf16" if gpu_bf16 else "fp16"
    for flag, val, choices in (
        ("--dtype", dtype, DTYPES),
        ("--mixed-precision", mixed_precision, MIXED),
        ("--quant", quant, QUANTS),
        ("--attn", attn, ATTNS),
    ):
        if val is not None and val not in choices:
            raise did_you_mean(str(val), choices, f"{flag} value")
    if not gpu_bf16:
        if dtype == "bf16":
            notes.append("this GPU has no bf16: --dtype bf16 switched to fp16")
            dtype = "fp16"
        if mixed_precision == "bf16":
            notes.append("this GPU has no bf16: --mixed-precision bf16 switched to fp16")
            mixed_precision = "fp16"
    dtype = dtype or half
    mixed_precision = mixed_precision or half
    if quant is None:
        quant = "nf4" if method == "qlora" else "none"
    if method == "qlora" and quant == "none":
        raise VramplanError("--method qlora needs a quantized base: --quant nf4|fp4|int8 (or use --method lora)")
    if method in ("full", "freeze") and quant != "none":
        raise VramplanError(
            f"--quant {quant} cannot be combined with --method {method}: quantized weights cannot be trained; "
            "use --method qlora (LoRA on a quantized base)"
        )
    if method == "lora" and quant != "none":
        method = "qlora"
        notes.append(f"--method lora with --quant {quant} is QLoRA: method set to qlora")
    if double_quant is None:
        double_quant = quant in ("nf4", "fp4")
    if kbit_prep is None:
        kbit_prep = quant != "none"
    if grad_ckpt is None:
        grad_ckpt = method == "qlora" and kbit_prep  # prepare_model_for_kbit_training turns it on
    optim = OPTIM_ALIASES.get(optim, optim)
    if optim not in OPTIMIZERS:
        raise did_you_mean(optim, OPTIMIZERS, "optimizer", "HF TrainingArguments.optim names")
    lora_rank = _positive(lora_rank, "--lora-rank")
    if not 0.0 <= lora_dropout < 1.0:
        raise VramplanError(f"--lora-dropout must be in [0, 1), got {lora_dropout!r}")
    targets, preset = resolve_lora_target(model, lora_target)
    # transformers 5.24 refuses SDPA for these (`_supports_sdpa = False`): gemma2 (logit softcapping) and
    # bloom (ALiBi); HF picks eager for them by default
    eager_only = {"gemma2": ("sdpa",), "bloom": ("sdpa", "flash_attention_2")}.get(model.model_type, ())
    if attn in eager_only:
        notes.append(f"{model.model_type} has no {attn} attention in transformers: using eager")
        attn = "eager"
    moe = lora_moe_targets(model, targets) if method in ("lora", "qlora") else ()
    if moe and dora:
        raise VramplanError(
            f"--dora cannot adapt {model.name}'s router/experts ({', '.join(p.name for p in moe)}): PEFT's "
            "lora.ParamWrapper does not support DoRA; use --lora-target attn or --no-dora"
        )
    if moe and lora_dropout > 0:
        notes.append(
            f"PEFT rejects lora_dropout != 0 on {model.name}'s router/experts (lora.ParamWrapper): "
            "train with --lora-dropout 0 (estimated as given) or --lora-target attn"
        )
    if method == "freeze" and not 1 <= freeze_trainable_layers <= model.num_hidden_layers:
        raise VramplanError(
            f"--freeze-trainable-layers must be between 1 and {model.num_hidden_layers} "
            f"(layers of {model.name}), got {freeze_trainable_layers!r}"
        )
    return TrainSpec(
        method=method,  # type: ignore[arg-type]
        dtype=dtype,  # type: ignore[arg-type]
        mixed_precision=mixed_precision,  # type: ignore[arg-type]
        quant=quant,  # type: ignore[arg-type]
        double_quant=bool(double_quant) and quant in ("nf4", "fp4"),
        kbit_prep=bool(kbit_prep) and quant != "none",
        batch=_positive(batch, "--batch"),
        seq=_positive(seq, "--seq"),
        grad_accum=_positive(grad_accum, "--grad-accum"),
        lora_rank=lora_rank,
        lora_alpha=lora_alpha if lora_alpha is not None else 2 * lora_rank,
        lora_dropout=float(lora_dropout),
        lora_target=targets,
        lora_target_preset=preset,
        dora=bool(dora),
        optim=optim,
        grad_ckpt=bool(grad_ckpt),
        attn=attn,  # type: ignore[arg-type]
        freeze_trainable_layers=int(freeze_trainable_layers),
        notes=tuple(notes),
    )
