"""Run a fixed sweep of `vramplan … --json` commands and print one JSON line per command.

Used to show that a refactor leaves every estimate byte-identical:

    python benchmarks/sweep.py > before.jsonl   # on the old tree
    python benchmarks/sweep.py > after.jsonl    # on the new tree
    python benchmarks/sweep.py --compare before.jsonl after.jsonl

`--compare` prints each command whose numbers differ (keys renamed on purpose are mapped first, see
RENAMED) and exits 1 if any does. Nothing here touches the network (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's vramplan: a script's sys.path has benchmarks/, not the checkout
DATA = Path("tests") / "data"  # relative: the same command lines in any checkout (run from ROOT)
RENAMED = {"adapters": "trainable"}  # old JSON key -> new JSON key
IGNORED = {"moment", "approximation", "recipe", "stack", "layer_offload"}  # keys added by later versions (not figures)


def commands() -> list[list[str]]:
    cmds: list[list[str]] = []
    models = ["llama-2-7b", "llama-3.1-8b", "mistral-7b", "qwen2.5-7b", "gemma-2-2b", "phi-3-mini", "tinyllama-1.1b",
              "mixtral-8x7b", "qwen3-8b", "llama-3.2-1b"]  # fmt: skip
    for model, method in itertools.product(models, ("full", "lora", "qlora", "freeze")):
        cmds.append(["estimate", model, "--method", method, "--gpu", "3060ti"])
    base = ["estimate", "llama-2-7b", "--gpu", "a100-80gb"]
    variants = [
        ["--method", "lora", "--seq", "4096", "--batch", "4"],
        ["--method", "lora", "--no-grad-ckpt", "--attn", "eager", "--seq", "512"],
        ["--method", "lora", "--dora"],
        ["--method", "qlora", "--dora", "--seq", "2048"],
        ["--method", "qlora", "--quant", "int8"],
        ["--method", "qlora", "--no-double-quant", "--quant", "fp4"],
        ["--method", "lora", "--lora-target", "attn", "--lora-rank", "64"],
        ["--method", "lora", "--lora-target", "qv", "--lora-dropout", "0"],
        ["--method", "full", "--optim", "adamw_8bit"],
        ["--method", "full", "--optim", "paged_adamw_8bit", "--grad-accum", "4"],
        ["--method", "full", "--optim", "sgd"],
        ["--method", "full", "--optim", "adafactor"],
        ["--method", "full", "--dtype", "fp32", "--mixed-precision", "bf16"],
        ["--method", "lora", "--dtype", "fp16", "--mixed-precision", "fp16"],
        ["--method", "full", "--gpus", "8", "--strategy", "zero3"],
        ["--method", "full", "--gpus", "4", "--strategy", "fsdp", "--offload", "optimizer"],
        ["--method", "lora", "--gpus", "2", "--strategy", "ddp"],
        ["--method", "full", "--gpus", "4", "--strategy", "zero2"],
        ["--method", "qlora", "--suggest"],
    ]
    cmds += [base + v for v in variants]
    cmds.append(["estimate", "llama-3.1-8b", "--method", "qlora", "--gpu", "3060ti", "--seq", "8192", "--suggest"])
    for f in [*sorted(DATA.glob("*/*.y*ml")), DATA / "transformers" / "training_args.json"]:
        cmds.append(["estimate", "--from", str(f), "--model", "llama-3.1-8b", "--gpu", "4090"])
    cmds.append(["estimate", str(DATA / "my-model"), "--method", "lora", "--gpu", "4090"])
    cmds.append(["estimate", "llama-2-7b", "--from", str(DATA / "peft" / "adapter_config.json"), "--gpu", "4090"])
    for model, gpu in (("llama-2-7b", "3060ti"), ("llama-3.1-8b", "4090"), ("mistral-7b", "t4")):
        cmds.append(["fit", model, "--gpu", gpu])
        cmds.append(["fit", model, "--gpu", gpu, "--seq", "512,2048,8192", "--method", "lora"])
    for args in (
        ["llama-3.1-8b", "--gpu", "4090"],
        ["llama-2-7b", "--gpu", "3060ti", "--quant", "nf4", "--engine", "hf"],
        ["mistral-7b", "--gpu", "a100-80gb", "--max-model-len", "32768", "--kv-cache-dtype", "fp8"],
        ["qwen2.5-7b", "--gpu", "l4", "--gpu-memory-utilization", "0.8", "--max-num-seqs", "64"],
        ["llama-3.1-8b", "--gpu", "4090", "--engine", "hf", "--batch", "4", "--new-tokens", "2048"],
    ):
        cmds.append(["serve", *args])
    return cmds


def run(cmd: list[str]) -> dict:
    from click.testing import CliRunner

    from vramplan.cli import main

    r = CliRunner().invoke(main, [*cmd, "--json"])
    try:
        out = json.loads(r.stdout)
    except ValueError:
        out = r.output.strip().splitlines()[-1:] if r.output.strip() else None
    return {"cmd": cmd, "exit": r.exit_code, "out": out}


def normalize(x):
    if isinstance(x, dict):
        return {RENAMED.get(k, k): normalize(v) for k, v in x.items() if k not in IGNORED}
    if isinstance(x, list):
        return [normalize(v) for v in x]
    return x


def compare(a_path: str, b_path: str) -> int:
    a = [json.loads(line) for line in Path(a_path).read_text().splitlines()]
    b = {json.dumps(r["cmd"]): r for r in (json.loads(line) for line in Path(b_path).read_text().splitlines())}
    bad = 0
    for ra in a:
        rb = b.get(json.dumps(ra["cmd"]))
        if rb is None:
            print("missing:", " ".join(ra["cmd"]))
            bad += 1
            continue
        fa, fb = _figures(normalize(ra["out"])), _figures(normalize(rb["out"]))
        if ra["exit"] != rb["exit"] or fa != fb:
            bad += 1
            diff = sorted(set(fa.items()) ^ set(fb.items()), key=str)[:6]
            print(f"differs: {' '.join(ra['cmd'])}  exit {ra['exit']}->{rb['exit']}  {diff}")
    print(f"{len(a)} commands, {bad} differ")
    return 1 if bad else 0


def _figures(x, prefix: str = "") -> dict[str, object]:
    """Every number, bool and verdict string by its path (strings other than verdicts are presentation)."""
    out: dict[str, object] = {}
    if isinstance(x, dict):
        for k, v in x.items():
            out.update(_figures(v, f"{prefix}.{k}"))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            out.update(_figures(v, f"{prefix}[{i}]"))
    elif isinstance(x, (int, float, bool)) or x is None or prefix.endswith(("verdict", "phase", "verdict_per_gpu")):
        out[prefix] = x
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["--compare"]:
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    os.chdir(ROOT)
    for c in commands():
        print(json.dumps(run(c), sort_keys=True))
