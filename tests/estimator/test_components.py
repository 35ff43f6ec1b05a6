"""The component set every breakdown shares, and its model-state figures for llama-2-7b derived by hand."""

from __future__ import annotations

import dataclasses
from typing import Any

from vramplan.breakdown import COMPONENTS, Components


def test_total_counts_every_component_once() -> None:
    # `total` spells the fields out by hand (it runs in the estimator's inner loop): distinct powers of two make a
    # field left out, or added twice, show in the sum
    values = {name: 1 << i for i, name in enumerate(COMPONENTS)}
    c = Components(**values)
    assert c.total == sum(values.values())
    assert c.as_dict() == values
    assert tuple(f.name for f in dataclasses.fields(Components)) == COMPONENTS


# llama-2-7b's config.json: hidden 4096, intermediate 11008, 32 layers, 32 heads (no GQA), vocab 32000, untied
H, INTER, L, V = 4096, 11008, 32, 32000
LINEARS = [(H, H)] * 4 + [(H, INTER), (H, INTER), (INTER, H)]  # (in, out): q, k, v, o, gate, up, down
N = 2 * V * H + L * (sum(i * o for i, o in LINEARS) + 2 * H) + H  # embed + lm_head, layers (+2 norms), final norm
ADAPTERS = L * sum(16 * (i + o) for i, o in LINEARS)  # r=16 all-linear: lora_A r·in + lora_B out·r


def _step(method: str) -> tuple[Any, Components]:
    from vramplan import estimate

    b = estimate("llama-2-7b", method=method)
    return b, b.phases[-1].components  # the optimizer step: model states only


def test_full_bf16_model_states_by_hand() -> None:
    b, c = _step("full")
    assert b.params_total == b.params_trainable == N == 6_738_415_616
    tensors = 3 + L * (len(LINEARS) + 2)  # embed, lm_head, final norm; per layer 7 weights + 2 norms
    assert (c.weights, c.quant_state) == (0, 0)
    assert c.trainable == c.gradients == 2 * N  # bf16
    # fused AdamW: exp_avg + exp_avg_sq in the parameter dtype, a float32 `step` tensor per parameter
    assert c.optimizer_states == 2 * 2 * N + 4 * tensors


def test_lora_model_states_by_hand() -> None:
    b, c = _step("lora")
    assert b.params_trainable == ADAPTERS == 39_976_960
    assert b.params_total == N + ADAPTERS
    assert c.weights == 2 * N  # the frozen bf16 base
    assert c.trainable == c.gradients == 4 * ADAPTERS  # PEFT upcasts adapters to fp32
    assert c.optimizer_states == 2 * 4 * ADAPTERS + 4 * (L * len(LINEARS) * 2)  # + a step per lora_A / lora_B


def test_qlora_nf4_double_quant_by_hand() -> None:
    _, c = _step("qlora")
    numels = [i * o for i, o in LINEARS]
    rest = N - L * sum(numels)  # embeddings, lm_head, norms: fp32 after prepare_model_for_kbit_training
    assert c.weights == L * sum(n // 2 for n in numels) + 4 * rest  # two 4-bit codes a byte
    # per weight: uint8 absmax per 64 elements, fp32 absmax per 256 of those, fp32 offset, 256-entry fp32
    # dynamic map, 16-entry fp32 nf4 code (bitsandbytes 0.50 QuantState with state2)
    blocks = [n // 64 for n in numels]
    assert c.quant_state == L * sum(k + 4 * -(-k // 256) + 4 + 256 * 4 + 16 * 4 for k in blocks)
    assert c.trainable == 4 * ADAPTERS
