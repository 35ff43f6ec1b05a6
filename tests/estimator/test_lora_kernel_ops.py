"""axolotl's fused LoRA kernels in the walk (estimator/lora_kernel_ops.py), held to hand derivations from
axolotl 067b021 kernels/lora.py; the traced grid cases lora-kernels* (tests/oracle/grid.py) hold them to the
CPU stand-ins of measure/lora_kernels.py.

The layer is SMALL_LLAMA's: hidden H = 256, MLP 688, 8 heads / 4 KV heads of 32 (q_dim 256, kv_dim 128), LoRA
r = 8 on all seven linears, bf16 weights under bf16 autocast, SDPA. Bytes are per token.
"""

from __future__ import annotations

import pytest

from tests.oracle.grid import BASE, SMALL_LLAMA
from vramplan.errors import VramplanError
from vramplan.estimator.activations import _walk_layer, activation_bytes
from vramplan.estimator.walk import walk_settings
from vramplan.spec import model_spec_from_config, resolve_train

H, MLP, Q, R = 256, 688, 256, 8


@pytest.fixture(scope="module")
def small_llama():
    return model_spec_from_config(SMALL_LLAMA, "small-llama")


def _saved(m, **options) -> float:
    t = resolve_train(m, **{**BASE, **options})
    return _walk_layer(m, walk_settings(m, t), False, True, t.dtype).saved.real


def test_qkv_kernel_saves_the_normed_input_once(small_llama) -> None:
    # PEFT: q, k, v each save their own bf16 copy of the normed input (x -> fp32 adapter dtype -> bf16 for
    # lora_A) and lora_A's output; LoRA_QKV saves X itself (the norm's output) once, nothing per projection
    peft = 3 * (2 * H + 2 * R)
    kernel = 2 * H
    assert _saved(small_llama) - _saved(small_llama, lora_kernels="qkv") == peft - kernel


def test_o_kernel_saves_the_attention_output_already_saved(small_llama) -> None:
    # LoRA_O saves X = the attention output, which SDPA already saves as its output (the same storage)
    peft = 2 * Q + 2 * R
    assert _saved(small_llama) - _saved(small_llama, lora_kernels="o") == peft


def test_mlp_kernel_saves_x_gate_and_up_not_the_swiglu_output(small_llama) -> None:
    peft = 2 * (2 * H + 2 * R) + 3 * 2 * MLP + (2 * MLP + 2 * R)  # gate/up LoRA, gate·SiLU·up, down LoRA
    kernel = 2 * H + 2 * 2 * MLP  # X, gate, up (bf16)
    assert _saved(small_llama) - _saved(small_llama, lora_kernels="mlp") == peft - kernel


def test_dropout_is_one_mask_and_one_copy_per_group(small_llama) -> None:
    # `_apply_dropout` once for q/k/v (over H), once for o (over Q), once for gate/up (over H); down: none.
    # Each: a bool mask (1 B) and the dropped bf16 copy (2 B) the Function saves
    groups = H + Q + H
    all_kernels = "qkv,o,mlp"
    assert (
        _saved(small_llama, lora_kernels=all_kernels, lora_dropout=0.05) - _saved(small_llama, lora_kernels=all_kernels)
        == 3 * groups
    )


def test_kernels_need_every_projection_of_their_group_adapted(small_llama) -> None:
    # q and v only (PEFT's default for Llama): LoRA_QKV is not applied (`can_patch_qkv`), nor o / mlp
    assert _saved(small_llama, lora_target="qv", lora_kernels="qkv,o,mlp") == _saved(small_llama, lora_target="qv")


def test_mlp_kernel_backward_workspace_is_one_intermediate(small_llama) -> None:
    # swiglu_backward writes h, d_gate, d_up into grad_down, gate and up: one T·I gradient instead of three
    plain = activation_bytes(small_llama, resolve_train(small_llama, **BASE))
    fused = activation_bytes(small_llama, resolve_train(small_llama, **{**BASE, "lora_kernels": "mlp"}))
    tokens = BASE["batch"] * BASE["seq"]
    assert plain.backward_workspace - fused.backward_workspace == 2 * tokens * MLP * 2


def test_kernel_names_are_checked_and_dora_falls_back(small_llama) -> None:
    with pytest.raises(VramplanError, match="qkv"):
        resolve_train(small_llama, **{**BASE, "lora_kernels": "qkvo"})
    t = resolve_train(small_llama, **{**BASE, "lora_kernels": "qkv", "dora": True})
    assert t.lora_kernels == ()
    assert any("DoRA" in n for n in t.notes)


def test_fused_projections_take_no_kernel() -> None:
    # Phi-3's qkv_proj / gate_up_proj: axolotl patches attention only with separate q, k, v, o
    # (`find_self_attn_in_layer`) and the MLP only with gate, up and down: nothing changes
    from tests.conftest import TINY_CONFIGS

    m = model_spec_from_config(TINY_CONFIGS["phi3"], "phi3")
    assert _saved(m, lora_kernels="qkv,o,mlp") == _saved(m)
