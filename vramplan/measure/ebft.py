"""Trace a strided EBFT step (axolotl `rl: ebft`, `ebft.mode: strided`) under the live-tensor tracker.

axolotl is not a dependency of vramplan (nor importable here: it pins its own stack), so this is a CPU
stand-in that allocates what `AxolotlStridedEBFTTrainer.compute_loss` allocates, statement by statement
(axolotl 0.19.0 wheel, src/axolotl/core/trainers/ebft/strided.py: `compute_loss`, `_generate_strided_blocks`,
`_compute_block_rewards`, `build_strided_dense_mask_and_positions`, `build_strided_position_ids`), on the real
transformers + PEFT model built by the harness:

- generation: `generate_max_len` no-grad forwards of the whole growing sequence with eager attention and the
  dense strided mask (`override_attn_implementation(unwrapped, "eager")`), sampling one token per block;
- the policy's forward one sequence at a time (`backbone`, then `lm_head` and a float32 `log_softmax` over
  chunks of 256 positions); on CUDA the trainer passes flex attention's BlockMask, here the model's own causal
  SDPA (flash-equivalent: same saved tensors; a BlockMask is O(blocks) bytes);
- the feature forward: the policy with its adapter disabled (`disable_adapter()`), SDPA with the dense
  strided mask in bf16, `output_hidden_states=True`; the feature layers normalized and concatenated, alignment,
  diversity, RLOO advantages; the REINFORCE loss over the rollout tokens; backward; the optimizer step.

Whitening (`whiten_embeddings_batched`: an SVD of n × 3·hidden embeddings per block) is left out: its
tensors are a few n × 3·hidden matrices, below the tracker's resolution next to the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
import torch.nn.functional as F

from vramplan.breakdown import Components, PhaseUsage
from vramplan.measure.build import TORCH_DTYPES, build
from vramplan.measure.cuda_equiv import cuda_equivalence
from vramplan.measure.harness import TRAINER_MAX_GRAD_NORM, traced_moments
from vramplan.measure.step_hooks import wrap_checkpointing
from vramplan.measure.tracker import MemoryTracker
from vramplan.spec import ModelSpec, TrainSpec
from vramplan.spec.stage import SFT

STRIDED_GENERATION = "strided generation"
FEATURE_FORWARD = "feature forward"
LOGPROB_CHUNK = 256


def dense_strided_mask(batch: int, length: int, prompt: int, context: int, step: int, max_len: int, stride: int,
                       blocks: int, dtype: torch.dtype) -> torch.Tensor:  # fmt: skip
    """strided.py `build_strided_dense_mask_and_positions`: the B × 1 × len × len additive mask."""
    mask = torch.full((batch, 1, length, length), torch.finfo(dtype).min, dtype=dtype)
    causal = torch.tril(torch.ones((prompt, prompt), dtype=torch.bool))
    mask[:, :, :prompt, :prompt].masked_fill_(causal.view(1, 1, prompt, prompt), 0.0)
    for gen_step in range(step):
        for block in range(blocks):
            position = prompt + gen_step * blocks + block
            mask[:, 0, position, : min(block * stride + context, prompt - max_len)] = 0.0
            mask[:, 0, position, position] = 0.0
            for previous in range(gen_step):
                mask[:, 0, position, prompt + previous * blocks + block] = 0.0
    return mask


def strided_positions(batch: int, length: int, prompt: int, context: int, step: int, stride: int,
                      blocks: int) -> torch.Tensor:  # fmt: skip
    """strided.py `build_strided_position_ids`."""
    positions = torch.empty((batch, length), dtype=torch.long)
    positions[:, :prompt] = torch.arange(prompt)
    starts = torch.arange(blocks) * stride + context
    for gen_step in range(step):
        positions[:, prompt + gen_step * blocks : prompt + (gen_step + 1) * blocks] = starts + gen_step
    return positions


def trace_strided_ebft(
    m: ModelSpec, t: TrainSpec, steps: int = 2
) -> tuple[tuple[PhaseUsage, ...], dict[str, Components]]:
    """(each phase's traced peak, the traced peak of each named moment) of `steps` strided EBFT steps on CPU."""
    st = t.stage
    gen_len, stride, context, samples = (
        st.ebft_generate_max_len,
        st.ebft_stride,
        st.ebft_context_length,
        st.ebft_n_samples,
    )
    blocks = (t.seq - gen_len - context) // stride + 1
    autocast_dtype = TORCH_DTYPES[t.mixed_precision] if t.mixed_precision != "no" else None
    tracker = MemoryTracker(device_type="cpu")
    with cuda_equivalence("cpu", autocast_dtype) as emu:
        built = build(m, dataclasses.replace(t, stage=SFT), "cpu")
        model, optimizer, causal_lm = built.model, built.optimizer, built.causal_lm
        tracker.register_module(model)
        tracker.register_optimizer(optimizer)
        wrap_checkpointing(model, tracker, emu)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        model_dtype = next(model.parameters()).dtype
        backbone, lm_head = causal_lm.model, causal_lm.lm_head
        layers = [int(fraction * m.num_hidden_layers) for fraction in (0.25, 0.5, 0.75)][: st.feature_layers]

        def autocast() -> contextlib.AbstractContextManager:
            return emu.region() if emu is not None else contextlib.nullcontext()

        with tracker:
            for _step in range(steps):
                for _ in range(t.grad_accum):
                    with tracker.phase_scope("forward"):
                        ids = torch.randint(0, m.vocab_size, (t.batch, t.seq)).repeat_interleave(samples, dim=0)
                        sequences = ids.shape[0]
                        with (
                            tracker.moment_scope(STRIDED_GENERATION),
                            tracker.label_scope("temporaries"),
                            torch.no_grad(),
                        ):
                            full = ids.clone()
                            attn = causal_lm.config._attn_implementation
                            causal_lm.config._attn_implementation = "eager"
                            for step in range(gen_len):
                                length = full.shape[1]
                                mask = dense_strided_mask(sequences, length, t.seq, context, step, gen_len, stride,
                                                          blocks, model_dtype)  # fmt: skip
                                positions = strided_positions(sequences, length, t.seq, context, step, stride, blocks)
                                with autocast():
                                    logits = model(full, attention_mask=mask, position_ids=positions).logits
                                where = [context + b * stride - 1 if step == 0 else t.seq + (step - 1) * blocks + b
                                         for b in range(blocks)]  # fmt: skip
                                probs = torch.softmax(logits.index_select(1, torch.tensor(where)) / 0.6, dim=-1)
                                sampled = torch.multinomial(probs.view(-1, probs.shape[-1]), 1).view(sequences, blocks)
                                del logits, probs, mask
                                full = torch.cat([full, sampled], dim=1)
                            causal_lm.config._attn_implementation = attn
                        length = full.shape[1]
                        positions = strided_positions(sequences, length, t.seq, context, gen_len, stride, blocks)
                        start = 0 if st.ebft_ce else t.seq - 1
                        labels = full[:, 1:]
                        logps = []
                        for s in range(sequences):
                            with autocast():
                                hidden = backbone(full[s : s + 1], position_ids=positions[s : s + 1]).last_hidden_state
                            row = torch.zeros(1, length - 1, dtype=torch.float32)
                            region, region_labels = hidden[:, start:-1, :], labels[s : s + 1, start:]
                            for i in range(0, region.shape[1], LOGPROB_CHUNK):
                                with autocast():
                                    chunk = lm_head(region[:, i : i + LOGPROB_CHUNK, :])
                                chunk_lp = F.log_softmax(chunk.float(), dim=-1)
                                row[:, start + i : start + i + chunk.shape[1]] = chunk_lp.gather(
                                    -1, region_labels[:, i : i + LOGPROB_CHUNK].unsqueeze(-1)
                                ).squeeze(-1)
                                del chunk, chunk_lp
                            logps.append(row)
                            del hidden, region
                        per_token = torch.cat(logps, dim=0)
                        del logps
                        action = torch.zeros(per_token.shape, dtype=torch.bool)
                        action[:, t.seq - 1 : t.seq - 1 + blocks * gen_len] = True
                        with tracker.moment_scope(FEATURE_FORWARD), tracker.label_scope("temporaries"), torch.no_grad():
                            rewards = _block_rewards(model, full, positions, t, blocks, layers, autocast)
                        total = rewards.sum(dim=1, keepdim=True)
                        advantages = (rewards - (total - rewards) / (samples - 1)).view(sequences, blocks)
                        full_advantages = torch.zeros_like(per_token)
                        full_advantages[:, t.seq - 1 : t.seq - 1 + blocks * gen_len] = advantages.repeat_interleave(
                            gen_len, dim=1
                        )
                        loss = (-per_token * full_advantages * action.float()).sum() / action.float().sum()
                        if t.grad_accum > 1:
                            loss = loss / t.grad_accum
                        del per_token, full_advantages, action, full, positions, labels, rewards, advantages
                    with tracker.phase_scope("backward"):
                        loss.backward()
                    del loss
                with tracker.phase_scope("optimizer"):
                    torch.nn.utils.clip_grad_norm_(params, TRAINER_MAX_GRAD_NORM)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
        tracker.remove_hooks()
    return traced_moments(tracker)


def _block_rewards(model, full, positions, t: TrainSpec, blocks: int, layers: list[int], autocast) -> torch.Tensor:
    """strided.py `_compute_block_rewards`: the feature network's forward (adapter disabled, SDPA, the dense
    strided mask in bf16), the feature layers normalized and concatenated, alignment minus diversity per block."""
    st = t.stage
    sequences, length = full.shape
    gen_len, samples = st.ebft_generate_max_len, st.ebft_n_samples
    mask = dense_strided_mask(sequences, length, t.seq, st.ebft_context_length, gen_len, gen_len, st.ebft_stride,
                              blocks, torch.bfloat16)  # fmt: skip
    with model.disable_adapter(), autocast():
        model.eval()
        outputs = model(full, attention_mask=mask, position_ids=positions, output_hidden_states=True)
        model.train()
    kept = [outputs.hidden_states[i] for i in layers]
    del outputs, mask
    features = torch.cat([F.normalize(h, p=2, dim=-1) for h in kept], dim=-1)
    del kept
    truth = features[:, st.ebft_context_length : t.seq, :]
    generated = features[:, t.seq : t.seq + blocks * gen_len, :]
    truth_blocks = truth.unfold(1, gen_len, st.ebft_stride).permute(0, 1, 3, 2)[:, :, -1, :]
    gen_blocks = generated.reshape(sequences, gen_len, blocks, -1).transpose(1, 2)[:, :, -1, :]
    truth_emb = truth_blocks.reshape(-1, samples, blocks, truth_blocks.shape[-1])
    gen_emb = gen_blocks.reshape(-1, samples, blocks, gen_blocks.shape[-1])
    alignment = F.cosine_similarity(gen_emb, truth_emb, dim=-1)
    flat = gen_emb.permute(0, 2, 1, 3).reshape(-1, samples, gen_emb.shape[-1])
    sims = torch.bmm(flat, flat.transpose(1, 2)).masked_fill(torch.eye(samples, dtype=torch.bool).unsqueeze(0), 0.0)
    diversity = (sims.sum(dim=-1) / (samples - 1)).view(-1, blocks, samples).permute(0, 2, 1)
    return (2 * alignment - 2 * diversity).float()
