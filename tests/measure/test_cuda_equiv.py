"""The CUDA-equivalence patches: each one makes an off-CUDA trace save what CUDA saves."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from vramplan.measure import cuda_autocast, cuda_equiv
from vramplan.measure.cuda_autocast import CudaAutocast
from vramplan.measure.cuda_equiv import cuda_equivalence, cuda_sdpa_backend
from vramplan.measure.tracker import MemoryTracker

BF16, F32, BOOL = 2, 4, 1  # bytes per element
B, H, KV, S, D = 2, 4, 2, 16, 8  # batch, heads, kv heads, sequence, head_dim


def _saved(grad_fn: torch.autograd.graph.Node) -> dict[str, torch.Tensor]:
    return {n: getattr(grad_fn, n) for n in dir(grad_fn) if n.startswith("_saved") and
            isinstance(getattr(grad_fn, n), torch.Tensor)}  # fmt: skip


# ---- versions ----------------------------------------------------------------------------------------------


def test_installed_versions_are_the_pinned_ones() -> None:
    assert cuda_equiv.version_mismatches() == []


def test_version_mismatch_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    have = dict(cuda_equiv.installed_versions())
    monkeypatch.setattr(cuda_equiv, "installed_versions", lambda: tuple({**have, "peft": "0.22.0"}.items()))
    with pytest.warns(RuntimeWarning, match=r"peft 0\.22\.0 \(patches checked with 0\.21\.x\)"):
        cuda_equiv.check_versions()


# ---- dropout -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_dropout_saves_a_bool_mask(device: str) -> None:
    x = torch.randn(64, 32, device=device, requires_grad=True)
    unpatched = F.dropout(x, 0.1, training=True)
    # torch 2.13 off CUDA: input * (bernoulli noise / (1 - p)); the noise (input dtype) is saved.
    assert unpatched.grad_fn.name() == "MulBackward0"
    with cuda_equivalence(device, None):
        tracker = MemoryTracker()
        with tracker:
            y = F.dropout(x, 0.1, training=True)
    assert y.grad_fn.name() == "NativeDropoutBackward0"
    mask = _saved(y.grad_fn)["_saved_result1"]
    assert mask.dtype == torch.bool
    assert tracker.current_bytes == 64 * 32 * F32 + 64 * 32 * BOOL  # output + mask, no fp32 noise
    assert F.dropout is cuda_equiv._original_dropout  # restored on exit


def test_dropout_passes_through_when_off() -> None:
    x = torch.randn(4, 4, requires_grad=True)
    with cuda_equivalence("cpu", None):
        assert F.dropout(x, 0.0, training=True) is x
        assert torch.equal(F.dropout(x, 0.5, training=False), x)


def test_nn_dropout_module_is_routed() -> None:
    x = torch.randn(8, 8, requires_grad=True)
    with cuda_equivalence("cpu", None):
        y = torch.nn.Dropout(0.05)(x)
    assert y.grad_fn.name() == "NativeDropoutBackward0"


# ---- SDPA --------------------------------------------------------------------------------------------------


def test_backend_choice_is_cudas() -> None:
    assert cuda_sdpa_backend(torch.bfloat16, has_mask=False, head_dim=128) == "flash"
    assert cuda_sdpa_backend(torch.float16, has_mask=False, head_dim=256) == "flash"
    # flash takes no mask
    assert cuda_sdpa_backend(torch.bfloat16, has_mask=True, head_dim=128) == "efficient"
    assert cuda_sdpa_backend(torch.float32, has_mask=False, head_dim=128) == "efficient"  # flash: half only
    assert cuda_sdpa_backend(torch.bfloat16, has_mask=False, head_dim=512) == "efficient"
    assert cuda_sdpa_backend(torch.float64, has_mask=False, head_dim=64) == "math"


def _qkv(device: str, dtype: torch.dtype, kv: int = KV) -> tuple[torch.Tensor, ...]:
    q = torch.randn(B, H, S, D, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(B, kv, S, D, device=device, dtype=dtype, requires_grad=True)
    v = torch.randn(B, kv, S, D, device=device, dtype=dtype, requires_grad=True)
    return q, k, v


def test_meta_sdpa_unpatched_takes_the_math_path() -> None:
    q, k, v = _qkv("meta", torch.bfloat16, kv=H)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert "Flash" not in out.grad_fn.name()
    assert "Efficient" not in out.grad_fn.name()


def test_meta_sdpa_routes_to_flash_without_mask() -> None:
    q, k, v = _qkv("meta", torch.bfloat16)
    with cuda_equivalence("meta", None):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert out.grad_fn.name() == "ScaledDotProductFlashAttentionBackward0"
    saved = _saved(out.grad_fn)
    assert saved["_saved_key"].shape == (B, KV, S, D)  # GQA: K/V are not expanded to all heads
    assert saved["_saved_logsumexp"].shape == (B, H, S)
    assert saved["_saved_logsumexp"].dtype == torch.float32
    assert out.shape == (B, H, S, D)
    assert F.scaled_dot_product_attention is cuda_equiv._original_sdpa


def test_meta_sdpa_routes_to_efficient_with_mask_or_fp32() -> None:
    q, k, v = _qkv("meta", torch.bfloat16, kv=H)
    mask = torch.ones(B, 1, S, S, dtype=torch.bool, device="meta")
    with cuda_equivalence("meta", None):
        masked = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        q32, k32, v32 = _qkv("meta", torch.float32)
        fp32 = F.scaled_dot_product_attention(q32, k32, v32, is_causal=True, enable_gqa=True)
    assert masked.grad_fn.name() == "ScaledDotProductEfficientAttentionBackward0"
    bias = _saved(masked.grad_fn)["_saved_attn_bias"]
    assert bias.dtype == torch.bfloat16  # a bool mask becomes an additive bias of the query dtype
    # padded to a multiple of 16 in the last dim (attention.cpp preprocess_mask), B·1·S·16 elements, a view
    assert bias.untyped_storage().nbytes() == B * 1 * S * 16 * BF16
    assert fp32.grad_fn.name() == "ScaledDotProductEfficientAttentionBackward0"
    # efficient kernel logsumexp: padded to a multiple of 32 in the sequence dim
    assert _saved(fp32.grad_fn)["_saved_log_sumexp"].shape == (B, H, 32)


def test_cpu_sdpa_saves_what_cuda_flash_saves() -> None:
    """Real CPU tensors are not routed: torch 2.13's CPU flash kernel saves q, k, v (GQA: not expanded), the
    output and an fp32 logsumexp, as CUDA's flash kernel does."""
    q, k, v = _qkv("cpu", torch.bfloat16)
    with cuda_equivalence("cpu", None):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert out.grad_fn.name() == "ScaledDotProductFlashAttentionForCpuBackward0"
    saved = _saved(out.grad_fn)
    assert {n: tuple(t.shape) for n, t in saved.items()} == {
        "_saved_query": (B, H, S, D),
        "_saved_key": (B, KV, S, D),
        "_saved_value": (B, KV, S, D),
        "_saved_output": (B, H, S, D),
        "_saved_logsumexp": (B, H, S),
    }
    assert saved["_saved_logsumexp"].dtype == torch.float32


def _mla_qkv(device: str) -> tuple[torch.Tensor, ...]:
    """Multi-head latent attention's shapes: q / k of D + 4, v of D (DeepSeek-V3: 192 and 128)."""
    torch.manual_seed(0)
    q = torch.randn(B, H, S, D + 4, device=device, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B, H, S, D + 4, device=device, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(B, H, S, D, device=device, dtype=torch.bfloat16, requires_grad=True)
    return q, k, v


def test_value_head_dim_of_its_own_takes_the_efficient_kernel() -> None:
    """CUDA's flash kernel needs one head dim for q, k and v (sdp_utils.cpp `check_head_dim_size_flash`)."""
    assert cuda_sdpa_backend(torch.bfloat16, False, D + 4, D) == "efficient"
    assert cuda_sdpa_backend(torch.bfloat16, False, D, D) == "flash"


def test_cpu_mla_sdpa_saves_what_cuda_efficient_saves() -> None:
    """On real CPU tensors a value head dim of its own would take the math path (B·H·S² probabilities saved);
    the stand-in saves what `_scaled_dot_product_efficient_attention` saves (its meta kernel: q, k, v, the
    token-major output, the fp32 logsumexp, and two 0-dim philox tensors) and computes the same attention."""
    q, k, v = _mla_qkv("cpu")
    meta = [t.detach().to("meta").requires_grad_() for t in (q, k, v)]
    expected: list[tuple[tuple[int, ...], torch.dtype]] = []
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: expected.append((tuple(t.shape), t.dtype)) or t, lambda t: t
    ):
        reference = torch.ops.aten._scaled_dot_product_efficient_attention(*meta, None, True, 0.0, True)[0]
    saved: list[tuple[tuple[int, ...], torch.dtype]] = []
    with (
        cuda_equivalence("cpu", None),
        torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append((tuple(t.shape), t.dtype)) or t, lambda t: t),
    ):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert sorted(saved, key=str) == sorted([e for e in expected if e[0]], key=str)  # (no philox tensors)
    assert out.stride() == reference.stride()  # token-major, as CUDA allocates it
    math = F.scaled_dot_product_attention(*(t.float() for t in (q, k, v)), is_causal=True)
    assert torch.allclose(out.float(), math, atol=2e-2)
    out.float().square().sum().backward()
    grads = [t.grad.float() for t in (q, k, v)]
    leaves = [t.detach().float().requires_grad_() for t in (q, k, v)]
    F.scaled_dot_product_attention(*leaves, is_causal=True).square().sum().backward()
    for got, want in zip(grads, (t.grad for t in leaves), strict=True):
        assert torch.allclose(got, want, atol=5e-2, rtol=5e-2)


# ---- autocast ----------------------------------------------------------------------------------------------


def test_autocast_policy_on_meta() -> None:
    w = torch.nn.Parameter(torch.randn(8, 8, device="meta"))  # fp32 leaf that requires grad
    x = torch.randn(4, 8, device="meta", dtype=torch.bfloat16)
    with cuda_equivalence("meta", torch.bfloat16) as emu:
        assert isinstance(emu, CudaAutocast)
        assert F.linear(x.float(), w).dtype == torch.float32  # outside a region: nothing happens
        assert torch.is_autocast_enabled() is False
        with emu.region():
            assert F.linear(x.float(), w).dtype == torch.bfloat16  # lower-precision op
            assert (x.float() @ w).dtype == torch.bfloat16
            assert torch.rsqrt(x).dtype == torch.float32  # fp32 op
            assert x.pow(2).dtype == torch.float32
            assert torch.softmax(x, -1).dtype == torch.float32  # fp32_set_opt_dtype
            assert x.sum().dtype == torch.float32
            assert torch.cat([x, x.float()]).dtype == torch.float32  # promote
            assert torch.is_autocast_enabled()
            assert torch.is_autocast_enabled("cuda")
            assert torch.get_autocast_dtype("cuda") == torch.bfloat16
            assert not torch.is_autocast_enabled("cpu")
            assert emu.cast(w, torch.bfloat16) is emu.cast(w, torch.bfloat16)  # the cast cache
        assert emu._cache == {}  # cleared when the outermost region closes
    assert torch.is_autocast_enabled is cuda_autocast._original_is_autocast_enabled


def test_autocast_cache_only_for_leaves_that_require_grad() -> None:
    frozen = torch.randn(8, 8)
    with cuda_equivalence("cpu", torch.bfloat16) as emu, emu.region():
        assert emu.cast(frozen, torch.bfloat16) is not emu.cast(frozen, torch.bfloat16)


def test_autocast_is_reopened_in_checkpoint_recompute() -> None:
    """Non-reentrant checkpointing checks that the recompute saves tensors of the same dtypes as the forward:
    the emulated autocast must be on in the recompute too (the harness opens a region there)."""
    w = torch.nn.Parameter(torch.randn(8, 8))
    x = torch.randn(4, 8, requires_grad=True)

    with cuda_equivalence("cpu", torch.bfloat16) as emu:

        def layer(inp: torch.Tensor) -> torch.Tensor:
            if torch._C._current_graph_task_id() != -1:  # recompute, inside backward
                with emu.region():
                    return F.linear(inp, w).float().sum(-1)
            return F.linear(inp, w).float().sum(-1)

        with emu.region():
            y = torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False)
        y.sum().backward()
    assert w.grad is not None
    assert w.grad.dtype == torch.float32


def test_fused_adamw_on_meta() -> None:
    p = torch.nn.Parameter(torch.randn(16, 16, device="meta"))
    p.grad = torch.randn(16, 16, device="meta")
    with pytest.raises(RuntimeError, match="fused=True"):
        torch.optim.AdamW([p], fused=True).step()
    with cuda_equivalence("meta", None):
        opt = torch.optim.AdamW([p], fused=True)
        opt.step()
    assert opt.state[p]["step"].device.type == "meta"  # fused keeps `step` on the device, as on CUDA


def test_packed_sequence_detection_is_off() -> None:
    import transformers.masking_utils as mu

    positions = torch.arange(8, device="meta").unsqueeze(0)
    with pytest.raises(RuntimeError):  # bool() of a meta tensor
        mu.find_packed_sequence_indices(positions)
    with cuda_equivalence("meta", None):
        assert mu.find_packed_sequence_indices(positions) is None


# ---- bitsandbytes LLM.int8 ----------------------------------------------------------------------------------


def _int8_linear(n_in: int, n_out: int):
    import bitsandbytes as bnb

    lin = bnb.nn.Linear8bitLt(n_in, n_out, bias=False, has_fp16_weights=False, threshold=6.0)
    lin.weight = bnb.nn.Int8Params(torch.randn(n_out, n_in) / n_in**0.5, requires_grad=False, has_fp16_weights=False)
    return lin.to("cpu").train()  # .to() quantizes


@pytest.mark.filterwarnings("ignore")
def test_int8_matmul_runs_cudas_kernel_on_cpu() -> None:
    import bitsandbytes as bnb

    original = bnb.matmul
    lin = _int8_linear(64, 32)
    dense = lin.weight.data.float() * lin.weight.SCB.unsqueeze(1) / 127  # the int8 weight, dequantized
    x = torch.randn(16, 64, requires_grad=True)
    # bitsandbytes 0.50 off CUDA: MatMul8bitFp, which dequantizes the weight and keeps only x
    assert lin(x).grad_fn.name() == "MatMul8bitFpBackward"
    with cuda_equivalence("cpu", None):
        tracker = MemoryTracker()
        with tracker:
            y = lin(x)
        assert bnb.matmul is cuda_equiv.cuda_int8_matmul
    assert bnb.matmul is original  # restored on exit
    assert y.grad_fn.name() == "MatMul8bitLtBackward"
    assert y.dtype == x.dtype  # int8_scaled_mm(..., dtype=A.dtype): fp32 in, fp32 out
    # kept for backward outside saved tensors: the input itself (no weight-sized dequantized copy)
    assert y.grad_fn.tensors[2] is x
    assert tracker.current_bytes == 16 * 32 * F32  # what stays alive is the output alone
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(16, 32) @ dense, rtol=0.02, atol=0.02)


def test_nothing_is_patched_on_cuda() -> None:
    with warnings.catch_warnings(), cuda_equivalence("cuda", torch.bfloat16) as emu:
        assert emu is None
        assert F.dropout is cuda_equiv._original_dropout
        assert F.scaled_dot_product_attention is cuda_equiv._original_sdpa


# ---- MoE grouped matmul ------------------------------------------------------------------------------------


def _grouped_mm_step(device: str, weight_trainable: bool) -> tuple[tuple, torch.dtype, dict, tuple, tuple | None]:
    """A 2-D × 3-D fp32 grouped matmul (6 tokens over 2 experts of 8 → 4) and its backward on `device`."""
    tokens = torch.randn(6, 8).to(device).requires_grad_()
    experts = torch.randn(2, 8, 4).to(device).requires_grad_(weight_trainable)
    offs = torch.tensor([2, 6], dtype=torch.int32).to(device)
    out = F.grouped_mm(tokens, experts, offs=offs)
    saved = {name: tuple(t.shape) for name, t in _saved(out.grad_fn).items()}
    out.backward(torch.ones(out.shape, device=device))
    weight_grad = None if experts.grad is None else tuple(experts.grad.shape)
    return tuple(out.shape), out.dtype, saved, tuple(tokens.grad.shape), weight_grad


def test_meta_grouped_mm_refuses_fp32_unpatched() -> None:
    """torch 2.13's meta kernel takes bf16 only (the CUTLASS rule); the CPU and CUDA kernels take any dtype."""
    with pytest.raises(RuntimeError, match="BF16"):
        _grouped_mm_step("meta", weight_trainable=False)


@pytest.mark.parametrize("weight_trainable", [False, True])
def test_meta_grouped_mm_fp32_as_the_real_kernel(weight_trainable: bool) -> None:
    """Patched, an fp32 grouped matmul on meta makes the output, saves the tensors and returns the gradients
    the real (CPU) kernel does: the experts' input is saved only when the experts train."""
    real = _grouped_mm_step("cpu", weight_trainable)
    with cuda_equiv.GroupedMmAnyDtype():
        traced = _grouped_mm_step("meta", weight_trainable)
    assert traced == real
    assert ("_saved_self" in real[2]) == weight_trainable


def test_mixtral_qlora_traces_on_meta_as_on_cpu(no_cuda: None) -> None:
    """A tiny Mixtral QLoRA step (kbit prep upcasts the unquantized experts to fp32) traces on the meta device
    (it failed in grouped_mm) to the same tensor peak as the real CPU kernels, within 0.1 %."""
    from tests.conftest import TINY_CONFIGS
    from vramplan.measure.harness import run_step, simulate
    from vramplan.spec import model_spec_from_config, resolve_train

    m = model_spec_from_config(TINY_CONFIGS["mixtral"], "tiny-mixtral")
    t = resolve_train(m, method="qlora", lora_target="attn", seq=64, lora_dropout=0.0)
    traced, real = simulate(m, t, steps=2), run_step(m, t, device="cpu", steps=2)
    assert traced.device == "meta"
    assert traced.breakdown.peak_bytes == pytest.approx(real.breakdown.peak_bytes, rel=1e-3)
