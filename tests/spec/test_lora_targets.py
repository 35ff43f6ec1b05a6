"""LoRA targets resolved as PEFT resolves them: oracle `get_peft_model` on tiny CPU models (peft 0.21).

PEFT's rules (peft/tuners/tuners_utils.py `check_target_module_exists`): a string `target_modules` is a regex
full-matched on each module's name; a list entry matches a module named exactly so or ending in "." + entry.
"""

from __future__ import annotations

import pytest

from tests.conftest import TINY_CONFIGS
from vramplan.errors import VramplanError
from vramplan.spec import model_spec_from_config, resolve_lora_target

TARGETS = (
    ["q_proj", "v_proj"],
    ["self_attn.q_proj", "mlp.down_proj"],
    r".*\.(q_proj|v_proj)",
    r".*mlp\.(gate|up)_proj",
    r"model\.layers\.\d+\.self_attn\.(k|o)_proj",
    # a list written for several families: PEFT adapts what matches and skips the rest (raises only when none does)
    ["q_proj", "query_key_value", "dense"],
    ["no_such_proj", "v_proj"],
    ["no_such_proj", "nor_this"],
)


def _peft_targets(cfg: dict, target) -> set[str]:
    """The last names of the linears PEFT wraps in layer 0."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg)),
                           LoraConfig(r=2, target_modules=target))  # fmt: skip
    return {n.split(".")[-1] for n, mod in model.named_modules() if hasattr(mod, "lora_A") and ".layers.0." in n}


@pytest.mark.parametrize("target", TARGETS, ids=str)
@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_targets_as_peft(family: str, target) -> None:
    cfg = TINY_CONFIGS[family]
    m = model_spec_from_config(cfg, family)
    spelled = target if isinstance(target, str) else ",".join(target)
    try:
        expected = _peft_targets(cfg, target)
    except ValueError:  # PEFT: "Target modules ... not found in the base model"
        expected = set()
    if not expected:
        with pytest.raises(VramplanError):
            resolve_lora_target(m, spelled)
        return
    names, _ = resolve_lora_target(m, spelled)
    assert set(names) == expected


# ---------------------------------------------------------------- trainable counts held to PEFT itself
LAYERS4 = {"num_hidden_layers": 4}
AXOLOTL_LAYER_REGEX = r".*\.layers\.(1|3)\.self_attn\.(q|k|v|o)_proj|.*\.mlp\.(gate|up|down)_proj"
QWEN35_LAYERS4 = {"num_hidden_layers": 4, "layer_types": ["linear_attention", "full_attention"] * 2}
QWEN35_LAYER_REGEX = r".*\.layers\.(%s)\.self_attn\.(q|k|v|o)_proj|.*\.mlp\.(gate|up|down)_proj"
PEFT_CASES: dict[str, tuple[str, dict, dict]] = {
    # id: (family, config changes, LoraConfig kwargs)
    "embeddings-as-lora": ("llama", {}, {"target_modules": ["q_proj", "v_proj", "lm_head", "embed_tokens"]}),
    "lm_head-only": ("llama", {}, {"target_modules": ["lm_head"]}),
    "modules-to-save": ("llama", {}, {"target_modules": ["q_proj", "v_proj"],
                                      "modules_to_save": ["embed_tokens", "lm_head"]}),
    # a module in modules_to_save is not a LoRA target as well (PEFT excludes it)
    "saved-and-targeted": ("llama", {}, {"target_modules": ["q_proj", "lm_head"], "modules_to_save": ["lm_head"]}),
    "tied-modules-to-save": ("gemma", {}, {"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]}),
    "neox-embeddings": ("gpt_neox", {}, {"target_modules": ["query_key_value", "lm_head"],
                                         "modules_to_save": ["embed_in"]}),
    # axolotl's layer-selective regex (3 of its example configs)
    "layer-selective-regex": ("llama", LAYERS4, {"target_modules": AXOLOTL_LAYER_REGEX}),
    "dotted-paths": ("llama", {}, {"target_modules": ["self_attn.q_proj", "mlp.down_proj", "lm_head"]}),
    "entries-of-other-families": ("llama", {}, {"target_modules": ["q_proj", "query_key_value", "lm_head"]}),
    "mixtral-target-parameters": ("mixtral", {}, {"target_modules": ["q_proj"],
                                                  "target_parameters": ["experts.gate_up_proj", "experts.down_proj"]}),
    # gpt-oss: all-linear reaches the attention only (PEFT maps no expert names for it); the experts through
    # target_parameters, every layer's or, as in OpenAI's fine-tuning cookbook, chosen layers' ("7.mlp.experts...")
    "gpt-oss-target-parameters": ("gpt_oss", {}, {"target_modules": "all-linear", "target_parameters":
                                                  ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]}),
    "gpt-oss-layer-target-parameters": ("gpt_oss", {}, {"target_modules": "all-linear", "target_parameters":
                                                        ["1.mlp.experts.gate_up_proj", "1.mlp.experts.down_proj"]}),
    # Qwen3.5 (axolotl's ebft examples): a regex naming the full-attention layers adapts the attention in each layer
    # that holds it (all of them, or some); the MLP in every layer
    "qwen35-full-attention-layers": ("qwen3_5_text", QWEN35_LAYERS4, {"target_modules": QWEN35_LAYER_REGEX % "1|3"}),
    "qwen35-some-full-attention-layers": ("qwen3_5_text", QWEN35_LAYERS4,
                                          {"target_modules": QWEN35_LAYER_REGEX % "3"}),
}  # fmt: skip


def _peft_counts(cfg: dict, lora_kwargs: dict) -> tuple[int, int]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_dropout=0.0, **lora_kwargs))
    return peft_model.get_nb_trainable_parameters()


def _spelled(value) -> str | None:
    return value if isinstance(value, str) or value is None else ",".join(value)


@pytest.mark.parametrize("case", PEFT_CASES)
def test_trainable_counts_as_peft(case: str) -> None:
    from vramplan.estimator.params import count_params
    from vramplan.spec import resolve_train

    family, changes, kwargs = PEFT_CASES[case]
    cfg = {**TINY_CONFIGS[family], **changes}
    m = model_spec_from_config(cfg, family)
    t = resolve_train(
        m, method="lora", lora_rank=2, lora_dropout=0.0,
        lora_target=_spelled(kwargs["target_modules"]),
        modules_to_save=_spelled(kwargs.get("modules_to_save")),
        target_parameters=_spelled(kwargs.get("target_parameters")),
    )  # fmt: skip
    counts = count_params(m, t)
    assert (counts.trainable, counts.total) == _peft_counts(cfg, kwargs)


def test_layer_selective_regex_counts_layers() -> None:
    m = model_spec_from_config({**TINY_CONFIGS["llama"], **LAYERS4}, "llama")
    from vramplan.spec import resolve_train

    t = resolve_train(m, method="lora", lora_target=r"model\.layers\.(0|2)\.self_attn\.(q|v)_proj")
    assert dict(t.lora_layers) == {"q_proj": 2, "v_proj": 2}
    assert any("some layers only" in n for n in t.notes)


def test_modules_to_save_outside_embeddings_refused() -> None:
    from vramplan.spec import resolve_train

    m = model_spec_from_config(TINY_CONFIGS["llama"], "llama")
    with pytest.raises(VramplanError, match="modules_to_save 'norm'"):
        resolve_train(m, method="lora", modules_to_save="norm")
    with pytest.raises(VramplanError, match=r"target_parameters 'experts\.down_proj'"):
        resolve_train(m, method="lora", target_parameters="experts.down_proj")


def test_unmatched_list_entries_are_a_note() -> None:
    from vramplan.spec import resolve_train

    m = model_spec_from_config(TINY_CONFIGS["llama"], "llama")
    t = resolve_train(m, method="lora", lora_target="q_proj,query_key_value,dense")
    assert any("query_key_value, dense match no module" in n and "PEFT skips them" in n for n in t.notes)
    with pytest.raises(VramplanError, match="q_prj"):  # a single unmatched name stays an error, as in PEFT
        resolve_train(m, method="lora", lora_target="q_prj")


def test_targets_not_checked_without_lora() -> None:
    """axolotl's archived mpt-7b example: `adapter:` empty (a full fine-tune) with lora_target_modules q_proj,
    v_proj that MPT does not have. Nothing reads them outside LoRA, so they are not an error there."""
    from vramplan.spec import resolve_train

    m = model_spec_from_config(TINY_CONFIGS["gpt_neox"], "gpt_neox")  # query_key_value, no q_proj
    assert resolve_train(m, method="full", lora_target="q_proj,v_proj").method == "full"
    with pytest.raises(VramplanError, match="q_proj"):
        resolve_train(m, method="lora", lora_target="q_proj,v_proj")


def test_hybrid_layer_regex_counts_the_layers_holding_the_linear() -> None:
    """Qwen3.5 holds self_attn in its full-attention layers only: a regex naming all of them adapts it there (no
    per-layer count), one naming some counts those; a pattern that would need the layers of a generic hybrid
    (not known which hold the linear) is still refused."""
    from vramplan.spec import resolve_train
    from vramplan.spec.lora_targets import holding_layers

    m = model_spec_from_config({**TINY_CONFIGS["qwen3_5_text"], **QWEN35_LAYERS4}, "qwen3.5")
    q = next(lin for lin in m.linears if lin.path == "self_attn.q_proj")
    assert holding_layers(m, q) == (1, 3)
    assert resolve_train(m, method="lora", lora_target=QWEN35_LAYER_REGEX % "1|3").lora_layers == ()
    assert dict(resolve_train(m, method="lora", lora_target=QWEN35_LAYER_REGEX % "3").lora_layers)["q_proj"] == 1
    # layer 2 holds no self_attn: naming it alone selects nothing there, the MLP everywhere
    t = resolve_train(m, method="lora", lora_target=QWEN35_LAYER_REGEX % "2")
    assert "q_proj" not in t.lora_target and t.lora_layers == ()
