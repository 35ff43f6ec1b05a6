"""Trace one SFT step of a PEFT method other than LoRA (PEFT 0.21.2's own `get_peft_model`) under the tracker,
on CPU with CUDA's kernels and autocast (as the harness does), to hold the estimate of `--peft` methods to.

The step is the harness's (forward under autocast, `loss.backward()`, AdamW, `zero_grad`); the model is
transformers' from config with PEFT's config for the method (`peft_config`), defaults as PEFT sets them.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

from vramplan.breakdown import PhaseUsage
from vramplan.measure.build import TORCH_DTYPES, hf_config
from vramplan.measure.cuda_equiv import cuda_equivalence
from vramplan.measure.harness import TRAINER_MAX_GRAD_NORM, components
from vramplan.measure.step_hooks import wrap_checkpointing
from vramplan.measure.tracker import MemoryTracker
from vramplan.measure.trainer_setup import build_optimizer
from vramplan.spec import ModelSpec, TrainSpec


def peft_config(t: TrainSpec):
    """PEFT's config of `t.peft` on `t.lora_target` with rank `t.lora_rank`."""
    import peft

    p, r, targets, causal = t.peft, t.lora_rank, list(t.lora_target), "CAUSAL_LM"
    return {
        "adalora": lambda: peft.AdaLoraConfig(init_r=r, target_modules=targets, total_step=10, task_type=causal),
        "ia3": lambda: peft.IA3Config(target_modules=targets, task_type=causal),
        "loha": lambda: peft.LoHaConfig(r=r, target_modules=targets),
        "lokr": lambda: peft.LoKrConfig(r=r, target_modules=targets),
        "vera": lambda: peft.VeraConfig(r=r, target_modules=targets),
        "oft": lambda: peft.OFTConfig(oft_block_size=p.block_size, r=0, target_modules=targets),
        "boft": lambda: peft.BOFTConfig(boft_block_size=p.block_size, target_modules=targets),
        "prompt_tuning": lambda: peft.PromptTuningConfig(num_virtual_tokens=p.num_virtual_tokens, task_type=causal),
        "p_tuning": lambda: peft.PromptEncoderConfig(num_virtual_tokens=p.num_virtual_tokens, task_type=causal),
        "prefix_tuning": lambda: peft.PrefixTuningConfig(num_virtual_tokens=p.num_virtual_tokens, task_type=causal),
    }[p.name]()


def trace_peft(m: ModelSpec, t: TrainSpec, steps: int = 2) -> tuple[PhaseUsage, ...]:
    """Each phase's traced peak of `steps` SFT steps of `t.peft` on CPU (unquantized base)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    autocast_dtype = TORCH_DTYPES[t.mixed_precision] if t.mixed_precision != "no" else None
    tracker = MemoryTracker(device_type="cpu")
    with cuda_equivalence("cpu", autocast_dtype) as emu, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(hf_config(m, t, t.attn), dtype=TORCH_DTYPES[t.dtype])
        if t.grad_ckpt:
            model.gradient_checkpointing_enable()
        model = get_peft_model(model, peft_config(t))
        model.train()
        optimizer = build_optimizer(model, t.optim)
        tracker.register_module(model)
        tracker.register_optimizer(optimizer)
        wrap_checkpointing(model, tracker, emu)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        with tracker:
            for _step in range(steps):
                with tracker.phase_scope("forward"):
                    ids = torch.randint(0, m.vocab_size, (t.batch, t.seq))
                    with emu.region() if emu is not None else contextlib.nullcontext():
                        loss = model(input_ids=ids, labels=ids).loss
                with tracker.phase_scope("backward"):
                    loss.backward()
                del loss, ids
                with tracker.phase_scope("optimizer"):
                    torch.nn.utils.clip_grad_norm_(params, TRAINER_MAX_GRAD_NORM)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
        tracker.remove_hooks()
    return tuple(PhaseUsage(p.phase, components(p.breakdown), p.moment or "") for p in tracker.result().phases)
