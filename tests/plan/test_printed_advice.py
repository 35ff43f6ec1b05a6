"""Every suggestion the tool prints, typed back, gives what it claims (issue 16: advice that is true).

The suggestions are read from the human output, as a user copies them: `estimate`'s `advice:` lines (with and
without `--suggest`, one GPU and multi-GPU layouts), `fit`'s cells, longest sequences and largest LoRA rank,
and `serve`'s `problem:` fixes. Each one's flags are added to the command that printed it and run; the figure
and verdict printed must be the ones the typed command gives, and a "largest" must be the largest (one more
does not fit), over a sweep of models, methods, GPUs and sequence lengths.
"""

from __future__ import annotations

import json
import re
import shlex

import pytest
from click.testing import CliRunner

from vramplan.cli import main

WIDE = {"COLUMNS": "400"}  # one printed suggestion per line


def run(args: list[str]) -> tuple[str, str]:
    r = CliRunner(env=WIDE).invoke(main, args)
    assert r.exit_code == 0, (args, r.output)
    return r.stdout, r.stderr


def run_json(args: list[str]) -> dict:
    return json.loads(run([*args, "--json"])[0])


def flags_of(change: str) -> list[str]:
    """The flags of a printed change, `--seq 640 (the longest …)` or `A (why) + B (why)`: each part's words
    up to its parenthesised reason."""
    out: list[str] = []
    for part in change.split(" + "):
        for word in part.split():
            if word.startswith("(") or not (word.startswith("--") or (out and out[-1].startswith("--"))):
                break
            out.append(word)
    return out


ADVICE = re.compile(r"^advice: (?P<change>.*): (?P<gib>\d+\.\d\d) GiB (?P<per_gpu>per GPU )?→ (?P<verdict>\w+)")
GIB = 1024**3


def gib(n: int) -> str:
    return f"{n / GIB:.2f}"


# ---------------------------------------------------------------- estimate's advice

MODELS = ["llama-2-7b", "llama-3-8b", "mistral-7b", "qwen2.5-7b", "mixtral-8x7b", "phi-2", "gemma-2-9b"]
GPUS = ["3060ti", "t4", "4090", "a100-80gb"]
METHODS = ["full", "lora", "qlora"]
SWEEP = [
    [m, "--method", meth, "--gpu", g, "--seq", seq]
    for i, m in enumerate(MODELS)
    for j, meth in enumerate(METHODS)
    for k, g in enumerate(GPUS)
    for seq in [("1024", "2048", "4096", "512")[(i + j + k) % 4]]
]


@pytest.mark.parametrize("suggest", [True, False], ids=["--suggest", "advice"])
@pytest.mark.parametrize("args", SWEEP, ids=[" ".join(a) for a in SWEEP])
def test_estimate_advice_reproduces(args: list[str], suggest: bool):
    out, _ = run(["estimate", *args, *(["--suggest"] if suggest else [])])
    lines = [line for line in out.splitlines() if line.startswith("advice:")]
    for line in lines:
        found = ADVICE.match(line)
        assert found, line
        flags = flags_of(found["change"])
        assert flags, line
        typed = run_json(["estimate", *args, *flags])  # later flags win, as a user appends them
        assert gib(typed["device_bytes"]) == found["gib"], (line, flags)
        assert typed["verdict"] == found["verdict"], (line, flags)
        for flag, value in zip(flags, [*flags[1:], ""], strict=True):  # never what is already set
            if flag.startswith("--") and value and not value.startswith("--"):
                assert f"{flag} {value}" not in " ".join(args), (line, args)


PARALLEL = [
    ["llama-3-70b", "--method", "lora", "--gpu", "4090", "--gpus", "4", "--strategy", "ddp"],
    ["llama-3-70b", "--method", "qlora", "--gpu", "4090", "--gpus", "2", "--strategy", "fsdp"],
    ["llama-3-8b", "--method", "full", "--gpu", "a100-80gb", "--gpus", "8", "--strategy", "zero1"],
    ["llama-2-7b", "--method", "full", "--gpu", "3060ti", "--gpus", "4", "--strategy", "zero2"],
]


@pytest.mark.parametrize("args", PARALLEL, ids=[" ".join(a) for a in PARALLEL])
def test_multi_gpu_advice_reproduces(args: list[str]):
    out, _ = run(["estimate", *args])
    lines = [line for line in out.splitlines() if line.startswith("advice:")]
    for line in lines:
        found = ADVICE.match(line)
        assert found, line
        assert found["per_gpu"], line
        typed = run_json(["estimate", *args, *flags_of(found["change"])])
        assert gib(typed["parallel"]["per_gpu_bytes"]) == found["gib"], line
        assert typed["parallel"]["verdict_per_gpu"] == found["verdict"], line


def test_the_sweep_prints_advice():
    """The sweep is not vacuous: it prints single changes, pairs and a sequence length among its advice."""
    seen = []
    for args in SWEEP[::3]:
        seen += [line for line in run(["estimate", *args, "--suggest"])[0].splitlines() if line.startswith("advice")]
    assert len(seen) > 50
    assert any(" + " in line for line in seen)
    assert any("--seq " in line for line in seen)


# ---------------------------------------------------------------- fit's table

FIT = [
    ["llama-2-7b", "--gpu", "3060ti"],
    ["llama-3-8b", "--gpu", "4090", "--method", "qlora", "--seq", "1k,4k,16k"],
    ["mistral-7b", "--gpu", "a100-80gb", "--method", "lora", "--seq", "2k,8k"],
    ["phi-2", "--gpu", "t4", "--seq", "512,2k"],
]


def _cell(text: str) -> tuple[int, bool, bool]:
    """(value, tight, capped) of a printed cell: `4*`, `≥4096`, `0`."""
    return int(text.strip("*≥ ")), text.endswith("*"), text.startswith("≥")


def _verdict(args: list[str]) -> str:
    return run_json(["estimate", *args])["verdict"]


@pytest.mark.parametrize("args", FIT, ids=[" ".join(a) for a in FIT])
def test_fit_cells_reproduce(args: list[str]):
    """A cell B at sequence S: `--batch B --seq S` fits (tight iff `*`), `--batch B+1` does not (unless ≥);
    max seq N: `--seq N --batch 1` fits, N + 64 does not; r = R: `--lora-rank R` fits, R + 1 does not."""
    out, _ = run(["fit", *args])
    model, gpu = args[0], args[args.index("--gpu") + 1]
    header = next(line for line in out.splitlines() if line.startswith("method"))
    seqs = [int(c) for c in (c.strip() for c in header.split("┃")[3:-1])]
    rows = [line for line in out.splitlines() if re.match(r"^(full|lora|qlora|freeze) ", line)]
    assert rows
    checked = 0
    for row in rows:
        method, ckpt, optim, *cells, longest = (c.strip() for c in row.split("│"))
        base = [model, "--gpu", gpu, "--method", method, "--optim", optim,
                "--grad-ckpt" if ckpt == "yes" else "--no-grad-ckpt"]  # fmt: skip
        for seq, text in zip(seqs, cells, strict=True):
            batch, tight, capped = _cell(text)
            if batch:
                assert _verdict([*base, "--seq", str(seq), "--batch", str(batch)]) == ("tight" if tight else "fits")
                checked += 1
            if not capped:
                assert _verdict([*base, "--seq", str(seq), "--batch", str(batch + 1)]) == "oom", (row, seq)
        n, tight, capped = _cell(longest)
        if n:
            assert _verdict([*base, "--seq", str(n), "--batch", "1"]) == ("tight" if tight else "fits"), row
        if not capped:
            assert _verdict([*base, "--seq", str(n + 64), "--batch", "1"]) == "oom", row
    assert checked
    rank_line = next(line for line in out.splitlines() if line.startswith("largest LoRA rank"))
    if "r = " in rank_line:
        how = re.search(r"\((?P<method>\w+), batch (?P<b>\d+) × seq (?P<s>\d+), [^,]+, (?P<ckpt>no ckpt|ckpt), "
                        r"(?P<optim>\w+)\): r = (?P<r>\S+)", rank_line)  # fmt: skip
        assert how, rank_line
        rank, tight, capped = _cell(how["r"])
        base = [model, "--gpu", gpu, "--method", how["method"], "--batch", how["b"], "--seq", how["s"],
                "--optim", how["optim"], "--grad-ckpt" if how["ckpt"] == "ckpt" else "--no-grad-ckpt"]  # fmt: skip
        if rank:
            assert _verdict([*base, "--lora-rank", str(rank)]) == ("tight" if tight else "fits"), rank_line
        if not capped:
            assert _verdict([*base, "--lora-rank", str(rank + 1)]) == "oom", rank_line


# ---------------------------------------------------------------- serve's problems

SERVE = [
    ["qwen2.5-7b", "--gpu", "3060ti", "--quant", "nf4"],
    ["llama-2-7b", "--gpu", "3060ti", "--gpu-memory-utilization", "1.0"],
    ["llama-2-7b", "--gpu", "3060ti"],
    ["llama-2-13b", "--gpu", "4090"],
    ["mistral-7b", "--gpu", "t4", "--max-model-len", "32k"],
    ["llama-3-70b", "--gpu", "a100-80gb"],
    ["llama-3-8b", "--gpu", "3060ti", "--gpu-memory-utilization", "0.5"],
    ["qwen2.5-7b", "--gpu", "4090"],
    ["llama-3-70b", "--gpu", "4090", "--quant", "nf4"],
]
FIX = re.compile(r"(lower|raise) (--gpu-memory-utilization) to (\d\.\d\d)|use (--quant) (nf4)|"
                 r"largest (--max-model-len) that fits: ([\d,]+)|\((--tensor-parallel-size) (\d+)\)")  # fmt: skip


@pytest.mark.parametrize("args", SERVE, ids=[" ".join(a) for a in SERVE])
def test_serve_fixes_reproduce(args: list[str]):
    """Each fix a `problem:` line offers, typed, removes that problem; `largest --max-model-len` is the
    largest (one more token brings the problem back)."""
    out, _ = run(["serve", *args])
    problems = [line for line in out.splitlines() if line.startswith("problem:")]
    assert problems, args  # each case was chosen for its problem
    before = run_json(["serve", *args])["problems"]
    assert len(problems) == len(before)
    for line, problem in zip(problems, before, strict=True):
        head = problem.split(":")[0]
        for fix in FIX.finditer(line):
            groups = [g for g in fix.groups() if g]
            flag, value = groups[-2], groups[-1].replace(",", "")
            after = run_json(["serve", *args, flag, value])["problems"]
            assert not any(p.split(":")[0] == head for p in after), (line, flag, value, after)
            if flag == "--max-model-len":
                more = run_json(["serve", *args, flag, str(int(value) + 1)])["problems"]
                assert any(p.split(":")[0].startswith("one ") for p in more), (line, more)


def test_flags_of():
    assert flags_of("--seq 640 (the longest multiple of 64 that fits; now 2048)") == ["--seq", "640"]
    assert flags_of("--no-kbit-prep --grad-ckpt (no fp32 upcast of embeddings/norms/lm_head)") == [
        "--no-kbit-prep", "--grad-ckpt"]  # fmt: skip
    assert flags_of("--attn sdpa (or flash_attention_2): no S×S attention matrix") == ["--attn", "sdpa"]
    assert flags_of("--grad-ckpt (recompute) + --optim adamw_8bit (8-bit)") == ["--grad-ckpt", "--optim", "adamw_8bit"]
    assert shlex.split("--strategy zero3 --offload optimizer") == flags_of("--strategy zero3 --offload optimizer")
