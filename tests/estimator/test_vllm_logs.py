"""vLLM start-up logs whose inputs are stated, held to the estimate: "GPU KV cache size" within 5 % either way
(never optimistic by more than that), and the weights vLLM logs ("Model loading took", "Loading model weights
took"). Each case cites its log (issue, vLLM release); `vllm_version` selects that release's arithmetic.

What was fitted to which log (so the reader knows which checks are independent): the V0 non-torch constants
(vllm.py VLLM_V0_NON_TORCH_BYTES / _HOPPER_BYTES) come from #10517 and #10511; the CUDA totals of the 3090 and
H100 (gpus.toml cuda_total_bytes) from the same logs; the 448 MiB fallback from both; the Hopper multi-GPU
non-torch share (VLLM_TP_NON_TORCH_HOPPER_BYTES) from #10511's TP 2 run; the V0 sampler's bytes per logit were
read from vLLM's code and checked on #10511's activation peak. #13061 (TP 2 on 4090s), the weight logs of
#23278 (MXFP4) and #17469 (TP 4 MoE) were used for nothing but these checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from vramplan.api import estimate_serve
from vramplan.sources.profiles import find_gpu, load_model
from vramplan.spec import ModelSpec, model_spec_from_config

GIB = 1024**3


@dataclass(frozen=True)
class Log:
    cite: str
    model: str
    gpu: str
    logged_tokens: int
    options: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # overrides of the profile's config.json


def _model(log: Log) -> ModelSpec:
    m = load_model(log.model)
    if not log.config:
        return m
    cfg = {k: v for k, v in m.config.items() if k != "vramplan_profile"} | log.config
    return model_spec_from_config(cfg, log.model)


LOGS = [
    Log(
        "vllm-project/vllm#10517 (vLLM 0.6.4, V0): Llama-3.1-8B-Instruct, RTX 3090, --max-model-len 20000, "
        "gpu_memory_utilization 0.90: 'GPU blocks: 1952'",
        "llama-3.1-8b",
        "3090",
        1952 * 16,  # blocks · block_size
        {"max_model_len": 20000, "gpu_memory_utilization": 0.9, "vllm_version": "0.6"},
    ),
    Log(
        "vllm-project/vllm#10517 (vLLM 0.6.4, V0): the same at --max-model-len 29000: '# GPU blocks: 1478'",
        "llama-3.1-8b",
        "3090",
        1478 * 16,
        {"max_model_len": 29000, "gpu_memory_utilization": 0.9, "vllm_version": "0.6"},
    ),
    Log(
        "vllm-project/vllm#10511 (vLLM 0.6.4, V0): `vllm serve meta-llama/Meta-Llama-3-8B` on an H100 80GB: "
        "'available_kv_cache_memory 53.29GiB'",
        "llama-3-8b",
        "h100",
        int(53.29 * 1024 / 2) * 16,  # 53.29 GiB in 2 MiB blocks (32 layers · 64 KiB), 16 tokens each
        {"gpu_memory_utilization": 0.9, "vllm_version": "0.6"},
    ),
    Log(
        "vllm-project/vllm#13061 (vLLM 0.7.2, V0): DeepSeek-R1-Distill-Qwen-14B (Qwen2.5-14B architecture) on "
        "2 × RTX 4090, --tensor-parallel-size 2 --gpu_memory_utilization 0.98, max_model_len 131072: 'maximum "
        "number of tokens that can be stored in KV cache (81536)'",
        "qwen2.5-14b",
        "4090",
        81536,
        {"gpu_memory_utilization": 0.98, "tensor_parallel_size": 2, "vllm_version": "0.7.2"},
    ),
    Log(
        "vllm-project/vllm#10511 (vLLM 0.6.4, V0): `vllm serve meta-llama/Meta-Llama-3-8B -tp 2` on H100s: "
        "71.29 − 7.48 (weights) − 3.58 (non-torch) − 1.26 (activations) GiB per rank, 1 MiB blocks (4 KV heads)",
        "llama-3-8b",
        "h100",
        int((71.29 - 7.48 - 3.58 - 1.26) * 1024) * 16,
        {"gpu_memory_utilization": 0.9, "tensor_parallel_size": 2, "vllm_version": "0.6"},
    ),
]


@pytest.mark.parametrize("log", LOGS, ids=lambda log: log.cite.split(" ")[0] + "-" + str(log.logged_tokens))
def test_kv_cache_tokens_within_five_percent_of_the_log(log: Log) -> None:
    b = estimate_serve(_model(log), gpu=log.gpu, **log.options)
    assert b.vllm is not None
    predicted = b.vllm.kv.tokens
    error = (predicted - log.logged_tokens) / log.logged_tokens
    assert abs(error) <= 0.05, f"{log.cite}: predicted {predicted:,}, logged {log.logged_tokens:,} ({error:+.1%})"


def test_13061_ranks_differ_by_the_driver_sampler() -> None:
    """#13061's non-driver worker logged 'the rest of the memory reserved for KV Cache is 8.69GiB' with a
    0.19 GiB activation peak; the engine took the smaller pool of rank 0, whose V0 profile also samples
    (top-k/top-p sort path, vllm.py V0_SAMPLER_BYTES_PER_LOGIT): 81,536 tokens = 7.46 GiB of 1.5 MiB blocks,
    1.23 GiB less. The estimate's per-GPU peak is the driver's, so its sampler minus the forward is that gap.
    The 4090's CUDA total there: 23.08 GiB = 0.98 × total, i.e. 23.55 GiB, which the 448 MiB fallback gives."""
    assert find_gpu("4090").cuda_visible_bytes / GIB == pytest.approx(23.08 / 0.98, abs=0.01)
    b = estimate_serve(_model(LOGS[3]), gpu="4090", **LOGS[3].options)
    assert b.vllm is not None
    gap = (b.vllm.sampler_bytes - b.vllm.forward_bytes) / GIB
    # 1.33 GiB here: the forward is 0.14 GiB against the 0.19 GiB the worker logged
    assert gap == pytest.approx(8.69 - 81536 / 16 * 1.5 / 1024, abs=0.15)


@pytest.mark.parametrize(
    ("cite", "model", "config", "options", "logged_gib", "tolerance"),
    [
        (
            "#10517 'Loading model weights took 14.9888 GB' (GiB): bf16 weights + the 131072-position RoPE table",
            "llama-3.1-8b",
            {},
            {"gpu": "3090"},
            14.9888,
            0.001,
        ),
        (
            "#23278 (vLLM 0.10.1, H100, Marlin MXFP4): gpt-oss-120b 'Model loading took 65.9651 GiB'",
            "gpt-oss-120b",  # the profile is the unquantized architecture; the checkpoint ships this config
            {"quantization_config": {"quant_method": "mxfp4"}},
            {"gpu": "h100"},
            65.9651,
            0.002,
        ),
        (
            "#17469 (vLLM 0.8.5, 4 ranks): Qwen3-30B-A3B bf16, 'Model loading took 14.2474 GiB' per rank",
            "qwen3-30b-a3b",
            {},
            {"gpu": "a100-40gb", "tensor_parallel_size": 4, "vllm_version": "0.8.5"},
            14.2474,
            0.002,
        ),
        (
            "#13061 (vLLM 0.7.2, TP 2): R1-Distill-Qwen-14B 'Loading model weights took 13.9476 GB' per rank; "
            "0.16 GiB above the count (not explained: the rank's share is 13.79 GiB with the RoPE table)",
            "qwen2.5-14b",
            {},
            {"gpu": "4090", "tensor_parallel_size": 2, "vllm_version": "0.7.2"},
            13.9476,
            0.015,
        ),
    ],
)
def test_weights_as_vllm_logs_them(
    cite: str, model: str, config: dict, options: dict, logged_gib: float, tolerance: float
) -> None:
    m = _model(Log(cite, model, options["gpu"], 0, config=config))
    b = estimate_serve(m, **options)
    got = (b.components.weights + b.components.quant_state) / GIB
    assert got == pytest.approx(logged_gib, rel=tolerance), f"{cite}: {got:.4f} GiB"
