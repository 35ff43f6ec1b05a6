"""The component set every breakdown shares."""

from __future__ import annotations

import dataclasses

from vramplan.breakdown import COMPONENTS, Components


def test_total_is_the_sum_of_every_component() -> None:
    # `total` spells the fields out (it runs in the estimator's inner loop): a new field must be added there too
    values = {name: 1 << i for i, name in enumerate(COMPONENTS)}
    c = Components(**values)
    assert c.total == sum(values.values())
    assert c.as_dict() == values
    assert tuple(f.name for f in dataclasses.fields(Components)) == COMPONENTS
