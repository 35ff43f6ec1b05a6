"""A ModelSpec for any causal LM transformers can build: exact counts from the architecture table, activations
walked on a hand-modelled stand-in layer.

Parameters: every tensor `spec/architectures.py` evaluates for the config (exact against `from_config` on
meta, tests/spec/test_architectures.py). The decoder layers' `nn.Linear` / `Conv1D` weights become
`LinearSpec`s under their path inside the layer (`self_attn.q_proj`), with how many the model holds (hybrid
and MoE models hold some in only part of the layers): what bitsandbytes quantizes and LoRA targets. The rest
(embeddings, norms, 3-D expert tensors, lm_head, towers) is `other_tensors`, kept in the load dtype.

Activations: walked on a Llama decoder layer (a Mixtral one when the config routes tokens to experts) of the
same hidden size, heads, KV heads, head_dim, MLP width and layer count, with the LoRA targets mapped onto the
Llama projections they play (`walk_roles`). That is an approximation, stated in the estimate with the band
`GENERIC_ERROR_BAND`, measured by running this path on the hand-modelled families as if they were unknown
(benchmarks/generic_band.py; tests/spec/test_generic.py holds a sample of it under the band).

Remote-code types (spec/remote_code.py: Qwen-1, BTLM, MiMo, MOSS-VL) take the same path from their layout: the
Llama roles their linears play are declared there, not guessed from names (Qwen-1's `w2` passes the SiLU), and
stacks the training forward never runs (MiMo's MTP layers) are frozen weights, as a VLM's tower.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vramplan.errors import VramplanError
from vramplan.spec import architectures, llama4, remote_code
from vramplan.spec.families import known_model_spec
from vramplan.spec.family_traits import HAND_MODELLED_TYPES
from vramplan.spec.model import Approximation, LinearSpec, ModelSpec, _numel

# Largest relative difference of the device total between this path and the exact one on the hand-modelled
# families run as if unknown (benchmarks/generic_band.py, re-run 2026-12-03 with Gemma 3 and Qwen3-MoE
# hand-modelled: 56 built-in profiles x full/lora/qlora x batch 1, 4 x seq 512, 2048 x checkpointing on/off =
# 1344 rows, transformers 5.24): dense stand-in 0.24995 (phi-2: its tanh-GELU and parallel residual; gemma-2
# 0.189, bloom 0.131, phi-3 0.123, qwen3 0.119, llama / mistral / qwen2 / codellama 0.000), MoE stand-in 0.5014
# (mixtral-8x7b with LoRA: the generic path does not adapt the 3-D expert tensors that `all-linear` reaches on
# Mixtral; mixtral-8x22b 0.5009; full 0.003; qwen3-30b-a3b 0.053, qwen3-235b-a22b 0.039: its q/k norms),
# rounded up. Re-run 2026-12-03 with DeepSeek-V3 and GLM-4.5 hand-modelled (71 profiles, 1704 rows;
# glm-4.7-flash skipped: the generic path miscounts glm4_moe_lite): MoE stand-in 0.5348 (qwen3-30b-a3b LoRA:
# all-linear reaches its experts, the generic path does not adapt them; deepseek-v3 / -r1 0.5231 LoRA, 0.362
# QLoRA, 0.0004 full; glm-4.5-air 0.5145 LoRA, 0.361 QLoRA, 0.0006 full; mixtral-8x7b 0.5050), hence 0.54;
# the dense stand-in measured 0.665 there (pythia-12b QLoRA, gpt_neox, a profile added since; pythia-1.4b 0.581,
# redpajama-incite-3b 0.534; phi-2 0.250): its band is not widened here.
# The `tight` band of a generic estimate is the estimator's band plus this.
GENERIC_MOE_ERROR_BAND = 0.56  # re-run with gpt-oss hand-modelled: gpt-oss-20b LoRA b4 s2048 0.5521
# By the stand-in's fit to the layer, re-run 2026-12-03 (benchmarks/generic_band.py prints each kind's worst):
# a dense layer with a gated MLP (a linear plays gate_proj) is the Llama layer the walk follows: gemma-2 0.1894
# (its four norms, soft-capping), gemma-3 0.145, phi-3 0.123, qwen3 0.119; a GELU / ungated MLP saves fewer
# intermediates than the gated stand-in: pythia-12b 0.665 (QLoRA, gpt_neox), phi-2 0.250, bloom 0.131; a layer
# with a recurrent token mixer (an SSM's A_log / dt_bias, a causal conv1d: Mamba, gated DeltaNet, short
# convolutions) is walked as attention: falcon-h1 0.6917 (LoRA without checkpointing, its chunked scan), the one
# hybrid family hand-modelled when this was measured. Each rounded up; the estimates compared with the slack
# allocator model on both sides (a replay near the card would compare allocator figures, not the walk).
GENERIC_ERROR_BAND = 0.20  # gated MLP (the Llama stand-in's own)
GENERIC_UNGATED_ERROR_BAND = 0.67
GENERIC_HYBRID_ERROR_BAND = 0.70
# names of per-layer tensors (not nn.Linear) that mark a recurrent token mixer
_RECURRENT_TENSORS = ("A_log", "dt_bias", "conv1d.weight", "conv.weight")
TOWERS = architectures.TOWERS

_ROLES: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    # (substrings of a linear's last name, the Llama projections it plays), first match wins
    (("qkv", "c_attn", "query_key_value", "wqkv", "in_proj_qkvz"), ("q_proj", "k_proj", "v_proj")),
    (("gate_up", "w13", "fc1_gate"), ("gate_proj", "up_proj")),
    (("q_proj", "q_a_proj", "q_b_proj", "query", "wq", "q_lin"), ("q_proj",)),
    (("k_proj", "key", "wk", "k_lin"), ("k_proj",)),
    (("kv_a_proj", "kv_b_proj", "kv_proj"), ("k_proj", "v_proj")),
    (("v_proj", "value", "wv", "v_lin"), ("v_proj",)),
    (("o_proj", "out_proj", "wo", "out_lin", "dense"), ("o_proj",)),
    (("gate", "w1"), ("gate_proj",)),
    (("down", "fc2", "w2", "4h_to_h", "c_proj", "fc_out", "proj_out"), ("down_proj",)),
    (("up", "fc1", "w3", "c_fc", "h_to_4h", "fc_in", "proj_in"), ("up_proj",)),
)


def _field(fields: Mapping[str, Any], amap: Mapping[str, str], name: str) -> Any:
    """An integer field, or the wrapper's `text_config.<name>` (a VLM read as a whole)."""
    for key in (amap.get(name, name), f"text_config.{name}"):
        value = fields.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _layer_prefix(ts: tuple[architectures.Tensor, ...]) -> str:
    """The repeated decoder stack (`model.layers.*.`): of the stacks holding linears, the largest one that is
    not a vision / audio tower or an encoder."""
    sizes: dict[str, int] = {}
    for t in ts:
        if t.kind and "*" in t.key:
            prefix = t.key[: t.key.index("*") + 2]
            if not any(word in prefix.lower() for word in TOWERS):
                sizes[prefix] = sizes.get(prefix, 0) + t.numel * t.count
    if not sizes:
        return "\0"  # no stack (nothing is per layer)
    return max(sizes, key=sizes.__getitem__)


def _roles(path: str, group: str) -> tuple[str, ...]:
    last = path.rsplit(".", 1)[-1].split("#")[0].lower()
    for words, roles in _ROLES:
        if any(w in last for w in words):
            if roles == ("o_proj",) and group == "mlp":
                return ("down_proj",)
            return roles
    return ("o_proj",) if group == "attn" else ("up_proj",)


def generic_model_spec(
    cfg: Mapping[str, Any], name: str, text_part: bool = False, linearized_experts: bool = False
) -> ModelSpec:
    """ModelSpec of a model type vramplan does not hand-model, from the architecture table. `text_part`: of a
    VLM wrapper, only its text model's tensors (spec/vision.py counts the rest as the tower).
    `linearized_experts`: axolotl's `llama4_linearized_experts` (Llama 4's experts as per-expert nn.Linear)."""
    mt = cfg.get("model_type")
    if architectures.record(mt) is None:
        reason = architectures.not_built(str(mt))
        if reason is not None:
            raise VramplanError(
                f"model_type {mt!r} of {name}: transformers {architectures.table()['transformers']} cannot build "
                f"it from its own defaults ({reason}), so vramplan has no record of its layers"
            )
        from vramplan.errors import did_you_mean

        raise did_you_mean(str(mt), HAND_MODELLED_TYPES | architectures.known_types(), "model_type", f"in {name}")
    arch = architectures.record(mt)
    amap = arch["attribute_map"]
    remote = "remote_class" in arch  # a remote-code layout (spec/remote_code.py), not a transformers class
    if remote:
        remote_code.check_required(str(mt), cfg, name)
    try:
        fields = architectures.config_fields(mt, cfg)
        ts = architectures.tensors(mt, cfg)
        if mt == "llama4_text":  # by hand: the table has no rule for Maverick's dense layers (spec/llama4.py)
            ts = llama4.text_tensors(cfg, fields, name, linearized_experts)
    except (VramplanError, ZeroDivisionError, TypeError) as e:
        builder = arch.get("remote_class", "transformers")
        raise VramplanError(f"{name}: {builder} could not build this {mt} config.json: {e}") from None
    frozen = tuple(arch.get("frozen", ()))  # stacks the training forward never runs (MiMo's MTP layers)
    held = tuple((t.shape, t.count, t.kind in ("Linear", "Conv1D") and t.name.endswith(".weight") and len(t.shape) == 2)
                 for t in ts if frozen and t.key.startswith(frozen))  # fmt: skip
    ts = tuple(t for t in ts if not (frozen and t.key.startswith(frozen)))
    if text_part:
        keep = architectures.text_keys(mt, ts)
        ts = tuple(t for t in ts if t.key in keep)
    layers = next(
        (v for k in ("num_hidden_layers", "n_layer", "num_layers", "decoder_layers") if (v := _field(fields, amap, k))),
        None,
    )
    hidden = _field(fields, amap, "hidden_size") or _field(fields, amap, "d_model") or _field(fields, amap, "n_embd")
    vocab = _field(fields, amap, "vocab_size")
    if not (layers and hidden and vocab):
        raise VramplanError(f"{name}: a {mt} config.json without a layer count, hidden size or vocabulary size")
    heads = _field(fields, amap, "num_attention_heads") or 1
    head_dim = _field(fields, amap, "head_dim") or max(hidden // heads, 1)
    prefix = _layer_prefix(ts)
    keys = {t.key for t in ts}
    shapes = {t.key: t.shape for t in ts}
    linears: list[LinearSpec] = []
    other: list[tuple[tuple[int, ...], int]] = []
    bias_of = set()
    for t in ts:
        if not _is_layer_linear(t, prefix):
            continue
        # `q_proj.weight#2`: the same module in layers of another kind (another shape), its own linear here
        variant = t.key[len(t.name) :]
        path = t.name[len(prefix) : -len(".weight")]
        out_f, in_f = t.shape if t.kind != "Conv1D" else t.shape[::-1]
        bias_key = next((k for k in (f"{prefix}{path}.bias{variant}", f"{prefix}{path}.bias") if k in keys), None)
        bias = bias_key is not None and shapes[bias_key] == (out_f,)
        if bias:
            bias_of.add(bias_key)
        group = "attn" if any(w in path.lower() for w in ("attn", "attention", "mixer", "mamba")) else "mlp"
        quantizable = t.kind in ("Linear", "Conv1D")  # replace_with_bnb_linear: `type(module) is nn.Linear`
        linears.append(LinearSpec(path + variant, in_f, out_f, bias, group, path=path, count=t.count,  # type: ignore[arg-type]
                                  quantizable=quantizable))  # fmt: skip
    kv_heads = _kv_heads_of(linears, heads, head_dim) or _field(fields, amap, "num_key_value_heads") or heads
    fused_experts = 0
    layer_parameters: list[tuple[str, tuple[int, ...], int]] = []
    for t in ts:
        if not _is_layer_linear(t, prefix) and t.key not in bias_of:
            other.append((t.shape, t.count))
            if len(t.shape) == 3 and t.key.startswith(prefix) and "expert" in t.key:
                fused_experts += t.numel * t.count
            if t.key.startswith(prefix) and len(t.shape) >= 2:
                layer_parameters.append((t.name[len(prefix) :], t.shape, t.count))
    mlp_outs = [lin.out_features for lin in linears if lin.group == "mlp" and lin.in_features == hidden]
    inter = _field(fields, amap, "intermediate_size") or (max(mlp_outs) if mlp_outs else 4 * hidden)
    experts = next((v for k in ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
                    if (v := _field(fields, amap, k))), 0)  # fmt: skip
    top_k = _field(fields, amap, "num_experts_per_tok") or _field(fields, amap, "moe_top_k") or 0
    basis_cfg: dict[str, Any] = {
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": vocab,
        "tie_word_embeddings": False,
    }
    moe = bool(experts > 1 and top_k)
    basis_name, band = _dense_stand_in(linears, layer_parameters, moe, arch.get("roles", {}))
    if moe:
        moe_inter = _field(fields, amap, "moe_intermediate_size") or inter
        # Llama4TextMoe routes every token through every expert (`hidden_states.repeat(num_experts, 1)` times
        # the sigmoid scores, zero off the top-k; modeling_llama4.py, 5.24): E (token, expert) pairs per token
        routed = experts if mt == "llama4_text" else top_k
        basis_cfg.update(model_type="mixtral", num_local_experts=experts, num_experts_per_tok=routed,
                         intermediate_size=moe_inter)  # fmt: skip
        if mt == "llama4_text":  # and a shared expert (Llama4TextMLP of intermediate_size) beside the experts
            basis_cfg["shared_expert_intermediate_size"] = inter
        basis_name, band = "mixtral-like walk", max(band, GENERIC_MOE_ERROR_BAND)
    basis = known_model_spec(basis_cfg, f"{name} (stand-in)")
    basis_names = {lin.name for lin in basis.linears}
    declared = arch.get("roles", {})  # a remote layout says which Llama projection each linear plays
    roles = tuple((lin.name, role) for lin in linears for role in declared.get(lin.path) or _roles(lin.path, lin.group)
                  if role in basis_names)  # fmt: skip
    unresolved = arch.get("unresolved", [])
    note = (
        f"{len(unresolved)} tensor shapes / counts of {mt} did not fit a rule over its config fields: they take "
        "the class defaults' values, so parameter counts are exact only near the defaults"
        if unresolved
        else ""
    )
    if remote:
        note = "; ".join(x for x in (f"{mt} is remote code, {arch['remote_class']}: its layer walked as {arch['walk']}",
                                     note,
                                     f"{sum(_numel(s) * n for s, n, _ in held):,} parameters of {', '.join(frozen)} "
                                     "counted as frozen weights (not run by the training forward; adapters on them "
                                     "not counted)" if held else "") if x)  # fmt: skip
    tie = architectures._tied(fields)
    return ModelSpec(
        name=name,
        model_type=str(mt),
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        tie_word_embeddings=tie,
        max_position_embeddings=_field(fields, amap, "max_position_embeddings") or 2048,
        linears=tuple(linears),
        norm="rms",
        norms_per_layer=0,
        mlp=basis.mlp,
        num_local_experts=experts,
        num_experts_per_tok=top_k,
        config=dict(cfg),
        other_tensors=tuple(other),
        approximation=Approximation("remote" if remote else "generic", basis_name, band, note),
        walk_basis=basis,
        walk_roles=roles,
        module_prefix=prefix,
        table_expert_params=fused_experts,
        table_layer_parameters=tuple(layer_parameters),
        embedding_names=_embedding_names(mt, ts, vocab, hidden),
        tower_tensors=held,
    )


_KEY_PROJECTIONS = ("k_proj", "key", "wk", "k_lin")
_FUSED_QKV = ("qkv_proj", "query_key_value", "c_attn", "wqkv", "qkv")


def _kv_heads_of(linears: list[LinearSpec], heads: int, head_dim: int) -> int | None:
    """The key/value heads the attention really projects to, read off the key projection's shape (`k_proj` out =
    kv_heads · head_dim; a fused `query_key_value` out = (heads + 2 · kv_heads) · head_dim): what K and V
    activations and the KV cache hold. A config field can say otherwise: FalconConfig keeps `num_kv_heads` = 71
    for falcon-7b while FalconAttention uses one head under `multi_query` (modeling_falcon.py, 5.24). Only a
    direct child of the attention module counts (not an indexer's `wk`); None when there is none, when layers
    of different kinds disagree, or when a shape gives no whole number of heads dividing the query heads."""
    found: set[int] = set()
    for lin in linears:
        parts = (lin.path or lin.name).lower().split(".")
        if lin.group != "attn" or len(parts) != 2 or parts[1] not in _KEY_PROJECTIONS + _FUSED_QKV:
            continue
        width, rest = divmod(lin.out_features, head_dim)
        if rest:
            return None
        if parts[1] in _KEY_PROJECTIONS:
            found.add(width)
        elif parts[1] in _FUSED_QKV:
            kv, odd = divmod(width - heads, 2)
            found.add(kv if not odd else 0)
    if len(found) != 1:
        return None
    kv = found.pop()
    return kv if kv >= 1 and heads % kv == 0 else None


def _dense_stand_in(
    linears: list[LinearSpec], layer_parameters: list[tuple[str, tuple[int, ...], int]], moe: bool,
    declared: Mapping[str, list[str]],
) -> tuple[str, float]:
    """(what the Llama stand-in walks, its measured band) by how far the layer is from a Llama layer: a recurrent
    token mixer (Mamba's A_log / dt_bias, a causal conv1d) or an MLP without a gate widen it (GENERIC_* above).
    A MoE's experts are gated in kind: its band is the MoE one (widened only by a recurrent mixer)."""
    if any(name.endswith(_RECURRENT_TENSORS) for name, _, _ in layer_parameters):
        return "llama-like walk (recurrent layers walked as attention)", GENERIC_HYBRID_ERROR_BAND
    if not moe and not any("gate_proj" in (declared.get(lin.path) or _roles(lin.path, lin.group))
                           for lin in linears if lin.group == "mlp"):  # fmt: skip
        return "llama-like walk (an ungated MLP walked as gated)", GENERIC_UNGATED_ERROR_BAND
    return "llama-like walk", GENERIC_ERROR_BAND


def _is_layer_linear(t: architectures.Tensor, prefix: str) -> bool:
    """An nn.Linear / Conv1D weight of the decoder stack: what bitsandbytes packs and LoRA targets."""
    return bool(t.kind) and t.name.startswith(prefix) and t.name.endswith(".weight") and len(t.shape) == 2


def _embedding_names(mt: str, ts: tuple[architectures.Tensor, ...], vocab: int, hidden: int) -> tuple[str, ...]:
    """(input embedding, output embedding) module names: the output is the table's `untied` entry (present even
    when tied), the input the one other (vocab, hidden) tensor outside an nn.Linear."""
    params = architectures.record(mt)["params"]
    head = next((k for k, e in params.items() if e.get("untied")), "lm_head.weight")
    embed = next(
        (t.key for t in ts if t.key != head and t.kind is None and t.shape == (vocab, hidden) and t.count == 1),
        None,
    )
    if embed is None:
        return ()
    return (embed.removesuffix(".weight"), head.removesuffix(".weight"))
