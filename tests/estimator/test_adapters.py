"""estimator/adapters.py against PEFT 0.21: the bytes of the adapters `get_peft_model` creates on a bf16 base.

Parameter counts are held to PEFT in test_params.py; this holds the storage: PEFT upcasts fp16/bf16 adapters
to fp32 (`autocast_adapter_dtype=True`, peft/tuners/tuners_utils.py `_cast_adapter_dtype`), also DoRA's
magnitude vector.
"""

from __future__ import annotations

import pytest

from tests.conftest import TINY_CONFIGS
from vramplan.estimator.adapters import adapter_bytes
from vramplan.spec import model_spec_from_config, resolve_train

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
@pytest.mark.parametrize("family", ["llama", "phi", "bloom"])  # gated MLP, plain MLP with biases, fused qkv
def test_adapter_bytes_are_peft_storage(family: str, dora: bool) -> None:
    cfg = TINY_CONFIGS[family]
    m = model_spec_from_config(cfg, f"tiny-{family}")
    t = resolve_train(m, method="lora", lora_rank=8, lora_target="all-linear", dora=dora)
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**cfg))
    model = model.to(torch.bfloat16)
    config = peft.LoraConfig(r=8, target_modules=list(t.lora_target), use_dora=dora)
    adapters = [p for p in peft.get_peft_model(model, config).parameters() if p.requires_grad]
    assert {p.dtype for p in adapters} == {torch.float32}
    assert adapter_bytes(m, t) == sum(p.numel() * p.element_size() for p in adapters)


def test_no_adapters_without_lora() -> None:
    m = model_spec_from_config(TINY_CONFIGS["llama"], "tiny-llama")
    assert adapter_bytes(m, resolve_train(m, method="full")) == 0
    assert adapter_bytes(m, resolve_train(m, method="freeze")) == 0
