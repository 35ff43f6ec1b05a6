"""vramplan: plan GPU memory for fine-tuning and serving LLMs.

The estimator is pure Python (no torch import); the measurement harness lives in `vramplan.measure`.
"""

from __future__ import annotations

from vramplan.api import estimate
from vramplan.breakdown import Breakdown
from vramplan.errors import VramplanError

__all__ = ["Breakdown", "VramplanError", "estimate"]
__version__ = "0.1.0"
