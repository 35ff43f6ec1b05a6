"""Shared test inputs: tiny Hugging Face configs, one per supported family.

Each `TINY_CONFIGS[family]` is a `config.json` mapping (with `model_type`) that transformers 5.24 builds
and runs on CPU in milliseconds: hidden 64, 2 layers (gemma3_text: 3, sliding / full / sliding; the MLA
families: 3, dense / routed / routed), 4 heads,
2 KV heads where the family has GQA
(gpt_neox and bloom have none), MLP 128 (bloom: fixed 4·hidden), vocab 256, token ids inside the vocab,
`attn_implementation` unset. Keys the family's config class would otherwise default to a full-size value
(`head_dim` 128/256 for qwen3/gemma/gemma2, phi3's `pad_token_id` 32000) are given explicitly.
Build one with `AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))`;
`vramplan.spec.model_spec_from_config(cfg, name)` reads the same mapping.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may touch the network
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

_TOKENS: dict[str, Any] = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
_SHAPE: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 256,
    "max_position_embeddings": 256,
    **_TOKENS,
}

_MLA: dict[str, Any] = {
    **_SHAPE,
    "num_hidden_layers": 3,
    "num_key_value_heads": 4,
    "q_lora_rank": 32,
    "kv_lora_rank": 16,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 16,
    "v_head_dim": 16,
    "n_routed_experts": 8,
    "n_group": 2,
    "topk_group": 1,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 32,
    "n_shared_experts": 1,
    "tie_word_embeddings": False,
}

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": {"model_type": "llama", **_SHAPE, "head_dim": 16, "tie_word_embeddings": False},
    "mistral": {"model_type": "mistral", **_SHAPE, "head_dim": 16, "tie_word_embeddings": False},
    "qwen2": {"model_type": "qwen2", **_SHAPE, "tie_word_embeddings": False},
    "qwen3": {"model_type": "qwen3", **_SHAPE, "head_dim": 16, "tie_word_embeddings": False},
    "gemma": {
        "model_type": "gemma",
        **_SHAPE,
        "head_dim": 16,
        "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": True,
    },
    "gemma2": {
        "model_type": "gemma2",
        **_SHAPE,
        "head_dim": 16,
        "query_pre_attn_scalar": 16,
        "sliding_window": 32,
        "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": True,
    },
    "gemma3_text": {
        "model_type": "gemma3_text",
        **_SHAPE,
        "num_hidden_layers": 3,
        "head_dim": 16,
        "query_pre_attn_scalar": 16,
        "sliding_window": 32,
        "sliding_window_pattern": 2,
        "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": True,
    },
    "phi3": {"model_type": "phi3", **_SHAPE, "tie_word_embeddings": False},
    "mixtral": {
        "model_type": "mixtral",
        **_SHAPE,
        "head_dim": 16,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "tie_word_embeddings": False,
    },
    "qwen3_moe": {
        "model_type": "qwen3_moe",
        **_SHAPE,
        "head_dim": 16,
        "moe_intermediate_size": 32,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "norm_topk_prob": True,
        "tie_word_embeddings": False,
    },
    # Falcon-H1: a Mamba-2 mixer beside the attention; 6 SSM heads of 16 in 2 B/C groups of state 12, 16-token
    # chunks (seq 64: 4 of them), the released checkpoints' gated RMSNorm, multipliers other than 1
    "falcon_h1": {
        "model_type": "falcon_h1",
        **_SHAPE,
        "head_dim": 16,
        "mamba_d_ssm": 96,
        "mamba_n_heads": 6,
        "mamba_d_head": 16,
        "mamba_d_state": 12,
        "mamba_n_groups": 2,
        "mamba_d_conv": 4,
        "mamba_chunk_size": 16,
        "mamba_rms_norm": True,
        "mamba_norm_before_gate": False,
        "embedding_multiplier": 2.0,
        "lm_head_multiplier": 0.5,
        "key_multiplier": 0.8,
        "attention_in_multiplier": 1.2,
        "attention_out_multiplier": 0.7,
        "ssm_in_multiplier": 1.1,
        "ssm_out_multiplier": 0.6,
        "mlp_multipliers": [1.5, 0.5],
        "ssm_multipliers": [0.9, 1.1, 0.8, 1.2, 1.3],
        "tie_word_embeddings": False,
    },
    # gpt-oss: 4 experts' worth of pairs per token would leave most of 8 experts idle at 128 tokens; top-2 of 8,
    # a 32-token window (seq 64 reaches it), sliding / full layers as GptOssConfig alternates them
    "gpt_oss": {
        "model_type": "gpt_oss",
        **_SHAPE,
        "head_dim": 16,
        "intermediate_size": 32,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "sliding_window": 32,
        "tie_word_embeddings": False,
    },
    # multi-head latent attention: q / kv bottlenecks, a rope part of 8 and a v head dim (16) of its own; one dense
    # bottom layer, two routed ones (8 experts in 2 groups, 1 group kept, top-2), a shared-experts MLP
    "deepseek_v3": {"model_type": "deepseek_v3", **_MLA, "first_k_dense_replace": 1},
    "glm4_moe_lite": {"model_type": "glm4_moe_lite", **_MLA},  # mlp_layer_types: dense, sparse, sparse
    # GLM-4.5's MoE (as DeepSeek-V3's) under GQA attention with biases, q / k norms and half-rotary heads
    "glm4_moe": {
        "model_type": "glm4_moe",
        **{k: v for k, v in _MLA.items() if "lora_rank" not in k and "head_dim" not in k},
        "num_key_value_heads": 2,
        "head_dim": 16,
        "partial_rotary_factor": 0.5,
        "attention_bias": True,
        "use_qk_norm": True,
        "first_k_dense_replace": 1,
    },
    # Qwen3.5: a gated DeltaNet layer below a gated full-attention layer; 2 key / 4 value heads of 16 in the
    # DeltaNet, rotary on a quarter of head_dim 16 (2 frequencies: mrope_section [1, 1, 0])
    "qwen3_5_text": {
        "model_type": "qwen3_5_text",
        **_SHAPE,
        "head_dim": 16,
        "layer_types": ["linear_attention", "full_attention"],
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 4,
        "linear_key_head_dim": 16,
        "linear_value_head_dim": 16,
        "linear_conv_kernel_dim": 4,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.25,
            "mrope_section": [1, 1, 0],
        },
        "tie_word_embeddings": False,
    },
    # Qwen3.5-MoE: Qwen3.5's two layers with a sparse block (8 experts of 32, top 2, a 24-wide shared expert and
    # its sigmoid gate) for the MLP
    "qwen3_5_moe_text": {
        "model_type": "qwen3_5_moe_text",
        **{k: v for k, v in _SHAPE.items() if k != "intermediate_size"},
        "head_dim": 16,
        "layer_types": ["linear_attention", "full_attention"],
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 4,
        "linear_key_head_dim": 16,
        "linear_value_head_dim": 16,
        "linear_conv_kernel_dim": 4,
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 24,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.25,
            "mrope_section": [1, 1, 0],
        },
        "tie_word_embeddings": False,
    },
    # Gemma 4 (31B's layout): two sliding layers of head_dim 16 / 2 key heads below a full-attention layer of
    # global_head_dim 32 with one key head whose values are its keys (attention_k_eq_v: no v_proj); no per-layer
    # embeddings (hidden_size_per_layer_input 0), final logits soft-capped at 30
    "gemma4_text": {
        "model_type": "gemma4_text",
        **_SHAPE,
        "num_hidden_layers": 3,
        "head_dim": 16,
        "global_head_dim": 32,
        "num_global_key_value_heads": 1,
        "attention_k_eq_v": True,
        "sliding_window": 32,
        "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
        "hidden_size_per_layer_input": 0,
        "final_logit_softcapping": 30.0,
        "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": True,
    },
    "gpt_neox": {
        "model_type": "gpt_neox",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "vocab_size": 256,
        "max_position_embeddings": 256,
        "rotary_pct": 0.25,
        "tie_word_embeddings": False,
        **_TOKENS,
    },
    "bloom": {
        "model_type": "bloom",
        "hidden_size": 64,
        "n_layer": 2,
        "n_head": 4,
        "vocab_size": 256,
        "tie_word_embeddings": True,
        **_TOKENS,
    },
    "phi": {"model_type": "phi", **_SHAPE, "partial_rotary_factor": 0.5, "tie_word_embeddings": False},
    # post-norm families: OLMo 2 (q / k norms over the whole projections), OLMo 3 (and sliding / full layers),
    # EXAONE 4 (per-head q / k norms; RoPE on its sliding layers only, NoPE on the full ones)
    "olmo2": {"model_type": "olmo2", **_SHAPE, "tie_word_embeddings": False},
    "olmo3": {
        "model_type": "olmo3",
        **_SHAPE,
        "sliding_window": 32,
        "layer_types": ["sliding_attention", "full_attention"],
        "tie_word_embeddings": False,
    },
    # SmolLM3: a NoPE layer every 2nd (the checkpoints: every 4th) layer, tied embeddings as SmolLM3-3B
    "smollm3": {"model_type": "smollm3", **_SHAPE, "no_rope_layer_interval": 2, "tie_word_embeddings": True},
    # Granite: granite-3.x's muP multipliers (embedding 12, residual 0.22, attention 1/128 as SDPA's scale, the
    # logits divided by 8)
    "granite": {
        "model_type": "granite",
        **_SHAPE,
        "embedding_multiplier": 12.0,
        "residual_multiplier": 0.22,
        "attention_multiplier": 0.0078125,
        "logits_scaling": 8.0,
        "tie_word_embeddings": True,
    },
    # Ministral: a sliding layer (32-token window: seq 64 reaches it) below a full-attention one
    "ministral": {
        "model_type": "ministral",
        **_SHAPE,
        "head_dim": 16,
        "sliding_window": 32,
        "layer_types": ["sliding_attention", "full_attention"],
        "tie_word_embeddings": False,
    },
    "exaone4": {
        "model_type": "exaone4",
        **_SHAPE,
        "head_dim": 16,
        "sliding_window": 32,
        "sliding_window_pattern": 2,
        "tie_word_embeddings": False,
    },
    # GLM-4 (0414): post-attention and post-MLP RMSNorms, fused gate_up_proj, q / k / v biases, half-rotary heads
    "glm4": {
        "model_type": "glm4", **_SHAPE, "head_dim": 16, "partial_rotary_factor": 0.5, "tie_word_embeddings": False,
    },
    # StarCoder2: LayerNorms with biases, biases on every linear, an ungated gelu_pytorch_tanh MLP, a 32-token
    # sliding window on every layer (seq 64 reaches it: the masked SDPA path), tied embeddings (the class default)
    "starcoder2": {"model_type": "starcoder2", **_SHAPE, "sliding_window": 32, "tie_word_embeddings": True},
    # Cohere 2 (Command R7B): one mean-centred LayerNorm feeding attention and MLP in parallel, 4 layers as the
    # class's pattern makes them (3 sliding with RoPE, then 1 full without), a 32-token window, tied embeddings,
    # logits scaled by `logit_scale`
    "cohere2": {
        "model_type": "cohere2", **_SHAPE, "num_hidden_layers": 4, "sliding_window": 32, "logit_scale": 0.25,
        "tie_word_embeddings": True,
    },
    # Ministral 3: the query scaled by position after RoPE (yarn's llama_4_scaling_beta; a 16-token original
    # context, so seq 64 scales)
    "ministral3": {
        "model_type": "ministral3",
        **_SHAPE,
        "head_dim": 16,
        "rope_parameters": {
            "rope_type": "yarn", "rope_theta": 1000000.0, "factor": 16.0, "original_max_position_embeddings": 16,
            "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1,
        },
        "tie_word_embeddings": False,
    },  # fmt: skip
    # InternLM3: LlamaForCausalLM under InternLM3Config (config.json's qkv_bias / bias keys)
    "internlm3": {
        "model_type": "internlm3", **_SHAPE, "head_dim": 16, "qkv_bias": False, "bias": False,
        "tie_word_embeddings": False,
    },  # fmt: skip
    # Falcon (falcon-7b's layout): fused query_key_value with one K/V head (multi_query), attention and MLP in
    # parallel off one LayerNorm, RoPE, no biases, FalconLinear everywhere (bitsandbytes leaves it), tied
    "falcon": {
        "model_type": "falcon", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "ffn_hidden_size": 128, "vocab_size": 256, "max_position_embeddings": 256, "tie_word_embeddings": True,
        **_TOKENS,
    },  # fmt: skip
    # GPT-BigCode (StarCoder 1 / SantaCoder): fused c_attn with one K/V head, learned position embeddings, GPT-2's
    # sequential block, tied; its dropouts (0.1 by default) off here (tests/oracle: their own cases)
    "gpt_bigcode": {
        "model_type": "gpt_bigcode", "n_embd": 64, "n_layer": 2, "n_head": 4, "n_inner": 128, "vocab_size": 256,
        "n_positions": 256, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "tie_word_embeddings": True,
        **_TOKENS,
    },  # fmt: skip
    # Gemma 3n (E2B's layout, small): 5 layers (sliding, full, sliding; then 2 KV-shared ones reusing the last
    # sliding and full layers' keys and values), activation sparsity (gaussian top-k) on the first 2 MLPs, an AltUp
    # stack of 4, Laurel rank 8, per-layer inputs of 8, a 32-token window, tied embeddings, logits soft-capped at 30
    "gemma3n_text": {
        "model_type": "gemma3n_text", **_SHAPE, "num_hidden_layers": 5, "head_dim": 16, "sliding_window": 32,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention",
                        "full_attention"],
        "num_kv_shared_layers": 2, "activation_sparsity_pattern": [0.95, 0.95, 0.0, 0.0, 0.0],
        "hidden_size_per_layer_input": 8, "vocab_size_per_layer_input": 256, "laurel_rank": 8,
        "altup_num_inputs": 4, "final_logit_softcapping": 30.0, "tie_word_embeddings": True,
    },  # fmt: skip
    # Llama 4: 4 layers, dense / routed alternating (Maverick's interleave step 2; 4 experts, top-1, a shared
    # expert), chunked RoPE layers (32-token chunks: seq 64 masks them) and a NoPE top layer (every 4th)
    "llama4_text": {
        "model_type": "llama4_text", **_SHAPE, "num_hidden_layers": 4, "head_dim": 16, "intermediate_size_mlp": 128,
        "num_local_experts": 4, "num_experts_per_tok": 1, "interleave_moe_layer_step": 2,
        "attention_chunk_size": 32, "tie_word_embeddings": False,
    },  # fmt: skip
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--pretend-cuda",
        action="store_true",
        help="run as on a GPU machine: torch.cuda.is_available() is True (tests/test_gpu_independence.py)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """With --pretend-cuda, torch sees one CUDA device, as on a GPU machine. A test that assumes there is none
    (or lets the code pick the device) then fails here, as it would there: tests of the CPU path say so by
    patching `torch.cuda.is_available` to False (`no_cuda`); tests that need a GPU are marked `gpu`."""
    if config.getoption("--pretend-cuda"):
        import torch

        # import-time set-up sees the real (CPU) build: bitsandbytes would bind CUDA-only torch._C symbols
        for library in ("bitsandbytes", "transformers", "peft", "accelerate"):
            __import__(library)
        torch.cuda.is_available = lambda: True
        torch.cuda.device_count = lambda: 1


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine has no CUDA device, whatever this one has: for tests of the CPU-only path."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture(params=sorted(TINY_CONFIGS))
def tiny_config(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """(family, config mapping) for each family in TINY_CONFIGS; a fresh copy, safe to modify."""
    return request.param, dict(TINY_CONFIGS[request.param])


@pytest.fixture(autouse=True)
def _isolated_calibration_store(tmp_path_factory, monkeypatch):
    """No test reads the user's calibration store: VRAMPLAN_STORE points at an empty temporary file."""
    monkeypatch.setenv("VRAMPLAN_STORE", str(tmp_path_factory.mktemp("vramplan-store") / "runs.jsonl"))


HEAVY_MODULES = ("torch", "transformers", "peft", "bitsandbytes")


def heavy_imports_after(*argvs: list[str], modules: tuple[str, ...] = HEAVY_MODULES) -> list[str]:
    """Run `vramplan` with each argv in a fresh interpreter; return which of `modules` got imported."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from vramplan.cli import main\n"
        f"for argv in {json.dumps([list(a) for a in argvs])}:\n"
        "    try:\n        main(argv)\n"
        "    except SystemExit:\n        pass\n"
        f"print('HEAVY=' + json.dumps([m for m in {json.dumps(list(modules))} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.rsplit("HEAVY=", 1)[1])


# ---------------------------------------------------------------- no test reads beside the repository
# A user's checkout has nothing next to it: a test that opens `../something` passes only on the machine it
# was written on. An audit hook sees every `open` of the session; a file under the repository's parent
# directory but outside the repository (and outside the interpreter, sys.path, the temp dir and the user's
# caches, which every machine has) fails the test that opened it.


def _allowed_roots() -> tuple[str, ...]:
    places = [sys.prefix, sys.base_prefix, sys.exec_prefix, tempfile.gettempdir(), *sys.path]
    places += [os.path.join(os.path.expanduser("~"), d) for d in (".cache", ".config", ".local")]
    places += [os.environ[v] for v in ("HF_HOME", "HF_HUB_CACHE", "XDG_CACHE_HOME") if os.environ.get(v)]
    return tuple(os.path.realpath(p) for p in places if p)


def beside_repo(path: str | bytes | os.PathLike, root: Path = REPO_ROOT, allowed: tuple[str, ...] = ()) -> bool:
    """True when `path` is under `root`'s parent directory, not in `root` and not in any of `allowed`."""
    where = os.path.realpath(os.fsdecode(path))
    root_s = str(root)
    parent = os.path.dirname(root_s)

    def under(base: str) -> bool:
        return where == base or where.startswith(base.rstrip(os.sep) + os.sep)

    if not under(parent) or under(root_s):
        return False
    return not any(under(a) for a in allowed if a != parent)


_OPENED_BESIDE: list[str] = []
_ALLOWED = _allowed_roots()


def _audit_open(event: str, args: tuple) -> None:
    if event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    try:
        if beside_repo(args[0], allowed=_ALLOWED):
            _OPENED_BESIDE.append(os.fsdecode(args[0]))
    except Exception:  # an audit hook must never break the call it watches
        pass


sys.addaudithook(_audit_open)  # lives as long as the interpreter (audit hooks cannot be removed)


@pytest.fixture(autouse=True)
def _reads_only_the_repository():
    """Fail a test that opened a file beside the repository (see `beside_repo`)."""
    _OPENED_BESIDE.clear()
    yield
    opened, _OPENED_BESIDE[:] = list(_OPENED_BESIDE), []
    assert not opened, f"the test opened files outside the repository {REPO_ROOT}: {opened}"
