"""The edge a newcomer touches (issue 16): one option set on the training commands, one error style,
case-insensitive choices, readable at 80 columns."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from vramplan.cli import all_commands, main


def run(*args: str, columns: int = 80):
    return CliRunner(env={"COLUMNS": str(columns)}).invoke(main, list(args))


@pytest.mark.parametrize("command", ["estimate", "fit", "measure", "simulate"])
def test_training_commands_share_one_option_set(command: str):
    """--from, --model and --seq 2k on every training command (the README says they take the same)."""
    r = run(command, "--help", columns=200)
    assert r.exit_code == 0
    for option in ("--from", "--model", "--seq", "--method", "--lora-rank", "--optim", "--attn"):
        assert option in r.output, (command, option)


def test_model_option_and_from_file_on_fit(tmp_path: Path):
    """fit takes --model instead of MODEL, and a LLaMA-Factory YAML's settings (cutoff_len 2k)."""
    yaml = tmp_path / "train.yaml"
    yaml.write_text("model_name_or_path: meta-llama/Llama-2-7b-hf\nfinetuning_type: lora\nquantization_bit: 4\n")
    by_option = run("fit", "--model", "llama-2-7b", "--gpu", "4090", "--method", "qlora", "--json")
    by_file = run("fit", "--from", str(yaml), "--gpu", "4090", "--method", "qlora", "--json")
    assert by_option.exit_code == 0, by_option.output
    assert by_file.exit_code == 0, by_file.output
    assert json.loads(by_option.stdout)["rows"]
    assert json.loads(by_file.stdout)["rows"]


def test_seq_2k_on_estimate_as_on_fit():
    a = json.loads(run("estimate", "llama-2-7b", "--seq", "2k", "--json").stdout)
    b = json.loads(run("estimate", "llama-2-7b", "--seq", "2048", "--json").stdout)
    assert a["inputs"]["seq"] == 2 * 1024
    assert a["device_bytes"] == b["device_bytes"]


@pytest.mark.parametrize(
    "args",
    [
        ["estimate", "llama-2-7b", "--method", "QLoRA"],
        ["estimate", "LLAMA-2-7B", "--method", "LoRA", "--optim", "AdamW_8bit", "--attn", "SDPA", "--dtype", "BF16"],
        ["serve", "llama-2-7b", "--engine", "HF", "--quant", "NF4"],
    ],
)
def test_choices_are_case_insensitive(args: list[str]):
    r = run(*args, "--json")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(
    "args",
    [
        ["estimate", "llama-2-7b", "--batch", "1e9"],  # click's own type error
        ["estimate", "llama-2-7b", "--no-such-option"],
        ["estimat", "llama-2-7b"],
        ["estimate", "llama-2-7b", "--method", "qlro"],  # vramplan's
        ["estimate", "llama-2-7b", "--batch", "99999999999999999999"],
        ["serve"],
    ],
)
def test_one_error_style(args: list[str]):
    """click's usage errors and vramplan's read the same: one `error:` line on stderr, exit 2."""
    r = run(*args)
    assert r.exit_code == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: "), r.stderr


@pytest.mark.parametrize(
    ("args", "warning"),
    [
        (["estimate", "llama-2-7b", "--gpu", "t4", "--attn", "flash_attention_2"], "needs an Ampere"),
        (["estimate", "llama-2-7b", "--seq", "8k"], "longer than llama-2-7b's context"),
        (["estimate", "llama-2-7b", "--method", "lora", "--kbit-prep"], "--kbit-prep does nothing"),
        (["estimate", "llama-2-7b", "--quant", "int8", "--double-quant"], "--double-quant applies to 4-bit"),
        (["estimate", "llama-2-7b", "--method", "full", "--lora-rank", "64"], "--lora-rank does nothing"),
    ],
)
def test_contradictions_warn(args: list[str], warning: str):
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert any(line.startswith("warning: ") and warning in line for line in r.stderr.splitlines()), r.stderr


@pytest.mark.parametrize(
    "args", [["estimate", "llama-2-7b", "--lora-alpha", "-16"], ["estimate", "llama-2-7b", "--lora-alpha", "0"]]
)
def test_negative_lora_alpha_refused(args: list[str]):
    r = run(*args)
    assert r.exit_code == 2
    assert "--lora-alpha must be a positive integer" in r.stderr


def _typed_values(text: str, values: list[str]) -> None:
    for value in values:
        assert any(value in line for line in text.splitlines()), value


def test_models_and_gpus_at_80_columns():
    """No line over 80 characters, and every name a user types appears whole."""
    from vramplan.sources.profiles import builtin_model_names, load_gpus

    for args, values in ((["models"], builtin_model_names()), (["gpus"], list(load_gpus()))):
        r = run(*args)
        assert r.exit_code == 0
        assert max(map(len, r.stdout.splitlines())) <= 80
        _typed_values(r.stdout, values)
    assert len(run("gpus").stdout.splitlines()) < len(load_gpus()) + 10  # one line per GPU


def test_validate_at_80_columns_is_summarised():
    """The default listing shows the records with an estimate, ids whole; --all shows every record."""
    short, full = run("validate"), run("validate", "--all")
    records = json.loads(run("validate", "--json").stdout)
    assert short.exit_code == 0
    assert full.exit_code == 0
    assert len(short.stdout.splitlines()) < len(full.stdout.splitlines())
    assert max(map(len, short.stdout.splitlines())) <= 80
    _typed_values(short.stdout, [r["id"] for r in records["rows"] if r["estimated_bytes"] is not None])
    _typed_values(full.stdout, [r["id"] for r in records["rows"]])


def test_every_count_option_takes_2k():
    """One parser for counts (spec.counts.parse_count): no command has an option typed as a plain int, whose
    parser would refuse `2k`."""
    from vramplan.cli_options import Count

    plain = []
    for name, command in all_commands().items():
        for param in command.params:
            if isinstance(param, click.Option) and param.type.name == "integer":
                plain.append(f"{name} {param.opts[0]}")
    assert not plain, plain
    counts = {(n, p.opts[0]) for n, c in all_commands().items() for p in c.params if isinstance(p.type, Count)}
    assert ("estimate", "--grad-accum") in counts
    assert ("serve", "--max-model-len") in counts
    assert ("simulate", "--steps") in counts


@pytest.mark.parametrize(
    ("args", "option", "key"),
    [
        (["estimate", "llama-2-7b"], "--batch", "batch"),
        (["estimate", "llama-2-7b"], "--grad-accum", "grad_accum"),
        (["estimate", "llama-2-7b"], "--lora-rank", "lora_rank"),
        (["estimate", "llama-2-7b"], "--lora-alpha", "lora_alpha"),
        (["estimate", "llama-2-7b", "--gpus", "2k", "--strategy", "ddp"], "--seq", "seq"),
        (["serve", "llama-2-7b", "--gpu", "a100-80gb"], "--max-model-len", "max_model_len"),
        (["serve", "llama-2-7b", "--gpu", "a100-80gb"], "--max-num-batched-tokens", "max_num_batched_tokens"),
        (["serve", "llama-2-7b", "--engine", "hf"], "--new-tokens", "new_tokens"),
    ],
)
def test_2k_is_2048(args: list[str], option: str, key: str):
    """`2k` and `2048` give the same inputs and the same figure (2 × 1024)."""
    by_suffix = run(*args, option, "2k", "--json")
    by_digits = run(*args, option, str(2 * 1024), "--json")
    assert by_suffix.exit_code == 0, by_suffix.output
    a, b = json.loads(by_suffix.stdout), json.loads(by_digits.stdout)
    assert a["inputs"][key] == 2 * 1024
    assert a["device_bytes"] == b["device_bytes"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "--batch must be a positive integer, got 0"),
        ("-3", "--batch must be a positive integer, got -3"),
        ("1e9", "'1e9' is not an integer such as 2048 or 2k"),
        ("9" * 20, "beyond vramplan's limit of 1,048,576"),
        ("9" * 5000, "is not an integer such as 2048 or 2k"),
    ],
)
def test_count_errors_name_the_value(value: str, message: str):
    r = run("estimate", "llama-2-7b", "--batch", value)
    assert r.exit_code == 2
    assert message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_measure_save_on_cpu_is_refused_before_torch(tmp_path: Path):
    """`--save --device cpu` can never store a run: refused in a second, without importing torch."""
    from tests.conftest import heavy_imports_after

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
                                  "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 256}))  # fmt: skip
    r = run("measure", str(config), "--device", "CPU", "--save")
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines()[-1] == "error: --save stores CUDA measurements; --device cpu has none"
    assert heavy_imports_after(["measure", str(config), "--device", "cpu", "--save"]) == []
