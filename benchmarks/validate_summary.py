"""Print the published-validation summary for docs/accuracy.md: median / worst |error| per confidence
level over the headline records, and the exclusions by reason. The oracle grid's summary is
benchmarks/accuracy.py.

    python benchmarks/validate_summary.py
"""

from __future__ import annotations

import platform
from importlib.metadata import version
from pathlib import Path

import vramplan
from vramplan.report.trust import validation_summary_lines
from vramplan.trust.validate import Row, validate


def _row(r: Row) -> str:
    est, err = (r.estimated_bytes or 0) / 1e9, 100 * (r.error or 0)
    return f"{r.id:38} {r.measured_bytes / 1e9:7.2f} {est:7.2f} {err:+6.1f} %"


def main() -> None:
    v = validate()
    data = Path(v.path).resolve()
    package_root = Path(vramplan.__file__).resolve().parents[1]
    shown = data.relative_to(package_root) if data.is_relative_to(package_root) else data
    print(f"vramplan {version('vramplan')} · python {platform.python_version()} · {shown}")
    for line in validation_summary_lines(v):
        print(line)
    print("headline rows (estimated vs measured, GB = 1e9 B):")
    for r in v.rows:
        if r.headline:
            print(f"  {_row(r)}")
    print("mapped but excluded (shown, not in the summary):")
    for r in v.rows:
        if r.mapped is not None and not r.headline and r.error is not None:
            print(f"  {_row(r)}  ({r.reasons[0]})")


if __name__ == "__main__":
    main()
