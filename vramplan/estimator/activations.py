"""Activations: what autograd saves for backward, and the workspace around it, for one training step.

One decoder layer is walked op by op (`layer_ops.py`, on the machinery of `walk.py`; the saved-tensor inventory
is in `layer_ops`' docstring) once per setting (cached); `activation_bytes` scales it to the batch, sequence
and layers at hand.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

from vramplan.estimator.layer_ops import decoder_layer, norm
from vramplan.estimator.walk import BYTES, Ctx, Walk, make_ctx
from vramplan.spec import ModelSpec, TrainSpec


@dataclass(frozen=True, slots=True)
class ActivationBytes:
    """Saved-for-backward bytes of a forward, and the workspace around it.

    `saved`: all decoder layers (with checkpointing: the layer inputs); `layer`: one layer's saved set (what a
    checkpointed layer recomputes during backward); `layer_transient`: the most one layer's forward holds at
    once (what it has saved so far plus the operands of the op at hand); `layer_copies`: autocast's low-
    precision copies of one layer's fp32 weights that mm saves (adapters, fp32 base or master weights), held by
    `copy_layers` layers from forward to their backward (without checkpointing; with it the recompute makes one
    layer's again); `layer_cached`: the part autocast's cast cache holds (trainable leaves) until forward ends;
    `head_copy`: the same for an fp32 `lm_head`, alive until lm_head's backward; `hidden_bytes`: one T·hidden
    tensor in the residual stream's dtype; `backward_workspace`: gradients alive at once inside one layer's
    backward: the MLP's (grad of the down-projection input and of both product operands, 3·T·I in the MLP's
    dtype; 2·T·I for a plain MLP) plus the incoming gradient of the layer's output (T·H).
    """

    saved: int
    layer: int
    layer_transient: int
    layer_refs: int  # the most one layer's forward references at once (operands, residuals), autograd aside
    layer_copies: int
    layer_cached: int
    copy_layers: int
    head_copy: int
    hidden_bytes: int
    backward_workspace: int
    dora_backward: int  # DoRA's weight-sized tensor in its backward (one copy in the compute dtype)
    layer_ctx: int  # one layer's tensors kept outside saved tensors (int8 matmul inputs): not kept by a recompute
    layer_input_saved: int  # the part of `layer` that is the layer's input (a checkpointed input already)
    recompute_tail: int  # gradients alive when a checkpointed layer's recompute starts, beyond the incoming one
    down_saved: int  # what the MLP's down projection saved: freed before the MLP workspace peaks
    hidden_grad_bytes: int  # a T·hidden gradient in the compute dtype (flows out of the attention / MLP)
    final_saved: int  # what the final norm saves (part of `saved`; freed before the top layer's backward)
    final_hidden_bytes: int  # the final norm's output, held by the model output until the loss is computed


class _LayerWalk(NamedTuple):
    """One decoder layer's walk. Per token (complex: the imaginary part grows with seq) unless noted."""

    saved: complex  # what autograd saves
    const: int  # saved bytes per layer that do not scale with tokens
    live: tuple[tuple[complex, int], ...]  # (per token, per layer) alive at each op: saved so far + operands
    refs: tuple[tuple[complex, int], ...]  # (per token, per layer) referenced at each op, autograd aside
    down_saved: complex  # what the MLP's down projection saved
    ctx: complex  # kept through `ctx.tensors` (int8 matmul inputs), alive even under checkpointing
    ctx_only: complex  # the part of `ctx` no op saves through autograd
    input_saved: complex  # the layer's input itself, when an op saves it (an fp32 residual's RMSNorm: no cast)
    tail: complex  # gradients alive when the layer's recompute starts, beyond the incoming one (DoRA)


def _undominated(entries: list[tuple[complex, int]]) -> tuple[tuple[complex, int], ...]:
    """The entries that can be the largest for some T, seq > 0: drop any that another matches or exceeds in
    all three coefficients (per token, per token·seq, per layer). Only speeds up the max taken per estimate."""

    def key(e: tuple[complex, int]) -> tuple[float, float, int]:
        return (e[0].real, e[0].imag, e[1])

    keys = sorted({key(e) for e in entries}, reverse=True)
    kept: list[tuple[float, float, int]] = []
    for k in keys:
        if not any(o[0] >= k[0] and o[1] >= k[1] and o[2] >= k[2] for o in kept):
            kept.append(k)
    return tuple((complex(a, b), c) for a, b, c in kept)


@functools.lru_cache(maxsize=4096)
def _walk_layer(m: ModelSpec, c: Ctx, trainable: bool, rg_in: bool, rd: str) -> _LayerWalk:
    w = Walk()
    x = w.new(m.hidden_size, rd, rg_in)
    decoder_layer(w, c, m, x, trainable)
    return _LayerWalk(
        w.saved_bytes,
        w.const,
        _undominated(w.live),
        _undominated(w.refs),
        w.down_saved,
        sum(w.ctx_saved.values()),
        w.ctx_only,
        w.saved.get(x.id, 0),
        w.tail,
    )


@functools.lru_cache(maxsize=4096)
def _walk_final(m: ModelSpec, c: Ctx, rd: str, trainable: bool) -> tuple[complex, complex]:
    """(saved bytes, output bytes) per token of the final norm."""
    w = Walk()
    out = norm(w, c, m, w.new(m.hidden_size, rd, True), trainable)
    return w.saved_bytes, out.nbytes


def activation_bytes(m: ModelSpec, t: TrainSpec) -> ActivationBytes:
    c = make_ctx(m, t)
    L = m.num_hidden_layers
    rd = "fp32" if (t.kbit_prep or t.dtype == "fp32") else t.dtype
    embed_trainable = t.method == "full"
    # kbit prep + checkpointing calls enable_input_require_grads (peft/utils/other.py): the embedding output
    # requires grad, so layer 0 saves like the others.
    x0_rg = embed_trainable or (t.kbit_prep and t.grad_ckpt)
    first_trainable = L - t.freeze_trainable_layers if t.method == "freeze" else (0 if t.method == "full" else L)
    # layer 0 may see an input that does not require grad; later layers always see one that does
    # (the LoRA branches or trainable weights of earlier layers); freeze: frozen layers below the
    # trainable ones, and the first trainable one's input, see no grad at all.
    kinds: dict[tuple[bool, bool], int] = {}
    for idx in range(L):
        rg_in = idx > first_trainable if t.method == "freeze" else (x0_rg if idx == 0 else True)
        kind = (idx >= first_trainable, rg_in)
        kinds[kind] = kinds.get(kind, 0) + 1
    T, s = t.tokens, t.seq

    def at(z: complex) -> int:
        return round(T * (z.real + z.imag * s))

    walks = {kind: _walk_layer(m, c, kind[0], kind[1], rd) for kind in kinds}
    hidden = T * m.hidden_size * BYTES[rd]
    if t.grad_ckpt:
        # non-reentrant checkpoint keeps each layer's input hidden state (and whatever ops keep outside
        # autograd's saved tensors: bitsandbytes int8 matmul inputs)
        saved = L * hidden + sum(n * at(walks[k].ctx) for k, n in kinds.items())
    else:
        saved = sum(n * (at(walks[k].saved) + walks[k].const) for k, n in kinds.items())
    if c.masked:
        # the model's bool sliding-window mask (B·1·S·S), built once and passed to every layer (and recompute)
        saved += t.batch * s * s
    # the final norm, outside the checkpointed layers; its input requires grad whenever anything trains
    final_saved, final_out = _walk_final(m, c, rd, t.method == "full")
    saved += at(final_saved)
    layer = max(at(v.saved) + v.const for v in walks.values())
    down_saved = max(at(v.down_saved) for v in walks.values())
    layer_ctx = max(at(v.ctx_only) for v in walks.values())
    layer_input_saved = max(at(v.input_saved) for v in walks.values())
    recompute_tail = max(at(v.tail) for v in walks.values())
    transient = max((at(z) + k for v in walks.values() for z, k in v.live), default=0)
    refs = max((at(z) + k for v in walks.values() for z, k in v.refs), default=0)
    layer_copies = layer_cached = head_copy = 0
    n_copy_layers = t.freeze_trainable_layers if t.method == "freeze" else L
    if c.ac:
        ab = BYTES[c.ac]
        if c.lora:
            # autocast casts each fp32 adapter weight to the autocast dtype; mm saves the copy (its input needs
            # a gradient), so a low-precision copy of every adapter lives from forward until its backward
            layer_copies += sum(
                t.lora_rank * (li.in_features + li.out_features) * ab for li in m.linears if li.name in c.lora
            )
            layer_cached = layer_copies
        if not c.quant and t.dtype != c.ac:
            # unquantized linear weights stored in another dtype (fp32 master weights, or a frozen fp32 base):
            # mm saves the cast copy whenever its input needs a gradient
            base_copy = sum(li.weight_params for li in m.linears) * ab
            layer_copies += base_copy
            if t.method in ("full", "freeze"):
                layer_cached += base_copy
        # autocast's cast cache keeps the copies of leaf tensors that require grad (adapters, trainable weights)
        # until the autocast region exits, i.e. through the whole forward even under checkpointing
        # (aten/src/ATen/autocast_mode.cpp `cached_cast`)
        head_dt = "fp32" if t.kbit_prep else t.dtype
        if head_dt != c.ac:
            # lm_head (the embedding matrix when tied): kbit prep leaves it fp32, so under autocast its cast
            # copy (vocab·hidden) is saved for the input gradient until lm_head's backward
            head_copy = m.vocab_size * m.hidden_size * ab
    # MLP intermediates: the autocast dtype, except on a bnb base whose Linear4bit returns the input's dtype
    # (fp32 after kbit prep) and the LoRA sum promotes to it
    cdb = BYTES[rd if c.quant else (c.ac or rd)]
    n_int = {"gated": 3, "gated_fused": 3, "plain": 2}.get(m.mlp, 3 * max(m.num_experts_per_tok, 1))
    workspace = n_int * T * m.intermediate_size * cdb + hidden
    return ActivationBytes(
        saved=saved,
        layer=layer,
        layer_transient=transient,
        layer_refs=refs,
        layer_copies=layer_copies,
        layer_cached=layer_cached,
        copy_layers=n_copy_layers,
        head_copy=head_copy,
        hidden_bytes=hidden,
        backward_workspace=workspace,
        dora_backward=BYTES[c.ac or c.ad] * max((li.weight_params for li in m.linears if li.name in c.lora), default=0)
        if t.dora and c.lora
        else 0,
        down_saved=down_saved,
        layer_ctx=layer_ctx,
        layer_input_saved=layer_input_saved,
        recompute_tail=recompute_tail,
        final_saved=at(final_saved),
        hidden_grad_bytes=T * m.hidden_size * BYTES[c.ac or rd],
        final_hidden_bytes=at(final_out),
    )
