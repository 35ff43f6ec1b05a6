"""Framework keys that used to be listed as not modelled: what each reads as, or why it changes no memory.

Sources (each rule cites its own in the reader): axolotl 067b021 (loaders/patch_manager.py, monkeypatch/
attention/xformers.py, integrations/{kernels,swanlab}), LLaMA-Factory ff6d4d1 v1 (plugins/model_plugins/
kernels/interface.py, liger_kernel_ops.py, plugins/trainer_plugins/batching.py, trainers/dpo_trainer.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vramplan.sources.configs.formats import read_config
from vramplan.sources.inputs import plan_inputs


@pytest.fixture(autouse=True)
def _offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


def _write(tmp_path: Path, text: str, name: str = "train.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _listed(fs) -> list[str]:
    return [u.key for u in fs.not_modeled]


V1 = "model: Qwen/Qwen3-0.6B\nmodel_class: llm\nmicro_batch_size: 4\ncutoff_len: 2048\n"


def test_v1_kernel_config_auto_is_nothing_on_a_gpu(tmp_path: Path) -> None:
    fs = read_config(_write(tmp_path, V1 + "kernel_config:\n  name: auto\n"))
    assert _listed(fs) == []
    assert "liger_kernels" not in fs.settings
    assert "loss" not in fs.settings
    assert any("NPU" in n for n in fs.notes)


def test_v1_liger_kernel_on_qwen3_is_liger_kernels_and_loss(tmp_path: Path) -> None:
    fs = read_config(_write(tmp_path, V1 + "kernel_config:\n  name: liger_kernel\n"))
    assert (fs.settings["liger_kernels"], fs.settings["loss"]) == (True, "liger")
    other = read_config(_write(tmp_path, V1.replace("Qwen/Qwen3-0.6B", "meta-llama/Llama-3.1-8B")
                               + "kernel_config:\n  name: liger_kernel\n"))  # fmt: skip
    assert "liger_kernels" not in other.settings  # not a type v1's Liger table has: left alone
    assert _listed(other) == []


def test_v1_kernels_it_does_not_model_are_listed_by_name(tmp_path: Path) -> None:
    fs = read_config(_write(tmp_path, V1 + "kernel_config:\n  name: auto, flash-linear-attention\n"))
    assert [str(u) for u in fs.not_modeled] == ["kernel_config=flash-linear-attention (estimated as the unfused ops)"]


@pytest.mark.parametrize("strategy", ["padding_free", "dynamic_padding_free"])
def test_v1_padding_free_is_packing(tmp_path: Path, strategy: str) -> None:
    fa2 = read_config(_write(tmp_path, V1 + f"batching_strategy: {strategy}\nflash_attn: flash_attention_2\n"))
    assert fa2.settings["packing"] is True
    assert _listed(fa2) == []
    # under SDPA the packed row of batch × seq tokens gets one (B·S)² mask, not B of S²: listed
    sdpa = read_config(_write(tmp_path, V1 + f"batching_strategy: {strategy}\n"))
    assert sdpa.settings["packing"] is True
    assert _listed(sdpa) == ["batching_strategy"]


def test_v1_dynamic_batching_is_the_padded_budget(tmp_path: Path) -> None:
    fs = read_config(_write(tmp_path, V1 + "batching_strategy: dynamic_batching\n"))
    assert _listed(fs) == []
    assert "packing" not in fs.settings
    assert (fs.settings["batch"], fs.settings["seq"]) == (4, 2048)


@pytest.mark.parametrize(("method", "reference"), [("lora", "adapter"), ("full", "model")])
def test_v1_dpo_dataset_is_the_dpo_stage(tmp_path: Path, method: str, reference: str) -> None:
    peft = "peft_config:\n  name: lora\n  r: 16\n" if method == "lora" else ""
    path = _write(tmp_path, V1 + peft + "train_dataset: data/v1_dpo_demo.yaml\n")
    fs = read_config(path)
    assert (fs.settings["stage"], fs.settings["fused_lm_head"]) == ("dpo", False)
    assert _listed(fs) == []
    plan = plan_inputs(None, [path], {}, ())
    from vramplan.spec import resolve_train

    t = resolve_train(plan.model, **plan.settings)
    assert (t.stage.stage, t.stage.reference) == ("dpo", reference)  # dpo_trainer.py `_init_ref_model`


AX = "base_model: NousResearch/Llama-2-7b-hf\nadapter: lora\n"


@pytest.mark.parametrize(
    "impl", ["flash_attention_3", "kernels-community/vllm-flash-attn3", "kernels-community/flash-attn3"]
)
def test_axolotl_fa3_kernels_are_flash_attention(tmp_path: Path, impl: str) -> None:
    fs = read_config(_write(tmp_path, AX + f"attn_implementation: {impl}\n"))
    assert fs.settings["attn"] == "flash_attention_2"
    assert _listed(fs) == []


def test_axolotl_flex_attention_is_modelled(tmp_path: Path) -> None:
    fs = read_config(_write(tmp_path, AX + "attn_implementation: flex_attention\n"))
    assert fs.settings["attn"] == "flex_attention"
    assert _listed(fs) == []


@pytest.mark.parametrize(("model", "listed"), [("NousResearch/Llama-2-7b-hf", False), ("llama-3-8b", True)])
def test_axolotl_xformers_listed_only_with_grouped_query_attention(tmp_path: Path, model: str, listed: bool) -> None:
    # xformers repeats k/v to every query head in training: a difference only where there are fewer k/v heads
    path = _write(tmp_path, AX.replace("NousResearch/Llama-2-7b-hf", model) + "attn_implementation: xformers\n")
    plan = plan_inputs(None, [path], {}, ())
    assert [u.key for u in plan.not_modeled] == (["attn_implementation"] if listed else [])
    assert plan.settings["attn"] == "flash_attention_2"
    assert any("xformers" in n for n in plan.file_notes) != listed


@pytest.mark.parametrize(("model", "listed"), [("llama-3-8b", False), ("mixtral-8x7b", True)])
def test_axolotl_kernels_plugin_listed_only_on_a_model_with_experts(tmp_path: Path, model: str, listed: bool):
    path = _write(tmp_path, f"base_model: {model}\nadapter: lora\nplugins:\n"
                  "  - axolotl.integrations.kernels.KernelsPlugin\n")  # fmt: skip
    plan = plan_inputs(None, [path], {}, ())
    assert [u.key for u in plan.not_modeled] == (["plugins"] if listed else [])


def test_axolotl_swanlab_is_memory_neutral_and_other_plugins_listed(tmp_path: Path) -> None:
    fs = read_config(_write(tmp_path, AX + "plugins:\n  - axolotl.integrations.swanlab.SwanLabPlugin\n"
                            "  - axolotl.integrations.diffusion.DiffusionPlugin\n"))  # fmt: skip
    assert [u.value for u in fs.not_modeled] == ["axolotl.integrations.diffusion.DiffusionPlugin"]
    assert any("SwanLab" in n for n in fs.notes)


@pytest.mark.parametrize(
    ("extra", "kernels"),
    [
        ("", "qkv,o,mlp"),  # check_auto_enable_lora_kernels: all three when the file sets none
        ("lora_mlp_kernel: true\nlora_qkv_kernel: false\n", "mlp"),  # only what the file turns on
        ("rl: dpo\n", ""),  # RL trainers: not auto-enabled
        ("load_in_8bit: true\n", ""),  # LoRA on an 8-bit base: not auto-enabled
    ],
)
def test_axolotl_lora_kernels(tmp_path: Path, extra: str, kernels: str) -> None:
    path = _write(tmp_path, "base_model: llama-3-8b\nadapter: lora\n" + extra)
    plan = plan_inputs(None, [path], {}, ())
    from vramplan.spec import resolve_train

    t = resolve_train(plan.model, **plan.settings)
    assert ",".join(t.lora_kernels) == kernels
    assert [u.key for u in plan.not_modeled if "kernel" in u.key] == []


def test_axolotl_full_tuning_has_no_lora_kernels(tmp_path: Path) -> None:
    plan = plan_inputs(None, [_write(tmp_path, "base_model: llama-3-8b\n")], {}, ())
    from vramplan.spec import resolve_train

    assert resolve_train(plan.model, **plan.settings).lora_kernels == ()


@pytest.mark.parametrize(
    ("patterns", "nothing"),
    [
        ('["^model.language_model.*", "^lm_head.*"]', True),  # anchored on model. / lm_head: PEFT's names differ
        ('["lm_head", "embed_tokens"]', True),  # re.match anchors at the start too
        ('["base_model.model.lm_head"]', False),
        ('[".*lm_head.*"]', True),  # "." is made literal: ".*" is "any number of dots", not a wildcard
        ('["base_model.model.model.layers.0.+"]', False),  # ".+" stays a wildcard
    ],
)
def test_axolotl_unfrozen_parameters_under_an_adapter(tmp_path: Path, patterns: str, nothing: bool) -> None:
    """utils/freeze.py runs after the adapter is applied: re.match against PEFT's names (checked on a real
    PEFT model's names below)."""
    fs = read_config(_write(tmp_path, AX + f"unfrozen_parameters: {patterns}\n"))
    assert [u.key for u in fs.not_modeled] == ["unfrozen_parameters"]
    assert ("freezes every parameter" in fs.not_modeled[0].note) == nothing


def test_peft_parameter_names_start_with_base_model_model() -> None:
    """The names the rule above assumes, from PEFT 0.21 on a tiny Llama."""
    import re

    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=64)  # fmt: skip
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=2, target_modules="all-linear"))
    names = [name for name, _ in model.named_parameters()]
    assert all(name.startswith("base_model.model.") for name in names)
    # axolotl's rewrite of "^lm_head.*": dots literal; matches none of them
    assert not any(re.match(r"^lm_head\.*", name) for name in names)
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight" in names


# axolotl's example configs (axolotl-ai-cloud/axolotl@067b021 examples/qwen3.5/27b-fft.yaml,
# examples/mistral/mixtral/mixtral_22.yml) as their unfrozen_parameters lists
QWEN35_FFT = ["model.language_model.*", "lm_head.*"]
MIXTRAL_22 = ["^lm_head.weight$", "^model.embed_tokens.weight$", "model.layers.4[4-9]+.block_sparse_moe.gate",
              "model.layers.4[4-9]+.block_sparse_moe.experts"]  # fmt: skip


def _axolotl_trainable(names: list[str], patterns: list[str]) -> set[str]:
    """utils/freeze.py `freeze_layers_except` + `LayerNamePattern` (axolotl 067b021), statement for statement:
    a trailing [start:end] range split off, `re.sub(r"\\.(?!\\+)", "\\\\.", ...)`, `re.match` on each name."""
    import re

    compiled = []
    for pattern in patterns:
        found = re.match(r"^(.+)\[([0-9]*)(?::([0-9]*))?\]$", pattern)
        compiled.append(re.compile(re.sub(r"\.(?!\+)", "\\.", found.group(1) if found else pattern)))
    return {name for name in names if any(c.match(name) for c in compiled)}


def _tiny_names(model_type: str, multimodal: bool) -> list[str]:
    pytest.importorskip("transformers")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    shape = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 256}  # fmt: skip
    if model_type == "qwen3_5":
        text = {**shape, "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 16,
                "linear_value_head_dim": 16}  # fmt: skip
        vision = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64}
        config = AutoConfig.for_model("qwen3_5", text_config=text, vision_config=vision)
    else:
        config = AutoConfig.for_model(model_type, **shape, num_local_experts=4, num_experts_per_tok=2)
    loader = AutoModelForImageTextToText if multimodal else AutoModelForCausalLM
    return [name for name, _ in loader.from_config(config).named_parameters()]


def test_axolotl_unfrozen_parameters_of_a_whole_language_model_is_a_full_fine_tune(tmp_path: Path) -> None:
    """Qwen3.5 is in transformers' image-text-to-text mapping, so axolotl loads it with
    AutoModelForImageTextToText (utils/config `is_multimodal`, loaders/model.py `_set_auto_model_loader`): its
    names are model.language_model.* and model.visual.*, and the example's patterns leave exactly the vision
    tower frozen, which is vramplan's full fine-tune. Loaded as a text model they would select lm_head alone."""
    names = _tiny_names("qwen3_5", multimodal=True)
    assert _axolotl_trainable(names, QWEN35_FFT) == {n for n in names if not n.startswith("model.visual.")}
    assert _axolotl_trainable(_tiny_names("qwen3_5", multimodal=False), QWEN35_FFT) == {"lm_head.weight"}
    fs = read_config(_write(tmp_path, "base_model: Qwen/Qwen3.5-27B\nunfrozen_parameters:\n"
                                      + "".join(f"  - {p}\n" for p in QWEN35_FFT)))  # fmt: skip
    assert fs.not_modeled == ()
    assert any("a full fine-tune (as a text model: lm_head)" in n for n in fs.notes)


def test_axolotl_unfrozen_parameters_of_transformers_4_names_select_the_embeddings_alone(tmp_path: Path) -> None:
    """transformers 5 names Mixtral's experts mlp.experts.* and its router mlp.gate (block_sparse_moe was
    transformers 4's): of the example's patterns only the two embeddings' match. A partly frozen model is
    listed, with the parts said."""
    names = _tiny_names("mixtral", multimodal=False)
    assert _axolotl_trainable(names, MIXTRAL_22) == {"lm_head.weight", "model.embed_tokens.weight"}
    fs = read_config(_write(tmp_path, "base_model: mistral-community/Mixtral-8x22B-v0.1\nunfrozen_parameters:\n"
                                      + "".join(f"  - {p}\n" for p in MIXTRAL_22)))  # fmt: skip
    (entry,) = fs.not_modeled
    assert entry.key == "unfrozen_parameters"
    assert "text model: embed_tokens, lm_head;" in entry.note
    assert "full fine-tune (an upper bound)" in entry.note


@pytest.mark.parametrize("linearized", [False, True])
def test_axolotl_llama4_linearized_experts_quantizes_the_experts(tmp_path: Path, linearized: bool) -> None:
    # axolotl's patch makes every expert an nn.Linear (monkeypatch/models/llama4/modeling.py): bitsandbytes packs
    # them, no fused 3-D expert tensor is left; without it transformers' Llama4TextExperts keeps them fused
    text = "base_model: llama-4-scout-17b-16e\nadapter: qlora\nload_in_4bit: true\n"
    plan = plan_inputs(None, [_write(tmp_path, text + f"llama4_linearized_experts: {str(linearized).lower()}\n")], {})
    spec = plan.model
    routed = 48 * 16 * 3 * 5120 * 8192  # MoE layers · experts · (gate, up, down) · hidden · intermediate (Scout)
    assert spec.fused_expert_params == (0 if linearized else routed)
    assert "linearized_experts" not in plan.settings  # a model layout, not a training setting
    experts = sum(lin.weight_params * lin.count for lin in spec.linears if ".experts." in lin.path)
    assert experts == (routed if linearized else 0)
