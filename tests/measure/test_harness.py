"""The harness on tiny configs: real CPU runs whose categories add up, meta/fake traces equal to them, OOM as
a result, device selection without CUDA, NVML absent."""

from __future__ import annotations

import dataclasses
import math
import sys

import pytest
import torch

from tests.conftest import TINY_CONFIGS
from vramplan.breakdown import Breakdown
from vramplan.errors import VramplanError
from vramplan.measure import cuda_run, harness
from vramplan.measure.harness import run_step, simulate
from vramplan.measure.result import CudaFigures, MeasureResult
from vramplan.spec import model_spec_from_config, resolve_train

BF16, F32 = 2, 4
BATCH, SEQ = 2, 32
LLAMA = model_spec_from_config(TINY_CONFIGS["llama"], "tiny-llama")
H, INTER, V, L = 64, 128, 256, 2  # hidden, intermediate, vocab, layers of TINY_CONFIGS["llama"]
HEAD_DIM, KV_DIM = 16, 2 * 16  # 4 heads x 16, 2 kv heads
# q, k, v, o, gate, up, down: (in, out)
LINEARS = ((H, H), (H, KV_DIM), (H, KV_DIM), (H, H), (H, INTER), (H, INTER), (INTER, H))
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
    assert isinstance(b, Breakdown)
    assert b.source == "measure"
    assert lora.device == "cpu"
    assert lora.steps == 2
    assert lora.outcome == "ok"
    assert lora.cuda is None
    assert [p.phase for p in b.phases] == ["forward", "backward", "optimizer"]
    assert b.peak_bytes == lora.tracked.peak_bytes  # every tracked byte lands in a component
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
        assert c.weights == frozen
        assert c.trainable == adapters
        assert c.quant_state == 0
        # exp_avg, exp_avg_sq (second step: alive in every phase)
        assert c.optimizer_states == 2 * adapters + steps
    opt = _phase(lora, "optimizer")
    assert opt.gradients == adapters  # gradients: the trainable parameters' bytes
    assert opt.activations == 0
    assert opt.logits == 0
    fwd = _phase(lora, "forward")
    assert fwd.gradients == 0  # zero_grad(set_to_none=True) after each step
    # at the loss: bf16 logits, their fp32 upcast and log_softmax's fp32 output
    assert fwd.logits >= BATCH * SEQ * V * (BF16 + F32 + F32)
    assert _phase(lora, "backward").logits >= 3 * BATCH * SEQ * V * F32  # saved output + two fp32 gradients


def test_qlora_nf4_categories_are_consistent() -> None:
    r = _run("qlora")
    blocks = [i * o // 64 for i, o in LINEARS]  # fp32 absmax per 64 elements before double quantization
    # uint8 absmax + fp32 offset + fp32 second-level absmax per 256 blocks + 256-entry code + 16-entry nf4
    # code
    quant_state = L * sum(b + F32 + math.ceil(b / 256) * F32 + 256 * F32 + 16 * F32 for b in blocks)
    packed = L * sum(i * o // 2 for i, o in LINEARS)  # two 4-bit codes per byte
    # kbit prep: embeddings, norms, lm_head fp32
    rest = (LLAMA.total_params - LLAMA.linear_weight_params) * F32
    adapters = L * sum(R * (i + o) for i, o in LINEARS) * F32
    for phase in r.breakdown.phases:
        c = phase.components
        assert c.quant_state == quant_state
        assert c.weights == packed + rest + ROTARY_BUFFERS
        assert c.trainable == adapters
    assert _phase(r, "optimizer").gradients == adapters
    assert r.breakdown.train.grad_ckpt is True  # QLoRA's default recipe checkpoints


def test_full_categories_are_consistent() -> None:
    r = _run("full")
    params = LLAMA.total_params * BF16
    for phase in r.breakdown.phases:
        c = phase.components
        assert c.trainable == params
        assert c.weights == ROTARY_BUFFERS
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
    assert r.device == "meta"
    assert r.breakdown.source == "simulate"
    assert any("meta" in n for n in r.notes)
    assert r.breakdown.components.quant_state > 0


# ---- out of memory, devices, NVML --------------------------------------------------------------------------


def test_out_of_memory_in_backward_is_a_result(monkeypatch: pytest.MonkeyPatch) -> None:
    def backward(self: torch.Tensor, *args, **kwargs) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(torch.Tensor, "backward", backward)
    r = _run("lora")
    assert r.outcome == "oom"
    assert r.verdict == "oom"
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


def test_cuda_absent_is_one_clear_error(no_cuda: None) -> None:
    t = resolve_train(LLAMA, method="lora")
    with pytest.raises(VramplanError, match=r"--device cuda: torch .* sees no CUDA device"):
        run_step(LLAMA, t, device="cuda")
    with pytest.raises(VramplanError, match="unknown device 'tpu'"):
        run_step(LLAMA, t, device="tpu")


def test_cpu_refuses_big_models() -> None:
    from vramplan.sources.profiles import load_model

    m = load_model("llama-2-7b")
    with pytest.raises(VramplanError, match=r"llama-2-7b \(6\.7B parameters\) on CPU is impractical: use "):
        run_step(m, resolve_train(m, method="qlora"), device="cpu")


def test_nvml_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    assert cuda_run.nvml_process_bytes() is None


def test_nvml_without_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    pynvml = pytest.importorskip("pynvml")

    def init() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", init)
    assert cuda_run.nvml_process_bytes() is None


@pytest.mark.gpu
def test_cuda_run_reports_allocator_figures() -> None:
    r = _run("lora", device="cuda")
    assert r.cuda is not None
    assert r.cuda.max_memory_reserved >= r.cuda.max_memory_allocated > 0
    assert r.breakdown.reserved_bytes == r.cuda.max_memory_reserved
    assert torch.cuda.memory_allocated() == 0  # the GPU is left clean


def test_kernel_out_of_memory_runtime_errors_count() -> None:
    assert harness._is_oom(RuntimeError("CUDA error: out of memory"))
    assert harness._is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 MiB"))
    assert not harness._is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


class _FakeCuda:
    """Stand-ins for the torch.cuda calls of the CUDA path, recording which ran."""

    GIB = 1024**3

    def __init__(self) -> None:
        self.calls: list[str] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        props = type("Props", (), {"name": "NVIDIA GeForce RTX 3060 Ti", "total_memory": 8 * self.GIB})()
        stubs = {
            "is_available": lambda: True,
            "empty_cache": lambda: self.calls.append("empty_cache"),
            "reset_peak_memory_stats": lambda *a: self.calls.append("reset_peak_memory_stats"),
            "max_memory_allocated": lambda *a: 7 * self.GIB,
            "max_memory_reserved": lambda *a: 7 * self.GIB + 512 * 1024**2,
            "memory_reserved": lambda *a: 1 * self.GIB,
            "current_device": lambda: 0,
            "get_device_properties": lambda *a: props,
        }
        for name, fn in stubs.items():
            monkeypatch.setattr(torch.cuda, name, fn)


def test_cuda_path_out_of_memory_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA path without a GPU: device accepted, peak stats reset, an OOM while building is a result, the
    cache is emptied, NVML absent means a modelled CUDA context and a note."""
    cuda = _FakeCuda()
    cuda.install(monkeypatch)
    monkeypatch.setitem(sys.modules, "pynvml", None)

    def build(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 172.00 MiB")

    monkeypatch.setattr(harness, "build", build)
    r = run_step(LLAMA, resolve_train(LLAMA, method="lora"), device="cuda")
    assert r.outcome == "oom"
    assert (r.oom.phase, r.oom.step) == ("build", 0)
    assert r.oom.reached_bytes == 7 * _FakeCuda.GIB  # max_memory_allocated at the failure
    assert cuda.calls[0] == "empty_cache"
    assert "reset_peak_memory_stats" in cuda.calls
    assert cuda.calls[-1] == "empty_cache"  # the GPU is left clean
    assert r.cuda is not None
    assert r.cuda.nvml_process_bytes is None
    assert r.cuda.cuda_context_bytes is None
    assert r.breakdown.gpu_bytes == 8 * _FakeCuda.GIB  # the local card when no --gpu
    assert any("NVML unavailable" in n for n in r.breakdown.all_notes)


def test_cuda_figures_with_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    _FakeCuda().install(monkeypatch)
    monkeypatch.setattr(cuda_run, "nvml_process_bytes", lambda index=0: 1 * _FakeCuda.GIB + 400 * 1024**2)
    c = cuda_run.cuda_figures()
    assert c.cuda_context_bytes == 400 * 1024**2  # NVML − memory_reserved, read together
    assert (c.max_memory_allocated, c.total_bytes) == (7 * _FakeCuda.GIB, 8 * _FakeCuda.GIB)


def test_paged_optimizer_states_are_outside_the_peak() -> None:
    # vocab 2048 x hidden 64 = 131072 elements: embeddings and lm_head are paged (>= 1e5, bitsandbytes 0.50)
    m = model_spec_from_config({**TINY_CONFIGS["llama"], "vocab_size": 2048}, "tiny-llama-v2048")
    paged = run_step(m, resolve_train(m, method="full", seq=SEQ, optim="paged_adamw_32bit"), steps=2)
    plain = run_step(m, resolve_train(m, method="full", seq=SEQ, optim="adamw_torch_fused"), steps=2)
    big = 2 * 2048 * H * F32  # embed_tokens and lm_head, fp32 state1 and state2 each
    assert paged.paged_bytes == paged.breakdown.paged_bytes == 2 * big
    states = _phase(paged, "optimizer").optimizer_states
    assert states == 2 * (m.total_params - 2 * 2048 * H) * F32  # the other tensors: two fp32 states each
    assert _phase(plain, "optimizer").optimizer_states > states


def test_run_record_round_trips_through_the_calibration_store(lora: MeasureResult, tmp_path) -> None:
    from vramplan.trust.calibration import append_run, derive_from, read_runs

    gib = 1024**3
    cuda = CudaFigures(
        device_name="NVIDIA GeForce RTX 3060 Ti",
        total_bytes=8 * gib,
        max_memory_allocated=5 * gib,
        max_memory_reserved=6 * gib,
        nvml_process_bytes=7 * gib,
        cuda_context_bytes=gib // 2,
    )
    with pytest.raises(VramplanError, match="ran on cpu"):
        cuda_run.run_record(lora)
    record = cuda_run.run_record(dataclasses.replace(lora, cuda=cuda), lora.breakdown)
    append_run(record, tmp_path / "runs.jsonl")
    (run,) = read_runs(tmp_path / "runs.jsonl")
    assert run.gpu_key == "rtx-3060-ti"
    assert run.device_bytes == 6 * gib + gib // 2  # max_memory_reserved + the context NVML showed
    assert run.tracker == lora.breakdown.components.as_dict()
    cal = derive_from([run], "rtx-3060-ti")
    assert cal.cuda_context_bytes == gib // 2
    assert cal.allocator_ratio == pytest.approx(6 / 5 - 1)
