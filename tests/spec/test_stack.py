"""--stack: the library versions modelled and the allocation rules of older releases (vramplan/spec/stack.py).

The figures below were traced on CPU (torch 2.13.0) with the releases named, installed from the registry into a
throwaway venv (CI cannot install them) by benchmarks/stack_trace.py: tiny configs run through the real code,
live bytes tracked per storage (a TorchDispatchMode with weak storage references), saved tensors through
saved_tensors_hooks (unique storages). Each rule's estimate is held to them.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from vramplan.errors import VramplanError
from vramplan.estimator.activations import activation_bytes
from vramplan.estimator.adapters import adapter_bytes
from vramplan.estimator.linear_ops import linear
from vramplan.estimator.logits import logits_bytes
from vramplan.estimator.walk import Walk, WalkSettings
from vramplan.spec import model_spec_from_config, resolve_train
from vramplan.spec.stack import CURRENT, PACKAGES, RULES, Stack, parse_stack, release, resolve_stack

LLAMA = dict(model_type="llama", max_position_embeddings=4096, torch_dtype="bfloat16", rms_norm_eps=1e-6)


def tiny(**fields):
    return model_spec_from_config({**LLAMA, **fields}, "tiny-llama")


# ---- parsing and reading the installed versions ----


def test_parse_stack_names_versions():
    assert parse_stack("transformers==4.57.6, bnb==0.43.1,PEFT==0.11.1") == {
        "transformers": "4.57.6", "bitsandbytes": "0.43.1", "peft": "0.11.1"}  # fmt: skip


@pytest.mark.parametrize(
    "text", ["transformers=4.57.6", "transfomers==4.57.6", "torch==latest", "peft==0.11,peft==0.12", "trl==", "  "]
)
def test_bad_stack_is_one_error(text):
    with pytest.raises(VramplanError):
        resolve_stack(text)


def test_unnamed_packages_are_read_installed_else_current(monkeypatch):
    import vramplan.spec.stack as stack_module

    installed = {"transformers": "4.46.3", "torch": "2.4.1+cu121"}  # an older machine; no peft, bnb, trl
    monkeypatch.setattr(stack_module, "installed_version", installed.get)
    stack = resolve_stack("bitsandbytes==0.43.1")
    assert [stack.version(p) for p in PACKAGES] == ["4.46.3", CURRENT["peft"], "0.43.1", "2.4.1+cu121", CURRENT["trl"]]
    assert stack.sources == ("installed", "current release", "named", "installed", "current release")
    assert stack.logits_upcast == "loss-shifted"  # 4.46 <= 4.46.3 < 4.49
    assert stack.sdpa_repeats_kv
    assert stack.trainer_default_optim == "adamw_torch"
    assert stack.matmul4bit_keeps_input
    assert not stack.adapters_in_base_dtype


def test_the_installed_versions_come_from_dist_info_folder_names():
    """The stack reads the environment from dist-info folder names (`installed_version`, the recipe's reader,
    held to importlib.metadata over the whole environment in test_recipe.py): every package installed here is
    found with importlib.metadata's version."""
    from importlib.metadata import PackageNotFoundError, version

    stack = resolve_stack()
    for package in PACKAGES:
        try:
            expected = version(package)
        except PackageNotFoundError:
            expected = None
        if expected is not None:
            assert (stack.version(package), stack.source(package)) == (expected.split("-")[0], "installed")


def test_release_ordering():
    assert release("4.57.6") < (5, 0) <= release("5.0.0rc1")
    assert release("2.13.0+cpu") == (2, 13, 0)


def test_the_current_releases_apply_no_rule():
    assert Stack().applied == ()
    named_now = resolve_stack(",".join(f"{p}=={v}" for p, v in CURRENT.items()))
    assert named_now.applied == ()
    assert named_now.named


def test_every_rule_names_its_source_and_a_boundary_the_current_release_passes():
    for rule in RULES:
        assert release(CURRENT[rule.package]) >= rule.since, rule.name
        assert ".py" in rule.source
        assert rule.package in PACKAGES


def test_a_named_trl_or_transformers_picks_the_recipe_version():
    from vramplan import estimate

    trl = estimate("llama-3.1-8b", method="lora", recipe="trl", stack="trl==0.21.0")
    assert trl.train.recipe == "trl 0.21.0"
    assert (trl.train.loss, trl.train.grad_ckpt) == ("hf", False)  # TRL before 1.0 / 1.15 (spec/recipe.py)
    trainer = estimate("llama-3.1-8b", method="lora", recipe="trainer", stack="transformers==4.46.3")
    assert trainer.train.recipe == "trainer (transformers 4.46.3)"


# ---- the rules, held to the traces ----

# transformers logits: LlamaForCausalLM bf16 (vocab 32000, hidden 16, 1 layer), batch 2 × seq 64, every weight
# frozen but the final norm; bytes above the live set at lm_head's start (forward peak), left after forward with
# the outputs dropped (saved), and the backward's peak over its start plus the saved set.
TRACED_LOGITS = {
    "4.44.2": (48_641_016, 16_124_920, 48_379_912),
    "4.48.3": (56_833_016, 16_116_728, 48_371_720),
    "4.57.6": (40_962_072, 16_372_744, 49_139_720),  # as 5.24.0: the loss upcasts, no shifted copy
    "5.24.0": (40_962_072, 16_372_744, 49_139_720),
}


@pytest.mark.parametrize("version", sorted(TRACED_LOGITS))
def test_logits_rule_against_the_traced_release(version):
    m = tiny(vocab_size=32000, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=4,
             num_key_value_heads=4)  # fmt: skip
    t = resolve_train(m, method="full", batch=2, seq=64, stack=f"transformers=={version}")
    estimated = logits_bytes(m, t)
    tv, nv = 2 * 64 * 32000, 2 * 63 * 32000  # tokens·vocab, shifted positions·vocab
    expected_forward = {"4.44.2": 4 * tv + 8 * nv,  # fp32 logits (the model's) + shifted copy + log_softmax
                        "4.48.3": 2 * tv + 4 * tv + 8 * nv,  # bf16 head + fp32 upcast + copy + log_softmax
                        "4.57.6": 2 * tv + 4 * tv + 4 * tv,
                        "5.24.0": 2 * tv + 4 * tv + 4 * tv}[version]  # fmt: skip
    assert estimated.forward_peak == expected_forward
    for figure, traced in zip(("forward_peak", "saved", "backward_peak"), TRACED_LOGITS[version], strict=True):
        # the trace also holds the final hidden state and labels (T·H, T·8 B): within 0.1 %
        assert getattr(estimated, figure) == pytest.approx(traced, rel=1e-3), figure


def test_adapter_dtype_rule_against_peft_0_11_1():
    """get_peft_model(LoraConfig(r=8, q_proj/v_proj)) on a bf16 llama (hidden 64, 1 layer): peft 0.11.1 traced
    2048 adapter parameters in bf16, 4096 bytes; peft 0.21.2 the same 2048 in fp32, 8192 bytes."""
    m = tiny(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
             num_key_value_heads=4)  # fmt: skip
    kw = dict(method="lora", dtype="bf16", lora_rank=8, lora_target="q_proj,v_proj")
    old = resolve_train(m, stack="peft==0.11.1", **kw)
    new = resolve_train(m, stack="peft==0.21.2", **kw)
    assert (adapter_bytes(m, old), adapter_bytes(m, new)) == (4096, 8192)  # 8·(64+64)·2 targets · 2 / 4 B
    qlora = resolve_train(m, stack="peft==0.11.1", **{**kw, "method": "qlora"})
    assert adapter_bytes(m, qlora) == 8192  # a 4-bit base weight is no float: PEFT 0.11 leaves them fp32


def test_sdpa_repeat_kv_rule_against_transformers_4_44_2():
    """One LlamaDecoderLayer (hidden 64, 8 heads, 2 kv heads), bf16, frozen, input requiring grad, batch 2 ×
    seq 32: autograd saved 189,184 B under 4.44.2 (repeat_kv: k and v saved with 8 heads) and 176,896 B under
    5.24.0 (enable_gqa: 2 heads): 12,288 B = K,V · batch·seq · (8−2) heads · head_dim 8 · 2 B."""
    # two layers: the second one's input requires grad (the first one's LoRA), as the traced layer's did
    m = tiny(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
             num_key_value_heads=2)  # fmt: skip
    kw = dict(method="lora", dtype="bf16", mixed_precision="no", batch=2, seq=32, lora_target="gate_proj",
              lora_dropout=0.0)  # fmt: skip
    old = activation_bytes(m, resolve_train(m, stack="transformers==4.44.2", **kw)).layer
    new = activation_bytes(m, resolve_train(m, stack="transformers==5.24.0", **kw)).layer
    assert old - new == 189_184 - 176_896 == 2 * 2 * 32 * (8 - 2) * 8 * 2
    # 4.57.6 traced 176,896 B, as 5.24.0 (use_gqa_in_sdpa with torch 2.13)
    assert activation_bytes(m, resolve_train(m, stack="transformers==4.57.6", **kw)).layer == new


# bitsandbytes MatMul4Bit: the real Linear4bit.forward (0.43.1: with a CPU stand-in for the CUDA-only
# dequantize_4bit returning the dense weight) on a 256-token input of 64 features, computed inside a
# function from a leaf: bytes still alive after forward beyond the leaf, the weight and the output.
TRACED_MATMUL4BIT = {  # (bitsandbytes, input dtype, checkpointing) -> bytes kept
    ("0.43.1", "fp32", None): 65_536,  # A = the fp32 input itself (set_compute_type: fp32 input -> fp32)
    ("0.43.1", "bf16", None): 32_768,
    ("0.43.1", "fp32", "reentrant"): 0,  # the checkpointed forward runs under no_grad: no ctx kept
    ("0.43.1", "fp32", "non-reentrant"): 65_536,  # ctx.tensors is no saved tensor: checkpointing keeps it
    ("0.50.2", "fp32", None): 0,
    ("0.50.2", "fp32", "non-reentrant"): 0,
}


@pytest.mark.parametrize(("key", "traced"), sorted(TRACED_MATMUL4BIT.items(), key=str))
def test_matmul4bit_rule_against_the_traced_release(key, traced):
    version, dtype, _ = key
    stack = resolve_stack(f"bitsandbytes=={version}")
    settings = WalkSettings(
        masked=False, autocast_dtype=None, weight_dtype="bf16", norm_dtype="fp32", adapter_dtype="fp32",
        quantized=True, int8=False, bnb_compute_dtype="bf16", lora_targets=frozenset(), lora_dropout=False,
        lora_rank=8, dora=False, attn="sdpa", matmul4bit_keeps_input=stack.matmul4bit_keeps_input,
        bnb_compute_from_input=stack.bnb_compute_from_input,
    )  # fmt: skip
    walk = Walk()
    x = walk.new(64, dtype, True)  # per token
    linear(walk, settings, x, "q_proj", 128, trainable=False, quantized=True)
    assert 256 * walk.ctx_only.real == (traced if key[2] != "reentrant" else 65_536)


def test_reentrant_checkpointing_drops_what_ctx_keeps():
    """transformers < 5.0 checkpoints reentrantly (traced: 0 B kept above, against 65,536 non-reentrant): a
    QLoRA step with checkpointing keeps no MatMul4Bit input under 4.57.6, one per distinct input under 5.x."""
    m = tiny(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4)  # fmt: skip
    kw = dict(method="qlora", batch=2, seq=32, grad_ckpt=True)
    saved = {
        stack: activation_bytes(m, resolve_train(m, stack=stack, **kw)).saved
        for stack in ("transformers==4.57.6,bitsandbytes==0.43.1", "transformers==4.57.6,bitsandbytes==0.50.2",
                      "transformers==5.24.0,bitsandbytes==0.43.1", "transformers==5.24.0,bitsandbytes==0.50.2")
    }  # fmt: skip
    values = list(saved.values())
    assert values[0] == values[1] == values[3]
    # 5.x with bnb 0.43, per layer on top: the fp32 norm outputs read by q/k/v and gate/up (2·H·4 B; fp32
    # after kbit prep, kept as they are: bnb < 0.47 computes in an fp32 input's dtype), o_proj's bf16 input
    # (SDPA's output under autocast, q_dim·2 B) and down_proj's fp32 one (the Linear4bit outputs return in the
    # input's dtype, intermediate·4 B)
    tokens = 2 * 32
    assert values[2] - values[3] == 2 * tokens * (2 * 64 * 4 + 64 * 2 + 128 * 4)


def test_trainer_default_optimizer_follows_the_stack():
    m = tiny(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
             num_key_value_heads=4)  # fmt: skip
    assert resolve_train(m, stack="transformers==4.53.3").optim == "adamw_torch"
    assert resolve_train(m, stack="transformers==4.57.6,torch==2.7.1").optim == "adamw_torch"
    assert resolve_train(m, stack="transformers==4.57.6,torch==2.8.0").optim == "adamw_torch_fused"
    assert resolve_train(m, stack="transformers==4.53.3", optim="adamw_8bit").optim == "adamw_8bit"


# A whole step: a tiny llama (vocab 4096, hidden 128, 8 heads, 2 kv heads, intermediate 256, 2 layers, untied)
# with LoRA r 8 on every linear, dropout 0, bf16 weights without autocast, batch 2 × seq 128, AdamW
# (foreach=False on CPU, no step temporary: estimated as adamw_torch_fused); the live-bytes peak of each phase
# of the second (steady-state) step.
TRACED_STEP = {  # stack -> (forward, backward, optimizer step)
    "transformers==5.24.0,peft==0.21.2": (17_472_936, 19_500_440, 3_190_160),
    "transformers==4.48.3,peft==0.11.1": (20_172_152, 17_909_128, 2_923_904),
}


@pytest.mark.parametrize("stack", sorted(TRACED_STEP))
def test_a_lora_step_under_the_traced_stack(stack):
    """Within 1 % per phase. The old stack's residual (forward −0.7 %, backward −0.8 %): about 0.14 MB at the
    loss and in backward that the walk does not attribute (4.48.3 keeps its training DynamicCache, 65,504 B,
    after the output is dropped; not modelled: the Trainer frees it then); the current one is within 0.1 %."""
    from vramplan import estimate

    m = tiny(vocab_size=4096, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=8,
             num_key_value_heads=2, tie_word_embeddings=False)  # fmt: skip
    b = estimate(m, method="lora", dtype="bf16", mixed_precision="no", batch=2, seq=128, lora_rank=8, lora_alpha=16,
                 lora_dropout=0.0, lora_target="all-linear", optim="adamw_torch_fused", stack=stack)  # fmt: skip
    for phase, traced in zip(b.phases, TRACED_STEP[stack], strict=True):
        assert phase.total == pytest.approx(traced, rel=0.01), phase.phase
    old, new = (TRACED_STEP[k][0] for k in sorted(TRACED_STEP))
    assert old > new  # the shifted fp32 copy of the logits (4 · 254 · 4096 B) outweighs bf16 adapters


def test_generate_prefill_logits_against_transformers_4_44_2():
    """model.generate(max_new_tokens=1, do_sample=True) on a bf16 llama (vocab 32000, hidden 64, 8 heads, 2 kv
    heads, 1 layer), prompt 256, batch 1: the live-bytes peak above the weights traced 49,211,424 B under
    4.44.2 (every prompt row's logits, bf16 and fp32 at the cast) and 884,524 B under 5.24.0 (one row)."""
    from vramplan.api import estimate_serve

    m = tiny(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=8,
             num_key_value_heads=2, tie_word_embeddings=False)  # fmt: skip
    kw = dict(engine="hf", batch=1, prompt_tokens=256, new_tokens=1)
    old = estimate_serve(m, stack="transformers==4.44.2", **kw).phases[0].components
    new = estimate_serve(m, stack="transformers==4.45.2", **kw).phases[0].components
    assert old.logits == 256 * 32000 * (2 + 4)  # prompt · vocab · (bf16 head output + its fp32 upcast)
    assert old.total - old.weights == pytest.approx(49_211_424, rel=0.01)
    assert new.logits == 32000 * (2 + 3 * 4)  # one row: the head's, its fp32 copy, scores, probabilities


def test_serve_adapters_follow_peft():
    """PeftModel.from_pretrained builds its layers with update_layer, as get_peft_model (traced above): bf16
    adapters on a bf16 base before peft 0.12, fp32 after; vLLM's slots are in the model dtype either way."""
    from vramplan.estimator.serve import adapter_elem_bytes
    from vramplan.spec.serve import resolve_serve

    m = tiny(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
             num_key_value_heads=4)  # fmt: skip
    by_version = {v: adapter_elem_bytes(resolve_serve(m, engine="hf", enable_lora=True, stack=f"peft=={v}"))
                  for v in ("0.11.1", "0.12.0")}  # fmt: skip
    assert by_version == {"0.11.1": 2, "0.12.0": 4}


# ---- the command line ----


def test_cli_stack_in_json_and_text():
    from vramplan.cli import main

    args = ["estimate", "llama-3.1-8b", "--method", "qlora", "--stack", "transformers==4.48.3,bitsandbytes==0.43.1"]
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    stack = json.loads(result.output)["inputs"]["stack"]
    assert stack["transformers"] == {"version": "4.48.3", "source": "named"}
    assert "matmul4bit-keeps-input" in stack["rules"]
    assert "shifted-logits-copy" in stack["rules"]
    text = CliRunner().invoke(main, args)
    assert "stack: transformers 4.48.3 (named)" in text.output


def test_cli_bad_stack_is_one_error_line():
    from vramplan.cli import main

    result = CliRunner().invoke(main, ["estimate", "llama-3.1-8b", "--stack", "transformers=4.48"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert result.output.startswith("error:")
