"""Parameter counts: total, trainable, and how they split by storage.

Exact against what transformers 5.24 builds from the same config.json (tests build it on the meta device)
and against PEFT 0.21.2 `get_nb_trainable_parameters()` for the adapters.
"""

from __future__ import annotations

from dataclasses import dataclass

from vramplan.spec import LinearSpec, ModelSpec, ParamSpec, TrainSpec, lora_moe_targets
from vramplan.spec.family_traits import PROJECTION_QK_NORM


def lora_params_per_linear(lin: LinearSpec, r: int, dora: bool) -> int:
    """lora_A (r x in) + lora_B (out x r); DoRA adds a magnitude vector of out_features.

    Source: peft/tuners/lora/layer.py LoraLayer.update_layer (nn.Linear(in, r), nn.Linear(r, out), no bias);
    peft/tuners/lora/dora.py DoraLinearLayer (`weight` of shape out_features).
    """
    return r * (lin.in_features + lin.out_features) + (lin.out_features if dora else 0)


def lora_moe_shapes(p: ParamSpec, r: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(lora_A, lora_B) weight shapes PEFT gives a router / expert parameter: in -> r'·E -> out.

    r' = r · len(peft_names): PEFT's rank_pattern doubles r for gate_up_proj (w1 + w3 fused). No DoRA or bias.
    Source: peft/tuners/lora/layer.py ParamWrapper.update_layer (`nn.Linear(in_features, r * num_experts)`,
    `nn.Linear(r * num_experts, out_features)`); transformers_weight_conversion.py `_convert_peft_config_moe`.
    """
    rank = r * len(p.peft_names) * p.experts
    return (rank, p.in_features), (p.out_features, rank)


def lora_targets(m: ModelSpec, t: TrainSpec) -> tuple[LinearSpec, ...]:
    return tuple(lin for lin in m.linears if lin.name in t.lora_target)


def lora_instances(m: ModelSpec, t: TrainSpec, lin: LinearSpec) -> int:
    """How many copies of `lin` carry an adapter: all the model holds, or the layers a regex selected."""
    return dict(t.lora_layers).get(lin.name, m.instances(lin))


def lora_param_shapes(shape: tuple[int, ...], r: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(lora_A, lora_B) of PEFT's lora.ParamWrapper on a `target_parameters` tensor: (E, in, out) -> r·E
    (peft 0.21.2 tuners/lora/layer.py ParamWrapper `_get_in_out_features`, `update_layer`); 2-D (out, in): r."""
    experts, n_in, n_out = (shape[0], shape[1], shape[2]) if len(shape) == 3 else (1, shape[1], shape[0])
    return (r * experts, n_in), (n_out, r * experts)


def embedding_lora_shapes(m: ModelSpec, t: TrainSpec) -> list[tuple[Shape, int]]:
    """LoRA on the embeddings: lora.Embedding's lora_embedding_A (r, vocab) and _B (hidden, r); lm_head's
    lora.Linear A (r, hidden), B (vocab, r) (peft 0.21.2 tuners/lora/layer.py Embedding / Linear update_layer)."""
    out: list[tuple[Shape, int]] = []
    for role in t.lora_embeddings:
        n_in, n_out = (m.vocab_size, m.hidden_size) if role == "embed_tokens" else (m.hidden_size, m.vocab_size)
        out += [((t.lora_rank, n_in), 1), ((n_out, t.lora_rank), 1)]
    return out


def saved_module_shapes(m: ModelSpec, t: TrainSpec) -> list[tuple[Shape, int]]:
    """`modules_to_save` copies (ModulesToSaveWrapper deep-copies the module, trainable): embedding or lm_head
    weight (vocab, hidden), lm_head's bias when it has one."""
    out: list[tuple[Shape, int]] = []
    for role in t.modules_to_save:
        out.append(((m.vocab_size, m.hidden_size), 1))
        if role == "lm_head" and m.lm_head_bias:
            out.append(((m.vocab_size,), 1))
    return out


def saved_module_params(m: ModelSpec, t: TrainSpec) -> int:
    return sum(numel(shape) * n for shape, n in saved_module_shapes(m, t)) if t.uses_lora else 0


def lora_params(m: ModelSpec, t: TrainSpec) -> int:
    """Every adapter parameter: decoder-layer linears, Mixtral's router / experts by name, `target_parameters`
    tensors, the embeddings (not the `modules_to_save` copies: saved_module_params)."""
    if not t.peft.lora_equivalent:  # another PEFT method's tensors (estimator/peft_methods.py)
        return sum(numel(shape) * n for shape, n in trainable_shapes(m, t))
    total = sum(
        lora_params_per_linear(lin, t.lora_rank, t.dora) * lora_instances(m, t, lin) for lin in lora_targets(m, t)
    )
    for p in lora_moe_targets(m, t.lora_target):
        total += m.moe_layers * sum(numel(shape) for shape in lora_moe_shapes(p, t.lora_rank))
    for _, shape, n in t.target_parameters:
        total += n * sum(numel(s) for s in lora_param_shapes(shape, t.lora_rank))
    return total + sum(numel(s) * n for s, n in embedding_lora_shapes(m, t))


@dataclass(frozen=True, slots=True)
class ParamCount:
    """`total` as `model.parameters()` counts after PEFT wrapping (4-bit weights counted unpacked, as PEFT does)."""

    total: int
    trainable: int


def count_params(m: ModelSpec, t: TrainSpec) -> ParamCount:
    base = m.total_params
    if t.uses_lora:
        adapters = lora_params(m, t) + saved_module_params(m, t)
        return ParamCount(total=base + adapters, trainable=adapters)
    if t.method == "freeze":
        return ParamCount(total=base, trainable=t.freeze_trainable_layers * m.layer_params)
    return ParamCount(total=base, trainable=base - m.tower_params)


Shape = tuple[int, ...]


def layer_tensor_shapes(m: ModelSpec) -> list[tuple[Shape, int]]:
    """(shape, count) of every parameter tensor of one decoder layer, as transformers registers them (the top
    layer's: a routed one where the bottom layers are dense)."""
    out: list[tuple[Shape, int]] = []
    for lin in m.layer_linears():
        out.append(((lin.out_features, lin.in_features), 1))
        if lin.bias:
            out.append(((lin.out_features,), 1))
    return out + _every_layer_shapes(m) + [(p.shape, 1) for p in m.moe_params]


def _every_layer_shapes(m: ModelSpec) -> list[tuple[Shape, int]]:
    """One layer's tensors outside its linears and MoE parameters: norms, the Mamba mixer's (every layer)."""
    out: list[tuple[Shape, int]] = [((m.hidden_size,), m.norms_per_layer * (2 if m.norm == "layer" else 1))]
    if m.head_norm_params and m.model_type in PROJECTION_QK_NORM:  # OLMo 2 / 3: over the whole projections
        out += [((m.q_dim,), 1), ((m.kv_dim,), 1)]
    elif m.head_norm_params:
        out.append(((m.head_dim,), m.head_norm_params // m.head_dim))
    if m.mamba:  # conv1d weight and bias, dt_bias, A_log, D, the gated norm's weight
        mamba = m.mamba
        out.append(((mamba.conv_dim, 1, mamba.conv_kernel), 1))
        out += [((mamba.conv_dim,), 1)] if mamba.conv_bias else []
        out.append(((mamba.heads,), 3))
        out += [((mamba.d_ssm,), 1)] if mamba.rms_norm else []
    if m.mla:  # q_a_layernorm (none without a q bottleneck), kv_a_layernorm
        out += [((n,), 1) for n in (m.mla.q_lora_rank, m.mla.kv_lora_rank) if n]
    return out


def model_tensor_shapes(m: ModelSpec, towers: bool = True) -> list[tuple[Shape, int]]:
    """(shape, count) of every parameter tensor; `towers=False` leaves out a VLM's (frozen) vision tower."""
    tower = [(shape, n) for shape, n, _ in m.tower_tensors] if towers else []
    if m.from_table:  # generic families: the architecture table's tensors, as they are
        out = [((lin.out_features, lin.in_features), m.instances(lin)) for lin in m.linears]
        out += [((lin.out_features,), m.instances(lin)) for lin in m.linears if lin.bias]
        return out + list(m.other_tensors) + tower
    h, v = m.hidden_size, m.vocab_size
    out: list[tuple[Shape, int]] = [((v, h), 1)]
    if m.embed_norm:
        out.append(((h,), 2))
    if m.position_embeddings:  # gpt_bigcode's wpe
        out.append(((m.position_embeddings, h), 1))
    out += [(shape, n * m.num_hidden_layers) for shape, n in _every_layer_shapes(m)]
    out += [((lin.out_features, lin.in_features), m.instances(lin)) for lin in m.linears]
    out += [((lin.out_features,), m.instances(lin)) for lin in m.linears if lin.bias]
    out += [(p.shape, m.moe_layers) for p in m.moe_params]
    out += list(m.mixer_tensors)  # a hybrid's (Qwen3.5) tensors in layers of one kind, with their instances
    out.append(((h,), 2 if m.norm == "layer" else 1))
    if not m.tie_word_embeddings:
        out.append(((v, h), 1))
        if m.lm_head_bias:
            out.append(((v,), 1))
    return out + tower


def trainable_shapes(m: ModelSpec, t: TrainSpec) -> list[tuple[Shape, int]]:
    """(shape, count) of every trainable tensor: what gradients and optimizer states are made of."""
    if t.uses_lora and not t.peft.lora_equivalent:
        from vramplan.estimator.peft_methods import peft_trainable_shapes

        return peft_trainable_shapes(m, t)
    if t.uses_lora:
        out: list[tuple[Shape, int]] = []
        for lin in lora_targets(m, t):
            n = lora_instances(m, t, lin)
            out += [((t.lora_rank, lin.in_features), n)]
            out += [((lin.out_features, t.lora_rank), n)]
            if t.dora:
                out += [((lin.out_features,), n)]
        for p in lora_moe_targets(m, t.lora_target):
            out += [(shape, m.moe_layers) for shape in lora_moe_shapes(p, t.lora_rank)]
        for _, shape, n in t.target_parameters:
            out += [(s, n) for s in lora_param_shapes(shape, t.lora_rank)]
        return out + embedding_lora_shapes(m, t) + saved_module_shapes(m, t)
    if t.method == "freeze":
        return [(shape, n * t.freeze_trainable_layers) for shape, n in layer_tensor_shapes(m)]
    return model_tensor_shapes(m, towers=False)


def numel(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
