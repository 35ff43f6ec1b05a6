"""The distributed part of a training file: a `deepspeed:` JSON, `fsdp` / `fsdp_config`, an accelerate config.

Each reader returns `Distributed`: the keywords of `vramplan.spec.parallel.resolve_parallel` it sets
(strategy, offload, gpus, buckets, reshard_after_forward) and warnings. A DeepSpeed path is read when the
file exists beside the training config (or in a folder above it: axolotl's `deepspeed_configs/zero3.json`
is relative to the repository root); else the memory-relevant keys of the framework's shipped file of that
name (SHIPPED, each with its repository, commit and path) stand in for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vramplan.spec.parallel import (
    AUTO,
    REDUCE_BUCKET_SIZE,
    STAGE3_MAX_LIVE_PARAMETERS,
    STAGE3_PARAM_PERSISTENCE_THRESHOLD,
    STAGE3_PREFETCH_BUCKET_SIZE,
    ZeroBuckets,
)

# The `zero_optimization` keys that change memory, of the DeepSpeed files the frameworks ship, verbatim
# (other keys — fp16 loss scaling, monitor, "auto" batch sizes — are left out).
_AX = "axolotl-ai-cloud/axolotl"
_LF = "hiyouga/LLaMA-Factory"
_Z3_AUTO = {"reduce_bucket_size": AUTO, "stage3_prefetch_bucket_size": AUTO, "stage3_param_persistence_threshold": AUTO}
SHIPPED: dict[str, tuple[str, dict[str, Any]]] = {
    "zero1.json": (f"{_AX}@3fa91bdb deepspeed_configs/zero1.json", {"stage": 1, "overlap_comm": True}),
    "zero2.json": (
        f"{_AX}@58b1d3a4 deepspeed_configs/zero2.json",
        {"stage": 2, "offload_optimizer": {"device": "cpu"}, "overlap_comm": True},
    ),
    "zero3.json": (
        f"{_AX}@2341b2c0 deepspeed_configs/zero3.json",
        {"stage": 3, "overlap_comm": True, **_Z3_AUTO, "stage3_max_live_parameters": 0},
    ),
    "zero3_bf16.json": (
        f"{_AX}@1aaebb0d deepspeed_configs/zero3_bf16.json",
        {"stage": 3, "overlap_comm": True, "reduce_bucket_size": AUTO, "prefetch_bucket_size": AUTO,
         "param_persistence_threshold": AUTO, "max_live_parameters": 0},
    ),
    "zero3_bf16_cpuoffload_all.json": (
        f"{_AX}@1377ccc3 deepspeed_configs/zero3_bf16_cpuoffload_all.json",
        {"stage": 3, "offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "cpu"},
         "overlap_comm": True, **_Z3_AUTO, "max_live_parameters": 0},
    ),
    "zero3_bf16_cpuoffload_params.json": (
        f"{_AX}@1377ccc3 deepspeed_configs/zero3_bf16_cpuoffload_params.json",
        {"stage": 3, "offload_param": {"device": "cpu"}, "overlap_comm": True, **_Z3_AUTO, "max_live_parameters": 0},
    ),
    "ds_z0_config.json": (f"{_LF}@1d6e8b21 examples/deepspeed/ds_z0_config.json", {"stage": 0}),
    "ds_z2_config.json": (
        f"{_LF}@1d6e8b21 examples/deepspeed/ds_z2_config.json",
        {"stage": 2, "overlap_comm": False, "reduce_bucket_size": 5e8},
    ),
    "ds_z2_offload_config.json": (
        f"{_LF}@1d6e8b21 examples/deepspeed/ds_z2_offload_config.json",
        {"stage": 2, "offload_optimizer": {"device": "cpu"}, "overlap_comm": False, "reduce_bucket_size": 5e8},
    ),
    "ds_z3_config.json": (
        f"{_LF}@1d6e8b21 examples/deepspeed/ds_z3_config.json",
        {"stage": 3, "overlap_comm": False, **_Z3_AUTO, "stage3_max_live_parameters": 1e9},
    ),
    "ds_z3_offload_config.json": (
        f"{_LF}@1d6e8b21 examples/deepspeed/ds_z3_offload_config.json",
        {"stage": 3, "offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "cpu"},
         "overlap_comm": False, **_Z3_AUTO, "stage3_max_live_parameters": 1e9},
    ),
    "ds_z3_fp8_config.json": (
        f"{_LF}@45d4bde9 examples/deepspeed/ds_z3_fp8_config.json",
        {"stage": 3, "offload_optimizer": {"device": "cpu"}, "overlap_comm": False,
         "reduce_bucket_size": 12845056, "stage3_prefetch_bucket_size": 11560550,
         "stage3_param_persistence_threshold": 35840, "stage3_max_live_parameters": 1000000000},
    ),
}  # fmt: skip
# DeepSpeed accepts each stage-3 key with or without its `stage3_` prefix (runtime/zero/config.py: the field
# `max_live_parameters` has alias "stage3_max_live_parameters", populate_by_name).
_ALIASES = {
    "stage3_prefetch_bucket_size": "prefetch_bucket_size",
    "stage3_param_persistence_threshold": "param_persistence_threshold",
    "stage3_max_live_parameters": "max_live_parameters",
}


@dataclass(frozen=True, slots=True)
class Distributed:
    """resolve_parallel keywords a file sets, and what the reader wants the user to know."""

    settings: Mapping[str, Any]
    notes: tuple[str, ...] = ()


def _key(zero: Mapping[str, Any], name: str) -> Any:
    return zero.get(name, zero.get(_ALIASES.get(name, ""), None))


def _size(value: Any, default: int | str) -> int | str:
    if value is None:
        return default
    if value == AUTO:
        return AUTO
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default


def _device(section: Any) -> str:
    return str(section.get("device") or "none").lower() if isinstance(section, Mapping) else "none"


def from_deepspeed_json(ds: Mapping[str, Any], origin: str) -> Distributed:
    """A DeepSpeed config: `zero_optimization.stage`, offload_optimizer / offload_param devices, the bucket
    sizes (runtime/zero/config.py DeepSpeedZeroConfig; "auto" as transformers fills it, ZeroBuckets)."""
    zero = ds.get("zero_optimization") if isinstance(ds.get("zero_optimization"), Mapping) else ds
    stage = int(_size(zero.get("stage"), 0) if zero.get("stage") != AUTO else 0)
    notes: list[str] = []
    if stage not in (1, 2, 3):
        notes.append(f"DeepSpeed stage {stage} ({origin}) partitions nothing: planned as DDP, without the fp32 "
                     "master weights DeepSpeed's bf16 optimizer keeps")  # fmt: skip
        return Distributed({"strategy": "ddp"}, tuple(notes))
    opt_dev, par_dev = _device(zero.get("offload_optimizer")), _device(zero.get("offload_param"))
    offload = "params" if par_dev != "none" and stage == 3 else "optimizer" if opt_dev != "none" else "none"
    if par_dev != "none" and opt_dev == "none" and stage == 3:
        notes.append(f"{origin}: offload_param without offload_optimizer is planned as both offloaded "
                     "(--offload params): the optimizer states on the GPU are not counted")  # fmt: skip
    if "nvme" in (opt_dev, par_dev):
        notes.append(f"{origin}: NVMe offload planned as CPU offload (the host-RAM figure is then on disk)")
    if isinstance(ds.get("fp8"), Mapping) and ds["fp8"].get("enabled"):
        notes.append(f"{origin}: fp8 training planned in the bf16 / fp16 dtype of the estimate")
    overlap = zero.get("overlap_comm")
    buckets = ZeroBuckets(
        reduce_bucket_size=_size(zero.get("reduce_bucket_size"), REDUCE_BUCKET_SIZE),
        stage3_prefetch_bucket_size=_size(_key(zero, "stage3_prefetch_bucket_size"),
                                          STAGE3_PREFETCH_BUCKET_SIZE),
        stage3_param_persistence_threshold=_size(_key(zero, "stage3_param_persistence_threshold"),
                                                 STAGE3_PARAM_PERSISTENCE_THRESHOLD),
        stage3_max_live_parameters=int(_size(_key(zero, "stage3_max_live_parameters"),
                                             STAGE3_MAX_LIVE_PARAMETERS)),
        overlap_comm=None if overlap is None or overlap == AUTO else bool(overlap),
    )  # fmt: skip
    return Distributed({"strategy": f"zero{stage}", "offload": offload, "buckets": buckets}, tuple(notes))


def find_deepspeed_file(value: str, config_path: str) -> Path | None:
    """`value` as a path: absolute, or relative to the training config's folder or any folder above it."""
    p = Path(value)
    if p.is_absolute():
        return p if p.is_file() else None
    for folder in Path(config_path).resolve().parents:
        if (folder / p).is_file():
            return folder / p
    return None


def read_deepspeed(value: Any, config_path: str) -> Distributed | None:
    """A training file's `deepspeed:` value: an inline mapping, a JSON path found on disk, or the name of a
    file the frameworks ship (SHIPPED). None: a path that is neither (the caller lists it)."""
    if isinstance(value, Mapping):
        return from_deepspeed_json(value, "deepspeed")
    found = find_deepspeed_file(str(value), config_path)
    if found is not None:
        from vramplan.sources.files import parse_json, read_text

        data = parse_json(read_text(found, "DeepSpeed config"), str(found), "a DeepSpeed config")
        if isinstance(data, Mapping):
            return from_deepspeed_json(data, str(value))
    shipped = SHIPPED.get(Path(str(value)).name)
    if shipped is None:
        return None
    source, zero = shipped
    d = from_deepspeed_json({"zero_optimization": zero}, str(value))
    note = f"{value} is not on this machine: read as the file the framework ships ({source})"
    return Distributed(d.settings, (note, *d.notes))


_FSDP_STRATEGY = {
    "full_shard": ("fsdp", True), "1": ("fsdp", True),
    "shard_grad_op": ("fsdp", False), "2": ("fsdp", False),
    "hybrid_shard": ("fsdp-hybrid", True), "4": ("fsdp-hybrid", True),
    "_hybrid_shard_zero2": ("fsdp-hybrid", False), "5": ("fsdp-hybrid", False),
    "no_shard": ("ddp", True), "3": ("ddp", True),
}  # fmt: skip


def _flag(value: Any) -> bool:
    return str(value).lower() in ("true", "1", "yes") if not isinstance(value, bool) else value


def read_fsdp(fsdp: Any, fsdp_config: Any) -> Distributed:
    """HF TrainingArguments / axolotl `fsdp` (a list or space-separated string: full_shard, shard_grad_op,
    hybrid_shard, offload, auto_wrap) and `fsdp_config` (keys with or without the `fsdp_` prefix:
    sharding_strategy, offload_params, reshard_after_forward, version, activation_checkpointing), as
    accelerate's FullyShardedDataParallelPlugin reads them (utils/dataclasses.py @ 16cb6eb8). FSDP2
    (`fsdp_version: 2`) shards fully; its `reshard_after_forward: false` keeps layers unsharded to backward."""
    words = fsdp.split() if isinstance(fsdp, str) else [str(w) for w in fsdp] if isinstance(fsdp, list) else []
    words = [w.lower() for w in words]
    cfg = {str(k).removeprefix("fsdp_"): v for k, v in fsdp_config.items()} if isinstance(fsdp_config, Mapping) else {}
    notes: list[str] = []
    strategy, reshard = "fsdp", True
    for word in words:
        if word in _FSDP_STRATEGY:
            strategy, reshard = _FSDP_STRATEGY[word]
    if cfg.get("sharding_strategy") is not None:
        strategy, reshard = _FSDP_STRATEGY.get(str(cfg["sharding_strategy"]).lower(), (strategy, reshard))
    if cfg.get("reshard_after_forward") is not None:
        value = cfg["reshard_after_forward"]
        if isinstance(value, str) and value.lower() in _FSDP_STRATEGY:  # accelerate writes the FSDP1 strategy here
            strategy, reshard = _FSDP_STRATEGY[value.lower()]
        else:
            reshard = _flag(value)
    if strategy == "ddp":
        notes.append("FSDP NO_SHARD keeps every state on every GPU: planned as DDP")
    offload = "params" if "offload" in words or _flag(cfg.get("offload_params", False)) else "none"
    settings: dict[str, Any] = {"strategy": strategy, "offload": offload, "reshard_after_forward": reshard}
    return Distributed(settings, tuple(notes))


def fsdp_checkpointing(fsdp_config: Any) -> bool | None:
    """`fsdp_config.activation_checkpointing` (accelerate's FSDP activation checkpointing wraps each decoder
    layer, as gradient checkpointing does); None when absent."""
    if not isinstance(fsdp_config, Mapping):
        return None
    for key in ("activation_checkpointing", "fsdp_activation_checkpointing"):
        if fsdp_config.get(key) is not None:
            return _flag(fsdp_config[key])
    return None


def read_accelerate(data: Mapping[str, Any], path: str) -> Distributed:
    """An accelerate config YAML (`accelerate config`; commands/config/cluster.py): distributed_type
    MULTI_GPU / FSDP / DEEPSPEED, num_processes (GPUs, all machines), fsdp_config, deepspeed_config
    (zero_stage, offload_*_device, or deepspeed_config_file)."""
    kind = str(data.get("distributed_type") or "NO").upper()
    settings: dict[str, Any] = {}
    notes: list[str] = []
    if kind == "FSDP":
        d = read_fsdp(None, data.get("fsdp_config") or {})
        settings, notes = dict(d.settings), list(d.notes)
    elif kind == "DEEPSPEED":
        ds = data.get("deepspeed_config") if isinstance(data.get("deepspeed_config"), Mapping) else {}
        d = None
        if ds.get("deepspeed_config_file"):
            d = read_deepspeed(str(ds["deepspeed_config_file"]), path)
        if d is None:
            zero = {"stage": ds.get("zero_stage", 2),
                    "offload_optimizer": {"device": ds.get("offload_optimizer_device") or "none"},
                    "offload_param": {"device": ds.get("offload_param_device") or "none"}}  # fmt: skip
            d = from_deepspeed_json({"zero_optimization": zero}, path)
        settings, notes = dict(d.settings), list(d.notes)
    elif kind == "MULTI_GPU":
        settings = {"strategy": "ddp"}
    n = data.get("num_processes")
    if isinstance(n, int) and not isinstance(n, bool) and n >= 1:
        settings["gpus"] = n
    return Distributed(settings, tuple(notes))


__all__ = ["SHIPPED", "Distributed", "from_deepspeed_json", "read_accelerate", "read_deepspeed", "read_fsdp"]
