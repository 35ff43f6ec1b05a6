"""Invariants of the analytic estimator (the traced oracle lives in tests/oracle)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vramplan import estimate

MIB = 1024**2
MODELS = ["llama-2-7b", "tinyllama-1.1b", "qwen2.5-0.5b", "mistral-7b", "phi-2", "gemma-2-2b", "bloom-560m"]

configs = st.fixed_dictionaries(
    {
        "method": st.sampled_from(["full", "lora", "qlora", "freeze"]),
        "batch": st.integers(1, 8),
        "seq": st.integers(16, 4096),
        "lora_rank": st.sampled_from([4, 8, 16, 64]),
        "grad_ckpt": st.booleans(),
        "attn": st.sampled_from(["eager", "sdpa"]),
        "lora_dropout": st.sampled_from([0.0, 0.05]),
        "optim": st.sampled_from(["adamw_torch_fused", "adamw_torch", "adamw_8bit", "paged_adamw_8bit", "sgd"]),
    }
)


@settings(max_examples=150, deadline=None)
@given(model=st.sampled_from(MODELS), cfg=configs, which=st.sampled_from(["batch", "seq", "lora_rank"]))
def test_monotone_in_batch_seq_rank(model, cfg, which):
    a = estimate(model, **cfg)
    b = estimate(model, **{**cfg, which: cfg[which] * 2})
    assert b.peak_bytes >= a.peak_bytes
    for p_a, p_b in zip(a.phases, b.phases, strict=True):
        assert p_b.total >= p_a.total


@settings(max_examples=100, deadline=None)
@given(model=st.sampled_from(MODELS), cfg=configs, grad_accum=st.sampled_from([1, 4]))
def test_steady_state_step(model, cfg, grad_accum):
    """What a steady-state step holds at each phase, and the overheads on top of its peak."""
    b = estimate(model, **cfg, grad_accum=grad_accum)
    assert [p.phase for p in b.phases] == ["forward", "backward", "optimizer"]
    fwd, bwd, opt = (p.components for p in b.phases)
    assert all(v >= 0 for p in b.phases for v in p.components.as_dict().values())
    # what lives across steps is the same at every instant of the step
    for name in ("weights", "quant_state", "trainable", "optimizer_states"):
        assert getattr(fwd, name) == getattr(bwd, name) == getattr(opt, name), name
    # trainable parameters and their gradients at the step: one element each per trainable parameter, in the
    # trainable dtype (LoRA adapters fp32, PEFT's autocast_adapter_dtype; base parameters bf16)
    elem = 4 if cfg["method"] in ("lora", "qlora") else 2
    assert opt.trainable == b.params_trainable * elem
    assert opt.gradients == b.params_trainable * elem
    assert opt.activations == opt.logits == 0  # the step runs after backward freed the graph
    # forward holds gradients only when earlier micro-batches left theirs (zero_grad(set_to_none) after the step)
    assert fwd.gradients == (opt.gradients if grad_accum > 1 else 0)
    # the overhead model of spec/overheads.py, no calibration stored (conftest isolates the store): the
    # caching allocator's modelled slack + cuBLAS workspace 8 × 4 MiB + 8 × 16 KiB; CUDA context 450 MiB
    slack = b.reserved_bytes - b.peak_bytes - (8 * 4 * MIB + 8 * 16 * 1024)
    assert 0 <= slack <= b.peak_bytes // 2  # no replay of the grid reserved more than 1.5 × its peak
    assert b.device_bytes - b.peak_bytes - b.allocator_need_bytes == 450 * MIB


@settings(max_examples=60, deadline=None)
@given(model=st.sampled_from(MODELS), cfg=configs)
def test_cheaper_methods_hold_less(model, cfg):
    """LoRA trains fewer parameters than full fine-tuning and 4-bit weights are smaller than bf16.

    The peaks need not follow: without checkpointing, LoRA saves its dropout output and mask for every adapted
    linear, which at batch 8 × seq 180 on llama-2-7b outweighs full tuning's model states when those are paged
    (paged_adamw_8bit). So only the model states are ordered here; the peaks at the defaults are in
    test_weights_order_qlora_lora_full."""
    lora, full = (estimate(model, **{**cfg, "method": m}) for m in ("lora", "full"))
    qlora = estimate(model, **{**cfg, "method": "qlora", "kbit_prep": False})
    lo, fu, q = (b.phases[-1].components for b in (lora, full, qlora))
    assert lora.params_trainable < full.params_trainable
    assert lo.trainable + lo.gradients + lo.optimizer_states < fu.trainable + fu.gradients + fu.optimizer_states
    assert q.weights + q.quant_state < lo.weights
    assert qlora.params_trainable == lora.params_trainable  # the same adapters on other base weights


@settings(max_examples=60, deadline=None)
@given(model=st.sampled_from(MODELS), cfg=configs)
def test_device_total_sits_between_peak_and_reserved(model, cfg):
    """The verdict's device total: the peak, what the allocator must get beyond it (never more than it reserves
    with room to spare: release-and-retry only lowers it) and the CUDA context."""
    b = estimate(model, **cfg)
    assert b.reserved_bytes > b.peak_bytes
    assert b.peak_bytes < b.device_bytes - b.cuda_context_bytes <= b.reserved_bytes


def test_weights_order_qlora_lora_full():
    # kbit prep's fp32 upcast of embeddings can outweigh 4-bit savings on small large-vocab models
    # (qwen2.5-0.5b: 136M embedding params in fp32), so the order is asserted without it, and with it on 7B.
    q7 = estimate("llama-2-7b", method="qlora").components
    assert q7.weights + q7.quant_state < estimate("llama-2-7b", method="lora").components.weights
    for m in MODELS:
        q = estimate(m, method="qlora", kbit_prep=False).components
        lo = estimate(m, method="lora").components
        f = estimate(m, method="full").components
        assert q.weights + q.quant_state < lo.weights <= f.weights + f.trainable
        assert estimate(m, method="qlora", kbit_prep=False).peak_bytes < estimate(m, method="lora").peak_bytes
        assert estimate(m, method="lora").peak_bytes < estimate(m, method="full").peak_bytes


def test_gradient_checkpointing_lowers_activations():
    for m in MODELS:
        for method in ("lora", "qlora", "full"):
            on = estimate(m, method=method, grad_ckpt=True, seq=2048)
            off = estimate(m, method=method, grad_ckpt=False, seq=2048)
            assert on.phases[0].components.activations < off.phases[0].components.activations
            assert on.peak_bytes <= off.peak_bytes


def test_paged_optimizer_moves_states_out_of_peak():
    plain = estimate("llama-2-7b", method="full", optim="adamw_8bit")
    paged = estimate("llama-2-7b", method="full", optim="paged_adamw_8bit")
    assert paged.paged_bytes > 0
    assert plain.paged_bytes == 0
    assert paged.components.optimizer_states < plain.components.optimizer_states
    assert paged.peak_bytes < plain.peak_bytes
    # what left the device is what became paged (small tensors stay on the device)
    assert plain.components.optimizer_states - paged.components.optimizer_states == paged.paged_bytes


def test_eight_bit_optimizer_quarter_of_adamw():
    a = estimate("llama-2-7b", method="full", dtype="fp32", optim="adamw_torch_fused").components
    b = estimate("llama-2-7b", method="full", dtype="fp32", optim="adamw_8bit").components
    # 2 fp32 states = 8 B/param vs 2 B/param + absmax/256: a ratio just above 1/4
    assert 0.25 < b.optimizer_states / a.optimizer_states < 0.26


def test_double_quant_saves_constants():
    a = estimate("llama-2-7b", method="qlora", double_quant=False).components
    b = estimate("llama-2-7b", method="qlora", double_quant=True).components
    assert b.quant_state < a.quant_state / 3
    assert a.weights == b.weights


def test_grad_accum_keeps_grads_in_forward():
    a = estimate("llama-2-7b", method="full", grad_accum=1)
    b = estimate("llama-2-7b", method="full", grad_accum=4)
    assert a.phases[0].components.gradients == 0
    assert b.phases[0].components.gradients > 0
