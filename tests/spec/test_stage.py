"""The stage keys: TRL 1.16.0's defaults, the references each trainer keeps, the config readers."""

from __future__ import annotations

import pytest

from vramplan.errors import VramplanError
from vramplan.spec.stage import resolve_stage


def test_dpo_reference_is_the_disabled_adapter_under_lora_and_a_copy_otherwise():
    # DPOTrainer: a PeftModel with ref_model None uses `use_adapter(model, None)`; else create_model_from_path
    assert resolve_stage(uses_lora=True, stage="dpo")[0].reference == "adapter"
    assert resolve_stage(uses_lora=False, stage="dpo")[0].reference == "model"


def test_grpo_loads_a_reference_only_with_beta():
    assert resolve_stage(uses_lora=True, stage="grpo")[0].reference == "none"  # GRPOConfig.beta = 0.0
    assert resolve_stage(uses_lora=True, stage="grpo", pref_beta=0.04)[0].reference == "adapter"


def test_reference_free_losses_ignore_a_reference_with_a_warning():
    spec, notes = resolve_stage(uses_lora=True, stage="orpo", reference="model")
    assert spec.reference == "none"
    assert notes


def test_bad_stage_values_are_one_line_errors():
    with pytest.raises(VramplanError, match="stage"):
        resolve_stage(uses_lora=True, stage="dpoo")
    with pytest.raises(VramplanError, match="adapter"):
        resolve_stage(uses_lora=False, stage="dpo", reference="adapter")
    with pytest.raises(VramplanError, match="precomputed"):
        resolve_stage(uses_lora=True, stage="grpo", pref_beta=0.1, reference="precomputed")


def test_estimates_order_by_what_each_reference_keeps():
    from vramplan.api import estimate

    peaks = {ref: estimate("llama-3-8b", method="lora", stage="dpo", reference=ref).peak_bytes
             for ref in ("model", "adapter", "precomputed")}  # fmt: skip
    # a frozen copy adds its weights; the adapter-disabled forward adds only its workspace
    assert peaks["model"] > peaks["adapter"] >= peaks["precomputed"]


def test_vllm_colocate_adds_its_share_of_the_gpu():
    from vramplan.api import estimate

    hf = estimate("llama-3-8b", method="lora", stage="grpo", generation="vllm-server", gpu="a100-80gb")
    colocated = estimate("llama-3-8b", method="lora", stage="grpo", generation="vllm-colocate", gpu="a100-80gb",
                         vllm_gpu_memory_utilization=0.25)  # fmt: skip
    assert colocated.peak_bytes - hf.peak_bytes == int(0.25 * 80 * 1024**3)  # utilization · a100-80gb bytes
    with pytest.raises(VramplanError, match="--gpu"):
        estimate("llama-3-8b", method="lora", stage="grpo", generation="vllm-colocate")


@pytest.mark.parametrize(
    ("text", "stage", "reference"),
    [
        ("model_name_or_path: llama-3-8b\nstage: dpo\nfinetuning_type: lora\npref_loss: orpo\n", "orpo", "none"),
        ("model_name_or_path: llama-3-8b\nstage: kto\nfinetuning_type: full\n", "kto", "model"),
        ("base_model: llama-3-8b\nadapter: lora\nrl: dpo\n", "dpo", "adapter"),
        ("base_model: llama-3-8b\nrl: grpo\ntrl:\n  beta: 0.001\n  num_generations: 4\n", "grpo", "model"),
        ("base_model: llama-3-8b\nreward_model: true\n", "rm", "none"),
        # LLaMA-Factory's ASFT: stage sft with use_asft_loss loads a frozen copy (create_ref_model)
        ("model_name_or_path: llama-3-8b\nstage: sft\nfinetuning_type: full\nuse_asft_loss: true\n", "asft", "model"),
        ("model_name_or_path: llama-3-8b\nstage: sft\nuse_asft_loss: false\n", "sft", "none"),
    ],
)
def test_config_files_name_their_stage(tmp_path, text, stage, reference):
    import json

    from click.testing import CliRunner

    from vramplan.cli import main

    path = tmp_path / "run.yaml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["estimate", "--from", str(path), "--json"])
    assert result.exit_code == 0, result.output
    inputs = json.loads(result.stdout)["inputs"]
    assert (inputs["stage"], inputs["reference"]) == (stage, reference)


def test_asft_keeps_a_frozen_copy_in_the_compute_dtype():
    from vramplan.api import estimate

    # the reference is a model the loss calls every step: no adapter / precomputed stand-in
    assert resolve_stage(uses_lora=True, stage="asft")[0].reference == "model"
    with pytest.raises(VramplanError, match="--reference model"):
        resolve_stage(uses_lora=True, stage="asft", reference="adapter")
    # full tuning under the LLaMA-Factory recipe: fp32 trainable weights, the copy in bf16 (load_model with
    # is_trainable=False), so the copy adds params · 2 bytes to the weights at every moment
    shape = {"method": "full", "recipe": "llamafactory", "batch": 1, "seq": 512}
    sft = estimate("llama-3.2-1b", **shape)
    asft = estimate("llama-3.2-1b", **shape, stage="asft")
    assert sft.components.weights == 0  # every weight trains: counted as trainable
    assert asft.components.weights == sft.params_total * 2


def test_suggest_offers_the_stage_levers_each_estimated():
    from vramplan.api import estimate
    from vramplan.plan.advice import suggest
    from vramplan.sources.profiles import find_gpu, load_model
    from vramplan.spec import resolve_train

    m = load_model("llama-3-8b")
    t = resolve_train(m, method="lora", stage="dpo", reference="model", batch=2, seq=2048)
    gpu = find_gpu("a100-40gb")
    found = {s.change.split(" ")[0]: s for s in suggest(m, t, gpu, limit=20)}
    # the adapter-disabled reference drops the frozen copy's weights: its saving is at least their bf16 bytes
    adapter = found["--reference"]
    assert adapter.saved_bytes >= 8_030_261_248 * 2 - 1024**3  # llama-3-8b params · bf16, less a GiB of slack
    assert adapter.breakdown.peak_bytes == estimate(m, train=adapter.breakdown.train, gpu=gpu).peak_bytes
    assert "--precompute-ref" in found


@pytest.mark.parametrize(
    ("alias", "loss"), [({"fused_lm_head": True}, "trl-chunked"), ({"fused_lm_head": False}, "hf")]
)
@pytest.mark.parametrize("stage", ["sft", "dpo", "kto", "grpo", "orpo"])
def test_fused_lm_head_is_an_alias_of_the_loss(alias, loss, stage):
    # one LM-head control: the deprecated --fused-lm-head / --no-fused-lm-head resolve to the same TrainSpec
    # (and so the same estimate) as --loss trl-chunked / --loss hf, for every stage
    from vramplan.api import estimate
    from vramplan.sources.profiles import load_model
    from vramplan.spec import resolve_train

    m = load_model("llama-3-8b")
    by_alias = resolve_train(m, method="lora", stage=stage, **alias)
    by_loss = resolve_train(m, method="lora", stage=stage, loss=loss, explicit={"loss"})
    assert by_alias == by_loss
    assert by_alias.loss == loss
    assert by_alias.stage.fused_lm_head == (loss == "trl-chunked" and stage != "sft")
    assert estimate(m, train=by_alias).peak_bytes == estimate(m, train=by_loss).peak_bytes


def test_the_stage_default_head_follows_the_trainer():
    from vramplan.sources.profiles import load_model
    from vramplan.spec import resolve_train

    m = load_model("llama-3-8b")
    # TRL's DPOTrainer patches add_fused_lm_head; LLaMA-Factory's CustomDPOTrainer materializes the logits
    trl = resolve_train(m, method="lora", stage="dpo")
    assert (trl.loss, trl.stage.fused_lm_head) == ("trl-chunked", True)
    lf = resolve_train(m, method="lora", stage="dpo", recipe="llamafactory 0.9.4")
    assert (lf.loss, lf.stage.fused_lm_head) == ("hf", False)
    # a typed --loss beats the stage's default; a contradiction between the two spellings is one error
    typed = resolve_train(m, method="lora", stage="dpo", loss="hf", explicit={"loss"})
    assert (typed.loss, typed.stage.fused_lm_head) == ("hf", False)
    with pytest.raises(VramplanError, match="contradicts --loss hf"):
        resolve_train(m, method="lora", stage="dpo", loss="hf", fused_lm_head=True, explicit={"loss", "fused_lm_head"})


# axolotl 0.19.0 examples/ebft/llama-1b-ebft-strided.yaml and llama-1b-ebft-opencode.yaml (memory keys only)
EBFT_STRIDED = """base_model: llama-3.2-1b
rl: ebft
ebft:
  mode: strided
  stride: 8
  context_length: 8
  generate_max_len: 8
  n_samples_per_prompt: 4
  feature_layers: [0.25, 0.5, 0.75]
  ce_coef: 0.0
sequence_len: 256
micro_batch_size: 1
adapter: lora
"""
EBFT_STRUCTURED = """base_model: llama-3.2-1b
rl: ebft
ebft:
  feature_layers: [0.25, 0.5]
trl:
  num_generations: 4
  max_completion_length: 128
  use_vllm: false
sequence_len: 512
micro_batch_size: 2
adapter: lora
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (EBFT_STRIDED, {"stage": "ebft", "ebft_mode": "strided", "ebft_n_samples": 4, "ebft_stride": 8,
                        "feature_layers": 3, "reference": "none", "reward_model": "adapter"}),
        (EBFT_STRUCTURED, {"stage": "ebft", "ebft_mode": "structured", "num_generations": 4,
                           "max_completion_length": 128, "generation": "hf", "feature_layers": 2}),
    ],
)  # fmt: skip
def test_axolotl_ebft_is_estimated_as_ebft(tmp_path, text, expected):
    import json

    from click.testing import CliRunner

    from vramplan.cli import main

    path = tmp_path / "ebft.yaml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["estimate", "--from", str(path), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert {k: out["inputs"][k] for k in expected} == expected
    assert not [n for n in out["inputs"].get("not_modeled", []) if "ebft" in str(n)]


def test_strided_ebft_grows_with_its_rollouts():
    from vramplan.api import estimate

    # more rollouts per document (n_samples) and denser anchors (a smaller stride: more blocks, longer
    # sequences) both hold more in the step
    shape = {"method": "lora", "stage": "ebft", "ebft_mode": "strided", "seq": 256}
    peak = {(n, s): estimate("llama-3.2-1b", **shape, ebft_n_samples=n, ebft_stride=s).peak_bytes
            for n, s in ((2, 8), (4, 8), (4, 4))}  # fmt: skip
    assert peak[(2, 8)] < peak[(4, 8)] < peak[(4, 4)]
    with pytest.raises(VramplanError, match="too short for strided EBFT"):
        estimate("llama-3.2-1b", method="lora", stage="ebft", ebft_mode="strided", seq=12)  # (12 - 8 - 8) // 8 + 1 = 0
