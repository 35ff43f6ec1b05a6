"""The step assembled moment by moment (estimator/peak.py): which moment peaks in known regimes and why, how
moments move with the settings, and a moment's bytes by hand. The traced counterpart is
tests/oracle/test_moments.py."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.oracle.grid import BASE, SMALL_LLAMA
from vramplan.breakdown import PHASES
from vramplan.estimator import peak
from vramplan.estimator.peak import moments, phases
from vramplan.sources.profiles import load_model
from vramplan.spec import model_spec_from_config, resolve_train


@pytest.fixture(scope="module")
def small_llama():
    return model_spec_from_config(SMALL_LLAMA, "small-llama")


def _by_moment(m, t) -> dict[str, int]:
    candidates, _ = moments(m, t)
    return {c.moment: c for c in candidates}


def test_every_moment_has_its_own_name(small_llama) -> None:
    for ckpt in (False, True):
        t = resolve_train(small_llama, **{**BASE, "grad_ckpt": ckpt})
        candidates, _ = moments(small_llama, t)
        assert all(c.moment for c in candidates)
        assert len({c.moment for c in candidates}) == len(candidates)  # no name twice
        assert [p.phase for p in phases(small_llama, t)[0]] == list(PHASES)


def test_recompute_moments_exist_only_with_checkpointing(small_llama) -> None:
    with_ckpt = _by_moment(small_llama, resolve_train(small_llama, **{**BASE, "grad_ckpt": True}))
    without = _by_moment(small_llama, resolve_train(small_llama, **{**BASE, "grad_ckpt": False}))
    assert {peak.TOP_LAYER_RECOMPUTE, peak.BOTTOM_LAYER_RECOMPUTE} <= set(with_ckpt)
    assert not {peak.TOP_LAYER_RECOMPUTE, peak.BOTTOM_LAYER_RECOMPUTE} & set(without)
    # checkpointing keeps one hidden state per layer instead of every saved activation
    assert with_ckpt[peak.INSIDE_TOP_LAYER].total < without[peak.INSIDE_TOP_LAYER].total


def test_large_vocabulary_peaks_at_the_logits_gradient() -> None:
    # Llama-3-8B (vocab 128,256) LoRA with checkpointing, seq 2048: activations are one hidden state per layer,
    # the loss dominates. Forward at the loss holds bf16 logits + their fp32 upcast + the fp32 log-softmax
    # (10 B per token·vocab); backward at LogSoftmaxBackward the saved fp32 output + nll's fp32 gradient +
    # log-softmax's fp32 input gradient (12 B): the backward's start is the higher by 2 B per token·vocab.
    m = load_model("llama-3-8b")
    t = resolve_train(m, method="lora", grad_ckpt=True, seq=2048)
    named = _by_moment(m, t)
    token_vocab = t.tokens * m.vocab_size
    assert named[peak.LOSS_BACKWARD].components.logits - named[peak.LOSS].components.logits == (12 - 10) * token_vocab
    best = max(named.values(), key=lambda c: c.total)
    assert (best.phase, best.moment) == ("backward", peak.LOSS_BACKWARD)


def test_foreach_adamw_full_tuning_peaks_in_the_step() -> None:
    # torch AdamW's multi-tensor (foreach) step allocates temporaries about the size of the trainable
    # parameters; in full tuning those are every parameter (7B in bf16: ~12.5 GiB), far above any activation
    m = load_model("llama-2-7b")
    t = resolve_train(m, method="full", optim="adamw_torch", seq=512)
    best = max(moments(m, t)[0], key=lambda c: c.total)
    assert (best.phase, best.moment) == ("optimizer", peak.OPTIMIZER_STEP)


def test_full_tuning_with_checkpointing_grows_from_top_to_bottom_layer() -> None:
    # at the bottom layer the gradients of the L-1 layers above exist; the checkpointed inputs of those layers
    # are gone: bottom - top = (L-1)·(one layer's bf16 gradients - one checkpointed hidden state)
    m = load_model("llama-2-7b")
    t = resolve_train(m, method="full", grad_ckpt=True, seq=512)
    named = _by_moment(m, t)
    layers = m.num_hidden_layers
    layer_grads = m.layer_params * 2  # bf16
    hidden_state = t.tokens * m.hidden_size * 2  # bf16
    growth = (layers - 1) * (layer_grads - hidden_state)
    for top, bottom in (
        (peak.TOP_LAYER_RECOMPUTE, peak.BOTTOM_LAYER_RECOMPUTE),
        (peak.TOP_LAYER_BACKWARD, peak.BOTTOM_LAYER_BACKWARD),
    ):
        assert named[bottom].total - named[top].total == growth


def test_lora_without_checkpointing_shrinks_from_top_to_bottom_layer(small_llama) -> None:
    # no checkpointing: at the top layer every layer's activations are alive (and each layer's bf16 copies of
    # its fp32 adapters, saved by mm), at the bottom only one layer's; LoRA gradients are small. Per token a
    # LoRA layer whose input requires grad saves 12,312 B (tests/estimator/test_layer_ops.py); layer 0, whose
    # input needs no grad, 1,028 B less (its input norm saves nothing). The bottom moment keeps the largest
    # layer's set, so the drop is layer 0's set + two more layers' + three layers' adapter copies.
    t = resolve_train(small_llama, **{**BASE, "grad_ckpt": False})
    named = _by_moment(small_llama, t)
    top, bottom = named[peak.TOP_LAYER_BACKWARD], named[peak.BOTTOM_LAYER_BACKWARD]
    adapter_copies = 2 * 8 * ((256 + 256) * 2 + (256 + 128) * 2 + (256 + 688) * 3)  # bf16 · r · (in + out)
    layer_saved = 12312
    expected_drop = t.tokens * ((layer_saved - (4 * 256 + 4)) + 2 * layer_saved) + 3 * adapter_copies
    assert top.components.activations - bottom.components.activations == expected_drop
    assert top.total > bottom.total


def test_all_gradients_moment_by_hand(small_llama) -> None:
    # the end of backward: every LoRA gradient (fp32) and two T·hidden bf16 temporaries
    t = resolve_train(small_llama, **BASE)
    end = _by_moment(small_llama, t)[peak.END_OF_BACKWARD].components
    per_layer = 8 * ((256 + 256) + (256 + 128) * 2 + (256 + 256) + (256 + 688) * 3)  # r·(in + out): q, k, v, o, MLP
    assert end.gradients == SMALL_LLAMA["num_hidden_layers"] * per_layer * 4  # fp32 adapters
    assert end.temporaries == 2 * t.tokens * 256 * 2
    assert end.activations == 0
    assert end.logits == 0


def test_gradient_accumulation_never_lowers_a_moment(small_llama) -> None:
    # with accumulation the gradients of earlier micro-batches are alive in every moment
    for ckpt in (False, True):
        one = _by_moment(small_llama, resolve_train(small_llama, **{**BASE, "grad_ckpt": ckpt}))
        accum = _by_moment(small_llama, resolve_train(small_llama, **{**BASE, "grad_ckpt": ckpt, "grad_accum": 4}))
        assert set(one) == set(accum)
        for name in one:
            assert accum[name].total >= one[name].total, name
        assert accum[peak.LOSS].components.gradients > 0 == one[peak.LOSS].components.gradients


@settings(max_examples=40, deadline=None)
@given(
    method=st.sampled_from(["lora", "full", "qlora", "freeze"]),
    ckpt=st.booleans(),
    batch=st.integers(1, 4),
    seq=st.integers(16, 1024),
    attn=st.sampled_from(["sdpa", "eager"]),
)
def test_every_moment_grows_with_batch_and_seq(method, ckpt, batch, seq, attn) -> None:
    m = model_spec_from_config(SMALL_LLAMA, "small-llama")
    base = {**BASE, "method": method, "grad_ckpt": ckpt, "attn": attn}
    at = _by_moment(m, resolve_train(m, **{**base, "batch": batch, "seq": seq}))
    longer = _by_moment(m, resolve_train(m, **{**base, "batch": batch, "seq": seq + 16}))
    wider = _by_moment(m, resolve_train(m, **{**base, "batch": batch + 1, "seq": seq}))
    for name, usage in at.items():
        assert longer[name].total >= usage.total, name
        assert wider[name].total >= usage.total, name
