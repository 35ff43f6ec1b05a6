"""The GPU a plan is for: its profile (gpus.toml, NVML) and the overheads this user's machine shows on it."""

from __future__ import annotations

from dataclasses import dataclass, field

from vramplan.spec.overheads import Overheads

MIB = 1024**2
# NVML total − CUDA-visible total (torch.cuda.mem_get_info()[1], vLLM's total_gpu_memory) where a profile has no
# measured figure: RTX 3090 24576 MiB vs 23.58 GiB (vllm-project/vllm#10517), H100 80GB 81559 MiB vs 79.22 GiB
# (#10511): 430–438 MiB the driver keeps on Ampere/Hopper. The larger, rounded up, so a plan is not optimistic.
CUDA_RESERVED_FALLBACK_BYTES = 448 * MIB

# The first compute capability with each tensor-core format, from NVIDIA's CUDA GPUs list and architecture
# whitepapers: bf16 from Ampere (8.0), fp8 from Ada / Hopper (8.9), fp4 from Blackwell (10.0; 12.x included).
BF16_MIN_CAPABILITY = (8, 0)
FP8_MIN_CAPABILITY = (8, 9)
FP4_MIN_CAPABILITY = (10, 0)


def capability_tuple(compute_capability: str) -> tuple[int, int] | None:
    """'8.9' -> (8, 9); None when the driver did not say ('?') or the text is not major.minor."""
    major, _, minor = compute_capability.partition(".")
    if not (major.isdigit() and minor.isdigit()):
        return None
    return int(major), int(minor)


def capability_formats(compute_capability: str) -> tuple[bool, bool, bool]:
    """(bf16, fp8, fp4) for a compute capability; all True when it is unknown (a local GPU whose driver did not
    report it: the plan assumes the newer card rather than refusing)."""
    cc = capability_tuple(compute_capability)
    if cc is None:
        return True, True, True
    return cc >= BF16_MIN_CAPABILITY, cc >= FP8_MIN_CAPABILITY, cc >= FP4_MIN_CAPABILITY


@dataclass(frozen=True, slots=True)
class GpuProfile:
    """A GPU as NVML reports it: total memory in bytes, compute capability, bf16 / fp8 / fp4 tensor-core support
    (`capability_formats` of the compute capability; gpus.toml states them and a test holds them to it).

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
    cuda_total_bytes: int | None = None  # torch.cuda.mem_get_info()[1] where a log shows it (gpus.toml)
    cuda_total_source: str = ""
    fp8: bool = False  # FP8 tensor cores: compute capability >= 8.9
    fp4: bool = False  # FP4 tensor cores: compute capability >= 10.0

    @property
    def cuda_visible_bytes(self) -> int:
        """What CUDA reports as the device's total (vLLM budgets from it): measured, else NVML total less
        CUDA_RESERVED_FALLBACK_BYTES."""
        if self.cuda_total_bytes is not None:
            return self.cuda_total_bytes
        return self.memory_bytes - CUDA_RESERVED_FALLBACK_BYTES


def with_cuda_total(gpu: GpuProfile | None, gib: float) -> GpuProfile:
    """`gpu` with the CUDA-visible total the user read (`--gpu-memory-gib`, vLLM's total_gpu_memory); without a
    GPU, an unnamed one of that size (bf16 without fp8, compute capability 8.0, NVML total = the same figure)."""
    from dataclasses import replace

    from vramplan.errors import VramplanError

    if not gib > 0:
        raise VramplanError(f"--gpu-memory-gib must be a positive number of GiB, got {gib!r}")
    total = int(gib * 1024**3)
    if gpu is None:
        return GpuProfile(key="custom", name=f"GPU with {gib:g} GiB", memory_bytes=total, compute_capability="8.0",
                          bf16=True, aliases=(), source="--gpu-memory-gib", cuda_total_bytes=total)  # fmt: skip
    return replace(gpu, cuda_total_bytes=total, memory_bytes=max(gpu.memory_bytes, total))
