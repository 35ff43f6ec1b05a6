"""The suite passes unchanged on a machine with a GPU.

`--pretend-cuda` (tests/conftest.py) makes `torch.cuda.is_available()` True for a whole pytest run. A test that
assumes this machine has no GPU, or lets the code pick the device, then takes the CUDA path here as it would
there, and fails on this CPU build: tests of the CPU-only path patch CUDA away themselves (`no_cuda`), tests
that need a GPU are marked `gpu`.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


def _pytest(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--pretend-cuda", *args]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, check=False)


def test_pretend_cuda_reaches_the_device_choice() -> None:
    """The switch works: under it, a test asserting there is no CUDA device fails."""
    probe = "tests/test_gpu_independence.py::test_probe_sees_no_cuda"
    r = _pytest(probe, "-m", "")
    assert r.returncode == 1, r.stdout[-2000:]
    assert "1 failed" in r.stdout


@pytest.mark.skipif("--pretend-cuda" not in sys.argv, reason="a probe for test_pretend_cuda_reaches_the_device_choice")
def test_probe_sees_no_cuda() -> None:
    import torch

    assert not torch.cuda.is_available()


def _device_modules() -> list[str]:
    """The test modules that touch the device choice: every one that mentions CUDA."""
    here = REPO_ROOT / "tests"
    return sorted(
        str(p.relative_to(REPO_ROOT))
        for p in here.rglob("test_*.py")
        if p.name != "test_gpu_independence.py" and "cuda" in p.read_text().lower()
    )


def test_device_tests_pass_as_on_a_gpu_machine() -> None:
    """The CUDA-related tests of every module that mentions CUDA, as on a GPU machine (about 20 s)."""
    modules = _device_modules()
    assert "tests/measure/test_harness.py" in modules
    r = _pytest(*modules, "-k", "cuda or nvml or device")
    assert r.returncode == 0, r.stdout[-4000:]


@pytest.mark.slow
def test_whole_suite_passes_as_on_a_gpu_machine() -> None:
    """Every default test (not slow, not gpu) under --pretend-cuda (minutes)."""
    r = _pytest("--deselect", "tests/test_gpu_independence.py")
    assert r.returncode == 0, r.stdout[-4000:]
