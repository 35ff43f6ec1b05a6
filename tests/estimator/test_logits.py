"""estimator/logits.py against the real loss: transformers 5.24 `ForCausalLMLoss` (loss/loss_utils.py) traced by
the repo's tracker (vramplan/measure/tracker.py) on tiny CPU tensors.

The logits come from a small leaf through one op (as lm_head's output: a fresh tensor nothing else holds), in
the head dtype; the loss and its backward run under `label_scope("logits")`, as the harness labels them.
Tolerance: the int64 labels the loss allocates beside the logits (F.pad to s + 1, the shifted contiguous copy:
b·(2s + 1)·8 bytes) and a few 4-byte scalars (loss, nll's total_weight, the loss gradient), which the estimate
leaves out; everything proportional to batch·seq·vocab must match exactly.
"""

from __future__ import annotations

import pytest

from tests.conftest import TINY_CONFIGS
from vramplan.estimator.logits import logits_bytes
from vramplan.spec import DTYPE_BYTES, model_spec_from_config, resolve_train

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

B, S, V = 2, 16, 1024  # tokens·vocab = 32,768 values: 128 KiB per fp32 copy
LABEL_BYTES = B * (2 * S + 1) * 8
SCALARS = 64


def _trace(head_dtype, softcap: float | None) -> tuple[int, int, int]:
    """(forward peak, bytes kept after forward, backward peak) of the logits category."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    from vramplan.measure.tracker import MemoryTracker

    z = torch.randn(1, 1, V, dtype=head_dtype, requires_grad=True)
    labels = torch.randint(0, V, (B, S))
    tracker = MemoryTracker(device_type="cpu")
    with tracker, tracker.label_scope("logits"):
        with tracker.phase_scope("forward"):
            logits = z.expand(B, S, V).contiguous()  # lm_head's output in the head dtype
            if softcap is not None:  # transformers models/gemma2/modeling_gemma2.py Gemma2ForCausalLM.forward
                logits = logits / softcap
                logits = torch.tanh(logits)
                logits = logits * softcap
            loss = ForCausalLMLoss(logits, labels, vocab_size=V)
            del logits  # the Trainer's compute_loss keeps only the loss
        kept = tracker.current_breakdown["logits"]
        with tracker.phase_scope("backward"):
            loss.backward()
    peaks = tracker.phase_peaks
    return peaks["forward"][1]["logits"], kept, peaks["backward"][1]["logits"]


def _model(softcap: bool):
    cfg = {**TINY_CONFIGS["gemma2" if softcap else "llama"], "vocab_size": V}
    if softcap:
        cfg["final_logit_softcapping"] = 30.0
    return model_spec_from_config(cfg, "tiny")


@pytest.mark.parametrize(
    ("options", "softcap"),
    [
        ({"method": "lora"}, False),  # bf16 autocast: bf16 logits, upcast to fp32 by the loss
        ({"method": "lora", "dtype": "fp32", "mixed_precision": "no"}, False),  # fp32 logits: no upcast
        ({"method": "qlora", "mixed_precision": "no"}, False),  # kbit prep's fp32 lm_head without autocast
        ({"method": "lora"}, True),  # gemma2's final softcapping: tanh saves its bf16 output
    ],
    ids=["bf16", "fp32", "qlora-no-autocast", "gemma2-softcap"],
)
def test_loss_memory_is_the_traced_loss(options: dict, softcap: bool) -> None:
    m = _model(softcap)
    assert m.final_softcap == softcap
    t = resolve_train(m, batch=B, seq=S, **options)
    est = logits_bytes(m, t)
    head_bytes = 4 if t.kbit_prep and t.mixed_precision == "no" else DTYPE_BYTES[t.compute_dtype]
    forward, kept, backward = _trace({2: torch.bfloat16, 4: torch.float32}[head_bytes], 30.0 if softcap else None)
    assert 0 <= forward - est.forward_peak <= LABEL_BYTES + SCALARS
    assert 0 <= kept - est.saved <= B * S * 8 + SCALARS  # nll_loss keeps the shifted labels for backward
    assert 0 <= backward - est.backward_peak <= LABEL_BYTES + SCALARS


def test_fp32_upcast_by_hand() -> None:
    """bf16 logits: the logits (2 B), their fp32 upcast and log_softmax's fp32 output at the loss; three fp32
    tensors at LogSoftmaxBackward (its saved output, nll's dense gradient, its input gradient)."""
    m = _model(False)
    est = logits_bytes(m, resolve_train(m, method="lora", batch=B, seq=S))
    tv = B * S * V
    assert (est.forward_peak, est.saved, est.backward_peak) == ((2 + 4 + 4) * tv, 4 * tv, 3 * 4 * tv)
