"""Weights one GPU holds when vLLM serves a model: pre-quantized formats and tensor / pipeline parallelism.

Every weight matrix of the model is listed once (`weight_matrices`) with how vLLM shards it, then counted in
the storage of its format on one rank (`served_weight_bytes`). Storage per format, for a linear of K inputs
and N outputs on one rank (vLLM 0.34.0, model_executor/layers/quantization/):

- unquantized: K·N · dtype.
- AWQ (auto_awq.py, Marlin repack keeps the sizes): qweight K·N·bits/8, scales ⌈K/g⌉·N · dtype, qzeros
  ⌈K/g⌉·N·bits/8 (g = group_size; -1: one group).
- GPTQ (auto_gptq.py): the same three tensors; a symmetric checkpoint's qzeros are loaded and retired, so they
  stay resident. vLLM ≤ 0.33's gptq_marlin.py also kept g_idx and its sort permutation (2 · int32 · K) for
  act-order checkpoints (`act_order_index`).
- int8 W8A8 (compressed-tensors): K·N + fp32 scale per output channel.
- FP8 (fp8.py): K·N bytes + fp32 scales: one per tensor, N per channel, or ⌈N/128⌉·⌈K/128⌉ per block.
- MXFP4 (mxfp4.py, gpt-oss experts): K·N/2 packed + K·N/32 E8M0 scale bytes; the MoE kernels pad the
  expert dims (Marlin and TRT-LLM: hidden to a multiple of 256, intermediate of 128;
  fused_moe/oracle/mxfp4.py `mxfp4_round_up_hidden_size_and_intermediate_size`).
- NVFP4 (modelopt.py): K·N/2 + K·N/16 FP8 scales + two fp32 global scales.
- bitsandbytes: bnb_storage.py's rules (0.5 B + absmax per 64).
- AQLM (aqlm 1.1.7 inference.py `QuantizedLinear`): codes (N/out_group)·(K/in_group)·codebooks integers of
  ⌈nbits/8⌉ bytes, codebooks codebooks·2^nbits·out_group·in_group · dtype, scales N/out_group · dtype (vLLM
  dropped AQLM; transformers loads it).

Sharding (vLLM model_executor/layers/linear.py, vocab_parallel_embedding.py, fused_moe/layer.py): column-parallel
linears (q, k, v, gate, up, expert gate_up) split N by tp, row-parallel ones (o, down, expert down) split K;
when kv_heads < tp each rank keeps one KV head (QKVParallelLinear `num_kv_head_replicas`); embeddings and
lm_head split the vocabulary padded to a multiple of 64 (`pad_vocab_size`, DEFAULT_VOCAB_PADDING_SIZE);
norms and the MoE router are replicated; experts split their intermediate dim by tp, or whole experts across
ranks with expert parallelism. Pipeline stages take ⌈layers / pp⌉ decoder layers, the first the embeddings,
the last the lm_head; the largest stage is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vramplan.estimator.bnb_storage import bnb_4bit_bytes, bnb_int8_bytes
from vramplan.spec.checkpoint_quant import MX_BLOCK, NVFP4_BLOCK, CheckpointQuant
from vramplan.spec.model import ModelSpec
from vramplan.units import ceil_div

Sharding = Literal["column", "row", "kv", "vocab", "replicated", "expert"]
VOCAB_PADDING = 64  # vLLM vocab_parallel_embedding.py DEFAULT_VOCAB_PADDING_SIZE
ROW_PARALLEL = frozenset({"o_proj", "down_proj", "dense", "dense_4h_to_h", "fc2", "out_proj", "c_proj", "wo", "w2"})
KV_NAMES = frozenset({"k_proj", "v_proj"})


def round_up(x: int, multiple: int) -> int:
    return ceil_div(x, multiple) * multiple


@dataclass(frozen=True, slots=True)
class WeightMatrix:
    """One weight of the model: (experts ×) out × in, `count` copies, sharded as `sharding`. 1-D tensors
    (norms, biases) have in_features 1. `per_layer`: one copy per decoder layer (split by pipeline stage)."""

    name: str
    out_features: int
    in_features: int
    count: int
    sharding: Sharding
    experts: int = 1
    per_layer: bool = True
    quantizable: bool = True


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def weight_matrices(m: ModelSpec) -> tuple[WeightMatrix, ...]:
    """Every parameter tensor of `m` as vLLM shards it; Σ numel = m.total_params (tests)."""
    out: list[WeightMatrix] = []
    layers = m.num_hidden_layers
    for lin in m.linears:
        leaf = _leaf(lin.name)
        shard: Sharding = "row" if leaf in ROW_PARALLEL else "kv" if leaf in KV_NAMES else "column"
        n = m.instances(lin)
        out.append(WeightMatrix(lin.name, lin.out_features, lin.in_features, n, shard))
        if lin.bias:  # a column-parallel bias splits with its outputs; a row-parallel one is replicated
            out.append(WeightMatrix(lin.name + ".bias", lin.out_features, 1, n,
                                    "replicated" if shard == "row" else shard, quantizable=False))  # fmt: skip
    routed = m.moe_layers  # DeepSeek-V3: the layers past first_k_dense_replace
    for p in m.moe_params:
        if p.experts > 1:
            out.append(WeightMatrix(p.name, p.out_features, p.in_features, routed, "expert", experts=p.experts))
        else:  # the router
            out.append(WeightMatrix(p.name, p.out_features, p.in_features, routed, "replicated", quantizable=False))
    if m.approximation is not None:  # generic: every non-Linear tensor from the architecture table
        for shape, n in m.other_tensors:
            per_layer = n == layers
            if len(shape) == 3:
                e, a, b = shape
                out.append(WeightMatrix("experts", a, b, n, "expert", experts=e, per_layer=per_layer))
            elif len(shape) == 2 and m.vocab_size in shape:
                out.append(WeightMatrix("embed_tokens", shape[0], shape[1], n, "vocab", per_layer=False,
                                        quantizable=False))  # fmt: skip
            else:
                rows, cols = (shape[0], shape[1]) if len(shape) == 2 else (shape[0] if shape else 1, 1)
                out.append(WeightMatrix("other", rows, cols, n, "replicated", per_layer=per_layer,
                                        quantizable=False))  # fmt: skip
        return tuple(out)
    out.append(WeightMatrix("embed_tokens", m.vocab_size, m.hidden_size, 1, "vocab", per_layer=False,
                            quantizable=False))  # fmt: skip
    if m.lm_head_params:
        out.append(WeightMatrix("lm_head", m.vocab_size, m.hidden_size, 1, "vocab", per_layer=False,
                                quantizable=False))  # fmt: skip
        if m.lm_head_bias:
            out.append(WeightMatrix("lm_head.bias", m.vocab_size, 1, 1, "vocab", per_layer=False, quantizable=False))
    counted = sum(w.out_features * w.in_features * w.experts * w.count for w in out)
    rest = m.total_params - counted  # norms (and bloom's embedding norm): replicated
    out.append(WeightMatrix("norms", rest, 1, 1, "replicated", per_layer=False, quantizable=False))
    return tuple(out)


def _shard(w: WeightMatrix, m: ModelSpec, tp: int, expert_parallel: bool) -> tuple[int, int, int]:
    """(experts, out, in) of one rank's piece."""
    if w.sharding == "column":
        return 1, ceil_div(w.out_features, tp), w.in_features
    if w.sharding == "row":
        return 1, w.out_features, ceil_div(w.in_features, tp)
    if w.sharding == "kv":
        heads = max(1, m.num_key_value_heads // tp)
        return 1, heads * (w.out_features // max(m.num_key_value_heads, 1)), w.in_features
    if w.sharding == "vocab":
        return 1, ceil_div(round_up(w.out_features, VOCAB_PADDING), tp), w.in_features
    if w.sharding == "expert":
        if expert_parallel:
            return ceil_div(w.experts, tp), w.out_features, w.in_features
        # the intermediate dim splits: the one that is not hidden_size (either, when both are)
        if w.out_features != m.hidden_size:
            return w.experts, ceil_div(w.out_features, tp), w.in_features
        return w.experts, w.out_features, ceil_div(w.in_features, tp)
    return 1, w.out_features, w.in_features


def _mxfp4_padded(out_features: int, in_features: int, hidden: int, inter: int) -> tuple[int, int]:
    """One expert's dims as the MXFP4 MoE kernels pad them (per rank): the hidden side to a multiple of 256,
    the intermediate to 128 (a fused gate_up: twice the padded intermediate). `inter`: one rank's expert
    intermediate size. The out side is taken as hidden when it equals hidden_size (gpt-oss stores [H, 2I])."""

    def pad_intermediate(d: int) -> int:
        return 2 * round_up(inter, 128) if d == 2 * inter else round_up(d, 128)

    if out_features == hidden:
        return round_up(out_features, 256), pad_intermediate(in_features)
    return pad_intermediate(out_features), round_up(in_features, 256)


def matrix_bytes(
    q: CheckpointQuant | None,
    n: int,
    k: int,
    dtype_bytes: int,
    act_order_index: bool = False,
    expert_dims: tuple[int, int] | None = None,
) -> tuple[int, int]:
    """(weights, quantization constants) of one N×K matrix on one rank in format `q` (None: unquantized).
    `expert_dims`: (hidden_size, one rank's expert intermediate) for a MoE expert (MXFP4 pads those)."""
    if q is None:
        return n * k * dtype_bytes, 0
    if q.format in ("awq", "gptq"):
        groups = 1 if q.group_size <= 0 else ceil_div(k, q.group_size)
        state = groups * n * dtype_bytes + (groups * n * q.bits // 8 if q.stores_zeros else 0)
        if q.format == "gptq" and q.act_order and act_order_index:
            state += 2 * 4 * k  # g_idx + g_idx_sort_indices, int32 (gptq_marlin.py, vLLM ≤ 0.33)
        return ceil_div(n * k * q.bits, 8), state
    if q.format == "int8":
        return n * k, n * 4
    if q.format == "fp8":
        scales = {"tensor": 1, "channel": n}.get(q.fp8_strategy) or ceil_div(n, q.block[0]) * ceil_div(k, q.block[1])
        return n * k, scales * 4
    if q.format == "mxfp4":
        if expert_dims is not None:
            n, k = _mxfp4_padded(n, k, *expert_dims)
        return n * k // 2, ceil_div(n * k, MX_BLOCK)
    if q.format == "nvfp4":
        return n * k // 2, ceil_div(n * k, NVFP4_BLOCK) + 2 * 4
    if q.format == "aqlm":
        codebooks, nbits, out_group, in_group = q.aqlm_codebooks
        codes = ceil_div(n, out_group) * ceil_div(k, in_group) * codebooks * ceil_div(nbits, 8)
        return codes, codebooks * 2**nbits * out_group * in_group * dtype_bytes + ceil_div(n, out_group) * dtype_bytes
    if q.bits == 4:  # bitsandbytes
        return bnb_4bit_bytes(n * k, q.bnb_double_quant)
    return bnb_int8_bytes(n, k)


def _quantized(w: WeightMatrix, q: CheckpointQuant | None) -> bool:
    if q is None or not w.quantizable or w.in_features == 1:
        return False
    if q.format == "mxfp4" and q.source == "mxfp4" and w.sharding != "expert":  # gpt-oss: experts only
        return False
    return not any(part in w.name for part in q.unquantized)


def served_weight_bytes(
    m: ModelSpec,
    dtype_bytes: int,
    q: CheckpointQuant | None,
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
    expert_parallel: bool = False,
    act_order_index: bool = False,
) -> tuple[int, int]:
    """(weights, quantization constants) on the most loaded GPU: one tensor-parallel rank of the largest
    pipeline stage (the first holds the embeddings, the last the lm_head)."""
    tp, pp = tensor_parallel_size, pipeline_parallel_size
    stage_layers = ceil_div(m.num_hidden_layers, pp)
    inter = int(m.config.get("moe_intermediate_size") or m.intermediate_size)
    expert_dims = (m.hidden_size, inter if expert_parallel else ceil_div(inter, tp))
    layer_w = layer_q = 0
    first_w = last_w = 0  # per-stage extras: embeddings (first stage), lm_head and norms (last)
    for w in weight_matrices(m):
        experts, n, k = _shard(w, m, tp, expert_parallel)
        fmt = q if _quantized(w, q) else None
        dims = expert_dims if w.sharding == "expert" else None
        wb, qb = matrix_bytes(fmt, n, k, dtype_bytes, act_order_index, dims)
        wb, qb = wb * experts, qb * experts
        if w.per_layer:
            copies = ceil_div(w.count * stage_layers, m.num_hidden_layers) if pp > 1 else w.count
            layer_w += wb * copies
            layer_q += qb * copies
        elif pp == 1:
            layer_w += wb * w.count
        elif w.name.startswith("embed"):
            first_w += wb * w.count
        else:
            last_w += wb * w.count
    return layer_w + max(first_w, last_w), layer_q


def checkpoint_weight_bytes(m: ModelSpec, q: CheckpointQuant, dtype_bytes: int) -> tuple[int, int, int]:
    """(quantized weights, quantization constants, parameters they replace) of a pre-quantized checkpoint as
    transformers loads it for training on one GPU: `matrix_bytes` per quantized matrix, no vocabulary padding.

    transformers' layouts where they differ from vLLM's: gptqmodel registers `g_idx` (int32 · in) for every GPTQ
    linear and keeps fp16 scales (nn_modules/qlinear/__init__.py `_register_gptq_buffers`, gptqmodel 7.7.0);
    compressed-tensors decompresses its linears to dense weights in the model dtype on the first forward
    (spec/prequantized_base.py), keeping their scales and zero points.
    """
    dense = q.source == "compressed-tensors"
    weights = state = params = 0
    for w in weight_matrices(m):
        if not _quantized(w, q):
            continue
        n, k, copies = w.out_features, w.in_features, w.experts * w.count
        wb, qb = matrix_bytes(q, n, k, 2 if q.format == "gptq" else dtype_bytes)
        if q.format == "gptq" and not dense:
            qb += 4 * k  # g_idx
        weights += (n * k * dtype_bytes if dense else wb) * copies
        state += qb * copies
        params += n * k * copies
    return weights, state, params
