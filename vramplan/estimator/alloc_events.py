"""The allocation sequence of a training step, emitted by the analytic walk: what the caching allocator sees.

`vramplan.allocator` replays a sequence of `(ALLOC, id, bytes)` / `(FREE, id, 0)` events; the harness records
the real one (`MeasureResult.events`), the estimator emits this one from what it already knows, in the order
the HF Trainer loop allocates (two steps, as the traced ones):

- setup: each decoder layer's linear weights (bitsandbytes' packed 4-bit data and its absmax state, or the
  load dtype), then the rest of the model (embeddings, norms, lm_head) as one tensor, then the adapters;
- forward, layer by layer: the decoder layer's walk (`layer_ops`) recorded op by op (`layer_pattern.py`), each
  tensor allocated where the walk creates it and freed after the last op that holds it, unless autograd saves
  it; with gradient checkpointing a layer keeps only its input (and int8 matmul inputs);
- the loss: `ForCausalLMLoss`'s logits, their fp32 upcast and log_softmax's output (`logits.py`), or the
  fused losses' figures (`loss.py`) as one saved and one transient tensor;
- backward, top layer first: a checkpointed layer's forward again, the layer's parameter gradients, then its
  saved tensors freed newest first, the MLP's gradient workspace (`ActivationBytes.backward_workspace`) once
  the down projection's inputs are gone, the attention's input gradients after the MLP's, and the gradient of
  the layer's input replacing the incoming one;
- the optimizer step: the states, created at the first step (`optimizer.py`: shared out in proportion to the
  gradients), the step's temporaries (`_multi_tensor_adam` allocates its list at once and frees it), then
  `zero_grad(set_to_none=True)` frees every gradient.

Sizes are the walk's, so the sequence's live bytes follow the estimate's moments (`peak.py`); the order is a
model: tests/estimator/test_alloc_events.py holds the replayed figures to traced sequences. Pure Python.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vramplan.allocator.replay import ALLOC, FREE, Event
from vramplan.estimator.activations import (
    ActivationBytes,
    activation_bytes,
    layer_kinds,
    residual_dtype_of,
)
from vramplan.estimator.adapters import adapter_bytes
from vramplan.estimator.bnb_storage import bnb_4bit_bytes
from vramplan.estimator.layer_extras import stored_kv_layers
from vramplan.estimator.layer_pattern import LayerTemplate, Size, layer_pattern, layer_template
from vramplan.estimator.logits import head_dtype_bytes
from vramplan.estimator.loss import loss_bytes
from vramplan.estimator.optimizer import optimizer_bytes
from vramplan.estimator.optimizer_memory_efficient import is_layerwise
from vramplan.estimator.params import count_params
from vramplan.estimator.walk import layer_specs, walk_settings
from vramplan.estimator.weights import base_param_dtype_bytes, weight_bytes
from vramplan.spec import DTYPE_BYTES, ModelSpec, TrainSpec

STEPS = 2  # as the traced sequences: the first step creates the optimizer states, the second is steady


class _Emitter:
    """Numbers the tensors and keeps the sequence and its live bytes."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.next_id = 0
        self.sizes: dict[int, int] = {}

    def alloc(self, nbytes: int) -> int:
        self.next_id += 1
        if nbytes > 0:
            self.events.append((ALLOC, self.next_id, nbytes))
            self.sizes[self.next_id] = nbytes
        return self.next_id

    def free(self, *tensor_ids: int) -> None:
        for tensor_id in tensor_ids:
            if self.sizes.pop(tensor_id, None) is not None:
                self.events.append((FREE, tensor_id, 0))


def _linear_storage(m: ModelSpec, t: TrainSpec) -> list[int]:
    """One decoder layer's linear weights as stored (bitsandbytes 4-bit: packed data; int8: the int8 weight;
    else the load dtype), and their quantization states as separate tensors."""
    out = []
    for li in m.linears:
        if li.count:  # a generic family's linears are not one per layer
            continue
        if t.quant in ("nf4", "fp4", "4bit") or (t.quant != "none" and t.quant != "int8"):
            packed, state = bnb_4bit_bytes(li.weight_params, t.double_quant)
            out += [packed, state]
        elif t.quant == "int8":
            out += [li.weight_params, 4 * li.out_features]
        else:
            out.append(li.weight_params * DTYPE_BYTES[t.dtype])
    return out


def _parameter_order(tensors: list[list[int]]) -> list[int]:
    """`_trainable_tensors`' lists in the order a model registers its parameters: the part outside the layers
    (the embeddings first), then layer by layer."""
    return [*tensors[-1], *(nbytes for layer in tensors[:-1] for nbytes in layer)]


def _trainable_tensors(m: ModelSpec, t: TrainSpec, total: int, param_bytes: int) -> list[list[int]]:
    """The trainable tensors of each decoder layer (bottom first) in `param_bytes`, then the rest as one list
    (embeddings, head, norms, or whatever the method trains outside the layers), summing to `total` bytes."""
    layers = m.num_hidden_layers
    per_layer: list[list[int]] = [[] for _ in range(layers)]
    if t.uses_lora and not t.peft.prompt_learning:
        targets = [li for li in m.linears if li.name in t.lora_target and not li.count]
        for layer in per_layer:
            for li in targets:
                layer += [t.lora_rank * li.in_features * param_bytes, li.out_features * t.lora_rank * param_bytes]
    elif t.method in ("full", "freeze"):
        first = layers - t.freeze_trainable_layers if t.method == "freeze" else 0
        for index in range(first, layers):
            per_layer[index] = [li.params * param_bytes for li in m.linears if not li.count]
            per_layer[index] += [p.params * param_bytes for p in m.moe_params]  # router, fused experts
            per_layer[index].append(m.norm_params_per_layer * param_bytes)
    emitted = sum(sum(layer) for layer in per_layer)
    if emitted > total:  # a method the per-tensor split does not know: the total as one tensor
        return [[] for _ in range(layers)] + [[total]]
    return [*per_layer, [total - emitted]]


def step_events(m: ModelSpec, t: TrainSpec) -> list[Event]:
    """The allocation sequence of `STEPS` training steps of `t` (module docstring)."""
    if m.walk_basis is not None:
        targets = {role for name, role in m.walk_roles if name in t.lora_target}
        walk_model, walk_train = m.walk_basis, replace(t, lora_target=tuple(sorted(targets)))
    else:
        walk_model, walk_train = m, t
    e = _Emitter()
    act = activation_bytes(m, t)
    weights = weight_bytes(m, t)
    param_bytes = 4 if t.uses_lora else DTYPE_BYTES[t.dtype]
    trainable_total = weights.trainable + adapter_bytes(m, t)
    grads_total = count_params(m, t).trainable * param_bytes
    optimizer = optimizer_bytes(m, t, param_bytes)
    layerwise = is_layerwise(t.optim)

    # setup, in the order the model registers its parameters: the embeddings, the base's linears layer by layer,
    # the rest of the model; then the adapters (a trained model: its parameters in the same order)
    frozen_total = weights.frozen + weights.quant_state
    storage = _linear_storage(m, t) if t.method not in ("full", "freeze") else []
    layers = m.num_hidden_layers
    if storage and sum(storage) * layers <= frozen_total:
        frozen_total -= sum(storage) * layers
        embeddings = min(frozen_total, m.vocab_size * m.hidden_size * base_param_dtype_bytes(t))
        e.alloc(embeddings)
        for _ in range(layers):
            for nbytes in storage:
                e.alloc(nbytes)
        frozen_total -= embeddings
    e.alloc(frozen_total)
    trainable = _trainable_tensors(m, t, trainable_total, 4 if t.uses_lora else DTYPE_BYTES[t.dtype])
    for nbytes in _parameter_order(trainable):
        e.alloc(nbytes)
    grads = _trainable_tensors(m, t, grads_total, param_bytes)

    settings = walk_settings(walk_model, walk_train)
    residual_dtype = residual_dtype_of(t)
    kinds = layer_kinds(walk_model, walk_train)
    patterns = [
        layer_pattern(
            spec,
            settings._replace(masked=kind[2], parameter_adapters=kind[3], mixer=kind[4]),
            kind[0],
            kind[1],
            residual_dtype,
        )
        for spec, kind in zip(layer_specs(walk_model), kinds, strict=True)
    ]
    tokens, seq = t.tokens, t.seq

    def at(size: Size) -> int:
        per_token, per_layer = size
        return round(tokens * (per_token.real + per_token.imag * seq)) + per_layer

    resolved: dict[int, tuple[LayerTemplate, LayerTemplate]] = {}  # by the (cached) pattern's identity
    for pattern in patterns:
        if id(pattern) not in resolved:
            resolved[id(pattern)] = (layer_template(pattern, at, False), layer_template(pattern, at, True))
    templates = [resolved[id(pattern)] for pattern in patterns]
    mask_bytes = t.batch * seq * seq if settings.masked else 0
    shape = _backward_shape(walk_model, t, act, settings.liger)
    stored_kv = stored_kv_layers(walk_model, walk_train, settings, residual_dtype, kinds)
    for step in range(STEPS):
        _one_step(e, m, t, act, shape, patterns, templates, grads, optimizer, layerwise, step == 0, mask_bytes,
                  stored_kv)  # fmt: skip
    return e.events


def _replay_layer(e: _Emitter, template: LayerTemplate, layer_input: int) -> dict[int, int]:
    """A decoder layer's forward events (what `_Emitter.alloc` / `free` would emit for each of the pattern's
    events, in one pass); returns its local ids -> emitted ids."""
    base = e.next_id
    events, sizes = e.events, e.sizes
    for op, k, nbytes in template.events:
        if op == ALLOC:
            events.append((ALLOC, base + k, nbytes))
            sizes[base + k] = nbytes
        elif k:
            del sizes[base + k]
            events.append((FREE, base + k, 0))
        elif sizes.pop(layer_input, None) is not None:
            events.append((FREE, layer_input, 0))
    e.next_id = base + template.allocations
    return {local: base + k if k else layer_input for local, k in template.local_index.items()}


@dataclass(frozen=True, slots=True)
class _BackwardShape:
    """A decoder layer's backward gradients: `mlp_parts` MLP gradients of `mlp_grad` bytes each (the
    `backward_workspace` of `activations.py` beyond the incoming T·H one), and q's, k's and v's."""

    mlp_parts: int
    mlp_grad: int
    attention_grads: tuple[int, int, int]


def _backward_shape(m: ModelSpec, t: TrainSpec, act: ActivationBytes, liger: bool) -> _BackwardShape:
    plain = 3 if m.model_type == "starcoder2" else 2  # as activations.py's workspace
    parts = {"gated": 3, "gated_fused": 3, "plain": plain}.get(m.mlp, 3 * max(m.num_experts_per_tok, 1))
    if liger and m.mlp == "gated":
        parts = 1
    grad_bytes = act.hidden_grad_bytes // (t.tokens * m.hidden_size)
    q, kv = t.tokens * m.q_dim * grad_bytes, t.tokens * m.kv_dim * grad_bytes
    return _BackwardShape(parts, (act.backward_workspace - act.hidden_bytes) // parts, (q, kv, kv))


def _one_step(
    e, m, t, act, shape, patterns, templates, grads, optimizer, layerwise, first, mask_bytes, stored_kv
) -> None:
    ckpt = t.grad_ckpt
    # Gemma 4's shared_kv_states (layer_extras.stored_kv_layers): a storing layer's keys and values from its
    # forward, replaced by its recompute's (with that recompute's graph) until the end of backward
    kv_states: dict[int, int] = {}
    mask = e.alloc(mask_bytes)  # the sliding-window mask, built once and passed to every layer
    x = embeds = e.alloc(act.hidden_bytes)  # inputs_embeds, held by the model's forward until it returns
    forward_ids = []
    for pattern, template in zip(patterns, templates, strict=True):
        ids = _replay_layer(e, template[ckpt], x)  # checkpointed: only the input and ctx.tensors survive
        if ckpt:
            pass
        elif not pattern.input_saved and x != embeds:
            e.free(x)
        forward_ids.append(ids)
        if len(forward_ids) - 1 in stored_kv:
            kv_states[len(forward_ids) - 1] = e.alloc(stored_kv[len(forward_ids) - 1][0])
        x = ids[pattern.output]
    # final norm and the loss
    final_saved = e.alloc(act.final_saved)
    final_out = e.alloc(act.final_hidden_bytes)
    e.free(x)
    head_copy = e.alloc(act.head_copy if t.loss == "hf" else 0)
    saved_loss, backward_extra = _loss_forward(e, m, t)
    e.free(final_out, embeds)
    # backward: the loss, lm_head, then the layers top down
    loss_grads = [e.alloc(nbytes) for nbytes in _loss_backward_grads(t, backward_extra)]
    rest_grad = grads[-1][0] if not layerwise else 0
    head_grad_bytes = min(rest_grad, m.vocab_size * m.hidden_size * DTYPE_BYTES[t.dtype]) if t.method == "full" else 0
    # liger computes the head weight's gradient in forward (saved): it becomes the head's .grad
    liger_head = t.loss == "liger" and t.method == "full"
    if t.loss == "hf":
        # nll_loss's gradient and log_softmax's saved output die once log_softmax's input gradient exists; the
        # upcast's backward (`ToCopyBackward`) casts that to the head's dtype before the head's backward runs
        nll_grad, input_grad_fp32 = loss_grads
        e.free(nll_grad, saved_loss.pop(0))
        loss_grads = [input_grad_fp32]
        head_bytes = head_dtype_bytes(t)
        if head_bytes != 4:
            loss_grads = [e.alloc(head_bytes * t.tokens * m.vocab_size)]
            e.free(input_grad_fp32)
    param_grads = [saved_loss.pop()] if liger_head else [e.alloc(head_grad_bytes)]
    grad = e.alloc(act.hidden_grad_bytes)
    e.free(*loss_grads, *saved_loss, head_copy, final_saved)
    for index in range(len(patterns) - 1, -1, -1):
        pattern = patterns[index]
        ids = forward_ids[index]
        layer_input = ids[0]
        if ckpt:  # the layer's forward again: its saved tensors back, its transients come and go
            ids = _replay_layer(e, templates[index][False], layer_input)
            e.free(ids[pattern.output])
            if index in stored_kv:
                e.free(kv_states[index])
                kv_states[index] = e.alloc(stored_kv[index][1])
        layer_grads = [] if layerwise else grads[index]
        half = len(layer_grads) // 2
        saved = [ids[i] for i in pattern.saved if i != 0]
        mlp_saved, attention_saved = saved[pattern.mlp_from :], saved[: pattern.mlp_from]
        down = saved[pattern.down_from :]
        if act.output_norm_backward:  # a layer ending in a norm of the MLP output: that norm's backward first,
            # its fp32 gradient chain (five T·H fp32 tensors at once, peak.py's output-norm moment)
            chain = [e.alloc((act.output_norm_backward - act.hidden_bytes) // 5) for _ in range(5)]
            e.free(*chain)
        # the MLP's gradients: the down projection's input's first, then the product's operands'
        workspace = [e.alloc(shape.mlp_grad)]
        e.free(*reversed(down))
        param_grads += [e.alloc(n) for n in layer_grads[half:]]  # the MLP's parameters
        workspace += [e.alloc(shape.mlp_grad) for _ in range(shape.mlp_parts - 1)]
        e.free(*reversed(mlp_saved))
        e.free(*workspace)
        attention_grads = [e.alloc(n) for n in shape.attention_grads]  # q's, k's, v's
        param_grads += [e.alloc(n) for n in layer_grads[:half]]
        e.free(*reversed(attention_saved))
        e.free(*attention_grads)
        input_grad = e.alloc(act.hidden_grad_bytes)
        e.free(grad, layer_input, *(forward_ids[index][i] for i in pattern.ctx))
        grad = input_grad
    if m.tie_word_embeddings and head_grad_bytes:
        # the embedding's dense gradient added to the one lm_head left: the sum is a new tensor (peak.py)
        dense = e.alloc(head_grad_bytes)
        total = e.alloc(head_grad_bytes)
        e.free(param_grads[0], dense)
        param_grads[0] = total
    e.free(grad, mask, *kv_states.values())
    param_grads.append(e.alloc(rest_grad - head_grad_bytes))  # embeddings, norms, what trains outside layers
    # optimizer step: states at the first step, param by param in the model's order (torch AdamW `_init_group`:
    # exp_avg, exp_avg_sq), the step's temporaries (`_multi_tensor_adam`: a list at once), then zero_grad
    grad_sizes = [e.sizes.get(g, 0) for g in param_grads]
    total = sum(grad_sizes) or 1
    if first:
        made = 0
        for nbytes in grad_sizes:
            share = optimizer.states * nbytes // total
            e.alloc(share // 2)
            e.alloc(share - share // 2)
            made += share
        e.alloc(optimizer.states - made)
    temporaries = [e.alloc(optimizer.step_temporaries * nbytes // total) for nbytes in grad_sizes]
    e.free(*temporaries)
    e.free(*param_grads)


def _loss_forward(e: _Emitter, m: ModelSpec, t: TrainSpec) -> tuple[list[int], int]:
    """The loss's forward tensors; returns the ids it saves for backward and its backward's extra bytes.
    hf (`logits.py`): the logits in the head's dtype, gemma2's softcapped copy, the fp32 upcast, log_softmax's
    output; the Trainer drops the logits and the upcast once the loss is computed."""
    figures = loss_bytes(m, t)
    if t.loss == "hf":
        tv = t.tokens * m.vocab_size
        head_bytes = head_dtype_bytes(t)
        logits = e.alloc(head_bytes * tv)
        softcap = e.alloc(head_bytes * tv if m.final_softcap else 0)
        upcast = e.alloc(0 if head_bytes == 4 else 4 * tv)
        log_probs = e.alloc(4 * tv)
        e.free(upcast, logits)
        return [log_probs, softcap], figures.backward_peak - figures.saved
    if t.loss == "liger" and t.method == "full":  # the input's and the head weight's gradients, in forward
        weight_grad = m.vocab_size * m.hidden_size * (4 if t.kbit_prep else DTYPE_BYTES[t.dtype])
        saved = [e.alloc(figures.saved - weight_grad), e.alloc(weight_grad)]
    else:
        saved = [e.alloc(figures.saved)]
    temporary = e.alloc(figures.forward_peak - figures.saved)
    e.free(temporary)
    return saved, figures.backward_peak - figures.saved


def _loss_backward_grads(t: TrainSpec, extra: int) -> list[int]:
    """The loss's backward tensors beyond what it saved (hf: nll_loss's dense gradient and log_softmax's
    input gradient, fp32 T·V each)."""
    if t.loss == "hf":
        return [extra // 2, extra - extra // 2]
    return [extra]


__all__ = ["STEPS", "step_events"]
