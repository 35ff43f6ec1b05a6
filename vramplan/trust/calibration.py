"""Calibration from the user's own GPU: a JSON-lines store of measured runs and the figures derived from it.

The store is `platformdirs.user_data_dir("vramplan")/runs.jsonl`, or the `VRAMPLAN_STORE` environment
variable, or `--store PATH`. `vramplan measure ... --save` calls `append_run` once per run; one JSON object
per line, written with this schema (`RunRecord`, schema 1):

    schema            1
    time              ISO 8601 UTC time of the run
    gpu_name          NVML name, "NVIDIA A100-SXM4-40GB"
    gpu_key           its gpus.toml key ("a100-40gb"), or null when not in profiles
    driver            NVIDIA driver version (nvmlSystemGetDriverVersion)
    cuda              torch.version.cuda
    versions          {"torch": ..., "transformers": ..., "peft": ..., "bitsandbytes": ..., "vramplan": ...}
    model             model name as resolved
    inputs            the resolved TrainSpec (`TrainSpec.as_dict()`, tuples as lists)
    allocated_bytes   torch.cuda.max_memory_allocated over the step
    reserved_bytes    torch.cuda.max_memory_reserved over the step
    device_bytes      device memory used by the process at the peak (NVML), or null
    tracker           measured bytes per Breakdown component at the peak {"weights": ..., ...}
    estimate          the estimate at the time: {"peak_bytes", "reserved_bytes", "device_bytes"}, or null

Derived per GPU (`derive`): CUDA context = device − reserved (median over runs), allocator ratio =
reserved / allocated − 1 (median), residual = |estimated − measured| / measured of the device total (tensor
peak when a run has no device figure); the error band is the largest residual, or its 90th percentile
(nearest rank) from 10 runs on. Nothing is fitted beyond these three physical quantities.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

from vramplan.errors import VramplanError
from vramplan.report.common import warn
from vramplan.spec.gpu import GpuProfile
from vramplan.spec.overheads import Calibration, Overheads

STORE_ENV = "VRAMPLAN_STORE"
STORE_FILE = "runs.jsonl"
SCHEMA = 1
P90_MIN_RUNS = 10  # from this many residuals on, the band is their 90th percentile instead of their max


MAX_RECORD_BYTES = 2**50  # 1 PiB: above any GPU's memory; a larger figure is a corrupt record


def _is_bytes(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_RECORD_BYTES


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:39] + "…"
        raise VramplanError(f"{key} must be {expected}, got {shown}")


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One measured run, as stored (schema in the module docstring)."""

    gpu_name: str
    model: str
    allocated_bytes: int
    reserved_bytes: int
    device_bytes: int | None = None
    gpu_key: str | None = None
    driver: str | None = None
    cuda: str | None = None
    versions: Mapping[str, str] = field(default_factory=dict)
    inputs: Mapping[str, Any] = field(default_factory=dict)
    tracker: Mapping[str, int] = field(default_factory=dict)
    estimate: Mapping[str, int] | None = None
    time: str = ""
    schema: int = SCHEMA

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RunRecord:
        """A record from its stored mapping, every field type- and range-checked: a record that is not what
        `measure --save` writes raises VramplanError naming the field (read_runs skips it)."""
        missing = [k for k in ("gpu_name", "model", "allocated_bytes", "reserved_bytes") if k not in d]
        if missing:
            raise VramplanError(f"run record lacks {', '.join(missing)}")
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("gpu_name", "model"):
            _check(isinstance(known[key], str) and known[key], key, known[key], "a non-empty string")
        for key in ("gpu_key", "driver", "cuda"):
            _check(known.get(key) is None or isinstance(known[key], str), key, known.get(key), "a string or null")
        for key in ("allocated_bytes", "reserved_bytes", "device_bytes"):
            if key != "device_bytes" or known.get(key) is not None:
                _check(_is_bytes(known[key]), key, known[key], f"an integer from 0 to {MAX_RECORD_BYTES:,}")
        _check(known["reserved_bytes"] >= known["allocated_bytes"], "reserved_bytes", known["reserved_bytes"],
               "at least allocated_bytes (torch reserves what it allocates)")  # fmt: skip
        for key in ("versions", "inputs"):
            _check(isinstance(known.get(key, {}), Mapping), key, known.get(key), "an object")
        for key in ("tracker", "estimate"):
            value = known.get(key) or {}
            _check(isinstance(value, Mapping) and all(map(_is_bytes, value.values())), key, value,
                   "an object of byte counts")  # fmt: skip
        return cls(**known)

    @property
    def key(self) -> str:
        """The GPU this run calibrates: its gpus.toml key, else its NVML name."""
        return self.gpu_key or self.gpu_name


def default_store() -> Path:
    """`$VRAMPLAN_STORE`, else runs.jsonl under platformdirs.user_data_dir("vramplan")."""
    env = os.environ.get(STORE_ENV)
    if env:
        return Path(env)
    from platformdirs import user_data_dir

    return Path(user_data_dir("vramplan")) / STORE_FILE


def append_run(record: RunRecord | Mapping[str, Any], path: str | Path | None = None) -> Path:
    """Append one run to the store (created with its folder if absent); returns the store's path.

    `record`: a RunRecord or a mapping with its fields (schema in the module docstring); `time` is filled in.
    """
    from datetime import datetime, timezone  # writing a run only: estimates do not load datetime

    rec = record if isinstance(record, RunRecord) else RunRecord.from_json(record)
    d = asdict(rec)
    d["time"] = d["time"] or datetime.now(timezone.utc).isoformat(timespec="seconds")
    p = Path(path) if path else default_store()
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with p.open("a", encoding="utf-8") as f:
            f.write(json.dumps(d, default=list) + "\n")
    except OSError as e:
        raise VramplanError(f"cannot write calibration store {p}: {e.strerror}; pass --store PATH") from None
    return p


def read_runs(path: str | Path | None = None) -> list[RunRecord]:
    """Every run in the store ([] if there is none). A line that is not a run record (corrupt JSON, a field
    of the wrong type or out of range) is skipped with one `warning:` line on stderr naming it; the other
    runs are read, so one bad line never breaks a command."""
    p = Path(path) if path else default_store()
    try:
        if not p.is_file():
            return []
        text = p.read_text(encoding="utf-8", errors="replace")
    except (OSError, ValueError) as e:
        warn(f"calibration store {p} not read ({getattr(e, 'strerror', None) or e})")
        return []
    runs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            if not isinstance(d, dict):
                raise VramplanError("not a JSON object")
            runs.append(RunRecord.from_json(d))
        except (json.JSONDecodeError, VramplanError, TypeError, RecursionError) as e:
            warn(f"{p} line {n}: skipped, not a run record ({e})")
    return runs


def _residual(r: RunRecord) -> float | None:
    if not r.estimate:
        return None
    for measured, est_key in ((r.device_bytes, "device_bytes"), (r.allocated_bytes, "peak_bytes")):
        est = r.estimate.get(est_key)
        if measured and est is not None:
            return abs(est - measured) / measured
    return None


def _band(residuals: list[float]) -> float | None:
    if not residuals:
        return None
    if len(residuals) < P90_MIN_RUNS:
        return max(residuals)
    s = sorted(residuals)
    return s[math.ceil(0.9 * len(s)) - 1]


def derive_from(runs: list[RunRecord], gpu_key: str) -> Calibration | None:
    """The calibration of `gpu_key` from these runs, or None when none of them ran on it."""
    mine = [r for r in runs if r.key == gpu_key]
    if not mine:
        return None
    import statistics  # only with runs stored: statistics loads fractions and decimal

    ctx = [r.device_bytes - r.reserved_bytes for r in mine if r.device_bytes and r.device_bytes >= r.reserved_bytes]
    ratio = [r.reserved_bytes / r.allocated_bytes - 1 for r in mine if r.allocated_bytes > 0]
    res = [x for x in map(_residual, mine) if x is not None]
    return Calibration(
        gpu_key=gpu_key,
        n_runs=len(mine),
        cuda_context_bytes=int(statistics.median(ctx)) if ctx else None,
        allocator_ratio=statistics.median(ratio) if ratio else None,
        residual_band=_band(res),
    )


@cache
def _cached_runs(path: str, mtime_ns: int, size: int) -> tuple[RunRecord, ...]:
    return tuple(read_runs(path))


def derive(gpu_key: str | None, path: str | Path | None = None) -> Calibration | None:
    """The calibration of `gpu_key` from the store, or None (no store, no run on that GPU, or no GPU).

    The store is re-read only when its modification time or size changes.
    """
    if gpu_key is None:
        return None
    p = Path(path) if path else default_store()
    try:
        st = p.stat()
    except OSError:
        return None
    return derive_from(list(_cached_runs(str(p), st.st_mtime_ns, st.st_size)), gpu_key)


def calibrate(gpu: GpuProfile | None, path: str | Path | None = None) -> GpuProfile | None:
    """`gpu` with the overheads of its stored calibration (`derive`), or the documented defaults when the store
    has no run on it. Commands call this once, right after resolving their GPU: it is the only reader of the
    store on the estimate path, so every estimate of the command uses the same figures."""
    if gpu is None:
        return None
    return replace(gpu, overheads=Overheads.calibrated(derive(gpu.key, path)))


def calibrations(runs: list[RunRecord]) -> list[Calibration]:
    """One calibration per GPU in these runs."""
    keys = sorted({r.key for r in runs})
    return [c for c in (derive_from(runs, k) for k in keys) if c is not None]


__all__ = [
    "Calibration",
    "RunRecord",
    "append_run",
    "calibrate",
    "calibrations",
    "default_store",
    "derive",
    "read_runs",
]
