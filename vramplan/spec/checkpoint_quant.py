"""A pre-quantized checkpoint's format, read from the `quantization_config` of its config.json.

The formats people serve: AWQ, GPTQ, FP8 (per-tensor / per-channel / block), compressed-tensors (llm-compressor's
W4A16 / W8A8 / FP8 / NVFP4), MXFP4 (gpt-oss), NVFP4 (ModelOpt), bitsandbytes. `read_checkpoint_quant` turns the
config into one `CheckpointQuant`; the bytes each format stores are counted in
`vramplan.estimator.served_weights`. Field names follow the configs (`bits`, `group_size`, `desc_act`,
`weight_block_size`, `modules_to_not_convert`, `ignore`).
Sources: vLLM 0.34.0 model_executor/layers/quantization/{auto_awq, auto_gptq, fp8, mxfp4, modelopt}.py and
compressed_tensors/compressed_tensors.py (`get_quant_config`); transformers 5.24 utils/quantization_config.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from vramplan.errors import VramplanError
from vramplan.spec.fields import quantization_config

QuantFormat = Literal["awq", "gptq", "fp8", "int8", "mxfp4", "nvfp4", "bitsandbytes", "aqlm"]
FP8Strategy = Literal["tensor", "channel", "block"]
FORMATS: tuple[str, ...] = ("awq", "gptq", "fp8", "int8", "mxfp4", "nvfp4", "bitsandbytes", "aqlm")
MX_BLOCK = 32  # MXFP4: one E8M0 scale byte per 32 elements (OCP MX spec; vLLM ocp_mx_utils.OCP_MX_BLOCK_SIZE)
NVFP4_BLOCK = 16  # NVFP4: one FP8 E4M3 scale per 16 elements (vLLM modelopt.py / nvfp4_utils.py)
# modules gpt-oss ships unquantized (its config.json `modules_to_not_convert`): everything but the experts
MXFP4_UNQUANTIZED_DEFAULT = ("self_attn", "router", "embed_tokens", "lm_head")


@dataclass(frozen=True, slots=True)
class CheckpointQuant:
    """How a checkpoint stores its quantized linears.

    `group_size` -1: one scale per output channel over the whole input (GPTQ/AWQ "per channel").
    `zero_point`: an integer zero point per group is stored (AWQ `zero_point`, GPTQ `sym: false`; vLLM
    keeps GPTQ's loaded qzeros even when symmetric, auto_gptq.py `retire_parameter`, so `stores_zeros`
    is the storage fact). `act_order`: GPTQ `desc_act` / compressed-tensors `actorder: group`.
    `unquantized`: name fragments of modules left in the model dtype (`modules_to_not_convert`, `ignore`).
    """

    format: QuantFormat
    bits: int = 4
    group_size: int = 128
    zero_point: bool = False
    stores_zeros: bool = False
    act_order: bool = False
    fp8_strategy: FP8Strategy = "tensor"
    block: tuple[int, int] = (128, 128)  # FP8 block [out, in] (weight_block_size)
    unquantized: tuple[str, ...] = ("lm_head",)
    bnb_quant_type: str = "nf4"
    bnb_double_quant: bool = False
    # AQLM: `num_codebooks` codebooks of 2**`nbits_per_codebook` vectors of out_group × in_group weights
    aqlm_codebooks: tuple[int, int, int, int] = (1, 16, 1, 8)  # (num_codebooks, nbits, out_group, in_group)
    source: str = ""  # the config's quant_method, for the report

    @property
    def label(self) -> str:
        if self.format in ("awq", "gptq"):
            group = "per-channel" if self.group_size == -1 else f"g{self.group_size}"
            extra = " act-order" if self.act_order else ""
            return f"{self.format} int{self.bits} {group}{extra}"
        if self.format == "fp8":
            block = f" {self.block[0]}x{self.block[1]}" if self.fp8_strategy == "block" else ""
            return f"fp8 per-{self.fp8_strategy}{block}"
        if self.format == "bitsandbytes":
            return f"bitsandbytes {self.bnb_quant_type if self.bits == 4 else 'int8'}"
        if self.format == "aqlm":
            codebooks, nbits, out_group, in_group = self.aqlm_codebooks
            return f"aqlm {codebooks}x{nbits} {out_group}x{in_group}"
        return self.format


def _int(d: Mapping[str, Any], key: str, default: int) -> int:
    v = d.get(key, default)
    return default if v is None else int(v)


def _compressed_tensors(q: Mapping[str, Any]) -> CheckpointQuant:
    """llm-compressor's `config_groups`: the first group's `weights` args decide (vLLM picks a scheme per
    layer the same way; mixed groups are rare). compressed_tensors.py `_get_scheme_from_parts`."""
    groups = q.get("config_groups") or {}
    if not groups:
        raise VramplanError("compressed-tensors quantization_config has no config_groups; cannot tell the format")
    group = next(iter(groups.values()))
    w = group.get("weights") or {}
    bits, kind = _int(w, "num_bits", 8), str(w.get("type", "int"))
    strategy = str(w.get("strategy", "tensor"))
    ignore = tuple(str(x).removeprefix("re:") for x in q.get("ignore") or ("lm_head",))
    if kind == "float" and bits == 4:
        fmt = "mxfp4" if _int(w, "group_size", NVFP4_BLOCK) == MX_BLOCK else "nvfp4"
        return CheckpointQuant(fmt, bits=4, unquantized=ignore, source="compressed-tensors")  # type: ignore[arg-type]
    if kind == "float":
        block = tuple(w.get("block_structure") or (128, 128))
        fp8: FP8Strategy = "block" if strategy == "block" else "channel" if strategy == "channel" else "tensor"
        return CheckpointQuant("fp8", bits=8, fp8_strategy=fp8, block=(int(block[0]), int(block[1])),
                               unquantized=ignore, source="compressed-tensors")  # fmt: skip
    if bits == 8 and strategy in ("channel", "tensor"):
        return CheckpointQuant("int8", bits=8, group_size=-1, unquantized=ignore, source="compressed-tensors")
    symmetric = bool(w.get("symmetric", True))
    return CheckpointQuant(
        "gptq",
        bits=bits,
        group_size=_int(w, "group_size", -1) if strategy == "group" else -1,
        zero_point=not symmetric,
        stores_zeros=not symmetric,  # wNa16: weight_zero_point only when asymmetric
        act_order=str(w.get("actorder")) == "group",
        unquantized=ignore,
        source="compressed-tensors",
    )


def read_checkpoint_quant(config: Mapping[str, Any]) -> CheckpointQuant | None:
    """The checkpoint's quantization, or None for an unquantized config.json.

    An unknown `quant_method` is an error naming the ones understood (a guess would mis-count the weights).
    """
    q = quantization_config(config)
    if not q:
        return None
    if not isinstance(q, Mapping):
        shown = f"{type(q).__name__} {q!r:.40}"
        raise VramplanError(f"quantization_config is {shown}, not a JSON object: fix the config.json")
    try:
        return _read(q)
    except (TypeError, ValueError, IndexError) as error:  # a field of the wrong type or shape
        raise VramplanError(f"quantization_config is malformed ({error}): fix the config.json") from None


def _read(q: Mapping[str, Any]) -> CheckpointQuant:
    method = str(q.get("quant_method", "")).lower()
    not_converted = tuple(q.get("modules_to_not_convert") or ())
    if method == "awq":
        return CheckpointQuant(
            "awq",
            bits=_int(q, "bits", _int(q, "w_bit", 4)),
            group_size=_int(q, "group_size", _int(q, "q_group_size", 128)),
            zero_point=bool(q.get("zero_point", True)),
            stores_zeros=True,  # auto_awq.py registers qzeros for every AWQ linear
            unquantized=("lm_head", *not_converted),
            source=method,
        )
    if method in ("gptq", "gptq_marlin"):
        return CheckpointQuant(
            "gptq",
            bits=_int(q, "bits", 4),
            group_size=_int(q, "group_size", 128),
            zero_point=not bool(q.get("sym", True)),
            stores_zeros=True,  # loaded, then retired (kept) when symmetric: auto_gptq.py
            act_order=bool(q.get("desc_act", False)),
            unquantized=("lm_head", *not_converted),
            source=method,
        )
    if method in ("fp8", "fbgemm_fp8"):
        block = q.get("weight_block_size")
        strategy: FP8Strategy = "block" if block else "channel" if method == "fbgemm_fp8" else "tensor"
        return CheckpointQuant("fp8", bits=8, fp8_strategy=strategy,
                               block=(int(block[0]), int(block[1])) if block else (128, 128),
                               unquantized=("lm_head", *not_converted, *(q.get("ignored_layers") or ())),
                               source=method)  # fmt: skip
    if method == "mxfp4":
        return CheckpointQuant("mxfp4", bits=4, unquantized=not_converted or MXFP4_UNQUANTIZED_DEFAULT, source=method)
    if method in ("modelopt", "modelopt_fp4"):
        algo = str(q.get("quant_algo") or (q.get("quantization") or {}).get("quant_algo") or "").upper()
        fmt: QuantFormat = "fp8" if "FP8" in algo else "nvfp4"
        ignore = tuple(str(x) for x in q.get("exclude_modules") or ("lm_head",))
        return CheckpointQuant(fmt, bits=8 if fmt == "fp8" else 4, unquantized=ignore, source=method)
    if method == "compressed-tensors":
        return _compressed_tensors(q)
    if method == "aqlm":  # transformers AqlmConfig; aqlm 1.1.7 inference.py QuantizedLinear
        return CheckpointQuant(
            "aqlm",
            bits=2,
            aqlm_codebooks=(
                _int(q, "num_codebooks", 1),
                _int(q, "nbits_per_codebook", 16),
                _int(q, "out_group_size", 1),
                _int(q, "in_group_size", 8),
            ),
            unquantized=("lm_head", *(q.get("linear_weights_not_to_quantize") or ())),
            source=method,
        )
    if method == "bitsandbytes":
        four = bool(q.get("load_in_4bit", False))
        return CheckpointQuant(
            "bitsandbytes",
            bits=4 if four else 8,
            bnb_quant_type=str(q.get("bnb_4bit_quant_type", "nf4")),
            bnb_double_quant=bool(q.get("bnb_4bit_use_double_quant", False)),
            unquantized=("lm_head", *(q.get("llm_int8_skip_modules") or ())),
            source=method,
        )
    known = "awq, gptq, fp8, fbgemm_fp8, mxfp4, modelopt, compressed-tensors, bitsandbytes, aqlm"
    raise VramplanError(
        f"quantization_config quant_method {method!r} is not modelled (known: {known}); "
        "remove quantization_config to estimate the unquantized model"
    )


def assumed_from_name(words: str) -> CheckpointQuant | None:
    """The format a hub name's quantization words imply (`-AWQ`, `-GPTQ-Int4`, `-AQLM-2Bit-1x16`,
    `-bnb-nf4-bf16`, `-NVFP4`, `-FP8`), for a checkpoint whose config.json is not available offline; None when
    the words name no format vramplan counts (GGUF, EXL2, MLX). The defaults are those of the quantizers'
    configs: AWQ int4 g128 with zero points (AutoAWQ's `quant_config`), GPTQ int4 g128 symmetric without
    act-order (transformers GPTQConfig / AutoGPTQ defaults), AQLM with the `AxB` codebooks of its name and
    8-wide input groups (ISTA-DASLab's naming), bitsandbytes nf4 with double quantization for `nf4` / `bnb-4bit`
    names (hugging-quants' and axolotl-quants' BitsAndBytesConfig), FP8 per 128×128 block (DeepSeek / Qwen FP8
    checkpoints' `weight_block_size`), NVFP4 (ModelOpt)."""
    w = words.lower().split("-")
    if "awq" in w:
        return CheckpointQuant("awq", bits=4, group_size=128, zero_point=True, stores_zeros=True, source="awq")
    if "gptq" in w:
        bits = 8 if "int8" in w or "8bit" in w else 4
        return CheckpointQuant("gptq", bits=bits, group_size=128, stores_zeros=True, source="gptq")
    if "aqlm" in w:
        shape = next((x for x in w if "x" in x and all(p.isdigit() for p in x.split("x"))), "1x16")
        codebooks, nbits = (int(p) for p in shape.split("x"))
        return CheckpointQuant("aqlm", bits=2, aqlm_codebooks=(codebooks, nbits, 1, 8), source="aqlm")
    if "nvfp4" in w:
        return CheckpointQuant("nvfp4", bits=4, source="modelopt")
    if "fp8" in w:
        return CheckpointQuant("fp8", bits=8, fp8_strategy="block", source="fp8")
    if "bnb" in w or "nf4" in w:
        eight = "8bit" in w or "int8" in w
        return CheckpointQuant("bitsandbytes", bits=8 if eight else 4, bnb_quant_type="nf4",
                               bnb_double_quant=not eight, source="bitsandbytes")  # fmt: skip
    return None
