"""The decoder layer op by op (estimator/layer_ops.py): what it saves, held to hand derivations.

The layer is SMALL_LLAMA's (tests/oracle/grid.py; the tiny-CPU oracle traces the same one): hidden H = 256,
MLP 688, 8 heads / 4 KV heads of 32 (q_dim 256, kv_dim 128), LoRA r = 8 on all seven linears, bf16
weights under bf16 autocast, SDPA. Bytes are per token (the walk runs at T = 1) unless noted.
"""

from __future__ import annotations

import pytest

from tests.oracle.grid import BASE, SMALL_LLAMA
from vramplan.estimator.activations import _walk_layer, activation_bytes
from vramplan.estimator.layer_ops import norm
from vramplan.estimator.walk import Walk, walk_settings
from vramplan.spec import model_spec_from_config, resolve_train

H, MLP, Q, KV, HEADS, R = 256, 688, 256, 128, 8, 8  # hidden, intermediate, q_dim, kv_dim, heads, rank


@pytest.fixture(scope="module")
def small_llama():
    return model_spec_from_config(SMALL_LLAMA, "small-llama")


def _saved(m, **options) -> float:
    """Saved bytes per token of one frozen-base layer whose input requires grad (a LoRA layer above layer 0)."""
    t = resolve_train(m, **{**BASE, **options})
    return _walk_layer(m, walk_settings(m, t), False, True, t.dtype).saved.real


def test_lora_layer_saved_bytes_by_hand(small_llama) -> None:
    # per token, in transformers' order (frozen base linears save nothing; each LoRA target saves its input cast
    # to bf16 for lora_A (a new copy: PEFT casts x to the fp32 adapter dtype first) and lora_A's output (r)):
    norms = 2 * (4 * H + 4)  # input / post-attention RMSNorm: fp32 copy of x + fp32 rsqrt, frozen weight
    qkv_lora = 3 * (2 * H + 2 * R)  # q, k, v: each its own bf16 copy of the normed input + lora_A output
    sdpa = 2 * Q + 2 * KV + 2 * KV + 2 * Q + 4 * HEADS  # q, k, v (bf16), output, fp32 logsumexp per head
    o_lora = 2 * Q + 2 * R
    gate_up_lora = 2 * (2 * H + 2 * R)
    mlp = 3 * 2 * MLP  # gate output (SiLU input), SiLU output, up output: bf16
    down_lora = 2 * MLP + 2 * R
    expected = norms + qkv_lora + sdpa + o_lora + gate_up_lora + mlp + down_lora  # = 12312
    assert _saved(small_llama) == expected


def test_dropout_adds_a_bool_mask_per_lora_target(small_llama) -> None:
    # CUDA native_dropout saves a bool mask of its input: q, k, v, gate, up read H features, o reads Q, down MLP
    masks = 5 * H + Q + MLP
    assert _saved(small_llama, lora_dropout=0.05) - _saved(small_llama) == masks


def test_frozen_layer_on_an_input_without_grad_saves_nothing(small_llama) -> None:
    # freeze: a frozen layer below the trainable ones sees an input that needs no gradient; no op saves anything
    t = resolve_train(small_llama, **{**BASE, "method": "freeze"})
    assert _walk_layer(small_llama, walk_settings(small_llama, t), False, False, t.dtype).saved == 0


def test_rmsnorm_saves_fp32_copy_and_rsqrt_and_with_a_trainable_weight_its_output(small_llama) -> None:
    t = resolve_train(small_llama, **BASE)
    settings = walk_settings(small_llama, t)
    for trainable, expected in ((False, 4 * H + 4), (True, 4 * H + 4 + 2 * H)):  # + y.to(bf16) for the weight
        walk = Walk()
        norm(walk, settings, small_llama, walk.new(H, "bf16", True), trainable)
        assert walk.saved_bytes == expected


def test_rmsnorm_of_an_fp32_residual_saves_the_input_itself(small_llama) -> None:
    # kbit prep: the residual is fp32, so x.to(fp32) is x: the saved copy is the layer input, no new tensor
    t = resolve_train(small_llama, **{**BASE, "method": "qlora"})
    walk = Walk()
    x = walk.new(H, "fp32", True)
    norm(walk, walk_settings(small_llama, t), small_llama, x, False)
    assert x.id in walk.saved


def test_eager_attention_grows_with_the_square_of_seq(small_llama) -> None:
    # eager saves the fp32 softmax output and its bf16 cast, batch·heads·seq² each, in every layer (no
    # checkpointing in BASE); SDPA saves nothing quadratic. Second difference over seq = s, 2s, 3s of
    # a·s + b·s² is 2·b·s².
    batch, layers, s = BASE["batch"], SMALL_LLAMA["num_hidden_layers"], 128

    def saved(attn: str, seq: int) -> int:
        return activation_bytes(small_llama, resolve_train(small_llama, **{**BASE, "attn": attn, "seq": seq})).saved

    def second_difference(attn: str) -> int:
        return saved(attn, 3 * s) - 2 * saved(attn, 2 * s) + saved(attn, s)

    b = layers * batch * HEADS * (4 + 2)  # fp32 probabilities + their bf16 cast
    assert second_difference("eager") == 2 * b * s * s
    assert second_difference("sdpa") == 0


def test_saved_bytes_grow_with_the_lora_rank(small_llama) -> None:
    # lora_A's output (r per token per target, bf16) is saved by lora_B: 7 targets
    assert _saved(small_llama, lora_rank=16) - _saved(small_llama, lora_rank=8) == 7 * 2 * (16 - 8)
