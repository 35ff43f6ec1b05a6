"""Gemma 3n (`gemma3n_text`, the text model of the `gemma3n` wrapper): a ModelSpec from config.json.

transformers 5.25 models/gemma3n/modeling_gemma3n.py builds each decoder layer (`Gemma3nTextDecoderLayer`) as
Gemma 3's (input / post-attention / pre- / post-feedforward RMSNorms, q / k norms and a weightless v_norm,
scaling 1.0, a gated GELU MLP) around three more blocks, and the model around a stack of `altup_num_inputs`
hidden states (configuration_gemma3n.py `Gemma3nTextConfig`):

- AltUp (`altup`): `correct_output_scale` (H), `correction_coefs` nn.Linear (n -> n), `prediction_coefs`
  (n -> n²), `modality_router` (H -> n), `router_norm` (H); the model's `altup_projections` and
  `altup_unembed_projections` (n - 1 nn.Linear H -> H each) make the stack and fold it back;
- Laurel (`laurel`): `linear_left` (H -> laurel_rank), `linear_right` (laurel_rank -> H), `post_laurel_norm`;
- per-layer inputs (PLE): per layer `per_layer_input_gate` (H -> P), `per_layer_projection` (P -> H),
  `post_per_layer_input_norm` (H); in the model `embed_tokens_per_layer` (vocab_per_layer, L·P),
  `per_layer_model_projection` (nn.Linear H -> L·P), `per_layer_projection_norm` (P);
- the last `num_kv_shared_layers` layers (`kv_sharing_modes` "reuse") have no k_proj / v_proj / k_norm / v_norm:
  they attend over the keys and values of the last non-shared layer of their type ("store");
- `intermediate_size` per layer (an int or one per layer, MatFormer), and `activation_sparsity_pattern` per
  layer (> 0: a gaussian top-k on gate_proj's output before the GELU; default 0.95 on the first 10 layers).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vramplan.errors import VramplanError
from vramplan.spec.family_common import every_nth_full
from vramplan.spec.fields import config_bool, config_int, config_names
from vramplan.spec.model import LinearSpec, ModelSpec

# Gemma3nTextConfig's defaults (transformers 5.25 configuration_gemma3n.py) for the fields the builder reads
GEMMA3N_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262_400, "hidden_size": 2048, "intermediate_size": 16_384, "num_hidden_layers": 35,
    "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 32_768, "tie_word_embeddings": True, "attention_bias": False,
    "sliding_window": 512, "final_logit_softcapping": 30.0, "vocab_size_per_layer_input": 262_144,
    "hidden_size_per_layer_input": 256, "altup_active_idx": 0, "altup_correct_scale": True, "altup_num_inputs": 4,
    "num_kv_shared_layers": 15, "laurel_rank": 64,
}  # fmt: skip
LAYER_KINDS = ("sliding_attention", "full_attention")
SPARSE_ACT = "gaussian_topk+"  # a per-layer walk spec's hidden_act prefix: this layer's MLP runs the top-k
# AltUp's coefficient linears clamp their weight in training (`prediction_coefs.weight.data.clamp_`,
# `correction_coefs.weight.clamp` then F.linear: modeling_gemma3n.py 5.25), which fails on a bitsandbytes 4-bit or
# int8 weight (uint8 / int8 storage): a QLoRA run must leave them unquantized (BitsAndBytesConfig
# `llm_int8_skip_modules`), and the estimate does
UNQUANTIZABLE = frozenset({"correction_coefs", "prediction_coefs"})


def gemma3n_layer_types(cfg: Mapping[str, Any], name: str, layers: int) -> tuple[str, ...]:
    """`layer_types` as Gemma3nTextConfig.__post_init__ fills it: given, or every 5th layer full attention."""
    given = cfg.get("layer_types")
    kinds = config_names(cfg, "layer_types", name, layers) if given else every_nth_full(layers, 5)
    unknown = sorted(set(kinds) - set(LAYER_KINDS))
    if unknown:
        raise VramplanError(
            f"model config {name!r}: layer_types holds {unknown[0]!r}; Gemma 3n layers are {' or '.join(LAYER_KINDS)}"
        )
    return tuple(kinds)


def kv_sharing_modes(kinds: tuple[str, ...], shared: int, name: str) -> tuple[str, ...]:
    """Gemma3nTextConfig.kv_sharing_modes (5.25): all "" without shared layers; else "reuse" for the last
    `num_kv_shared_layers` and "store" for the last layer of each type below them."""
    if shared == 0:
        return ("",) * len(kinds)
    from vramplan.spec.gemma4 import kv_sharing_modes as same_rule

    return same_rule(kinds, shared, name)


def per_layer_floats(cfg: Mapping[str, Any], key: str, name: str, layers: int, default: list[float]) -> list[float]:
    """A per-layer list of floats (`activation_sparsity_pattern`), one per layer as transformers requires."""
    value = cfg.get(key)
    if value is None:
        return default
    if not isinstance(value, list) or len(value) != layers or not all(isinstance(v, (int, float)) for v in value):
        raise VramplanError(f"model config {name!r}: {key} must list one number per layer ({layers})")
    return [float(v) for v in value]


def layer_widths(cfg: Mapping[str, Any], name: str, layers: int) -> tuple[int, ...]:
    """Each layer's MLP width: `intermediate_size` one for all layers or one per layer (Gemma3nTextConfig)."""
    value = cfg.get("intermediate_size")
    if isinstance(value, list):
        if len(value) != layers:
            raise VramplanError(
            f"model config {name!r}: intermediate_size must list one width per layer ({layers})"
        )
        return tuple(config_int({"intermediate_size": v}, "intermediate_size", name) for v in value)
    return (config_int(cfg, "intermediate_size", name),) * layers


def sparsity(cfg: Mapping[str, Any], name: str, layers: int) -> tuple[float, ...]:
    """`activation_sparsity_pattern`: given, or 0.95 on the first 10 layers of a model deeper than 10."""
    sparse = 10 if layers > 10 else 0
    return tuple(per_layer_floats(cfg, "activation_sparsity_pattern", name, layers,
                                  [0.95] * sparse + [0.0] * (layers - sparse)))  # fmt: skip


def gemma3n_dims(m: ModelSpec) -> dict[str, Any]:
    """The per-layer attention shapes and Gemma 3n's switches of a gemma3n_text spec (from its config), in the
    shape spec/gemma4.gemma4_dims gives them."""
    c = {**GEMMA3N_TEXT_DEFAULTS, **{k: v for k, v in m.config.items() if v is not None}}
    whole = gemma3n_layer_types(c, m.name, int(c["num_hidden_layers"]))
    modes = kv_sharing_modes(whole, int(c["num_kv_shared_layers"]), m.name)[: len(m.layer_types)]
    return {
        "shapes": ((m.head_dim, m.num_key_value_heads),) * len(m.layer_types),
        "k_eq_v": False,
        "modes": modes,
        "double_wide": False,
        "per_layer_input": int(c["hidden_size_per_layer_input"]),
        "widths": layer_widths(c, m.name, int(c["num_hidden_layers"]))[: len(m.layer_types)],
        "sparsity": sparsity(c, m.name, int(c["num_hidden_layers"]))[: len(m.layer_types)],
        "altup": int(c["altup_num_inputs"]),
        "laurel_rank": int(c["laurel_rank"]),
        "correct_scale": bool(c["altup_correct_scale"]),
    }


def gemma3n_spec(cfg: Mapping[str, Any], name: str, common: dict[str, Any]) -> ModelSpec:
    """The ModelSpec of a gemma3n_text config (`common`: family_common.common_fields of it, defaults in)."""
    h, heads, hd = common["hidden_size"], common["num_attention_heads"], common["head_dim"]
    kv = common["num_key_value_heads"]
    layers = config_int(cfg, "num_hidden_layers", name)
    kinds = gemma3n_layer_types(cfg, name, layers)
    bias = config_bool(cfg, "attention_bias", name, False)
    modes = kv_sharing_modes(kinds, config_int(cfg, "num_kv_shared_layers", name, default=15, low=0), name)
    widths = layer_widths(cfg, name, layers)
    sparsity(cfg, name, layers)  # checked here, read by the walk
    ple = config_int(cfg, "hidden_size_per_layer_input", name, default=256, low=0)
    altup = config_int(cfg, "altup_num_inputs", name, default=4)
    rank = config_int(cfg, "laurel_rank", name, default=64)
    counts: dict[tuple[str, str, int, int, str], int] = {}  # (name, path, in, out, group) -> layers holding it

    def add(lin: str, path: str, i: int, o: int, group: str, n: int = 1) -> None:
        counts[lin, path, i, o, group] = counts.get((lin, path, i, o, group), 0) + n

    for mode, width in zip(modes, widths, strict=True):
        add("q_proj", "self_attn.q_proj", h, heads * hd, "attn")
        if mode != "reuse":
            add("k_proj", "self_attn.k_proj", h, kv * hd, "attn")
            add("v_proj", "self_attn.v_proj", h, kv * hd, "attn")
        add("o_proj", "self_attn.o_proj", heads * hd, h, "attn")
        for lin, i, o in (("gate_proj", h, width), ("up_proj", h, width), ("down_proj", width, h)):
            add(lin, f"mlp.{lin}", i, o, "mlp")
        for lin, path, i, o in (
            ("correction_coefs", "altup.correction_coefs", altup, altup),
            ("prediction_coefs", "altup.prediction_coefs", altup, altup * altup),
            ("modality_router", "altup.modality_router", h, altup),
            ("linear_left", "laurel.linear_left", h, rank),
            ("linear_right", "laurel.linear_right", rank, h),
            ("per_layer_input_gate", "per_layer_input_gate", h, ple),
            ("per_layer_projection", "per_layer_projection", ple, h),
        ):
            add(lin, path, i, o, "mlp")
    # the model's own linears (outside the layers): the AltUp stack's projections in and out, PLE's projection
    # (each its own module, `altup_projections.0`...: PEFT's all-linear names them so, the ModuleList is no target)
    for i in range(altup - 1):
        for stack in ("altup_projections", "altup_unembed_projections"):
            add(f"{stack}.{i}", f"{stack}.{i}", h, h, "mlp")
    add("per_layer_model_projection", "per_layer_model_projection", h, layers * ple, "mlp")
    linears = tuple(
        LinearSpec(lin, i, o, bias if group == "attn" else False, group, path=path, count=0 if n == layers else n,
                   quantizable=lin not in UNQUANTIZABLE)  # fmt: skip
        for (lin, path, i, o, group), n in counts.items()
        if n
    )
    # outside the linears and the seven hidden-size norms of a layer: q_norm (every layer), k_norm (the layers
    # with keys), AltUp's correct_output_scale (H, every layer); the model's embed_tokens_per_layer and
    # per_layer_projection_norm (P)
    own_keys = sum(mode != "reuse" for mode in modes)
    vocab_pl = config_int(cfg, "vocab_size_per_layer_input", name, default=262_144)
    mixer = (((hd,), layers + own_keys), ((h,), layers), ((vocab_pl, layers * ple), 1), ((ple,), 1))
    return ModelSpec(
        model_type="gemma3n_text",
        intermediate_size=max(widths),
        num_hidden_layers=layers,
        tie_word_embeddings=config_bool(cfg, "tie_word_embeddings", name, True),
        linears=linears,
        norm="rms",
        # input, post-attention, pre- / post-feedforward, post_per_layer_input_norm, altup.router_norm,
        # laurel.post_laurel_norm
        norms_per_layer=7,
        mlp="gated",
        sliding_window=config_int(cfg, "sliding_window", name, default=512),
        layer_types=kinds,
        mixer_tensors=tuple((shape, n) for shape, n in mixer if n),
        **common,
    )


def layer_linears(m: ModelSpec, index: int) -> tuple[int, int, tuple[LinearSpec, ...]]:
    """Layer `index`'s (head_dim, key heads, its linears as one-per-layer LinearSpecs), for the walk."""
    d = gemma3n_dims(m)
    h, heads, hd = m.hidden_size, m.num_attention_heads, m.head_dim
    width, n, ple, rank = d["widths"][index], d["altup"], d["per_layer_input"], d["laurel_rank"]
    wanted = {"q_proj": (h, heads * hd), "o_proj": (heads * hd, h), "gate_proj": (h, width),
              "up_proj": (h, width), "down_proj": (width, h), "correction_coefs": (n, n),
              "prediction_coefs": (n, n * n), "modality_router": (h, n), "linear_left": (h, rank),
              "linear_right": (rank, h), "per_layer_input_gate": (h, ple),
              "per_layer_projection": (ple, h)}  # fmt: skip
    if d["modes"][index] != "reuse":
        wanted["k_proj"] = wanted["v_proj"] = (h, m.num_key_value_heads * hd)
    chosen: list[LinearSpec] = []
    for lin in m.linears:
        if wanted.get(lin.name) == (lin.in_features, lin.out_features) and lin.name not in {c.name for c in chosen}:
            chosen.append(LinearSpec(lin.name, lin.in_features, lin.out_features, lin.bias, lin.group, path=lin.path,
                                     quantizable=lin.quantizable))  # fmt: skip
    return hd, m.num_key_value_heads, tuple(chosen)


def residual_streams(m: ModelSpec) -> int:
    """How many hidden states a Gemma 3n layer passes on (the AltUp stack: `altup_num_inputs`); 1 otherwise."""
    if m.model_type != "gemma3n_text":
        return 1
    return int({**GEMMA3N_TEXT_DEFAULTS, **m.config}.get("altup_num_inputs") or 4)


def per_layer_dims(m: ModelSpec) -> dict[str, Any]:
    """The per-layer shapes of a PER_LAYER_SHAPES spec (Gemma 4's or Gemma 3n's), for the walk and the KV cache."""
    if m.model_type == "gemma3n_text":
        return gemma3n_dims(m)
    from vramplan.spec.gemma4 import gemma4_dims

    return gemma4_dims(m)


def per_layer_linears(m: ModelSpec, index: int) -> tuple[int, int, tuple[LinearSpec, ...], str]:
    """Layer `index`'s (head_dim, key heads, linears, hidden_act) of a PER_LAYER_SHAPES spec: a Gemma 3n layer
    with activation sparsity walks `SPARSE_ACT` + its activation (its MLP's gaussian top-k)."""
    if m.model_type == "gemma3n_text":
        sparse = gemma3n_dims(m)["sparsity"][index] > 0
        return (*layer_linears(m, index), SPARSE_ACT + m.hidden_act if sparse else m.hidden_act)
    from vramplan.spec.gemma4 import layer_linears as gemma4_linears

    return (*gemma4_linears(m, index), m.hidden_act)
