"""MemoryTracker: exact storage counts on CPU, meta and fake tensors; categories; bitsandbytes; LoRA Llama."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from vramplan.measure.tracker import CATEGORIES, MemoryTracker, TrackedPeak

F32 = 4  # bytes per fp32 element

# The 2-layer MLP: Linear(D_IN, HIDDEN) -> ReLU -> Linear(HIDDEN, D_OUT), batch BATCH, fp32, AdamW.
D_IN, HIDDEN, D_OUT, BATCH = 16, 32, 8, 4
W1_BYTES = HIDDEN * D_IN * F32
PARAM_BYTES = (HIDDEN * D_IN + HIDDEN + D_OUT * HIDDEN + D_OUT) * F32  # w1, b1, w2, b2
N_PARAMS = 4  # parameter tensors, each with one AdamW `step` counter
STEP_BYTES = N_PARAMS * F32  # non-capturable AdamW: state["step"] = torch.tensor(0.0), fp32 scalar


def _mlp_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # Squared error by hand: the CPU `aten.mse_loss` kernel returns a scalar that keeps a batch·D_OUT storage
    # alive while its meta kernel allocates 4 bytes (see test_mse_loss_cpu_kernel_keeps_elementwise_buffer).
    return (model(x) - y).pow(2).mean()


def _train(tracker: MemoryTracker, loss_fn, optimizer: torch.optim.Optimizer, steps: int) -> None:
    with tracker:
        for _ in range(steps):
            with tracker.phase_scope("forward"):
                loss = loss_fn()
            with tracker.phase_scope("backward"):
                loss.backward()
            del loss
            with tracker.phase_scope("optimizer"):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)


def _run_mlp(device: str = "cpu", fake: bool = False, steps: int = 2) -> tuple[TrackedPeak, MemoryTracker]:
    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()
    with mode:  # the tracker is entered inside the fake mode, so it sees each op before the fake mode does
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(D_IN, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, D_OUT))
        if device != "cpu":
            model = model.to(device)
        x = torch.randn(BATCH, D_IN, device=device)
        y = torch.randn(BATCH, D_OUT, device=device)
        optimizer = torch.optim.AdamW(model.parameters(), foreach=False)
        tracker = MemoryTracker()
        tracker.register_module(model)
        tracker.register_optimizer(optimizer)
        _train(tracker, lambda: _mlp_loss(model, x, y), optimizer, steps)
        tracker.remove_hooks()
        return tracker.result(), tracker


def test_mlp_peak_equals_hand_count() -> None:
    result, tracker = _run_mlp()
    # Peak: inside the first AdamW step (torch 2.13 _single_tensor_adam), for w1, where
    # `(exp_avg_sq.sqrt() / bias_correction2_sqrt)` holds two w1-sized temporaries at once.
    states = 2 * PARAM_BYTES + STEP_BYTES  # exp_avg, exp_avg_sq, step
    temporaries = 2 * W1_BYTES
    assert result.peak_bytes == PARAM_BYTES + PARAM_BYTES + states + temporaries
    assert result.peak_phase == "optimizer"
    assert result.breakdown.trainable == PARAM_BYTES
    assert result.breakdown.gradients == PARAM_BYTES
    # States are created lazily inside the step that peaks; the post-step relabel reaches the peak record.
    assert result.breakdown.optimizer_states == states
    assert result.breakdown.temporaries == temporaries
    assert result.breakdown.activations == 0
    assert result.breakdown.total_bytes == result.peak_bytes
    # Forward peak, second step (states alive, gradients freed by zero_grad): the first addmm output and the
    # ReLU output coexist until nn.Sequential drops the former.
    forward = result.phase("forward")
    assert forward is not None
    assert forward.peak_bytes == PARAM_BYTES + states + 2 * BATCH * HIDDEN * F32
    assert forward.breakdown.activations == 2 * BATCH * HIDDEN * F32
    # After the last step: parameters and optimizer state only.
    assert result.current_bytes == PARAM_BYTES + states
    assert tracker.current_bytes == 0  # model and optimizer died with _run_mlp's frame
    assert tracker.peak_bytes == result.peak_bytes
    assert tracker.peak_breakdown == dict(result.breakdown.items())
    assert set(tracker.phase_peaks) == {"forward", "backward", "optimizer"}
    for phase in result.phases:
        assert phase.breakdown.total_bytes == phase.peak_bytes


def test_mlp_agrees_with_torch_memtracker() -> None:
    mem_tracker = pytest.importorskip("torch.distributed._tools.mem_tracker")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(D_IN, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, D_OUT))
    x, y = torch.randn(BATCH, D_IN), torch.randn(BATCH, D_OUT)
    optimizer = torch.optim.AdamW(model.parameters(), foreach=False)
    theirs = mem_tracker.MemTracker()
    theirs.track_external(model, optimizer)
    with theirs:
        for _ in range(2):
            theirs.reset_mod_stats()  # torch 2.13 refuses a second iteration otherwise
            loss = _mlp_loss(model, x, y)
            loss.backward()
            del loss
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    snapshot = theirs.get_tracker_snapshot("peak")[torch.device("cpu")]
    kinds = mem_tracker._MemRefType
    ours, _ = _run_mlp()
    assert snapshot["Total"] == ours.peak_bytes
    assert snapshot[kinds.PARAM] == ours.breakdown.trainable
    assert snapshot[kinds.GRAD] == ours.breakdown.gradients
    # MemTracker files everything allocated inside optimizer.step() as optimizer state.
    assert snapshot[kinds.OPT] == ours.breakdown.optimizer_states + ours.breakdown.temporaries


@pytest.mark.parametrize(("device", "fake"), [("meta", False), ("cpu", True)], ids=["meta", "fake"])
def test_mlp_meta_and_fake_match_cpu(device: str, fake: bool) -> None:
    real, _ = _run_mlp()
    traced, _ = _run_mlp(device=device, fake=fake)
    assert traced == real  # peak, breakdown, every phase peak and the final live bytes


def test_gradient_accumulation_and_reset_peaks() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(D_IN, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, D_OUT))
    x, y = torch.randn(BATCH, D_IN), torch.randn(BATCH, D_OUT)
    optimizer = torch.optim.AdamW(model.parameters(), foreach=False)
    tracker = MemoryTracker()
    tracker.register_module(model)
    tracker.register_optimizer(optimizer)
    states = 2 * PARAM_BYTES + STEP_BYTES
    with tracker:
        _train(tracker, lambda: _mlp_loss(model, x, y), optimizer, steps=1)
        tracker.reset_peaks()
        assert tracker.peak_bytes == PARAM_BYTES + states
        assert tracker.phase_peaks == {}
        for _ in range(2):  # two micro-batches: the second backward adds into the same .grad storages
            with tracker.phase_scope("forward"):
                loss = _mlp_loss(model, x, y)
            with tracker.phase_scope("backward"):
                loss.backward()
            del loss
        assert tracker.current_breakdown["gradients"] == PARAM_BYTES
        forward = tracker.phase_peaks["forward"][1]
        assert forward["gradients"] == PARAM_BYTES  # the second forward runs with gradients alive
        with tracker.phase_scope("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    assert tracker.peak_bytes == PARAM_BYTES + PARAM_BYTES + states + 2 * W1_BYTES
    assert tracker.current_bytes == PARAM_BYTES + states


def test_views_inplace_and_out_count_once() -> None:
    tracker = MemoryTracker()
    with tracker:
        a = torch.zeros(10, 10)
        base = tracker.current_bytes
        assert base == 10 * 10 * F32
        views = [a.view(100), a[2:5], a.t(), a.detach(), a.reshape(100)[:3], a.unsqueeze(0).expand(3, 10, 10)]
        a.add_(1).mul_(2)
        a.t_()
        torch.add(a, a, out=a)
        assert tracker.current_bytes == base
        b = a.clone()  # a real copy
        torch.mul(a[:2], 3, out=b[2:4])
        assert tracker.current_bytes == 2 * base
    del views, b
    assert tracker.current_bytes == base


def test_out_resize_is_counted() -> None:
    tracker = MemoryTracker()
    with tracker:
        a = torch.ones(5)
        out = torch.empty(0)
        torch.add(a, a, out=out)  # the out= kernel resizes `out` from 0 to 5 elements through aten.resize_
        assert tracker.current_bytes == 2 * 5 * F32
        out.resize_(20)
        assert tracker.current_bytes == (5 + 20) * F32
        assert tracker.peak_bytes == (5 + 20) * F32


def test_freeing_lowers_current_bytes() -> None:
    tracker = MemoryTracker()
    with tracker, tracker.phase_scope("forward"):
        x = torch.ones(100)
        tmp = x * 2
        assert tracker.current_bytes == 2 * 100 * F32
        del tmp
        assert tracker.current_bytes == 100 * F32
        for _ in range(50):  # allocation and free cycles leave nothing behind (storage address reuse)
            (x + 1).sum()
        assert tracker.current_bytes == 100 * F32
        assert tracker.peak_bytes == 2 * 100 * F32 + F32  # x, x + 1 and its 0-dim sum
        assert tracker.phase_peaks["forward"][0] == tracker.peak_bytes
    del x
    assert tracker.current_bytes == 0
    assert tracker.current_breakdown == dict.fromkeys(CATEGORIES, 0)


def test_tensors_from_python_data_are_counted() -> None:
    tracker = MemoryTracker()
    with tracker:
        t = torch.tensor([1.0, 2.0, 3.0])  # built outside dispatch, then aten.lift_fresh (returns its input)
        assert tracker.current_bytes == 3 * F32
    del t


def test_preexisting_tensors_are_not_counted_unless_registered() -> None:
    x = torch.ones(10)
    tracker = MemoryTracker()
    with tracker:
        x.view(2, 5).add_(1)
        assert tracker.current_bytes == 0
        tracker.register_tensor(x[3:], "activations")
        assert tracker.current_breakdown["activations"] == 10 * F32


def test_meta_storages_are_told_apart() -> None:
    tracker = MemoryTracker()
    with tracker:
        a = torch.empty(8, 4, device="meta")
        b = torch.empty(8, 4, device="meta")  # data_ptr() is 0 for both
        assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() == 0
        v = a.t()[1:]
        a.add_(b)
        assert tracker.current_bytes == 2 * 8 * 4 * F32
        del a
        assert tracker.current_bytes == 2 * 8 * 4 * F32  # v keeps a's storage
        del v
        assert tracker.current_bytes == 8 * 4 * F32
    del b
    assert tracker.current_bytes == 0


def test_fake_tensor_storages_are_stable() -> None:
    with FakeTensorMode():
        tracker = MemoryTracker()
        with tracker:
            a = torch.empty(10, 3)
            v = a.t()
            assert a.untyped_storage() is v.untyped_storage()
            assert a.untyped_storage().device.type == "meta"
            a.add_(1)
            v.mul_(2)
            assert tracker.current_bytes == 10 * 3 * F32
            del a
            assert tracker.current_bytes == 10 * 3 * F32
            del v
            assert tracker.current_bytes == 0


def test_device_type_filter() -> None:
    tracker = MemoryTracker(device_type="meta")
    with tracker:
        keep = [torch.ones(4), torch.ones(4, device="meta")]
        assert tracker.current_bytes == 4 * F32
    del keep


def test_unknown_phase_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown phase 'fwd'"):
        MemoryTracker().phase = "fwd"


def test_mse_loss_cpu_kernel_keeps_elementwise_buffer() -> None:
    """torch 2.13: on CPU, `F.mse_loss(..., reduction="mean")` returns a 0-dim tensor whose storage is the
    whole elementwise buffer; the meta kernel gives it 4 bytes. A meta trace under-counts it by numel·4."""
    a, b = torch.randn(BATCH, D_OUT), torch.randn(BATCH, D_OUT)
    cpu = torch.nn.functional.mse_loss(a, b)
    meta = torch.nn.functional.mse_loss(a.to("meta"), b.to("meta"))
    assert cpu.untyped_storage().nbytes() == BATCH * D_OUT * F32
    assert meta.untyped_storage().nbytes() == F32


# ---- bitsandbytes -----------------------------------------------------------------------------------------

IN_FEATURES, OUT_FEATURES = 64, 128
NF4_BLOCK = 64  # elements per absmax block, bitsandbytes quantize_4bit default
NESTED_BLOCK = 256  # absmax values per second-level block, bitsandbytes double quantization


@pytest.mark.parametrize("double_quant", [True, False], ids=["double-quant", "single-quant"])
def test_linear4bit_quant_state_is_counted(double_quant: bool) -> None:
    bnb = pytest.importorskip("bitsandbytes")
    layer = bnb.nn.Linear4bit(
        IN_FEATURES,
        OUT_FEATURES,
        compute_dtype=torch.float32,
        compress_statistics=double_quant,
        quant_type="nf4",
    ).to("cpu")  # Params4bit.to quantizes on the first move
    layer.weight.requires_grad_(False)
    assert layer.weight.quant_state.nested is double_quant
    tracker = MemoryTracker()
    tracker.register_module(layer)
    blocks = IN_FEATURES * OUT_FEATURES // NF4_BLOCK
    nf4_code = 16 * F32
    if double_quant:
        # uint8 absmax per block, fp32 offset, fp32 second-level absmax per 256 blocks, 256-entry fp32 code.
        quant_state = blocks + F32 + -(-blocks // NESTED_BLOCK) * F32 + 256 * F32 + nf4_code
    else:
        quant_state = blocks * F32 + nf4_code
    breakdown = tracker.current_breakdown
    assert breakdown["quant_state"] == quant_state
    assert breakdown["weights"] == IN_FEATURES * OUT_FEATURES // 2  # two 4-bit values per byte
    assert breakdown["trainable"] == OUT_FEATURES * F32  # the bias
    with tracker, tracker.phase_scope("forward"):
        out = layer(torch.randn(2, IN_FEATURES))
    assert tracker.current_breakdown["activations"] == out.untyped_storage().nbytes()


def test_int8_scb_is_counted() -> None:
    bnb = pytest.importorskip("bitsandbytes")
    layer = bnb.nn.Linear8bitLt(IN_FEATURES, OUT_FEATURES, bias=False, has_fp16_weights=False).to("cpu")
    tracker = MemoryTracker()
    tracker.register_module(layer)
    breakdown = tracker.current_breakdown
    assert breakdown["weights"] == IN_FEATURES * OUT_FEATURES  # int8; CB aliases it and adds nothing
    assert breakdown["quant_state"] == OUT_FEATURES * F32  # SCB: one fp32 scale per output row


# ---- transformers + peft --------------------------------------------------------------------------------

HIDDEN_SIZE, LAYERS, HEADS, KV_HEADS, INTERMEDIATE, VOCAB, R = 64, 2, 4, 2, 128, 256, 4
SEQ = 32


def _tiny_lora_llama():
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    config = transformers.LlamaConfig(
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        intermediate_size=INTERMEDIATE,
        vocab_size=VOCAB,
        use_cache=False,
    )
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(config)
    return peft.get_peft_model(base, peft.LoraConfig(r=R, target_modules="all-linear"))


def test_tiny_llama_lora_categories() -> None:
    model = _tiny_lora_llama()
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, foreach=False)
    ids = torch.randint(0, VOCAB, (2, SEQ))
    tracker = MemoryTracker()
    tracker.register_module(model)
    tracker.register_optimizer(optimizer)
    _train(tracker, lambda: model(input_ids=ids, labels=ids).loss, optimizer, steps=2)
    tracker.remove_hooks()
    result = tracker.result()

    kv = KV_HEADS * HIDDEN_SIZE // HEADS
    # LoRA r·(d_in + d_out) per target: q, k, v, o, gate, up, down; fp32 (peft autocast_adapter_dtype).
    lora_elems = R * (2 * HIDDEN_SIZE + 2 * (HIDDEN_SIZE + kv) + 2 * HIDDEN_SIZE + 3 * (HIDDEN_SIZE + INTERMEDIATE))
    trainable_bytes = LAYERS * lora_elems * F32
    assert trainable_bytes == sum(p.numel() * p.element_size() for p in trainable)
    states = 2 * trainable_bytes + len(trainable) * F32  # exp_avg, exp_avg_sq, step
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    frozen += sum(b.numel() * b.element_size() for b in model.buffers())  # rotary inv_freq

    for breakdown in (result.breakdown, *(p.breakdown for p in result.phases)):
        assert breakdown.weights == frozen
        assert breakdown.trainable == trainable_bytes
        assert breakdown.quant_state == 0
    assert result.breakdown.optimizer_states == states  # the peak is in the second step, states alive
    optimizer_peak = result.phase("optimizer")
    assert optimizer_peak is not None
    assert optimizer_peak.breakdown.gradients == trainable_bytes
    assert optimizer_peak.breakdown.optimizer_states == states
    assert optimizer_peak.breakdown.activations == 0
    forward = result.phase("forward")
    assert forward is not None
    assert forward.breakdown.gradients == 0
    assert forward.breakdown.activations >= 2 * SEQ * VOCAB * F32  # at least the fp32 logits
    assert result.peak_phase in {"forward", "backward"}
    assert result.peak_bytes == result.breakdown.total_bytes
    assert result.current_bytes == frozen + trainable_bytes + states


def test_results_are_frozen() -> None:
    result = MemoryTracker().result()
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.peak_bytes = 1  # type: ignore[misc]


def test_moments_keep_their_own_peaks_and_change_no_other_reading() -> None:
    # Three storages of 400, 800 and 200 bytes; the 800 dies before the 200 is made. Naming moments adds a
    # peak per (phase, moment) and tells each peak its moment; the phase peaks stay what they were.
    def run(named: bool) -> TrackedPeak:
        tracker = MemoryTracker()
        moment = tracker.moment_scope if named else (lambda _name: contextlib.nullcontext())
        with tracker, tracker.phase_scope("backward"):
            with moment("first"):
                a = torch.empty(100)  # 400 B
            with moment("second"):
                b = torch.empty(200)  # 800 B: the phase peaks here, at 1,200 B
                del b
            with moment("third"):
                c = torch.empty(50)  # 200 B: 600 B alive
        del a, c
        return tracker.result()

    plain, named = run(False), run(True)
    assert (named.peak_bytes, named.phases[0].peak_bytes) == (plain.peak_bytes, plain.phases[0].peak_bytes)
    assert named.breakdown == plain.breakdown
    assert named.peak_bytes == 400 + 800
    assert named.peak_moment == "second"
    assert named.phases[0].moment == "second"
    assert plain.peak_moment is None
    assert plain.moments == ()
    assert [(p.moment, p.peak_bytes) for p in named.moments] == [("first", 400), ("second", 1200), ("third", 600)]
    assert named.moment("backward", "third").breakdown.temporaries == 600
