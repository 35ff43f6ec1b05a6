"""Estimate vs traced real runs of tiny models on CPU (real tensors), one setting changed at a time.

The base case is a small Llama (hidden 256, MLP 688, 4 layers, 8 heads / 4 KV heads, vocab 1000) with LoRA
r=8 on all linear layers, batch 2 × 128 tokens, bf16 weights under bf16 autocast; each case changes one or
two settings from it, so a failure names the modelling rule at fault. Each family runs its tiny config.
"""

from __future__ import annotations

import pytest

from tests.oracle.conftest import check
from tests.oracle.grid import (
    BASE,
    CASES,
    DELTA_NET_CASES,
    FAMILIES,
    FAMILY_CASES,
    FAMILY_GRID,
    NEEDS_TRL,
    SMALL_LLAMA,
)
from vramplan.spec import model_spec_from_config, resolve_train

# Known gaps, kept visible: strict xfails turn into failures the day the estimator models them.
KNOWN_GAPS: dict[str, str] = {}
# A checkpointed Gemma 3 layer saves last in its post-feedforward norm, so its recompute does not stop inside
# the MLP's down projection (as a Llama layer's does) but runs through the down projection's LoRA sum (the
# scaled lora_B output the walk does not hold) into that norm; the backward reaches the recompute holding the
# norm's fp32 gradient (T·H·4, not the T·H·2 LoRA-scaling gradient of a Llama layer). Traced 2 × 64 tokens:
# bottom-layer recompute activations −42,880 B (−6.1 %), temporaries −16,384 B; peak −4.3 % (gemma2, same
# layer, not in this grid: −5.3 %).
FAMILY_GAPS: dict[tuple[str, str], str] = {
    ("gemma3_text", "lora-ckpt"): "checkpointed Gemma 3 layer recompute runs past the MLP: peak -4.3 %",
    ("gemma3_text", "full-ckpt"): "checkpointed Gemma 3 layer: estimated peak at the recompute, traced at the "
    "layer's backward (activations +17 %, temporaries -82 %; phase total within 3 %)",
    ("gemma3_text", "qlora"): "checkpointed Gemma 3 layer recompute runs past the MLP: backward activations -7.0 %",
    # Falcon-H1 under checkpointing: the traced backward peaks inside the layer's recompute, at the down
    # projection's LoRA branch (its fp32 input copy), above the walk's recompute moment. Traced 2 × 64 tokens:
    ("falcon_h1", "lora-ckpt"): "checkpointed Falcon-H1 layer: the recompute's moment: peak -4.3 %",
    ("falcon_h1", "qlora"): "checkpointed Falcon-H1 QLoRA: peak -6.0 %, backward activations -19 %, temporaries "
    "+180 % (the recompute's moment, not walked past the MLP; the workspace in fp32)",
    # Tied embeddings, full fine-tune, checkpointed (a tied tiny Llama traces the same): at the bottom layer's
    # backward the head's weight gradient is still autograd's pending buffer (the tracker files it as logits,
    # 32,776 B) where the estimate has it among the gradients (+32,640 B); the backward total is within 0.5 %.
    ("smollm3", "full-ckpt"): "tied head gradient filed as logits, not gradients (backward total -0.5 %)",
    ("granite", "full-ckpt"): "tied head gradient filed as logits; the estimate's moment is the bottom recompute, "
    "the trace's its MLP backward (backward total -0.5 %)",
    # Granite QLoRA (kbit prep, checkpointed): the traced backward peaks at the top layer's recompute, one fp32
    # T·hidden tensor (32,768 B) above the walk there: peak 1,042,912 vs 1,076,264 B (-3.1 %), activations
    # 490,496 vs 677,376 B at the two moments
    ("granite", "qlora"): "checkpointed Granite QLoRA: top-layer recompute one fp32 hidden above the walk: peak -3.1 %",
}


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=pytest.mark.xfail(reason=KNOWN_GAPS[c], strict=True)) if c in KNOWN_GAPS else c
     for c in CASES],
)  # fmt: skip
def test_small_llama(case):
    if case in NEEDS_TRL:
        pytest.importorskip("trl")
    m = model_spec_from_config(SMALL_LLAMA, "small-llama")
    t = resolve_train(m, **{**BASE, **CASES[case]})
    check(m, t, "cpu")


@pytest.mark.parametrize("family", FAMILIES)
def test_family_lora(family):
    from tests.conftest import TINY_CONFIGS

    m = model_spec_from_config(TINY_CONFIGS[family], family)
    t = resolve_train(m, **{**BASE, "seq": 64, "lora_target": "attn" if family == "mixtral" else "all-linear"})
    check(m, t, "cpu")


@pytest.mark.parametrize(
    ("family", "case"),
    [pytest.param(f, c, marks=pytest.mark.xfail(reason=FAMILY_GAPS[f, c], strict=True)) if (f, c) in FAMILY_GAPS
     else (f, c) for f in FAMILY_GRID for c in FAMILY_CASES],
)  # fmt: skip
def test_family_grid(family, case):
    from tests.conftest import TINY_CONFIGS

    m = model_spec_from_config(TINY_CONFIGS[family], family)
    settings = {**BASE, "seq": 64, **FAMILY_CASES[case]}
    if m.moe_params and settings["method"] == "qlora":
        # LoRA on the fp32 (kbit prep) experts fails in PEFT's forward (the estimate says so in a note): the
        # attention, as users must
        settings["lora_target"] = "attn"
    t = resolve_train(m, **settings)
    check(m, t, "cpu")


# gpt-oss's experts through PEFT's `target_parameters` (all-linear stops at its attention): every layer's, or one
# layer's as OpenAI's fine-tuning cookbook writes it; LoRA r=8 on the attention too
GPT_OSS_EXPERT_LORA = {
    "every-layer": {"target_parameters": "mlp.experts.gate_up_proj,mlp.experts.down_proj"},
    "one-layer": {"target_parameters": "1.mlp.experts.gate_up_proj,1.mlp.experts.down_proj"},
    "every-layer-ckpt": {"target_parameters": "mlp.experts.gate_up_proj,mlp.experts.down_proj", "grad_ckpt": True},
}
# The checkpointed forward's in-layer moment: the MoE block with the cached merged weights and factor casts
# (126,976 B per layer, traced) is where the trace peaks, 74,304 B above the estimate's (forward phase -3.6 %;
# the step's peak, the bottom layer's recompute, -1.4 %); the block alone traces within 1.3 % of the walk.
GPT_OSS_EXPERT_GAPS = {"every-layer-ckpt": "checkpointed forward with expert LoRA: forward phase -3.6 % (peak -1.4 %)"}


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=pytest.mark.xfail(reason=GPT_OSS_EXPERT_GAPS[c], strict=True))
     if c in GPT_OSS_EXPERT_GAPS else c for c in GPT_OSS_EXPERT_LORA],
)  # fmt: skip
def test_gpt_oss_expert_target_parameters(case):
    from tests.conftest import TINY_CONFIGS

    m = model_spec_from_config(TINY_CONFIGS["gpt_oss"], "gpt_oss")
    t = resolve_train(m, **{**BASE, "seq": 64, "lora_target": "attn", **GPT_OSS_EXPERT_LORA[case]})
    check(m, t, "cpu")


# Checkpointed DeltaNet layers over several chunks, padded (2 × 200 tokens -> 4 chunks of 64): the estimated
# backward peaks in the scan's backward within 1.7 % of the trace, but files 5.8 % (lora-ckpt) / 8.4 % (qlora)
# more of it as recomputed activations and less as gradient workspace than the trace does
DELTA_NET_GAPS = {
    "lora-ckpt-padded": "padded multi-chunk DeltaNet backward: peak +1.7 %, activations +5.8 % of the trace",
    "qlora-padded": "padded multi-chunk DeltaNet backward: peak +1.6 %, activations +8.4 %, temporaries -8.5 %",
}


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=pytest.mark.xfail(reason=DELTA_NET_GAPS[c], strict=True)) if c in DELTA_NET_GAPS else c
     for c in DELTA_NET_CASES],
)  # fmt: skip
def test_delta_net_chunks(case):
    from tests.conftest import TINY_CONFIGS

    m = model_spec_from_config(TINY_CONFIGS["qwen3_5_text"], "qwen3_5_text")
    check(m, resolve_train(m, **{**BASE, **DELTA_NET_CASES[case]}), "cpu")
