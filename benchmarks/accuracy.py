"""The accuracy grid as a table: traced peak (the real transformers + PEFT + bitsandbytes step under the
live-tensor tracker) vs the analytic estimate, per configuration; the median and worst error.

    python benchmarks/accuracy.py            # tiny models on CPU (real tensors), a few minutes
    python benchmarks/accuracy.py --full     # plus full-size simulations on meta / fake tensors

Prints figures; asserts nothing (tests/oracle asserts the tolerances).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import TINY_CONFIGS
from tests.oracle.grid import BASE, CASES, FAMILIES, FULL_SIZE, SMALL_LLAMA
from vramplan.estimator.peak import phases
from vramplan.measure.harness import run_step
from vramplan.sources.profiles import load_model
from vramplan.spec import model_spec_from_config, resolve_train

MIB = 1024**2


def compare(m, t, device):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = run_step(m, t, device=device, steps=2)
    est, _ = phases(m, t)
    traced = {p.phase: p for p in r.breakdown.phases}
    peak_t = r.breakdown.peak_bytes
    peak_e = max(e.total for e in est)
    worst = ("", 0.0)
    for e in est:
        tp = traced[e.phase]
        for name, ev in e.components.as_dict().items():
            tv = getattr(tp.components, name)
            rel = abs(ev - tv) / max(tp.total, 1)
            if rel > abs(worst[1]):
                worst = (f"{e.phase}/{name}", (ev - tv) / max(tp.total, 1))
    return peak_t, peak_e, worst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true", help="also the full-size simulations (meta / fake tensors)")
    args = ap.parse_args()
    rows = []
    for case, opts in CASES.items():
        m = model_spec_from_config(SMALL_LLAMA, "small-llama")
        rows.append((f"small-llama {case}", m, resolve_train(m, **{**BASE, **opts}), "cpu"))
    for fam in FAMILIES:
        m = model_spec_from_config(TINY_CONFIGS[fam], fam)
        target = "attn" if fam == "mixtral" else "all-linear"
        rows.append((f"tiny {fam} lora", m, resolve_train(m, **{**BASE, "seq": 64, "lora_target": target}), "cpu"))
    if args.full:
        for label, (name, device, opts, *changes) in FULL_SIZE.items():
            m = load_model(name)
            if changes:  # a truncated model
                m = model_spec_from_config({**m.config, **changes[0]}, label)
            rows.append((label, m, resolve_train(m, **opts), device))
    errs = []
    print(f"{'config':44s} {'device':6s} {'traced MiB':>11s} {'estimate MiB':>13s} {'error':>7s}  worst component")
    for label, m, t, device in rows:
        t0 = time.perf_counter()
        peak_t, peak_e, (wname, wrel) = compare(m, t, device)
        err = (peak_e - peak_t) / peak_t
        errs.append(abs(err))
        print(
            f"{label:44s} {device:6s} {peak_t / MIB:11.2f} {peak_e / MIB:13.2f} {100 * err:+6.1f}%  "
            f"{wname} {100 * wrel:+.1f}% of phase ({time.perf_counter() - t0:.0f} s)"
        )
    print(
        f"\n{len(errs)} configurations: median |error| {100 * statistics.median(errs):.1f} %, "
        f"worst {100 * max(errs):.1f} %"
    )


if __name__ == "__main__":
    main()
