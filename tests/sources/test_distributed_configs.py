"""The distributed part of a training file: `deepspeed:` JSON, `fsdp` / `fsdp_config`, accelerate configs.

Oracles: transformers' own `HfTrainerDeepSpeedConfig.trainer_config_finalize` for "auto" bucket sizes; the
shipped DeepSpeed files' keys as the frameworks publish them (sources/configs/deepspeed.py SHIPPED cites
repository, commit and path); DeepSpeed's stage_1_and_2.py `backward` for the second IPG bucket.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from vramplan.api import estimate
from vramplan.cli import main
from vramplan.estimator.distributed import fsdp_units, shard
from vramplan.sources.configs.deepspeed import SHIPPED, from_deepspeed_json, read_deepspeed, read_fsdp
from vramplan.sources.configs.formats import read_config
from vramplan.sources.profiles import load_model
from vramplan.spec import resolve_train
from vramplan.spec.parallel import AUTO, ZeroBuckets, resolve_parallel


@pytest.fixture(autouse=True)
def _offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


@pytest.mark.parametrize("hidden", [896, 4096, 8192])
def test_auto_buckets_are_what_transformers_fills(hidden: int):
    """transformers 5.24 integrations/deepspeed.py fills "auto" from the model's hidden_size; run it (its
    accelerate base class supplies get_value / fill_only; deepspeed itself is not needed to fill)."""
    from types import SimpleNamespace

    from accelerate.utils.deepspeed import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    keys = ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold")
    cfg = {"zero_optimization": {"stage": 3, **dict.fromkeys(keys, "auto")}}
    probe = object.__new__(type("Probe", (HfTrainerDeepSpeedConfig, HfDeepSpeedConfig), {}))
    HfDeepSpeedConfig.__init__(probe, cfg)
    probe.mismatches = []
    model = SimpleNamespace(config=SimpleNamespace(hidden_size=hidden))
    probe.trainer_config_finalize(SimpleNamespace(get_warmup_steps=lambda n: 1), model, 10)
    filled = probe.config["zero_optimization"]
    ours = ZeroBuckets(AUTO, AUTO, AUTO).resolved(hidden)
    assert [getattr(ours, k) for k in keys] == [filled[k] for k in keys]


def test_shipped_files_plan_their_stage_and_offload():
    expected = {  # file -> (strategy, offload), from each file's zero_optimization as shipped
        "zero1.json": ("zero1", "none"), "zero2.json": ("zero2", "optimizer"), "zero3.json": ("zero3", "none"),
        "zero3_bf16.json": ("zero3", "none"), "zero3_bf16_cpuoffload_all.json": ("zero3", "params"),
        "zero3_bf16_cpuoffload_params.json": ("zero3", "params"), "ds_z0_config.json": ("ddp", None),
        "ds_z2_config.json": ("zero2", "none"), "ds_z2_offload_config.json": ("zero2", "optimizer"),
        "ds_z3_config.json": ("zero3", "none"), "ds_z3_offload_config.json": ("zero3", "params"),
        "ds_z3_fp8_config.json": ("zero3", "optimizer"),
    }  # fmt: skip
    assert set(expected) == set(SHIPPED)
    for name, (strategy, offload) in expected.items():
        d = read_deepspeed(f"somewhere/{name}", "/nonexistent/x.yaml")
        assert d is not None
        assert (d.settings["strategy"], d.settings.get("offload")) == (strategy, offload), name
        assert "not on this machine" in d.notes[0]
    # axolotl's un-prefixed stage-3 names are DeepSpeed aliases of the stage3_ ones
    d = read_deepspeed("zero3_bf16.json", "/nonexistent/x.yaml")
    assert d.settings["buckets"] == ZeroBuckets(AUTO, AUTO, AUTO, 0, True)
    assert read_deepspeed("my_own.json", "/nonexistent/x.yaml") is None


def test_a_deepspeed_file_beside_the_config_wins_over_the_shipped_one(tmp_path: Path):
    """axolotl's `deepspeed: deepspeed_configs/zero3.json` is relative to the repository root, above the
    example's folder."""
    (tmp_path / "deepspeed_configs").mkdir()
    (tmp_path / "examples").mkdir()
    zero = {"stage": 2, "reduce_bucket_size": 2e8, "overlap_comm": True}
    (tmp_path / "deepspeed_configs" / "zero3.json").write_text(json.dumps({"zero_optimization": zero}))
    d = read_deepspeed("deepspeed_configs/zero3.json", str(tmp_path / "examples" / "x.yml"))
    assert d.settings["strategy"] == "zero2"
    assert d.settings["buckets"].reduce_bucket_size == 200_000_000
    assert d.notes == ()


def test_fsdp_keys():
    """accelerate's FullyShardedDataParallelPlugin names: fsdp_ prefix or not, the FSDP1 strategy words."""
    assert read_fsdp(["full_shard", "auto_wrap"], {"fsdp_offload_params": True}).settings == {
        "strategy": "fsdp", "offload": "params", "reshard_after_forward": True,
    }  # fmt: skip
    assert read_fsdp("shard_grad_op auto_wrap", {}).settings["reshard_after_forward"] is False
    assert (
        read_fsdp(None, {"fsdp_version": 2, "reshard_after_forward": False}).settings["reshard_after_forward"] is False
    )
    assert read_fsdp(None, {"sharding_strategy": "HYBRID_SHARD"}).settings["strategy"] == "fsdp-hybrid"
    assert read_fsdp(None, {"fsdp_sharding_strategy": "NO_SHARD"}).settings["strategy"] == "ddp"


def test_overlap_comm_doubles_the_stage_2_reduce_bucket():
    """stage_1_and_2.py `backward`: buf_0, and buf_1 when overlap_comm ("double buffers")."""
    m = load_model("llama-2-7b")
    t = resolve_train(m, method="lora")
    single = estimate(m, train=t)
    size = 200_000_000
    for overlap, buckets in ((False, 1), (True, 2)):
        spec = resolve_parallel(t, gpus=4, strategy="zero2", buckets=ZeroBuckets(size, overlap_comm=overlap))
        pp = shard(m, t, spec, single)
        bwd = pp.breakdown.phases[1].components
        base = shard(m, t, resolve_parallel(t, gpus=4, strategy="zero2", buckets=ZeroBuckets(0)), single)
        assert bwd.temporaries - base.breakdown.phases[1].components.temporaries == buckets * size * 2  # bf16


def test_auto_buckets_follow_the_model():
    """ds_z3_config.json's "auto" on Llama-2-7B (hidden 4096): the reduce bucket is 4096² bf16 elements."""
    m = load_model("llama-2-7b")
    t = resolve_train(m, method="lora")
    d = from_deepspeed_json({"zero_optimization": SHIPPED["ds_z3_config.json"][1]}, "ds_z3_config.json")
    spec = resolve_parallel(t, gpus=8, strategy="zero3", buckets=d.settings["buckets"])
    named = dict(shard(m, t, spec, estimate(m, train=t)).buffers)
    assert named["reduce bucket (reduce_bucket_size 16,777,216)"] == 4096 * 4096 * 2


def test_fsdp_without_reshard_keeps_every_layer_unsharded():
    """FSDP2 reshard_after_forward=False / SHARD_GRAD_OP: all L layers unsharded at the end of forward."""
    m = load_model("llama-2-7b")
    t = resolve_train(m, method="full", optim="adamw_torch")
    single = estimate(m, train=t)
    _, layer, _, _ = fsdp_units(m, t)
    keep = shard(m, t, resolve_parallel(t, gpus=8, strategy="fsdp", reshard_after_forward=False), single)
    re = shard(m, t, resolve_parallel(t, gpus=8, strategy="fsdp"), single)
    diff = keep.breakdown.phases[0].components.temporaries - re.breakdown.phases[0].components.temporaries
    assert diff == (32 - 1) * layer  # 7B: 32 layers held instead of 1


def test_accelerate_config_and_cli(tmp_path: Path):
    acc = tmp_path / "fsdp.yaml"
    acc.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: FSDP\nnum_processes: 8\nmixed_precision: bf16\n"
        "fsdp_config:\n  fsdp_sharding_strategy: FULL_SHARD\n  fsdp_offload_params: true\n"
    )
    fs = read_config(str(acc))
    assert fs.format == "accelerate"
    assert fs.parallel == {"strategy": "fsdp", "offload": "params", "reshard_after_forward": True, "gpus": 8}
    r = CliRunner().invoke(main, ["estimate", "llama-2-7b", "--method", "lora", "--from", str(acc), "--json"])
    assert r.exit_code == 0, r.output
    p = json.loads(r.stdout)["parallel"]
    assert (p["strategy"], p["gpus"], p["offload"]) == ("fsdp", 8, "params")
    # a flag typed beats the file
    r = CliRunner().invoke(
        main, ["estimate", "llama-2-7b", "--method", "lora", "--from", str(acc), "--json", "--strategy", "zero2"]
    )
    p = json.loads(r.stdout)["parallel"]
    assert (p["strategy"], p["gpus"], p["offload"]) == ("zero2", 8, "none")


def _write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_llamafactory_v1_lora_with_quantization_and_fsdp2(tmp_path: Path):
    """examples/v1/train_qlora/quantization.yaml (LLaMA-Factory): peft_config lora r 16, quant_config bnb 4-bit,
    dist_config fsdp2, micro_batch_size 1, cutoff_len 2048."""
    path = _write(tmp_path, "v1.yaml", (
        "model: Qwen/Qwen3-0.6B\nmodel_class: llm\npeft_config:\n  name: lora\n  r: 16\n  lora_alpha: 32\n"
        "  lora_dropout: 0.05\n  target_modules: all\ndist_config:\n  name: fsdp2\n  dcp_path: null\n"
        "quant_config:\n  name: bnb\n  quantization_bit: 4\nmicro_batch_size: 1\ncutoff_len: 2048\n"
    ))  # fmt: skip
    fs = read_config(path)
    assert fs.format == "llamafactory_v1"
    keys = ("method", "quant", "lora_rank", "lora_alpha", "lora_target", "batch", "seq")
    assert {k: fs.settings[k] for k in keys} == {
        "method": "qlora", "quant": "nf4", "lora_rank": 16, "lora_alpha": 32, "lora_target": "all-linear",
        "batch": 1, "seq": 2048,
    }  # fmt: skip
    assert fs.parallel["strategy"] == "fsdp"
    assert fs.model == "Qwen/Qwen3-0.6B"


def test_llamafactory_v1_full_is_full_not_lora(tmp_path: Path):
    """No peft_config in v1 is full fine-tuning (model_args.py: peft_config None); batch from micro_batch_size."""
    path = _write(tmp_path, "v1.yaml", "model: x\nmodel_class: llm\nmicro_batch_size: 2\ncutoff_len: 1024\n"
                  "optim_config:\n  name: muon\n")  # fmt: skip
    r = CliRunner().invoke(main, ["estimate", "--from", path, "--model", "llama-2-7b", "--json"])
    assert r.exit_code == 0, r.output
    i = json.loads(r.stdout)["inputs"]
    assert (i["method"], i["batch"], i["seq"], i["optim"]) == ("full", 2, 1024, "muon")


def test_llamafactory_optimizer_switches_and_memory_neutral_keys(tmp_path: Path):
    path = _write(tmp_path, "lf.yaml", (
        "model_name_or_path: x\nstage: sft\nfinetuning_type: full\nuse_galore: true\ngalore_rank: 32\n"
        "galore_layerwise: true\nloraplus_lr_ratio: 16\nuse_unsloth_gc: true\n"
    ))  # fmt: skip
    fs = read_config(path)
    assert (fs.settings["optim"], fs.settings["optim_rank"]) == ("galore_adamw_layerwise", 32)
    assert fs.settings["activation_offload"] == "checkpoints"
    assert fs.not_modeled == ()
    assert any("no memory change" in n for n in fs.notes)
    badam = read_config(_write(tmp_path, "b.yaml", "model_name_or_path: x\nfinetuning_type: full\nuse_badam: true\n"))
    assert {k: badam.settings[k] for k in ("optim", "method", "freeze_trainable_layers")} == {
        "optim": "badam", "method": "freeze", "freeze_trainable_layers": 1,
    }  # fmt: skip


def test_axolotl_offloading_keys(tmp_path: Path):
    path = _write(tmp_path, "ax.yml", (
        "base_model: x\nadapter: lora\ngradient_checkpointing: offload\noptimizer: ao_adamw_4bit\n"
        "gradient_checkpointing_kwargs:\n  use_reentrant: false\npeft_use_rslora: true\n"
    ))  # fmt: skip
    fs = read_config(path)
    # axolotl 067b021 validation.py check_gradient_checkpointing_w_offload: "offload" = checkpointing +
    # activation_offloading: true (trl's OffloadActivations with streams), not Unsloth's checkpointer
    assert (fs.settings["grad_ckpt"], fs.settings["activation_offload"]) == (True, "all")
    assert fs.settings["optim"] == "ao_adamw_4bit"
    assert fs.not_modeled == ()


@pytest.mark.parametrize(
    ("keys", "offload", "disk"),
    [
        ("gradient_checkpointing: offload_disk\n", "all", True),  # rewritten to activation_offloading: disk
        ("gradient_checkpointing: true\nactivation_offloading: disk\n", "all", True),
        ("gradient_checkpointing: true\nactivation_offloading: true\n", "all", False),
        # Unsloth's CPU_Offloaded_Gradient_Checkpointer / OffloadActivations without streams: one input back
        ("gradient_checkpointing: true\nactivation_offloading: legacy\n", "checkpoints", False),
        ("gradient_checkpointing: true\nactivation_offloading: hidden_states\n", "all", False),
        ("gradient_checkpointing: true\nactivation_offloading: false\n", None, False),
    ],
)
def test_axolotl_activation_offloading_modes(tmp_path: Path, keys: str, offload: str | None, disk: bool):
    fs = read_config(_write(tmp_path, "ax.yml", "base_model: x\nadapter: lora\n" + keys))
    assert fs.settings.get("activation_offload") == offload
    assert fs.settings["grad_ckpt"] is True
    assert fs.not_modeled == ()
    assert any("on disk" in n for n in fs.notes) == disk


def test_axolotl_selective_checkpointing_is_listed(tmp_path: Path):
    """monkeypatch/selective_checkpointing.py keeps attention's outputs inside checkpointed layers: listed, not
    read as plain checkpointing without a word."""
    fs = read_config(_write(tmp_path, "ax.yml", "base_model: x\ngradient_checkpointing: true\n"
                                                "selective_checkpointing: true\n"))  # fmt: skip
    assert [u.key for u in fs.not_modeled] == ["selective_checkpointing"]
