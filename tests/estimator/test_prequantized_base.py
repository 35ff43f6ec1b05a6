"""Training LoRA on a pre-quantized base (spec/prequantized_base.py): the stored weights of each format counted
by hand on Llama-3-8B, GPTQ's saved dequantized weights, and how a checkpoint becomes the trained base.
What one quantized linear saves and holds is traced in tests/measure/test_prequantized_trace.py."""

from __future__ import annotations

import pytest

from vramplan.api import estimate
from vramplan.errors import VramplanError
from vramplan.estimator.activations import activation_bytes
from vramplan.sources.profiles import load_model
from vramplan.spec import model_spec_from_config, resolve_train
from vramplan.spec.checkpoint_quant import CheckpointQuant, assumed_from_name

# Llama-3-8B: 32 layers, hidden 4096, 8 KV heads of 128, intermediate 14336, vocabulary 128256, untied head
LAYERS, H, KV, INTER, V = 32, 4096, 1024, 14336, 128256
LINEARS = [(H, H), (KV, H), (KV, H), (H, H), (INTER, H), (INTER, H), (H, INTER)]  # (out, in): q k v o gate up down
LINEAR_PARAMS = sum(n * k for n, k in LINEARS)  # 218,103,808 per layer
REST = 2 * V * H + (2 * LAYERS + 1) * H  # embeddings, lm_head, norms: bf16 in every format


def weights(**options) -> int:
    b = estimate("llama-3-8b", method="lora", seq=1024, **options)
    return b.components.weights + b.components.quant_state


@pytest.mark.parametrize(
    ("name", "per_linear"),
    [
        # qweight in·out/2, fp16 scales and packed qzeros per 128 inputs; gptqmodel's g_idx int32 per input
        ("GPTQ", lambda n, k: n * k // 2 + (k // 128) * n * 2 + (k // 128) * n // 2 + 4 * k),
        ("AWQ", lambda n, k: n * k // 2 + (k // 128) * n * 2 + (k // 128) * n // 2),
        # fp8 weight + an fp32 scale per 128×128 block
        ("FP8", lambda n, k: n * k + (n // 128) * (k // 128) * 4),
        # AQLM 1x16, groups of 8 inputs: one int16 code per 8 weights, 2^16 × 8 bf16 codebook, bf16 scale per out
        ("AQLM-2Bit-1x16", lambda n, k: n * (k // 8) * 2 + 2**16 * 8 * 2 + n * 2),
        # NVFP4: 4-bit weight, an fp8 scale per 16 weights, two fp32 global scales
        ("NVFP4", lambda n, k: n * k // 2 + n * k // 16 + 8),
    ],
)
def test_stored_weights_by_hand(name: str, per_linear) -> None:
    expected = LAYERS * sum(per_linear(n, k) for n, k in LINEARS) + REST * 2
    assert weights(checkpoint_name=name) == expected


def test_gptq_keeps_every_dequantized_weight_until_backward() -> None:
    """Without checkpointing, GPTQ's torch.matmul saves each linear's bf16 dequantized weight; AWQ saves none.
    Layer 0's q, k, v see the embedding output, which needs no gradient (no kbit prep): nothing saved there."""
    m = load_model("llama-3-8b")

    def walked(name: str, grad_ckpt: bool):
        return activation_bytes(m, resolve_train(m, method="lora", checkpoint_name=name, grad_ckpt=grad_ckpt))

    gptq, awq = walked("GPTQ", False), walked("AWQ", False)
    assert gptq.saved - awq.saved == (LAYERS * LINEAR_PARAMS - (H * H + 2 * KV * H)) * 2
    gptq, awq = walked("GPTQ", True), walked("AWQ", True)
    assert gptq.saved == awq.saved  # checkpointing keeps layer inputs only
    assert gptq.layer - awq.layer == LINEAR_PARAMS * 2  # the recomputed layer's saved weights


def test_a_config_json_quantization_config_is_the_trained_base() -> None:
    m = load_model("llama-3-8b")
    cfg = {k: v for k, v in m.config.items() if k != "vramplan_profile"}
    awq = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}
    t = resolve_train(model_spec_from_config(cfg | {"quantization_config": awq}, "llama-3-8b-awq"), method="qlora")
    assert (t.method, t.quant, t.kbit_prep, t.checkpoint.label) == ("lora", "none", False, "awq int4 g128")
    assert not t.notes  # read from the config: nothing assumed
    bnb = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    t = resolve_train(model_spec_from_config(cfg | {"quantization_config": bnb}, "llama-3-8b-bnb"), method="lora")
    assert (t.method, t.quant, t.checkpoint) == ("qlora", "nf4", None)
    mx = {"quant_method": "mxfp4"}
    t = resolve_train(model_spec_from_config(cfg | {"quantization_config": mx}, "m"), method="lora")
    assert (t.quant, t.checkpoint) == ("none", None)
    assert any("Mxfp4Config(dequantize=True)" in n for n in t.notes)


def test_gpt_oss_mxfp4_checkpoint_trains_dequantized_full_or_lora() -> None:
    """openai/gpt-oss-20b ships MXFP4 experts (its config.json `quantization_config`); the fine-tuning recipes
    load it with Mxfp4Config(dequantize=True) (axolotl examples/gpt-oss: full fine-tuning and LoRA alike): the
    experts dense in the load dtype, so the estimate equals the unquantized profile's, full included."""
    m = load_model("gpt-oss-20b")
    cfg = {k: v for k, v in m.config.items() if k != "vramplan_profile"}
    mx = {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                            "model.embed_tokens", "lm_head"]}  # fmt: skip
    quantized = model_spec_from_config(cfg | {"quantization_config": mx}, "gpt-oss-20b")
    for method in ("full", "lora"):
        t = resolve_train(quantized, method=method)
        assert (t.method, t.quant, t.checkpoint) == (method, "none", None)
        assert any("Mxfp4Config(dequantize=True)" in n for n in t.notes)
        assert estimate(quantized, method=method).peak_bytes == estimate(m, method=method).peak_bytes


def test_a_name_says_the_format_assumed_and_flags_win() -> None:
    m = load_model("llama-3-8b")
    t = resolve_train(m, method="lora", checkpoint_name="GPTQ-Int4")
    assert t.checkpoint == assumed_from_name("GPTQ-Int4")
    assert any("gptq int4 g128 (assumed from the model name" in n for n in t.notes)
    t = resolve_train(m, method="lora", quant="nf4", checkpoint_name="GPTQ")
    assert (t.method, t.quant, t.checkpoint) == ("qlora", "nf4", None)
    b = estimate("TechxGenus/Meta-Llama-3-8B-Instruct-AWQ", method="lora")  # the API reads the name too
    assert b.train.checkpoint == assumed_from_name("AWQ")
    b = estimate("hugging-quants/Meta-Llama-3.1-8B-Instruct-BNB-NF4-BF16", method="lora")
    assert (b.train.method, b.train.quant, b.train.double_quant, b.train.notes) == ("qlora", "nf4", True, ())
    with pytest.raises(VramplanError, match="pre-quantized gptq int4 g128 checkpoint"):
        resolve_train(m, method="full", checkpoint=CheckpointQuant("gptq", source="gptq"))
