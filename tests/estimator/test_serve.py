"""Serving estimate: vLLM's start-up budget on numbers vLLM logged, PEFT's adapter dtype on a real model,
and the invariants (more memory for weights → fewer KV tokens; the breakdown is the pool's budget)."""

from __future__ import annotations

import pytest

from tests.conftest import TINY_CONFIGS
from vramplan.api import estimate_serve
from vramplan.errors import VramplanError
from vramplan.estimator.kvcache import vllm_page_bytes
from vramplan.estimator.serve import (
    adapter_elem_bytes,
    adapter_params,
    layer_peak_elems_per_token,
    serve_weight_bytes,
)
from vramplan.estimator.vllm import available_kv_bytes
from vramplan.sources.profiles import find_gpu, load_model
from vramplan.spec import model_spec_from_config
from vramplan.spec.overheads import CUDA_CONTEXT_BYTES
from vramplan.spec.serve import resolve_serve

GIB = 1024**3


def _gib(x: float) -> int:
    return int(x * GIB)


# ---------------------------------------------------------------- vLLM's budget, as vLLM logged it


def test_vllm_budget_worked_example_h100() -> None:
    """vllm-project/vllm#10511, `vllm serve meta-llama/Meta-Llama-3-8B` on an H100: total_gpu_memory 79.22GiB,
    gpu_memory_utilization 0.90 -> 71.29GiB; model weights 14.96GiB; non_torch_memory 1.79GiB; PyTorch
    activation peak memory 1.26GiB; available_kv_cache_memory 53.29GiB."""
    avail = available_kv_bytes(_gib(79.22), 0.9, _gib(14.96) + _gib(1.79) + _gib(1.26))
    assert avail / GIB == pytest.approx(53.29, abs=0.01)
    m = load_model("llama-3-8b")
    w, q = serve_weight_bytes(m, resolve_serve(m, None))
    assert (w + q) / GIB == pytest.approx(14.96, abs=0.005)  # "model weights take 14.96GiB"


@pytest.mark.parametrize(("tokens", "logged_gib"), [(20000, 17.06 - 14.99), (29000, 17.98 - 14.99)])
def test_activation_peak_per_token_matches_vllm_profile(tokens: int, logged_gib: float) -> None:
    """vllm-project/vllm#10517: Llama-3.1-8B on a 3090, profile run of max_model_len tokens (no chunking):
    peak_torch_memory 17.06 / 17.98 GiB with weights 14.9888 GB."""
    m = load_model("llama-3.1-8b")
    assert tokens * layer_peak_elems_per_token(m) * 2 / GIB == pytest.approx(logged_gib, abs=0.02)


def test_vllm_pool_adds_up() -> None:
    """vLLM 0.8–0.20 (`--vllm-version 0.10`): the pool is CUDA's total × utilization − what the profile saw."""
    b = estimate_serve("llama-3-8b", gpu="4090", max_model_len=8192, max_num_seqs=16, vllm_version="0.10")
    v = b.vllm
    assert v is not None
    g = find_gpu("4090")
    assert g.cuda_total_bytes is None  # no log of its CUDA total in gpus.toml: NVML's 24564 MiB less 448 MiB
    assert v.total_bytes == (24564 - 448) * 1024**2
    assert v.requested_bytes == -(-v.total_bytes * 9 // 10)
    assert v.available_kv_bytes == int(v.total_bytes * 0.9) - v.non_kv_bytes
    page32 = 32 * vllm_page_bytes(load_model("llama-3-8b"), 2)
    assert v.kv.num_blocks == v.available_kv_bytes // page32
    assert 0 <= v.available_kv_bytes - v.kv.pool_bytes < page32  # the pool is the budget, down to a block
    assert v.kv.tokens == v.kv.num_blocks * 16
    assert v.kv.max_concurrency == pytest.approx(v.kv.num_blocks / (8192 // 16))
    # CUDA graphs: sizes 1, 2, 4, 8, 16, 24, 32 (up to 2 × max_num_seqs) × 33 pieces (32 layers + 1) of 256 KiB,
    # + the activations of a 32-token decode: 32 · (3·14336 + 3·4096) · bf16
    graphs = 7 * 33 * 256 * 1024 + 32 * (3 * 14336 + 3 * 4096) * 2
    c, m = b.components, load_model("llama-3-8b")
    assert c.cuda_graphs == v.cuda_graph_bytes == graphs
    # up to 0.20 the graphs are captured after the pool: the process holds context + budget + graphs
    slack = v.available_kv_bytes - v.kv.pool_bytes  # the unused partial block
    assert b.device_bytes == CUDA_CONTEXT_BYTES + int(v.total_bytes * 0.9) - slack + graphs
    # the breakdown's components are the pool's budget: what vLLM subtracts before sizing the KV cache
    assert (c.weights, c.quant_state) == serve_weight_bytes(m, resolve_serve(m, g))
    assert c.temporaries == max(v.forward_bytes, v.sampler_bytes)  # the profile run's activation peak, reused
    assert c.weights + c.quant_state + c.adapters + c.temporaries + c.non_torch == v.non_kv_bytes
    assert c.kv_cache == v.kv.pool_bytes
    assert b.reserved_bytes == b.peak_bytes  # vLLM allocates the KV cache once: no allocator slack modelled
    assert b.verdict in ("fits", "tight")


def test_vllm_releases_budget_the_graphs_differently() -> None:
    """0.21 subtracts the graphs from the same budget; 0.34 (default) sizes the extensible pool from what is
    free after capture: total − context − (weights + non-torch + graphs) − max(1 GiB, 0.75 · peak) − peak."""
    kw = {"gpu": "4090", "max_model_len": 8192, "max_num_seqs": 16, "gpu_memory_utilization": 0.9}
    old, mid = (estimate_serve("llama-3-8b", vllm_version=v, **kw).vllm for v in ("0.10", "0.21"))
    assert old is not None
    assert mid is not None
    assert mid.available_kv_bytes == -(-old.total_bytes * 9 // 10) - old.non_kv_bytes - old.cuda_graph_bytes
    now = estimate_serve("llama-3-8b", gpu="4090", max_model_len=8192, max_num_seqs=16)
    assert now.serve.gpu_memory_utilization == 1.0  # CacheConfig.resolved_gpu_memory_utilization, extensible
    v, c = now.vllm, now.components
    assert v is not None
    peak = c.temporaries
    used = c.weights + c.quant_state + c.non_torch + c.cuda_graphs
    margin = max(GIB, int(0.75 * peak))
    assert v.available_kv_bytes == v.total_bytes - CUDA_CONTEXT_BYTES - used - margin - peak
    assert now.problems == ()  # the budget is only a cap with the extensible cache: no start-up refusal


def test_vllm_kv_grows_with_less_weight_and_fp8() -> None:
    def tokens(**kw: object) -> int:
        b = estimate_serve("llama-3-8b", gpu="4090", max_model_len=8192, **kw)
        assert b.vllm is not None
        return b.vllm.kv.tokens

    base = tokens()
    assert tokens(quant="nf4") > base
    assert tokens(kv_cache_dtype="fp8") == pytest.approx(2 * base, abs=32)
    assert tokens(gpu_memory_utilization=0.8) < base
    assert tokens(max_lora_rank=64, max_loras=4) < tokens(max_lora_rank=8, max_loras=1) < base


def test_vllm_refuses_a_max_model_len_the_pool_cannot_hold() -> None:
    b = estimate_serve("qwen2.5-7b", gpu="3060ti", quant="nf4", vllm_version="0.10")  # 131,072 tokens, 8 GiB
    assert b.vllm is not None
    assert b.verdict == "oom"
    assert any("largest --max-model-len that fits" in p for p in b.problems)
    fit = b.vllm.max_model_len_fit
    ok = estimate_serve("qwen2.5-7b", gpu="3060ti", quant="nf4", max_model_len=fit, vllm_version="0.10")
    assert not ok.problems
    assert ok.vllm is not None
    assert ok.vllm.kv.max_concurrency >= 1.0


def test_vllm_lora_slots_are_in_the_model_dtype() -> None:
    m = load_model("qwen2.5-7b")
    s = resolve_serve(m, find_gpu("t4"), quant="nf4", max_lora_rank=16, max_loras=4)
    assert s.dtype == "fp16"  # T4: no bf16
    # 4 slots × 28 layers × r·(in + out) summed over q, k, v, o, gate, up, down
    h, i, kv = 3584, 18944, 4 * 128
    per_layer = 16 * ((h + h) + (h + kv) + (h + kv) + (h + h) + (h + i) + (h + i) + (i + h))
    assert adapter_params(m, s) == 4 * 28 * per_layer
    assert adapter_elem_bytes(s) == 2


# ---------------------------------------------------------------- transformers generate


def test_peft_keeps_served_adapters_in_fp32() -> None:
    """Oracle: PEFT 0.21.2 wraps a bf16 model with fp32 LoRA weights (autocast_adapter_dtype=True)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    cfg = TINY_CONFIGS["llama"]
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**cfg))
    model = model.to(torch.bfloat16)
    pm = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules="all-linear"))
    lora = [p for n, p in pm.named_parameters() if "lora_" in n]
    assert {p.dtype for p in lora} == {torch.float32}
    m = model_spec_from_config(cfg, "tiny-llama")
    s = resolve_serve(m, None, engine="hf", max_lora_rank=4)
    assert sum(p.numel() * p.element_size() for p in lora) == adapter_params(m, s) * adapter_elem_bytes(s)


def test_hf_phases_and_invariants() -> None:
    b = estimate_serve("llama-2-7b", gpu="3060ti", engine="hf", batch=1, new_tokens=512)
    assert [p.phase for p in b.phases] == ["prefill", "decode"]
    assert b.components.kv_cache == 32 * 32 * 128 * 2 * 2 * (512 + 511)  # layers·heads·dim·(K,V)·bf16·tokens
    assert b.verdict == "oom"  # 12.55 GiB of bf16 weights on 8 GiB
    assert estimate_serve("llama-2-7b", gpu="3060ti", engine="hf", quant="nf4").verdict == "fits"
    small = estimate_serve("llama-2-7b", engine="hf", batch=1, new_tokens=64)
    big = estimate_serve("llama-2-7b", engine="hf", batch=8, new_tokens=2048)
    assert big.peak_bytes > small.peak_bytes
    assert small.verdict is None  # no GPU given
    lora = estimate_serve("llama-2-7b", engine="hf", max_loras=2)
    merged = estimate_serve("llama-2-7b", engine="hf", merged_lora=True)
    assert lora.components.adapters > 0
    assert merged.components.adapters == 0
    for br in (b, small, big, lora, merged):
        prefill, decode = (ph.components for ph in br.phases)
        for name in ("weights", "quant_state", "adapters"):  # resident through the generate() call
            assert getattr(prefill, name) == getattr(decode, name), name
        assert decode.kv_cache > prefill.kv_cache  # the cache grows by one token per generated token
        # the overhead model (spec/overheads.py): allocator 10 % of the peak + cuBLAS workspace; CUDA context
        slack = br.reserved_bytes - br.peak_bytes - (8 * 4 * 1024**2 + 8 * 16 * 1024)
        assert abs(slack - br.peak_bytes // 10) <= 1  # int(peak · 0.10) in floating point
        assert br.device_bytes - br.reserved_bytes == 450 * 1024**2


def test_hf_prefill_peak_for_long_prompts() -> None:
    b = estimate_serve("llama-3-8b", engine="hf", batch=4, prompt_tokens=8192, new_tokens=16)
    assert b.peak_phase == "prefill"  # b·P·(3·I + 3·h) workspace beats the cache growth of 16 tokens


# ---------------------------------------------------------------- input validation


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"engine": "vlm"}, "did you mean 'vllm'"),
        ({"engine": "hf", "kv_cache_dtype": "fp8"}, "is a vLLM option"),
        ({"engine": "hf", "max_num_seqs": 4}, "--max-num-seqs applies to --engine vllm"),
        ({"new_tokens": 4}, "--new-tokens applies to --engine hf"),
        ({"max_lora_rank": 12}, "--max-lora-rank value '12'"),
        ({"merged_lora": True, "max_loras": 4}, "cannot serve --max-loras 4"),
        ({"max_model_len": 100_000}, "exceeds llama-3-8b's max_position_embeddings 8192"),
        ({"gpu_memory_utilization": 1.5}, "(0, 1]"),
        ({"max_num_seqs": 512, "max_num_batched_tokens": 256}, "must be >= --max-num-seqs 512"),
        ({"kv_cache_dtype": "fp9"}, "did you mean 'fp8'"),
        ({"quant": "nf3"}, "did you mean 'nf4'"),
    ],
)
def test_bad_serve_input(kw: dict, needle: str) -> None:
    with pytest.raises(VramplanError) as e:
        resolve_serve(load_model("llama-3-8b"), find_gpu("4090"), **kw)
    assert needle in str(e.value)


def test_vllm_needs_a_gpu() -> None:
    with pytest.raises(VramplanError, match="add --gpu"):
        estimate_serve("llama-3-8b")


def test_bf16_on_t4_becomes_fp16_with_a_note() -> None:
    s = resolve_serve(load_model("llama-3-8b"), find_gpu("t4"), dtype="bf16")
    assert s.dtype == "fp16"
    assert any("no bf16" in n for n in s.notes)
