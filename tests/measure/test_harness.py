"""The harness on tiny configs: real CPU runs whose categories add up, meta/fake traces equal to them, OOM as a
result, device selection without CUDA, NVML absent."""

from __future__ import annotations

import dataclasses
import math
import sys

import pytest
import torch

from tests.conftest import TINY_CONFIGS
from vramplan.breakdown import Breakdown
from vramplan.errors import VramplanError
from vramplan.measure import harness
from vramplan.measure.harness import MeasureResult, run_step, simulate
from vramplan.spec import model_spec_from_config, resolve_train

BF16, F32 = 2, 4
BATCH, SEQ = 2, 32
LLAMA = model_spec_from_config(TINY_CONFIGS["llama"], "tiny-llama")
H, I, V, L = 64, 128, 256, 2  # hidden, intermediate, vocab, layers of TINY_CONFIGS["llama"]
HEAD_DIM, KV_DIM = 16, 2 * 16  # 4 heads x 16, 2 kv heads
# q, k, v, o, gate, up, down: (in, out)
LINEARS = ((H, H), (H, KV_DIM), (H, KV_DIM), (H, H), (H, I), (H, I), (I, H))
ROTARY_BUFFERS = 2 * (HEAD_DIM // 2) * F32  # inv_freq and original_inv_freq, fp32
R = 16  # default LoRA rank


def _run(method: str, device: str = "cpu", **kw) -> MeasureResult:
    t = resolve_train(LLAMA, method=method, batch=BATCH, seq=SEQ, **kw)
    return run_step(LLAMA, t, device=device, steps=2)


def _phase(r: MeasureResult, name: str):
    return next(p.components for p in r.breakdown.phases if p.phase == name)


@pytest.fixture(scope="module")
def lora() -> MeasureResult:
    return _run("lora")


def test_result_shape(lora: MeasureResult) -> None:
    b = lora.breakdown
    assert isinstance(b, Breakdown) and b.source == "measure"
    assert lora.device == "cpu" and lora.steps == 2 and lora.outcome == "ok" and lora.cuda is None
    assert [p.phase for p in b.phases] == ["forward", "backward", "optimizer"]
    assert b.peak_bytes == lora.tracked.peak_bytes  # every tracked byte lands in a component
    assert b.peak_bytes == max(p.total for p in b.phases)
    with pytest.raises(dataclasses.FrozenInstanceError):
        lora.steps = 3  # type: ignore[misc]


def test_lora_categories_are_consistent(lora: MeasureResult) -> None:
    adapter_params = L * sum(R * (i + o) for i, o in LINEARS)  # lora_A r x in + lora_B out x r
    adapters = adapter_params * F32  # PEFT keeps adapters in fp32
    frozen = LLAMA.total_params * BF16 + ROTARY_BUFFERS
    steps = 2 * len(LINEARS) * L * F32  # fused AdamW: one fp32 `step` tensor per parameter, on the device
    assert lora.breakdown.params_trainable == adapter_params
    for phase in lora.breakdown.phases:
        c = phase.components
        assert c.weights == frozen and c.adapters == adapters and c.quant_state == 0
        assert c.optimizer_states == 2 * adapters + steps  # exp_avg, exp_avg_sq (second step: alive everywhere)
    opt = _phase(lora, "optimizer")
    assert opt.gradients == adapters  # gradients: the trainable parameters' bytes
    assert opt.activations == 0 and opt.logits == 0  # everything of forward/backward is freed
    fwd = _phase(lora, "forward")
    assert fwd.gradients == 0  # zero_grad(set_to_none=True) after each step
    # at the loss: bf16 logits, their fp32 upcast and log_softmax's fp32 output
    assert fwd.logits >= BATCH * SEQ * V * (BF16 + F32 + F32)
    assert _phase(lora, "backward").logits >= 3 * BATCH * SEQ * V * F32  # saved output + two fp32 gradients


def test_qlora_nf4_categories_are_consistent() -> None:
    r = _run("qlora")
    blocks = [i * o // 64 for i, o in LINEARS]  # fp32 absmax per 64 elements before double quantization
    # uint8 absmax + fp32 offset + fp32 second-level absmax per 256 blocks + 256-entry code + 16-entry nf4 code
    quant_state = L * sum(b + F32 + math.ceil(b / 256) * F32 + 256 * F32 + 16 * F32 for b in blocks)
    packed = L * sum(i * o // 2 for i, o in LINEARS)  # two 4-bit codes per byte
    rest = (LLAMA.total_params - LLAMA.linear_weight_params) * F32  # kbit prep: embeddings, norms, lm_head fp32
    adapters = L * sum(R * (i + o) for i, o in LINEARS) * F32
    for phase in r.breakdown.phases:
        c = phase.components
        assert c.quant_state == quant_state
        assert c.weights == packed + rest + ROTARY_BUFFERS
        assert c.adapters == adapters
    assert _phase(r, "optimizer").gradients == adapters
    assert r.breakdown.inputs["grad_ckpt"] is True  # QLoRA's default recipe checkpoints


def test_full_categories_are_consistent() -> None:
    r = _run("full")
    params = LLAMA.total_params * BF16
    for phase in r.breakdown.phases:
        c = phase.components
        assert c.adapters == params and c.weights == ROTARY_BUFFERS
    assert _phase(r, "optimizer").gradients == params
    assert r.breakdown.params_trainable == LLAMA.total_params


def test_freeze_trains_the_last_layers() -> None:
    r = _run("freeze", freeze_trainable_layers=1)
    assert r.breakdown.params_trainable == LLAMA.layer_params
    assert _phase(r, "optimizer").gradients == LLAMA.layer_params * BF16


def test_optimizer_implementation_shows() -> None:
    fused, foreach = _run("lora"), _run("lora", optim="adamw_torch")
    # foreach (CUDA's default for adamw_torch) allocates a temporary the size of the trainable parameters
    assert _phase(foreach, "optimizer").temporaries > _phase(fused, "optimizer").temporaries
    eight = _run("lora", optim="adamw_8bit")
    assert _phase(eight, "optimizer").optimizer_states < _phase(fused, "optimizer").optimizer_states


@pytest.mark.parametrize("device", ["meta", "fake"])
def test_meta_and_fake_trace_what_cpu_runs(lora: MeasureResult, device: str) -> None:
    traced = _run("lora", device=device)
    assert traced.breakdown.source == "simulate"
    for real, fake in zip(lora.breakdown.phases, traced.breakdown.phases, strict=True):
        a, b = real.components.as_dict(), fake.components.as_dict()
        # The routed flash op returns its philox seed and offset as tensors (24 bytes a layer, saved).
        assert a.pop("activations") - b.pop("activations") in (0, -24 * L)
        assert a == b


def test_quantized_simulation_runs_on_meta() -> None:
    t = resolve_train(LLAMA, method="qlora", batch=BATCH, seq=SEQ)
    r = simulate(LLAMA, t)
    assert r.device == "meta" and r.breakdown.source == "simulate"
    assert any("meta" in n for n in r.notes)
    assert r.breakdown.components.quant_state > 0


# ---- out of memory, devices, NVML ---------------------------------------------------------------------------------


def test_out_of_memory_in_backward_is_a_result(monkeypatch: pytest.MonkeyPatch) -> None:
    def backward(self: torch.Tensor, *args, **kwargs) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(torch.Tensor, "backward", backward)
    r = _run("lora")
    assert r.outcome == "oom" and r.verdict == "oom"
    assert (r.oom.step, r.oom.phase) == (1, "backward")
    assert r.oom.reached_bytes == r.tracked.peak_bytes > 0
    assert "out of memory" in r.oom.message
    assert r.steps == 0
    assert [p.phase for p in r.breakdown.phases] == ["forward", "backward"]


def test_out_of_memory_while_building(monkeypatch: pytest.MonkeyPatch) -> None:
    def build(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(harness, "build", build)
    r = _run("lora")
    assert (r.oom.step, r.oom.phase) == (0, "build")
    assert r.breakdown.peak_bytes == 0


def test_cuda_absent_is_one_clear_error() -> None:
    assert not torch.cuda.is_available()  # this machine; a GPU machine runs the gpu-marked tests
    t = resolve_train(LLAMA, method="lora")
    with pytest.raises(VramplanError, match=r"--device cuda: torch .* sees no CUDA device"):
        run_step(LLAMA, t, device="cuda")
    with pytest.raises(VramplanError, match="unknown device 'tpu'"):
        run_step(LLAMA, t, device="tpu")


def test_cpu_refuses_big_models() -> None:
    from vramplan.profiles import load_model

    m = load_model("llama-2-7b")
    with pytest.raises(VramplanError, match=r"llama-2-7b \(6\.7B parameters\) on CPU is impractical: use "):
        run_step(m, resolve_train(m, method="qlora"), device="cpu")


def test_nvml_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    assert harness.nvml_process_bytes() is None


def test_nvml_without_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    pynvml = pytest.importorskip("pynvml")

    def init() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", init)
    assert harness.nvml_process_bytes() is None


@pytest.mark.gpu
def test_cuda_run_reports_allocator_figures() -> None:
    r = _run("lora", device="cuda")
    assert r.cuda is not None and r.cuda.max_memory_reserved >= r.cuda.max_memory_allocated > 0
    assert r.breakdown.reserved_bytes == r.cuda.max_memory_reserved
    assert torch.cuda.memory_allocated() == 0  # the GPU is left clean
