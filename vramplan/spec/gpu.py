"""The GPU a plan is for: its profile (gpus.toml, NVML) and the overheads this user's machine shows on it."""

from __future__ import annotations

from dataclasses import dataclass, field

from vramplan.estimator.overhead import Overheads


@dataclass(frozen=True, slots=True)
class GpuProfile:
    """A GPU as NVML reports it: total memory in bytes, compute capability, bf16 support.

    `overheads`: CUDA context, allocator slack and error band on this GPU: the documented defaults as loaded
    from profiles/, replaced by a stored calibration when a command resolves its GPU
    (`vramplan.trust.calibration.calibrate`).
    """

    key: str
    name: str
    memory_bytes: int
    compute_capability: str
    bf16: bool
    aliases: tuple[str, ...]
    source: str
    overheads: Overheads = field(default_factory=Overheads)
