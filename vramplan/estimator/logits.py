"""Logits and the loss: b·s·vocab values, several copies around the cross-entropy.

transformers 5.24 `ForCausalLMLoss` (loss/loss_utils.py) upcasts the logits to fp32 for every model, then
`cross_entropy` = log_softmax (saves its fp32 output) + nll_loss. Older releases upcast only in some model
files; the estimate models 5.x.
- forward, at the loss: logits in the compute dtype + their fp32 upcast + log_softmax output.
- saved into backward: the log_softmax output (fp32).
- backward, at LogSoftmaxBackward: the saved output + nll_loss's dense gradient + log_softmax's input
  gradient, all fp32; the Trainer's `compute_loss` has dropped `outputs.logits` by then.
"""

from __future__ import annotations

from dataclasses import dataclass

from vramplan.spec import DTYPE_BYTES, ModelSpec, TrainSpec


@dataclass(frozen=True, slots=True)
class LogitsBytes:
    forward_peak: int
    saved: int
    backward_peak: int


def logits_bytes(m: ModelSpec, t: TrainSpec) -> LogitsBytes:
    tv = t.tokens * m.vocab_size
    head_dt = DTYPE_BYTES[t.compute_dtype]
    if t.kbit_prep and t.mixed_precision == "no":
        head_dt = 4  # fp32 lm_head after kbit prep, no autocast
    upcast = 0 if head_dt == 4 else 4 * tv
    # gemma2 final_logit_softcapping: logits / cap -> tanh -> * cap; tanh saves its output (head dtype)
    softcap = head_dt * tv if m.final_softcap else 0
    return LogitsBytes(
        forward_peak=head_dt * tv + upcast + 4 * tv + softcap,
        saved=4 * tv + softcap,
        backward_peak=3 * 4 * tv + softcap,
    )
