"""Optimizer states and the optimizer step's temporaries, by HF `TrainingArguments.optim` name.

All optimizer-state counting lives here. States exist from the first `step()` on; a steady-state step holds
them in every phase.
"""

from __future__ import annotations

from typing import NamedTuple

from vramplan.estimator.optimizer_memory_efficient import MEMORY_EFFICIENT_OPTIMIZERS, memory_efficient_states
from vramplan.estimator.params import Shape, layer_tensor_shapes, numel, trainable_shapes
from vramplan.estimator.weights import kept_fp32_bytes
from vramplan.spec import ModelSpec, TrainSpec
from vramplan.units import ceil_div

BNB_OPTIM_BLOCK = 256  # 8-bit optimizer absmax block (bitsandbytes optim/optimizer.py Optimizer2State.init_state)
BNB_MIN_8BIT_SIZE = 4096  # tensors with fewer elements keep fp32 states (min_8bit_size default)
BNB_PAGED_MIN_NUMEL = 100_000  # smaller tensors are not paged (Optimizer8bit.get_state_buffer, `p.numel() < 1e5`)
BNB_QMAP_BYTES = 2 * 256 * 4  # the shared signed/unsigned dynamic maps, fp32, once per optimizer
TORCH_STEP_BYTES = 4  # fused AdamW keeps `step` as a float32 tensor on the device, one per parameter


class OptimizerBytes(NamedTuple):
    states: int  # device memory held between steps
    paged: int  # CUDA managed (paged) memory: can spill to host, invisible to memory_allocated
    step_temporaries: int  # extra memory during `optimizer.step()`


def _bnb_states(shape: Shape, n_states: int, eight_bit: bool) -> int:
    k = numel(shape)
    if eight_bit and k >= BNB_MIN_8BIT_SIZE:
        blocks = ceil_div(k, BNB_OPTIM_BLOCK)
        return n_states * (k + 4 * blocks)
    return n_states * 4 * k


def _adafactor_step_bytes(m: ModelSpec, t: TrainSpec, shapes: list[tuple[Shape, int]], param_bytes: int) -> int:
    """Adafactor's temporaries while it updates its largest tensor: two fp32 `update`s, plus fp32 copies of
    the grad and the param when they are half precision; then either the row / column factors of the
    approximation, or, while `grad**2 + eps` is made, the previous tensor's `update` (the loop variable keeps
    it until reassigned). The previous tensor is bounded by the largest decoder-layer tensor (lm_head follows
    the last layer's MLP in the Trainer's decay group) or, for adapters, the largest adapter tensor."""
    big = max((s for s, _ in shapes), key=numel, default=())
    if not big:
        return 0
    k = numel(big)
    copies = 2 + (2 if param_bytes < 4 else 0)
    factors = numel(big[:-1]) + big[-1] if len(big) >= 2 else 0
    before = shapes if t.uses_lora else layer_tensor_shapes(m)
    previous = max((numel(s) for s, _ in before), default=0)
    return 4 * (copies * k + max(factors, previous))


def optimizer_bytes(m: ModelSpec, t: TrainSpec, param_bytes: int) -> OptimizerBytes:
    """States and step temporaries for the trainable tensors stored with `param_bytes` bytes per element.

    - adamw_torch_fused: exp_avg, exp_avg_sq in the parameter dtype + a device `step` tensor each; the fused
      kernel updates in place (torch/optim/adamw.py `_fused_adamw`, torch 2.13).
    - adamw_torch: CUDA default `foreach` path: the same states; `_multi_tensor_adam` allocates
      `exp_avg_sq_sqrt = _foreach_sqrt(exp_avg_sqs)`, one temporary the size of the largest param group.
    - adamw_8bit / paged_adamw_8bit: bitsandbytes Optimizer2State: uint8 state1/state2 + fp32 absmax per
      256 elements; fp32 states for tensors under 4096 elements. paged_*: states of tensors with >= 1e5
      elements in CUDA managed memory.
    - paged_adamw_32bit: two fp32 states, paged as above. lion_32bit: one fp32 state.
    - sgd: the Trainer builds `torch.optim.SGD` without momentum: no state.
    - adafactor (transformers.optimization.Adafactor, beta1=None): factored row/col second moments for
      tensors of rank >= 2, a full one otherwise, in fp32 (`step` upcasts a half-precision grad before it
      creates the states), and `RMS`, a 0-dim fp32 tensor per parameter. `step` works on one tensor at a time:
      fp32 copies of a half-precision grad and param, `update` = grad**2 + eps and its successor (the factored
      approximation or `-update`) alive together, and row / column factors (transformers 5.24
      optimization.py `Adafactor.step`, `_approx_sq_grad`).
    - GaLore, APOLLO, torchao low-bit AdamW, schedule-free AdamW, Muon, Adam-mini, BAdam:
      optimizer_memory_efficient.py.
    """
    if t.optim in MEMORY_EFFICIENT_OPTIMIZERS:
        states, temp = memory_efficient_states(m, t, param_bytes)
        return OptimizerBytes(states=states, paged=0, step_temporaries=temp)
    shapes = trainable_shapes(m, t)
    opt = t.optim
    states = paged = temp = 0
    if opt in ("adamw_torch", "adamw_torch_fused"):
        total = sum(numel(s) * n for s, n in shapes)
        # states in each parameter's dtype: the ones transformers keeps in fp32 (DeepSeek-V3's router) too
        kept = kept_fp32_bytes(m, t) if t.method == "full" else 0
        states = 2 * (total * param_bytes + kept)
        if opt == "adamw_torch_fused":
            states += TORCH_STEP_BYTES * sum(n for _, n in shapes)
        else:
            temp = total * param_bytes + kept
    elif opt in ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "lion_32bit"):
        eight = "8bit" in opt
        n_states = 1 if opt.startswith("lion") else 2
        is_paged = opt.startswith("paged")
        for s, n in shapes:
            b = _bnb_states(s, n_states, eight) * n
            if is_paged and numel(s) >= BNB_PAGED_MIN_NUMEL:
                # only state1/state2 come from get_state_buffer (paged); absmax1/absmax2 are plain device
                # tensors (torch.zeros in Optimizer2State.init_state)
                on_device = b - n_states * numel(s) * (1 if eight else 4) * n
                paged += b - on_device
                states += on_device
            else:
                states += b
        if eight and any(numel(s) >= BNB_MIN_8BIT_SIZE for s, _ in shapes):
            states += BNB_QMAP_BYTES  # created with the first 8-bit state (Optimizer2State.init_state)
    elif opt == "adafactor":
        for s, n in shapes:
            if len(s) >= 2:
                states += n * 4 * (numel(s[:-1]) + numel(s[:-2] + s[-1:]) + 1)  # row, col, RMS
            else:
                states += n * 4 * (numel(s) + 1)  # exp_avg_sq, RMS
        temp = _adafactor_step_bytes(m, t, shapes, param_bytes)
    elif opt == "sgd":
        pass
    return OptimizerBytes(states=states, paged=paged, step_temporaries=temp)
