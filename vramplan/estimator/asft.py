"""LLaMA-Factory's ASFT step (`stage: sft` with `use_asft_loss: true`), built on the SFT step of `peak.py`.

Source: hiyouga/LLaMA-Factory ff6d4d1. `run_sft` (src/llamafactory/train/sft/workflow.py) loads a reference
with `create_ref_model`: a second copy of the model (`load_model(..., is_trainable=False)`: the compute dtype,
never upcast to float32 as full tuning's trainable weights are, the policy's quantization, no adapter),
prepared by accelerate / DeepSpeed on the device. Each step
(src/llamafactory/train/sft/trainer.py `CustomSeq2SeqTrainer.compute_loss`) runs the reference's forward under
`torch.no_grad()` FIRST and keeps its b·s·vocab logits, then the policy's forward with the labels (the model
computes its own cross-entropy too, whose graph lives until `compute_loss` returns), then `asft_loss_func`
(src/llamafactory/train/trainer_utils.py): the policy's logits upcast to float32, the shifted copies of both
logits, DFT's cross-entropy (`_dft_cross_entropy`) and a token-wise KL to the reference's softmax
(`_kl_divergence`: `log_softmax`, `softmax`, `F.kl_div(reduction="none")`), all over the vocabulary.

Byte counts, T = batch·seq tokens, N = batch·(seq - 1) shifted positions, V vocabulary, c the compute dtype's
bytes (the logits' dtype), traced on CPU (vramplan/measure/preference.py `_asft_loss`, tests/oracle):

- at the KL's peak (`kl_div` = `xlogy(q, q) - q * log_p`, at::kl_div): alive the policy's logits (T·V·c), the
  model's own loss's saved float32 log_softmax (T·V·4), the float32 upcast (T·V·4), the shifted float32 logits
  and reference logits (N·V·4 + N·V·c), DFT's saved log_softmax (N·V·4), log_p (N·V·4), q (N·V·c), and the
  KL's `xlogy` (N·V·c), product (N·V·4) and difference (N·V·4); the reference's logits (T·V·c) besides;
- at the start of backward, `compute_loss` having returned: the three saved N·V tensors (DFT's and the KL's
  float32 log-softmaxes, q) and two N·V float32 gradients (a log_softmax's incoming and outgoing).
"""

from __future__ import annotations

from dataclasses import replace

from vramplan.breakdown import PhaseUsage
from vramplan.estimator.peak import LOSS, moments
from vramplan.estimator.preference import REFERENCE_FORWARD, frozen_copy_bytes
from vramplan.estimator.serve import layer_peak_elems_per_token
from vramplan.spec import DTYPE_BYTES, ModelSpec, TrainSpec
from vramplan.spec.stage import SFT

ASFT_LOSS_BACKWARD = "ASFT loss backward"


def asft_moments(m: ModelSpec, t: TrainSpec) -> tuple[tuple[PhaseUsage, ...], int]:
    """The candidate moments of an ASFT step and the paged optimizer bytes: SFT's, plus the reference copy's
    weights everywhere, the reference forward, the ASFT loss's peak (replacing SFT's loss) and its backward."""
    policy = replace(t, stage=SFT)
    base, paged = moments(m, policy)
    # load_model(is_trainable=False) keeps the compute dtype: no fp32 upcast of a frozen model (adapter.py)
    weights, quant_state = frozen_copy_bytes(m, replace(t, dtype=t.compute_dtype))
    c = DTYPE_BYTES[t.compute_dtype]
    v = m.vocab_size
    tokens = t.batch * t.seq
    shifted = t.batch * (t.seq - 1)
    reference_logits = tokens * v * c
    loss_peak = tokens * v * (c + 4 + 4) + shifted * v * (4 + c + 4 + 4 + c + c + 4 + 4)
    backward_peak = shifted * v * (4 + 4 + c) + 2 * shifted * v * 4
    out: list[PhaseUsage] = []
    for usage in base:
        comp = replace(usage.components, weights=usage.components.weights + weights,
                       quant_state=usage.components.quant_state + quant_state)  # fmt: skip
        if usage.moment == LOSS:
            comp = replace(comp, logits=max(comp.logits, loss_peak), temporaries=comp.temporaries + reference_logits)
        out.append(replace(usage, components=comp))
    loss = next(u.components for u in out if u.moment == LOSS)
    out.append(PhaseUsage("backward", replace(loss, logits=backward_peak, temporaries=0), ASFT_LOSS_BACKWARD))
    # the reference's no-grad forward, before the policy's: one layer's inference workspace or its logits
    persistent = replace(loss, activations=0, logits=0, temporaries=0)
    residual = 4 if (t.kbit_prep or t.dtype == "fp32") else DTYPE_BYTES[t.dtype]
    layer = tokens * layer_peak_elems_per_token(m) * c + 2 * tokens * m.hidden_size * residual
    head = reference_logits + tokens * m.hidden_size * residual
    out.append(PhaseUsage("forward", replace(persistent, temporaries=max(layer, head)), REFERENCE_FORWARD))
    return tuple(out), paged
