"""Llama 4's text model counted by hand (spec/llama4.py), held to what transformers 5.24 builds on the meta device:
fused experts (transformers' Llama4TextExperts) and axolotl's linearized experts (the stand-in of
vramplan/measure/llama4_linearized.py swapped in as axolotl's patch does)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from vramplan.estimator.params import model_tensor_shapes
from vramplan.spec import model_spec_from_config

pytest.importorskip("transformers")

# A tiny Llama 4 text model: 4 layers, 4 experts, a NoPE layer every 4th and chunked attention (the defaults)
TINY_LLAMA4: dict[str, Any] = {
    "model_type": "llama4_text", "hidden_size": 64, "intermediate_size": 48, "intermediate_size_mlp": 96,
    "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "num_local_experts": 4, "num_experts_per_tok": 1, "vocab_size": 256, "attention_chunk_size": 32,
}  # fmt: skip
VARIANTS: dict[str, dict[str, Any]] = {
    "every-layer-routed": TINY_LLAMA4,  # Scout: interleave_moe_layer_step 1
    "every-other-layer-routed": {**TINY_LLAMA4, "interleave_moe_layer_step": 2},  # Maverick
    "moe-layers-given": {**TINY_LLAMA4, "moe_layers": [0, 3]},
    "attention-bias-tied": {**TINY_LLAMA4, "attention_bias": True, "tie_word_embeddings": True},
}


def _build(cfg: dict[str, Any], linearized: bool) -> Any:
    import contextlib

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from vramplan.measure.llama4_linearized import linearized_experts

    with linearized_experts() if linearized else contextlib.nullcontext(), torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))


@pytest.mark.parametrize("linearized", [False, True], ids=["fused", "linearized"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_llama4_counts_match_transformers(variant: str, linearized: bool) -> None:
    import torch

    cfg = dict(VARIANTS[variant])
    spec = model_spec_from_config(cfg, variant, linearized_experts=linearized)
    model = _build(cfg, linearized)
    assert spec.total_params == sum(p.numel() for p in model.parameters())
    ours = Counter[tuple[int, ...]]()
    for shape, n in model_tensor_shapes(spec):
        ours[shape] += n
    assert +ours == Counter(tuple(p.shape) for p in model.parameters())
    # what bitsandbytes replaces: every `type(module) is nn.Linear` of the decoder layers (not the router)
    packed = sum(mod.weight.numel() for path, mod in model.model.layers.named_modules() if type(mod) is torch.nn.Linear)
    assert spec.quantized_weight_params == packed
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    assert spec.fused_expert_params == (0 if linearized else experts)


def test_maverick_routes_every_other_layer() -> None:
    """interleave_moe_layer_step 2: layers 1, 3 route, layers 0, 2 hold a dense MLP of intermediate_size_mlp."""
    spec = model_spec_from_config(VARIANTS["every-other-layer-routed"], "tiny")
    by_path = {lin.path: lin for lin in spec.linears}
    assert by_path["feed_forward.gate_proj"].out_features == 96
    assert spec.instances(by_path["feed_forward.gate_proj"]) == 2  # layers 0 and 2
    assert spec.instances(by_path["feed_forward.shared_expert.gate_proj"]) == 2  # layers 1 and 3
    assert spec.dense_mlp_layers == (0, 2)  # walked as Llama4TextMLP; 1 and 3 as Llama4TextMoe
    assert spec.fused_expert_params == 2 * 4 * 3 * 64 * 48  # moe layers · experts · (gate, up, down) · H · I
