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


def test_layer_selective_regex_refused() -> None:
    m = model_spec_from_config(TINY_CONFIGS["llama"], "llama")
    with pytest.raises(VramplanError, match="different layers"):
        resolve_lora_target(m, r"model\.layers\.0\.self_attn\.q_proj")
