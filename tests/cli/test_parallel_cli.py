"""`vramplan estimate --gpus --strategy --gpus-per-node --offload`: exit codes, messages, JSON keys."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from vramplan import estimate
from vramplan.cli import main
from vramplan.estimator.distributed import shard
from vramplan.sources.profiles import load_model
from vramplan.spec import resolve_train
from vramplan.spec.parallel import resolve_parallel


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def _json(*args: str) -> dict:
    r = run("estimate", *args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


PARALLEL_KEYS = ("strategy", "gpus", "gpus_per_node", "shard_size", "offload", "per_gpu_bytes", "total_bytes",
                 "host_offload_bytes", "buffers", "verdict_per_gpu", "notes")  # fmt: skip


def test_json_parallel_object():
    d = _json("llama-2-13b", "--method", "full", "--gpu", "a100-80", "--gpus", "8", "--strategy", "zero3",
              "--offload", "optimizer")  # fmt: skip
    p = d["parallel"]
    for key in PARALLEL_KEYS:
        assert key in p
    assert (p["strategy"], p["gpus"], p["offload"]) == ("zero3", 8, "optimizer")
    assert p["per_gpu_bytes"] == d["device_bytes"]  # the top level is one GPU's Breakdown
    assert p["total_bytes"] == 8 * p["per_gpu_bytes"]
    assert p["host_offload_bytes"] > 0
    assert p["verdict_per_gpu"] == d["verdict"]
    # the JSON is the library's plan for the same inputs: one rank's Breakdown, derived from the one-GPU one
    m = load_model("llama-2-13b")
    t = resolve_train(m, method="full")
    spec = resolve_parallel(t, gpus=8, strategy="zero3", offload="optimizer")
    plan = shard(m, t, spec, estimate(m, gpu="a100-80", train=t))
    assert d["components"] == plan.breakdown.components.as_dict()
    assert (d["peak_bytes"], d["device_bytes"]) == (plan.breakdown.peak_bytes, plan.breakdown.device_bytes)
    assert p["host_offload_bytes"] == plan.host_offload_bytes
    # sharding 8 ways leaves each GPU less of the model states than the one-GPU estimate holds
    single = plan.single.phases[-1].components
    assert d["phases"]["optimizer"]["optimizer_states"] < single.optimizer_states


@pytest.mark.parametrize("strategy", [None, "ddp", "fsdp", "fsdp-hybrid"])
def test_gpus_1_json_is_the_single_gpu_json(strategy):
    base = ("llama-2-7b", "--method", "lora", "--gpu", "4090", "--batch", "2")
    single = _json(*base)
    one = _json(*base, "--gpus", "1", *(("--strategy", strategy) if strategy else ()))
    assert one.pop("parallel")["total_bytes"] == single.pop("parallel")["total_bytes"] == single["device_bytes"]
    assert one == single


def test_table_shows_per_gpu_total_and_host_ram():
    r = run("estimate", "llama-2-13b", "--method", "full", "--gpu", "a100-80", "--gpus", "8", "--strategy",
            "zero3", "--offload", "optimizer")  # fmt: skip
    assert r.exit_code == 0, r.output
    out = " ".join(r.stdout.split())
    assert "zero3 × 8 GPUs" in out
    assert "per GPU" in out
    assert "all GPUs" in out
    assert "host RAM per node for --offload optimizer" in out
    assert "fits" in out or "tight" in out or "does not fit" in out


def test_oom_per_gpu_offers_engine_changes():
    r = run("estimate", "llama-3-8b", "--method", "full", "--gpu", "3090", "--gpus", "4", "--strategy", "zero2")
    assert r.exit_code == 0, r.output
    assert "does not fit" in r.stdout
    assert "advice: --strategy zero3" in r.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--gpus", "0"], "--gpus must be a positive integer, got 0"),
        (["--gpus", "-2"], "--gpus must be a positive integer"),
        (["--gpus-per-node", "0", "--gpus", "2"], "--gpus-per-node must be a positive integer"),
        (["--gpus", "2", "--strategy", "zero4"], "did you mean 'zero3'"),
        (["--gpus", "2", "--strategy", "fdsp"], "did you mean 'fsdp'"),
        (["--gpus", "2", "--offload", "cpu"], "unknown --offload value 'cpu'"),
        (["--gpus", "2", "--offload", "optimizer"], "--offload needs a sharding engine"),
        (
            ["--gpus", "2", "--strategy", "zero2", "--offload", "params"],
            "--offload params needs --strategy zero3",
        ),
        (["--gpus", "2", "--strategy", "fsdp", "--offload", "optimizer"], "use --offload params"),
        (["--gpus", "12", "--strategy", "fsdp-hybrid"], "--gpus 12 is not a multiple of it"),
        (["--gpus", "2", "--strategy", "zero3", "--quant", "int8"], "--quant int8 weights cannot be sharded"),
    ],
)
def test_bad_combinations_one_line_exit_2(args, needle):
    r = run("estimate", "llama-2-7b", *args)
    assert r.exit_code == 2, r.output
    assert needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--strategy", "zero3"], "--strategy zero3 with --gpus 1 partitions nothing"),
        (["--strategy", "fsdp"], "FSDP switches to NO_SHARD"),
        (["--gpus", "2", "--strategy", "zero3", "--method", "qlora"], "bnb_4bit_quant_storage=bfloat16"),
        (["--gpus", "2", "--strategy", "fsdp", "--method", "qlora"], "bnb_4bit_quant_storage=bfloat16"),
    ],
)
def test_warnings_are_one_line_and_run_on(args, needle):
    r = run("estimate", "llama-2-7b", *args, "--json")
    assert r.exit_code == 0, r.output
    lines = [line for line in r.stderr.splitlines() if needle in line]
    assert len(lines) == 1
    assert lines[0].startswith("warning: ")
    assert needle in " ".join(json.loads(r.stdout)["parallel"]["notes"])


def test_help_lists_parallel_options():
    r = run("estimate", "--help")
    for opt in ("--gpus", "--strategy", "--gpus-per-node", "--offload"):
        assert opt in r.output


def _fit(*args: str) -> dict:
    r = run("fit", "llama-3-8b", "--gpu", "3090", "--method", "full", "--seq", "1024", *args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_fit_per_gpu_of_a_sharded_run():
    """Full fine-tuning of Llama-3-8B fits no 3090 alone; one GPU of 8 under ZeRO-3 + optimizer offload or
    FSDP does, and `fit --gpus 1` is plain `fit`."""
    single = _fit()
    assert single["parallel"] is None
    assert all(r["max_batch"][0]["batch"] == 0 for r in single["rows"])
    for args in (("--strategy", "zero3", "--offload", "optimizer"), ("--strategy", "fsdp")):
        d = _fit("--gpus", "8", *args)
        assert d["parallel"]["gpus"] == 8
        assert max(r["max_batch"][0]["batch"] for r in d["rows"]) >= 1
    assert _fit("--gpus", "1") == single


def test_fit_bad_gpus_exit_2():
    r = run("fit", "llama-3-8b", "--gpu", "3090", "--gpus", "0")
    assert r.exit_code == 2
    assert "--gpus must be a positive integer" in r.stderr
