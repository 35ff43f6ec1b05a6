"""LoRA / DoRA adapter storage.

PEFT keeps adapter weights in fp32 even on a bf16 or 4-bit base: `get_peft_model(...,
autocast_adapter_dtype=True)` (the default) upcasts fp16/bf16 adapters (peft/tuners/tuners_utils.py
`_cast_adapter_dtype`, peft 0.21.2).
"""

from __future__ import annotations

from vramplan.estimator.params import lora_params
from vramplan.spec import ModelSpec, TrainSpec

ADAPTER_BYTES = 4  # fp32


def adapter_bytes(m: ModelSpec, t: TrainSpec) -> int:
    return lora_params(m, t) * ADAPTER_BYTES if t.uses_lora else 0
