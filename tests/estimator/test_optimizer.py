"""estimator/optimizer.py against the real optimizers: `optimizer.state` after one step, and the step's
temporaries traced by the repo's tracker (vramplan/measure/tracker.py), on a tiny llama on CPU.

The optimizer is the one HF `TrainingArguments(optim=...)` creates (vramplan.measure.build.build_optimizer:
the Trainer's two parameter groups, CUDA's foreach choice made explicit). Vocab 2048 makes the embedding and
lm_head 131,072 elements: above bitsandbytes' paging threshold (1e5) and its 8-bit minimum (4096), while k/v
(2048 elements), the adapters and the norms keep fp32 states. torch 2.13, transformers 5.24, peft 0.21,
bitsandbytes 0.50.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import pytest

from tests.conftest import TINY_CONFIGS
from vramplan.estimator.optimizer import BNB_PAGED_MIN_NUMEL, optimizer_bytes
from vramplan.spec import DTYPE_BYTES, model_spec_from_config, resolve_train

torch = pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")

pytestmark = pytest.mark.filterwarnings("ignore:Paged optimizers are not supported on CPU")
M = model_spec_from_config({**TINY_CONFIGS["llama"], "vocab_size": 2048}, "tiny-llama-v2048")
OPTIMIZERS = ["adamw_torch_fused", "adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit",
              "lion_32bit", "sgd", "adafactor"]  # fmt: skip


@functools.cache  # both tests read the same step
def _one_step(method: str, optim: str) -> tuple[Any, Any, Any]:
    """(train spec, optimizer after one traced step, the tracker's optimizer-phase peak)."""
    from vramplan.measure.build import build
    from vramplan.measure.tracker import MemoryTracker

    t = resolve_train(M, method=method, optim=optim, seq=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = build(M, t, "cpu")
    for p in built.model.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    tracker = MemoryTracker(device_type="cpu")
    with tracker:
        tracker.register_module(built.model)
        tracker.register_optimizer(built.optimizer)
        with tracker.phase_scope("optimizer"):
            built.optimizer.step()
    tracker.remove_hooks()
    return t, built.optimizer, tracker.result().phase("optimizer")


def _state_bytes(optimizer: Any, keep=lambda key, param: True) -> int:
    """Bytes of the distinct storages in `optimizer.state` (bitsandbytes shares qmap1/qmap2 across tensors)."""
    seen: dict[int, int] = {}
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and keep(key, param):
                storage = value.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("optim", OPTIMIZERS)
def test_states_are_the_real_optimizer_state(method: str, optim: str) -> None:
    t, opt, _ = _one_step(method, optim)
    param_bytes = 4 if t.uses_lora else DTYPE_BYTES[t.dtype]
    est = optimizer_bytes(M, t, param_bytes)
    if optim == "adamw_torch":
        # non-fused, non-capturable AdamW keeps `step` on the host (torch/optim/adam.py Adam._init_group:
        # "Deliberately host `step` on CPU if both capturable and fused are off"): not device memory on CUDA
        assert all(s["step"].device.type == "cpu" and s["step"].numel() == 1 for s in opt.state.values())
        real = _state_bytes(opt, lambda key, param: key != "step")
    else:
        real = _state_bytes(opt)
    assert est.states + est.paged == real
    if optim.startswith("paged"):
        # CUDA managed memory holds state1/state2 of tensors with >= 1e5 elements (bitsandbytes
        # Optimizer8bit.get_state_buffer); absmax and the small tensors' states stay plain device tensors
        paged = _state_bytes(opt, lambda key, p: key in ("state1", "state2") and p.numel() >= BNB_PAGED_MIN_NUMEL)
        assert est.paged == paged
        assert (est.paged > 0) == (method == "full")  # only the 131,072-element embedding and lm_head page
    else:
        assert est.paged == 0


def test_adamw_state_layouts_by_hand() -> None:
    """The two AdamW implementations and AdamW8bit on the full tiny model, written out."""
    n = M.total_params  # 2 · 2048·64 (embed, lm_head) + 2 layers + final norm, all bf16 and trainable
    tensors = 3 + 2 * (7 + 2)  # embed, lm_head, final norm; per layer 7 linears + 2 norms
    t = resolve_train(M, method="full", optim="adamw_torch_fused")
    assert optimizer_bytes(M, t, 2).states == 2 * 2 * n + 4 * tensors  # exp_avg, exp_avg_sq bf16 + fp32 step
    # AdamW8bit: uint8 state1/state2 + fp32 absmax per 256 elements for tensors of >= 4096 elements, two fp32
    # states otherwise, and the two shared 256-entry fp32 quantization maps
    big = [2048 * 64] * 2 + [64 * 64] * 2 * 2 + [128 * 64] * 3 * 2  # embed, lm_head; q, o; gate, up, down
    small = n - sum(big)  # k, v (32·64 = 2048 elements) and the norms
    eight = sum(2 * (k + 4 * -(-k // 256)) for k in big) + 2 * 4 * small + 2 * 256 * 4
    assert optimizer_bytes(M, resolve_train(M, method="full", optim="adamw_8bit"), 2).states == eight


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("optim", OPTIMIZERS)
def test_step_temporaries_are_traced(method: str, optim: str) -> None:
    t, _, peak = _one_step(method, optim)
    est = optimizer_bytes(M, t, 4 if t.uses_lora else DTYPE_BYTES[t.dtype]).step_temporaries
    traced = peak.breakdown.temporaries
    if optim == "adamw_torch":
        # foreach: `_foreach_sqrt(exp_avg_sqs)` of one param group at a time (torch/optim/adam.py
        # _multi_tensor_adam); the estimate takes every trainable tensor, the largest group holds all but the
        # Trainer's no-decay group (norms: 2 layers × 2 + 1, 64 bf16 each, for full; none for LoRA)
        no_decay = (2 * 2 + 1) * 64 * 2 if method == "full" else 0
        assert est - traced == no_decay
        assert traced > 0
    else:
        # fused AdamW updates in place; bitsandbytes' kernels too; SGD without momentum has nothing;
        # Adafactor: see estimator/optimizer.py `_adafactor_step_bytes`
        assert traced == est


def test_adafactor_by_hand() -> None:
    """Adafactor on the full bf16 tiny model: fp32 factored second moments + an fp32 RMS per tensor; the step
    peaks at lm_head (2048×64): fp32 copies of its grad and param, two fp32 `update`s, and the `update` of the
    tensor before it (the last layer's down_proj, 64×128) still bound to the loop variable."""
    t = resolve_train(M, method="full", optim="adafactor")
    ob = optimizer_bytes(M, t, 2)
    rows_cols = 2 * (2048 + 64) + 2 * (2 * (64 + 64) + 2 * (32 + 64) + 2 * (128 + 64) + (64 + 128))
    vectors = 2 * 2 * 64 + 64  # norms: unfactored exp_avg_sq
    tensors = 3 + 2 * (7 + 2)
    assert ob.states == 4 * (rows_cols + vectors + tensors)
    assert ob.step_temporaries == 4 * (4 * 2048 * 64 + 64 * 128)
