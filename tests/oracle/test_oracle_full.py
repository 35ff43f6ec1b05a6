"""Full-size models traced without memory: the real HF / PEFT / bitsandbytes code on fake tensors (LoRA, full)
or the meta device (QLoRA: bitsandbytes' ops have meta kernels), held to the same tolerances as the tiny grid,
with the issue's 4 MiB floor for small components."""

from __future__ import annotations

import pytest

from tests.oracle.conftest import check
from tests.oracle.grid import FULL_SIZE
from vramplan.sources.profiles import load_model
from vramplan.spec import model_spec_from_config, resolve_train

# each runs in 4-13 s here (gemma-3-1b: 85-95 s, qwen3-30b-a3b: 85 s, falcon-h1-1.5b: 120-220 s, gpt-oss-20b:
# 62-96 s, qwen3.5-4b: 160 s, qwen3.5-35b-a3b 4 layers: 50-80 s)
SLOW: set[str] = {
    "gemma-3-1b qlora seq1024",
    "qwen3-30b-a3b qlora seq512",
    "falcon-h1-1.5b lora seq512",
    "gpt-oss-20b lora seq1024",
    "gpt-oss-20b qlora seq1024",
    "qwen3.5-4b lora seq512",
    "qwen3.5-4b lora seq512 ckpt",
    "qwen3.5-35b-a3b 4 layers lora seq512",
    "qwen3.5-35b-a3b 4 layers qlora seq512",
    "qwen3.5-35b-a3b 4 layers qlora seq512 no-ckpt",
}


KNOWN_GAPS: dict[str, str] = {  # label -> reason, for a strict xfail
    # the checkpointed forward inside the top layer: traced 39.3 MB above the walk's referenced set (forward
    # phase -3.17 %); the step's peak, the top layer's recompute, +1.85 %
    "olmo-2-7b 4 layers qlora seq2048": "checkpointed OLMo 2 QLoRA forward inside a layer: -3.17 % (peak +1.85 %)",
}


def _param(k: str):
    marks = [pytest.mark.slow] if k in SLOW else []
    if k in KNOWN_GAPS:
        marks.append(pytest.mark.xfail(reason=KNOWN_GAPS[k], strict=True))
    return pytest.param(k, marks=marks)


@pytest.mark.parametrize("label", [_param(k) for k in FULL_SIZE])  # fmt: skip
def test_full_size(label):
    name, device, opts, *changes = FULL_SIZE[label]
    m = load_model(name)
    if changes:  # a truncated model: the profile's config.json with fewer layers
        m = model_spec_from_config({**m.config, **changes[0]}, f"{name} ({changes[0]})")
    check(m, resolve_train(m, **opts), device, abs_tol=4 * 1024**2)
