"""Shared test inputs: tiny Hugging Face configs, one per supported family.

Each `TINY_CONFIGS[family]` is a `config.json` mapping (with `model_type`) that transformers 5.24 builds
and runs on CPU in milliseconds: hidden 64, 2 layers, 4 heads, 2 KV heads where the family has GQA
(gpt_neox and bloom have none), MLP 128 (bloom: fixed 4·hidden), vocab 256, token ids inside the vocab,
`attn_implementation` unset. Keys the family's config class would otherwise default to a full-size value
(`head_dim` 128/256 for qwen3/gemma/gemma2, phi3's `pad_token_id` 32000) are given explicitly.
Build one with `AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))`;
`vramplan.spec.model_spec_from_config(cfg, name)` reads the same mapping.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may touch the network
import pytest

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
    "phi3": {"model_type": "phi3", **_SHAPE, "tie_word_embeddings": False},
    "mixtral": {
        "model_type": "mixtral",
        **_SHAPE,
        "head_dim": 16,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "tie_word_embeddings": False,
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
}


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
