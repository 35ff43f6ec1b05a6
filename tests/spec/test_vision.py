"""Vision-language wrappers: text decoder + vision tower and projector, held to transformers itself.

Oracle: `AutoModelForImageTextToText.from_config` (or `AutoModelForCausalLM`, for the wrappers it maps) on the
meta device, from the same config.json. Exact: total parameters, the weights bitsandbytes replaces (transformers
5.24 `replace_with_bnb_linear`: `type(module) is nn.Linear` or Conv1D, skipping `get_modules_to_not_convert`),
and the tower's parameters (frozen in every method).
"""

from __future__ import annotations

from typing import Any

import pytest

from vramplan.api import estimate
from vramplan.spec import model_spec_from_config, resolve_train

# llava-hf/llava-1.5-7b-hf config.json as on the hub (text_config without hidden_size: LlamaConfig defaults)
LLAVA_15 = {
    "model_type": "llava", "image_token_index": 32000, "pad_token_id": 32001, "projector_hidden_act": "gelu",
    "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"],
                    "max_position_embeddings": 4096, "model_type": "llama", "rms_norm_eps": 1e-05,
                    "torch_dtype": "float16", "vocab_size": 32064},
    "tie_word_embeddings": False, "torch_dtype": "float16",
    "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                      "model_type": "clip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 24,
                      "patch_size": 14, "projection_dim": 768, "vocab_size": 32000},
    "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064,
}  # fmt: skip
SMALL_TEXT = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 3, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": 1000}  # fmt: skip
CASES: dict[str, dict[str, Any]] = {
    "llava-1.5-7b": LLAVA_15,
    # a hand-modelled text type other than the wrapper's default (llava's is llama)
    "llava-qwen2": {"model_type": "llava", "text_config": {"model_type": "qwen2", **SMALL_TEXT},
                    "vision_config": {"model_type": "clip_vision_model", "num_hidden_layers": 2}},
    # text type that exists only inside its wrapper (qwen2_5_vl_text): the wrapper's record, text part
    "qwen2.5-vl": {"model_type": "qwen2_5_vl", "text_config": {"model_type": "qwen2_5_vl_text", **SMALL_TEXT},
                   "vision_config": {"depth": 2}},
    # a wrapper in the causal-LM mapping, its text type generic (gemma3_text)
    "gemma3": {"model_type": "gemma3", "text_config": {"model_type": "gemma3_text", **SMALL_TEXT},
               "vision_config": {"model_type": "siglip_vision_model", "num_hidden_layers": 2}},
    "mistral3": {"model_type": "mistral3", "text_config": {"model_type": "mistral", **SMALL_TEXT},
                 "vision_config": {"model_type": "pixtral", "num_hidden_layers": 2}},
    # the hub's Qwen3-VL configs name their vision_config "qwen3_vl", not the class's "qwen3_vl_vision": a fixed
    # sub-config class ignores the name and builds its tower all the same
    "qwen3-vl-named": {"model_type": "qwen3_vl", "text_config": {"model_type": "qwen3_vl_text", **SMALL_TEXT},
                       "vision_config": {"model_type": "qwen3_vl", "depth": 2}},
}  # fmt: skip


def _reference(cfg: dict[str, Any]) -> tuple[int, int]:
    """(total parameters, weights bitsandbytes would replace) of what transformers builds from `cfg`."""
    import torch
    import transformers
    from transformers import AutoConfig
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.quantizers_utils import should_convert_module

    from vramplan.measure.architectures import auto_class

    config = AutoConfig.for_model(**cfg)
    with torch.device("meta"):
        model = getattr(transformers, auto_class(cfg["model_type"])).from_config(config)
    skip = transformers.quantizers.base.get_keys_to_not_convert(model) + list(model._keep_in_fp32_modules or [])
    packed = sum(
        mod.weight.numel()
        for name, mod in model.named_modules()
        if (isinstance(mod, Conv1D) or type(mod) is torch.nn.Linear) and should_convert_module(name, skip)
    )
    return sum(p.numel() for p in model.parameters()), packed


@pytest.mark.parametrize("case", CASES)
def test_counts_match_transformers(case: str) -> None:
    cfg = CASES[case]
    m = model_spec_from_config(cfg, case)
    total, packed = _reference(cfg)
    assert m.tower_params > 0
    assert (m.total_params, m.quantized_weight_params) == (total, packed)


@pytest.mark.parametrize("case", CASES)
def test_tower_frozen_and_said(case: str) -> None:
    """Full fine-tuning trains the text model, not the tower; the output says it is a VLM."""
    m = model_spec_from_config(CASES[case], case)
    b = estimate(m, gpu="a100-80gb", method="full", seq=512)
    assert b.params_trainable == m.total_params - m.tower_params
    assert b.approximation is not None
    assert "vision-language model" in b.approximation.note


def test_qlora_packs_the_tower() -> None:
    """bitsandbytes replaces the tower's nn.Linear layers too: QLoRA weights are smaller than with the tower
    left in bf16 by at least the 4-bit saving on the tower's linear weights."""
    m = model_spec_from_config(LLAVA_15, "llava")
    tower_linear = m.quantized_weight_params - m.linear_weight_params
    assert tower_linear > 0.9 * m.tower_params  # CLIP-L: nearly all of it is in linears
    b = estimate(m, gpu="a100-80gb", method="qlora", seq=512)
    assert b.params_total > m.total_params  # adapters on the text decoder only
    text_linears = {lin.name for lin in m.linears}
    assert set(resolve_train(m, method="qlora").lora_target) <= text_linears


def test_image_tokens_join_the_sequence() -> None:
    m = model_spec_from_config(LLAVA_15, "llava")
    t = resolve_train(m, method="qlora", seq=1024, image_tokens=576)
    assert (t.seq, t.image_tokens) == (1024 + 576, 576)  # text + llava-1.5's 24² patches
    plain = model_spec_from_config({"model_type": "llama", **SMALL_TEXT}, "llama")
    assert any("no vision tower" in n for n in resolve_train(plain, image_tokens=8).notes)


def test_unknown_vision_tower_said() -> None:
    """A vision_config of another type than the wrapper's record: the tower is not counted, and said so."""
    cfg = {**LLAVA_15, "vision_config": {"model_type": "siglip_vision_model"}}
    m = model_spec_from_config(cfg, "llava-siglip")
    assert m.tower_params == 0
    assert m.approximation is not None
    assert "not counted" in m.approximation.note


def test_causal_lm_wrapper_loads_text_only() -> None:
    """Qwen3.5 is in transformers' causal-LM mapping (Qwen3_5ForCausalLM): AutoModelForCausalLM builds the text
    model from the wrapper's config.json and never the vision tower, whatever its vision_config says."""
    import torch
    import transformers
    from transformers import AutoConfig

    small = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 1000, "linear_num_key_heads": 2,
             "linear_num_value_heads": 4, "linear_key_head_dim": 16, "linear_value_head_dim": 16}  # fmt: skip
    cfg = {"model_type": "qwen3_5", "text_config": {"model_type": "qwen3_5_text", **small},
           "vision_config": {"model_type": "qwen3_5", "depth": 2}}  # fmt: skip
    m = model_spec_from_config(cfg, "qwen3.5-small")
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    assert m.tower_params == 0
    assert m.total_params == sum(p.numel() for p in model.parameters())
    assert m.approximation is not None and "text model only" in m.approximation.note
