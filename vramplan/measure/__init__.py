"""The measurement harness: runs real (or fake/meta) torch code and records what it allocates.

Imports torch; the CLI imports this package inside its commands only.
"""

from __future__ import annotations

from vramplan.measure.harness import run_step, simulate
from vramplan.measure.result import CudaFigures, MeasureResult, OutOfMemory
from vramplan.measure.tracked import CategoryBytes, MomentPeak, PhasePeak, TrackedPeak
from vramplan.measure.tracker import MemoryTracker

__all__ = [
    "CategoryBytes",
    "CudaFigures",
    "MeasureResult",
    "MemoryTracker",
    "MomentPeak",
    "OutOfMemory",
    "PhasePeak",
    "TrackedPeak",
    "run_step",
    "simulate",
]
