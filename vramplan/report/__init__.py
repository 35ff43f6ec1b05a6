"""Rendering only: rich tables and JSON, one module per concern. GiB (1024³ bytes) everywhere, labelled.

common     GiB, bars, the title of a training result, the verdict line, notes, the keys results share
train      one training step: the component table and its JSON
estimate   `vramplan estimate`: the breakdown, the calibration used, the advice
parallel   several GPUs: one GPU's share, the run's totals, the alternatives
fit        `vramplan fit`: largest batch / sequence / rank
plot       `vramplan fit --plot`: terminal (plotext) or PNG (matplotlib)
serve      `vramplan serve`: serving memory, vLLM's start-up figures
measure    `vramplan measure` / `simulate`: measured or traced beside the estimate
trust      `vramplan validate` and `vramplan calibration`
profiles   `vramplan gpus` (and `--local`) and `vramplan models`

This package imports nothing: rich is imported inside the functions that draw, so `--json` never loads it.
"""

from __future__ import annotations
