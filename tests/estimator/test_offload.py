"""estimator/offload.py: offloaded checkpointing and activation offloading, device and host bytes.

The copies are CUDA-only (`.to("cpu", non_blocking=True)` into pinned memory, a side stream), so the rules are
held to their sources (unsloth_zoo gradient_checkpointing.py; trl 1.16 models/activation_offloading.py, cited in
the module) with the arithmetic written out here.
"""

from __future__ import annotations

import pytest

from vramplan.api import estimate
from vramplan.estimator.activations import activation_bytes
from vramplan.sources.profiles import load_model
from vramplan.spec import resolve_train


def test_offloaded_checkpointing_moves_every_layer_input_to_the_host():
    """Llama-3-8B LoRA, batch 4 × 4096, checkpointing: 32 layer inputs of 4·4096·4096 bf16 leave the GPU and
    one (the input of the layer being recomputed) comes back."""
    m = load_model("llama-3-8b")
    kept = resolve_train(m, method="lora", batch=4, seq=4096, grad_ckpt=True)
    off = resolve_train(m, method="lora", batch=4, seq=4096, activation_offload="checkpoints")
    assert off.grad_ckpt  # Unsloth's offloaded checkpointing is checkpointing
    hidden = 4 * 4096 * 4096 * 2  # batch·seq·hidden·bf16
    b_kept, b_off = estimate(m, train=kept), estimate(m, train=off)
    assert b_off.host_bytes == 32 * hidden
    assert b_kept.host_bytes == 0
    assert b_kept.phases[0].components.activations - b_off.phases[0].components.activations == 31 * hidden


def test_activation_offloading_without_checkpointing_keeps_two_layers():
    """activation_offloading without checkpointing: every decoder layer's saved set goes to the host; the GPU
    keeps the layer in use and the next one coming back (use_streams), and the final norm / logits."""
    m = load_model("llama-2-7b")
    t = resolve_train(m, method="lora", seq=2048, grad_ckpt=False, activation_offload="all")
    plain = activation_bytes(m, resolve_train(m, method="lora", seq=2048, grad_ckpt=False))
    b = estimate(m, train=t)
    assert b.host_bytes == plain.saved - plain.final_saved
    on_gpu = (
        b.phases[0].components.activations
        - estimate(m, train=resolve_train(m, method="lora", seq=2048, grad_ckpt=False)).phases[0].components.activations
    )
    assert on_gpu == -(plain.saved - plain.final_saved) + 2 * plain.layer


@pytest.mark.parametrize("mode", ["checkpoints", "unsloth", "all"])
def test_offloading_never_raises_the_device_peak(mode: str):
    m = load_model("mistral-7b")
    for seq in (512, 2048, 8192):
        base = estimate(m, train=resolve_train(m, method="qlora", seq=seq))
        off = estimate(m, train=resolve_train(m, method="qlora", seq=seq, activation_offload=mode))
        assert off.peak_bytes <= base.peak_bytes
        assert off.host_bytes > 0


def test_unsloth_keeps_the_last_input_and_two_staging_buffers():
    """unsloth_zoo 2026.10.9 UnslothCheckpointFunction (estimator/offload.py `unsloth_offload`, from its source:
    CUDA streams and pinned buffers). Llama-3-8B LoRA, batch 4 × 4096, bf16 residual: 31 of the 32 layer inputs
    go to the host as they are; the GPU keeps the last one and the two staging buffers the reloads land in,
    two inputs more than the first Unsloth checkpointer's one."""
    m = load_model("llama-3-8b")
    hidden = 4 * 4096 * 4096 * 2  # batch·seq·hidden·bf16
    first = estimate(m, train=resolve_train(m, method="lora", batch=4, seq=4096, activation_offload="checkpoints"))
    t = resolve_train(m, method="lora", batch=4, seq=4096, activation_offload="unsloth")
    assert t.grad_ckpt
    b = estimate(m, train=t)
    assert b.host_bytes == 31 * hidden
    assert b.phases[0].components.activations - first.phases[0].components.activations == 2 * hidden


def test_unsloth_stores_fp32_inputs_as_bf16_and_keeps_small_ones():
    """After kbit prep the residual stream is fp32: the host copy is bf16 (`store_dtype`), cast back to an fp32
    copy in backward; an input of at most 2 MiB (MINIMUM_SIZE) is not offloaded at all."""
    m = load_model("llama-3-8b")
    fp32_hidden = 4 * 4096 * 4096 * 4  # batch·seq·hidden·fp32
    a = activation_bytes(m, resolve_train(m, method="qlora", batch=4, seq=4096))
    from vramplan.estimator.offload import unsloth_offload

    t = resolve_train(m, method="qlora", batch=4, seq=4096, activation_offload="unsloth")
    gone, kept, host = unsloth_offload(t, a, 32)
    assert (gone, host) == (32 * fp32_hidden, 31 * fp32_hidden // 2)
    assert kept == fp32_hidden + 2 * fp32_hidden // 2 + fp32_hidden  # last input, two bf16 buffers, cast back
    small = resolve_train(m, method="lora", batch=1, seq=256, activation_offload="unsloth")  # 1·256·4096·2 = 2 MiB
    assert unsloth_offload(small, activation_bytes(m, small), 32) == (0, 0, 0)
    assert estimate(m, train=small).host_bytes == 0


def test_unsloth_recipe_offloads_as_unsloth_does():
    from vramplan.spec.recipe import resolve_recipe

    settings = dict(resolve_recipe("unsloth").settings)
    assert (settings["grad_ckpt"], settings["activation_offload"]) == (True, "unsloth")
