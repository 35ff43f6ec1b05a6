"""The published validation set: peak-memory figures others measured, mapped onto `estimate` inputs.

`vramplan/trust/data/validation/published-dev.jsonl` (every field kept, `source` and `quote` included) holds
one record per published number. `validate()` maps each record onto the HF-equivalent estimate inputs,
compares the estimate's quantity that the source measured (`max_memory_allocated` -> `peak_bytes`, reserved ->
`reserved_bytes`, nvidia-smi -> `device_bytes`), and summarises the absolute relative error by confidence
level over the headline records.

A record is *mapped* when the estimator can run on it, and in the *headline* when it is mapped and nothing
in it is outside what the estimator models. Every other record carries the reasons. No constant of the model
is fitted to these points (issue 8): they are for finding modelling mistakes.

Framework mapping (what the HF-equivalent settings are):
- lit-gpt `--precision bf16-true`: weights, LoRA adapters and their optimizer states in bf16, no autocast:
  `dtype=bf16, mixed_precision=no`. PEFT keeps adapters in fp32 unless `autocast_adapter_dtype=False`,
  and the estimator counts fp32 adapters (estimate/adapters.py): for r=8 on q,v of a 7B model that is
  4.2 M params · (2 B more weight + 2 B more grad + 4 B more Adam states) ≈ 34 MB, under 0.2 % of the peak.
  lit-gpt's bnb.* precision has no `prepare_model_for_kbit_training`: `kbit_prep=False`.
- lit-gpt `AdamW` is torch.optim.AdamW: `adamw_torch`; the PEFT README's HF Trainer default of 2023 too.
- LoRA target short names (`q`, `v`, `qkv`, `all`) become the model's `nn.Linear` names.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vramplan.errors import VramplanError

Quantity = Literal["peak_bytes", "reserved_bytes", "device_bytes"]

DATA_PATH = Path(__file__).resolve().parent / "data" / "validation" / "published-dev.jsonl"

# What the source measured -> the Breakdown property that estimates the same quantity.
MEASURE_KIND_QUANTITY: dict[str, Quantity] = {
    "max_memory_allocated": "peak_bytes",
    "max_memory_reserved": "reserved_bytes",
    "reserved": "reserved_bytes",
    "nvidia-smi": "device_bytes",
}
# Architectures whose lit-gpt model runs the ops transformers' does for memory (its Llama: the three LoRA records
# of Llama-2 7B / 13B within 0.5 %); another architecture's lit-gpt records are estimated and shown, not headlined
# (phi-1_5: +27 % at batch 1, +48 % at batch 4 against transformers' PhiForCausalLM walk)
LIT_GPT_AS_HF = frozenset({"llama"})
# Bytes per unit the source printed: GB = 10^9 (lit-gpt prints max_memory_allocated() / 1e9), GiB = 2^30.
UNIT_BYTES: dict[str, int] = {"GB": 10**9, "GiB": 2**30, "MB": 10**6, "MiB": 2**20}
# HF TrainingArguments.optim names for the optimizers the sources name.
OPTIMIZER_NAMES: dict[str, str] = {
    "adamw": "adamw_torch",  # torch.optim.AdamW (lit-gpt; HF Trainer default before adamw_torch_fused)
    "adamw_torch": "adamw_torch",
    "adamw_torch_fused": "adamw_torch_fused",
    "paged_adamw_32bit": "paged_adamw_32bit",
    "paged_adamw_8bit": "paged_adamw_8bit",
    "adamw_8bit": "adamw_8bit",
    "sgd": "sgd",
}
# Short LoRA target names -> candidate module names, first one the model has wins.
TARGET_NAMES: dict[str, tuple[tuple[str, ...], ...]] = {
    "q": (("q_proj",), ("qkv_proj",), ("query_key_value",)),
    "k": (("k_proj",), ("qkv_proj",), ("query_key_value",)),
    "v": (("v_proj",), ("qkv_proj",), ("query_key_value",)),
    "o": (("o_proj",), ("dense",)),
    "qkv": (("query_key_value",), ("qkv_proj",), ("q_proj", "k_proj", "v_proj")),
}
QUANT_DTYPES = {"nf4": "nf4", "fp4": "fp4", "int8": "int8"}
# Flags in the records that name something the estimator does not model.
FLAG_REASONS: dict[str, str] = {
    "encoder-decoder": "encoder-decoder architecture not modelled",
    "gptq_int4_not_nf4": "GPTQ int4 weights not modelled (bitsandbytes nf4/fp4/int8 only)",
    "deepspeed_zero2_1gpu": "DeepSpeed ZeRO-2 on one GPU (offload / bucket buffers) not modelled",
    "deepspeed_zero3_1gpu": "DeepSpeed ZeRO-3 on one GPU (offload / bucket buffers) not modelled",
    "modules_to_save_embeddings": "trainable embeddings (modules_to_save) not modelled",
    "oom": "OOM: the figure is a lower bound, not a point",
}


@dataclass(frozen=True, slots=True)
class Mapped:
    """A record's estimate inputs: a built-in model, a GPU key, `resolve_train` options, the quantity."""

    model: str
    gpu: str
    options: Mapping[str, Any]
    quantity: Quantity | None  # None when the source does not say what it measured


@dataclass(frozen=True, slots=True)
class Row:
    """One validation record: its mapping (or None), measured and estimated bytes, and exclusion reasons."""

    id: str
    source: str
    framework: str
    confidence: str
    config: str
    measure_kind: str
    measured_bytes: int
    mapped: Mapped | None
    estimated_bytes: int | None
    reasons: tuple[str, ...]  # empty = in the headline figure

    @property
    def headline(self) -> bool:
        return self.mapped is not None and self.estimated_bytes is not None and not self.reasons

    @property
    def error(self) -> float | None:
        """(estimated − measured) / measured; None when not compared."""
        if self.estimated_bytes is None or not self.measured_bytes:
            return None
        return (self.estimated_bytes - self.measured_bytes) / self.measured_bytes


@dataclass(frozen=True, slots=True)
class Summary:
    """Absolute relative error of the headline rows of one confidence level ("all" = every level)."""

    confidence: str
    n: int
    median_abs_error: float | None
    worst_abs_error: float | None


@dataclass(frozen=True, slots=True)
class Validation:
    rows: tuple[Row, ...]
    summaries: tuple[Summary, ...]
    path: str

    @property
    def exclusions(self) -> dict[str, int]:
        """Number of records per exclusion reason (a record can have several)."""
        out: dict[str, int] = {}
        for r in self.rows:
            for reason in r.reasons:
                out[reason] = out.get(reason, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


# Field types of a validation record (the shipped file's schema): a field may be absent or null; when given
# it has this type, so a hand-written --data file gets one error line naming the record and the field.
_RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "measured_gb": (int, float), "batch_size": (int,), "seq_len": (int,), "grad_accum": (int,),
    "lora_rank": (int,), "lora_alpha": (int, float), "num_gpus": (int,), "flags": (list,),
    "lora_targets": (list, str), "method": (str,), "optimizer": (str,), "gpu": (str,), "model": (str,),
    "base_dtype": (str,), "compute_dtype": (str,), "unit": (str,), "measure_kind": (str,),
}  # fmt: skip


def _check_record(d: Any, where: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise VramplanError(f"{where}: expected a JSON object (one record per line), got {type(d).__name__}")
    if "id" not in d or "measured_gb" not in d:
        raise VramplanError(f"{where}: a record needs 'id' and 'measured_gb'")
    if d["measured_gb"] is None:  # the one required figure: null is no measurement (it was a TypeError)
        raise VramplanError(f"{where}: measured_gb must be a number (non-negative), got null")
    for key, types in _RECORD_TYPES.items():
        value = d.get(key)
        bad_type = value is not None and (isinstance(value, bool) or not isinstance(value, types))
        negative = isinstance(value, (int, float)) and not isinstance(value, bool) and not 0 <= value < 1e15
        if bad_type or negative:
            kind = " or ".join("a number" if t in (int, float) else t.__name__ for t in types)
            raise VramplanError(f"{where}: {key} must be {kind} (non-negative), got {value!r:.40}")
    if not all(isinstance(f, str) for f in d.get("flags") or ()):
        raise VramplanError(f"{where}: flags must be a list of names")
    targets = d.get("lora_targets")
    if isinstance(targets, list) and not all(isinstance(t, str) for t in targets):  # [0] was a TypeError
        raise VramplanError(f"{where}: lora_targets must be a list of module names, got {targets!r:.40}")
    return d


def load_records(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The JSON objects of a validation .jsonl file (the shipped copy by default); a line that is not valid
    JSON, not UTF-8, or a record with a mistyped field is one error line naming it."""
    from vramplan.sources.files import MAX_DATA_BYTES, read_text

    p = Path(path) if path else DATA_PATH
    lines = read_text(p, "validation set (.jsonl)", MAX_DATA_BYTES).splitlines()
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise VramplanError(f"{p} line {n}: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise VramplanError(f"{p} line {n}: JSON nested too deeply") from None
        out.append(_check_record(d, f"{p} line {n}"))
    return out


def measured_bytes(value: float, unit: str) -> int:
    """A published figure in bytes: GB = 10^9 B, GiB = 2^30 B. `unspecified` is read as GB."""
    if unit == "unspecified":
        unit = "GB"
    if unit not in UNIT_BYTES:
        raise VramplanError(f"unknown unit {unit!r} in the validation set; expected one of {', '.join(UNIT_BYTES)}")
    return round(value * UNIT_BYTES[unit])


def _config_summary(r: Mapping[str, Any]) -> str:
    parts = [str(r.get("model", "?")).rsplit("/", 1)[-1], str(r.get("method"))]
    if r.get("base_dtype"):
        parts.append(str(r["base_dtype"]) + ("+dq" if r.get("double_quant") else ""))
    if r.get("lora_rank"):
        t = r.get("lora_targets")
        parts.append(f"r{r['lora_rank']}:{','.join(t) if isinstance(t, list) else t}")
    parts.append(f"b{r.get('batch_size')}×{r.get('seq_len')}")
    if r.get("grad_checkpointing"):
        parts.append("ckpt")
    if r.get("optimizer"):
        parts.append(str(r["optimizer"]))
    return " ".join(parts)


def _targets(model: Any, targets: Any) -> str | None:
    """PEFT target names on `model` for the record's short names, or None if one has no module."""
    if targets in ("all", ["all"], "all-linear"):
        return "all-linear"
    names = {lin.name for lin in model.linears}
    out: list[str] = []
    for short in targets if isinstance(targets, list) else [targets]:
        if short in names:
            out.append(short)
            continue
        hit = next((c for c in TARGET_NAMES.get(short, ()) if set(c) <= names), None)
        if hit is None:
            return None
        out.extend(n for n in hit if n not in out)
    return ",".join(out)


def map_record(r: Mapping[str, Any]) -> tuple[Mapped | None, tuple[str, ...]]:
    """The estimate inputs of one record (None if the estimator cannot run on it) and its exclusion reasons.

    Reasons that stop the mapping come first; a mapped record with reasons is estimated and shown but left
    out of the headline figure.
    """
    from vramplan.sources.profiles import builtin_for_repo, find_gpu, load_model
    from vramplan.spec import DTYPES

    reasons: list[str] = []
    if not r.get("is_measurement", False):
        reasons.append("not a measurement (is_measurement false)")
    if not r.get("config_complete", False):
        reasons.append("configuration incomplete (config_complete false)")
    reasons += [FLAG_REASONS.get(f, f"flag {f!r}") for f in r.get("flags", ())]
    if r.get("value_type", "point") != "point" and "oom" not in r.get("flags", ()):
        reasons.append(f"value is a {r.get('value_type')}, not a point")
    if (r.get("num_gpus") or 1) != 1:
        reasons.append("multi-GPU run")
    kind = str(r.get("measure_kind"))
    quantity = MEASURE_KIND_QUANTITY.get(kind)
    if quantity is None:
        reasons.append(f"measured quantity not stated (measure_kind {kind!r})")
    if r.get("unit") not in UNIT_BYTES:
        reasons.append(f"unit not stated ({r.get('unit')!r})")
    optim = OPTIMIZER_NAMES.get(str(r.get("optimizer")))
    if optim and optim.startswith("paged_") and quantity != "device_bytes":
        reasons.append("paged optimizer state invisible to the measurement (CUDA managed memory)")

    profile = builtin_for_repo(str(r.get("model", "")))
    stop: list[str] = []
    if profile is None:
        stop.append("architecture not in profiles")
    base, compute = r.get("base_dtype"), r.get("compute_dtype")
    if base not in (*DTYPES, *QUANT_DTYPES):  # a GPTQ checkpoint (Qwen-7B-Chat-Int4): its flag's reason
        flagged = "gptq_int4_not_nf4" in r.get("flags", ())
        stop.append(FLAG_REASONS["gptq_int4_not_nf4"] if flagged else f"base dtype {base!r} not modelled")
    if compute not in DTYPES:
        stop.append(f"compute dtype {compute!r} not modelled")
    if optim is None:
        stop.append(f"optimizer {r.get('optimizer')!r} not mapped")
    if not r.get("seq_len") or not r.get("batch_size"):
        stop.append("batch size or sequence length not stated")
    if not isinstance(r.get("method"), str):
        stop.append("method not stated")
    elif r["method"] in ("lora", "qlora") and not r.get("lora_rank"):
        stop.append("LoRA rank not stated")
    try:
        gpu = find_gpu(str(r.get("gpu"))).key
    except VramplanError:
        stop.append(f"GPU {r.get('gpu')!r} not in profiles")
    if stop:
        return None, tuple(stop + [x for x in reasons if x not in stop])

    model = load_model(profile)
    lit = str(r.get("framework", "")).startswith("lit-gpt")
    if lit and model.model_type not in LIT_GPT_AS_HF:
        # lit-gpt runs its own model code (litgpt/model.py GPT), not transformers': held to it for Llama only
        reasons.append(f"lit-gpt's own {model.model_type} implementation, not transformers' (not traced against it)")
    opts: dict[str, Any] = {
        "method": r["method"],
        "batch": int(r["batch_size"]),
        "seq": int(r["seq_len"]),
        "grad_accum": int(r.get("grad_accum") or 1),
        "grad_ckpt": bool(r.get("grad_checkpointing")),
        "optim": optim,
        "attn": r.get("attention_impl") or ("flash_attention_2" if r.get("flash_attention") else "sdpa"),
    }
    if base in QUANT_DTYPES:
        opts.update(quant=QUANT_DTYPES[base], dtype=compute, double_quant=bool(r.get("double_quant")))
        opts["kbit_prep"] = not lit  # lit-gpt's bnb.* precision has no prepare_model_for_kbit_training
    else:
        opts["dtype"] = base
    # bf16-true (lit-gpt) / fp32 (PEFT README): no autocast; an HF run with a half compute dtype autocasts.
    opts["mixed_precision"] = "no" if lit or compute == base or compute == "fp32" else compute
    if r["method"] in ("lora", "qlora"):
        target = _targets(model, r.get("lora_targets"))
        if target is None:
            return None, (f"LoRA targets {r.get('lora_targets')!r} have no module in {profile}", *reasons)
        opts.update(lora_rank=int(r["lora_rank"]), lora_alpha=int(r.get("lora_alpha") or 2 * r["lora_rank"]) or 1)
        opts["lora_target"] = target
    return Mapped(model=profile, gpu=gpu, options=opts, quantity=quantity), tuple(reasons)


def _row(r: Mapping[str, Any]) -> Row:
    from vramplan.api import estimate

    try:
        mapped, reasons = map_record(r)
        est = None
        if mapped is not None:
            b = estimate(mapped.model, gpu=mapped.gpu, **mapped.options)
            est = getattr(b, mapped.quantity) if mapped.quantity else None
    except VramplanError as e:
        raise VramplanError(f"validation record {str(r['id'])[:60]!r}: {e}") from None
    return Row(
        id=str(r["id"]),
        source=str(r.get("source", "")),
        framework=str(r.get("framework", "")),
        confidence=str(r.get("confidence", "unknown")),
        config=_config_summary(r),
        measure_kind=str(r.get("measure_kind")),
        measured_bytes=measured_bytes(float(r["measured_gb"]), str(r.get("unit", "GB"))),
        mapped=mapped,
        estimated_bytes=est,
        reasons=reasons,
    )


def _summary(confidence: str, rows: list[Row]) -> Summary:
    errs = [abs(r.error) for r in rows if r.error is not None]
    if not errs:
        return Summary(confidence, 0, None, None)
    return Summary(confidence, len(errs), statistics.median(errs), max(errs))


def validate(path: str | Path | None = None) -> Validation:
    """Estimate every record of the validation set; summarise the headline rows by confidence level."""
    rows = tuple(_row(r) for r in load_records(path))
    head = [r for r in rows if r.headline]
    levels = sorted({r.confidence for r in head})
    sums = tuple(_summary(c, [r for r in head if r.confidence == c]) for c in levels)
    return Validation(rows=rows, summaries=(*sums, _summary("all", head)), path=str(path or DATA_PATH))


__all__ = ["Mapped", "Row", "Summary", "Validation", "load_records", "map_record", "validate"]
