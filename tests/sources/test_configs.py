"""`--from`: LLaMA-Factory / axolotl YAML, TrainingArguments JSON, adapter_config.json, config.json -> inputs.

The files under tests/data are the public examples (tests/data/README.md). Expected values are what the tool
itself would run: LLaMA-Factory's defaults (finetuning_args.py, checkpointing.py), axolotl's schema defaults,
the values transformers / PEFT wrote. No test touches the network: HF_HUB_OFFLINE=1 and an empty HF_HOME.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from vramplan.cli import main
from vramplan.sources.configs.formats import read_config
from vramplan.sources.profiles import builtin_for_repo, builtin_model_names, find_model_config, repo_key

DATA = Path(__file__).parent.parent / "data"
LF = DATA / "llamafactory"
QLORA_YAML = str(LF / "llama3_lora_sft_otfq.yaml")
AXOLOTL = str(DATA / "axolotl" / "qlora.yml")
TRAINING_ARGS = str(DATA / "transformers" / "training_args.json")
ADAPTER = str(DATA / "peft" / "adapter_config.json")
MY_MODEL = str(DATA / "my-model")
LLAMA3_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(autouse=True)
def _offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)


def run(*args: str):
    return CliRunner().invoke(main, ["estimate", *args])


def inputs(*args: str) -> dict[str, Any]:
    r = run(*args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)["inputs"]


def pick(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: d[k] for k in keys}


def file(path: str) -> str:
    return f"file:{path}"


# ---------------------------------------------------------------- LLaMA-Factory


def test_llamafactory_qlora_example():
    i = inputs("--from", QLORA_YAML, "--gpu", "3060ti")
    assert pick(i, "model", "method", "quant", "double_quant", "kbit_prep", "dtype", "mixed_precision") == {
        "model": "meta-llama/Meta-Llama-3-8B-Instruct",
        "method": "qlora",  # finetuning_type lora + quantization_bit 4
        "quant": "nf4",  # quantization_type default
        "double_quant": True,  # double_quantization default
        "kbit_prep": False,  # LLaMA-Factory never calls prepare_model_for_kbit_training
        "dtype": "bf16",  # compute_dtype from bf16: true
        "mixed_precision": "bf16",
    }
    assert pick(i, "batch", "seq", "grad_accum", "lora_rank", "lora_alpha", "lora_dropout", "grad_ckpt") == {
        "batch": 1, "seq": 2048, "grad_accum": 8, "lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.0,
        "grad_ckpt": True,
    }  # fmt: skip
    assert i["lora_target"] == LLAMA3_LINEARS
    assert i["lora_target_preset"] == "all-linear"
    assert (i["optim"], i["attn"], i["gpu"]) == ("adamw_torch_fused", "sdpa", "rtx-3060-ti")
    src = i["sources"]
    for key in ("model", "method", "quant", "dtype", "mixed_precision", "batch", "seq", "grad_accum"):
        assert src[key] == file(QLORA_YAML), key
    for key in ("lora_rank", "lora_dropout", "grad_ckpt", "kbit_prep"):
        assert src[key] == "default:llamafactory", key
    for key in ("double_quant", "lora_alpha", "optim", "attn", "dora"):
        assert src[key] == "default", key
    assert i["not_modeled"] == []
    assert i["model_config"] == "builtin:llama-3-8b"


def test_llamafactory_double_quantization_false():
    i = inputs("--from", str(LF / "llama3_lora_sft_bnb_npu.yaml"))
    assert (i["method"], i["quant"], i["double_quant"], i["lora_rank"]) == ("qlora", "nf4", False, 8)
    assert i["sources"]["lora_rank"] == file(str(LF / "llama3_lora_sft_bnb_npu.yaml"))


def test_llamafactory_lora_example():
    i = inputs("--from", str(LF / "llama3_lora_sft.yaml"))
    keys = ("method", "quant", "dtype", "mixed_precision", "lora_rank", "grad_ckpt", "seq", "grad_accum")
    assert pick(i, *keys) == {
        "method": "lora", "quant": "none", "dtype": "bf16", "mixed_precision": "bf16", "lora_rank": 8,
        "grad_ckpt": True, "seq": 2048, "grad_accum": 8,
    }  # fmt: skip


def test_llamafactory_full_example_upcasts_and_plans_deepspeed():
    path = str(LF / "llama3_full_sft.yaml")
    r = run("--from", path, "--json")
    assert r.exit_code == 0, r.output
    i = json.loads(r.stdout)["inputs"]
    # cast_trainable_params_to_fp32: fp32 master weights under bf16 autocast
    assert pick(i, "method", "dtype", "mixed_precision", "grad_accum") == {
        "method": "full", "dtype": "fp32", "mixed_precision": "bf16", "grad_accum": 2,
    }  # fmt: skip
    # the DeepSpeed file is planned (LLaMA-Factory's shipped ds_z3_config.json stands in for the missing file)
    assert i["not_modeled"] == []
    assert json.loads(r.stdout)["parallel"]["strategy"] == "zero3"
    assert "read as the file the framework ships" in r.stderr


def test_llamafactory_freeze_example():
    i = inputs("--from", str(LF / "llama3_freeze_sft.yaml"))
    assert pick(i, "method", "freeze_trainable_layers", "dtype", "quant") == {
        "method": "freeze", "freeze_trainable_layers": 8, "dtype": "bf16", "quant": "none",
    }  # fmt: skip
    assert i["not_modeled"] == ["finetuning_type=freeze (fp32 upcast of trainable layers)"]


@pytest.mark.parametrize(
    ("yaml_text", "expected", "not_modeled"),
    [
        ("pure_bf16: true\nfinetuning_type: full", {"dtype": "bf16", "mixed_precision": "no"}, []),
        ("fp16: true", {"dtype": "fp16", "mixed_precision": "fp16", "method": "lora"}, []),
        ("finetuning_type: lora", {"mixed_precision": "no", "batch": 8}, []),  # HF defaults: no AMP, batch 8
        ("flash_attn: fa2\ndisable_gradient_checkpointing: true",
         {"attn": "flash_attention_2", "grad_ckpt": False}, []),
        ("flash_attn: disabled", {"attn": "eager"}, []),
        ("flash_attn: fa3", {"attn": "flash_attention_2"},
         ["flash_attn=fa3 (estimated as flash_attention_2)"]),
        ("quantization_bit: 8", {"method": "qlora", "quant": "int8"}, []),
        ("quantization_bit: 4\nquantization_method: hqq", {"quant": "nf4"},
         ["quantization_method=hqq (estimated as bitsandbytes nf4)"]),
        ("lora_target: q_proj, v_proj\nlora_rank: 64\nlora_alpha: 128\nuse_dora: true",
         {"lora_target": ["q_proj", "v_proj"], "lora_rank": 64, "lora_alpha": 128, "dora": True}, []),
        ("optim: paged_adamw_8bit\ncutoff_len: 4096", {"optim": "paged_adamw_8bit", "seq": 4096}, []),
        ("optim: ademamix", {"optim": "adamw_torch_fused"},
         ["optim=ademamix (optimizer not modeled; estimated with --optim)"]),
        ("packing: true\nneftune_noise_alpha: 5\nstage: dpo", {"packing": True, "stage": "dpo"},
         ["neftune_noise_alpha=5"]),
        ("enable_liger_kernel: true", {"loss": "liger", "liger_kernels": True}, []),
        ("stage: dpo\npref_loss: simpo\npref_beta: 2.5", {"stage": "simpo", "pref_beta": 2.5, "fused_lm_head": False},
         []),
    ],
)  # fmt: skip
def test_llamafactory_keys(tmp_path: Path, yaml_text: str, expected: dict[str, Any], not_modeled: list[str]):
    path = tmp_path / "train.yaml"
    path.write_text(f"model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct\n{yaml_text}\n")
    i = inputs("--from", str(path))
    assert pick(i, *expected) == expected
    assert i["not_modeled"] == not_modeled


# ---------------------------------------------------------------- axolotl


def test_axolotl_qlora_example():
    i = inputs("--from", AXOLOTL, "--gpu", "4090")
    assert pick(i, "model", "method", "quant", "double_quant", "kbit_prep", "dtype", "mixed_precision") == {
        "model": "NousResearch/Meta-Llama-3-8B",
        "method": "qlora",  # adapter: qlora + load_in_4bit
        "quant": "nf4",  # loaders/model.py BitsAndBytesConfig: nf4 + double quant
        "double_quant": True,
        "kbit_prep": True,  # axolotl calls prepare_model_for_kbit_training
        "dtype": "bf16",  # bf16: auto on a bf16 GPU
        "mixed_precision": "bf16",
    }
    assert pick(i, "batch", "seq", "grad_accum", "lora_rank", "lora_alpha", "lora_dropout", "grad_ckpt") == {
        "batch": 2, "seq": 4096, "grad_accum": 4, "lora_rank": 32, "lora_alpha": 16, "lora_dropout": 0.05,
        "grad_ckpt": True,
    }  # fmt: skip
    assert pick(i, "optim", "attn", "lora_target_preset") == {
        "optim": "paged_adamw_32bit", "attn": "flash_attention_2", "lora_target_preset": "all-linear",
    }  # fmt: skip
    assert i["model_config"] == "builtin:llama-3-8b"  # a mirror of meta-llama/Meta-Llama-3-8B
    assert i["not_modeled"] == []  # sample_packing is modelled: every token of the micro-batch is real
    assert (i["packing"], i["recipe"].split()[0]) == (True, "axolotl")
    src = i["sources"]
    assert {src[k] for k in ("model", "method", "quant", "batch", "seq", "optim", "attn", "lora_rank")} == {
        file(AXOLOTL)
    }
    assert (src["double_quant"], src["dtype"], src["kbit_prep"]) == ("default",) * 3  # = axolotl's behaviour


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("adapter: lora\nload_in_8bit: true\nlora_r: 8",
         {"method": "qlora", "quant": "int8", "lora_rank": 8}),
        ("adapter: lora\nflash_attention: true\nlora_target_modules:\n  - q_proj\n  - v_proj",
         {"method": "lora", "quant": "none", "attn": "flash_attention_2",
          "lora_target": ["q_proj", "v_proj"]}),
        ("sdp_attention: true\nbf16: false", {"method": "full", "attn": "sdpa", "dtype": "fp32",
                                              "mixed_precision": "no"}),
        ("bf16: true\nsequence_len: 2048",
         {"method": "full", "dtype": "bf16", "mixed_precision": "bf16", "seq": 2048, "batch": 1,
          "grad_ckpt": False, "lora_dropout": 0.0}),
        ("adapter: qlora\nbnb_config_kwargs:\n  bnb_4bit_quant_type: fp4\n  bnb_4bit_use_double_quant: false",
         {"method": "qlora", "quant": "fp4", "double_quant": False}),
    ],
)  # fmt: skip
def test_axolotl_keys(tmp_path: Path, yaml_text: str, expected: dict[str, Any]):
    path = tmp_path / "axolotl.yml"
    path.write_text(f"base_model: meta-llama/Meta-Llama-3-8B\n{yaml_text}\n")
    assert pick(inputs("--from", str(path)), *expected) == expected


# ---------------------------------------------------------------- TrainingArguments + adapter + config.json


def test_training_args_adapter_and_quantized_model():
    i = inputs("--from", TRAINING_ARGS, "--from", ADAPTER, "--model", MY_MODEL, "--gpu", "a100-40")
    assert pick(i, "model", "method", "quant", "double_quant", "mixed_precision", "batch", "grad_accum") == {
        "model": MY_MODEL,
        "method": "qlora",  # a LoRA adapter on a bnb 4-bit checkpoint
        "quant": "nf4",
        "double_quant": True,
        "mixed_precision": "bf16",
        "batch": 4,
        "grad_accum": 4,
    }
    assert pick(i, "optim", "grad_ckpt", "lora_rank", "lora_alpha", "lora_dropout", "dora") == {
        "optim": "paged_adamw_8bit", "grad_ckpt": True, "lora_rank": 16, "lora_alpha": 32,
        "lora_dropout": 0.05, "dora": False,
    }  # fmt: skip
    assert i["lora_target_preset"] == "all-linear"  # PEFT's saved list of every Linear
    config = str(Path(MY_MODEL) / "config.json")
    assert i["sources"] == {
        "model": "flag",
        "method": file(config), "quant": file(config), "double_quant": file(config),
        "mixed_precision": file(TRAINING_ARGS), "batch": file(TRAINING_ARGS),
        "grad_accum": file(TRAINING_ARGS), "optim": file(TRAINING_ARGS), "grad_ckpt": file(TRAINING_ARGS),
        "lora_rank": file(ADAPTER), "lora_alpha": file(ADAPTER), "lora_dropout": file(ADAPTER),
        "lora_target": file(ADAPTER), "dora": file(ADAPTER),
        "dtype": "default", "kbit_prep": "default", "seq": "default", "attn": "default",
        "freeze_trainable_layers": "default", "alloc_conf": "default", "packing": "default", "liger_kernels": "default",
        "recipe": file(TRAINING_ARGS), "loss": "recipe:trainer",  # a TrainingArguments dump: the Trainer's recipe
        "image_tokens": "default", "modules_to_save": "default", "target_parameters": "default",
        "optim_rank": "default", "activation_offload": "default", "stack": "default", "lora_kernels": "default",
    }  # fmt: skip
    assert i["model_config"] == config
    assert i["not_modeled"] == []


def test_adapter_names_the_model():
    i = inputs("--from", ADAPTER)
    assert i["model"] == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert (i["model_config"], i["method"]) == ("builtin:llama-3-8b", "lora")
    assert i["sources"]["model"] == file(ADAPTER)


def test_model_config_as_from_file():
    config = str(Path(MY_MODEL) / "config.json")
    i = inputs("--from", config)
    assert (i["model"], i["quant"], i["double_quant"], i["method"]) == (config, "nf4", True, "qlora")
    assert i["sources"]["model"] == file(config)


def test_model_config_quantization_beats_the_file_but_not_a_flag():
    i = inputs("--from", str(LF / "llama3_lora_sft.yaml"), "--model", MY_MODEL)
    assert (i["method"], i["quant"]) == ("qlora", "nf4")  # LoRA on a 4-bit checkpoint
    i = inputs("--from", str(LF / "llama3_lora_sft.yaml"), "--model", MY_MODEL, "--quant", "int8")
    assert (i["method"], i["quant"], i["sources"]["quant"]) == ("qlora", "int8", "flag")


def test_gptq_checkpoint_is_trained_as_gptq(tmp_path: Path):
    """A config.json with a GPTQ quantization_config: LoRA on the GPTQ weights (spec/prequantized_base.py), not an
    nf4 stand-in; a format vramplan does not count (hqq) is listed as estimated unquantized."""
    cfg = json.loads((Path(MY_MODEL) / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    i = inputs(str(tmp_path), "--method", "lora")
    assert (i["method"], i["quant"], i["checkpoint"]) == ("lora", "none", "gptq int4 g128")
    assert i["not_modeled"] == []
    cfg["quantization_config"] = {"quant_method": "hqq", "nbits": 4}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    i = inputs(str(tmp_path), "--method", "lora")
    assert (i["quant"], i["checkpoint"]) == ("none", None)
    assert i["not_modeled"] == ["quantization_config.quant_method=hqq (estimated unquantized)"]


# ---------------------------------------------------------------- flags override files


def test_typed_flags_override_file_values():
    # --method qlora equals both the file's method and vramplan's default: typed, it is still a flag
    flags = ("--batch", "4", "--lora-rank", "64", "--no-grad-ckpt", "--method", "qlora")
    i = inputs("--from", QLORA_YAML, *flags)
    assert pick(i, "batch", "lora_rank", "lora_alpha", "grad_ckpt", "method", "seq") == {
        "batch": 4, "lora_rank": 64, "lora_alpha": 128, "grad_ckpt": False, "method": "qlora", "seq": 2048,
    }  # fmt: skip
    src = i["sources"]
    assert (src["batch"], src["lora_rank"], src["grad_ckpt"], src["method"]) == ("flag",) * 4
    assert src["seq"] == file(QLORA_YAML)


def test_later_file_wins_and_flag_silences_its_not_modeled(tmp_path: Path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("model_name_or_path: llama-2-7b\ncutoff_len: 512\noptim: ademamix\n")
    b.write_text("model_name_or_path: llama-2-7b\ncutoff_len: 4096\n")
    i = inputs("--from", str(a), "--from", str(b))
    assert (i["seq"], i["sources"]["seq"]) == (4096, file(str(b)))
    assert i["not_modeled"] == ["optim=ademamix (optimizer not modeled; estimated with --optim)"]
    i = inputs("--from", str(a), "--optim", "adamw_8bit")
    assert (i["optim"], i["not_modeled"]) == ("adamw_8bit", [])


def test_without_from_nothing_changes():
    i = inputs("llama-2-7b", "--method", "lora", "--seq", "2048")
    assert i["not_modeled"] == []
    assert i["model_config"] == "builtin:llama-2-7b"
    assert (i["sources"]["method"], i["sources"]["seq"], i["sources"]["batch"], i["sources"]["model"]) == (
        "flag", "flag", "default", "flag",
    )  # fmt: skip
    assert (i["lora_rank"], i["lora_dropout"], i["grad_ckpt"]) == (16, 0.05, False)  # vramplan's defaults


# ---------------------------------------------------------------- models by hub id


@pytest.mark.parametrize(
    ("repo", "profile"),
    [
        ("meta-llama/Meta-Llama-3-8B-Instruct", "llama-3-8b"),
        ("NousResearch/Meta-Llama-3-8B", "llama-3-8b"),
        ("meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b"),
        ("meta-llama/Llama-2-7b-chat-hf", "llama-2-7b"),
        ("google/gemma-2-9b-it", "gemma-2-9b"),
        ("Qwen/Qwen2.5-7B-Instruct", "qwen2.5-7b"),
        ("mistralai/Mistral-7B-Instruct-v0.1", "mistral-7b"),
        ("mistralai/Mistral-7B-Instruct-v0.2", "mistral-7b-v0.2"),  # not v0.1: 32k context, no sliding window
        ("mistralai/Mistral-7B-Instruct-v0.3", "mistral-7b-v0.3"),
        ("Qwen/Qwen3-4B-Instruct-2507", "qwen3-4b-instruct-2507"),  # 262k context, rope_theta 5e6: not qwen3-4b
        ("Qwen/Qwen3-4B-Thinking-2507", "qwen3-4b-instruct-2507"),  # the profile's alias
        ("Qwen/Qwen3-4B-Base", "qwen3-4b"),
        ("unsloth/Qwen3-4B", "qwen3-4b"),  # a mirror under another owner
        ("Qwen/Qwen2-1.5B", "qwen2-1.5b"),  # the base model of the Instruct profile
        ("codellama/CodeLlama-13b-Instruct-hf", "codellama-13b"),
        ("HuggingFaceTB/SmolLM2-360M-Instruct", "smollm2-360m"),
        ("google/gemma-3-12b-pt", None),  # `pt` is not a variant word
        ("Qwen3_4B", "qwen3-4b"),  # case and separators
        ("casperhansen/llama-3-70b-fp16", "llama-3-70b"),  # a dtype suffix
        ("unsloth/llama-3-8b-bnb-4bit", "llama-3-8b"),  # pre-quantized: resolved with a note
        ("TheBloke/Llama-2-7B-GPTQ", "llama-2-7b"),
        ("TechxGenus/Meta-Llama-3-8B-Instruct-AWQ", "llama-3-8b"),
        ("ISTA-DASLab/Meta-Llama-3-8B-Instruct-AQLM-2Bit-1x16", "llama-3-8b"),
        ("unsloth/Qwen3-8B-unsloth-bnb-4bit", "qwen3-8b"),
        ("mistral-community/Mixtral-8x22B-v0.1", "mixtral-8x22b"),  # the real-config examples' mirror
        ("mistralai/Mistral-Nemo-Instruct-2407", "mistral-nemo"),  # the profile is the Base-2407 checkpoint
        ("HuggingFaceTB/SmolLM3-3B-Base", "smollm3-3b"),
        ("Qwen/Qwen3.5-35B-A3B-Base", "qwen3.5-35b-a3b"),
        ("axolotl-ai-co/gpt-oss-120b-dequantized", "gpt-oss-120b"),  # a dtype word
        ("hugging-quants/Meta-Llama-3.1-405B-BNB-NF4-BF16", "llama-3.1-405b"),  # pre-quantized
        ("axolotl-quants/Llama-4-Scout-17B-16E-Linearized-bnb-nf4-bf16", "llama-4-scout-17b-16e"),  # an alias
        ("meta-llama/Llama-4-Scout-17B-16E", "llama-4-scout-17b-16e"),  # the base of the Instruct profile
        ("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", "nemotron-3-nano-30b-a3b"),
        ("deepseek-ai/DeepSeek-V3-0324", "deepseek-v3"),  # its card: "model structure ... exactly the same as DeepSeek-V3"
        ("Qwen/Qwen3-235B-A22B-Instruct-2507", "qwen3-235b-a22b-instruct-2507"),  # 262k context: not qwen3-235b-a22b
        ("someone/llama-3-8b-sft", None),  # a fine-tune's name is not a variant of the base
        # the real example configs' checkpoints: aliases, the base of an Instruct/Chat profile, pre-quantized copies
        ("TinyLlama/TinyLlama_v1.1", "tinyllama-1.1b"),
        ("openai/gpt-oss-safeguard-20b", "gpt-oss-20b"),
        ("neuralmagic/Sparse-Llama-3.1-8B-2of4", "llama-3.1-8b"),
        ("stabilityai/stablelm-2-1_6b", "stablelm-2-zephyr-1.6b"),
        ("axolotl-ai-co/Mistral-Small-4-119B-2603-BF16", "mistral-small-4-119b-2603"),
        ("nvidia/Qwen3-Next-80B-A3B-Instruct-NVFP4", "qwen3-next-80b-a3b"),
        ("nvidia/DeepSeek-V4-Flash-NVFP4", "deepseek-v4-flash"),
        ("Mapika/GLM-5.2-NVFP4", "glm-5.2"),
        ("01-ai/Yi-34B-Chat", "yi-34b"),
        ("EleutherAI/pythia-12b-deduped", "pythia-12b"),
        ("EleutherAI/pythia-1.4b-deduped", "pythia-1.4b"),  # not pythia-12b: its own size
        ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2.5-vl-7b"),  # the VLM, not qwen2.5-7b
        ("Qwen/Qwen3.5-9B", "qwen3.5-9b"),
        ("mistralai/Magistral-Small-2509", "magistral-small-2509"),  # the 2509 model is a VLM: not 2506's text-only config
        ("microsoft/phi-1_5", "phi-1.5"),  # `_` as `-`: the real example configs' base_model
    ],
)
def test_builtin_for_repo(repo: str, profile: str | None):
    assert builtin_for_repo(repo) == profile


@pytest.mark.parametrize(
    ("repo", "words"),
    [
        ("TheBloke/Llama-2-7B-GPTQ", "GPTQ"),
        ("ISTA-DASLab/Meta-Llama-3-8B-Instruct-AQLM-2Bit-1x16", "AQLM-2Bit-1x16"),
        ("unsloth/Qwen3-8B-unsloth-bnb-4bit", "unsloth-bnb-4bit"),
        ("hugging-quants/Meta-Llama-3.1-405B-BNB-NF4-BF16", "BNB-NF4-BF16"),
        ("casperhansen/llama-3-70b-fp16", ""),
        ("meta-llama/Meta-Llama-3-8B-Instruct", ""),
    ],
)
def test_repo_key_names_the_quantization(repo: str, words: str):
    assert repo_key(repo).prequantized == words


def test_every_profile_resolves_from_its_own_repo_and_aliases():
    """No two profiles share a repo key: each `vramplan_profile.repo` / alias comes back to its own profile."""
    for name in builtin_model_names():
        meta = find_model_config(name).config["vramplan_profile"]
        assert {"display_name", "repo", "revision", "source"} <= set(meta), name
        assert f"huggingface.co/{meta['repo']}/blob/main/config.json" in meta["source"], name  # the file copied
        if meta["revision"] != "main":
            assert meta["source"].startswith("Reconstructed ("), name  # and says from what
        else:  # a verbatim copy names the public file it was taken from: repository, path, commit
            assert re.match(r"[\w.-]+/[\w.-]+ \S+ @ [0-9a-f]{12}\b", meta["copied_from"]), name
        for repo in (meta["repo"], *meta.get("aliases", ())):
            assert builtin_for_repo(repo) == name, repo


def test_prequantized_mirror_is_estimated_in_the_format_its_name_says():
    """Offline, `TheBloke/Llama-2-7B-GPTQ` resolves to llama-2-7b: trained as GPTQ (said, with the format assumed);
    `--quant nf4` replaces it; a `-BNB-NF4` name is QLoRA nf4 with no note; GGUF (not counted) is noted."""
    r = run("TheBloke/Llama-2-7B-GPTQ", "--method", "qlora", "--json")
    i = json.loads(r.stdout)["inputs"]
    assert i["model_config"] == "builtin:llama-2-7b"
    assert (i["method"], i["quant"], i["checkpoint"]) == ("lora", "none", "gptq int4 g128")
    assert "gptq int4 g128 (assumed from the model name" in r.stderr
    assert not any(u.startswith("model=") for u in i["not_modeled"])
    i = inputs("TheBloke/Llama-2-7B-GPTQ", "--quant", "nf4")
    assert (i["quant"], i["checkpoint"]) == ("nf4", None)
    r = run("hugging-quants/Meta-Llama-3.1-8B-Instruct-BNB-NF4-BF16", "--method", "lora", "--json")
    i = json.loads(r.stdout)["inputs"]
    assert (i["method"], i["quant"], i["checkpoint"]) == ("qlora", "nf4", None)
    assert "assumed" not in r.stderr
    i = inputs("TheBloke/Llama-2-7B-GGUF")
    assert any(u.startswith("model=TheBloke/Llama-2-7B-GGUF (GGUF)") for u in i["not_modeled"])
    assert not any(u.startswith("model=") for u in inputs("meta-llama/Llama-2-7b-chat-hf")["not_modeled"])


def test_generic_builtin_type_is_estimated_and_says_so():
    """gpt_j is not hand-modelled: estimated on the generic path (spec/generic.py), flagged as approximated;
    gpt_oss (hand-modelled) is not."""
    r = run("gpt-j-6b", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["inputs"]["approximation"]["kind"] == "generic"
    r = run("gpt-oss-20b", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["inputs"].get("approximation") is None


def test_unknown_type_is_one_line(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no_such_model", "hidden_size": 8}))
    r = run(str(tmp_path))
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [r.output.strip()]
    assert "unknown model_type 'no_such_model'" in r.output


def test_hf_cache_beats_builtin(tmp_path: Path):
    snap = tmp_path / "hf" / "hub" / "models--meta-llama--Meta-Llama-3-8B-Instruct" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text((Path(MY_MODEL) / "config.json").read_text())
    found = find_model_config("meta-llama/Meta-Llama-3-8B-Instruct")
    assert found.origin == f"hf-cache:{snap / 'config.json'}"
    i = inputs("--from", QLORA_YAML, "--no-double-quant")
    assert i["model_config"] == found.origin
    assert i["sources"]["quant"] == file(str(snap / "config.json"))
    assert (i["double_quant"], i["sources"]["double_quant"]) == (False, "flag")


def test_unknown_hub_id_offline_is_one_line(tmp_path: Path):
    path = tmp_path / "train.yaml"
    path.write_text("model_name_or_path: someone/my-private-model\nfinetuning_type: lora\n")
    r = run("--from", str(path))
    assert r.exit_code == 2
    assert "Traceback" not in r.output
    assert r.output.strip().splitlines() == [
        "error: 'someone/my-private-model' is not a built-in model and its config.json is not in the local "
        "Hugging Face cache (HF_HUB_OFFLINE is set); run `hf download someone/my-private-model config.json` or "
        "pass a path to config.json"
    ]  # huggingface_hub >= 1.0 ships `hf` only (no `huggingface-cli`)


def test_unreachable_hub_fails_fast_with_the_installed_command(monkeypatch):
    """A hub that never answers: one line after HUB_TIMEOUT_SECONDS, naming `hf download` (hub 2.x's CLI)."""
    import threading
    import time

    import huggingface_hub

    from vramplan.errors import VramplanError
    from vramplan.sources import profiles

    release = threading.Event()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: release.wait(60))
    monkeypatch.setattr(profiles, "HUB_TIMEOUT_SECONDS", 0.2)
    start = time.monotonic()
    with pytest.raises(VramplanError, match=r"no answer in 0 s.*`hf download someone/x config.json`"):
        profiles.find_model_config("someone/x")
    release.set()
    assert time.monotonic() - start < 5


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("name", "text", "needles"),
    [
        ("bad.yaml", "model_name_or_path: llama-2-7b\nlora_target: [q_proj\ncutoff_len: 1024\n",
         ["bad.yaml: not valid YAML (line 3"]),
        ("bad.yml", "base_model: x\n  adapter: lora\n", ["bad.yml: not valid YAML (line 2"]),
        ("bad.json", '{"per_device_train_batch_size": 4,\n "bf16": tru}',
         ["bad.json: not valid JSON (line 2"]),
        ("list.yaml", "- a\n- b\n", ["list.yaml: expected a mapping"]),
        ("other.yaml", "learning_rate: 1.0e-4\n", ["other.yaml: not a config vramplan reads"]),
        ("type.yaml", "model_name_or_path: llama-2-7b\nlora_rank: eight\n",
         ["type.yaml: lora_rank must be an integer, got 'eight'"]),
        ("ft.yaml", "model_name_or_path: llama-2-7b\nfinetuning_type: qlora\n",
         ["unknown finetuning_type 'qlora'", "ft.yaml"]),
        ("nomodel.json", '{"per_device_train_batch_size": 4}', ["no model: pass MODEL or --model"]),
    ],
)  # fmt: skip
def test_bad_files_one_line_exit_2(tmp_path: Path, name: str, text: str, needles: list[str]):
    path = tmp_path / name
    path.write_text(text)
    r = run("--from", str(path))
    assert r.exit_code == 2
    assert "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    for needle in needles:
        assert needle in r.output


def test_missing_file_and_conflicting_models():
    r = run("--from", "no/such/train.yaml")
    assert r.exit_code == 2
    assert r.output.strip() == "error: no such file: no/such/train.yaml"
    r = run("llama-2-7b", "--model", "mistral-7b")
    assert r.exit_code == 2
    assert "two models" in r.output


def test_no_model_at_all():
    r = run()
    assert r.exit_code == 2
    assert "no model: pass MODEL or --model" in r.output


def test_reader_returns_frozen_settings():
    fs = read_config(AXOLOTL)
    assert fs.format == "axolotl"
    assert fs.model == "NousResearch/Meta-Llama-3-8B"
    assert fs.settings["lora_target"] == "all-linear"
    assert fs.sources["lora_target"] == file(AXOLOTL)
    assert fs.sources["lora_dropout"] == file(AXOLOTL)
    with pytest.raises(AttributeError):
        fs.model = "x"  # type: ignore[misc]
