"""Which optimizer a training step uses: HF TrainingArguments.optim names, their other spellings, and the
projection rank of GaLore / APOLLO (`resolve_optim`)."""

from __future__ import annotations

from vramplan.spec.fields import positive

OPTIMIZERS: tuple[str, ...] = (
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_8bit",
    "adamw_bnb_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "sgd",
    "adafactor",
    "lion_32bit",
    # vramplan/estimator/optimizer_memory_efficient.py
    "galore_adamw",
    "galore_adamw_8bit",
    "galore_adafactor",
    "galore_adamw_layerwise",
    "galore_adamw_8bit_layerwise",
    "galore_adafactor_layerwise",
    "apollo_adamw",
    "apollo_adamw_layerwise",
    "adamw_torch_8bit",
    "adamw_torch_4bit",
    "adamw_torch_fp8",
    "schedule_free_adamw",
    "muon",
    "adam_mini",
    "badam",
)
# other spellings: axolotl's torchao names (utils/schemas/enums.py CustomSupportedOptimizers), APOLLO-Mini
# (APOLLO at rank 1 with tensor-wise scaling: its states are those of rank 1)
OPTIM_ALIASES = {"adamw_bnb_8bit": "adamw_8bit", "ao_adamw_8bit": "adamw_torch_8bit",
                 "ao_adamw_4bit": "adamw_torch_4bit", "ao_adamw_fp8": "adamw_torch_fp8", "apollo_mini": "apollo_adamw",
                 "adam-mini": "adam_mini"}  # fmt: skip
# GaLore / APOLLO projection rank when none is given: transformers trainer_optimizer.py `optim_args` "rank" 128
DEFAULT_OPTIM_RANK = 128
PROJECTED_OPTIMS = ("galore_", "apollo_")


def resolve_optim(optim: str, optim_rank: int | None, grad_accum: int, notes: list[str]) -> tuple[str, int]:
    """`optim` (lower case) as one of OPTIMIZERS, and its projection rank: `optim_rank` or DEFAULT_OPTIM_RANK for
    GaLore / APOLLO (1 for APOLLO-Mini), 0 for the others. A layer-wise optimizer under gradient accumulation
    is said in `notes`."""
    from vramplan.errors import did_you_mean

    if optim == "apollo_mini" and optim_rank is None:
        optim_rank = 1
    optim = OPTIM_ALIASES.get(optim, optim)
    if optim not in OPTIMIZERS:
        raise did_you_mean(optim, OPTIMIZERS, "optimizer", "HF TrainingArguments.optim names")
    if optim.startswith(PROJECTED_OPTIMS):
        optim_rank = positive(DEFAULT_OPTIM_RANK if optim_rank is None else optim_rank, "--optim-rank", 2**16)
    else:
        optim_rank = 0
    if optim.endswith("_layerwise") and isinstance(grad_accum, int) and grad_accum > 1:
        notes.append(f"{optim} steps each parameter from its gradient hook: transformers refuses "
                     "gradient_accumulation_steps > 1 with it (estimated as given)")  # fmt: skip
    return optim, optim_rank
