"""Speed of the analytic estimator: CLI cold start and estimates per second through the Python API.

Targets (issue 2): cold start <= 0.25 s, >= 10,000 estimates/s. Prints figures; asserts nothing.
"""

from __future__ import annotations

import itertools
import statistics
import subprocess
import sys
import time


def cold_start(runs: int = 7) -> float:
    cmd = [sys.executable, "-m", "vramplan.cli", "estimate", "llama-7b", "--method", "qlora", "--gpu", "3060ti",
           "--json"]  # fmt: skip
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def throughput(n: int = 10_000) -> float:
    from vramplan.estimator.peak import phases
    from vramplan.sources.profiles import load_model
    from vramplan.spec import resolve_train

    models = [load_model(x) for x in ("llama-2-7b", "llama-3-8b", "qwen2.5-7b", "mistral-7b", "phi-2")]
    # 10,000 distinct configurations: every sequence length differs (walks are cached per setting, not per size)
    grid = itertools.cycle(itertools.product(models, ("lora", "qlora", "full"), (1, 2, 4, 8), (8, 16, 64)))
    specs = []
    for i, (m, method, batch, r) in enumerate(itertools.islice(grid, n)):
        specs.append((m, resolve_train(m, method=method, batch=batch, seq=128 + i, lora_rank=r)))
    t0 = time.perf_counter()
    for m, t in specs:
        phases(m, t)
    return n / (time.perf_counter() - t0)


if __name__ == "__main__":
    print(f"cold start `vramplan estimate llama-7b --method qlora --gpu 3060ti --json`: {cold_start():.3f} s (median)")
    print(f"estimates per second over 10,000 configurations (Python API, resolved specs): {throughput():,.0f}")
