"""The walk replay's figures, recorded and compared: a check that a change to the allocator model
(`vramplan/allocator/`) or the emitter (`vramplan/estimator/alloc_events.py`) meant to be faster moves no
figure. For each configuration of the allocator oracle grid, the held-out set, issue 19's and test_alloc_events'
VARIED ones: a digest of the emitted sequence, and per setting (torch's defaults, expandable_segments:True) the
replay's max allocated / reserved / requested bytes, segments and retries, and the least memory that runs
(at the estimator's `bisection_step` and at 2 MiB), plus the seconds each took.

    python benchmarks/allocator_replay_identity.py --record FILE.jsonl   # the figures of the code at hand
    python benchmarks/allocator_replay_identity.py --compare FILE.jsonl  # byte-identical to FILE, or the rows
    python benchmarks/allocator_replay_identity.py --window FILE.jsonl   # replay need − slack model's need

`--window`: how far the walk replay's least memory that runs (FILE's) lands from the slack model's, as a share
of the tensor peak, per setting: the span `allocator_replay.VERDICT_WINDOW` covers.

tests/data/allocator/walk_replay_reference.jsonl holds the figures recorded before the replay was made faster
(tests/allocator/test_replay_identity.py checks a few rows of it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from oracle.allocator_grid import GRID, HELD_OUT, ISSUE_CONFIGS, label_of  # noqa: E402

from tests.estimator.test_alloc_events import VARIED  # noqa: E402  (the configurations beyond the grid)
from vramplan.allocator.blocks import ROUND_LARGE  # noqa: E402
from vramplan.allocator.replay import replay, smallest_limit  # noqa: E402
from vramplan.estimator.alloc_events import step_events  # noqa: E402
from vramplan.estimator.allocator_replay import bisection_step  # noqa: E402
from vramplan.sources.profiles import load_model  # noqa: E402
from vramplan.spec import resolve_train  # noqa: E402
from vramplan.spec.alloc_conf import DEFAULT, EXPANDABLE  # noqa: E402

CONFIGS = [*GRID, *HELD_OUT, *ISSUE_CONFIGS, *VARIED]
SETTINGS = {"default": DEFAULT, "expandable_segments:True": EXPANDABLE}


def events_digest(events) -> str:
    return hashlib.sha256(json.dumps(events, separators=(",", ":")).encode()).hexdigest()[:16]


def figures(name: str, opts: dict, fine: bool = True) -> dict:
    """One configuration's recorded figures (`fine`: also the least memory that runs to 2 MiB)."""
    m = load_model(name)
    t = resolve_train(m, **opts)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        events = step_events(m, t)
    row: dict = {"label": label_of(name, opts), "model": name, "opts": opts, "events": len(events)}
    row["digest"] = events_digest(events)
    row["emit_seconds"] = round(time.perf_counter() - start, 4)
    for setting, config in SETTINGS.items():
        start = time.perf_counter()
        unlimited = replay(events, config)
        replayed = time.perf_counter()
        s = unlimited.stats
        limit = smallest_limit(events, config, unlimited, granularity=bisection_step(s.max_requested_bytes))
        bisected = time.perf_counter()
        row[setting] = {
            "max_allocated_bytes": s.max_allocated_bytes,
            "max_reserved_bytes": s.max_reserved_bytes,
            "max_requested_bytes": s.max_requested_bytes,
            "num_segments": s.num_segments,
            "num_alloc_retries": s.num_alloc_retries,
            "min_limit_bytes": limit,
            "replay_seconds": round(replayed - start, 4),
            "bisection_seconds": round(bisected - replayed, 4),
        }
        if fine:
            row[setting]["min_limit_2mib_bytes"] = smallest_limit(events, config, unlimited, granularity=ROUND_LARGE)
    return row


FIGURE_KEYS = (
    "max_allocated_bytes",
    "max_reserved_bytes",
    "max_requested_bytes",
    "num_segments",
    "num_alloc_retries",
    "min_limit_bytes",
    "min_limit_2mib_bytes",
)


def differences(reference: dict, row: dict) -> list[str]:
    out = [] if reference["digest"] == row["digest"] else [f"events {reference['digest']} -> {row['digest']}"]
    for setting in SETTINGS:
        for key in FIGURE_KEYS:
            if key in reference[setting] and key in row[setting] and reference[setting][key] != row[setting][key]:
                out.append(f"{setting} {key} {reference[setting][key]} -> {row[setting][key]}")
    return out


def window(path: Path) -> None:
    """Replay need − slack need (shares of the tensor peak) over FILE's configurations, per setting."""
    from vramplan.estimator.build import build_breakdown

    for setting in SETTINGS:
        diffs = []
        for row in map(json.loads, path.read_text().splitlines()):
            m = load_model(row["model"])
            opts = {**row["opts"], **({"alloc_conf": setting} if setting != "default" else {})}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                b = build_breakdown(m, resolve_train(m, **opts), None)
            figures = row[setting]
            replayed = figures["min_limit_bytes"] / figures["max_requested_bytes"] - 1
            diffs.append((replayed - b.model_allocator.need_bytes / b.peak_bytes, row["label"]))
        diffs.sort()
        print(f"{setting}: {len(diffs)} configurations, replay − model need {100 * diffs[0][0]:+.1f} % "
              f"({diffs[0][1]}) … {100 * diffs[-1][0]:+.1f} % ({diffs[-1][1]})")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--record", type=Path)
    group.add_argument("--compare", type=Path)
    group.add_argument("--window", type=Path)
    ap.add_argument("--coarse", action="store_true", help="skip the 2 MiB bisection")
    args = ap.parse_args()
    if args.record:
        with args.record.open("w") as f:
            for name, opts in CONFIGS:
                row = figures(name, opts, fine=not args.coarse)
                f.write(json.dumps(row, sort_keys=True) + "\n")
                f.flush()
                print(row["label"], row["emit_seconds"], {s: row[s]["bisection_seconds"] for s in SETTINGS})
        return
    if args.window:
        window(args.window)
        return
    reference = [json.loads(line) for line in args.compare.read_text().splitlines()]
    failed = 0
    totals = {"emit": [0.0, 0.0], "replay": [0.0, 0.0], "bisection": [0.0, 0.0]}
    for ref in reference:
        row = figures(ref["model"], ref["opts"], fine=not args.coarse)
        diff = differences(ref, row)
        failed += bool(diff)
        totals["emit"][0] += ref["emit_seconds"]
        totals["emit"][1] += row["emit_seconds"]
        for setting in SETTINGS:
            for part in ("replay", "bisection"):
                totals[part][0] += ref[setting][f"{part}_seconds"]
                totals[part][1] += row[setting][f"{part}_seconds"]
        print(f"{row['label'][:70]:70s} {'DIFFERS ' + '; '.join(diff) if diff else 'identical'}", flush=True)
    for part, (before, after) in totals.items():
        print(f"{part:10s} seconds: recorded {before:7.2f}, now {after:7.2f}")
    print(f"{len(reference) - failed} of {len(reference)} configurations identical")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
