"""The inputs, in one place: a model's shapes (`model`), a training step (`train`), a multi-GPU run (`parallel`).

Serving's ServeSpec lives in `vramplan.estimator.serve` beside its resolver.
"""

from __future__ import annotations

from typing import Any

from vramplan.spec.config import model_spec_from_config  # noqa: F401
from vramplan.spec.family_common import DEFAULT_ACT  # noqa: F401
from vramplan.spec.family_traits import HAND_MODELLED_TYPES, HEAD_DIM_DEFAULTS, LLAMA_LIKE  # noqa: F401
from vramplan.spec.lora_targets import (  # noqa: F401
    LORA_TARGET_PRESETS,
    PEFT_DEFAULT_TARGETS,
    lora_moe_targets,
    resolve_lora_target,
)
from vramplan.spec.model import (  # noqa: F401
    ATTNS,
    DTYPE_BYTES,
    DTYPES,
    METHODS,
    MIXED,
    QUANTS,
    Attn,
    Dtype,
    LinearSpec,
    Method,
    MixedPrecision,
    ModelSpec,
    ParamSpec,
    Quant,
)
from vramplan.spec.optimizer_choice import OPTIM_ALIASES, OPTIMIZERS  # noqa: F401
from vramplan.spec.train import LOSSES, TrainSpec, resolve_train  # noqa: F401


def __getattr__(name: str) -> Any:
    """`SUPPORTED_MODEL_TYPES`, every model_type `estimate` accepts (spec/architectures.py `supported_types`),
    computed on first use: importing vramplan.spec does not read the 3 MB architecture table."""
    if name == "SUPPORTED_MODEL_TYPES":
        from vramplan.spec.architectures import supported_types

        return supported_types()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
