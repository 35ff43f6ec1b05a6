"""The Trainer's side of a measured step: which layers train under freeze tuning, AdamW's parameter groups
(weight decay off for biases and norms) and the optimizer `TrainingArguments.optim` names, as transformers'
Trainer builds them (trainer.py `get_decay_parameter_names`, `get_optimizer_cls_and_kwargs`, 5.24).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vramplan.errors import VramplanError

TRAINER_LR = 5e-5  # TrainingArguments.learning_rate default
TRAINER_ADAM_KWARGS = {"betas": (0.9, 0.999), "eps": 1e-8}  # adam_beta1, adam_beta2, adam_epsilon defaults
# Trainer.get_decay_parameter_names (transformers 5.24): no weight decay for biases and norms.
NO_DECAY_PATTERNS = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [mod for mod in model.modules() if isinstance(mod, GradientCheckpointingLayer)]


def freeze_all_but_last_layers(model: nn.Module, n: int) -> None:
    """LLaMA-Factory `_setup_freeze_tuning` (freeze_trainable_modules=all): parameters of the last `n` decoder
    layers train; embeddings, the other layers, the final norm and lm_head are frozen."""
    layers = decoder_layers(model)
    trainable = {id(p) for layer in layers[len(layers) - n :] for p in layer.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """The Trainer's groups: trainable parameters with weight decay, and biases / norms without."""
    from transformers.trainer_pt_utils import get_parameter_names

    decay = set(get_parameter_names(model, [nn.LayerNorm], list(NO_DECAY_PATTERNS)))
    groups = [
        {
            "params": [p for n, p in model.named_parameters() if n in decay and p.requires_grad],
            "weight_decay": 0.0,
        },
        {
            "params": [p for n, p in model.named_parameters() if n not in decay and p.requires_grad],
            "weight_decay": 0.0,
        },
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, optim: str) -> torch.optim.Optimizer:
    """The optimizer HF `TrainingArguments(optim=optim)` creates, with CUDA's implementation choice made
    explicit."""
    groups = param_groups(model)
    if not groups:
        raise VramplanError("nothing to train: no parameter requires grad")
    if optim in ("adamw_torch", "adamw_torch_fused"):
        impl = {"fused": True} if optim == "adamw_torch_fused" else {"foreach": True}  # CUDA's default is foreach
        return torch.optim.AdamW(groups, lr=TRAINER_LR, **TRAINER_ADAM_KWARGS, **impl)
    if optim == "sgd":
        return torch.optim.SGD(groups, lr=TRAINER_LR, foreach=True)
    if optim == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=TRAINER_LR, scale_parameter=False, relative_step=False)
    if optim in ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "lion_32bit"):
        import bitsandbytes as bnb
        from torch._subclasses.fake_tensor import unset_fake_temporarily

        bits = {"optim_bits": 8 if "8bit" in optim else 32, "is_paged": optim.startswith("paged")}
        # The 8-bit quantization maps are built from Python floats of real tensors (`create_dynamic_map`),
        # which a FakeTensorMode refuses: build the optimizer outside it (a no-op without one).
        with unset_fake_temporarily():
            if optim.startswith("lion"):
                return bnb.optim.Lion(groups, lr=TRAINER_LR, betas=TRAINER_ADAM_KWARGS["betas"], **bits)
            return bnb.optim.AdamW(groups, lr=TRAINER_LR, **TRAINER_ADAM_KWARGS, **bits)
    raise VramplanError(f"optimizer {optim!r} has no harness mapping yet")
