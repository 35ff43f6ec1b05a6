"""bitsandbytes storage of one weight: 4-bit (nf4 / fp4) packed codes and their absmax blocks, LLM.int8 rows and
scales. Shared by training (weights.py) and serving (served_weights.py).
"""

from __future__ import annotations

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
