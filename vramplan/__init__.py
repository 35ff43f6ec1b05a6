"""vramplan: plan GPU memory for fine-tuning and serving LLMs.

The estimator is pure Python (no torch import); the measurement harness lives in `vramplan.measure`.
`estimate` and `Breakdown` are loaded on first use (PEP 562), so `vramplan --help` does not load the estimator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vramplan.errors import VramplanError

if TYPE_CHECKING:
    from vramplan.api import estimate
    from vramplan.breakdown import Breakdown

__all__ = ["Breakdown", "VramplanError", "estimate"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "estimate":
        from vramplan.api import estimate

        return estimate
    if name == "Breakdown":
        from vramplan.breakdown import Breakdown

        return Breakdown
    raise AttributeError(f"module 'vramplan' has no attribute {name!r}")
