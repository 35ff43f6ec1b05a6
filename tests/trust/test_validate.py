"""The published validation set: every record maps onto estimate inputs or is excluded with a reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from vramplan.api import estimate
from vramplan.cli import main
from vramplan.trust.validate import (
    DATA_PATH,
    MEASURE_KIND_QUANTITY,
    load_records,
    map_record,
    measured_bytes,
    validate,
)

RECORDS = load_records()


def test_shipped_set_names_its_upstream_source():
    """Every record of the shipped set carries where it was published and the words it was read from."""
    assert DATA_PATH.is_relative_to(Path(__file__).resolve().parents[2] / "vramplan")  # the package's own copy
    assert RECORDS
    assert len({r["id"] for r in RECORDS}) == len(RECORDS)
    assert all(r["source"].startswith("https://") and r["quote"].strip() for r in RECORDS)


@pytest.mark.parametrize("rec", RECORDS, ids=[r["id"] for r in RECORDS])
def test_every_record_maps_or_is_excluded_with_a_reason(rec):
    mapped, reasons = map_record(rec)
    if mapped is None:
        assert reasons, f"{rec['id']} neither maps nor says why"
        return
    assert all(isinstance(x, str) and x for x in reasons)
    b = estimate(mapped.model, gpu=mapped.gpu, **mapped.options)
    assert b.peak_bytes > 0


def test_headline_excludes_what_the_estimator_does_not_model():
    v = validate()
    by_id = {r.id: r for r in v.rows}
    assert by_id["litgpt-rt-llama2-7b-lora-mb1"].headline
    phi = by_id["litgpt-rt-phi15-lora-mb1"]  # mapped (the phi-1.5 profile), shown, not headlined
    assert phi.mapped is not None and not phi.headline
    paged = by_id["litgpt-rt-llama2-7b-qlora-nf4-mb1"]
    assert paged.mapped is not None
    assert not paged.headline
    assert any("paged optimizer" in x for x in paged.reasons)
    assert not by_id["litgpt-rt-llama2-7b-lora-mb4-oom"].headline
    for r in v.rows:
        rec = next(x for x in RECORDS if x["id"] == r.id)
        if not rec["is_measurement"] or not rec["config_complete"]:
            assert not r.headline
    assert sum(r.headline for r in v.rows) == v.summaries[-1].n


def test_lit_gpt_maps_onto_hf_equivalent_settings():
    rec = next(r for r in RECORDS if r["id"] == "litgpt-rt-llama2-7b-qlora-nf4dq-mb1")
    mapped, _ = map_record(rec)
    assert mapped is not None
    assert mapped.model == "llama-2-7b"
    assert mapped.gpu == "a100-40gb"
    o = mapped.options
    assert o["lora_target"] == "q_proj,v_proj"
    assert (o["quant"], o["double_quant"], o["dtype"], o["mixed_precision"]) == ("nf4", True, "bf16", "no")
    assert o["optim"] == "paged_adamw_32bit"
    assert o["kbit_prep"] is False
    lora = map_record(next(r for r in RECORDS if r["id"] == "litgpt-rt-llama2-7b-lora-mb1"))[0]
    assert lora.options["optim"] == "adamw_torch"
    assert lora.options["grad_accum"] == 128


def test_lit_gpt_records_of_its_own_non_llama_models_are_shown_not_headlined():
    """lit-gpt runs its own model code: its Llama records are in the headline, its phi-1_5 ones (mapped since the
    phi-1.5 profile exists) are estimated and shown with the reason, not averaged in."""
    phi = [r for r in RECORDS if str(r.get("framework", "")).startswith("lit-gpt") and "phi" in str(r["model"])]
    assert phi
    for rec in phi:
        mapped, reasons = map_record(rec)
        assert mapped is not None and mapped.model == "phi-1.5"
        assert any("lit-gpt's own phi implementation" in x for x in reasons)
    llama = map_record(next(r for r in RECORDS if r["id"] == "litgpt-rt-llama2-7b-lora-mb1"))[1]
    assert not any("lit-gpt's own" in x for x in llama)


def test_unit_conversion():
    assert measured_bytes(4.82, "GB") == 4_820_000_000  # lit-gpt prints max_memory_allocated() / 1e9
    assert measured_bytes(1.0, "GiB") == 1024**3
    assert measured_bytes(2.5, "GiB") == 5 * 1024**3 // 2


@pytest.mark.parametrize(
    ("kind", "quantity"),
    [("max_memory_allocated", "peak_bytes"), ("reserved", "reserved_bytes"), ("nvidia-smi", "device_bytes")],
)
def test_quantity_compared_matches_measure_kind(kind, quantity, tmp_path):
    rec = {**next(r for r in RECORDS if r["id"] == "litgpt-rt-llama2-7b-lora-mb1"), "measure_kind": kind}
    mapped, _ = map_record(rec)
    assert mapped.quantity == quantity == MEASURE_KIND_QUANTITY[kind]
    b = estimate(mapped.model, gpu=mapped.gpu, **mapped.options)
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(rec))
    (row,) = validate(path).rows
    assert row.estimated_bytes == getattr(b, quantity)  # the figure the record measured, not another


def test_quantity_follows_measure_kind_in_the_rows(tmp_path):
    rec = next(r for r in RECORDS if r["id"] == "litgpt-rt-llama2-7b-lora-mb1")
    path = tmp_path / "set.jsonl"
    path.write_text(
        "\n".join(json.dumps({**rec, "id": k, "measure_kind": k}) for k in ("max_memory_allocated", "nvidia-smi"))
    )
    rows = {r.id: r for r in validate(path).rows}
    assert rows["nvidia-smi"].estimated_bytes > rows["max_memory_allocated"].estimated_bytes


def test_cli_validate_json():
    res = CliRunner().invoke(main, ["validate", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert set(out) >= {"rows", "summary", "exclusions", "counts"}
    assert out["counts"]["records"] == len(RECORDS)
    row = out["rows"][0]
    assert set(row) >= {
        "id",
        "source",
        "framework",
        "config",
        "measured_bytes",
        "estimated_bytes",
        "error",
        "excluded",
        "headline",
    }
    assert {s["confidence"] for s in out["summary"]} >= {"all"}


def test_cli_validate_table():
    res = CliRunner().invoke(main, ["validate"])
    assert res.exit_code == 0, res.output
    assert "median |error|" in res.output
    assert "architecture not in profiles" in res.output


@pytest.mark.parametrize("measured", [None, "4.8", -1, float("nan"), True])
def test_a_record_without_a_usable_measurement_is_one_error_line(tmp_path, measured):
    """`measured_gb: null` raised a TypeError (found by tests/test_fuzz_commands.py); each of these is one
    `error:` line naming the field."""
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "x", "measured_gb": measured}) + "\n")
    r = CliRunner().invoke(main, ["validate", "--data", str(data)])
    assert r.exit_code == 2, r.output
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert r.stderr.startswith("error:")
    assert "measured_gb must be a number" in r.stderr


def test_lora_targets_that_are_not_names_are_one_error_line(tmp_path):
    """`lora_targets: [0]` raised a TypeError (found by tests/test_fuzz_commands.py)."""
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "x", "measured_gb": 4.8, "lora_targets": [0]}) + "\n")
    r = CliRunner().invoke(main, ["validate", "--data", str(data)])
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error:")
    assert "lora_targets must be a list of module names" in r.stderr
