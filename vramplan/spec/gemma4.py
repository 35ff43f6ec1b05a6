"""Gemma 4 (`gemma4_text`, the text model of the `gemma4` wrapper): a ModelSpec from config.json.

transformers 5.25 models/gemma4/modeling_gemma4.py builds each decoder layer (`Gemma4TextDecoderLayer`) as Gemma 3's
(input / post-attention / pre- / post-feedforward RMSNorms, q / k norms, a gated GELU MLP) with these differences,
each chosen per layer by `config.layer_types[i]` and `config.kv_sharing_modes[i]` (configuration_gemma4.py):

- the `full_attention` layers take `global_head_dim` (default 512) and, with `attention_k_eq_v`,
  `num_global_key_value_heads` key heads (`per_layer_config`); such a layer has no v_proj: the values are the
  k_proj output, normed apart (`use_alternative_attention`);
- every attention normalises its values too (`v_norm`, an RMSNorm without weight) and scales by 1.0;
- the last `num_kv_shared_layers` layers (`kv_sharing_modes` "reuse") have no k_proj / v_proj / k_norm / v_norm:
  they attend over the keys and values of the last non-shared layer of their type; with `use_double_wide_mlp`
  their MLP is twice as wide;
- `enable_moe_block`: beside the dense MLP a routed MoE (`router`: an RMSNorm without weight, `scale` (H),
  `proj` nn.Linear (H -> E), `per_expert_scale` (E); `experts`: gate_up_proj (E, 2·moe_I, H), down_proj
  (E, H, moe_I) as nn.Parameter) with three more norms;
- `hidden_size_per_layer_input` > 0 (per-layer embeddings, PLE): per layer `per_layer_input_gate` (H -> P),
  `per_layer_projection` (P -> H), `post_per_layer_input_norm` (H); in the model `embed_tokens_per_layer`
  (vocab_per_layer, L·P), `per_layer_model_projection` (nn.Linear H -> L·P), `per_layer_projection_norm` (P).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vramplan.errors import VramplanError
from vramplan.spec.family_common import every_nth_full
from vramplan.spec.fields import config_bool, config_int, config_names
from vramplan.spec.model import LinearSpec, ModelSpec, ParamSpec

# Gemma4TextConfig's defaults (transformers 5.25 configuration_gemma4.py) for the fields the builder reads
GEMMA4_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262_144, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 30,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131_072, "tie_word_embeddings": True, "attention_bias": False,
    "sliding_window": 512, "final_logit_softcapping": None, "vocab_size_per_layer_input": 262_144,
    "hidden_size_per_layer_input": 256, "attention_k_eq_v": False, "num_kv_shared_layers": 0,
    "enable_moe_block": False, "use_double_wide_mlp": False, "global_head_dim": 512,
}  # fmt: skip
LAYER_KINDS = ("sliding_attention", "full_attention")


def gemma4_layer_types(cfg: Mapping[str, Any], name: str, layers: int) -> tuple[str, ...]:
    """`layer_types` as Gemma4TextConfig.__post_init__ fills it: given, or every 6th layer full attention; the
    last layer is forced to full attention either way."""
    kinds = list(config_names(cfg, "layer_types", name, layers)) if cfg.get("layer_types") else []
    if not kinds:
        kinds = list(every_nth_full(layers, 6))
    unknown = sorted(set(kinds) - set(LAYER_KINDS))
    if unknown:
        raise VramplanError(
            f"model config {name!r}: layer_types holds {unknown[0]!r}; Gemma 4 layers are {' or '.join(LAYER_KINDS)}"
        )
    kinds[-1] = "full_attention"
    return tuple(kinds)


def kv_sharing_modes(kinds: tuple[str, ...], shared: int, name: str) -> tuple[str, ...]:
    """Gemma4TextConfig.kv_sharing_modes: "" (own k / v), "store" (the last non-shared layer of a type, whose
    keys and values the shared ones reuse) or "reuse" (the last `num_kv_shared_layers` layers)."""
    layers = len(kinds)
    if shared >= layers:
        return ("reuse",) * layers
    first = layers - shared
    modes = ["" if i < first else "reuse" for i in range(layers)]
    below = kinds[:first]
    if set(below) != set(kinds):
        raise VramplanError(
            f"model config {name!r}: num_kv_shared_layers {shared} leaves no layer of some type to share keys and "
            "values from (transformers refuses it)"
        )
    for kind in set(kinds):
        modes[first - 1 - below[::-1].index(kind)] = "store"
    return tuple(modes)


def attention_shapes(
    cfg: Mapping[str, Any], name: str, kinds: tuple[str, ...], head_dim: int, kv_heads: int
) -> tuple[tuple[int, int], ...]:
    """Each layer's (head_dim, key heads), as Gemma4TextConfig resolves `per_layer_config`: a saved config's own
    (`per_layer_config`: layer index -> overrides), else the full-attention layers take `global_head_dim` and,
    with `attention_k_eq_v`, `num_global_key_value_heads` (configuration_gemma4.py `__post_init__`)."""
    given = cfg.get("per_layer_config")
    if isinstance(given, Mapping):
        overrides = {int(k): v for k, v in given.items() if str(k).isdigit() and isinstance(v, Mapping)}
        return tuple(
            (
                config_int(overrides.get(i, {}), "head_dim", name, default=head_dim),
                config_int(overrides.get(i, {}), "num_key_value_heads", name, default=kv_heads),
            )
            for i in range(len(kinds))
        )
    global_head_dim = config_int(cfg, "global_head_dim", name, default=512)
    k_eq_v = config_bool(cfg, "attention_k_eq_v", name, False)
    global_kv = cfg.get("num_global_key_value_heads")
    full_kv = config_int(cfg, "num_global_key_value_heads", name) if (k_eq_v and global_kv is not None) else kv_heads
    return tuple((global_head_dim, full_kv) if kind == "full_attention" else (head_dim, kv_heads) for kind in kinds)


def gemma4_dims(m: ModelSpec) -> dict[str, Any]:
    """The per-layer attention shapes and the Gemma 4 switches of a gemma4_text spec (from its config)."""
    c = {**GEMMA4_TEXT_DEFAULTS, **{k: v for k, v in m.config.items() if v is not None}}
    # a pipeline stage's slice (vllm.rank_model: the bottom layers) shares KV as the whole model does
    whole = gemma4_layer_types(c, m.name, int(c["num_hidden_layers"]))
    modes = kv_sharing_modes(whole, int(c["num_kv_shared_layers"]), m.name)[: len(m.layer_types)]
    return {
        "shapes": attention_shapes(c, m.name, m.layer_types, m.head_dim, m.num_key_value_heads),
        "k_eq_v": bool(c["attention_k_eq_v"]),
        "modes": modes,
        "double_wide": bool(c["use_double_wide_mlp"]),
        "per_layer_input": int(c["hidden_size_per_layer_input"]),
    }


def gemma4_spec(cfg: Mapping[str, Any], name: str, common: dict[str, Any]) -> ModelSpec:
    """The ModelSpec of a gemma4_text config (`common`: family_common.common_fields of it with the defaults in)."""
    h, heads = common["hidden_size"], common["num_attention_heads"]
    layers = config_int(cfg, "num_hidden_layers", name)
    inter = config_int(cfg, "intermediate_size", name)
    kinds = gemma4_layer_types(cfg, name, layers)
    bias = config_bool(cfg, "attention_bias", name, False)
    k_eq_v = config_bool(cfg, "attention_k_eq_v", name, False)
    shared = config_int(cfg, "num_kv_shared_layers", name, default=0, low=0)
    modes = kv_sharing_modes(kinds, shared, name)
    double_wide = config_bool(cfg, "use_double_wide_mlp", name, False)
    ple = config_int(cfg, "hidden_size_per_layer_input", name, default=256, low=0)
    moe = config_bool(cfg, "enable_moe_block", name, False)
    shapes = attention_shapes(cfg, name, kinds, common["head_dim"], common["num_key_value_heads"])
    counts: dict[tuple[str, str, int, int, str], int] = {}  # (name, path, in, out, group) -> layers holding it
    vectors: dict[int, int] = {}  # per-layer weight vectors outside the hidden-size norms: length -> instances

    def add(lin: str, path: str, i: int, o: int, group: str) -> None:
        counts[lin, path, i, o, group] = counts.get((lin, path, i, o, group), 0) + 1

    for kind, mode, (hd, kv) in zip(kinds, modes, shapes, strict=True):
        add("q_proj", "self_attn.q_proj", h, heads * hd, "attn")
        vectors[hd] = vectors.get(hd, 0) + 1  # q_norm
        if mode != "reuse":
            add("k_proj", "self_attn.k_proj", h, kv * hd, "attn")
            if not (k_eq_v and kind == "full_attention"):
                add("v_proj", "self_attn.v_proj", h, kv * hd, "attn")
            vectors[hd] += 1  # k_norm (v_norm has no weight)
        add("o_proj", "self_attn.o_proj", heads * hd, h, "attn")
        width = inter * (2 if double_wide and mode == "reuse" else 1)
        for lin, i, o in (("gate_proj", h, width), ("up_proj", h, width), ("down_proj", width, h)):
            add(lin, f"mlp.{lin}", i, o, "mlp")
        if ple:
            add("per_layer_input_gate", "per_layer_input_gate", h, ple, "mlp")
            add("per_layer_projection", "per_layer_projection", ple, h, "mlp")
    experts = top_k = moe_inter = 0
    moe_params: tuple[ParamSpec, ...] = ()
    if moe:
        experts = config_int(cfg, "num_experts", name)
        top_k = config_int(cfg, "top_k_experts", name)
        moe_inter = config_int(cfg, "moe_intermediate_size", name)
        for _ in range(layers):
            add("proj", "router.proj", h, experts, "mlp")
        # PEFT 0.21.2 maps no transformers-4 names for gemma4 (no `_MOE_TARGET_MODULE_MAPPING` entry): the
        # experts take LoRA only through an explicit `target_parameters`
        moe_params = (
            ParamSpec("router.scale", (h,), ()),
            ParamSpec("router.per_expert_scale", (experts,), ()),
            ParamSpec("gate_up_proj", (experts, 2 * moe_inter, h), ()),
            ParamSpec("down_proj", (experts, h, moe_inter), ()),
        )
    linears = [
        LinearSpec(lin, i, o, bias if group == "attn" else False, group, path=path, count=0 if n == layers else n)
        for (lin, path, i, o, group), n in counts.items()
    ]
    mixer: list[tuple[tuple[int, ...], int]] = [((length,), n) for length, n in vectors.items()]
    if ple:
        # the model's PLE: embed_tokens_per_layer, per_layer_model_projection (an nn.Linear outside the layers:
        # one instance), per_layer_projection_norm; per layer post_per_layer_input_norm (H)
        vocab_pl = config_int(cfg, "vocab_size_per_layer_input", name, default=262_144)
        linears.append(LinearSpec("per_layer_model_projection", h, layers * ple, False, "mlp",
                                  path="per_layer_model_projection", count=1))  # fmt: skip
        mixer += [((vocab_pl, layers * ple), 1), ((ple,), 1), ((h,), layers)]
    return ModelSpec(
        model_type="gemma4_text",
        intermediate_size=inter,
        num_hidden_layers=layers,
        tie_word_embeddings=config_bool(cfg, "tie_word_embeddings", name, True),
        linears=tuple(linears),
        norm="rms",
        norms_per_layer=4 + (3 if moe else 0),
        moe_params=moe_params,
        mlp="gated",
        num_local_experts=experts,
        num_experts_per_tok=top_k,
        sliding_window=config_int(cfg, "sliding_window", name, default=512),
        layer_types=kinds,
        mixer_tensors=tuple(mixer),
        **common,
    )


# Gemma4VisionConfig's defaults (transformers 5.25 configuration_gemma4.py) for the fields the tower count reads
GEMMA4_VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 16, "num_attention_heads": 12,
    "num_key_value_heads": 12, "head_dim": 64, "patch_size": 16, "position_embedding_size": 10 * 1024,
}  # fmt: skip


def gemma4_tower_tensors(
    cfg: Mapping[str, Any], text_hidden: int, name: str
) -> tuple[tuple[tuple[tuple[int, ...], int, bool], ...], str]:
    """A gemma4 wrapper's tensors outside its text model, counted by hand (the architecture table's gemma4 record
    was built from Gemma4Config's defaults, which have no vision_config): `Gemma4VisionModel` (patch_embedder:
    input_proj nn.Linear (3·patch² -> V), position_embedding_table (2, positions, V); per encoder layer q / k / v /
    o and the gated MLP as `Gemma4ClippableLinear` around an nn.Linear without bias, q_norm / k_norm over head_dim,
    four V-sized norms; the pooler has no parameter) and `embed_vision.embedding_projection` (nn.Linear V -> H;
    its pre-projection norm has no weight). As (shape, count, bitsandbytes packs it), and a note for the audio
    tower (`audio_config`), which is not counted."""
    vision = cfg.get("vision_config")
    tensors: list[tuple[tuple[int, ...], int, bool]] = []
    if isinstance(vision, Mapping):
        v = {**GEMMA4_VISION_DEFAULTS, **{k: val for k, val in vision.items() if val is not None}}
        keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim")  # fmt: skip
        dims = {k: config_int(v, k, name) for k in keys}
        patch = config_int(v, "patch_size", name)
        positions = config_int(v, "position_embedding_size", name)
        hv, inter, n = dims["hidden_size"], dims["intermediate_size"], dims["num_hidden_layers"]
        q, kv = dims["num_attention_heads"] * dims["head_dim"], dims["num_key_value_heads"] * dims["head_dim"]
        tensors = [
            ((hv, 3 * patch * patch), 1, True),
            ((2, positions, hv), 1, False),
            ((q, hv), n, True), ((kv, hv), 2 * n, True), ((hv, q), n, True),
            ((inter, hv), 2 * n, True), ((hv, inter), n, True),
            ((dims["head_dim"],), 2 * n, False), ((hv,), 4 * n, False),
            ((text_hidden, hv), 1, True),
        ]  # fmt: skip
    note = "the audio tower (audio_config) is not counted" if cfg.get("audio_config") else ""
    return tuple(tensors), note


def layer_linears(m: ModelSpec, index: int) -> tuple[int, int, tuple[LinearSpec, ...]]:
    """Layer `index`'s (head_dim, key heads, its linears as one-per-layer LinearSpecs), for the walk."""
    d = gemma4_dims(m)
    head_dim, kv = d["shapes"][index]
    kind, mode = m.layer_types[index], d["modes"][index]
    h, heads = m.hidden_size, m.num_attention_heads
    width = m.intermediate_size * (2 if d["double_wide"] and mode == "reuse" else 1)
    wanted = {"q_proj": (h, heads * head_dim), "o_proj": (heads * head_dim, h), "gate_proj": (h, width),
              "up_proj": (h, width), "down_proj": (width, h)}  # fmt: skip
    if mode != "reuse":
        wanted["k_proj"] = (h, kv * head_dim)
        if not (d["k_eq_v"] and kind == "full_attention"):
            wanted["v_proj"] = (h, kv * head_dim)
    if d["per_layer_input"]:
        wanted["per_layer_input_gate"] = (h, d["per_layer_input"])
        wanted["per_layer_projection"] = (d["per_layer_input"], h)
    if m.num_local_experts:
        wanted["proj"] = (h, m.num_local_experts)
    chosen = []
    for lin in m.linears:
        if wanted.get(lin.name) == (lin.in_features, lin.out_features) and lin.name not in {c.name for c in chosen}:
            chosen.append(LinearSpec(lin.name, lin.in_features, lin.out_features, lin.bias, lin.group, path=lin.path))
    return head_dim, kv, tuple(chosen)


def tensor_parallel_config(config: Mapping[str, Any], tp: int) -> dict[str, Any]:
    """The config of one tensor-parallel rank's slice for the per-layer KV shapes: every layer type's key heads
    max(1, heads // tp), as vllm.rank_model splits num_key_value_heads."""
    out = dict(config)
    if out.get("num_global_key_value_heads"):
        out["num_global_key_value_heads"] = max(1, int(out["num_global_key_value_heads"]) // tp)
    given = out.get("per_layer_config")
    if isinstance(given, Mapping):
        out["per_layer_config"] = {
            k: {**v, "num_key_value_heads": max(1, int(v["num_key_value_heads"]) // tp)}
            if isinstance(v, Mapping) and v.get("num_key_value_heads") else v
            for k, v in given.items()
        }
    return out
