"""Property-based fuzz of the edge a user touches: CLI options and config.json fields.

For any combination of odd, wrong or extreme values (negative, zero, huge, non-numeric, wrong case, wrong
type, non-UTF-8, very long), a command must end with exit 0 or 2, never a traceback, within a time bound;
on exit 0 every component is non-negative and the verdict agrees with the numbers
(`oom` iff device > GPU; `tight` iff within the error band; `fits` otherwise: `breakdown.py`'s rule).

Runs in-process through click's CliRunner with HF_HUB_OFFLINE=1 (tests/conftest.py), so nothing waits on the
network. `VRAMPLAN_FUZZ_SCALE` multiplies the number of examples (default 1: about 3,000 in under a minute).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from vramplan.cli import main

SCALE = float(os.environ.get("VRAMPLAN_FUZZ_SCALE", "1"))
SECONDS_PER_CASE = 10  # of CPU time: a hang (an unbounded search) fails the case instead of the run
WALL_FACTOR = 6  # a wait that burns no CPU (the network, a lock) fails after 60 s of wall time


def _settings(n: int) -> settings:
    return settings(
        max_examples=max(1, int(n * SCALE)),
        deadline=None,  # timed by _bounded (CPU and wall timers), which also stops a real hang
        suppress_health_check=list(HealthCheck),
        derandomize=True,  # CI sees the same cases every run; raise VRAMPLAN_FUZZ_SCALE to explore
        database=None,
    )


@contextmanager
def _bounded(seconds: int) -> Iterator[None]:
    """At most `seconds` of CPU time (an unbounded search burns CPU) and `WALL_FACTOR` × `seconds` of wall time
    (a wait on the network or a lock burns none) for the block. CPU time, not wall time, is the tight bound:
    on a shared machine a case can wait for a core far longer than it runs."""

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"no answer within {seconds} s of CPU or {WALL_FACTOR * seconds} s of wall time")

    old_prof, old_alarm = signal.signal(signal.SIGPROF, expire), signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    signal.alarm(WALL_FACTOR * seconds)
    cpu = time.process_time()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.alarm(0)
        signal.signal(signal.SIGPROF, old_prof)
        signal.signal(signal.SIGALRM, old_alarm)
    # a timer's TimeoutError is lost when it lands in a callback that swallows it (a gc callback): time it too
    assert time.process_time() - cpu < seconds, f"no answer within {seconds} s of CPU time"


def invoke(args: list[str], env: dict[str, str] | None = None):
    """Run `vramplan *args` at 80 columns; fail on a traceback, a hang, or an exit code other than 0 / 2."""
    runner = CliRunner(env={"COLUMNS": "80", "HF_HUB_OFFLINE": "1", **(env or {})})
    with _bounded(SECONDS_PER_CASE):
        r = runner.invoke(main, args, catch_exceptions=True)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        import traceback

        tb = "".join(traceback.format_exception(type(r.exception), r.exception, r.exception.__traceback__))
        pytest.fail(f"vramplan {' '.join(map(repr, args))} raised:\n{tb}")
    assert r.exit_code in (0, 2), (args, r.exit_code, r.output)
    if currently_in_test_context():
        event(f"{args[0]} exit {r.exit_code}")  # --hypothesis-show-statistics: how many cases got past the checks
    assert "Traceback" not in r.output, (args, r.output)
    if r.exit_code == 2:
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert lines, (args, "exit 2 without a message")
        assert lines[-1].lower().startswith("error:"), (args, r.stderr)
    return r


def check_verdict(d: dict[str, Any]) -> None:
    """Non-negative figures, and the verdict `breakdown.py` defines, recomputed from the printed numbers."""
    for name, value in d["components"].items():
        assert value >= 0, (name, value)
    for name, value in d["overhead"].items():
        assert value >= 0, (name, value)
    assert d["peak_bytes"] >= 0
    assert d["reserved_bytes"] >= d["peak_bytes"]
    # the device total is the least that runs: the peak + what the caching allocator must get (never more than it
    # reserves with room to spare; release-and-retry only lowers it) + the CUDA context
    beyond_context = d["device_bytes"] - d["overhead"]["cuda_context_bytes"]
    assert d["peak_bytes"] <= beyond_context <= d["reserved_bytes"]
    gpu = d.get("gpu_bytes")
    if gpu is None:
        assert d["verdict"] is None
        return
    device = d["device_bytes"]
    if device > gpu or d.get("problems"):  # serve: vLLM refusing to start is an oom
        expected = "oom"
    elif device * (1 + d["error_band"]) > gpu:
        expected = "tight"
    else:
        expected = "fits"
    assert d["verdict"] == expected, (device, gpu, d["error_band"], d["verdict"])


# ---------------------------------------------------------------- values

MODELS = [
    "llama-2-7b",
    "llama-3-8b",
    "mixtral-8x7b",
    "gemma-2-9b",
    "phi-2",
    "qwen3-8b",
    "bloom-560m",
    "phi-3-mini",
    "LLAMA-2-7B",
]
GPUS = ["3060ti", "t4", "4090", "a100-80gb", "h100", "V100", "rtx 3090"]


def odd_text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["", " ", "-1", "abc", "1e9", "2k", "0x10", "nan", "inf", "None", "ℓ", "a" * 300]),
        st.text(min_size=0, max_size=12),
    )


def mostly(valid: st.SearchStrategy[str], odd: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """`valid` three times in four, so that most cases get past validation to the arithmetic and rendering."""
    return st.sampled_from([1, 2, 3, 0]).flatmap(lambda pick: valid if pick else odd)


def int_text() -> st.SearchStrategy[str]:
    return mostly(
        st.integers(1, 4096).map(str),
        st.one_of(
            st.integers(-5, 70_000).map(str),
            st.sampled_from(["0", "-1", "1e9", "2k", "4K", "1.5k", "99999999999999999999", "1000000000", "2**31"]),
            st.integers(-(10**30), 10**30).map(str),
            odd_text(),
        ),
    )


def float_text() -> st.SearchStrategy[str]:
    return mostly(
        st.sampled_from(["0", "0.05", "0.1", "0.5"]),
        st.one_of(
            st.floats(allow_nan=True, allow_infinity=True).map(str),
            st.sampled_from(["0", "0.05", "1", "-0.1", "nan", "inf", "1e300", "abc"]),
        ),
    )


def choice(values: list[str]) -> st.SearchStrategy[str]:
    """A valid value, the same in another case, or junk."""
    valid = st.sampled_from(values)
    return mostly(valid, st.one_of(valid.map(str.upper), valid.map(str.title), odd_text()))


TRAIN_OPTIONS: dict[str, st.SearchStrategy[str]] = {
    "--method": choice(["full", "lora", "qlora", "freeze", "QLoRA"]),
    "--dtype": choice(["bf16", "fp16", "fp32"]),
    "--mixed-precision": choice(["bf16", "fp16", "no"]),
    "--quant": choice(["none", "nf4", "fp4", "int8"]),
    "--batch": int_text(),
    "--seq": int_text(),
    "--grad-accum": int_text(),
    "--lora-rank": int_text(),
    "--lora-alpha": int_text(),
    "--lora-dropout": float_text(),
    "--lora-target": choice(["all-linear", "attn", "qv", "q_proj,v_proj", "all", "gate,w1,w3,w2"]),
    "--optim": choice(["adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit", "sgd", "adafactor"]),
    "--attn": choice(["eager", "sdpa", "flash_attention_2"]),
    "--freeze-trainable-layers": int_text(),
    "--gpus": int_text(),
    "--strategy": choice(["ddp", "zero1", "zero2", "zero3", "fsdp", "fsdp-hybrid"]),
    "--offload": choice(["none", "optimizer", "params"]),
}
TRAIN_FLAGS = ["--double-quant", "--no-double-quant", "--kbit-prep", "--no-kbit-prep", "--dora", "--grad-ckpt",
               "--no-grad-ckpt"]  # fmt: skip


@st.composite
def train_args(draw: st.DrawFn, options: dict[str, st.SearchStrategy[str]] = TRAIN_OPTIONS) -> list[str]:
    """A few options, each either left out or given an odd or valid value, plus some on/off flags."""
    args: list[str] = []
    chosen = draw(st.lists(st.sampled_from(sorted(options)), max_size=4, unique=True))
    for name in chosen:
        args += [name, draw(options[name])]
    args += draw(st.lists(st.sampled_from(TRAIN_FLAGS), max_size=2, unique=True))
    return args


# ---------------------------------------------------------------- commands


@_settings(1200)
@given(
    model=mostly(st.sampled_from(MODELS), odd_text()),
    gpu=st.one_of(st.none(), mostly(st.sampled_from(GPUS), odd_text())),
    options=train_args(),
    suggest=st.booleans(),
    as_json=st.booleans(),
)
def test_estimate_never_crashes(model: str, gpu: str | None, options: list[str], suggest: bool, as_json: bool):
    args = ["estimate", model, *options]
    args += ["--gpu", gpu] if gpu is not None else []
    args += ["--suggest"] if suggest else []
    args += ["--json"] if as_json else []
    r = invoke(args)
    if r.exit_code == 0 and as_json:
        check_verdict(json.loads(r.stdout))


FIT_OPTIONS = {**TRAIN_OPTIONS, "--seq": st.one_of(int_text(), st.sampled_from(["512,1k,4k", "1,2,3", "8k,", ","]))}


@_settings(250)
@given(
    model=st.sampled_from(MODELS),
    gpu=mostly(st.sampled_from(GPUS), odd_text()),
    options=train_args(FIT_OPTIONS),
    as_json=st.booleans(),
)
def test_fit_never_crashes(model: str, gpu: str, options: list[str], as_json: bool):
    # the slack allocator model: fit's re-check of its printed cells with the replay costs ~6 s of CPU for a 7B
    # model (docs/caching-allocator.md), too much for 250 cases; tests/plan holds the default path
    slack = ["--allocator-model", "slack"]
    r = invoke(["fit", model, "--gpu", gpu, *options, *slack, *(["--json"] if as_json else [])])
    if r.exit_code == 0 and as_json:
        d = json.loads(r.stdout)
        assert d["rows"], d


SERVE_OPTIONS: dict[str, st.SearchStrategy[str]] = {
    "--engine": choice(["vllm", "hf"]),
    "--dtype": choice(["bf16", "fp16", "fp32"]),
    "--quant": choice(["none", "nf4", "fp4", "int8"]),
    "--kv-cache-dtype": choice(["auto", "fp8", "fp8_e4m3", "fp8_e5m2"]),
    "--max-loras": int_text(),
    "--lora-rank": int_text(),
    "--lora-target": choice(["all-linear", "attn", "qv"]),
    "--batch": int_text(),
    "--prompt-tokens": int_text(),
    "--new-tokens": int_text(),
    "--max-model-len": int_text(),
    "--max-num-seqs": int_text(),
    "--max-num-batched-tokens": int_text(),
    "--gpu-memory-utilization": float_text(),
    "--block-size": int_text(),
}


@_settings(600)
@given(
    model=st.sampled_from(MODELS),
    gpu=st.one_of(st.none(), st.sampled_from(GPUS)),
    options=train_args(SERVE_OPTIONS).map(lambda a: [x for x in a if x not in TRAIN_FLAGS]),
    flags=st.lists(st.sampled_from(["--enable-lora", "--merged-lora", "--enforce-eager"]), max_size=2, unique=True),
    as_json=st.booleans(),
)
def test_serve_never_crashes(model: str, gpu: str | None, options: list[str], flags: list[str], as_json: bool):
    args = ["serve", model, *options, *flags, *(["--gpu", gpu] if gpu else []), *(["--json"] if as_json else [])]
    r = invoke(args)
    if r.exit_code == 0 and as_json:
        check_verdict(json.loads(r.stdout))


# ---------------------------------------------------------------- config.json fields

BASE_CONFIG: dict[str, Any] = {  # Llama-2-7B's shapes (profiles/models/llama-2-7b.json)
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}
CONFIG_FIELDS = [*BASE_CONFIG, "head_dim", "num_local_experts", "num_experts_per_tok", "sliding_window",
                 "layer_types", "text_config", "quantization_config", "hidden_act"]  # fmt: skip
JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.sampled_from([0, -1, -4096, 1, 3, 10**11, 10**30, 2**63, 1e300, -1e300, 0.5, 4096.0, "big", "", "4096"]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.lists(st.integers(0, 8), max_size=3),
    st.dictionaries(st.sampled_from(["load_in_4bit", "quant_method", "bits", "model_type"]),
                    st.one_of(st.booleans(), st.integers(-2, 16), st.text(max_size=6)), max_size=3),
)  # fmt: skip


@_settings(900)
@given(
    model_type=st.sampled_from(
        ["llama", "mistral", "mixtral", "qwen3", "gemma2", "phi3", "phi", "gpt_neox", "bloom", "LLAMA", "t5"]
    ),
    changes=st.dictionaries(st.sampled_from(CONFIG_FIELDS), JSON_VALUES, max_size=4),
    drop=st.lists(st.sampled_from(list(BASE_CONFIG)), max_size=2),
    command=st.sampled_from(["estimate", "fit", "serve", "simulate-refusal"]),
)
def test_config_json_fields(tmp_path_factory, model_type: str, changes: dict, drop: list, command: str):
    cfg = {**BASE_CONFIG, "model_type": model_type, "num_local_experts": 8, **changes}
    for key in drop:
        cfg.pop(key, None)
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_text(json.dumps(cfg))
    if command == "estimate":
        args = ["estimate", str(path), "--gpu", "4090", "--json"]
    elif command == "fit":
        args = ["fit", str(path), "--gpu", "4090", "--method", "qlora", "--seq", "1k,4k", "--json"]
    elif command == "serve":
        args = ["serve", str(path), "--gpu", "a100-80gb", "--json"]
    else:  # the text table at 80 columns, with advice
        args = ["estimate", str(path), "--gpu", "3060ti", "--method", "full", "--suggest"]
    r = invoke(args)
    if r.exit_code == 0 and command in ("estimate", "serve"):
        check_verdict(json.loads(r.stdout))


# ---------------------------------------------------------------- files that are not what they claim


@pytest.mark.parametrize(
    "content",
    [b"\xe9t\xe9: 1\n", b"\x00\x01\x02\xff" * 64, b"{", b"[]", b"model_type: llama\n" + b"x" * 10, b""],
    ids=["latin-1", "binary", "truncated", "list", "odd-yaml", "empty"],
)
@pytest.mark.parametrize("where", ["model", "from", "validate"])
def test_odd_files(tmp_path: Path, content: bytes, where: str):
    path = tmp_path / ("config.json" if where == "model" else "train.yaml" if where == "from" else "d.jsonl")
    path.write_bytes(content)
    if where == "model":
        args = ["estimate", str(path)]
    elif where == "from":
        args = ["estimate", "llama-2-7b", "--from", str(path)]
    else:
        args = ["validate", "--data", str(path)]
    r = invoke(args)
    assert r.exit_code == 2 or where == "validate", r.output


@pytest.mark.parametrize("name", ["x" * 100_000, "a/" * 5000 + "b", "bad\x00name", "../../etc/passwd"])
def test_odd_model_names(name: str):
    invoke(["estimate", name, "--gpu", "t4"])


# ---------------------------------------------------------------- --from training configs

FROM_KEYS = {
    "train.yaml": ["model_name_or_path", "finetuning_type", "quantization_bit", "quantization_type", "lora_rank",
                   "lora_alpha", "lora_dropout", "lora_target", "cutoff_len", "per_device_train_batch_size",
                   "gradient_accumulation_steps", "bf16", "pure_bf16", "optim", "flash_attn",
                   "freeze_trainable_layers", "double_quantization", "disable_gradient_checkpointing"],
    "axolotl.yml": ["base_model", "adapter", "load_in_4bit", "load_in_8bit", "bnb_config_kwargs", "lora_r",
                    "lora_target_modules", "lora_target_linear", "sequence_len", "micro_batch_size", "optimizer",
                    "gradient_checkpointing", "attn_implementation", "bf16", "fp16"],
    "adapter_config.json": ["peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "use_dora",
                            "base_model_name_or_path", "bias"],
}  # fmt: skip
FROM_BASE = {
    "train.yaml": {"model_name_or_path": "meta-llama/Llama-2-7b-hf"},
    "axolotl.yml": {"base_model": "llama-2-7b"},
    "adapter_config.json": {"peft_type": "LORA", "base_model_name_or_path": "llama-2-7b"},
}


@_settings(300)
@given(data=st.data(), name=st.sampled_from(sorted(FROM_KEYS)))
def test_from_file_values(tmp_path_factory, data: st.DataObject, name: str):
    """Each reader of `--from` takes any value for its keys: a setting, or one error line."""
    changes = data.draw(st.dictionaries(st.sampled_from(FROM_KEYS[name]), JSON_VALUES, max_size=4))
    path = tmp_path_factory.mktemp("from") / name
    path.write_text(json.dumps({**FROM_BASE[name], **changes}))  # JSON is YAML too
    r = invoke(["estimate", "--from", str(path), "--gpu", "4090", "--json"])
    if r.exit_code == 0:
        check_verdict(json.loads(r.stdout))
