"""Several GPUs: one GPU's share of a data-parallel run under DDP, DeepSpeed ZeRO-1/2/3 or PyTorch FSDP.

`shard(m, t, p, single)` takes the one-GPU Breakdown (the phases of `estimate.peak.phases`) and rewrites its
model-state components as each engine lays them out on one rank. Activations, logits and the layer workspace
belong to one micro-batch and are unchanged by data parallelism: every rank runs the same
`per_device_train_batch_size`. Engine buffers (communication buckets, all-gathered layers) are added to
`temporaries` and named in `ParallelPlan.buffers`; host RAM held by offload is reported apart.

Component mapping: `weights` frozen parameters, `trainable` trainable parameters (engine storage dtype),
`gradients` low-precision gradients + ZeRO's fp32 gradient partition, `optimizer_states` optimizer states +
ZeRO's fp32 master weights.

Sources read for this module:
- DeepSpeed, github.com/deepspeedai/DeepSpeed @ edaa7221267243c7be7fb49c5d5f5c4fb97b4641:
  runtime/zero/stage_1_and_2.py (`estimate_zero2_model_states_mem_needs`, `setup_buckets`,
  `_release_ipg_buffers`), runtime/zero/stage3.py (`estimate_zero3_model_states_mem_needs`, `model_to_params`,
  the IPG bucket and `grad_partitions_flat_buffer`), runtime/zero/config.py (bucket defaults; `overlap_comm`
  defaults to True for stage 3 only), runtime/engine.py `_configure_distributed_model` (bf16/fp16 casts every
  floating parameter), docs/code-docs/source/memory.rst ("Memory Requirements").
- PyTorch, github.com/pytorch/pytorch: torch/distributed/fsdp/api.py @ 0aafd810d15f (`BackwardPrefetch`:
  BACKWARD_PRE holds current + next parameters + current gradients; `MixedPrecision`; `CPUOffload`),
  _init_utils.py `_init_core_state` @ 00743e70eda2 (NO_SHARD at world size 1),
  _fully_shard/_fully_shard.py @ 0257dd1c405a (FSDP2: the root keeps its parameters unsharded after forward),
  torch/nn/parallel/distributed.py (DDP `gradient_as_bucket_view=False`: buckets hold a second gradient copy).
- accelerate, github.com/huggingface/accelerate @ 16cb6eb80dd9 utils/dataclasses.py
  `FullyShardedDataParallelPlugin` (fsdp_version 1, FULL_SHARD, forward_prefetch False),
  `GradientAccumulationPlugin.sync_each_batch=False` (accelerator.py: `no_sync` between accumulation steps).
- FSDP-QLoRA: https://huggingface.co/docs/bitsandbytes/fsdp_qlora (bnb_4bit_quant_storage must equal the
  model's float dtype); PEFT examples/sft/configs/fsdp_config_qlora.yaml (BACKWARD_PRE, offload_params).
"""

from __future__ import annotations

import dataclasses

from vramplan.breakdown import Breakdown, Components, PhaseUsage
from vramplan.estimator.adapters import adapter_param_bytes
from vramplan.estimator.build import with_phases
from vramplan.estimator.optimizer import optimizer_bytes
from vramplan.estimator.parallel_plan import ParallelPlan
from vramplan.estimator.params import count_params, lora_params
from vramplan.estimator.weights import base_param_dtype_bytes
from vramplan.estimator.zero import (
    FSDP_LAYERS_BACKWARD,
    FSDP_LAYERS_FORWARD,
    MASTER_BYTES,
    engine_bytes,
    grad_elem_bytes,
    largest_module,
    layer_packed_bytes,
    persistent_numel,
    zero_states_for,
)
from vramplan.spec import ModelSpec, TrainSpec
from vramplan.spec.parallel import ParallelSpec
from vramplan.units import ceil_div

# ---------------------------------------------------------------- per engine: the phases of one rank


Phased = tuple[tuple[Components, tuple[tuple[str, int], ...]], ...]


def _ddp(m: ModelSpec, t: TrainSpec, p: ParallelSpec, single: Breakdown) -> tuple[Phased, int]:
    """DDP keeps every state replicated; its Reducer's buckets hold a second copy of the gradients
    (`gradient_as_bucket_view=False`, the default: "the saved memory size will be equal to the total gradients
    size", torch/nn/parallel/distributed.py). At one GPU HF/accelerate do not wrap in DDP."""
    if p.gpus == 1:
        return tuple((ph.components, ()) for ph in single.phases), 0
    buckets = (("DDP gradient buckets", count_params(m, t).trainable * grad_elem_bytes(t)),)
    return tuple((_add_temps(ph.components, buckets), buckets) for ph in single.phases), 0


def _add_temps(c: Components, buffers: tuple[tuple[str, int], ...]) -> Components:
    return dataclasses.replace(c, temporaries=c.temporaries + sum(b for _, b in buffers))


def fsdp_units(m: ModelSpec, t: TrainSpec) -> tuple[int, int, int, int]:
    """(root bytes, one decoder layer's bytes, a layer's trainable elements, the root's trainable elements) as
    FSDP all-gathers them: the root unit is embeddings + final norm + lm_head (accelerate's
    TRANSFORMER_BASED_WRAP wraps each decoder layer), in MixedPrecision.param_dtype when autocasting (else the
    stored dtype); 4-bit weights at their packed size."""
    lp = engine_bytes(t)
    mixed = t.mixed_precision != "no"
    fb = lp if mixed else base_param_dtype_bytes(t)
    ab = lp if mixed else adapter_param_bytes(t)
    L = m.num_hidden_layers
    root = m.embed_params + m.final_norm_params + m.lm_head_params
    packed = layer_packed_bytes(m, t)
    layer_float = m.layer_params - (sum(lin.weight_params for lin in m.linears) if packed else 0)
    lora_layer = lora_params(m, t) // L if t.uses_lora else 0
    layer_bytes = packed + layer_float * fb + lora_layer * ab
    layer_train = lora_layer if t.uses_lora else m.layer_params
    return root * fb, layer_bytes, layer_train, root if t.method == "full" else 0


def _fsdp(m: ModelSpec, t: TrainSpec, p: ParallelSpec, single: Breakdown) -> tuple[Phased, int]:
    """FSDP FULL_SHARD over S ranks (S = a node for fsdp-hybrid, HYBRID_SHARD): parameters, gradients and
    optimizer states / S in their stored dtype (MixedPrecision keeps the sharded params in full precision).
    Unsharded, in flight: the root unit from forward to the end of backward (not resharded after forward),
    1 decoder layer in forward (forward_prefetch=False), 2 in backward + that layer's unsharded gradients
    (BACKWARD_PRE: "current set of parameters, next set of parameters, and current set of gradients"), and
    the root's gradients (lm_head/embeddings, full fine-tuning) until the root's reduce-scatter.
    Gradient accumulation: accelerate runs the micro-batches before the last under `no_sync`, where FSDP
    keeps the accumulated gradients unsharded: forward/backward hold them whole, as on one GPU.
    CPUOffload(offload_params=True): parameters, gradients and optimizer states in host RAM, step on CPU.
    S = 1: FSDP clamps to NO_SHARD (`_init_core_state`): the one-GPU plan.
    `reshard_after_forward=False` (FSDP1 SHARD_GRAD_OP, FSDP2 `fully_shard(reshard_after_forward=False)`):
    each layer stays unsharded from its forward to its backward ("parameters are not resharded after forward
    ... at the cost of higher memory", torch/distributed/fsdp/_fully_shard/_fully_shard.py docstring; FSDP1
    api.py `ShardingStrategy.SHARD_GRAD_OP`): all L layers at the end of forward and the start of backward
    (the backward figure is that start, an upper bound of its later moments).
    """
    s = p.shard_size
    if s == 1:
        return tuple((ph.components, ()) for ph in single.phases), 0
    off = p.offload == "params"
    ob = optimizer_bytes(m, t, grad_elem_bytes(t))
    root, layer, layer_train, root_train = fsdp_units(m, t)
    rb = engine_bytes(t) if t.mixed_precision != "no" else grad_elem_bytes(t)
    root_name = "FSDP unsharded root unit (embeddings, lm_head)"
    out = []
    host = 0
    for ph in single.phases:
        c = ph.components
        keys = ["weights", "trainable", "optimizer_states"]
        if ph.phase == "optimizer" or t.grad_accum == 1:
            keys.append("gradients")
        states = {k: ceil_div(getattr(c, k), s) for k in keys}
        temps = c.temporaries
        if ph.phase == "optimizer":
            temps += (0 if off else ceil_div(ob.step_temporaries, s)) - ob.step_temporaries
            if off:
                host = sum(states.values())
        if off:
            states = dict.fromkeys(states, 0)
        buffers: tuple[tuple[str, int], ...] = ()
        held = m.num_hidden_layers if not p.reshard_after_forward else None
        if ph.phase == "forward":
            n_fwd = held or FSDP_LAYERS_FORWARD
            name = f"FSDP unsharded decoder layer{'s' if n_fwd > 1 else ''} ({n_fwd})"
            buffers = ((root_name, root), (name, n_fwd * layer))
        elif ph.phase == "backward":
            n_bwd = held or FSDP_LAYERS_BACKWARD
            buffers = (
                (root_name, root),
                (f"FSDP unsharded decoder layers ({n_bwd})", n_bwd * layer),
                ("FSDP unsharded gradients (a layer + the root)", (layer_train + root_train) * rb),
            )
        out.append((_add_temps(dataclasses.replace(c, **states, temporaries=temps), buffers), buffers))
    return tuple(out), host


def elements(n: int) -> str:
    """A bucket size as DeepSpeed's JSON writes it: 5e8 for 500,000,000, else the integer (16,777,216)."""
    text = str(n)
    digits = text.rstrip("0")
    if n > 0 and len(digits) == 1 and len(text) > 3:
        return f"{digits}e{len(text) - 1}"
    return f"{n:,}"


def _zero(m: ModelSpec, t: TrainSpec, p: ParallelSpec, single: Breakdown) -> tuple[Phased, int]:
    """DeepSpeed ZeRO stage 1/2/3 (see `zero_states`), phase by phase:
    - low-precision gradients follow the one-GPU phases (alive in backward, and in forward with accumulation);
      stage 1/2's fp32 gradient partition exists during `step()` only; stage 3's `grad_partitions_flat_buffer`
      (fp32) is allocated at init and kept.
    - buffers: the reduce (IPG) bucket, reduce_bucket_size elements in the engine dtype, one since
      overlap_comm defaults to False for stages 1/2, two with `overlap_comm: true` (stage_1_and_2.py
      `backward`: `buf_1` "double buffers ... when overlap_comm is enabled"), allocated in backward and released
      after it (stage_1_and_2.py `setup_buckets`, `_release_ipg_buffers`); stage 3 allocates it once at
      init. allgather_bucket_size allocates nothing: stage 1/2 all-gather into the flat low-precision buffer
      in place (runtime/utils.py `all_gather_dp_groups` -> `all_gather_into_tensor`).
    - stage 3: the largest module gathered (params in forward, + grads in backward), prefetch up to
      stage3_prefetch_bucket_size elements, all within stage3_max_live_parameters; parameters under
      stage3_param_persistence_threshold elements stay whole on every rank.
    The optimizer step's temporaries are those of the fp32 partition (none on the GPU with offload: CPU Adam).
    """
    lp = engine_bytes(t)
    ge = grad_elem_bytes(t)
    stage, n = p.stage, p.gpus
    off_opt = p.offload in ("optimizer", "params")
    ob_single = optimizer_bytes(m, t, ge)
    ob32 = optimizer_bytes(m, t, MASTER_BYTES)
    zb = p.buckets.resolved(m.hidden_size)  # sizes of the deepspeed JSON, "auto" as the HF integration fills
    ipg = 2 if stage in (1, 2) and zb.overlap_comm else 1
    size = elements(zb.reduce_bucket_size)
    name = (
        f"reduce buckets (2, overlap_comm; reduce_bucket_size {size})"
        if ipg == 2
        else f"reduce bucket (reduce_bucket_size {size})"
    )
    bucket = (name, ipg * zb.reduce_bucket_size * lp)
    big_bytes, big_grad = largest_module(m, t)
    prefetch_numel = zb.stage3_prefetch_bucket_size
    prefetch = max(0, min(prefetch_numel, zb.stage3_max_live_parameters - big_bytes // lp)) * lp
    pers = (
        persistent_numel(m, t, zb.stage3_param_persistence_threshold) * lp
    )  # whole on every rank; params count a 1/N share (none if offloaded)
    pers -= 0 if p.offload == "params" else ceil_div(pers, n)
    trainable = _zero_trainable_params(m, t, p)
    out = []
    host = 0
    for ph in single.phases:
        c = ph.components
        st = zero_states_for(m, t, p, grad_numel=c.gradients // ge)
        host = max(host, st.host)
        temps = c.temporaries
        if ph.phase == "optimizer":
            temps += (0 if off_opt else ceil_div(ob32.step_temporaries, n)) - ob_single.step_temporaries
        buffers: list[tuple[str, int]] = []
        if stage == 3 or ph.phase == "backward":
            buffers.append(bucket)
        if stage == 3:
            if ph.phase != "optimizer":
                grads = big_grad * lp if ph.phase == "backward" else 0
                buffers.append(("largest module all-gathered (ZeRO-3)", big_bytes + grads))
                buffers.append((f"prefetch (stage3_prefetch_bucket_size {elements(prefetch_numel)})", prefetch))
            threshold = zb.stage3_param_persistence_threshold
            buffers.append((f"persistent small params (threshold {elements(threshold)})", pers))
        c2 = dataclasses.replace(
            c,
            weights=st.params - trainable if st.params else 0,
            trainable=trainable if st.params else 0,
            gradients=st.gradients + (st.grads32 if (stage == 3 or ph.phase == "optimizer") else 0),
            optimizer_states=st.master + st.optimizer,
            temporaries=temps,
        )
        out.append((_add_temps(c2, tuple(buffers)), tuple(buffers)))
    return tuple(out), host


def _zero_trainable_params(m: ModelSpec, t: TrainSpec, p: ParallelSpec) -> int:
    """Bytes of this rank's low-precision trainable parameters (all of them below stage 3)."""
    pt = count_params(m, t).trainable
    return (ceil_div(pt, p.gpus) if p.stage == 3 else pt) * engine_bytes(t)


def shard(m: ModelSpec, t: TrainSpec, p: ParallelSpec, single: Breakdown) -> ParallelPlan:
    """One rank's plan from the one-GPU Breakdown `single` of (m, t): the same overheads (the allocator's
    figure follows the rank's own tensor peak), so an unchanged plan (--gpus 1 with ddp / fsdp) is the
    one-GPU Breakdown exactly."""
    if p.strategy == "ddp":
        phased, host = _ddp(m, t, p, single)
    elif p.stage:
        phased, host = _zero(m, t, p, single)
    else:
        phased, host = _fsdp(m, t, p, single)
    phases = tuple(PhaseUsage(ph.phase, c, ph.moment) for ph, (c, _) in zip(single.phases, phased, strict=True))
    peak = max(phases, key=lambda ph: ph.total)
    paged = single.paged_bytes
    if p.stage:
        paged = 0 if p.offload != "none" else ceil_div(optimizer_bytes(m, t, MASTER_BYTES).paged, p.gpus)
    elif p.shard_size > 1:
        paged = 0 if p.offload == "params" else ceil_div(paged, p.shard_size)
    b = with_phases(single, phases, paged)
    buffers = phased[phases.index(peak)][1]
    master = zero_states_for(m, t, p).master if p.stage else 0
    return ParallelPlan(p, b, single, buffers, host, master)


ALTERNATIVES: tuple[tuple[str, str], ...] = (
    ("zero2", "none"),
    ("zero3", "none"),
    ("fsdp", "none"),
    ("zero2", "optimizer"),
    ("zero3", "optimizer"),
    ("zero3", "params"),
    ("fsdp", "params"),
)


def alternatives(m: ModelSpec, t: TrainSpec, pp: ParallelPlan, limit: int = 3) -> tuple[ParallelPlan, ...]:
    """Other engines / offloads on the same GPUs that lower the per-GPU total, each planned in full: those
    that fit first, less offload first (optimizer states before parameters), then by per-GPU bytes."""
    p = pp.spec
    found = []
    for strategy, offload in ALTERNATIVES:
        if (strategy, offload) == (p.strategy, p.offload) or (p.gpus == 1 and offload == "none"):
            continue
        q = dataclasses.replace(p, strategy=strategy, offload=offload, notes=())
        alt = shard(m, t, q, pp.single)
        if alt.per_gpu_bytes < pp.per_gpu_bytes:
            found.append(alt)
    order = {"fits": 0, "tight": 1, "oom": 2, None: 3}
    slower = {"none": 0, "optimizer": 1, "params": 2}
    found.sort(key=lambda a: (order[a.breakdown.verdict], slower[a.spec.offload], a.per_gpu_bytes))
    return tuple(found[:limit])


__all__ = ["ParallelPlan", "alternatives", "shard"]
