"""What a resolved training step says about itself: the one-line MoE note (why the experts weigh what they weigh)
and the contradictions the real stack would refuse or ignore (warnings; the estimate is made as given)."""

from __future__ import annotations

from vramplan.spec.family_traits import SINK_FAMILIES
from vramplan.spec.model import ModelSpec

# The first GPU generation FlashAttention-2 runs on: Ampere, compute capability 8.0 (flash-attention
# README "FlashAttention-2 currently supports Ampere, Ada, or Hopper GPUs"; Turing is FA1 only).
FLASH_ATTN_2_MIN_CC = (8, 0)
# Settings that only a LoRA method reads: typed under another method they do nothing (a warning, not an error:
# a shared config may carry them).
LORA_ONLY = ("lora_rank", "lora_alpha", "lora_dropout", "lora_target", "dora")


def moe_note(model: ModelSpec, quant: str, dtype: str, kbit_prep: bool, adapted: bool) -> str:
    """One line: why a MoE's experts weigh what they weigh under LoRA / QLoRA (transformers 5 stores them as
    fused 3-D `nn.Parameter`s: bitsandbytes replaces only `nn.Linear`, PEFT reaches them by `target_parameters`)."""
    n = model.fused_expert_params
    stored = "fp32 after kbit prep" if kbit_prep else dtype
    size = f"{n / 1e9:.2f} B" if n >= 10**7 else f"{n:,}"
    head = f"{model.name}'s experts ({size} parameters) are fused 3-D tensors in transformers 5, not nn.Linear: "
    bnb = f"bitsandbytes leaves them unquantized ({stored}) and " if quant != "none" else ""
    if adapted:
        peft = "PEFT adapts them only through target_parameters (estimated as PEFT does)"
    elif model.from_table:
        peft = "PEFT reaches them only through target_parameters (adapters on them not estimated)"
    else:
        peft = "PEFT reaches them only through target_parameters (not targeted here)"
    return head + bnb + peft


def unquantized_linears_note(model: ModelSpec, kbit_prep: bool, dtype: str) -> str:
    """One line: decoder linears that are `nn.Linear` subclasses, which bitsandbytes does not replace."""
    n = model.unquantizable_linear_params
    kinds = sorted({lin.path.rsplit(".", 1)[-1] or lin.name for lin in model.linears if not lin.quantizable})
    stored = "cast to fp32 by kbit prep" if kbit_prep else f"kept in {dtype}"
    size = f"{n / 1e9:.2f} B" if n >= 10**7 else f"{n:,}"
    return (
        f"{model.name}'s {', '.join(kinds)} ({size} parameters) are nn.Linear subclasses: transformers "
        f"5.24's bitsandbytes replacement takes `type(module) is nn.Linear` only, so they stay unquantized "
        f"({stored}), as the real stack loads them"
    )


def contradictions(
    model: ModelSpec,
    method: str,
    quant: str,
    attn: str,
    seq: int,
    kbit_prep: bool | None,
    double_quant: bool | None,
    compute_capability: str | None,
    explicit: set[str],
) -> list[str]:
    """What the real stack would refuse or ignore, as warnings; the estimate is made as given."""
    out = []
    cc = None
    if compute_capability:  # a GPU's: an estimate without one does not load spec.gpu
        from vramplan.spec.gpu import capability_tuple

        cc = capability_tuple(compute_capability)
    if attn == "flash_attention_2" and cc is not None and cc < FLASH_ATTN_2_MIN_CC:
        out.append(
            f"flash_attention_2 needs an Ampere or newer GPU (compute capability >= 8.0), this one is "
            f"{compute_capability}: transformers will refuse it; use --attn sdpa"
        )
    if seq > model.max_position_embeddings:
        out.append(
            f"--seq {seq:,} is longer than {model.name}'s context (max_position_embeddings "
            f"{model.max_position_embeddings:,}); quality past it needs RoPE scaling (not modeled)"
        )
    if kbit_prep and quant == "none":
        out.append("--kbit-prep does nothing without a quantized base (--quant nf4|fp4|int8): ignored")
    if double_quant and quant in ("none", "int8"):
        out.append(f"--double-quant applies to 4-bit (nf4, fp4) only, not --quant {quant}: ignored")
    if method not in ("lora", "qlora"):
        dead = [FLAG_NAMES[k] for k in LORA_ONLY if k in explicit]
        if dead:
            out.append(
                f"{', '.join(dead)} {'does' if len(dead) == 1 else 'do'} nothing with --method {method}: ignored"
            )
    if method != "freeze" and "freeze_trainable_layers" in explicit:
        out.append(f"--freeze-trainable-layers applies to --method freeze, not --method {method}: ignored")
    return out


FLAG_NAMES = {"lora_rank": "--lora-rank", "lora_alpha": "--lora-alpha", "lora_dropout": "--lora-dropout",
              "lora_target": "--lora-target", "dora": "--dora"}  # fmt: skip


def layer_offload_setting(
    layer_offload: object, method: str, grad_ckpt: bool, prequantized: bool, from_table: bool, notes: list[str]
) -> bool:
    """axolotl `layer_offloading` as estimated, with what it says (estimator/offload.py `layer_offload_bytes`)."""
    from vramplan.errors import VramplanError

    if not isinstance(layer_offload, bool):
        raise VramplanError(f"layer_offload must be true or false, got {layer_offload!r}")
    if not layer_offload:
        return False
    if method == "full":
        notes.append("layer_offloading moves frozen decoder-layer parameters: a full fine-tune has none")
        return False
    if prequantized or from_table:
        notes.append("layer_offloading on this base is not modeled: estimated with the layers on the GPU")
        return False
    if method in ("lora", "qlora") and not grad_ckpt:
        # traced (tests/estimator/test_layer_offload.py): layer 0's input needs no gradient, so its full backward
        # hook fires as its backward starts and offloads the weights that backward is about to read
        notes.append(
            "layer_offloading without gradient checkpointing: axolotl's hooks offload layer 0 before its backward "
            "reads its weights (a device mismatch on a GPU); estimated as if it ran"
        )
    return True


def sink_attention_notes(model: ModelSpec, attn: str, explicit: bool) -> list[str]:
    """Which attention transformers 5.24 runs for a model with learned sinks (gpt-oss), and what it refuses:
    `_supports_sdpa = False` (an explicit `attn_implementation="sdpa"` raises; none given picks eager);
    `flash_attention_2` is swapped for the first of `_compatible_flash_implementations`,
    `kernels-community/vllm-flash-attn3` (FlashAttention-3 taking the sinks as `s_aux`; the `kernels` package
    fetches it; modeling_utils.py `_check_and_adjust_attn_implementation`); flex attention applies the sinks
    after the kernel through its log-sum-exp, and refuses sinks on CPU (integrations/flex_attention.py)."""
    if model.model_type not in SINK_FAMILIES:
        return []
    if attn == "sdpa":
        said = "--attn sdpa: transformers raises for attn_implementation='sdpa'" if explicit else "no SDPA"
        return [f"{model.model_type} has learned attention sinks and {said}: estimated with eager attention "
                "(what transformers picks when none is given; it saves the B·heads·S·(S+1) probabilities)"]  # fmt: skip
    if attn == "flash_attention_2":
        return [f"transformers swaps flash_attention_2 for kernels-community/vllm-flash-attn3 on {model.model_type} "
                "(FlashAttention-3 with the sinks as s_aux, fetched by the kernels package): estimated as a flash "
                "kernel (q, k, v, output, log-sum-exp)"]  # fmt: skip
    if attn == "flex_attention":
        return [f"flex attention on {model.model_type}: the sinks renormalise its output through its log-sum-exp "
                "(from transformers' source; not traced: transformers refuses sinks in flex on CPU)"]  # fmt: skip
    return []


def gemma4_notes(model: ModelSpec, grad_ckpt: bool, target_parameters: bool = False) -> list[str]:
    """What the Gemma 4 walk leaves out (held to tiny traces in tests/oracle/test_oracle_tiny.py): the backward
    of a checkpointed step, the model-level per-layer-embedding tensors (PLE), LoRA on the experts."""
    notes = []
    if target_parameters:
        notes.append(
            "LoRA on Gemma 4's router / experts (target_parameters): the adapters, their gradients and optimizer "
            "states are counted; the merged expert weights PEFT builds in the forward are not walked: approximated"
        )
    if grad_ckpt:
        notes.append(
            "Gemma 4 with gradient checkpointing: the backward's peak is walked short of the trace "
            "(tiny traces -12 to -15 %, the forward within 2 %; full size, 6 layers, peak at the logits: within "
            "0.4 %): approximated"
        )
    if int(model.config.get("hidden_size_per_layer_input") or 0):
        notes.append(
            "Gemma 4 per-layer embeddings: the model-level PLE tensors (embed_tokens_per_layer lookup, projection, "
            "norm) are not walked (tiny trace: activations -2.6 %, peak -1.5 %): approximated"
        )
    return notes
