"""LoRA / DoRA adapter storage.

PEFT keeps adapter weights in fp32 even on a bf16 or 4-bit base: `get_peft_model(...,
autocast_adapter_dtype=True)` (the default) upcasts fp16/bf16 adapters (peft/tuners/tuners_utils.py
`_cast_adapter_dtype`, peft 0.21.2). PEFT before 0.12 moved each adapter to its base weight's dtype when
that is a float (tuners/lora/layer.py `update_layer`, 0.11.1): bf16 adapters on a bf16 base, fp32 on a 4-bit
or int8 one (spec/stack.py `adapters-in-base-dtype`).
"""

from __future__ import annotations

from vramplan.estimator.params import lora_params
from vramplan.spec import DTYPE_BYTES, ModelSpec, TrainSpec

ADAPTER_BYTES = 4  # fp32


def adapter_dtype(t: TrainSpec) -> str:
    """The adapters' dtype: fp32, or the base weights' dtype under PEFT < 0.12 on an unquantized base (a
    bitsandbytes or pre-quantized base's packed weight is no float: fp32 there too)."""
    unquantized = t.quant == "none" and t.checkpoint is None
    return t.dtype if t.stack.adapters_in_base_dtype and unquantized else "fp32"


def adapter_param_bytes(t: TrainSpec) -> int:
    """Bytes per adapter parameter (and per gradient and AdamW state element: they take its dtype)."""
    return DTYPE_BYTES[adapter_dtype(t)]


def adapter_bytes(m: ModelSpec, t: TrainSpec) -> int:
    return lora_params(m, t) * adapter_param_bytes(t) if t.uses_lora else 0
