"""profiles/gpus.toml held to its header's rules, over every profile (not card by card): formats derived from the
compute capability, every alias resolving to its own GPU, each memory figure of a stated kind, a source per card."""

from __future__ import annotations

import re

import pytest

from vramplan.sources.profiles import _norm, find_gpu, load_gpus, profiles_dir
from vramplan.spec.gpu import capability_formats, capability_tuple

GPUS = load_gpus()
MIB = 1024**2
GIB = 1024**3


def _memory_comments() -> dict[str, str]:
    """The comment on each profile's memory_bytes line ("NVML 24564 MiB (...)" / "marketed 24 GiB")."""
    out, key = {}, None
    for line in (profiles_dir() / "gpus.toml").read_text().splitlines():
        if m := re.match(r"\[([\w-]+)\]", line):
            key = m.group(1)
        elif line.startswith("memory_bytes") and key is not None:
            out[key] = line.partition("#")[2].strip()
    return out


@pytest.mark.parametrize("key", sorted(GPUS))
def test_formats_follow_compute_capability(key):
    """bf16 from 8.0, fp8 from 8.9, fp4 from 10.0: as the file states them, from its compute capability."""
    g = GPUS[key]
    assert capability_tuple(g.compute_capability) is not None, g.compute_capability
    assert (g.bf16, g.fp8, g.fp4) == capability_formats(g.compute_capability)


def test_formats_nest():
    """No GPU has fp4 without fp8 or fp8 without bf16, and each format is present on some GPU and absent on
    another (the file spans Pascal to Blackwell)."""
    for g in GPUS.values():
        assert g.bf16 >= g.fp8 >= g.fp4, g.key
    for flag in ("bf16", "fp8", "fp4"):
        assert {getattr(g, flag) for g in GPUS.values()} == {True, False}, flag


def test_capability_formats_boundaries():
    # the first capability of each generation and the one before it
    assert capability_formats("7.5") == (False, False, False)  # Turing
    assert capability_formats("8.6") == (True, False, False)  # Ampere consumer
    assert capability_formats("8.9") == (True, True, False)  # Ada
    assert capability_formats("9.0") == (True, True, False)  # Hopper
    assert capability_formats("10.0") == (True, True, True)  # Blackwell data centre
    assert capability_formats("12.0") == (True, True, True)  # Blackwell consumer: 12 > 10 as integers, not text
    assert capability_formats("?") == (True, True, True)  # a local GPU whose driver did not say


def test_no_alias_names_two_gpus():
    """A key or alias (normalised as find_gpu does) belongs to one profile and is no other profile's NVML name;
    two profiles may share an NVML name (one name, two memory sizes), the first in the file taking it."""
    owner: dict[str, str] = {}
    for key, g in GPUS.items():
        for label in {_norm(x) for x in (key, *g.aliases)}:
            assert owner.setdefault(label, key) == key, f"{label!r}: {owner[label]} and {key}"
    for g in GPUS.values():
        name = _norm(g.name)
        if name in owner:
            assert _norm(GPUS[owner[name]].name) == name, f"{g.name!r} is an alias of {owner[name]}"


@pytest.mark.parametrize("key", sorted(GPUS))
def test_every_label_resolves(key):
    g = GPUS[key]
    for label in (key, *g.aliases):
        assert find_gpu(label).key == key, label
    shared = [k for k, other in GPUS.items() if other.name == g.name]
    assert find_gpu(g.name).key == shared[0]  # a shared NVML name goes to the first profile with it


TYPED = [("5070ti", "rtx-5070-ti"), ("b200", "b200"), ("pro6000", "rtx-pro-6000"), ("h20", "h20"),
         ("RTX 5060 Ti", "rtx-5060-ti-16gb"), ("gtx 1080 ti", "gtx-1080-ti"), ("NVIDIA H100 NVL", "h100-nvl"),
         ("NVIDIA B300 SXM6 AC", "b300")]  # fmt: skip


@pytest.mark.parametrize(("typed", "key"), TYPED)
def test_what_people_type(typed, key):
    assert find_gpu(typed).key == key


@pytest.mark.parametrize("key", sorted(GPUS))
def test_memory_is_of_a_stated_kind(key):
    """memory_bytes is an NVML total (a whole number of MiB, as nvidia-smi prints it) or a marketed size (a whole
    number of GiB), and its comment says which with the same figure."""
    g, comment = GPUS[key], _memory_comments()[key]
    if m := re.match(r"NVML (\d+) MiB", comment):
        assert g.memory_bytes == int(m.group(1)) * MIB
    else:
        m = re.match(r"marketed (\d+) GiB", comment)
        assert m, comment
        assert g.memory_bytes == int(m.group(1)) * GIB


@pytest.mark.parametrize("key", sorted(GPUS))
def test_source_and_cuda_total(key):
    g = GPUS[key]
    assert g.source.startswith("https://"), g.source
    if g.cuda_total_bytes is not None:
        # CUDA sees less than NVML (the driver keeps some), by under 1 GiB on every log so far
        assert 0 < g.memory_bytes - g.cuda_total_bytes < GIB
        assert g.cuda_total_source.startswith("https://")


@pytest.mark.parametrize("key", sorted(GPUS))
def test_serve_checkpoint_notes_follow_the_formats(key):
    """vLLM runs FP8 W8A8 where the GPU has fp8 tensor cores and NVFP4 / MXFP4 natively where it has fp4; below,
    weight-only through Marlin from compute capability 8.0, nothing below that (serve's checkpoint notes)."""
    from vramplan.spec.checkpoint_quant import CheckpointQuant
    from vramplan.spec.serve import checkpoint_notes

    g = GPUS[key]
    fp8_notes = " ".join(checkpoint_notes(CheckpointQuant(format="fp8", bits=8), g, "vllm"))
    nvfp4_notes = " ".join(checkpoint_notes(CheckpointQuant(format="nvfp4", group_size=16), g, "vllm"))
    assert ("no vLLM kernel" in fp8_notes) == (not g.bf16)
    assert ("Marlin" in fp8_notes) == (g.bf16 and not g.fp8)
    assert ("Marlin" in nvfp4_notes) == (g.bf16 and not g.fp4)


def test_gpus_json_carries_the_formats():
    from vramplan.report.profiles import gpus_json

    rows = {row["key"]: row for row in gpus_json(list(GPUS.values()))}
    for key, g in GPUS.items():
        assert (rows[key]["bf16"], rows[key]["fp8"], rows[key]["fp4"]) == (g.bf16, g.fp8, g.fp4)
