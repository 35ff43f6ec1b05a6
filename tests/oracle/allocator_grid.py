"""The allocator oracle grid: method × gradient checkpointing × batch·seq × family, traced at full size on
fake / meta tensors and replayed through the caching-allocator model (benchmarks/allocator.py --grid writes
tests/data/allocator/grid.jsonl from it). ISSUE_CONFIGS are the configurations issue 19 quotes figures for.
"""

from __future__ import annotations

FAMILIES = ("llama-3.2-1b", "qwen2.5-1.5b", "llama-2-7b", "mistral-7b")
SMALL = ("llama-3.2-1b", "qwen2.5-1.5b")  # full fine-tuning only where the trace stays quick
SHAPES = ((1, 512), (1, 2048), (4, 2048))  # (batch, seq)


def _grid() -> list[tuple[str, dict]]:
    rows = []
    for name in FAMILIES:
        methods = ("lora", "qlora", "full") if name in SMALL else ("lora", "qlora")
        for method in methods:
            for grad_ckpt in (False, True):
                for batch, seq in SHAPES:
                    rows.append((name, {"method": method, "grad_ckpt": grad_ckpt, "batch": batch, "seq": seq}))
    return rows


GRID: list[tuple[str, dict]] = _grid()

# held out of the fit: other families and shapes, to state the model's error out of sample
HELD_OUT: list[tuple[str, dict]] = [
    (name, {"method": method, "grad_ckpt": grad_ckpt, "batch": batch, "seq": seq})
    for name in ("gemma-2-2b", "llama-3-8b", "phi-3-mini", "qwen2.5-7b")
    for method in ("lora", "qlora")
    for grad_ckpt in (False, True)
    for batch, seq in ((2, 1024), (1, 4096))
]

ISSUE_CONFIGS: list[tuple[str, dict]] = [
    ("llama-3.2-1b", {"method": "lora", "seq": 2048, "mixed_precision": "no"}),
    ("llama-2-7b", {"method": "qlora", "seq": 512}),
    ("llama-2-7b", {"method": "qlora", "batch": 4, "seq": 2048}),
    ("llama-2-7b", {"method": "qlora", "lora_rank": 64, "batch": 8, "seq": 2048}),
    ("mistral-7b", {"method": "lora", "seq": 1024}),
    ("llama-3-8b", {"method": "lora", "seq": 4096, "grad_ckpt": True}),
]


def label_of(name: str, opts: dict) -> str:
    return name + " " + " ".join(f"{k}={v}" for k, v in sorted(opts.items()))
