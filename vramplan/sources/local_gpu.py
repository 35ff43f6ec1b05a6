"""The GPU in this machine, through NVML (nvidia-ml-py's `pynvml`): name, total and free memory."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from vramplan.errors import VramplanError
from vramplan.sources.profiles import _gpu_index, _norm, load_gpus
from vramplan.spec.gpu import GpuProfile, capability_formats


@dataclass(frozen=True, slots=True)
class LocalGpu:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    used_bytes: int
    driver: str
    compute_capability: str = "?"  # "8.6"; "?" when the driver does not report it

    @property
    def profile_key(self) -> str | None:
        """The gpus.toml profile with this NVML name, if any."""
        return _gpu_index().get(_norm(self.name))


def query_local_gpus() -> list[LocalGpu]:
    """Every GPU NVML sees; raises VramplanError when NVML or a driver is absent."""
    try:
        import pynvml
    except ImportError:  # pragma: no cover - nvidia-ml-py is a dependency
        raise VramplanError("nvidia-ml-py is not installed: pip install nvidia-ml-py") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        raise VramplanError(f"no NVIDIA GPU or driver found (NVML: {e}); pass --gpu NAME instead") from None
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            try:
                cc = "{}.{}".format(*pynvml.nvmlDeviceGetCudaComputeCapability(h))
            except pynvml.NVMLError:
                cc = "?"
            out.append(
                LocalGpu(
                    index=i,
                    name=name.decode() if isinstance(name, bytes) else name,
                    total_bytes=int(mem.total),
                    free_bytes=int(mem.free),
                    used_bytes=int(mem.used),
                    driver=driver.decode() if isinstance(driver, bytes) else driver,
                    compute_capability=cc,
                )
            )
        return out
    except pynvml.NVMLError as e:
        raise VramplanError(f"NVML could not read the GPUs ({e}); pass --gpu NAME instead") from None
    finally:
        pynvml.nvmlShutdown()


def local_gpu_profile(index: int = 0) -> GpuProfile:
    """The profile of local GPU `index`, with memory = what is free now (a desktop session uses some)."""
    gpus = query_local_gpus()
    if not gpus:
        raise VramplanError("NVML sees no GPU in this machine; pass --gpu NAME instead")
    if not 0 <= index < len(gpus):
        raise VramplanError(f"no local GPU {index}: NVML sees {len(gpus)} (vramplan gpus --local)")
    lg = gpus[index]
    key = lg.profile_key
    if key is not None:
        base = load_gpus()[key]
        return dataclasses.replace(base, memory_bytes=lg.free_bytes, name=f"{lg.name} (free now)")
    bf16, fp8, fp4 = capability_formats(lg.compute_capability)  # all three when the driver did not say
    return GpuProfile(
        key="local",
        name=f"{lg.name} (free now)",
        memory_bytes=lg.free_bytes,
        compute_capability=lg.compute_capability,
        bf16=bf16,
        aliases=(),
        source="NVML",
        fp8=fp8,
        fp4=fp4,
    )
