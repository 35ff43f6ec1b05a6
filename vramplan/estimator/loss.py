"""The loss: what each implementation allocates at the loss, saves for backward, and holds in its backward.

Three figures per implementation (`LogitsBytes`, beside the final hidden state, which `activations` counts):
`forward_peak` (the most alive at once while the loss is computed), `saved` (what survives into backward) and
`backward_peak` (the most alive at once while its backward runs). T = batch · seq tokens, V vocab, H hidden.

- `hf`: transformers 5.24 `ForCausalLMLoss` (loss/loss_utils.py) over the full T·V logits: `logits.py`.
- `trl-chunked`: TRL's fused LM head (trl 1.16.0 trainer/utils.py `add_fused_lm_head`,
  kernels/chunked_logprob.py `ChunkedLogProbFunction`), the CUDA path: only the N = batch·(seq−1) positions
  whose next-token label is not −100 are gathered (`hidden_states[mask]`: N·H in the hidden's dtype, labels N
  int64); each `[TOKEN_CHUNK_SIZE=4096, chunk_size=32768]` tile of logits is computed into one `mm_buf` (in the
  compute dtype; 32768 columns whatever the vocabulary) that Triton folds into seven fp32 per-token statistics;
  saved: the gathered hidden, labels, log_z and entropy. Backward recomputes each tile into the same-sized
  buffer and accumulates the hidden's gradient in fp32 (N·H·4), cast back to the hidden's dtype on return; the
  head's weight gradient, when it trains, is an fp32 V·H accumulator. The logits are never materialized.
- `liger`: Liger-Kernel 0.8.5 ops/fused_linear_cross_entropy.py: all T rows (ignored ones included); chunks of
  `next_power_of_2(ceil(T / ceil(V / H)))` rows (at most T) share one chunk·V logits buffer in the input's
  dtype; the input gradient (T·H, the input's dtype) and, when the head trains, the weight gradient (V·H, the
  weight's dtype) are computed in forward and saved; backward only scales them.
- `cce`: Apple's cut-cross-entropy 25.1.1 (cce.py, cce_lse_forward.py, cce_backward.py, utils.py): the valid
  N positions as int32 indices (built from an int64 `nonzero`), an fp32 log-sum-exp and dot per position, the
  logits only in on-chip blocks; backward allocates the hidden's gradient (`zeros_like(e)`, T·H) and, when the
  head trains, the weight's (`zeros_like(c, dtype=e.dtype)`).
"""

from __future__ import annotations

from vramplan.estimator.logits import LogitsBytes, logits_bytes
from vramplan.spec import DTYPE_BYTES, ModelSpec, TrainSpec

TRL_TOKEN_CHUNK = 4096  # trl kernels/chunked_logprob.py TOKEN_CHUNK_SIZE
TRL_VOCAB_CHUNK = 32768  # trl trainer/utils.py _CHUNKED_LOGPROB_CHUNK_SIZE
TRL_STATISTICS = 7  # running_max, sum_exp, x_sum_exp, sq_sum_exp, z_sum, max_before_target, target_logit
INT64, FP32 = 8, 4


def head_dtypes(m: ModelSpec, t: TrainSpec) -> tuple[int, int, int]:
    """(hidden, compute, weight) bytes at the LM head: the final norm's output has the residual stream's dtype
    (fp32 after kbit prep or with fp32 weights); matmuls run in the autocast dtype; the head's weight keeps the
    load dtype (fp32 after kbit prep)."""
    hidden = 4 if (t.kbit_prep or t.dtype == "fp32") else DTYPE_BYTES[t.dtype]
    weight = 4 if t.kbit_prep else DTYPE_BYTES[t.dtype]
    return hidden, DTYPE_BYTES[t.compute_dtype], weight


def loss_bytes(m: ModelSpec, t: TrainSpec) -> LogitsBytes:
    """The loss's bytes for `t.loss` (module docstring)."""
    if t.loss == "trl-chunked":
        return _trl_chunked(m, t)
    if t.loss == "liger":
        return _liger(m, t)
    if t.loss == "cce":
        return _cce(m, t)
    return logits_bytes(m, t)


def _head_trains(t: TrainSpec) -> bool:
    return t.method == "full"


def _trl_chunked(m: ModelSpec, t: TrainSpec) -> LogitsBytes:
    hd, cd, wd = head_dtypes(m, t)
    h, v = m.hidden_size, m.vocab_size
    shifted = t.batch * (t.seq - 1)  # positions with a next-token label
    n = shifted  # every label counts (a completion-only mask would drop the prompt's)
    mask = shifted  # bool
    gathered = n * h * hd + n * INT64  # hidden_states[mask], labels[mask]
    buffer = min(n, TRL_TOKEN_CHUNK) * TRL_VOCAB_CHUNK * cd  # mm_buf
    hidden_chunk = min(n, TRL_TOKEN_CHUNK) * h * cd if hd != cd else 0  # hidden[...].to(compute_dtype)
    weight_chunk = min(v, TRL_VOCAB_CHUNK) * h * cd if wd != cd else 0  # weight[...].to(compute_dtype)
    statistics = TRL_STATISTICS * n * FP32
    # after the tiles: log_z, log(sum_exp), logprobs, x_sum_exp / sum_exp, entropy (fp32); is_top1 (bool)
    tail = 5 * n * FP32 + 3 * n
    forward_peak = mask + gathered + statistics + buffer + hidden_chunk + max(weight_chunk, tail)
    saved = mask + gathered + 2 * n * FP32  # + log_z, entropy; the mask for masked_scatter's backward
    grad_weight = v * h * FP32 if _head_trains(t) else 0
    grad_hidden = n * h * FP32 + (n * h * hd if hd != FP32 else 0)  # fp32 accumulator, cast on return
    incoming = 2 * shifted * FP32 + n * FP32  # d loss / d log_probs, its masked_select, .float()
    backward_peak = saved + buffer + hidden_chunk + weight_chunk + grad_hidden + grad_weight + incoming
    return LogitsBytes(forward_peak=forward_peak, saved=saved, backward_peak=backward_peak)


def liger_chunk_rows(tokens: int, vocab: int, hidden: int) -> int:
    """Liger's rows per chunk: next_power_of_2(ceil(T / ceil(V / H))), at most T (chunk_mem_const 1)."""
    inc_factor = -(-vocab // hidden)
    rows = -(-tokens // inc_factor)
    return min(1 << (rows - 1).bit_length(), tokens)


def _liger(m: ModelSpec, t: TrainSpec) -> LogitsBytes:
    hd, _, wd = head_dtypes(m, t)
    h, v, tokens = m.hidden_size, m.vocab_size, t.tokens
    grads = tokens * h * hd + (v * h * wd if _head_trains(t) else 0)  # grad_input, grad_weight (in forward)
    logits_chunk = liger_chunk_rows(tokens, v, h) * v * hd
    per_token = tokens * FP32 + tokens + tokens * INT64  # loss_1d, target_mask, the padded labels
    forward_peak = grads + logits_chunk + per_token
    # in backward the weight gradient is the head's .grad (counted with the gradients)
    return LogitsBytes(forward_peak=forward_peak, saved=grads, backward_peak=tokens * h * hd)


def _cce(m: ModelSpec, t: TrainSpec) -> LogitsBytes:
    hd, _, _ = head_dtypes(m, t)
    h, v, tokens = m.hidden_size, m.vocab_size, t.tokens
    n = t.batch * (t.seq - 1)  # shift=1: the last position of each sequence has no label
    indices = n * 2 * INT64 + n * 4  # nonzero over (batch, seq) targets, then int32 flat indices
    forward_peak = indices + 3 * n * FP32  # lse, neg_dot, the per-token loss
    saved = n * 4 + n * FP32  # valids, lse
    backward_peak = saved + tokens * h * hd + (v * h * hd if _head_trains(t) else 0)  # de, dc
    return LogitsBytes(forward_peak=forward_peak, saved=saved, backward_peak=backward_peak)
