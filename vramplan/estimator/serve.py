"""Serving and generation: weights + KV cache + adapters, for transformers `generate()` and for vLLM.

`vramplan.estimator.build.build_breakdown` assembles a ServeSpec's result from these pieces; the vLLM budget
lives in vllm.py (it builds on the pieces here). The spec and its defaults: `vramplan.spec.serve`.

- `hf`: one `model.generate(batch × prompt_tokens, max_new_tokens=new_tokens)` with transformers 5.24.
  Two phases: prefill (the prompt's cache + the prefill's layer workspace) and the last decode step (the
  full cache + the cat copy of one layer). Logits: generate sets `logits_to_keep=1`, so the lm_head emits
  one row per sequence (generation/utils.py: `model_kwargs["logits_to_keep"] = 1`), copied to fp32
  (`outputs.logits[:, -1].to(copy=True, dtype=torch.float32)`), processed and softmaxed.
  Online LoRA: `PeftModel.from_pretrained(autocast_adapter_dtype=True)` upcasts bf16/fp16 adapters to fp32
  (peft 0.21.2 peft_model.py / tuners_utils.cast_adapter_dtype): 4 B per adapter parameter.
- `vllm`: see vllm.py. Both engines share the weight storage rules of weights.py.
"""

from __future__ import annotations

from dataclasses import replace

from vramplan.estimator.kvcache import (
    hf_cache_step_transient_bytes,
    hf_generate_cache_bytes,
)
from vramplan.estimator.params import lora_params_per_linear
from vramplan.estimator.weights import quantized_linear_bytes
from vramplan.serve_breakdown import ServeComponents, ServePhase
from vramplan.spec import ModelSpec
from vramplan.spec.checkpoint_quant import CheckpointQuant
from vramplan.spec.serve import ServeSpec

# ---------------------------------------------------------------- pieces both engines share


def serve_weight_bytes(m: ModelSpec, s: ServeSpec) -> tuple[int, int]:
    """(weights, quantization constants) on one GPU: decoder linears packed by bitsandbytes, the rest in the
    model dtype; a pre-quantized checkpoint or a sharded model is counted by served_weights.py.

    Same storage rules as training (weights.py, bitsandbytes 0.50.2): lm_head, embeddings and norms stay
    unquantized. vLLM's in-flight bnb is nf4 with double quantization (model_loader/bitsandbytes_loader.py
    `quantize_4bit(..., compress_statistics=True, quant_type="nf4")`); its fused qkv / gate_up tensors
    change the absmax block count by less than one block each.
    """
    if s.engine == "vllm":
        weights, state = _weights_and_state(m, s)
        return weights + rotary_cache_bytes(m, s), state
    return _weights_and_state(m, s)


def rotary_cache_bytes(m: ModelSpec, s: ServeSpec) -> int:
    """vLLM's RoPE cos/sin table, one per model (get_rope caches it): max_position_embeddings × rotary_dim
    in the model dtype (model_executor/layers/rotary_embedding/base.py `_compute_cos_sin_cache`). Part of
    what vLLM logs as the weights: Llama-3.1-8B 14.958 + 131072 · 128 · 2 B = 14.989 GiB, logged "Loading model
    weights took 14.9888 GB" (vllm-project/vllm#10517)."""
    rotary_dim = int(m.head_dim * float(m.config.get("partial_rotary_factor", 1.0)))
    return m.max_position_embeddings * rotary_dim * s.dtype_bytes


def _weights_and_state(m: ModelSpec, s: ServeSpec) -> tuple[int, int]:
    p = s.dtype_bytes
    if s.checkpoint is not None or s.tensor_parallel_size > 1 or s.pipeline_parallel_size > 1:
        from vramplan.estimator.served_weights import served_weight_bytes
        from vramplan.spec.vllm_versions import vllm_release

        q = s.checkpoint
        if s.engine == "hf" and q is not None and q.format in ("mxfp4", "nvfp4"):
            q = None  # transformers dequantizes FP4 to the model dtype where it has no kernel: counted so
        if q is None and s.quant != "none":  # in-flight bitsandbytes, sharded
            q = CheckpointQuant("bitsandbytes", bits=8 if s.quant == "int8" else 4, bnb_quant_type=s.quant,
                                bnb_double_quant=s.double_quant)  # fmt: skip
        index = s.engine == "hf" or vllm_release(s.vllm_version).act_order_index
        return served_weight_bytes(m, p, q, s.tensor_parallel_size, s.pipeline_parallel_size,
                                   s.enable_expert_parallel, act_order_index=index)  # fmt: skip
    if s.quant == "none":
        return m.total_params * p, 0
    packed, state = quantized_linear_bytes(m, s.quant, s.double_quant)
    return packed + (m.total_params - m.quantized_weight_params) * p, state


def adapter_params(m: ModelSpec, s: ServeSpec) -> int:
    """LoRA parameters resident on the GPU: max_loras × layers × Σ_targets r·(in + out); 0 when merged.

    vLLM preallocates every supported linear at max_lora_rank (or `lora_target_modules`), as slices of its
    fused qkv / gate_up that add up to the same r·(in + out) per HF linear (base_linear.py / column_parallel_
    linear.py `create_lora_weights`, vllm-project/vllm@1ace43ed, @4f54575c).
    """
    if not s.lora_resident:
        return 0
    r = s.max_lora_rank
    per_layer = sum(lora_params_per_linear(lin, r, False) for lin in m.linears if lin.name in s.lora_target)
    return s.max_loras * m.num_hidden_layers * per_layer


def adapter_elem_bytes(s: ServeSpec) -> int:
    """PEFT (hf) keeps adapters in fp32 (autocast_adapter_dtype=True; before peft 0.12 in the base weight's
    dtype, fp32 on a bnb base: spec/stack.py); vLLM's slots use lora_dtype "auto" = the model dtype
    (vllm/config/lora.py, vllm-project/vllm@a78dc92f)."""
    if s.engine == "hf":
        return s.dtype_bytes if s.stack.adapters_in_base_dtype and s.quant == "none" else 4
    return s.dtype_bytes


def layer_peak_elems_per_token(m: ModelSpec) -> int:
    """Elements per token alive at the peak of one decoder layer's inference forward (the cache aside).

    MLP: gated 3·I (HF: activation output, up output, their product; vLLM: fused gate_up 2·I + SiluAndMul
    I), plain 2·I, MoE experts_per_tok · 3·I; attention: q, k, v, output and GQA's repeated k, v
    (4·q_dim + 2·kv_dim); the larger of the two, plus the residual stream (residual, hidden, normed: 3·h).
    Check: vLLM's profile runs of Llama-3.1-8B on a 3090 at 20,000 / 29,000 tokens (no chunking) report
    2.07 / 2.99 GiB of activation peak (vllm-project/vllm#10517); this gives 2.06 / 2.99 GiB.
    Source: transformers 5.24 modeling_llama.py LlamaMLP.forward; vllm/model_executor/models/llama.py.
    """
    i = m.intermediate_size
    mlp = {"plain": 2 * i, "moe": max(m.num_experts_per_tok, 1) * 3 * i}.get(m.mlp, 3 * i)
    attn = 4 * m.q_dim + 2 * m.kv_dim
    return max(mlp, attn) + 3 * m.hidden_size


def dequant_bytes(m: ModelSpec, s: ServeSpec, fused: bool) -> int:
    """A 4-bit weight dequantized to the model dtype: bitsandbytes `matmul_4bit` dequantizes the whole
    weight for inputs of more than one row (gemv_4bit only for a single token). The largest linear, or
    vLLM's fused qkv / gate_up when `fused`."""
    if s.quant not in ("nf4", "fp4"):
        return 0
    sizes = [lin.weight_params for lin in m.linears]
    if fused and m.mlp == "gated":
        sizes += [m.hidden_size * (m.q_dim + 2 * m.kv_dim), m.hidden_size * 2 * m.intermediate_size]
    return max(sizes) * s.dtype_bytes


# ---------------------------------------------------------------- transformers generate


def hf_logits_bytes(m: ModelSpec, s: ServeSpec) -> int:
    """batch × vocab × (dtype + 3 · 4): the lm_head's one row per sequence (logits_to_keep=1), its fp32
    copy, the processed scores and the softmax probabilities (do_sample).
    Source: transformers 5.24 generation/utils.py `_sample`.
    """
    return s.batch * m.vocab_size * (s.dtype_bytes + 3 * 4)


def hf_prefill_logits_bytes(m: ModelSpec, s: ServeSpec) -> int:
    """The prefill's logits. transformers < 4.45 (spec/stack.py `generate-full-prompt-logits`): every prompt
    position's logits, the lm_head output and its fp32 upcast alive together at the cast (batch·prompt·vocab·
    (dtype + 4)), then the fp32 ones with the last row's copies (batch·vocab·3·4). Else one row (above)."""
    if not s.stack.generate_full_prompt_logits:
        return hf_logits_bytes(m, s)
    rows = s.batch * s.prompt_tokens * m.vocab_size
    return max(rows * (s.dtype_bytes + 4), rows * 4 + s.batch * m.vocab_size * 3 * 4)


def hf_lora_workspace_bytes(m: ModelSpec, s: ServeSpec, tokens: int) -> int:
    """PEFT's unmerged LoRA branch on the largest target, fp32: x cast to the adapter dtype, lora_A's
    output (r), lora_B's output and its scaled copy (peft/tuners/lora/layer.py Linear.forward)."""
    targets = [lin for lin in m.linears if lin.name in s.lora_target]
    if not s.lora_resident or not targets:
        return 0
    big = max(targets, key=lambda lin: lin.in_features + 2 * lin.out_features)
    return tokens * (big.in_features + s.max_lora_rank + 2 * big.out_features) * 4


def hf_phases(m: ModelSpec, s: ServeSpec, resident: ServeComponents) -> tuple[ServePhase, ...]:
    """Prefill and the last decode step of one generate() call, on top of the `resident` weights."""
    b, p, n, e, dt = s.batch, s.prompt_tokens, s.new_tokens, s.kv_elem_bytes, s.dtype_bytes
    per_token = layer_peak_elems_per_token(m) * dt
    logits = hf_logits_bytes(m, s)
    prefill = replace(
        resident,
        kv_cache=hf_generate_cache_bytes(m, b, p, 1, e),
        logits=hf_prefill_logits_bytes(m, s),
        temporaries=b * p * per_token + dequant_bytes(m, s, fused=False) + hf_lora_workspace_bytes(m, s, b * p),
    )
    if n == 1:
        return (ServePhase("prefill", prefill, "prompt forward"),)
    decode = replace(
        resident,
        kv_cache=hf_generate_cache_bytes(m, b, p, n, e),
        logits=logits,
        temporaries=hf_cache_step_transient_bytes(m, b, p, n, e)
        + b * per_token
        + (dequant_bytes(m, s, fused=False) if b > 1 else 0)
        + hf_lora_workspace_bytes(m, s, b),
    )
    return ServePhase("prefill", prefill, "prompt forward"), ServePhase("decode", decode, "last decode step")
