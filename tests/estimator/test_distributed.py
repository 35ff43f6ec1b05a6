"""Per-GPU plans for DDP, DeepSpeed ZeRO and FSDP (vramplan.estimator.distributed).

Oracles:
- DeepSpeed's own estimators, reimplemented below line for line from deepspeedai/DeepSpeed @
  edaa7221267243c7be7fb49c5d5f5c4fb97b4641: runtime/zero/stage_1_and_2.py
  `estimate_zero2_model_states_mem_needs` and runtime/zero/stage3.py `estimate_zero3_model_states_mem_needs`
  (+ `model_to_params`, run on a transformers model built on the meta device).
- The worked examples of DeepSpeed's docs, docs/code-docs/source/memory.rst ("Memory Requirements"):
  t5-3b (2851M params, 32M largest layer) on 1 node × 8 GPUs, and t5-large (737.67M, 32.90M) on 4 GPUs.
- PyTorch FSDP's documented prefetch (torch/distributed/fsdp/api.py `BackwardPrefetch.BACKWARD_PRE`: "at the
  peak, it holds the current set of parameters, next set of parameters, and current set of gradients") and
  its NO_SHARD clamp at world size 1 (`_init_core_state`).
Multi-GPU runs cannot be measured on these machines: the engines' formulas are the oracle here.
"""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest

from vramplan.api import estimate
from vramplan.estimator.distributed import alternatives, fsdp_units, shard
from vramplan.estimator.parallel_plan import ParallelPlan
from vramplan.estimator.zero import largest_module, zero_states, zero_states_for
from vramplan.report.train import breakdown_json
from vramplan.sources.profiles import find_gpu, load_model, load_model_config
from vramplan.spec import resolve_train
from vramplan.spec.parallel import REDUCE_BUCKET_SIZE, STAGE3_PREFETCH_BUCKET_SIZE, ParallelSpec, resolve_parallel

GIB = 2**30


# ---------------------------------------------------------------- DeepSpeed's estimators, as written


def ds_zero2(total_params, num_gpus_per_node=1, num_nodes=1, cpu_offload=True, additional_buffer_factor=1.5):
    """stage_1_and_2.py estimate_zero2_model_states_mem_needs @ edaa722 (after PR #5099): (cpu, gpu) bytes."""
    total_gpus = num_nodes * num_gpus_per_node
    if cpu_offload:
        gpu_mem = 2 * total_params
        cpu_mem = total_params * max(4 * total_gpus, 16) * additional_buffer_factor
    else:
        gpu_mem = 2 * total_params + int(18 * total_params / total_gpus)
        cpu_mem = total_params * 4 * num_gpus_per_node * additional_buffer_factor
    return int(cpu_mem), int(gpu_mem)


def ds_zero2_before_5099(total_params, num_gpus_per_node=1, num_nodes=1):
    """The same function before commit f4cb866c2e (PR #5099): what docs memory.rst's example printed."""
    return 4 * total_params + int(16 * total_params / (num_nodes * num_gpus_per_node))


def ds_zero3(
    total_params,
    largest_layer_params,
    num_gpus_per_node=1,
    num_nodes=1,
    cpu_offload=True,
    cpu_offload_params=True,
    zero_init=True,
    additional_buffer_factor=1.5,
):
    """stage3.py estimate_zero3_model_states_mem_needs @ edaa722: (cpu, gpu, largest_layer_memory) bytes."""
    total_gpus = num_nodes * num_gpus_per_node
    gpus_factor = 1 / num_nodes
    largest_layer_memory = 4 * largest_layer_params
    if cpu_offload:
        if cpu_offload_params:
            gpu_mem = largest_layer_memory
            if zero_init:
                cpu_mem = total_params * 18 * gpus_factor * additional_buffer_factor
            else:
                cpu_mem = total_params * max(4 * num_gpus_per_node, 18 * gpus_factor) * additional_buffer_factor
        else:
            gpu_mem = largest_layer_memory + int(2 * total_params / total_gpus)
            if zero_init:
                cpu_mem = total_params * 16 * gpus_factor * additional_buffer_factor
            else:
                cpu_mem = total_params * max(4 * num_gpus_per_node, 16 * gpus_factor) * additional_buffer_factor
    else:
        gpu_mem = largest_layer_memory + int(18 * total_params / total_gpus)
        if zero_init:
            cpu_mem = largest_layer_params * 4 * num_gpus_per_node * additional_buffer_factor
        else:
            cpu_mem = total_params * 4 * num_gpus_per_node * additional_buffer_factor
    return int(cpu_mem), int(gpu_mem), largest_layer_memory


def ds_model_to_params(model):
    """stage3.py model_to_params; parameters deduplicated by identity (meta tensors share data_ptr 0)."""
    total_params = sum({id(p): p.numel() for p in model.parameters()}.values())
    largest_layer_params = 0
    for m in model.modules():
        largest_layer_params = max(largest_layer_params, sum(p.numel() for p in m.parameters(recurse=False)))
    return total_params, largest_layer_params


def gb(n: float) -> str:
    """DeepSpeed prints `{n/2**30:.2f}GB`."""
    return f"{n / GIB:.2f}"


# ---------------------------------------------------------------- the docs' worked examples


def test_docs_zero3_t5_3b_table():
    """memory.rst, `estimate_zero3_model_states_mem_needs_all_cold(total_params=2851e6,
    largest_layer_params=32e6, num_gpus_per_node=8, num_nodes=1)`: every printed row."""
    rows = {  # (offload_param, offload_optimizer, zero_init): (per CPU, per GPU) as printed
        (True, True, True): ("71.69", "0.12"),
        (True, True, False): ("127.45", "0.12"),
        (False, True, True): ("63.72", "0.78"),
        (False, True, False): ("127.45", "0.78"),
        (False, False, True): ("1.43", "6.09"),
        (False, False, False): ("127.45", "6.09"),
    }
    for (op, oo, zi), (cpu, gpu) in rows.items():
        c, g, _ = ds_zero3(2851e6, 32e6, 8, 1, cpu_offload=oo, cpu_offload_params=op, zero_init=zi)
        assert (gb(c), gb(g)) == (cpu, gpu)
        ours = zero_states(
            3,
            trainable=2851_000_000,
            gpus=8,
            largest_param_bytes=2 * 32_000_000,
            largest_grad_numel=32_000_000,
            offload="params" if op else "optimizer" if oo else "none",
        )
        assert gb(ours.gpu) == gpu
        if zi and oo:  # steady-state host RAM of the node's 8 ranks, with DeepSpeed's 1.5 headroom
            assert gb(ours.host * 8 * 1.5) == cpu


def test_docs_zero2_t5_3b_table_and_pr_5099():
    """memory.rst zero2 example (2851e6 params, 8 GPUs): the offload row still holds (2P on the GPU); the
    no-offload row (15.93GB) is the pre-#5099 formula 4P + 16P/N; DeepSpeed's code now says 2P + 18P/N."""
    cpu, gpu = ds_zero2(2851e6, 8, 1, cpu_offload=True)
    assert (gb(cpu), gb(gpu)) == ("127.45", "5.31")
    assert gb(ds_zero2_before_5099(2851e6, 8)) == "15.93"
    assert gb(ds_zero2(2851e6, 8, 1, cpu_offload=False)[1]) == "11.28"  # 2·2851e6 + 18·2851e6/8
    assert gb(zero_states(2, trainable=2851_000_000, gpus=8).gpu) == "11.28"
    assert gb(zero_states(2, trainable=2851_000_000, gpus=8, offload="optimizer").gpu) == "5.31"


def test_docs_zero3_t5_large_cases():
    """memory.rst discussion: t5-large, 737.67M params, 32.90M largest layer, 4 GPUs, printed in MB (>> 20):
    case1 3291MB (no offload), case2 125MB (both offloaded), case3 477MB (optimizer offloaded)."""
    p, big, n = 737_670_000, 32_900_000, 4
    cases = {"none": 3291, "params": 125, "optimizer": 477}
    for off, mb in cases.items():
        ours = zero_states(3, trainable=p, gpus=n, largest_param_bytes=2 * big, largest_grad_numel=big, offload=off)
        assert ours.gpu >> 20 == mb


# ---------------------------------------------------------------- DeepSpeed's formulas, everywhere


@pytest.mark.parametrize("params", [1_000_003, 124_439_808, 2_851_000_000, 6_738_415_616, 70_553_706_496])
@pytest.mark.parametrize("gpus", [1, 2, 3, 4, 8, 16, 64])
def test_zero_states_match_deepspeed(params: int, gpus: int):
    """GPU bytes equal DeepSpeed's to the per-rank padding (< 18 B: DeepSpeed pads partitions equal too)."""
    big = params // 50
    z2 = {off: zero_states(2, trainable=params, gpus=gpus, offload=off).gpu for off in ("none", "optimizer")}
    assert 0 <= z2["none"] - ds_zero2(params, gpus, cpu_offload=False)[1] < 18
    assert z2["optimizer"] == ds_zero2(params, gpus, cpu_offload=True)[1]
    for off, (oo, op) in {"none": (False, False), "optimizer": (True, False), "params": (True, True)}.items():
        ours = zero_states(3, trainable=params, gpus=gpus, offload=off, largest_param_bytes=2 * big,
                           largest_grad_numel=big)  # fmt: skip
        cpu, gpu, _ = ds_zero3(params, big, gpus, 1, cpu_offload=oo, cpu_offload_params=op)
        assert 0 <= ours.gpu - gpu < 18
        if oo:  # host RAM: DeepSpeed's zero_init case = our steady state × 1.5, to the padding of N shards
            assert abs(ours.host * gpus * 1.5 - cpu) <= 1.5 * 18 * gpus
    if gpus <= 4:  # ZeRO-2 offload host: max(4·GPUs, 16)·P·1.5; the 4·GPUs term is the fp32 load at startup
        host = zero_states(2, trainable=params, gpus=gpus, offload="optimizer").host * gpus * 1.5
        assert abs(host - ds_zero2(params, gpus, cpu_offload=True)[0]) <= 1.5 * 16 * gpus


def test_zero3_host_ram_over_nodes():
    """ZeRO-3 host RAM is per node: DeepSpeed's gpus_factor = 1 / num_nodes; ours = a rank's share × ranks."""
    p = 6_738_415_616
    for nodes, per_node in ((2, 8), (4, 8), (3, 4)):
        n = nodes * per_node
        spec = ParallelSpec("zero3", n, per_node, "params")
        host_node = zero_states(3, trainable=p, gpus=n, offload="params").host * spec.ranks_per_node
        cpu, _, _ = ds_zero3(p, 0, per_node, nodes, cpu_offload=True, cpu_offload_params=True)
        assert host_node * 1.5 == pytest.approx(cpu, rel=1e-6)


def test_zero1_is_zero2_with_whole_gradients():
    """ZeRO-1 keeps the low-precision gradients whole (`partition_grads = stage == 2`): + lp·P·(1 − 1/N)."""
    p = 6_738_415_616
    for n in (1, 2, 8):
        z1, z2 = zero_states(1, trainable=p, gpus=n).gpu, zero_states(2, trainable=p, gpus=n).gpu
        assert z1 - z2 == 2 * p - 2 * -(-p // n)


BUILTINS = ("llama-2-7b", "llama-3-8b", "mistral-7b", "mixtral-8x7b", "phi-2", "gemma-7b", "qwen2.5-0.5b")


@pytest.mark.parametrize("name", BUILTINS)
def test_model_states_of_builtin_models_match_deepspeed(name: str):
    """Full fine-tuning, AdamW (torch foreach: no device `step` tensors), bf16: ZeRO-2/3 model states on one
    GPU of N are DeepSpeed's formulas with P = model.parameters() and DeepSpeed's largest module."""
    m = load_model(name)
    t = resolve_train(m, method="full", optim="adamw_torch")
    big = largest_module(m, t)[1]
    for n in (1, 2, 8):
        z2 = zero_states_for(m, t, ParallelSpec("zero2", n)).gpu
        z3 = zero_states_for(m, t, ParallelSpec("zero3", n)).gpu
        assert 0 <= z2 - ds_zero2(m.total_params, n, cpu_offload=False)[1] < 18
        assert 0 <= z3 - ds_zero3(m.total_params, big, n, cpu_offload=False, cpu_offload_params=False)[1] < 18


@pytest.mark.parametrize("name", ["qwen2.5-0.5b", "llama-3.2-1b", "phi-2", "mixtral-8x7b", "gemma-2-2b"])
def test_total_and_largest_layer_match_deepspeed_model_to_params(name: str):
    """DeepSpeed's model_to_params on the transformers model (meta device) = our count and largest module."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    _, cfg = load_model_config(name)
    cfg = {k: v for k, v in cfg.items() if k != "vramplan_profile"}
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**cfg))
    m = load_model(name)
    total, big = ds_model_to_params(model)
    assert (total, big) == (m.total_params, largest_module(m, resolve_train(m, method="full"))[1])


def test_plan_optimizer_phase_is_deepspeed_model_states():
    """In the plan, ZeRO-2's optimizer step holds exactly DeepSpeed's model states (2P + 18P/N, no
    activations then); ZeRO-3's holds 18P/N, the gathered largest layer appearing in forward/backward."""
    m = load_model("llama-2-7b")
    t = resolve_train(m, method="full", optim="adamw_torch")
    single = estimate(m, train=t)
    p, big = m.total_params, largest_module(m, t)[1]
    states = ("weights", "trainable", "gradients", "optimizer_states")
    for n in (2, 4, 8):  # 6,738,415,616 is divisible by 8: no padding
        opt2 = shard(m, t, ParallelSpec("zero2", n), single).breakdown.phases[2].components
        assert sum(getattr(opt2, k) for k in states) == ds_zero2(p, n, cpu_offload=False)[1]
        opt3 = shard(m, t, ParallelSpec("zero3", n), single).breakdown.phases[2].components
        ds3 = ds_zero3(p, big, n, cpu_offload=False, cpu_offload_params=False)
        assert sum(getattr(opt3, k) for k in states) == ds3[1] - ds3[2]


# ---------------------------------------------------------------- --gpus 1 is the one-GPU estimate


def _configs():
    models = ("llama-2-7b", "llama-3-8b", "mixtral-8x7b", "phi-2", "gemma-2-2b", "qwen2.5-0.5b", "bloom-560m")
    grid = itertools.product(
        models,
        ("full", "lora", "qlora", "freeze"),
        ("adamw_torch_fused", "adamw_torch", "adamw_8bit", "paged_adamw_8bit", "sgd", "adafactor"),
        (False, True),  # grad_ckpt
        (1, 4),  # grad_accum
    )
    return [c for i, c in enumerate(grid) if i % 7 == 0]  # a spread of 96 of the 672


@pytest.mark.parametrize(("name", "method", "optim", "ckpt", "accum"), _configs())
def test_one_gpu_is_the_single_gpu_estimate(name, method, optim, ckpt, accum):
    """--gpus 1 with ddp (the default), fsdp or fsdp-hybrid: the one-GPU Breakdown, byte for byte and in
    JSON (DDP is not wrapped on one rank; FSDP clamps to NO_SHARD at world size 1). With ddp (`plain`) the CLI
    takes ParallelPlan.one_gpu, which does not load the engines: the same plan as shard's."""
    m = load_model(name)
    t = resolve_train(m, method=method, optim=optim, grad_ckpt=ckpt, grad_accum=accum, batch=2, seq=512)
    single = estimate(m, train=t, gpu=find_gpu("a100-80"))
    for strategy in ("ddp", "fsdp", "fsdp-hybrid"):
        pp = shard(m, t, resolve_parallel(t, gpus=1, strategy=strategy), single)
        assert pp.breakdown == single
        assert breakdown_json(pp.breakdown) == breakdown_json(single)
        assert pp.total_bytes == single.device_bytes
        assert pp.buffers == ()
        assert pp.host_offload_bytes == 0
        if strategy == "ddp":
            assert ParallelPlan.one_gpu(resolve_parallel(t), single) == pp


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
@pytest.mark.parametrize("strategy", ["zero1", "zero2", "zero3"])
def test_zero_on_one_gpu_changes_model_states_only(method: str, strategy: str):
    """DeepSpeed on one GPU partitions nothing but keeps its fp32 master weights and buckets (so it warns):
    activations and logits are the one-GPU ones, model states are `zero_states` at N = 1."""
    m = load_model("llama-2-7b")
    t = resolve_train(m, method=method)
    p = resolve_parallel(t, gpus=1, strategy=strategy)
    assert any("--gpus 1" in n for n in p.notes)
    single = estimate(m, train=t)
    pp = shard(m, t, p, single)
    for a, b in zip(single.phases, pp.breakdown.phases, strict=True):
        assert (a.components.activations, a.components.logits) == (
            b.components.activations,
            b.components.logits,
        )
    z = zero_states_for(m, t, p)
    assert pp.master_weights_bytes == z.master == 4 * pp.breakdown.params_trainable


# ---------------------------------------------------------------- sharding arithmetic


@pytest.mark.parametrize(
    ("name", "method"),
    [("llama-2-13b", "full"), ("llama-3-8b", "lora"), ("llama-3-70b", "qlora"), ("mixtral-8x7b", "qlora")],
)
@pytest.mark.parametrize(("strategy", "offload"), [("zero1", "none"), ("zero2", "none"), ("zero3", "none"),
                                                   ("zero2", "optimizer"), ("zero3", "optimizer"),
                                                   ("zero3", "params"), ("fsdp", "none"), ("fsdp", "params"),
                                                   ("fsdp-hybrid", "none")])  # fmt: skip
def test_per_gpu_bytes_never_grow_with_gpus(name, method, strategy, offload):
    """More ranks never cost one GPU more (ZeRO from N = 1; FSDP from N = 2, since N = 1 is NO_SHARD
    without all-gather buffers); host RAM per rank shrinks too."""
    m = load_model(name)
    t = resolve_train(m, method=method, seq=2048)
    single = estimate(m, train=t)
    start = 1 if strategy.startswith("zero") else 2
    plans = [shard(m, t, ParallelSpec(strategy, n, 8, offload), single) for n in (1, 2, 3, 4, 8, 16, 32, 64)]
    plans = [pp for pp in plans if pp.spec.gpus >= start]
    for a, b in itertools.pairwise(plans):
        assert b.per_gpu_bytes <= a.per_gpu_bytes
        assert b.host_offload_bytes_per_rank <= a.host_offload_bytes_per_rank


def test_ddp_adds_one_gradient_copy():
    """DDP replicates; its Reducer's buckets copy every gradient (gradient_as_bucket_view=False)."""
    m = load_model("llama-2-7b")
    t = resolve_train(m, method="lora")
    single = estimate(m, train=t)
    grads = 4 * single.params_trainable  # fp32 LoRA adapters
    for n in (2, 8, 64):
        pp = shard(m, t, ParallelSpec("ddp", n), single)
        for a, b in zip(single.phases, pp.breakdown.phases, strict=True):
            assert b.total - a.total == grads
        assert pp.total_bytes == n * pp.per_gpu_bytes


def test_fsdp_worked_example_llama_2_7b_full():
    """Llama-2-7B, full fine-tuning in pure bf16 (AdamW, 2 B states), FSDP over 8 GPUs:
    model states / 8; forward: root unit + 1 layer; backward (BACKWARD_PRE): root + current and next layer
    + the current layer's gradients + the root's gradients."""
    m = load_model("llama-2-7b")
    t = resolve_train(m, method="full", optim="adamw_torch")
    single = estimate(m, train=t)
    pp = shard(m, t, ParallelSpec("fsdp", 8), single)
    h, v, layer_params = 4096, 32000, 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096  # 7B: attn + mlp + norms
    root = (v * h + h + v * h) * 2  # embed_tokens + norm + lm_head, bf16
    layer = layer_params * 2
    assert fsdp_units(m, t) == (root, layer, layer_params, v * h + h + v * h)
    fwd, bwd, opt = (ph.components for ph in pp.breakdown.phases)
    s_fwd, s_bwd, s_opt = (ph.components for ph in single.phases)
    for c, s in ((fwd, s_fwd), (bwd, s_bwd), (opt, s_opt)):
        assert c.trainable == -(-s.trainable // 8)
        assert c.optimizer_states == -(-s.optimizer_states // 8)
        assert c.gradients == -(-s.gradients // 8)
        assert c.activations == s.activations
    assert fwd.temporaries - s_fwd.temporaries == root + layer
    assert bwd.temporaries - s_bwd.temporaries == root + 2 * layer + (layer_params + root // 2) * 2
    assert opt.temporaries == -(-s_opt.temporaries // 8)  # torch foreach AdamW's temporary, on the shard


def test_fsdp_gradient_accumulation_keeps_gradients_whole():
    """accelerate runs accumulation micro-batches under no_sync: FSDP's gradients stay unsharded until the
    last one, so forward/backward hold them whole; the optimizer step sees the shard."""
    m = load_model("llama-2-7b")
    t = resolve_train(m, method="full", grad_accum=4)
    single = estimate(m, train=t)
    fwd, _, opt = (ph.components for ph in shard(m, t, ParallelSpec("fsdp", 8), single).breakdown.phases)
    assert fwd.gradients == single.phases[0].components.gradients > 0
    assert opt.gradients == -(-single.phases[2].components.gradients // 8)


def test_fsdp_hybrid_shards_within_a_node():
    """HYBRID_SHARD: FULL_SHARD inside a node, replicas across nodes: 4 nodes × 8 = fsdp on 8, per GPU."""
    m = load_model("llama-2-13b")
    t = resolve_train(m, method="full")
    single = estimate(m, train=t)
    hybrid = shard(m, t, resolve_parallel(t, gpus=32, strategy="fsdp-hybrid", gpus_per_node=8), single)
    assert hybrid.spec.shard_size == 8
    assert hybrid.breakdown == shard(m, t, ParallelSpec("fsdp", 8), single).breakdown
    assert hybrid.total_bytes == 32 * hybrid.per_gpu_bytes


def test_zero3_buffers_use_deepspeed_defaults():
    """reduce bucket 5e8 elements, prefetch 5e7 elements, bf16: in every ZeRO-3 forward."""
    m = load_model("llama-2-7b")
    t = resolve_train(m, method="full")
    pp = shard(m, t, ParallelSpec("zero3", 8), estimate(m, train=t))
    fwd = pp.breakdown.phases[0]
    assert pp.breakdown.peak_phase == "forward"
    named = dict(pp.buffers)
    assert named["reduce bucket (reduce_bucket_size 5e8)"] == REDUCE_BUCKET_SIZE * 2 == 1_000_000_000
    assert named["prefetch (stage3_prefetch_bucket_size 5e7)"] == STAGE3_PREFETCH_BUCKET_SIZE * 2
    assert named["largest module all-gathered (ZeRO-3)"] == 32000 * 4096 * 2  # embed_tokens, bf16, forward
    assert fwd.components.temporaries >= sum(named.values())


def test_offload_moves_states_to_host():
    """zero3 + offload params: only gathered modules and buffers on the GPU, 18 B/param of host RAM per
    rank (DeepSpeed case 2); fsdp + offload params: parameters, gradients, optimizer states on the host."""
    m = load_model("llama-2-13b")
    t = resolve_train(m, method="full", optim="adamw_torch")
    single = estimate(m, train=t)
    z = shard(m, t, ParallelSpec("zero3", 8, 8, "params"), single)
    opt = z.breakdown.phases[2].components
    assert (opt.weights, opt.trainable, opt.gradients, opt.optimizer_states) == (0, 0, 0, 0)
    assert z.host_offload_bytes == 8 * 18 * -(-m.total_params // 8)
    f = shard(m, t, ParallelSpec("fsdp", 8, 8, "params"), single)
    s = single.phases[2].components
    assert f.host_offload_bytes_per_rank == sum(
        -(-getattr(s, k) // 8) for k in ("weights", "trainable", "gradients", "optimizer_states")
    )


def test_qlora_zero3_and_fsdp_note_the_storage_dtype():
    m = load_model("llama-3-70b")
    t = resolve_train(m, method="qlora")
    for s in ("zero3", "fsdp", "fsdp-hybrid"):
        assert any("bnb_4bit_quant_storage=bfloat16" in n for n in resolve_parallel(t, gpus=2, strategy=s).notes)
    assert not resolve_parallel(t, gpus=2, strategy="zero2").notes


def test_alternatives_lower_the_per_gpu_total():
    m = load_model("llama-3-8b")
    t = resolve_train(m, method="full")
    pp = shard(m, t, ParallelSpec("zero2", 4), estimate(m, train=t, gpu=find_gpu("3090")))
    alts = alternatives(m, t, pp)
    assert alts
    assert all(a.per_gpu_bytes < pp.per_gpu_bytes for a in alts)
    assert alts[0].breakdown.verdict in ("fits", "tight")
    assert all((a.spec.strategy, a.spec.offload) != (pp.spec.strategy, pp.spec.offload) for a in alts)


def test_parallel_spec_is_frozen_and_json_ready():
    p = resolve_parallel(resolve_train(load_model("llama-2-7b")), gpus=16, strategy="HYBRID_SHARD")
    assert p.strategy == "fsdp-hybrid"
    assert p.nodes == 2
    assert p.ranks_per_node == 8
    json.dumps(p.as_dict())
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.gpus = 2  # type: ignore[misc]
