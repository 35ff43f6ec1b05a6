"""Remote-code model types (spec/remote_code.py): estimated from a config dict, counts held to a published figure
or to the remote code's own arithmetic, LoRA targets under the remote code's module names, and a config.json
missing a field the layout reads refused in one line (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from vramplan.api import estimate
from vramplan.cli import main
from vramplan.errors import VramplanError
from vramplan.sources.profiles import load_model_config
from vramplan.spec import model_spec_from_config

QWEN_7B = {"model_type": "qwen", "hidden_size": 4096, "intermediate_size": 22016, "kv_channels": 128,
           "num_attention_heads": 32, "num_hidden_layers": 32, "no_bias": True, "seq_length": 8192,
           "max_position_embeddings": 8192, "tie_word_embeddings": False, "vocab_size": 151936}  # fmt: skip
MIMO_7B = {"model_type": "mimo", "hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
           "num_hidden_layers": 36, "num_key_value_heads": 8, "head_dim": 128, "attention_bias": True,
           "tie_word_embeddings": False, "vocab_size": 151680, "num_nextn_predict_layers": 1}  # fmt: skip
BTLM_3B = {"model_type": "btlm", "activation_function": "swiglu", "position_embedding_type": "alibi",
           "n_embd": 2560, "n_head": 32, "n_inner": 6826, "n_layer": 32, "n_positions": 8192, "vocab_size": 50257}  # fmt: skip
MOSS_TINY = {
    "model_type": "moss_vl",
    "text_config": {"vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 6,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "cross_attention_layers": [2, 5]},
    "vision_config": {"hidden_size": 32, "depth": 2, "intermediate_size": 64, "in_channels": 3, "temporal_patch_size": 2,
                      "patch_size": 14, "num_position_embeddings": 64, "spatial_merge_size": 2, "out_hidden_size": 64,
                      "deepstack_visual_indexes": [0]},
}  # fmt: skip


def test_qwen_7b_counts_and_names() -> None:
    """QWenLMHeadModel's arithmetic (modeling_qwen.py): per layer c_attn 3P·h + 3P (bias always), c_proj P·h,
    w1 / w2 f·h, c_proj h·f, two RMSNorm weights; P = kv_channels·heads = 4096, f = 22016 // 2 = 11008;
    wte and an untied lm_head. The Qwen technical report (arXiv 2309.16609) and model card call it "7B"."""
    m = model_spec_from_config(QWEN_7B, "qwen-7b")
    h, p, f, layers, vocab = 4096, 128 * 32, 22016 // 2, 32, 151936
    layer = 3 * p * h + 3 * p + p * h + 2 * f * h + h * f + 2 * h
    assert m.total_params == layers * layer + 2 * vocab * h + h  # 7,721,324,544
    assert [lin.name for lin in m.linears] == ["attn.c_attn", "attn.c_proj", "mlp.w1", "mlp.w2", "mlp.c_proj"]
    assert (m.head_dim, m.num_key_value_heads, m.intermediate_size) == (128, 32, 22016)
    assert m.approximation.kind == "remote" and m.approximation.error_band == 0.20
    roles = dict(m.walk_roles)
    assert (roles["mlp.w2"], roles["mlp.w1"], roles["attn.c_proj"]) == ("gate_proj", "up_proj", "o_proj")


def test_qwen_biases_follow_no_bias() -> None:
    """`bias=not config.no_bias` on c_proj, w1, w2 and mlp.c_proj: 3 h + 2 f more per layer."""
    biased = model_spec_from_config({**QWEN_7B, "no_bias": False}, "qwen-7b-bias")
    assert biased.total_params - model_spec_from_config(QWEN_7B, "q").total_params == 32 * (2 * 4096 + 2 * 11008)


def test_mimo_matches_qwen2_plus_its_mtp_layers() -> None:
    """The remote code's own arithmetic with the installed transformers: MiMoForCausalLM is Qwen2ForCausalLM plus
    `num_nextn_predict_layers` MiMoMTPLayers (a Qwen2Attention, a Qwen2MLP, five Qwen2RMSNorm, input_proj
    nn.Linear(2h, h, bias=False)), built here on meta from transformers' own classes."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention, Qwen2MLP, Qwen2RMSNorm

    config = Qwen2Config(**{k: v for k, v in MIMO_7B.items() if k not in ("model_type", "num_nextn_predict_layers")})
    with torch.device("meta"):
        base = sum(p.numel() for p in Qwen2ForCausalLM(config).parameters())
        mtp = [Qwen2Attention(config, 0), Qwen2MLP(config), torch.nn.Linear(8192, 4096, bias=False)]
        mtp += [Qwen2RMSNorm(4096) for _ in range(5)]
        per_mtp = sum(p.numel() for mod in mtp for p in mod.parameters())
    m = model_spec_from_config(MIMO_7B, "mimo-7b")
    assert m.total_params == base + per_mtp  # 7,833,409,536
    frozen = sum(n * (s[0] if len(s) == 1 else s[0] * s[1]) for s, n, _ in m.tower_tensors)
    assert frozen == per_mtp and "frozen" in m.approximation.note
    two = model_spec_from_config({**MIMO_7B, "num_nextn_predict_layers": 2}, "mimo-2mtp")
    assert two.total_params - m.total_params == per_mtp


def test_mimo_mtp_layers_get_no_gradient_in_full_fine_tuning() -> None:
    """Full fine-tune: the MTP layers' weights are held, their gradients and AdamW states are not."""
    m = model_spec_from_config(MIMO_7B, "mimo-7b")
    b = estimate(m, gpu="a100-80gb", method="full", seq=512, batch=1)
    assert b.params_trainable == m.total_params - 210_790_400  # one MTP layer: 177,223,680 + 2 h² + 3 h


def test_btlm_counts_card_and_eager_attention() -> None:
    """BTLM's arithmetic: per layer LayerNorm ln_1 / ln_2 (weight, bias), Conv1D c_attn (h, 3h) + bias, c_proj
    (h, h) + bias, c_fc and c_fc2 (h, n_inner) + bias, c_proj (n_inner, h) + bias; wte, ln_f, ALiBi slopes
    (heads, 1), no wpe, lm_head tied. The model card: "a 3 billion parameter language model"."""
    m = model_spec_from_config(BTLM_3B, "btlm-3b-8k")
    h, f, layers, vocab, heads = 2560, 6826, 32, 50257, 32
    layer = 4 * h + (3 * h * h + 3 * h) + (h * h + h) + 2 * (h * f + f) + (f * h + h)
    assert m.total_params == layers * layer + vocab * h + 2 * h + heads  # 2,646,255,776
    assert round(m.total_params / 1e9) == 3
    learned = model_spec_from_config({**BTLM_3B, "position_embedding_type": "learned"}, "btlm-learned")
    assert learned.total_params - m.total_params == 8192 * h - heads  # wpe instead of the slopes
    gelu = model_spec_from_config({**BTLM_3B, "activation_function": "gelu_new"}, "btlm-gelu")
    assert m.total_params - gelu.total_params == layers * (h * f + f)  # no c_fc2
    assert {lin.name for lin in m.linears} == {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_fc2", "mlp.c_proj"}
    b = estimate(m, gpu="a100-80gb", method="lora", seq=1024, batch=1, attn="sdpa")
    assert any("btlm has no sdpa attention in its remote code" in n for n in b.train.notes)
    assert b.train.attn == "eager"


def test_moss_vl_text_decoder_and_tower() -> None:
    """MOSS-VL: text self-attention layers (Qwen3's), cross-attention layers at cross_attention_layers, the
    vision tower and merger counted as frozen tower weights (moss_vl.py of OpenMOSS/MOSS-VL)."""
    m = model_spec_from_config(MOSS_TINY, "moss-tiny")
    h, q, kv, hd, inter, vocab, layers, cross = 64, 64, 32, 16, 128, 1000, 6, 2
    attn = 2 * h * q + 2 * h * kv + 2 * hd  # q, o, k, v, q_norm, k_norm
    text = vocab * h * 2 + h + layers * (3 * h * inter + 2 * h) + layers * attn + cross * 2  # + the two gates
    vh, vi, merged = 32, 64, 32 * 4 * 2
    block = 4 * vh + (3 * vh * vh + 3 * vh) + (vh * vh + vh) + (vi * vh + vi) + (vh * vi + vh)
    tower = (vh * 3 * 2 * 14 * 14 + vh) + 64 * vh + 2 * block + 2 * 2 * vh + (merged * merged + merged)
    tower += (64 * merged + 64) + 64  # linear_fc2 and the separator token
    assert m.total_params == text + tower
    assert sum(s[0] if len(s) == 1 else 0 for s, n, _ in m.tower_tensors) > 0
    names = {lin.name for lin in m.linears}
    assert {"self_attn.q_proj", "cross_attn.q_proj", "mlp.gate_proj"} <= names
    assert m.module_prefix == "model.language_model.layers.*."


@pytest.mark.parametrize(
    ("cfg", "target", "trainable"),
    [
        (QWEN_7B, "c_attn", 32 * 16 * (4096 + 3 * 4096)),
        (QWEN_7B, "c_attn,w1,w2", 32 * 16 * ((4096 + 3 * 4096) + 2 * (4096 + 11008))),
        (BTLM_3B, "c_proj", 32 * 16 * ((2560 + 2560) + (6826 + 2560))),  # attn.c_proj and mlp.c_proj, as PEFT
        (BTLM_3B, "c_fc,c_fc2", 32 * 16 * 2 * (2560 + 6826)),
    ],
)
def test_lora_targets_resolve_under_remote_names(cfg: dict, target: str, trainable: int) -> None:
    b = estimate(model_spec_from_config(cfg, "m"), gpu="a100-80gb", method="lora", lora_target=target,
                 lora_rank=16, seq=512, batch=1)  # fmt: skip
    assert b.params_trainable == trainable


@pytest.mark.parametrize(
    ("cfg", "drop", "said"),
    [
        (QWEN_7B, "kv_channels", "needs kv_channels"),
        (QWEN_7B, "no_bias", "needs no_bias"),
        (BTLM_3B, "n_embd", "needs n_embd"),
        (BTLM_3B, "activation_function", "needs activation_function"),
        (MIMO_7B, "num_nextn_predict_layers", "needs num_nextn_predict_layers"),
    ],
)
def test_missing_field_is_one_line_exit_2(tmp_path: Path, cfg: dict, drop: str, said: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({k: v for k, v in cfg.items() if k != drop}))
    result = CliRunner().invoke(main, ["estimate", str(path), "--gpu", "a100-80"])
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("error")]
    assert len(error) == 1 and said in error[0] and "remote code" in error[0], result.output


def test_bad_values_are_named() -> None:
    with pytest.raises(VramplanError, match=r"kv_channels='128'") as e:
        model_spec_from_config({**QWEN_7B, "kv_channels": "128"}, "qwen")
    assert "\n" not in str(e.value)
    with pytest.raises(VramplanError, match="text_config.cross_attention_layers"):
        model_spec_from_config({**MOSS_TINY, "text_config": {**MOSS_TINY["text_config"], "cross_attention_layers": 2}}, "m")


@pytest.mark.parametrize(("name", "total"), [("qwen-7b", 7_721_324_544), ("mimo-7b-rl", 7_833_409_536)])
def test_builtin_profiles_estimate_offline(name: str, total: int) -> None:
    _, cfg = load_model_config(name)
    assert model_spec_from_config(cfg, name).total_params == total
    result = CliRunner().invoke(main, ["estimate", cfg["vramplan_profile"]["repo"], "--gpu", "a100-80", "--json"])
    assert result.exit_code == 0, result.output


MAMBA_SSM_2_8B = {"d_model": 2560, "n_layer": 64, "vocab_size": 50277, "ssm_cfg": {}, "rms_norm": True,
                  "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 8}  # fmt: skip


def test_mamba_ssm_config_is_transformers_mamba() -> None:
    """state-spaces/mamba-2.8b's own config.json (no model_type) read as the MambaConfig transformers' conversion
    writes (hidden_size = d_model, vocab padded to a multiple of 8, time_step_rank = ceil(d_model / 16)): the
    same parameters as MambaForCausalLM built from it on meta, 2,768,345,600 ("2.8b")."""
    import torch
    import transformers

    config = transformers.MambaConfig(hidden_size=2560, num_hidden_layers=64, vocab_size=50280)
    with torch.device("meta"):
        total = sum(p.numel() for p in transformers.MambaForCausalLM(config).parameters())
    m = model_spec_from_config(MAMBA_SSM_2_8B, "state-spaces/mamba-2.8b")
    assert m.total_params == total and m.model_type == "mamba"
    assert "mamba_ssm's config.json" in m.approximation.note
    assert round(total / 1e9, 1) == 2.8


@pytest.mark.parametrize(
    ("change", "said"),
    [({"ssm_cfg": {"layer": "Mamba2"}}, "not a Mamba1 block"), ({"ssm_cfg": {"d_ssm": 64}}, "ssm_cfg keys"),
     ({"n_layer": "64"}, "'n_layer' is '64'")],
)  # fmt: skip
def test_mamba_ssm_config_it_cannot_read_is_one_line(tmp_path: Path, change: dict, said: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**MAMBA_SSM_2_8B, **change}))
    result = CliRunner().invoke(main, ["estimate", str(path), "--gpu", "a100-80"])
    assert result.exit_code == 2 and said in result.output and len(result.output.strip().splitlines()) == 1
