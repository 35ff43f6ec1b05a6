"""The walk replay (`vramplan/estimator/allocator_replay.py`) against the traced replays: the estimator emits
each configuration's allocation sequence (`alloc_events.step_events`), replays it through the allocator model
under torch's defaults and expandable_segments:True, and compares max_memory_reserved and the least memory
that runs, as shares of the tensor peak, with the replays of the traced steps stored in
tests/data/allocator/{grid,held_out}.jsonl (benchmarks/allocator.py writes them). Beside them, the slack
model's error (left-one-family-out on the grid, as benchmarks/allocator_slack_fit.py derives it; held out: the
fitted model). Prints per configuration, then rms / worst per setting, checkpointing and figure (the table
in allocator_replay.py's docstring and its REPLAY_ERRORS), and the time the replays take. Asserts nothing.

    python benchmarks/allocator_walk_replay.py            # grid and held-out (~5 min)
    python benchmarks/allocator_walk_replay.py --grid     # the grid only
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from allocator_slack_fit import FIGURES, SETTINGS, load, target  # noqa: E402

from vramplan.allocator.replay import replay, smallest_limit  # noqa: E402
from vramplan.estimator.alloc_events import step_events  # noqa: E402
from vramplan.estimator.allocator_replay import bisection_step  # noqa: E402
from vramplan.estimator.allocator_slack import COEFFICIENTS  # noqa: E402
from vramplan.sources.profiles import load_model  # noqa: E402
from vramplan.spec import resolve_train  # noqa: E402
from vramplan.spec.alloc_conf import DEFAULT, EXPANDABLE  # noqa: E402

DATA = ROOT / "tests" / "data" / "allocator"
CONFIGS = {SETTINGS[0]: DEFAULT, SETTINGS[1]: EXPANDABLE}


def walk_shares(r: dict) -> tuple[dict[tuple[str, str], float], float, float, float]:
    """The walk replay's shares of its own peak by (setting, figure); its live peak over the estimate's; the
    seconds to emit and to replay (both settings, bisection included)."""
    m = load_model(r["model"])
    t = resolve_train(m, **r["opts"])
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        events = step_events(m, t)
    emitted = time.perf_counter()
    shares = {}
    live = 0
    for setting, config in CONFIGS.items():
        unlimited = replay(events, config)
        live = unlimited.stats.max_requested_bytes
        shares[setting, "max_reserved_bytes"] = unlimited.stats.max_reserved_bytes / live - 1
        need = smallest_limit(events, config, unlimited, granularity=bisection_step(live))
        shares[setting, "min_limit_bytes"] = need / live - 1
    done = time.perf_counter()
    return shares, live / r["estimate_peak_bytes"] - 1, emitted - start, done - emitted


def slack_errors(grid: list[dict], rows: list[dict], held_out: bool) -> list[dict[tuple[str, str], float]]:
    """The slack model's error per row: left-one-family-out on the grid, the fitted model on held-out rows."""
    out: list[dict[tuple[str, str], float]] = [{} for _ in rows]
    for setting in SETTINGS:
        for figure in FIGURES:
            if held_out:
                coef = np.array(COEFFICIENTS[setting, figure])
                for i, r in enumerate(rows):
                    out[i][setting, figure] = max(float(np.dot(r["features"], coef)), 0) - target(r, setting, figure)
                continue
            X = np.array([r["features"] for r in grid])
            y = np.array([target(r, setting, figure) for r in grid])
            for family in sorted({r["model"] for r in grid}):
                train = np.array([r["model"] != family for r in grid])
                c, *_ = np.linalg.lstsq(X[train], y[train], rcond=None)
                for i in np.flatnonzero(~train):
                    out[i][setting, figure] = max(float(X[i] @ c), 0) - y[i]
    return out


def stats(values: list[float]) -> str:
    if not values:
        return "    -/   -"
    return f"{100 * math.sqrt(sum(v * v for v in values) / len(values)):4.1f}/{100 * max(map(abs, values)):4.1f}"


def report(name: str, rows: list[dict], slack: list[dict]) -> None:
    print(f"\n{name}: {len(rows)} traced configurations (share of the tensor peak, walk replay − traced replay)")
    walk: list[dict[tuple[str, str], float]] = []
    live_errors, emit_seconds, replay_seconds = [], [], []
    for r, s in zip(rows, slack, strict=True):
        shares, live, emit, rep = walk_shares(r)
        errors = {key: shares[key] - target(r, *key) for key in shares}
        walk.append(errors)
        live_errors.append(live)
        emit_seconds.append(emit)
        replay_seconds.append(rep)
        cells = " ".join(
            f"{100 * errors[key]:+5.1f} ({100 * s[key]:+5.1f})" for key in ((st, f) for st in SETTINGS for f in FIGURES)
        )
        print(f"  {r['label'][:62]:62s} live {100 * live:+4.1f} {cells}  {emit:4.2f}+{rep:4.2f}s", flush=True)
    print(f"\n  {'setting':26s} {'ckpt':5s} {'figure':17s} {'walk replay':>12s} {'slack model':>12s}  (rms/worst %)")
    for setting in SETTINGS:
        for ckpt in (False, True, None):
            for figure in FIGURES:
                pick = [i for i, r in enumerate(rows) if ckpt is None or r["opts"]["grad_ckpt"] == ckpt]
                a = [walk[i][setting, figure] for i in pick]
                b = [slack[i][setting, figure] for i in pick]
                label = {None: "all", False: "off", True: "on"}[ckpt]
                print(f"  {setting:26s} {label:5s} {figure:17s} {stats(a):>12s} {stats(b):>12s}")
    print(f"  live peak vs estimate peak: {stats(live_errors)}")
    print(
        f"  seconds per configuration: emit median {sorted(emit_seconds)[len(rows) // 2]:.3f}, both settings' "
        f"replays median {sorted(replay_seconds)[len(rows) // 2]:.2f} (max {max(replay_seconds):.2f})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", action="store_true", help="the grid only")
    args = ap.parse_args()
    grid = load(DATA / "grid.jsonl")
    report("grid", grid, slack_errors(grid, grid, held_out=False))
    if not args.grid:
        held = load(DATA / "held_out.jsonl")
        report("held out", held, slack_errors(grid, held, held_out=True))


if __name__ == "__main__":
    main()
