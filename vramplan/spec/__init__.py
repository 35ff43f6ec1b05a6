"""The inputs, in one place: a model's shapes (`model`), a training step (`train`), a multi-GPU run (`parallel`).

Serving's ServeSpec lives in `vramplan.estimator.serve` beside its resolver.
"""

from __future__ import annotations

from vramplan.spec.config import model_spec_from_config  # noqa: F401
from vramplan.spec.family_common import DEFAULT_ACT  # noqa: F401
from vramplan.spec.family_traits import HEAD_DIM_DEFAULTS, LLAMA_LIKE, SUPPORTED_MODEL_TYPES  # noqa: F401
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
