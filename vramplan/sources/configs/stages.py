"""The stage keys of each config format, read into resolve_train's stage keywords (vramplan/spec/stage.py).

- LLaMA-Factory (hparams/finetuning_args.py, commit ff6d4d1): `stage: pt|sft|rm|ppo|dpo|kto`, `pref_loss:
  sigmoid|hinge|ipo|kto_pair|orpo|simpo` (orpo and simpo train without a reference), `pref_beta`, `ref_model`
  (a path: a separate reference model; unset under LoRA: the adapter disabled, `create_ref_model` returns
  None), `reward_model` / `reward_model_type: lora|full|api`, `ppo_*`; `use_asft_loss` (with `asft_alpha`) on
  `stage: sft` is the asft stage. Its trainers materialize the logits
  (`CustomDPOTrainer.concatenated_forward`: `model(**batch).logits.to(torch.float32)`).
- axolotl (utils/schemas/enums.py RLType, commit 067b021): `rl: dpo|ipo|orpo|kto|simpo|grpo|gdpo|ebft`,
  `reward_model: true`, the `trl:` block (TRL's GRPOConfig names: beta, num_generations,
  max_completion_length, use_vllm, vllm_mode, vllm_gpu_memory_utilization), `rl_beta`, `precompute_ref_log_probs`;
  its trainers are TRL's.
- TRL configs saved as JSON (`DPOConfig`, `KTOConfig`, `GRPOConfig`, `RewardConfig`, `CPOConfig`, `ORPOConfig`
  `.to_json_string()`): recognised by a key only that config has.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vramplan.sources.configs.reader import Reader, is_set

_LF_PREF_LOSS = {"sigmoid": "dpo", "hinge": "dpo", "ipo": "ipo", "kto_pair": "dpo", "orpo": "orpo", "simpo": "simpo"}
# axolotl rl values whose step is another's in memory: GDPO changes GRPO's reward normalization only
_AX_RL = {"dpo": "dpo", "ipo": "ipo", "orpo": "orpo", "kto": "kto", "simpo": "simpo", "grpo": "grpo", "gdpo": "grpo"}


def read_llamafactory_stage(r: Reader, data: Mapping[str, Any]) -> None:
    stage = str(data.get("stage") or "sft").lower()
    if stage == "dpo":
        loss = str(data.get("pref_loss") or "sigmoid").lower()
        stage = _LF_PREF_LOSS.get(loss, "dpo")
        if loss not in _LF_PREF_LOSS:
            r.skip("pref_loss", "estimated as DPO's sigmoid loss")
    if stage == "sft" and is_set(data.get("use_asft_loss")):
        # ASFT (train/sft/workflow.py `create_ref_model`, trainer.py `compute_loss`): a frozen reference copy and a
        # KL term to its logits; under LoRA without `ref_model` create_ref_model returns None and the step fails,
        # so the copy `ref_model` would load is counted
        stage = "asft"
        r.set("stage", stage)
        r.copy("asft_alpha", "pref_beta", float)
        return
    if stage not in ("sft", "pt", "rm", "ppo", "dpo", "ipo", "kto", "orpo", "simpo"):
        r.skip("stage", "estimated as sft", "stage")
        return
    (r.set if r.has("stage") else r.default)("stage", stage)
    r.copy("pref_beta", "pref_beta", float)
    if stage in ("dpo", "ipo", "kto", "ppo") and is_set(data.get("ref_model")):
        r.set("reference", "model")
    if stage == "ppo":
        kind = str(data.get("reward_model_type") or "lora").lower()
        if kind == "api":
            r.skip("reward_model_type", "reward served elsewhere: estimated as a LoRA reward adapter", "reward_model")
        r.set("reward_model", "model" if kind == "full" else "adapter")
        # the response length: generating_args.py max_new_tokens (default 1024); ppo_epochs and ppo_buffer_size
        # reuse the generated batch and hold no memory of their own
        r.copy("max_new_tokens", "max_completion_length", int)
        r.default("max_completion_length", 1024)


def read_axolotl_stage(r: Reader, data: Mapping[str, Any]) -> None:
    trl = data.get("trl") if isinstance(data.get("trl"), Mapping) else {}
    if is_set(data.get("reward_model")):
        r.set("stage", "rm")
        return
    rl = data.get("rl")
    if not is_set(rl):
        return
    name = str(rl).lower()
    if name == "ebft":
        _ebft_keys(r, data, trl)
        return
    if name not in _AX_RL:
        r.skip("rl", "estimated as sft", "stage")
        return
    r.set("stage", _AX_RL[name])
    beta = trl.get("beta", data.get("rl_beta"))
    if beta is not None:
        r.set("pref_beta", float(beta))
    if is_set(data.get("precompute_ref_log_probs")) or is_set(trl.get("precompute_ref_log_probs")):
        r.set("reference", "precomputed")
    if _AX_RL[name] == "grpo":
        _generation_keys(r, trl)


def read_trl_stage(r: Reader, data: Mapping[str, Any]) -> None:
    """A TRL config JSON; its trainer named by a key only its config has."""
    if "num_generations" in data:
        r.set("stage", "grpo")
        if data.get("beta") is not None:
            r.set("pref_beta", float(data["beta"]))
        _generation_keys(r, data)
    elif "desirable_weight" in data:
        r.set("stage", "kto")
    elif "precompute_ref_log_probs" in data or "rpo_alpha" in data:
        loss = data.get("loss_type") or "sigmoid"
        loss = loss[0] if isinstance(loss, list) and loss else loss
        r.set("stage", "ipo" if loss == "ipo" else "dpo")
    elif "cpo_alpha" in data:
        r.set("stage", "simpo" if data.get("loss_type") == "simpo" else "cpo")
    elif "center_rewards_coefficient" in data:
        r.set("stage", "rm")
    else:
        return
    if r.settings.get("stage") in ("dpo", "ipo", "kto"):
        if data.get("beta") is not None:
            r.set("pref_beta", float(data["beta"]))
        if data.get("precompute_ref_log_probs"):
            r.set("reference", "precomputed")


def _generation_keys(r: Reader, trl: Mapping[str, Any]) -> None:
    """GRPOConfig's generation keys, as `trl:` (axolotl) or a GRPOConfig JSON spells them."""
    for key, setting in (("num_generations", "num_generations"), ("max_completion_length", "max_completion_length")):
        if trl.get(key) is not None:
            r.set(setting, int(trl[key]))
    if is_set(trl.get("use_vllm")):
        mode = str(trl.get("vllm_mode") or "colocate" if "vllm_mode" in trl else "server").lower()
        r.set("generation", f"vllm-{mode}" if mode in ("colocate", "server") else "vllm-server")
        if mode == "colocate" and trl.get("vllm_gpu_memory_utilization") is not None:
            r.set("vllm_gpu_memory_utilization", float(trl["vllm_gpu_memory_utilization"]))
    elif "use_vllm" in trl:
        r.set("generation", "hf")


def _ebft_keys(r: Reader, data: Mapping[str, Any], trl: Mapping[str, Any]) -> None:
    """axolotl `rl: ebft` and its `ebft:` block (core/trainers/ebft/__init__.py `set_training_args_kwargs`,
    axolotl 0.19.0): `mode` (structured: GRPOConfig's `trl:` keys; strided: its own), `feature_layers` (a list
    of depths: its length is read), `stride`, `context_length`, `generate_max_len`, `n_samples_per_prompt`,
    `ce_coef`; `embed_method`, `use_whitening`, the coefficients and the sampling keys hold no memory of their own
    (a few n × 3·hidden embeddings)."""
    ebft = data.get("ebft") if isinstance(data.get("ebft"), Mapping) else {}
    r.set("stage", "ebft")
    mode = str(ebft.get("mode") or "structured").lower()
    r.set("ebft_mode", mode)
    layers = ebft.get("feature_layers")
    if isinstance(layers, list) and layers:
        r.set("feature_layers", len(layers))
    if mode == "strided":
        keys = (("stride", "ebft_stride"), ("context_length", "ebft_context_length"),
                ("generate_max_len", "ebft_generate_max_len"), ("n_samples_per_prompt", "ebft_n_samples"))  # fmt: skip
        for key, setting in keys:
            value = ebft.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                r.set(setting, value)
            elif value is not None:
                r.skip(f"ebft.{key}", f"not a count ({value!r}): axolotl's default used", "stage")
        if isinstance(ebft.get("ce_coef"), (int, float)):
            r.set("ebft_ce", ebft["ce_coef"] > 0)
        return
    beta = trl.get("beta")
    if beta is not None:
        r.set("pref_beta", float(beta))
    _generation_keys(r, trl)
