"""Time a whole `vramplan fit` table (and `--suggest`) on a few model / GPU pairs; the target is < 1 s each.

    python benchmarks/fit_speed.py [repeats]

Prints, per pair: the median wall time of `fit_table` (12 rows × 5 sequence lengths, longest sequence,
largest LoRA rank), the number of estimates it ran, the median time of `suggest` for a configuration that does
not fit, and the median time of the `vramplan fit` command in this process (parsing, rendering to a string);
then the cold start of `vramplan fit` in a fresh interpreter (imports included).
"""

from __future__ import annotations

import platform
import statistics
import subprocess
import sys
import time
from importlib.metadata import version

from click.testing import CliRunner

import vramplan.plan.fit as fit_mod
from vramplan.cli import main
from vramplan.plan.advice import suggest
from vramplan.plan.fit import fit_table
from vramplan.sources.profiles import find_gpu, load_model
from vramplan.spec import resolve_train

PAIRS = [
    ("llama-2-7b", "rtx-3060-ti"),
    ("llama-3-8b", "rtx-4090"),
    ("llama-3.1-8b", "h100-80gb"),  # 131k context: the longest-sequence search runs far
    ("qwen2.5-0.5b", "h100-80gb"),  # large batches: the batch search gallops far
    ("llama-2-70b", "a100-80gb"),
    ("mixtral-8x7b", "rtx-4090"),
]


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def count_estimates(fn) -> int:
    calls = 0
    real = fit_mod.build_breakdown

    def counting(*a, **k):
        nonlocal calls
        calls += 1
        return real(*a, **k)

    fit_mod.build_breakdown = counting
    try:
        fn()
    finally:
        fit_mod.build_breakdown = real
    return calls


def main_() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    cpu = platform.processor() or platform.machine()
    print(f"vramplan {version('vramplan')} · Python {platform.python_version()} · {cpu}")
    print(f"{'model':<15} {'gpu':<12} {'fit_table':>10} {'estimates':>10} {'suggest':>9} {'fit CLI':>9}")
    runner = CliRunner()
    for model, gpu in PAIRS:
        m, g = load_model(model), find_gpu(gpu)
        t = resolve_train(m, gpu_bf16=g.bf16)
        big = resolve_train(m, gpu_bf16=g.bf16, method="lora", batch=8, seq=4096, attn="eager")
        t_fit = timed(lambda: fit_table(m, t, g), repeats)  # noqa: B023
        n = count_estimates(lambda: fit_table(m, t, g))  # noqa: B023
        t_sug = timed(lambda: suggest(m, big, g), repeats)  # noqa: B023
        t_cli = timed(lambda: runner.invoke(main, ["fit", model, "--gpu", gpu]), repeats)  # noqa: B023
        ms = [f"{x * 1e3:.0f}ms" for x in (t_fit, t_sug, t_cli)]
        print(f"{model:<15} {gpu:<12} {ms[0]:>10} {n:>10} {ms[1]:>9} {ms[2]:>9}")
    cmd = [sys.executable, "-m", "vramplan.cli", "fit", "llama-2-7b", "--gpu", "3060ti"]
    cold = timed(lambda: subprocess.run(cmd, capture_output=True, check=True), repeats)
    print(f"cold start, `{' '.join(cmd[1:])}`: {cold * 1e3:.0f}ms")


if __name__ == "__main__":
    main_()
