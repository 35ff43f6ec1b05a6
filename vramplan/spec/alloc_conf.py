"""PYTORCH_CUDA_ALLOC_CONF as a typed value: the caching-allocator settings vramplan models.

Parsed as torch parses the environment variable (`c10/cuda/CUDAAllocatorConfig.cpp` `parseArgs`): comma-separated
`key:value` pairs. Modelled keys: `expandable_segments` (True/False), `max_split_size_mb` (MiB, > 1),
`roundup_power2_divisions` (one power of two for every size interval; torch also takes a per-interval list,
not modelled). Keys torch accepts that do not change what a single-stream training step reserves
(`garbage_collection_threshold` without a memory fraction, `pinned_*`, `release_lock_on_cudamalloc`) are
accepted and ignored; any other key is an error, as in torch.

Pure Python: the estimator and the replay (`vramplan.allocator.model`) both read it.
"""

from __future__ import annotations

from typing import NamedTuple

from vramplan.errors import VramplanError

MIB = 1024**2
_IGNORED = frozenset(
    {
        "garbage_collection_threshold",
        "pinned_use_cuda_host_register",
        "pinned_num_register_threads",
        "pinned_use_background_threads",
        "release_lock_on_cudamalloc",
        "backend",
    }
)


class AllocatorConfig(NamedTuple):
    """The caching allocator's settings; the defaults are torch's (`CUDAAllocatorConfig()` constructor).

    `max_split_size_bytes` None is torch's `std::numeric_limits<size_t>::max()` (no limit);
    `roundup_power2_divisions` 0 is torch's default (round to 512 B only).
    """

    expandable_segments: bool = False
    max_split_size_bytes: int | None = None
    roundup_power2_divisions: int = 0

    @property
    def text(self) -> str:
        """The PYTORCH_CUDA_ALLOC_CONF string that sets these (empty for torch's defaults)."""
        parts = []
        if self.expandable_segments:
            parts.append("expandable_segments:True")
        if self.max_split_size_bytes is not None:
            parts.append(f"max_split_size_mb:{self.max_split_size_bytes // MIB}")
        if self.roundup_power2_divisions:
            parts.append(f"roundup_power2_divisions:{self.roundup_power2_divisions}")
        return ",".join(parts)

    @property
    def label(self) -> str:
        return self.text or "default"


DEFAULT = AllocatorConfig()
EXPANDABLE = AllocatorConfig(expandable_segments=True)


def parse_alloc_conf(text: str | None) -> AllocatorConfig:
    """`"expandable_segments:True,max_split_size_mb:128"` → AllocatorConfig; None or "" → torch's defaults."""
    if not text:
        return DEFAULT
    expandable, max_split, divisions = False, None, 0
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise VramplanError(f"--alloc-conf: {item!r} is not key:value (e.g. expandable_segments:True)")
        if key == "expandable_segments":
            if value not in ("True", "False"):
                raise VramplanError(f"--alloc-conf: expandable_segments takes True or False, got {value!r}")
            expandable = value == "True"
        elif key == "max_split_size_mb":
            if not value.isdigit() or int(value) <= 1:
                # torch: "CachingAllocator option max_split_size_mb too small, must be > 1"
                raise VramplanError(f"--alloc-conf: max_split_size_mb takes a whole number of MiB > 1, got {value!r}")
            max_split = int(value) * MIB
        elif key == "roundup_power2_divisions":
            if not value.isdigit() or (int(value) & (int(value) - 1)) != 0:
                raise VramplanError(
                    f"--alloc-conf: roundup_power2_divisions takes one power of two (e.g. 4), got {value!r} "
                    "(the per-interval list form is not modelled)"
                )
            divisions = int(value)
        elif key in _IGNORED:
            continue
        else:
            raise VramplanError(
                f"--alloc-conf: unknown key {key!r}; modelled: expandable_segments, max_split_size_mb, "
                "roundup_power2_divisions"
            )
    return AllocatorConfig(expandable, max_split, divisions)
