"""Estimate vs traced real runs of tiny models on CPU (real tensors), one setting changed at a time.

The base case is a small Llama (hidden 256, MLP 688, 4 layers, 8 heads / 4 KV heads, vocab 1000) with LoRA
r=8 on all linear layers, batch 2 × 128 tokens, bf16 weights under bf16 autocast; each case changes one or
two settings from it, so a failure names the modelling rule at fault. Each family runs its tiny config.
"""

from __future__ import annotations

import pytest

from tests.oracle.conftest import check
from tests.oracle.grid import BASE, CASES, FAMILIES, NEEDS_TRL, SMALL_LLAMA
from vramplan.spec import model_spec_from_config, resolve_train

# Known gaps, kept visible: strict xfails turn into failures the day the estimator models them.
KNOWN_GAPS: dict[str, str] = {}


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
