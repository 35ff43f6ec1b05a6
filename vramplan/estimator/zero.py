"""Model states on one rank of a sharded run: what DeepSpeed ZeRO-1/2/3 and FSDP keep of parameters, gradients
and optimizer states, and the storage figures the plan (distributed.py) builds on.

Sources: see distributed.py (DeepSpeed @ edaa7221 runtime/zero/stage_1_and_2.py and stage3.py
`estimate_zero*_model_states_mem_needs`, config.py bucket defaults; PyTorch FSDP).
"""

from __future__ import annotations

from dataclasses import dataclass

from vramplan.estimator.adapters import adapter_param_bytes
from vramplan.estimator.optimizer import optimizer_bytes
from vramplan.estimator.params import count_params, lora_targets, model_tensor_shapes, numel
from vramplan.estimator.weights import bnb_4bit_bytes, bnb_int8_bytes
from vramplan.spec import DTYPE_BYTES, ModelSpec, TrainSpec
from vramplan.spec.parallel import STAGE3_PARAM_PERSISTENCE_THRESHOLD, ParallelSpec
from vramplan.units import ceil_div

# DeepSpeed ZeRO defaults, in elements (runtime/zero/config.py DeepSpeedZeroConfig); a `deepspeed:` JSON
# overrides them through ParallelSpec.buckets.
ALLGATHER_BUCKET_SIZE = 500_000_000  # allgather_bucket_size = 5e8: splits the all-gather, allocates nothing
DS_ADDITIONAL_BUFFER_FACTOR = 1.5  # estimate_zero*_model_states_mem_needs' host-RAM headroom
MASTER_BYTES = 4  # fp32 master copy of each trainable parameter (single_partition_of_fp32_groups)
GRAD32_BYTES = 4  # fp32 gradient partition handed to the optimizer
# FSDP1 through accelerate / PEFT's FSDP-QLoRA config: forward_prefetch=False, BackwardPrefetch.BACKWARD_PRE.
FSDP_LAYERS_FORWARD = 1
FSDP_LAYERS_BACKWARD = 2


# ---------------------------------------------------------------- storage helpers


def grad_elem_bytes(t: TrainSpec) -> int:
    """Bytes per gradient element on one GPU: the LoRA adapters' (fp32), else the load dtype (as peak.phases)."""
    return adapter_param_bytes(t) if t.uses_lora else DTYPE_BYTES[t.dtype]


def engine_bytes(t: TrainSpec) -> int:
    """Bytes per element of the engine's low-precision copy: the autocast dtype (DeepSpeed bf16/fp16 mode,
    FSDP MixedPrecision.param_dtype), else the load dtype."""
    return DTYPE_BYTES[t.compute_dtype]


def frozen_float_numel(m: ModelSpec, t: TrainSpec) -> int:
    """Frozen parameters stored as floats (not bitsandbytes-packed): the ones an engine casts or gathers."""
    if t.quant != "none":
        return m.total_params - m.quantized_weight_params
    if t.method == "full":
        return m.tower_params
    if t.method == "freeze":
        return m.total_params - t.freeze_trainable_layers * m.layer_params
    return m.total_params


def _packed_bytes(t: TrainSpec, out_f: int, in_f: int) -> int:
    if t.quant == "int8":
        return bnb_int8_bytes(out_f, in_f)[0]
    return bnb_4bit_bytes(out_f * in_f, t.double_quant)[0]


def layer_packed_bytes(m: ModelSpec, t: TrainSpec) -> int:
    """Packed bitsandbytes bytes of one decoder layer's quantized Linear weights (0 unquantized)."""
    if t.quant == "none":
        return 0
    return sum(_packed_bytes(t, lin.out_features, lin.in_features) for lin in m.linears)


def largest_module(m: ModelSpec, t: TrainSpec) -> tuple[int, int]:
    """(parameter bytes, trainable elements) of the module ZeRO-3 gathers whole, in engine storage.

    DeepSpeed's `model_to_params` (stage3.py): the largest
    `sum(p.numel() for p in mod.parameters(recurse=False))` over `model.modules()`: embeddings, lm_head, each
    Linear (PEFT: base_layer, lora_A, lora_B apart), Mixtral's experts block. A 4-bit Linear counts its packed
    bytes (bnb_4bit_quant_storage holds 2 codes a byte).
    """
    lp = engine_bytes(t)
    full = t.method in ("full", "freeze")
    h, v = m.hidden_size, m.vocab_size
    mods: list[tuple[int, int]] = [(v * h * lp, v * h if t.method == "full" else 0)]
    if not m.tie_word_embeddings:
        head = v * h + (v if m.lm_head_bias else 0)
        mods.append((head * lp, head if t.method == "full" else 0))
    for lin in m.linears:
        bias = lin.out_features if lin.bias else 0
        if t.quant != "none":
            mods.append((_packed_bytes(t, lin.out_features, lin.in_features) + bias * lp, 0))
        else:
            mods.append((lin.params * lp, lin.params if full else 0))
    if t.uses_lora:
        for lin in lora_targets(m, t):
            for k in (t.lora_rank * lin.in_features, lin.out_features * t.lora_rank):
                mods.append((k * lp, k))
    if m.other_layer_params:
        experts = m.other_layer_params - m.num_local_experts * h  # the router is its own Linear-like module
        mods.append((experts * lp, experts if full else 0))
    return max(b for b, _ in mods), max(n for _, n in mods)


def persistent_numel(m: ModelSpec, t: TrainSpec, threshold: int = STAGE3_PARAM_PERSISTENCE_THRESHOLD) -> int:
    """Elements of parameters ZeRO-3 never partitions: tensors under stage3_param_persistence_threshold
    (norm weights, biases, small LoRA matrices); stage3.py `persistence_threshold`."""
    shapes = model_tensor_shapes(m)
    if t.uses_lora:
        for lin in lora_targets(m, t):
            shapes += [((t.lora_rank, lin.in_features), m.num_hidden_layers)]
            shapes += [((lin.out_features, t.lora_rank), m.num_hidden_layers)]
    return sum(numel(s) * n for s, n in shapes if numel(s) < threshold)


# ---------------------------------------------------------------- DeepSpeed ZeRO model states


@dataclass(frozen=True, slots=True)
class ZeroStates:
    """One rank's ZeRO model states in bytes: what `estimate_zero{2,3}_model_states_mem_needs` counts on the
    GPU (`gpu`), and what offload puts in host RAM (`host`, this rank's share; DeepSpeed adds 50 % to it)."""

    params: int  # low-precision parameters kept on this GPU (frozen + trainable)
    gradients: int  # low-precision gradients (stage 1: all; stage 2: this rank's partition; stage 3: none)
    grads32: int  # fp32 gradient partition
    master: int  # fp32 master weights of this rank's partition
    optimizer: int  # optimizer states of this rank's partition
    gathered: int  # stage 3: the largest module gathered, params + grads (DeepSpeed's largest_layer_memory)
    host: int

    @property
    def gpu(self) -> int:
        return self.params + self.gradients + self.grads32 + self.master + self.optimizer + self.gathered


def zero_states(
    stage: int,
    *,
    trainable: int,
    gpus: int,
    frozen_bytes: int = 0,
    lp: int = 2,
    optim_bytes: int | None = None,
    largest_param_bytes: int = 0,
    largest_grad_numel: int = 0,
    offload: str = "none",
    grad_numel: int | None = None,
) -> ZeroStates:
    """Per-rank model states of ZeRO stage 1/2/3 over N = `gpus` ranks; P = trainable, lp = 2 (bf16/fp16).

    Per trainable element (`optim_bytes` = optimizer states for fp32 params, 8·P for Adam):
      stage 1: lp·P params + lp·P grads + (4 grads32 + 4 master + 8 Adam)·P/N
      stage 2: lp·P params + (lp grads + 4 grads32 + 4 master + 8 Adam)·P/N   = 2P + 18P/N   (bf16, Adam)
      stage 3: (lp params + 4 grads32 + 4 master + 8 Adam)·P/N + 2·lp·largest = 18P/N + 4·largest
    offload optimizer: grads32, master and optimizer states go to host (stage 2 also its lp grads: 2P on the
    GPU); offload params (stage 3): lp params too, leaving only the gathered largest module on the GPU.
    Frozen parameters (LoRA's base) add `frozen_bytes` to params, partitioned only by stage 3.
    `grad_numel`: low-precision gradient elements alive (default: all trainable, as after backward).
    Source: DeepSpeed stage_1_and_2.py `estimate_zero2_model_states_mem_needs` ("2 = params_16bit, 18 =
    2_grads_16bit + 4_grads_32bit + 4_params_32bit + 8_optimizer_states_32bit"; PR #5099, commit f4cb866c2e,
    replaced the older 4P + 16P/N that docs memory.rst's worked example still prints), stage3.py
    `estimate_zero3_model_states_mem_needs` (`largest_layer_memory = 4 * largest_layer_params`); stage 1 has
    no DeepSpeed estimator: its gradients are not partitioned (`partition_grads = stage == 2`, engine.py).
    """
    n = gpus

    def sh(x: int) -> int:
        return ceil_div(x, n)

    optim_bytes = 8 * trainable if optim_bytes is None else optim_bytes
    g = trainable if grad_numel is None else grad_numel
    off_opt = offload in ("optimizer", "params")
    off_par = offload == "params"
    if stage == 3:
        params = sh(frozen_bytes) + sh(trainable) * lp
        grads = 0
    else:
        params = frozen_bytes + trainable * lp
        grads = g * lp if stage == 1 else (0 if off_opt else sh(g) * lp)
    grads32 = sh(trainable) * GRAD32_BYTES
    master = sh(trainable) * MASTER_BYTES
    optim = sh(optim_bytes)
    gathered = largest_param_bytes + largest_grad_numel * lp if stage == 3 else 0
    host = 0
    if off_opt:
        host += grads32 + master + optim
        grads32 = master = optim = 0
    if off_par:
        host += params
        params = 0
    return ZeroStates(params, grads, grads32, master, optim, gathered, host)


def zero_states_for(m: ModelSpec, t: TrainSpec, p: ParallelSpec, grad_numel: int | None = None) -> ZeroStates:
    """`zero_states` for this model and step: frozen floats cast to the engine dtype, optimizer states from
    `estimate.optimizer` on fp32 (master) parameters, DeepSpeed's largest module."""
    lp = engine_bytes(t)
    big_bytes, big_grad = largest_module(m, t)
    ff = frozen_float_numel(m, t)
    packed = layer_packed_bytes(m, t)
    return zero_states(
        p.stage,
        trainable=count_params(m, t).trainable,
        gpus=p.gpus,
        frozen_bytes=m.num_hidden_layers * packed + ff * lp,
        lp=lp,
        optim_bytes=optimizer_bytes(m, t, MASTER_BYTES).states,
        largest_param_bytes=big_bytes,
        largest_grad_numel=big_grad,
        offload=p.offload,
        grad_numel=grad_numel,
    )
