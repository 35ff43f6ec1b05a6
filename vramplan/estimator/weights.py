"""Weight storage: unquantized parameters in their dtype, bitsandbytes 4-bit / 8-bit linears and their constants.

What transformers quantizes (BitsAndBytesConfig): every `nn.Linear` inside the decoder layers; `lm_head`,
embeddings, norms, biases and Mixtral's 3-D expert tensors (plain `nn.Parameter` in transformers 5) stay in
the load dtype (transformers/quantizers/quantizer_bnb_4bit.py, `modules_to_not_convert` = output embeddings).
`prepare_model_for_kbit_training` then casts every remaining fp16/bf16 parameter to fp32
(peft/utils/other.py, peft 0.21.2).
"""

from __future__ import annotations

from typing import NamedTuple

from vramplan.estimator.bnb_storage import bnb_4bit_bytes, bnb_int8_bytes
from vramplan.estimator.params import saved_module_params
from vramplan.spec import DTYPE_BYTES, ModelSpec, TrainSpec


def quantized_linear_bytes(m: ModelSpec, quant: str, double_quant: bool) -> tuple[int, int]:
    """(packed weights, quant state) of every `nn.Linear` bitsandbytes replaces (decoder layers, a VLM's tower):
    `quant` "int8" (Linear8bitLt) or "nf4"/"fp4" (Linear4bit). Training and serving load them alike."""
    packed = state = 0
    shapes = [((lin.out_features, lin.in_features), m.instances(lin)) for lin in m.linears if lin.quantizable]
    shapes += [(shape, n) for shape, n, quantized in m.tower_tensors if quantized]  # a VLM's vision tower
    for (out_f, in_f), n in shapes:
        if quant == "int8":
            w, s = bnb_int8_bytes(out_f, in_f)
        else:
            w, s = bnb_4bit_bytes(out_f * in_f, double_quant)
        packed, state = packed + w * n, state + s * n
    return packed, state


class WeightBytes(NamedTuple):
    frozen: int  # frozen parameters (quantized packed weights + unquantized frozen params)
    quant_state: int
    trainable: int  # trainable base parameters (full / freeze); adapters are counted in adapters.py


def base_param_dtype_bytes(t: TrainSpec) -> int:
    """Bytes per element of unquantized base parameters after loading (and after kbit prep's fp32 cast)."""
    return 4 if t.kbit_prep else DTYPE_BYTES[t.dtype]


def weight_bytes(m: ModelSpec, t: TrainSpec) -> WeightBytes:
    w = _base_weight_bytes(m, t)
    if m.model_type == "gpt_bigcode":
        w = WeightBytes(frozen=w.frozen + model_buffer_bytes(m), quant_state=w.quant_state, trainable=w.trainable)
    if t.uses_lora and not t.peft.lora_equivalent:  # frozen tensors of other PEFT methods (BOFT, VeRA)
        from vramplan.estimator.peft_methods import peft_buffer_bytes

        w = WeightBytes(frozen=w.frozen + peft_buffer_bytes(m, t), quant_state=w.quant_state, trainable=w.trainable)
    return w


def model_buffer_bytes(m: ModelSpec) -> int:
    """Buffers a model keeps on its device beside the parameters, where one is large: GPTBigCodeModel's `bias`,
    a bool tril of n_positions × n_positions (persistent=False: made at init, moved with the model, no longer
    read by transformers 5.25's forward, which builds its mask with create_causal_mask): 64 MiB at StarCoder's
    8192 positions. Rotary `inv_freq` tables (head_dim / 2 fp32) are left out."""
    return m.max_position_embeddings**2 if m.model_type == "gpt_bigcode" else 0


def kept_fp32_bytes(m: ModelSpec, t: TrainSpec) -> int:
    """What the parameters transformers keeps in fp32 whatever the load dtype add over the load dtype
    (`_keep_in_fp32_modules_strict`: DeepSeek-V3's router `gate.weight`; modeling_utils.py, 5.24); none after kbit
    prep, which casts everything else to fp32 too."""
    return 0 if t.kbit_prep else m.fp32_params * (4 - DTYPE_BYTES[t.dtype])


def _base_weight_bytes(m: ModelSpec, t: TrainSpec) -> WeightBytes:
    w = _load_dtype_weight_bytes(m, t)
    if t.method == "full" and t.quant == "none":
        return WeightBytes(w.frozen, w.quant_state, w.trainable + kept_fp32_bytes(m, t))
    return WeightBytes(w.frozen + kept_fp32_bytes(m, t), w.quant_state, w.trainable)


def _load_dtype_weight_bytes(m: ModelSpec, t: TrainSpec) -> WeightBytes:
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
    if t.checkpoint is not None:  # a pre-quantized base: its own format (served_weights.py, loaded only then)
        from vramplan.estimator.served_weights import checkpoint_weight_bytes

        packed, state, replaced = checkpoint_weight_bytes(m, t.checkpoint, p)
        copies = saved_module_params(m, t) * p
        return WeightBytes(frozen=packed + (m.total_params - replaced) * p, quant_state=state, trainable=copies)
    packed, state = quantized_linear_bytes(m, t.quant, t.double_quant)
    rest = m.total_params - m.quantized_weight_params
    copies = saved_module_params(m, t) * base_param_dtype_bytes(t)  # modules_to_save: copied after kbit prep
    return WeightBytes(frozen=packed + rest * base_param_dtype_bytes(t), quant_state=state, trainable=copies)
