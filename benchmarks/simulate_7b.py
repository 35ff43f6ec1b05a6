"""Traced vs estimated breakdown of Llama-2-7B LoRA and QLoRA steps (the real HF/PEFT/bnb code on fake or meta
tensors), component by component, with the trace's time and peak RSS. Prints figures; asserts nothing.

    python benchmarks/simulate_7b.py [--seq 512 1024] [--batch 1]
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings

CONFIGS = (
    ("lora", {}),
    ("lora", {"grad_ckpt": True}),
    ("qlora", {}),
    ("qlora", {"grad_ckpt": False}),
)


def pct(err: float | None) -> str:
    if err is None:
        return "—"
    return "0.0 %" if abs(err) < 0.05 else f"{err:+.1f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-2-7b")
    parser.add_argument("--seq", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    from vramplan.api import estimate
    from vramplan.breakdown import COMPONENTS
    from vramplan.measure.cuda_equiv import installed_versions
    from vramplan.measure.harness import simulate
    from vramplan.report.common import gib
    from vramplan.report.measure import error_pct
    from vramplan.sources.profiles import load_model
    from vramplan.spec import resolve_train

    m = load_model(args.model)
    print(f"{args.model} · batch {args.batch} · " + ", ".join(f"{n} {v}" for n, v in installed_versions()))
    for seq in args.seq:
        for method, extra in CONFIGS:
            t = resolve_train(m, method=method, batch=args.batch, seq=seq, **extra)
            start = time.perf_counter()
            r = simulate(m, t)
            seconds = time.perf_counter() - start
            e = estimate(m, train=t)
            b = r.breakdown
            label = f"{method} seq {seq} grad_ckpt {'on' if t.grad_ckpt else 'off'}"
            print(f"\n{label}: traced on {r.device} in {seconds:.1f} s (peak RSS "
                  f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB)")  # fmt: skip
            print(f"  {'component (GiB)':<18}{'traced':>9}{'estimate':>10}{'error':>9}")
            traced, est = b.components.as_dict(), e.components.as_dict()
            for name in COMPONENTS:
                if traced[name] or est[name]:
                    err = error_pct(est[name], traced[name])
                    print(f"  {name:<18}{gib(traced[name]):>9}{gib(est[name]):>10}{pct(err):>9}")
            err = error_pct(e.peak_bytes, b.peak_bytes)
            print(f"  {'peak':<18}{gib(b.peak_bytes):>9}{gib(e.peak_bytes):>10}{pct(err):>9}"
                  f"   (traced in {b.peak_phase}, estimated in {e.peak_phase})")  # fmt: skip
            est_phases = {p.phase: p.total for p in e.phases}
            for p in b.phases:
                err = error_pct(est_phases[p.phase], p.total)
                print(f"  {p.phase + ' phase':<18}{gib(p.total):>9}{gib(est_phases[p.phase]):>10}{pct(err):>9}")


if __name__ == "__main__":
    main()
