"""Advice that is true: every suggested change is re-estimated, its claim holds, it is bounded in time."""

from __future__ import annotations

import dataclasses
import re
import time

import pytest

from vramplan.plan.advice import largest_divisor_at_most, suggest
from vramplan.plan.fit import SEQ_MULTIPLE, fits, run
from vramplan.sources.profiles import find_gpu, load_model
from vramplan.spec import resolve_train


def _seq_claims(m, t, g):
    return [s for s in suggest(m, t, g, limit=50) if s.change.startswith("--seq")]


def test_no_shorter_sequence_is_offered_when_the_sequence_fits():
    """The report of issue 16: llama-2-7b QLoRA at seq 1024 fits a 3060 Ti; `--seq 960 (the longest that
    fits)` was offered while 1024 (and 2048) fit."""
    m, g = load_model("llama-2-7b"), find_gpu("3060ti")
    t = resolve_train(m, method="qlora", seq=1024, gpu_bf16=g.bf16)
    assert fits(run(m, t, g))
    assert fits(run(m, dataclasses.replace(t, seq=2048), g))
    assert _seq_claims(m, t, g) == []


@pytest.mark.parametrize(("seq", "batch"), [(4096, 3), (8192, 1), (3000, 2)])
def test_longest_sequence_claim_holds(seq: int, batch: int):
    """`--seq N (the longest multiple of 64 that fits; now S)`: N fits and N + 64 does not, by the verdict
    `estimate` prints (the allocator replay near the card)."""
    m, g = load_model("llama-2-7b"), find_gpu("3060ti")
    t = resolve_train(m, method="qlora", seq=seq, batch=batch, gpu_bf16=g.bf16)

    def printed(t):
        return run(m, t, g, None, "auto")

    assert not fits(printed(t))
    (claim,) = _seq_claims(m, t, g)
    n = int(re.match(r"--seq (\d+) \(the longest multiple of 64 that fits; now (\d+)\)", claim.change).group(1))
    assert fits(printed(dataclasses.replace(t, seq=n)))
    assert not fits(printed(dataclasses.replace(t, seq=n + SEQ_MULTIPLE)))
    assert n < seq


def test_batch_advice_is_logarithmic_in_the_batch():
    """--batch 2**20 with 2**20 - 1 accumulation steps: answered in about a second, not one estimate per
    batch (the old search counted down from the batch)."""
    m, g = load_model("llama-2-7b"), find_gpu("3060ti")
    t = resolve_train(m, method="qlora", batch=2**20, grad_accum=2**20 - 1, gpu_bf16=g.bf16)
    start = time.monotonic()
    found = [s for s in suggest(m, t, g, limit=50) if s.change.startswith("--batch")]
    assert time.monotonic() - start < 10
    (change,) = found
    b, ga = map(int, re.match(r"--batch (\d+) --grad-accum (\d+)", change.change).groups())
    assert b * ga == 2**20 * (2**20 - 1)
    assert fits(change.breakdown) or b == 1


@pytest.mark.parametrize(
    ("n", "cap", "expected"),
    [(12, 5, 4), (12, 12, 12), (7, 6, 1), (2**20 * (2**20 - 1), 3, 3), (97 * 89, 96, 89), (10**12, 10**6, 10**6)],
)
def test_largest_divisor_at_most(n: int, cap: int, expected: int):
    got = largest_divisor_at_most(n, cap)
    assert got == expected
    assert n % got == 0
    assert got <= max(cap, 1)
    # nothing between got and cap divides n (checked directly where the range is small)
    assert all(n % d for d in range(got + 1, min(cap, got + 10_000) + 1))


def test_no_advice_repeats_a_setting_already_made():
    """Each suggestion changes something: its TrainSpec differs from the input, and its flags are not the
    input's values (e.g. `--optim adamw_8bit` is not offered to a run already on adamw_8bit)."""
    m, g = load_model("llama-3-8b"), find_gpu("t4")
    for method, optim in (("full", "adamw_8bit"), ("lora", "adamw_torch"), ("qlora", "paged_adamw_8bit")):
        t = resolve_train(m, method=method, optim=optim, seq=2048, gpu_bf16=g.bf16)
        for s in suggest(m, t, g, limit=50):
            assert f"--optim {t.optim} " not in s.change + " "
            assert f"--method {t.method} " not in s.change + " "


def test_serve_advice_one_direction_and_not_what_is_set():
    """serve: at utilization 1.0 vLLM up to 0.33 refuses to start: lower it (not also raise it); llama-3-70b at
    nf4 on a 4090 has no fix in one setting, and --quant nf4 is not offered again."""
    from vramplan.api import estimate_serve

    b = estimate_serve("llama-2-7b", gpu="t4", gpu_memory_utilization=1.0, vllm_version="0.10")
    text = " ".join(b.problems)
    assert "lower --gpu-memory-utilization" in text
    assert "raise --gpu-memory-utilization" not in text
    b = estimate_serve("llama-3-70b", gpu="4090", quant="nf4")
    assert b.problems
    assert "--quant nf4" not in " ".join(b.problems)


def test_serve_advice_is_re_estimated():
    """The fixes offered for llama-2-13b on a T4 (no room for a KV cache in bf16) work when applied."""
    from vramplan.api import estimate_serve

    b = estimate_serve("llama-2-13b", gpu="t4")
    (problem,) = b.problems
    assert problem.endswith("use --quant nf4")
    assert not estimate_serve("llama-2-13b", gpu="t4", quant="nf4").problems
    # two T4s are not offered: each rank's 12.1 GiB of fp16 weights + graphs + the 1 GiB margin leave no pool
    assert estimate_serve("llama-2-13b", gpu="t4", tensor_parallel_size=2).problems
