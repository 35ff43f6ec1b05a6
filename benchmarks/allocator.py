"""The caching allocator on traced steps: the real HF/PEFT/bitsandbytes step traced at full size on fake or meta
tensors (2 steps, HF Trainer loop), its allocation sequence replayed through `vramplan.allocator.model` under
torch's default settings and under expandable_segments:True. Prints, per configuration, the tensor peak and
max_memory_allocated, max_memory_reserved and the least memory on which the step runs, as a share of the
tensor peak; and the estimator's allocator figures beside them. Asserts nothing.

    python benchmarks/allocator.py                 # the configurations of issue 19
    python benchmarks/allocator.py --grid FILE     # the oracle grid, one JSON line per configuration, appended
                                                   # to FILE (configurations already in FILE are skipped)
    python benchmarks/allocator.py --held-out FILE # the held-out configurations, likewise
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.oracle.allocator_grid import GRID, HELD_OUT, ISSUE_CONFIGS, label_of
from vramplan.spec.alloc_conf import DEFAULT, EXPANDABLE

GIB = 1024**3


def trace(name: str, opts: dict):
    from vramplan.allocator.replay import allocator_figures
    from vramplan.measure.harness import simulate
    from vramplan.sources.profiles import load_model
    from vramplan.spec import resolve_train

    m = load_model(name)
    t = resolve_train(m, **opts)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = simulate(m, t, steps=2)
    seconds = time.perf_counter() - start
    figures = {c.label: allocator_figures(r.events, c) for c in (DEFAULT, EXPANDABLE)}
    return m, t, r, figures, seconds


def load_warmup_figures(r) -> dict:
    """The same replays as if the weights were loaded by from_pretrained(device_map=...)."""
    return {c.label: r.allocator_figures(c, load_warmup=True) for c in (DEFAULT, EXPANDABLE)}


def record(name: str, opts: dict) -> dict:
    _, _, r, figures, seconds = trace(name, opts)
    b = r.breakdown
    return {
        "label": label_of(name, opts),
        "model": name,
        "opts": opts,
        "tensor_peak_bytes": b.peak_bytes,
        "peak_phase": b.peak_phase,
        "components": b.components.as_dict(),
        "events": len(r.events),
        "trace_seconds": round(seconds, 1),
        "replay": {
            label: {
                "max_allocated_bytes": f.max_allocated_bytes,
                "max_reserved_bytes": f.max_reserved_bytes,
                "min_limit_bytes": f.min_limit_bytes,
            }
            for label, f in figures.items()
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", metavar="FILE", help="trace the oracle grid and append JSON lines to FILE")
    ap.add_argument("--held-out", metavar="FILE", help="trace the held-out configurations likewise")
    args = ap.parse_args()
    if args.grid or args.held_out:
        path = Path(args.grid or args.held_out)
        configs = GRID if args.grid else HELD_OUT
        done = {json.loads(line)["label"] for line in path.read_text().splitlines()} if path.exists() else set()
        for name, opts in configs:
            if label_of(name, opts) in done:
                continue
            rec = record(name, opts)
            with path.open("a") as f:
                f.write(json.dumps(rec, sort_keys=True) + "\n")
            rs = rec["replay"]
            shares = {k: round(v["max_reserved_bytes"] / rec["tensor_peak_bytes"] - 1, 3) for k, v in rs.items()}
            print(rec["label"], f"{rec['trace_seconds']} s", shares, flush=True)
        return
    from vramplan.api import estimate

    print(
        f"{'configuration':52s} {'peak GiB':>8s}  {'setting':13s} {'allocated':>9s} {'reserved':>9s} "
        f"{'runs on':>8s}  estimate (reserved / runs on)"
    )
    for name, opts in ISSUE_CONFIGS:
        m, t, r, figures, _ = trace(name, opts)
        e = estimate(m, train=t)
        rows = [(label, label, f) for label, f in figures.items()]
        rows += [(label, label + " + from_pretrained load", f) for label, f in load_warmup_figures(r).items()]
        for i, (label, shown, f) in enumerate(rows):
            head = f"{label_of(name, opts):52s} {f.tensor_peak_bytes / GIB:8.2f}" if i == 0 else " " * 61
            short = shown.replace("expandable_segments:True", "expand.").replace(" + from_pretrained load", "+load")
            print(
                f"{head}  {short:13s} {100 * f.share(f.max_allocated_bytes):+8.2f}% "
                f"{100 * f.share(f.max_reserved_bytes):+8.1f}% {100 * f.share(f.min_limit_bytes):+7.1f}%  "
                + (estimated(e, label) if i < 2 else "")
            )


def estimated(e, label: str) -> str:
    """The estimator's allocator figures for the same step under the setting `label`."""
    from vramplan.estimator.allocator_slack import allocator_slack
    from vramplan.spec.alloc_conf import parse_alloc_conf

    s = allocator_slack(e.peak_shape, parse_alloc_conf(label.replace("default", "")))
    return f"{100 * s.reserved_bytes / e.peak_bytes:+.1f}% / {100 * s.need_bytes / e.peak_bytes:+.1f}%"


if __name__ == "__main__":
    main()
