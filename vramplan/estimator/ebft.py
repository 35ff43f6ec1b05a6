"""axolotl's energy-based fine-tuning (`rl: ebft`, axolotl 0.19.0 core/trainers/ebft/, commit of the 0.19.0
wheel): the policy is rewarded by how close the frozen *feature network*'s hidden states of its rollouts are to
those of the ground truth (alignment and diversity of the features, RLOO advantages).

- The feature network (trainer.py / strided.py `__init__`): a PEFT policy with its adapter disabled
  (`disable_adapter()`: no weights added), else a `copy.deepcopy` of the model, frozen (the strided trainer casts
  it to bf16).
- `structured` (`AxolotlEBFTTrainer`, trainer.py): TRL's GRPOTrainer (vramplan/estimator/preference.py's GRPO
  step) with the feature matching as its reward function: `extract_hidden_states` (rewards.py) runs
  `model.model` under `torch.no_grad()` with `output_hidden_states=True` on the generation batch's prompt +
  completion sequences, then on one ground-truth sequence per prompt, before the policy's forward. Every
  layer's hidden state (L + 1 of them) is alive until that forward returns; under PEFT `model.model` is the
  causal LM (PeftModel forwards the attribute to LoraModel), so its logits are computed too.
- `strided` (`AxolotlStridedEBFTTrainer.compute_loss`, strided.py): each document of `seq` tokens is repeated
  `n_samples` times; `NB = (seq - generate_max_len - context_length) // stride + 1` rollouts of
  `generate_max_len` tokens, one every `stride` tokens, are sampled *in parallel in one sequence*
  (`_generate_strided_blocks`: `generate_max_len` full forwards without a KV cache, eager attention with a
  dense `B·n × 1 × len × len` mask, all the logits of each forward); the sequence grows to
  `F = seq + NB·generate_max_len`. The policy's forward runs one sequence at a time (backbone, then lm_head
  and a float32 log_softmax over chunks of 256 positions, each saved for backward), but every sequence's
  graph stays alive until the one backward; then the feature network's no-grad forward of all `B·n`
  sequences (SDPA with the dense strided mask under PEFT; flex attention's block mask for a copy), its L + 1
  hidden states and its logits, while the policy's saved activations wait for the backward.
"""

from __future__ import annotations

from dataclasses import replace

from vramplan.breakdown import Components, PhaseUsage
from vramplan.errors import VramplanError
from vramplan.estimator.activations import activation_bytes
from vramplan.estimator.peak import LOSS, LOSS_BACKWARD, moments
from vramplan.estimator.serve import layer_peak_elems_per_token
from vramplan.spec import DTYPE_BYTES, ModelSpec, TrainSpec
from vramplan.spec.stage import SFT

LOGPROB_CHUNK = 256  # strided.py compute_loss: `chunk_size = 256` positions per lm_head + log_softmax
FEATURE_FORWARD = "feature forward"
STRIDED_GENERATION = "strided generation"


def strided_blocks(t: TrainSpec) -> int:
    """NB: the rollouts per sequence (strided.py compute_loss, unstructured text: anchor_offset = context)."""
    st = t.stage
    blocks = (t.seq - st.ebft_generate_max_len - st.ebft_context_length) // st.ebft_stride + 1
    if blocks <= 0:
        raise VramplanError(
            f"--seq {t.seq} is too short for strided EBFT: it needs at least generate_max_len + context_length + "
            f"stride = {st.ebft_generate_max_len + st.ebft_context_length + st.ebft_stride} tokens "
            "(the trainer returns a zero loss)"
        )
    return blocks


def feature_copy_bytes(m: ModelSpec, t: TrainSpec) -> int:
    """A deepcopy of the model as the feature network (full fine-tuning); bf16 in the strided trainer."""
    from vramplan.estimator.preference import frozen_copy_bytes

    if t.stage.reward_model != "model":
        return 0
    copy = replace(t, dtype="bf16") if t.stage.ebft_mode == "strided" else t
    weights, quant = frozen_copy_bytes(m, copy)
    return weights + quant


def _hidden_bytes(t: TrainSpec) -> int:
    return 4 if (t.kbit_prep or t.dtype == "fp32") else DTYPE_BYTES[t.dtype]


def hidden_states_forward_bytes(m: ModelSpec, t: TrainSpec, sequences: int, seq: int, with_logits: bool) -> int:
    """The most a no-grad forward with `output_hidden_states=True` holds: the L + 1 hidden states recorded so
    far plus one layer's inference workspace, or at its end all of them and the logits (compute dtype)."""
    tokens = sequences * seq
    hd, cd = _hidden_bytes(t), DTYPE_BYTES[t.compute_dtype]
    states = (m.num_hidden_layers + 1) * tokens * m.hidden_size * hd
    # a layer's input and its output are recorded states: of the workspace's residual stream (3·hidden) one
    # hidden-sized tensor is not
    layer = tokens * (layer_peak_elems_per_token(m) - 2 * m.hidden_size) * cd
    logits = tokens * m.vocab_size * cd if with_logits else 0
    return states + max(layer, logits)


def softmax_fp32_bytes(t: TrainSpec) -> int:
    """Bytes per score alive at once in eager attention's `softmax(w, dtype=float32).to(query.dtype)`
    (transformers 5.24 modeling_llama.py): ATen `softmax` (aten/src/ATen/native/SoftMax.cpp) converts a bf16
    input to a float32 copy before `_softmax` (only CUDA half takes the fused half-to-float path): the input,
    the copy and the output, 2 + 4 + 4; fp16 on CUDA: the input, the output, then its cast back, 2 + 4 + 2;
    fp32: the input and the output."""
    return {"bf16": 10, "fp16": 8}.get(t.compute_dtype, 8)


def ebft_moments(m: ModelSpec, t: TrainSpec, gpu_bytes: int | None) -> tuple[tuple[PhaseUsage, ...], int]:
    if t.stage.ebft_mode == "strided":
        return _strided(m, t)
    return _structured(m, t, gpu_bytes)


def _structured(m: ModelSpec, t: TrainSpec, gpu_bytes: int | None) -> tuple[tuple[PhaseUsage, ...], int]:
    from vramplan.estimator.preference import preference_moments

    grpo = replace(t, stage=replace(t.stage, stage="grpo"))
    base, paged = preference_moments(m, grpo, gpu_bytes)
    copy = feature_copy_bytes(m, t)
    out = [replace(u, components=replace(u.components, weights=u.components.weights + copy)) for u in base]
    loss = next(u.components for u in out if u.moment == LOSS)
    persistent = Components(
        weights=loss.weights, quant_state=loss.quant_state, trainable=loss.trainable,
        optimizer_states=loss.optimizer_states, gradients=loss.gradients,
    )  # fmt: skip
    generated = t.batch * t.grad_accum  # the generation batch (GRPOConfig.steps_per_generation = grad_accum)
    with_logits = t.stage.reward_model == "adapter"
    gen = hidden_states_forward_bytes(m, t, generated, t.seq, with_logits)
    prompts = max(generated // t.stage.num_generations, 1)
    kept = t.stage.feature_layers * generated * t.seq * m.hidden_size * _hidden_bytes(t)  # gen_hidden, concatenated
    truth = kept + hidden_states_forward_bytes(m, t, prompts, t.seq, with_logits)
    out.append(PhaseUsage("forward", replace(persistent, temporaries=max(gen, truth)), FEATURE_FORWARD))
    return tuple(out), paged


def _strided(m: ModelSpec, t: TrainSpec) -> tuple[tuple[PhaseUsage, ...], int]:
    st = t.stage
    blocks = strided_blocks(t)
    sequences = t.batch * st.ebft_n_samples
    full = t.seq + blocks * st.ebft_generate_max_len
    scored = full - 1 if st.ebft_ce else blocks * st.ebft_generate_max_len  # compute_start: 0 with ce_coef > 0
    v, h = m.vocab_size, m.hidden_size
    cd, hd = DTYPE_BYTES[t.compute_dtype], _hidden_bytes(t)
    chunk = min(LOGPROB_CHUNK, scored)
    one = replace(t, batch=1, seq=full, stage=SFT, loss="hf")
    base, paged = moments(m, one)
    # what one sequence's forward leaves for the backward: its saved activations, the autocast copies of fp32
    # weights mm saved (without checkpointing: each sequence's autocast region makes its own), the final norm's
    # output (lm_head saved views of it); the cast cache of a checkpointed forward is gone when it returns
    act = activation_bytes(m, one)
    copies = 0 if t.grad_ckpt else act.layer_copies * act.copy_layers
    sample_saved = act.saved + copies + act.final_hidden_bytes
    logprobs = scored * v * 4  # each chunk's float32 log_softmax output, saved for backward
    others = sequences - 1
    copy = feature_copy_bytes(m, t)
    out: list[PhaseUsage] = []
    for usage in base:
        c = usage.components
        logits = others * logprobs
        if usage.moment == LOSS:  # the last chunk: its lm_head output and its float copy beside the saved
            logits += logprobs + chunk * v * (cd + 4)
        elif usage.moment == LOSS_BACKWARD:  # gather's zeros, log_softmax's input gradient, its cast back
            logits += logprobs + chunk * v * (4 + 4 + cd)
        c = replace(c, weights=c.weights + copy)
        if usage.phase in ("forward", "backward"):
            c = replace(c, activations=c.activations + others * sample_saved, logits=logits)
        out.append(replace(usage, components=c))
    loss = next(u.components for u in out if u.moment == LOSS)
    persistent = Components(
        weights=loss.weights, quant_state=loss.quant_state, trainable=loss.trainable,
        optimizer_states=loss.optimizer_states, gradients=loss.gradients,
    )  # fmt: skip
    # the generation's last forward: `seq + (generate_max_len - 1)·NB` tokens per sequence, eager attention
    length = t.seq + (st.ebft_generate_max_len - 1) * blocks
    tokens = sequences * length
    mask = sequences * length * length * hd  # build_strided_dense_mask_and_positions, the model's dtype
    scores = sequences * m.num_attention_heads * length * length * softmax_fp32_bytes(t)
    attention = scores + tokens * (4 * m.q_dim + 2 * m.kv_dim + 3 * h) * cd
    generation = mask + max(attention, tokens * layer_peak_elems_per_token(m) * cd, tokens * v * cd)
    out.append(PhaseUsage("forward", replace(persistent, temporaries=generation), STRIDED_GENERATION))
    # the feature forward, while every sequence's saved activations and log-probs wait for the backward
    dense_mask = sequences * full * full * 2 if st.reward_model == "adapter" else 0  # bf16; a BlockMask for a copy
    features = dense_mask + hidden_states_forward_bytes(m, t, sequences, full, with_logits=True)
    pooled = 3 * st.feature_layers * sequences * full * h * hd  # the layers kept, normalized, concatenated
    out.append(
        PhaseUsage(
            "forward",
            replace(
                persistent,
                activations=sequences * sample_saved,
                logits=sequences * logprobs,
                temporaries=max(features, pooled),
            ),
            FEATURE_FORWARD,
        )
    )
    return tuple(out), paged
