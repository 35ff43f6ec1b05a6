"""The trainable tensors of PEFT methods other than LoRA, exact against PEFT 0.21.2's
`get_nb_trainable_parameters()` (tests/estimator/test_peft_methods.py builds each on a tiny model).

Per target linear (in → out), rank r (`--lora-rank`):
- AdaLoRA (tuners/adalora/layer.py `AdaLoraLayer.update_layer`): lora_A r×in, lora_B out×r, lora_E r×1 at
  `init_r` (= r here); its rank budget then masks E, it does not shrink the tensors.
- IA³ (tuners/ia3/layer.py): one vector per target: out_features, or in_features for a feedforward module.
- LoHa (tuners/loha/layer.py): hada_w1_a out×r, hada_w1_b r×in, hada_w2_a out×r, hada_w2_b r×in.
- LoKr (tuners/lokr/layer.py `update_layer`, decompose_both False, factor −1): in = in_m·in_n, out =
  out_l·out_k (`factorization`, near √); w1 out_l×in_m; w2 out_k×in_n, or w2_a out_k×r + w2_b r×in_n when
  r < max(out_k, in_n)/2.
- VeRA (tuners/vera/layer.py): lambda_b (out) and lambda_d (r) per target; vera_A / vera_B are shared frozen
  buffers.
- OFT (tuners/oft/layer.py, r = 0): in/b blocks of b(b−1)/2 skew-symmetric entries, b = `oft_block_size`
  adjusted to a divisor of in (`adjust_oft_parameters`).
- BOFT (tuners/boft/layer.py, n_butterfly_factor 0): boft_R 1×(in/b)×b×b and boft_s out×1.
- LoRA-FA (peft/optimizers/lorafa.py): LoRA with A frozen: B out×r trains.
- Prompt tuning (tuners/prompt_tuning/model.py): num_virtual_tokens × hidden; P-tuning
  (tuners/p_tuning/model.py, MLP encoder): that + Linear(h, h) + Linear(h, h) + Linear(h, h) with biases;
  prefix tuning (tuners/prefix_tuning/model.py, no projection): num_virtual_tokens × layers·2·kv_dim (PEFT sets
  token_dim to num_key_value_heads·head_dim).
Activations of the adapter methods are walked as LoRA of rank r on the same targets (an approximation, noted);
prompt learning lengthens every sequence by the virtual tokens.
"""

from __future__ import annotations

from vramplan.spec import LinearSpec, ModelSpec, TrainSpec
from vramplan.spec.peft_method import IA3_FEEDFORWARD

Shape = tuple[int, ...]


def factorization(dimension: int) -> tuple[int, int]:
    """PEFT's `lokr.layer.factorization(dimension, factor=-1)`: two factors, the smaller first, near √."""
    m, n = 1, dimension
    length = m + n
    while m < n:
        new_m = m + 1
        while dimension % new_m != 0:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > length or new_m > dimension:
            break
        m, n = new_m, new_n
    return (n, m) if m > n else (m, n)


def adjust_block_size(in_features: int, block: int) -> int:
    """PEFT's `OFTLayer.adjust_oft_parameters`: the divisor of in_features nearest to `block` (lower on ties)."""
    if block >= in_features:
        return in_features
    if in_features % block == 0:
        return block
    higher = block
    while higher <= in_features and in_features % higher != 0:
        higher += 1
    lower = block
    while lower > 1 and in_features % lower != 0:
        lower -= 1
    return lower if (block - lower) <= (higher - block) else higher


def target_shapes(lin: LinearSpec, t: TrainSpec) -> list[Shape]:
    """The trainable tensors PEFT adds for one target linear under `t.peft`."""
    r, i, o = t.lora_rank, lin.in_features, lin.out_features
    name = t.peft.name
    if name == "adalora":
        return [(r, i), (o, r), (r, 1)]
    if name == "ia3":
        return [(i,) if lin.name in IA3_FEEDFORWARD else (o,)]
    if name == "loha":
        return [(o, r), (r, i), (o, r), (r, i)]
    if name == "lokr":
        in_m, in_n = factorization(i)
        out_l, out_k = factorization(o)
        w2 = [(out_k, in_n)] if not r < max(out_k, in_n) / 2 else [(out_k, r), (r, in_n)]
        return [(out_l, in_m), *w2]
    if name == "vera":
        return [(o,), (r,)]
    if name == "oft":
        b = adjust_block_size(i, t.peft.block_size)
        return [(i // b, b * (b - 1) // 2)]
    if name == "boft":
        b = t.peft.block_size
        return [(1, i // b, b, b), (o, 1)]
    if name == "lora_fa":
        return [(o, r)]
    raise ValueError(f"no adapter tensors for {name}")


def prompt_shapes(m: ModelSpec, t: TrainSpec) -> list[tuple[Shape, int]]:
    n, h = t.peft.num_virtual_tokens, m.hidden_size
    if t.peft.name == "prompt_tuning":
        return [((n, h), 1)]
    if t.peft.name == "p_tuning":
        return [((n, h), 1), ((h, h), 3), ((h,), 3)]
    return [((n, m.num_hidden_layers * 2 * m.num_key_value_heads * m.head_dim), 1)]  # prefix_tuning


def peft_trainable_shapes(m: ModelSpec, t: TrainSpec) -> list[tuple[Shape, int]]:
    """(shape, count) of every trainable tensor of a non-LoRA PEFT method."""
    if t.peft.prompt_learning:
        return prompt_shapes(m, t)
    return [
        (shape, m.instances(lin)) for lin in m.linears if lin.name in t.lora_target for shape in target_shapes(lin, t)
    ]


def peft_buffer_bytes(m: ModelSpec, t: TrainSpec) -> int:
    """Frozen tensors a PEFT method adds: OFT's int64 triangle indices (tuners/oft/layer.py OFTRotationModule),
    BOFT's fp32 butterfly permutation `boft_P` (1 × in × in per target,
    tuners/boft/layer.py `update_layer`); VeRA's shared fp32 projections vera_A (r × the widest input) and
    vera_B (the widest output × r), once for the model (tuners/vera/model.py `_init_vera_A_vera_B`)."""
    targets = [lin for lin in m.linears if lin.name in t.lora_target]
    if t.peft.name == "boft":
        return sum(lin.in_features**2 * m.instances(lin) for lin in targets) * 4
    if t.peft.name == "oft":  # OFTRotationModule's int64 `rows` and `cols`: the upper-triangle indices of a block
        sizes = [(adjust_block_size(lin.in_features, t.peft.block_size), m.instances(lin)) for lin in targets]
        return sum(2 * 8 * b * (b - 1) // 2 * n for b, n in sizes)
    if t.peft.name == "vera" and targets:
        widest_in = max(lin.in_features for lin in targets)
        widest_out = max(lin.out_features for lin in targets)
        return t.lora_rank * (widest_in + widest_out) * 4
    return 0
