"""Full-size models traced without memory: the real HF / PEFT / bitsandbytes code on fake tensors (LoRA, full)
or the meta device (QLoRA: bitsandbytes' ops have meta kernels), held to the same tolerances as the tiny grid,
with the issue's 4 MiB floor for small components."""

from __future__ import annotations

import pytest

from tests.oracle.conftest import check
from tests.oracle.grid import FULL_SIZE
from vramplan.profiles import load_model
from vramplan.spec import resolve_train

SLOW: set[str] = set()  # each runs in 4-13 s here; all are in CI


@pytest.mark.parametrize(
    "label", [pytest.param(k, marks=pytest.mark.slow) if k in SLOW else k for k in FULL_SIZE]
)  # fmt: skip
def test_full_size(label):
    name, device, opts = FULL_SIZE[label]
    m = load_model(name)
    check(m, resolve_train(m, **opts), device, abs_tol=4 * 1024**2)
