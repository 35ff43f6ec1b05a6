"""The symbolic walk's machinery (estimator/walk.py): identities, casts, saved vs alive, and the settings a
training spec gives a walk. Bytes are per token (the walk runs at T = 1)."""

from __future__ import annotations

import dataclasses

import pytest

from tests.oracle.grid import BASE, SMALL_LLAMA
from vramplan.estimator.walk import BYTES, Walk, promote, walk_settings
from vramplan.spec import model_spec_from_config, resolve_train

HIDDEN = 256  # SMALL_LLAMA's hidden_size


@pytest.fixture(scope="module")
def small_llama():
    return model_spec_from_config(SMALL_LLAMA, "small-llama")


def test_cast_to_the_same_dtype_is_the_same_tensor() -> None:
    walk = Walk()
    x = walk.new(HIDDEN, "bf16", True)
    assert walk.cast(x, "bf16") is x
    y = walk.cast(x, "fp32")
    assert y.id != x.id
    assert y.nbytes == HIDDEN * 4  # hidden · fp32
    assert y.requires_grad  # a cast keeps requires-grad


def test_a_tensor_saved_twice_counts_once() -> None:
    # q, k and v projections all save the same normed hidden state: the tracker counts its storage once
    walk = Walk()
    x = walk.new(HIDDEN, "bf16", True)
    walk.save(x)
    walk.save(x)
    assert walk.saved_bytes == HIDDEN * 2  # hidden · bf16, once


def test_transient_counts_saved_and_unsaved_operands_once() -> None:
    walk = Walk()
    saved = walk.new(HIDDEN, "fp32", True)
    walk.save(saved)
    operand = walk.new(HIDDEN, "bf16", False)
    walk.transient(saved, operand, extra=100)
    alive, per_layer = walk.live[-1]
    assert alive == HIDDEN * 4 + HIDDEN * 2  # the saved fp32 tensor + the unsaved bf16 operand, each once
    assert per_layer == 100
    referenced, referenced_per_layer = walk.referenced[-1]
    assert referenced == HIDDEN * 4 + HIDDEN * 2  # both operands are referenced
    assert referenced_per_layer == 100  # extra_ref defaults to all of extra


def test_pinned_tensors_are_alive_at_every_op() -> None:
    # the attention residual, pinned through the MLP, is in every transient set while pinned
    walk = Walk()
    residual = walk.new(HIDDEN, "bf16", True)
    walk.pinned[residual.id] = residual.nbytes
    walk.transient(walk.new(8, "bf16", False))
    del walk.pinned[residual.id]
    walk.transient(walk.new(8, "bf16", False))
    assert [alive for alive, _ in walk.live] == [HIDDEN * 2 + 8 * 2, 8 * 2]


def test_promote_mixes_to_fp32() -> None:
    assert promote("bf16", "bf16") == "bf16"
    assert promote("bf16", "fp16") == "fp32"
    assert promote("bf16", "fp32") == "fp32"
    assert BYTES["bool"] == 1  # a dropout mask: one byte per element (CUDA native_dropout)


def test_settings_follow_the_training_spec(small_llama) -> None:
    lora = walk_settings(small_llama, resolve_train(small_llama, **BASE))
    assert lora.autocast_dtype == "bf16"
    assert lora.adapter_dtype == "fp32"  # PEFT autocast_adapter_dtype=True
    assert lora.norm_dtype == "bf16"
    assert not lora.quantized
    assert "q_proj" in lora.lora_targets
    assert not lora.lora_dropout  # BASE has lora_dropout 0.0
    qlora = walk_settings(small_llama, resolve_train(small_llama, **{**BASE, "method": "qlora"}))
    assert qlora.quantized
    assert not qlora.int8
    assert qlora.norm_dtype == "fp32"  # prepare_model_for_kbit_training casts norms to fp32
    no_autocast = walk_settings(small_llama, resolve_train(small_llama, **{**BASE, "mixed_precision": "no"}))
    assert no_autocast.autocast_dtype is None
    full = walk_settings(small_llama, resolve_train(small_llama, **{**BASE, "method": "full"}))
    assert full.lora_targets == frozenset()  # no LoRA branch on any linear


def test_gemma2_and_bloom_walk_eager_attention(small_llama) -> None:
    from tests.conftest import TINY_CONFIGS

    for family in ("gemma2", "bloom"):
        m = model_spec_from_config(TINY_CONFIGS[family], family)
        assert walk_settings(m, resolve_train(m, **{**BASE, "seq": 64})).attn == "eager"
    assert walk_settings(small_llama, resolve_train(small_llama, **BASE)).attn == "sdpa"


def test_sliding_window_mask_only_from_the_window_on() -> None:
    from tests.conftest import TINY_CONFIGS

    m = model_spec_from_config(TINY_CONFIGS["mistral"], "mistral")
    window = 16
    m = dataclasses.replace(m, sliding_window=window)
    assert not walk_settings(m, resolve_train(m, **{**BASE, "seq": window - 1})).masked
    assert walk_settings(m, resolve_train(m, **{**BASE, "seq": window})).masked
