"""bitsandbytes storage is exact: `bnb_4bit_bytes` / `bnb_int8_bytes` vs real quantized layers, and
`weight_bytes` vs tiny models loaded with a BitsAndBytesConfig (transformers 5.24, bitsandbytes 0.50.2, CPU).

Bytes are storage bytes (`untyped_storage().nbytes()`), each storage once: what the allocator holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TINY_CONFIGS
from vramplan.estimator.weights import bnb_4bit_bytes, bnb_int8_bytes, weight_bytes
from vramplan.spec import model_spec_from_config, resolve_train

# (out_features, in_features): numel vs the 64-element absmax block and the 256·64 elements of a state2 block
SHAPES = [
    (64, 64),  # 4096 = 64 blocks: whole blocks, one partial state2 block
    (33, 7),  # 231: odd (half a packed byte), a partial last absmax block
    (256, 64),  # 16384 = 256·64: exactly one state2 block
    (300, 55),  # 16500: 258 blocks, a second, partial state2 block
    (128, 257),  # 32896: 514 blocks, three state2 blocks
]


def _storage_bytes(tensors: Iterable[Any]) -> int:
    """Bytes of the distinct storages behind `tensors` (None skipped)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t is not None:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _quant_state_tensors(params: Iterable[Any]) -> Iterator[Any]:
    """Params4bit.quant_state: absmax, code, offset, state2.absmax, state2.code; Int8Params.SCB."""
    for p in params:
        qs = getattr(p, "quant_state", None)
        if qs is not None:
            yield from (qs.absmax, qs.code, qs.offset)
            if qs.state2 is not None:
                yield from (qs.state2.absmax, qs.state2.code)
        yield getattr(p, "SCB", None)


@pytest.mark.parametrize("double_quant", [False, True], ids=["no-dq", "dq"])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{o}x{i}" for o, i in SHAPES])
def test_linear4bit_bytes(shape: tuple[int, int], quant_type: str, double_quant: bool) -> None:
    import bitsandbytes as bnb
    import torch

    out_features, in_features = shape
    lin = bnb.nn.Linear4bit(
        in_features,
        out_features,
        bias=False,
        compute_dtype=torch.bfloat16,
        compress_statistics=double_quant,
        quant_type=quant_type,
    )
    w = torch.randn(out_features, in_features, dtype=torch.bfloat16)
    lin.weight = bnb.nn.Params4bit(w, requires_grad=False, compress_statistics=double_quant, quant_type=quant_type)
    lin = lin.to("cpu")
    if not lin.weight.bnb_quantized:
        lin.weight._quantize("cpu")
    assert lin.weight.bnb_quantized
    assert lin.weight.quant_state.nested == double_quant

    packed, state = bnb_4bit_bytes(out_features * in_features, double_quant)
    assert _storage_bytes([lin.weight]) == packed
    assert _storage_bytes(_quant_state_tensors([lin.weight])) == state


@pytest.mark.parametrize("shape", SHAPES, ids=[f"{o}x{i}" for o, i in SHAPES])
def test_linear8bit_bytes(shape: tuple[int, int]) -> None:
    import bitsandbytes as bnb
    import torch

    out_features, in_features = shape
    lin = bnb.nn.Linear8bitLt(in_features, out_features, bias=False, has_fp16_weights=False)
    w = torch.randn(out_features, in_features, dtype=torch.float16)
    lin.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
    lin = lin.to("cpu")  # Int8Params.to quantizes on the move off an unquantized CPU tensor
    assert lin.weight.dtype == torch.int8
    assert lin.weight.CB.untyped_storage().data_ptr() == lin.weight.untyped_storage().data_ptr()

    weight, scb = bnb_int8_bytes(out_features, in_features)
    assert _storage_bytes([lin.weight, lin.weight.CB]) == weight
    assert _storage_bytes([lin.weight.SCB]) == scb


# ---------------------------------------------------------------- whole tiny models loaded quantized


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A function family -> folder holding a random bf16 tiny model (`save_pretrained`, no network)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    saved: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in saved:
            torch.manual_seed(0)
            config = AutoConfig.for_model(**TINY_CONFIGS[family])
            folder = tmp_path_factory.mktemp(family)
            AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(folder)
            saved[family] = folder
        return saved[family]

    return get


def _load_and_check(
    folder: Path, family: str, quant: str, double_quant: bool, config: dict[str, Any] | None = None
) -> None:
    """Load quantized; parameter and quant-state bytes equal weight_bytes, before and after kbit prep."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    m = model_spec_from_config(config or TINY_CONFIGS[family], f"tiny-{family}")
    # the linears a family must keep out of bitsandbytes to train at all (Gemma 3n's AltUp coefficients, whose
    # training-time clamp fails on a packed weight) are skipped, as the harness and a user must
    skipped = sorted({li.name for li in m.linears if not li.quantizable}) if family == "gemma3n_text" else []
    skip = {"llm_int8_skip_modules": ["lm_head", *skipped]} if skipped else {}
    if quant == "int8":
        bnb_config = BitsAndBytesConfig(load_in_8bit=True, **skip)
    else:
        bnb_config = BitsAndBytesConfig(
            **skip,
            load_in_4bit=True,
            bnb_4bit_quant_type=quant,
            bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    model = AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=bnb_config, dtype=torch.bfloat16, device_map="cpu"
    )
    for kbit_prep in (False, True):
        if kbit_prep:
            model = prepare_model_for_kbit_training(model)  # fp32 upcast of every non-quantized parameter
        t = resolve_train(m, method="qlora", dtype="bf16", quant=quant, double_quant=double_quant, kbit_prep=kbit_prep)
        want = weight_bytes(m, t)
        # GPTBigCodeModel's bool tril buffer `bias` (n_positions², on the device with the weights) is counted too
        tril = [model.transformer.bias] if family == "gpt_bigcode" else []
        measured = (
            _storage_bytes([*model.parameters(), *tril]),
            _storage_bytes(_quant_state_tensors(model.parameters())),
        )
        assert measured == (want.frozen, want.quant_state), f"kbit_prep={kbit_prep}"
        assert want.trainable == 0


@pytest.mark.parametrize(
    ("quant", "double_quant"),
    [("nf4", False), ("nf4", True), ("fp4", False), ("fp4", True), ("int8", False)],
)
def test_tiny_llama_loaded_quantized(saved_model: Any, quant: str, double_quant: bool) -> None:
    _load_and_check(saved_model("llama"), "llama", quant, double_quant)


@pytest.mark.parametrize("family", sorted(set(TINY_CONFIGS) - {"llama"}))
def test_tiny_model_loaded_nf4(saved_model: Any, family: str) -> None:
    """What stays unquantized differs by family: tied embeddings, biases, bloom's embedding norm, phi's
    lm_head bias, Mixtral's 3-D expert and router parameters (plain nn.Parameter, left in bf16)."""
    _load_and_check(saved_model(family), family, "nf4", True)


# Families on the generic path (the architecture table) whose decoder linears are not all `nn.Linear`: Falcon's
# are FalconLinear, a subclass that transformers 5.24's replace_with_bnb_linear (`type(module) is nn.Linear`)
# leaves in bf16, then kbit prep in fp32; GPT-2's Conv1D is replaced (its `isinstance(module, Conv1D)` branch).
GENERIC_TINY = {
    "falcon": {"model_type": "falcon", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
               "vocab_size": 256, "multi_query": True, "parallel_attn": True, "bias": False},
    "gpt2": {"model_type": "gpt2", "n_embd": 64, "n_head": 4, "n_layer": 2, "vocab_size": 256, "n_positions": 64},
}  # fmt: skip


@pytest.fixture(scope="module")
def saved_generic(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    def get(family: str) -> Path:
        torch.manual_seed(0)
        config = AutoConfig.for_model(**GENERIC_TINY[family])
        folder = tmp_path_factory.mktemp(f"generic-{family}")
        AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(folder)
        return folder

    return get


@pytest.mark.parametrize("family", sorted(GENERIC_TINY))
def test_generic_model_loaded_nf4(saved_generic: Any, family: str) -> None:
    m = model_spec_from_config(GENERIC_TINY[family], f"tiny-{family}")
    assert (m.unquantizable_linear_params > 0) == (family == "falcon")  # what the table says it holds
    _load_and_check(saved_generic(family), family, "nf4", True, GENERIC_TINY[family])
