"""PEFT methods beyond LoRA: vramplan's trainable-parameter count of each, held to PEFT 0.21's own
`get_nb_trainable_parameters()` on tiny models built by transformers."""

from __future__ import annotations

import warnings

import pytest

from tests.oracle.grid import SMALL_LLAMA

SMALL_QWEN2 = {**SMALL_LLAMA, "model_type": "qwen2", "intermediate_size": 700}  # q/k/v biases, 700 = 4·5²·7
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _peft_config(name: str, rank: int, tokens: int, block: int):
    import peft

    return {
        "adalora": lambda: peft.AdaLoraConfig(init_r=rank, target_modules=ALL, total_step=10, task_type="CAUSAL_LM"),
        "ia3": lambda: peft.IA3Config(task_type="CAUSAL_LM"),
        "loha": lambda: peft.LoHaConfig(r=rank, target_modules=ALL),
        "lokr": lambda: peft.LoKrConfig(r=rank, target_modules=ALL),
        "vera": lambda: peft.VeraConfig(r=rank, target_modules=["q_proj", "v_proj"]),
        "oft": lambda: peft.OFTConfig(oft_block_size=block, r=0, target_modules=ALL),
        "boft": lambda: peft.BOFTConfig(boft_block_size=block, target_modules=["q_proj", "v_proj"]),
        "prompt_tuning": lambda: peft.PromptTuningConfig(num_virtual_tokens=tokens, task_type="CAUSAL_LM"),
        "p_tuning": lambda: peft.PromptEncoderConfig(num_virtual_tokens=tokens, task_type="CAUSAL_LM"),
        "prefix_tuning": lambda: peft.PrefixTuningConfig(num_virtual_tokens=tokens, task_type="CAUSAL_LM"),
    }[name]()


CASES = [
    ("adalora", 12, 0, 0), ("ia3", 8, 0, 0), ("loha", 8, 0, 0), ("lokr", 8, 0, 0), ("lokr", 2, 0, 0),
    ("vera", 16, 0, 0), ("oft", 8, 0, 32), ("oft", 8, 0, 24), ("boft", 8, 0, 4), ("prompt_tuning", 8, 20, 0),
    ("p_tuning", 8, 7, 0), ("prefix_tuning", 8, 20, 0),
]  # fmt: skip


@pytest.mark.parametrize("config", [SMALL_LLAMA, SMALL_QWEN2], ids=["llama", "qwen2"])
@pytest.mark.parametrize(("name", "rank", "tokens", "block"), CASES)
def test_trainable_parameters_match_peft(config, name, rank, tokens, block):
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from vramplan.estimator.params import count_params
    from vramplan.spec import model_spec_from_config, resolve_train

    m = model_spec_from_config(config, "tiny")
    targets = {"vera": "q_proj,v_proj", "boft": "q_proj,v_proj"}.get(name, "all-linear")
    t = resolve_train(m, method="lora", peft=name, lora_rank=rank, num_virtual_tokens=tokens or None,
                      block_size=block or None, lora_target=targets)  # fmt: skip
    hf = {k: v for k, v in config.items() if k != "model_type"}
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(config["model_type"], **hf))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = get_peft_model(model, _peft_config(name, rank, tokens, block)).get_nb_trainable_parameters()[0]
    assert count_params(m, t).trainable == expected


@pytest.mark.parametrize("name", ["rslora", "loraplus", "pissa", "olora", "loftq"])
def test_memory_free_variants_are_lora(name):
    from vramplan.api import estimate

    lora = estimate("llama-3-8b", method="lora")
    variant = estimate("llama-3-8b", method="lora", peft=name)
    assert variant.peak_bytes == lora.peak_bytes
    assert any("LoRA in memory" in note for note in variant.train.notes)


def test_prompt_tuning_lengthens_every_sequence():
    from vramplan.api import estimate

    at = {n: estimate("llama-3-8b", method="lora", peft="prompt_tuning", num_virtual_tokens=n).peak_bytes
          for n in (16, 256)}  # fmt: skip
    assert at[256] > at[16]


@pytest.mark.parametrize("name", ["ia3", "loha", "lokr", "vera", "oft", "boft", "adalora", "prompt_tuning",
                                  "p_tuning", "prefix_tuning"])  # fmt: skip
def test_step_against_peft_trace(name):
    """The traced step of each method on the grid's tiny Llama: what is modelled exactly (parameters, their
    gradients and AdamW states, BOFT's / VeRA's frozen buffers: the optimizer phase) within 0.1 %; the
    forward and backward peaks within the method's documented band (spec/peft_method.py PEFT_ERROR_BAND),
    which the verdict adds to its tight margin."""
    from tests.oracle.grid import BASE
    from vramplan.estimator.build import build_breakdown
    from vramplan.measure.peft_trace import trace_peft
    from vramplan.spec import model_spec_from_config, resolve_train

    m = model_spec_from_config(SMALL_LLAMA, "small-llama")
    t = resolve_train(m, **{**BASE, "peft": name})
    estimated = {p.phase: p.total for p in build_breakdown(m, t, None).phases}
    traced = {p.phase: p.total for p in trace_peft(m, t)}
    assert abs(estimated["optimizer"] - traced["optimizer"]) <= 0.001 * traced["optimizer"]
    for phase in ("forward", "backward"):
        assert abs(estimated[phase] - traced[phase]) <= t.peft.error_band * traced[phase], phase


@pytest.mark.parametrize(
    ("name", "extra"),
    [("lora", {}), ("rslora", {"use_rslora": True}), ("pissa", {"init_lora_weights": "pissa"}),
     ("olora", {"init_lora_weights": "olora"}), ("loraplus", {}), ("lora_fa", {})],
)  # fmt: skip
def test_lora_family_counts_match_peft(name, extra):
    """LoRA and its variants on the tiny Llama: PEFT's own count of trainable parameters (LoRA+ is LoRA with
    peft.optimizers `create_loraplus_optimizer`'s learning rates); LoRA-FA's after `create_lorafa_optimizer`
    froze every lora_A (`requires_grad_(False)`)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from vramplan.estimator.params import count_params
    from vramplan.spec import model_spec_from_config, resolve_train

    m = model_spec_from_config(SMALL_LLAMA, "tiny")
    t = resolve_train(m, method="lora", peft=name, lora_rank=8, lora_target="all-linear")
    hf = {k: v for k, v in SMALL_LLAMA.items() if k != "model_type"}
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **hf))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=ALL, **extra))
        if name == "lora_fa":
            from peft.optimizers import create_lorafa_optimizer

            create_lorafa_optimizer(peft_model, r=8, lora_alpha=16, lr=1e-4)
    expected = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert count_params(m, t).trainable == expected


@pytest.mark.parametrize(("flag", "value"), [("method", "adapter"), ("method", "houlsby"), ("peft", "bottleneck"),
                                             ("peft", "Pfeiffer")])  # fmt: skip
def test_bottleneck_adapters_are_one_error_line_naming_what_to_use(flag, value):
    from click.testing import CliRunner

    from vramplan.cli import main

    args = ["estimate", "llama-3-8b", f"--{flag}", value] + (["--method", "lora"] if flag == "peft" else [])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error:")
    assert value in lines[0]
    assert "--method lora" in lines[0]


def test_peft_has_no_bottleneck_adapter():
    """The error's claim, held to PEFT itself: no PeftType is a Houlsby / Pfeiffer / bottleneck adapter."""
    from peft import PeftType

    names = {t.value.lower() for t in PeftType}
    assert not {n for n in names if any(word in n for word in ("houlsby", "pfeiffer", "bottleneck"))}
    assert "lora" in names  # the enum read is PEFT's
