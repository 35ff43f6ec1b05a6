"""axolotl YAML (utils/schemas/*.py, axolotl commit 067b021)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vramplan.errors import VramplanError
from vramplan.sources.configs.reader import FileSettings, Reader, Unmodeled, is_set, shown_value
from vramplan.sources.configs.stages import read_axolotl_stage

_AX_ATTN = {"eager": "eager", "sdpa": "sdpa", "flash_attention_2": "flash_attention_2",
            "flex_attention": "flex_attention"}  # fmt: skip
# Kernels that save what flash-attention 2 saves (q, k, v, output, fp32 logsumexp B·heads·S): FlashAttention-3,
# also as the kernels-hub builds transformers routes through `flash_attention_forward` (transformers 5.24
# integrations/hub_kernels.py `load_and_register_attn_kernel`: a kernel with `flash_attn_varlen_func`);
# FA3's FlashAttnFunc / FlashAttnVarlenFunc save (q, k, v, out, softmax_lse) (vllm-project/flash-attention
# @0f2287f hopper/flash_attn_interface.py, the source of kernels-community/vllm-flash-attn3)
_FLASH_LIKE = ("flash_attention_3", "kernels-community/vllm-flash-attn3", "kernels-community/flash-attn3",
               "kernels-community/flash-attn")  # fmt: skip


def _attention(r: Reader, impl: str, key: str) -> None:
    """axolotl's `attn_implementation` (loaders/patch_manager.py). xformers (monkeypatch/attention/xformers.py,
    axolotl 067b021) runs `memory_efficient_attention`, which saves q, k, v, output and logsumexp as
    flash-attention does, but in training first repeats k / v to every query head (`expand` + `reshape`: a
    copy): the same as flash-attention on a model without grouped-query attention, listed on one with it."""
    if impl in _AX_ATTN:
        r.set("attn", _AX_ATTN[impl])
        return
    r.set("attn", "flash_attention_2")
    if impl in _FLASH_LIKE:
        r.notes.append(f"{key}={impl}: saves what flash_attention_2 saves (q, k, v, output, logsumexp)")
    elif impl == "xformers":
        note = "estimated as flash_attention_2; k/v repeated to every query head in training not modeled"
        r.unmodeled.append(Unmodeled(key, impl, note, "attn", when="gqa"))
    else:
        r.skip(key, "estimated as flash_attention_2 (no S×S scores)", "attn")


_AX_UNMODELED = (
    "neftune_noise_alpha", "torch_compile", "relora",
    "s2_attention", "peft_layers_to_transform",
    "unsloth_lora_mlp", "unsloth_lora_qkv", "unsloth_lora_o", "unsloth_cross_entropy_loss", "chunked_cross_entropy",
    "flash_attn_cross_entropy", "fp8",
)  # fmt: skip


_LIGER_KERNELS = ("liger_rms_norm", "liger_glu_activation", "liger_rope", "liger_layer_norm", "liger_rms_norm_gated")


def _plugins(r: Reader, data: Mapping[str, Any]) -> None:
    """axolotl's loss plugins (integrations/cut_cross_entropy, integrations/liger): the CCE plugin computes the
    loss with cut-cross-entropy unless `cut_cross_entropy: false`; Liger's with its fused linear cross-entropy
    when `liger_fused_linear_cross_entropy`; its layer kernels (liger_rms_norm, liger_glu_activation, liger_rope)
    are modelled together."""
    plugins = data.get("plugins") or []
    names = [str(p) for p in plugins] if isinstance(plugins, list) else [str(plugins)]
    cce = any("CutCrossEntropy" in n for n in names) or (r.has("cut_cross_entropy") and not names)
    if cce and not (r.has("cut_cross_entropy") and not r.typed("cut_cross_entropy", bool)):
        r.set("loss", "cce")
    if r.has("liger_fused_linear_cross_entropy") and r.typed("liger_fused_linear_cross_entropy", bool):
        r.set("loss", "liger")
    kernels = [k for k in _LIGER_KERNELS if r.has(k) and r.typed(k, bool)]
    if kernels:
        r.set("liger_kernels", True)  # RMSNorm, SwiGLU, RoPE as one setting (spec TrainSpec.liger_kernels)
    known = ("CutCrossEntropy", "liger")
    for name in names:
        if any(k in name for k in known):
            continue
        if "SwanLab" in name:  # integrations/swanlab: metrics, timers and completions the trainer already made
            r.notes.append(f"plugins: {name}: logging and timing callbacks, no memory change")
        elif name.endswith("kernels.KernelsPlugin"):
            # integrations/kernels: swaps the MoE experts' forward (ScatterMoE / SonicMoE); a dense model has none
            note = "MoE expert kernels (ScatterMoE / SonicMoE): the experts estimated with transformers' forward"
            r.unmodeled.append(Unmodeled("plugins", shown_value(name), note, when="moe"))
        elif name.endswith("diffusion.DiffusionPlugin"):
            # integrations/diffusion/trainer.py: a bidirectional B·1·S·S mask (utils.py
            # `create_bidirectional_attention_mask`) passed to the model, the loss over the masked positions
            note = "masked-diffusion training with a bidirectional B·1·S·S mask: estimated as causal SFT"
            r.unmodeled.append(Unmodeled("plugins", shown_value(name), note))
        else:
            r.unmodeled.append(Unmodeled("plugins", shown_value(name)))


_KERNEL_KEYS = (("lora_qkv_kernel", "qkv"), ("lora_o_kernel", "o"), ("lora_mlp_kernel", "mlp"))


def _lora_kernels(r: Reader, data: Mapping[str, Any], adapter: str, int8: bool) -> None:
    """axolotl's fused LoRA kernels (kernels/lora.py): the keys the file sets; when it sets none, axolotl turns
    all three on for LoRA / QLoRA (utils/schemas/config.py `check_auto_enable_lora_kernels`) except for RL
    trainers, LoRA on an 8-bit base, trust_remote_code and FSDP1 (`fsdp_config` without fsdp_version 2); the
    axolotl recipe holds that default (spec/recipe.py)."""
    if any(r.has(key) for key, _ in _KERNEL_KEYS):
        r.set("lora_kernels", ",".join(name for key, name in _KERNEL_KEYS if r.has(key) and r.typed(key, bool)))
        return
    fsdp1 = is_set(data.get("fsdp_config")) and str(data.get("fsdp_version")) != "2"
    if adapter in ("lora", "qlora") and (is_set(data.get("rl")) or (adapter == "lora" and int8) or fsdp1
                                         or is_set(data.get("trust_remote_code"))):  # fmt: skip
        r.default("lora_kernels", "")


def _unfrozen_parameters(r: Reader, data: Mapping[str, Any], adapter: str) -> None:
    """`unfrozen_parameters` (utils/freeze.py `freeze_layers_except`, called in train.py after the model is
    loaded, adapter applied): every parameter is frozen but those whose name `re.match`es a pattern (its dots
    made literal, a trailing `[start:end]` a row range whose gradient rows outside are zeroed by a hook, the
    parameter still trainable). Under an adapter the names start with PEFT's `base_model.model.`, so a pattern
    anchored on `model.` or `lm_head` matches nothing there: the adapters freeze too. Without one, the note
    names the parts of a transformers 5 model the patterns select (`_FULL_NAMES`)."""
    patterns = data.get("unfrozen_parameters")
    if not is_set(patterns):
        return
    patterns = patterns if isinstance(patterns, list) else [patterns]
    compiled = [_axolotl_pattern(str(p)) for p in patterns]
    if adapter in ("lora", "qlora"):
        if not any(_matches(c, name) for c in compiled for name in _PEFT_NAMES):
            note = ("matches no name of the PEFT model (base_model.model....): axolotl freezes every parameter, "
                    "the adapters too, and nothing trains; estimated with the adapters trainable")  # fmt: skip
            r.skip("unfrozen_parameters", note)
            return
        r.skip("unfrozen_parameters", "trainable parameters chosen by name: estimated with the method's own")
        return
    chosen = {layout: _selected_parts(compiled, names) for layout, names in _FULL_NAMES.items()}
    whole = [layout for layout, (parts, everything) in chosen.items() if everything]
    if whole:  # the language model and lm_head, a vision tower frozen: vramplan's full fine-tune
        other = ", ".join(f"as a {layout}: {', '.join(parts) or 'nothing'}" for layout, (parts, _) in chosen.items()
                          if layout not in whole)  # fmt: skip
        said = f"unfrozen_parameters selects every language-model parameter of the {whole[0]} as axolotl loads it"
        r.notes.append(said + " (a vision tower frozen): a full fine-tune" + (f" ({other})" if other else ""))
        return
    said = "; ".join(f"{layout}: {', '.join(parts) or 'nothing'}" for layout, (parts, _) in chosen.items())
    note = f"selects {said}. A partly frozen model is not modeled: estimated as a full fine-tune (an upper bound)"
    r.skip("unfrozen_parameters", note)


def _selected_parts(compiled: list[str], names: Mapping[str, tuple[str, ...]]) -> tuple[list[str], bool]:
    """(the parts any pattern selects, whether every probe of every language-model part and none of a vision
    tower is selected)."""
    hits = {part: [any(_matches(c, n) for c in compiled) for n in probes] for part, probes in names.items()}
    parts = [part for part, found in hits.items() if any(found)]
    everything = all(all(found) for part, found in hits.items() if part != "vision tower")
    return parts, everything and "vision tower" not in parts


def _axolotl_pattern(pattern: str) -> str:
    """utils/freeze.py `LayerNamePattern`: a trailing `[start:end]` range dropped, every `.` not followed by
    `+` made literal."""
    import re

    base = re.match(r"^(.+)\[([0-9]*)(?::([0-9]*))?\]$", pattern)
    return re.sub(r"\.(?!\+)", "\\.", base.group(1) if base else pattern)


def _matches(pattern: str, name: str) -> bool:
    import re

    try:
        return re.match(pattern, name) is not None
    except re.error:
        return True


# names a PEFT-wrapped causal LM's parameters take (the text model's, a VLM's language model's)
_PEFT_NAMES = (
    "base_model.model.lm_head.weight",
    *(f"base_model.model.{prefix}{rest}" for prefix in ("model.", "model.language_model.")
      for rest in ("layers.0.self_attn.q_proj.lora_A.default.weight", "layers.0.mlp.down_proj.base_layer.weight",
                   "embed_tokens.weight", "norm.weight")),
)  # fmt: skip


def _full_names(prefix: str) -> dict[str, tuple[str, ...]]:
    """Parameter names of each part of a transformers 5.24 decoder under `prefix` (model. / model.language_model.),
    every layer index up to 199: Llama-style attention and MLP, MoE experts / router (mlp.experts.gate_up_proj,
    mlp.gate.weight: transformers 4's block_sparse_moe is gone), norms."""
    layers = range(200)
    return {
        "embed_tokens": (f"{prefix}embed_tokens.weight",),
        "attention": tuple(f"{prefix}layers.{i}.self_attn.{p}_proj.weight" for i in layers for p in "qkvo"),
        "MLP / experts": tuple(
            f"{prefix}layers.{i}.mlp.{p}" for i in layers
            for p in ("gate_proj.weight", "up_proj.weight", "down_proj.weight", "experts.gate_up_proj",
                      "experts.down_proj", "gate.weight")
        ),
        "norms": (f"{prefix}norm.weight", *(f"{prefix}layers.{i}.input_layernorm.weight" for i in layers)),
        "lm_head": ("lm_head.weight",),
    }  # fmt: skip


# the model as AutoModelForCausalLM loads a text model, and as axolotl loads a vision-language one
# (utils/config `is_multimodal` -> AutoModelForImageTextToText: model.language_model.*, model.visual.*)
_FULL_NAMES = {
    "text model": _full_names("model."),
    "vision-language model": {
        **_full_names("model.language_model."),
        "vision tower": ("model.visual.blocks.0.attn.qkv.weight", "model.vision_tower.encoder.layers.0.mlp.fc1.weight",
                         "model.multi_modal_projector.linear_1.weight"),
    },
}  # fmt: skip


# activation_offloading -> vramplan's activation_offload (estimator/offload.py), axolotl 067b021:
# true / "disk": trl's OffloadActivations with streams (core/trainers/mixins/activation_checkpointing.py); with
# checkpointing on (required) its saved tensors are the layer inputs, two on the GPU. "legacy": no streams, and
# for an adapter the checkpoint itself swapped for Unsloth's CPU_Offloaded_Gradient_Checkpointer
# (loaders/patch_manager.py `_apply_gradient_checkpointing_patches`, monkeypatch/gradient_checkpointing/
# offload_cpu.py): each input back just before its recompute, one on the GPU. "hidden_states": only the marked
# checkpoint inputs (monkeypatch/checkpoint_activation_offload.py `CheckpointHiddenStatesOffload`, streams)
_AX_OFFLOAD = {"true": "all", "disk": "all", "legacy": "checkpoints", "hidden_states": "all"}


def _checkpointing_and_offloading(r: Reader, data: Mapping[str, Any]) -> None:
    """`gradient_checkpointing` (true, false, "offload", "offload_disk"), `activation_offloading` and
    `selective_checkpointing`. axolotl 067b021 utils/schemas/validation.py `check_gradient_checkpointing_w_offload`
    rewrites "offload" to checkpointing + `activation_offloading: true` and "offload_disk" to checkpointing +
    `activation_offloading: disk`; `check_activation_offloading_wo_gc` requires checkpointing for any offloading."""
    gc = data.get("gradient_checkpointing")
    ao = data.get("activation_offloading")
    if gc is not None:
        r.set("grad_ckpt", is_set(gc))
        if isinstance(gc, str) and gc.lower() in ("offload", "offload_disk"):
            r.set("grad_ckpt", True)
            ao = ao if is_set(ao) else (True if gc.lower() == "offload" else "disk")
        elif isinstance(gc, str):
            r.skip("gradient_checkpointing", f"{gc}: estimated as checkpointing on the GPU", "grad_ckpt")
    if is_set(ao):
        mode = "true" if ao is True else str(ao).lower()
        if mode not in _AX_OFFLOAD:
            r.skip("activation_offloading", "estimated as trl's OffloadActivations (activation_offloading: true)")
        r.set("activation_offload", _AX_OFFLOAD.get(mode, "all"))
        if mode == "disk":
            r.notes.append("activation_offloading=disk: the offloaded activations are on disk, not in host RAM")
    if r.has("layer_offloading"):  # core/trainers/mixins/layer_offloading.py (estimator/offload.py)
        r.set("layer_offload", r.typed("layer_offloading", bool))
    sac = data.get("selective_checkpointing")
    if is_set(sac):  # monkeypatch/selective_checkpointing.py: saves attention's outputs inside checkpointed layers
        r.skip("selective_checkpointing", "ops saved inside the checkpointed layers (attention by default) not modeled")


def read_axolotl(data: Mapping[str, Any], path: str) -> FileSettings:
    """`axolotl train x.yml`. Defaults (utils/schemas/{config,training,peft}.py): no adapter = full tuning,
    lora_dropout 0, sequence_len 512, micro_batch_size 1, adamw_torch_fused, no gradient checkpointing;
    4-bit is nf4 + double quant (loaders/model.py); bf16 `auto` = bf16 where supported, else fp16
    (utils/config `resolve_dtype`), as vramplan's default; bf16 false without fp16 loads fp32.
    """
    r = Reader(data, path, "axolotl")
    adapter = str(data.get("adapter") or "").lower()
    b4, b8 = (r.has(k) and r.typed(k, bool) for k in ("load_in_4bit", "load_in_8bit"))
    bnb = data.get("bnb_config_kwargs") or {}
    if not isinstance(bnb, Mapping):
        raise VramplanError(f"{path}: bnb_config_kwargs must be a mapping (key: value), got {shown_value(bnb)}")
    quant = None
    if adapter and (adapter == "qlora" or b4):
        quant = str(bnb.get("bnb_4bit_quant_type") or "nf4")
        r.set("quant", quant)
        if "bnb_4bit_use_double_quant" in bnb:
            r.set("double_quant", bool(bnb["bnb_4bit_use_double_quant"]))
    elif adapter and b8:
        quant = "int8"
        r.set("quant", quant)
    elif b4 or b8:
        r.skip("load_in_4bit" if b4 else "load_in_8bit", "no adapter: estimated unquantized", "quant")
    if adapter not in ("", "lora", "qlora"):
        r.skip("adapter", "estimated as LoRA", "method")
    method = ("qlora" if quant else "lora") if adapter else "full"
    (r.set if r.has("adapter") else r.default)("method", method)
    r.copy("lora_r", "lora_rank", int)
    r.copy("lora_alpha", "lora_alpha", int)
    r.copy("lora_dropout", "lora_dropout", float)
    modules = data.get("lora_target_modules")
    if r.has("lora_target_linear") and r.typed("lora_target_linear", bool):
        r.set("lora_target", "all-linear")
    elif is_set(modules):
        r.set("lora_target", ",".join(map(str, modules)) if isinstance(modules, list) else str(modules))
    r.names("lora_modules_to_save", "modules_to_save")
    r.names("lora_target_parameters", "target_parameters")
    r.copy("peft_use_dora", "dora", bool)
    r.copy("sequence_len", "seq", int)
    r.copy("micro_batch_size", "batch", int)
    r.copy("gradient_accumulation_steps", "grad_accum", int)
    if r.has("optimizer"):
        r.optim("optimizer")
        r.optim_args()
    r.no_memory_change(("loraplus_lr_ratio", "loraplus_lr_embedding", "peft_use_rslora"),
                       "LoRA+ learning rates and rsLoRA scaling")  # fmt: skip
    init = data.get("peft_init_lora_weights")
    if isinstance(init, str) and init.lower().split("_")[0] in ("pissa", "olora", "eva", "gaussian", "loftq"):
        r.notes.append(
            f"peft_init_lora_weights={init}: an initialisation of the adapters, no memory change in training"
        )
    _checkpointing_and_offloading(r, data)
    r.no_memory_change(("gradient_checkpointing_kwargs",), "use_reentrant picks the checkpoint implementation")
    impl = data.get("attn_implementation")
    flags = {"flash_attention": "flash_attention_2", "sdp_attention": "sdpa", "eager_attention": "eager"}
    if impl is None:
        impl = next((v for k, v in flags.items() if r.has(k) and r.typed(k, bool)), None)
    if impl is None and is_set(data.get("xformers_attention")):
        impl = "xformers"
    if impl is not None:
        _attention(r, str(impl), "attn_implementation" if r.has("attn_implementation") else "xformers_attention")
    bf16 = data.get("bf16", "auto")
    fp16, bfloat16, float16 = (r.has(k) and r.typed(k, bool) for k in ("fp16", "bfloat16", "float16"))
    if bfloat16 or float16:  # "no AMP": weights in that dtype, no autocast
        r.set("dtype", "bf16" if bfloat16 else "fp16")
        r.set("mixed_precision", "no")
    elif bf16 is True or bf16 == "full" or fp16:
        half = "bf16" if bf16 is True or bf16 == "full" else "fp16"
        r.set("dtype", half)
        r.set("mixed_precision", half)
    elif bf16 is False:
        r.set("dtype", "fp16" if b8 else "fp32")
        r.set("mixed_precision", "no")
    _lora_kernels(r, data, adapter, b8)
    _unfrozen_parameters(r, data, adapter)
    read_axolotl_stage(r, data)
    r.distributed()
    r.skip_ifis_set(_AX_UNMODELED)
    if r.has("gptq") and r.typed("gptq", bool):  # axolotl loads the base with its GPTQ quantization_config
        r.notes.append("gptq: the base's GPTQ format is read from its config.json (or its name)")
    _plugins(r, data)
    if r.has("llama4_linearized_experts") and r.typed("llama4_linearized_experts", bool):
        # loaders/patch_manager.py: patch_llama4_linearized_modeling() before a model of model_config_type llama4
        # is built: its experts become per-expert nn.Linear (monkeypatch/models/llama4/modeling.py), quantized by
        # bitsandbytes (read by sources/inputs.py as a model layout)
        r.set("linearized_experts", True)
    if r.has("sample_packing"):
        r.set("packing", r.typed("sample_packing", bool))
    for setting, value in (("lora_dropout", 0.0), ("seq", 512), ("batch", 1), ("grad_accum", 1),
                           ("optim", "adamw_torch_fused"), ("grad_ckpt", False), ("loss", "hf"),
                           ("packing", False)):  # fmt: skip
        r.default(setting, value)
    return r.done("axolotl", data.get("base_model"))
