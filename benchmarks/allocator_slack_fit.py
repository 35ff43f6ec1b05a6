"""Derive the estimator's caching-allocator model (`vramplan/estimator/allocator_slack.py`) from replays of traced
steps: least squares of the slack (as a share of the tensor peak) on the features `slack_features` reads from
the estimate's peak phase, per allocator setting and figure; its error left-one-family-out over the grid and on
the held-out configurations. Prints the coefficients to paste into allocator_slack.py, and the errors.

    python benchmarks/allocator.py --grid tests/data/allocator/grid.jsonl          # the replays (~15 min)
    python benchmarks/allocator.py --held-out tests/data/allocator/held_out.jsonl
    python benchmarks/allocator_slack_fit.py
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vramplan.estimator.allocator_slack import FIGURES, SETTINGS, PeakShape, slack_features  # noqa: E402
from vramplan.estimator.peak import phases  # noqa: E402
from vramplan.sources.profiles import load_model  # noqa: E402
from vramplan.spec import resolve_train  # noqa: E402

DATA = ROOT / "tests" / "data" / "allocator"


def load(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        m = load_model(r["model"])
        t = resolve_train(m, **r["opts"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ph, _ = phases(m, t)
        peak = max(ph, key=lambda p: p.total)
        c = peak.components
        r["features"] = slack_features(PeakShape(c.total, c.logits, c.activations, t.grad_ckpt))
        r["estimate_peak_bytes"] = peak.total
        rows.append(r)
    return rows


def target(r: dict, setting: str, figure: str) -> float:
    return r["replay"][setting][figure] / r["tensor_peak_bytes"] - 1


def main() -> None:
    grid = load(DATA / "grid.jsonl")
    held = load(DATA / "held_out.jsonl") if (DATA / "held_out.jsonl").exists() else []
    families = sorted({r["model"] for r in grid})
    print(f"{len(grid)} grid configurations ({', '.join(families)}), {len(held)} held out\n")
    print("COEFFICIENTS = {")
    report = []
    for setting in SETTINGS:
        for figure in FIGURES:
            X = np.array([r["features"] for r in grid])
            y = np.array([target(r, setting, figure) for r in grid])
            coef, *_ = np.linalg.lstsq(X, y, rcond=None)
            lofo = np.zeros(len(grid))
            for fam in families:
                train = np.array([r["model"] != fam for r in grid])
                c, *_ = np.linalg.lstsq(X[train], y[train], rcond=None)
                lofo[~train] = np.maximum(X[~train] @ c, 0) - y[~train]
            fit = np.maximum(X @ coef, 0) - y
            out = (
                np.array([max(float(np.dot(r["features"], coef)), 0) - target(r, setting, figure) for r in held])
                if held
                else np.zeros(1)
            )
            print(f"    ({setting!r}, {figure!r}): ({', '.join(f'{v:.4f}' for v in coef)}),")
            report.append((setting, figure, y, fit, lofo, out))
    print("}\n")
    print("ERRORS = {  # rounded up to 0.1 %")
    for setting, figure, _, _, lofo, out in report:
        values = (np.sqrt((lofo**2).mean()), abs(lofo).max(), np.sqrt((out**2).mean()), abs(out).max())
        print(f"    ({setting!r}, {figure!r}): ({', '.join(f'{math.ceil(v * 1000) / 1000:.3f}' for v in values)}),")
    print("}\n")
    print(
        f"{'setting':26s} {'figure':19s} {'replay share':>16s} {'fit rms/max':>13s} {'LOFO rms/max':>13s} "
        f"{'held-out rms/max':>17s}"
    )
    for setting, figure, y, fit, lofo, out in report:
        print(
            f"{setting:26s} {figure:19s} {100 * y.min():+6.1f}..{100 * y.max():+5.1f}% "
            f"{100 * np.sqrt((fit**2).mean()):5.1f}/{100 * abs(fit).max():4.1f}% "
            f"{100 * np.sqrt((lofo**2).mean()):5.1f}/{100 * abs(lofo).max():4.1f}% "
            f"{100 * np.sqrt((out**2).mean()):8.1f}/{100 * abs(out).max():4.1f}%"
        )


if __name__ == "__main__":
    main()
