"""Preference and RL steps (DPO / IPO / KTO / ORPO / SimPO / CPO, reward modelling, GRPO, PPO) as TRL 1.16.0
runs them, built on the SFT step of `peak.py`.

- The policy's own step is an SFT step of the batch the trainer feeds it: chosen and rejected concatenated
  (2 × batch) for paired losses (DPOTrainer `_compute_loss`: `logps.chunk(2)` of one forward; RewardTrainer,
  CPOTrainer, ORPOTrainer alike), `batch` for KTO, `batch` completions of `seq` tokens for GRPO / PPO.
- Its logits: DPO, KTO and GRPO patch the model with `add_fused_lm_head` (trl/trainer/utils.py): per-token
  log-probs in tiles of 4,096 tokens × 32,768 vocabulary entries (`ChunkedLogProbFunction`,
  trl/kernels/chunked_logprob.py), never the b·s·vocab logits; ORPO / CPO / SimPO (trl/experimental) and
  LLaMA-Factory's trainers materialize them (the SFT formula of `logits.py`).
- The reference: "model" keeps a second frozen copy resident (DPOTrainer `create_model_from_path` with the
  policy's dtype and quantization_config); "adapter" runs the policy with its LoRA adapter disabled
  (`use_adapter(model, None)`), no weights added; "precomputed" has no reference forward in the step. DPO and
  KTO run it after the policy's forward (`_compute_loss`): the policy's saved activations are alive during it,
  under `torch.no_grad()`, so it saves nothing and peaks at one layer's inference workspace.
- GRPO (GRPOTrainer `_generate_and_score_completions`): completions for `batch × steps_per_generation`
  (= grad_accum) sequences are generated first, with `model.generate` (its DynamicCache) or a vLLM engine
  colocated in the process (a `vllm_gpu_memory_utilization` share of the GPU, resident all run) or on other
  GPUs (server mode); the reference forward (beta > 0) runs before the policy's, nothing of it alive after.
- PPO (LLaMA-Factory `CustomPPOTrainer`): generation, a reward forward (a LoRA adapter on the policy, or a
  separate model), the reference (adapter disabled) and a policy + value-head step with materialized logits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vramplan.breakdown import Components, PhaseUsage
from vramplan.errors import VramplanError
from vramplan.estimator.activations import activation_bytes
from vramplan.estimator.kvcache import hf_generate_cache_bytes
from vramplan.estimator.peak import LOSS, LOSS_BACKWARD, moments
from vramplan.estimator.serve import layer_peak_elems_per_token
from vramplan.estimator.weights import weight_bytes
from vramplan.spec import DTYPE_BYTES, ModelSpec, TrainSpec
from vramplan.spec.stage import SFT

TOKEN_CHUNK_SIZE = 4096  # tokens per tile: trl/kernels/chunked_logprob.py TOKEN_CHUNK_SIZE (TRL 1.16.0)
VOCAB_CHUNK_SIZE = 32768  # vocabulary entries per tile: trl/trainer/utils.py _CHUNKED_LOGPROB_CHUNK_SIZE
FUSED_TOKEN_VECTORS = 14  # fp32 N-vectors alive at the fused head's forward peak: 7 online-logsumexp
# statistics (running_max, sum_exp, x_sum_exp, sq_sum_exp, z_sum, max_before_target, target_logit), log_z and
# the outputs (log_probs, entropy, mean_logits; is_top1 is bool) and their masked copies
REFERENCE_FORWARD = "reference forward"
REWARD_FORWARD = "reward forward"
GENERATION = "generation"


@dataclass(frozen=True, slots=True)
class FusedHeadBytes:
    """The fused LM head of N scored tokens: what its forward holds at its peak, what it saves for backward
    (the N × hidden input copy, log_z, entropy), and its backward's peak (+ the fp32 gradient accumulator of
    the input and its cast back, and lm_head's fp32 gradient accumulator when lm_head trains)."""

    forward_peak: int
    saved: int
    backward_peak: int


def fused_head_bytes(m: ModelSpec, t: TrainSpec, tokens: int, grad: bool = True) -> FusedHeadBytes:
    """Source: trl/kernels/chunked_logprob.py `ChunkedLogProbFunction` (TRL 1.16.0). Forward: the scored
    positions' hidden states copied out (`hidden_states[mask]`, N·H in the hidden dtype; saved), the tile
    buffer `mm_buf` (min(N, 4096) × 32768 in the compute dtype, the full chunk width even for a smaller
    vocabulary), the hidden chunk cast to the compute dtype and each vocabulary slice of the weight cast
    (transients when the dtypes differ), the fp32 N-vectors. The tile fold runs in a Triton kernel (no
    allocation). Backward: `grad_hidden` fp32 N·H, `mm_buf` again, the casts, `grad_weight` fp32 V·H when
    lm_head trains, then `grad_hidden.to(hidden.dtype)`."""
    h, v = m.hidden_size, m.vocab_size
    compute = DTYPE_BYTES[t.compute_dtype]
    hidden_dtype_bytes = 4 if (t.kbit_prep or t.dtype == "fp32") else DTYPE_BYTES[t.dtype]
    head_dtype_bytes = 4 if (t.kbit_prep or t.dtype == "fp32") else DTYPE_BYTES[t.dtype]
    chunk_tokens = min(tokens, TOKEN_CHUNK_SIZE)
    buffer = chunk_tokens * VOCAB_CHUNK_SIZE * compute
    casts = (chunk_tokens * h * compute if hidden_dtype_bytes != compute else 0) + (
        min(v, VOCAB_CHUNK_SIZE) * h * compute if head_dtype_bytes != compute else 0
    )
    hidden_copy = tokens * h * hidden_dtype_bytes
    saved = hidden_copy + 2 * 4 * tokens
    forward_peak = hidden_copy + buffer + casts + FUSED_TOKEN_VECTORS * 4 * tokens
    if not grad:
        return FusedHeadBytes(forward_peak=forward_peak, saved=0, backward_peak=0)
    head_grad = v * h * 4 if t.method == "full" else 0
    backward_peak = saved + tokens * h * 4 + buffer + casts + head_grad + 2 * 4 * tokens
    return FusedHeadBytes(forward_peak=forward_peak, saved=saved, backward_peak=backward_peak)


def score_backward_bytes(m: ModelSpec, t: TrainSpec) -> int:
    """The start of a reward model's backward (no vocabulary logits to free first, so the final RMSNorm's backward
    is the workspace, with every saved activation, the final norm's included, still alive): the `score` head's
    input gradient in the compute dtype, four float32 T·hidden tensors of LlamaRMSNorm's backward (transformers
    5.24: the gradient cast to float32, its product with the saved rsqrt, the variance branch's gradient, their
    sum) and the sum cast back to the residual stream's dtype."""
    hd = 4 if (t.kbit_prep or t.dtype == "fp32") else DTYPE_BYTES[t.dtype]
    return t.batch * t.seq * m.hidden_size * (DTYPE_BYTES[t.compute_dtype] + 4 * 4 + hd)


def frozen_copy_bytes(m: ModelSpec, t: TrainSpec) -> tuple[int, int]:
    """(weights, quant constants) of a frozen copy of the model as TRL loads a reference or reward model:
    the policy's dtype and quantization_config, no kbit prep (its norms and embeddings stay in the load
    dtype), no adapter."""
    copy = replace(t, method="qlora" if t.quant != "none" else "lora", kbit_prep=False, stage=SFT)
    w = weight_bytes(m, copy)
    return w.frozen, w.quant_state


def inference_forward_bytes(
    m: ModelSpec, t: TrainSpec, sequences: int, seq: int, scored: int, materialized: bool = False
) -> int:
    """The most a `torch.no_grad()` forward of `sequences` × `seq` tokens holds at once: one decoder layer's
    inference workspace (`serve.layer_peak_elems_per_token`, in the compute dtype) plus the residual stream, or
    the fused head of `scored` tokens, whichever is larger; nothing is saved."""
    tokens = sequences * seq
    compute = DTYPE_BYTES[t.compute_dtype]
    residual = 4 if (t.kbit_prep or t.dtype == "fp32") else DTYPE_BYTES[t.dtype]
    layer = tokens * layer_peak_elems_per_token(m) * compute + 2 * tokens * m.hidden_size * residual
    if materialized:  # the logits upcast to float32 (the compute-dtype ones alive meanwhile) and their log_softmax
        head = tokens * m.vocab_size * max(compute + 4, 8) + tokens * m.hidden_size * residual
    else:
        head = fused_head_bytes(m, t, scored, grad=False).forward_peak + tokens * m.hidden_size * residual
    return max(layer, head)


def preference_moments(m: ModelSpec, t: TrainSpec, gpu_bytes: int | None = None) -> tuple[tuple[PhaseUsage, ...], int]:
    """The candidate moments of a preference / RL step of `t.stage` but EBFT's (SFT's unchanged), and the paged
    optimizer bytes. `gpu_bytes` sizes a colocated vLLM engine's share."""
    st = t.stage
    if st.is_sft:
        return moments(m, t)
    sequences = t.batch * (2 if st.paired else 1)
    policy = replace(t, batch=sequences, stage=SFT)
    base, paged = moments(m, policy)
    # the positions whose next token is a label: seq - 1 per sequence (the completion tokens when generating)
    scored = sequences * (min(st.max_completion_length, t.seq - 1) if st.generates else t.seq - 1)
    extra_weights = extra_state = 0
    if st.reference == "model":
        w, q = frozen_copy_bytes(m, t)
        extra_weights, extra_state = extra_weights + w, extra_state + q
    if st.stage == "ppo" and st.reward_model == "model":
        w, q = frozen_copy_bytes(m, t)
        extra_weights, extra_state = extra_weights + w, extra_state + q
    if st.generation == "vllm-colocate" and st.generates:
        if gpu_bytes is None:
            raise VramplanError(
                "--generation vllm-colocate reserves a share of the GPU (vllm_gpu_memory_utilization): add --gpu NAME"
            )
        extra_weights += int(st.vllm_gpu_memory_utilization * gpu_bytes)
    fused = fused_head_bytes(m, policy, scored) if st.fused_lm_head else None
    if st.stage == "rm":
        # AutoModelForSequenceClassification: a hidden × num_labels `score` head instead of lm_head; its output,
        # b·s·1, is negligible next to the vocabulary logits
        untied_head = 0 if m.tie_word_embeddings else m.vocab_size * m.hidden_size * DTYPE_BYTES[t.dtype]
        extra_weights -= min(untied_head, base[0].components.weights)
    out: list[PhaseUsage] = []
    for usage in base:
        c = usage.components
        if usage.moment == LOSS and (fused or st.stage == "rm"):
            c = replace(c, logits=fused.forward_peak if fused else 0)
        elif usage.moment == LOSS_BACKWARD and fused:
            c = replace(c, logits=fused.backward_peak)
        elif usage.moment == LOSS_BACKWARD and st.stage == "rm":
            c = replace(c, activations=next(u for u in base if u.moment == LOSS).components.activations, logits=0,
                        temporaries=score_backward_bytes(m, policy))  # fmt: skip
        out.append(replace(usage, components=_plus(c, extra_weights, extra_state)))
    loss = next(u.components for u in out if u.moment == LOSS)
    persistent = Components(
        weights=loss.weights, quant_state=loss.quant_state, trainable=loss.trainable,
        optimizer_states=loss.optimizer_states, gradients=loss.gradients,
    )  # fmt: skip
    seq = t.seq
    if st.reference in ("model", "adapter") and st.stage in ("dpo", "ipo", "kto"):
        # after the policy's forward: its saved activations (and the fused head's saved input) are alive
        act = activation_bytes(m, policy)
        policy_saved = loss.activations - act.final_hidden_bytes
        kept_logits = fused.saved if fused else 0
        # KTO also scores the mismatched KL completions (a second batch) under the reference
        ref_sequences = sequences
        out.append(
            PhaseUsage(
                "forward",
                replace(
                    persistent,
                    activations=policy_saved,
                    logits=kept_logits,
                    temporaries=inference_forward_bytes(m, policy, ref_sequences, seq, scored, not st.fused_lm_head),
                ),
                REFERENCE_FORWARD,
            )
        )
    # GRPO, and PPO (LLaMA-Factory `CustomPPOTrainer.step`: `batched_forward_pass` of the reference before the
    # training minibatches): before the policy's forward, nothing of it alive
    if st.stage in ("grpo", "ppo") and st.reference != "none":
        out.append(
            PhaseUsage(
                "forward",
                replace(
                    persistent,
                    temporaries=inference_forward_bytes(m, policy, sequences, seq, scored, not st.fused_lm_head),
                ),
                REFERENCE_FORWARD,
            )
        )
    if st.stage == "ppo":
        # LLaMA-Factory `CustomPPOTrainer.get_rewards` before the step: the reward model's (or reward adapter's)
        # no-grad forward through TRL's value-head wrapper, whose logits it upcasts to float32
        logits = sequences * seq * m.vocab_size * (DTYPE_BYTES[t.compute_dtype] + 4)
        layer = inference_forward_bytes(m, policy, sequences, seq, 0)
        out.append(PhaseUsage("forward", replace(persistent, temporaries=max(logits, layer)), REWARD_FORWARD))
    if st.generates and st.generation == "hf":
        generated = t.batch * t.grad_accum  # GRPOConfig.steps_per_generation defaults to grad_accum
        completion = min(st.max_completion_length, seq)
        prompt = max(seq - completion, 1)
        cache = hf_generate_cache_bytes(m, generated, prompt, completion, DTYPE_BYTES[t.compute_dtype])
        # the last step's logits (fp32 after the processors) and the prefill's layer workspace bound the rest
        prefill = inference_forward_bytes(m, policy, generated, prompt, generated)
        out.append(
            PhaseUsage(
                "forward",
                replace(persistent, temporaries=cache + max(prefill, generated * m.vocab_size * 4 * 2)),
                GENERATION,
            )
        )
    return tuple(out), paged


def _plus(c: Components, weights: int, quant_state: int) -> Components:
    return replace(c, weights=c.weights + weights, quant_state=c.quant_state + quant_state)
