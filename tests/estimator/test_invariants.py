"""Invariants of the analytic estimator (the traced oracle lives in tests/oracle)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vramplan import estimate
from vramplan.breakdown import COMPONENTS

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
@given(model=st.sampled_from(MODELS), cfg=configs)
def test_components_sum_to_peak(model, cfg):
    b = estimate(model, **cfg)
    assert b.peak_bytes == sum(getattr(b.components, c) for c in COMPONENTS)
    assert all(v >= 0 for v in b.components.as_dict().values())
    assert b.reserved_bytes > b.peak_bytes
    # the verdict's device total: the peak, what the allocator must get beyond it (never more than it reserves
    # with room to spare: release-and-retry only lowers it) and the CUDA context
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
