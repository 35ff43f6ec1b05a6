"""Logits and the loss: b·s·vocab values, several copies around the cross-entropy.

transformers 5.24 `ForCausalLMLoss` (loss/loss_utils.py) upcasts the logits to fp32 for every model, then
`cross_entropy` = log_softmax (saves its fp32 output) + nll_loss; the labels are padded and shifted, the
logits are not copied (since 4.49.0).
- forward, at the loss: logits in the compute dtype + their fp32 upcast + log_softmax output.
- saved into backward: the log_softmax output (fp32).
- backward, at LogSoftmaxBackward: the saved output + nll_loss's dense gradient + log_softmax's input
  gradient, all fp32; the Trainer's `compute_loss` has dropped `outputs.logits` by then.
Older releases (spec/stack.py), over the N = batch·(seq−1) shifted positions:
- 4.46-4.48 (`shifted-logits-copy`): the loss copies `logits[..., :-1, :].contiguous()` (fp32, N·V) before
  log_softmax, which then runs over N rows: forward = head + fp32 upcast + copy + log_softmax output.
- before 4.46 (`logits-upcast-in-model`): `logits = logits.float()` inside LlamaForCausalLM.forward; the
  compute-dtype logits die at the cast, the fp32 ones are the model's output: forward = max(head + upcast,
  upcast + copy + log_softmax output).
Traced (tests/spec/test_stack.py): 4.48.3 and 5.24.0 on CPU, within 0.1 %.
"""

from __future__ import annotations

from typing import NamedTuple

from vramplan.spec import DTYPE_BYTES, ModelSpec, TrainSpec


class LogitsBytes(NamedTuple):
    forward_peak: int
    saved: int
    backward_peak: int


def head_dtype_bytes(t: TrainSpec) -> int:
    """Bytes per element of lm_head's output (the logits before the loss's upcast): the compute dtype's, fp32 for
    kbit prep's fp32 lm_head without autocast."""
    return 4 if t.kbit_prep and t.mixed_precision == "no" else DTYPE_BYTES[t.compute_dtype]


def logits_bytes(m: ModelSpec, t: TrainSpec) -> LogitsBytes:
    tv = t.tokens * m.vocab_size
    upcast_at = t.stack.logits_upcast
    if upcast_at != "loss" and not m.final_softcap:
        return _shifted_copy(m, t, in_model=upcast_at == "model")
    head_dt = head_dtype_bytes(t)
    upcast = 0 if head_dt == 4 else 4 * tv
    # gemma2 final_logit_softcapping: logits / cap -> tanh -> * cap; tanh saves its output (head dtype)
    softcap = head_dt * tv if m.final_softcap else 0
    return LogitsBytes(
        forward_peak=head_dt * tv + upcast + 4 * tv + softcap,
        saved=4 * tv + softcap,
        backward_peak=3 * 4 * tv + softcap,
    )


def _shifted_copy(m: ModelSpec, t: TrainSpec, in_model: bool) -> LogitsBytes:
    """transformers < 4.49: the fp32 logits' shifted copy (N·V) is what log_softmax reads (module docstring)."""
    tv = t.tokens * m.vocab_size
    nv = t.batch * (t.seq - 1) * m.vocab_size  # shifted positions
    head_dt = head_dtype_bytes(t)
    upcast = 0 if head_dt == 4 else 4 * tv
    if in_model:  # the head's output dies at the cast; the fp32 logits (or the fp32 head output) remain
        forward_peak = max(head_dt * tv + upcast, 4 * tv + 4 * nv + 4 * nv)
    else:
        forward_peak = head_dt * tv + upcast + 4 * nv + 4 * nv
    return LogitsBytes(forward_peak=forward_peak, saved=4 * nv, backward_peak=3 * 4 * nv)
