"""Weight storage: unquantized parameters in their dtype, bitsandbytes 4-bit / 8-bit linears and their constants.

What transformers quantizes (BitsAndBytesConfig): every `nn.Linear` inside the decoder layers; `lm_head`,
embeddings, norms, biases and Mixtral's 3-D expert tensors (plain `nn.Parameter` in transformers 5) stay in
the load dtype (transformers/quantizers/quantizer_bnb_4bit.py, `modules_to_not_convert` = output embeddings).
`prepare_model_for_kbit_training` then casts every remaining fp16/bf16 parameter to fp32
(peft/utils/other.py, peft 0.21.2).
"""

from __future__ import annotations

from dataclasses import dataclass

from vramplan.estimator.params import saved_module_params
from vramplan.spec import DTYPE_BYTES, ModelSpec, TrainSpec
from vramplan.units import ceil_div

NF4_BLOCK = 64  # elements per absmax block: bitsandbytes Linear4bit default blocksize (quantize_4bit)
DQ_BLOCK = 256  # absmax values per second-level block with double quantization (quantize_blockwise, 0.50)
CODE_4BIT_BYTES = 16 * 4  # quant_state.code: the 16-entry nf4/fp4 table, fp32
DQ_CODE_BYTES = 256 * 4  # state2.code: the 8-bit dynamic map used for the absmax, fp32
DQ_OFFSET_BYTES = 4  # quant_state.offset: fp32 scalar (mean of absmax)


def bnb_4bit_bytes(numel: int, double_quant: bool) -> tuple[int, int]:
    """(packed weight, quant state) bytes of one bitsandbytes 4-bit weight of `numel` elements.

    Packed: uint8, two 4-bit codes a byte. State: fp32 absmax per 64 elements; with double quantization the
    absmax is uint8 plus fp32 state2.absmax per 256 blocks, fp32 offset and the 256-entry dynamic code.
    Source: bitsandbytes 0.50.2 functional.quantize_4bit / QuantState; checked in tests on a real Linear4bit.
    """
    blocks = ceil_div(numel, NF4_BLOCK)
    if double_quant:
        state = blocks + 4 * ceil_div(blocks, DQ_BLOCK) + DQ_OFFSET_BYTES + DQ_CODE_BYTES + CODE_4BIT_BYTES
    else:
        state = 4 * blocks + CODE_4BIT_BYTES
    return ceil_div(numel, 2), state


def bnb_int8_bytes(out_features: int, in_features: int) -> tuple[int, int]:
    """(int8 weight, SCB) of an LLM.int8 `Linear8bitLt`: 1 byte per weight and one fp32 scale per row.

    Source: bitsandbytes 0.50.2 nn.Int8Params (`CB`, `SCB` from int8_vectorwise_quant).
    """
    return out_features * in_features, 4 * out_features


def quantized_linear_bytes(m: ModelSpec, quant: str, double_quant: bool) -> tuple[int, int]:
    """(packed weights, quant state) of every `nn.Linear` bitsandbytes replaces (decoder layers, a VLM's tower):
    `quant` "int8" (Linear8bitLt) or "nf4"/"fp4" (Linear4bit). Training and serving load them alike."""
    packed = state = 0
    shapes = [((lin.out_features, lin.in_features), m.instances(lin)) for lin in m.linears]
    shapes += [(shape, n) for shape, n, quantized in m.tower_tensors if quantized]  # a VLM's vision tower
    for (out_f, in_f), n in shapes:
        if quant == "int8":
            w, s = bnb_int8_bytes(out_f, in_f)
        else:
            w, s = bnb_4bit_bytes(out_f * in_f, double_quant)
        packed, state = packed + w * n, state + s * n
    return packed, state


@dataclass(frozen=True, slots=True)
class WeightBytes:
    frozen: int  # frozen parameters (quantized packed weights + unquantized frozen params)
    quant_state: int
    trainable: int  # trainable base parameters (full / freeze); adapters are counted in adapters.py


def base_param_dtype_bytes(t: TrainSpec) -> int:
    """Bytes per element of unquantized base parameters after loading (and after kbit prep's fp32 cast)."""
    return 4 if t.kbit_prep else DTYPE_BYTES[t.dtype]


def weight_bytes(m: ModelSpec, t: TrainSpec) -> WeightBytes:
    w = _base_weight_bytes(m, t)
    if t.uses_lora and not t.peft.lora_equivalent:  # frozen tensors of other PEFT methods (BOFT, VeRA)
        from vramplan.estimator.peft_methods import peft_buffer_bytes

        w = WeightBytes(frozen=w.frozen + peft_buffer_bytes(m, t), quant_state=w.quant_state, trainable=w.trainable)
    return w


def _base_weight_bytes(m: ModelSpec, t: TrainSpec) -> WeightBytes:
    p = DTYPE_BYTES[t.dtype]
    if t.quant == "none" and t.checkpoint is None:
        total = m.total_params * p
        if t.method == "full":  # a VLM's vision tower stays frozen
            tower = m.tower_params * p
            return WeightBytes(frozen=tower, quant_state=0, trainable=total - tower)
        if t.method == "freeze":
            train = t.freeze_trainable_layers * m.layer_params * p
            return WeightBytes(frozen=total - train, quant_state=0, trainable=train)
        return WeightBytes(frozen=total, quant_state=0, trainable=saved_module_params(m, t) * p)
    if t.checkpoint is not None:  # a pre-quantized base: its own format (served_weights.py)
        from vramplan.estimator.served_weights import checkpoint_weight_bytes

        packed, state, replaced = checkpoint_weight_bytes(m, t.checkpoint, p)
        copies = saved_module_params(m, t) * p
        return WeightBytes(frozen=packed + (m.total_params - replaced) * p, quant_state=state, trainable=copies)
    packed, state = quantized_linear_bytes(m, t.quant, t.double_quant)
    rest = m.total_params - m.quantized_weight_params
    copies = saved_module_params(m, t) * base_param_dtype_bytes(t)  # modules_to_save: copied after kbit prep
    return WeightBytes(frozen=packed + rest * base_param_dtype_bytes(t), quant_state=state, trainable=copies)
