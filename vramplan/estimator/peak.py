"""Assemble one steady-state training step phase by phase and pick the peak.

Steady state: optimizer states exist (they are created at the first `step()`), and with gradient
accumulation the gradients of earlier micro-batches are alive during forward. `zero_grad(set_to_none=True)`
(the Trainer's default) frees gradients after the step.
- forward: persistent + saved activations + the loss's logits copies (or the largest layer transient).
- backward: the largest of its start (all activations + the loss gradient), a decoder layer's backward
  (the layer's recomputed activations when checkpointing, its gradient workspace) and its end (all grads).
- optimizer: persistent + all grads + the step's temporaries.
`moments` names each candidate instant (`PhaseUsage.moment`); `phases` keeps the largest per phase.
"""

from __future__ import annotations

from vramplan.breakdown import PHASES, Components, PhaseUsage
from vramplan.estimator.activations import activation_bytes
from vramplan.estimator.adapters import adapter_bytes, adapter_param_bytes
from vramplan.estimator.logits import head_dtype_bytes
from vramplan.estimator.loss import loss_bytes
from vramplan.estimator.offload import layer_offload_bytes, offload_activations
from vramplan.estimator.optimizer import optimizer_bytes
from vramplan.estimator.optimizer_memory_efficient import is_layerwise, largest_gradient_bytes
from vramplan.estimator.params import count_params, lora_moe_shapes, lora_params_per_linear, numel
from vramplan.estimator.weights import kept_fp32_bytes, weight_bytes
from vramplan.spec import DTYPE_BYTES, ModelSpec, TrainSpec, lora_moe_targets

_MLP_OUT = frozenset({"down_proj", "dense_4h_to_h", "fc2"})  # the MLP's last linear, per family
# a DeltaNet layer's linears whose backward runs before the rule's (Qwen3.5-MoE's: the shared expert and its gate)
_AFTER_MIXER = frozenset({"out_proj", "gate_proj", "up_proj", "down_proj", "shared_expert_gate"})

# The named moments of a step (`PhaseUsage.moment`). "top layer": the last decoder layer, the first one
# backward reaches; "bottom layer": layer 0, the last one.
LOSS = "logits and loss"
INSIDE_TOP_LAYER = "inside the top layer"
LOSS_BACKWARD = "logits gradient"  # the start of backward
HEAD_BACKWARD = "lm_head backward"  # a full fine-tune's head weight gradient, after the loss's
TOP_LAYER_RECOMPUTE = "top-layer recompute"
TOP_LAYER_BACKWARD = "top-layer MLP backward"
BOTTOM_LAYER_RECOMPUTE = "bottom-layer recompute"
BOTTOM_LAYER_BACKWARD = "bottom-layer MLP backward"
TOP_LAYER_DORA_BACKWARD = "top-layer DoRA backward"  # DoRA's weight-sized tensor above the MLP's workspace
BOTTOM_LAYER_DORA_BACKWARD = "bottom-layer DoRA backward"
# a hybrid's linear-attention layer (Qwen3.5's gated DeltaNet): the topmost one, and layer 0
TOP_MIXER_BACKWARD = "top linear-attention layer backward"
BOTTOM_MIXER_BACKWARD = "bottom-layer linear-attention backward"
# a post-norm layer's (OLMo 2 / 3, EXAONE 4) output norm backward, the first thing its backward runs
OUTPUT_NORM_BACKWARD = {
    TOP_LAYER_BACKWARD: "top-layer output-norm backward",
    TOP_LAYER_DORA_BACKWARD: "top-layer output-norm backward",
    BOTTOM_LAYER_BACKWARD: "bottom-layer output-norm backward",
    BOTTOM_LAYER_DORA_BACKWARD: "bottom-layer output-norm backward",
}
END_OF_BACKWARD = "all gradients"  # the end of backward
OPTIMIZER_STEP = "step"


def moments(m: ModelSpec, t: TrainSpec) -> tuple[tuple[PhaseUsage, ...], int]:
    """Every candidate for the peak of one steady-state step, each a `PhaseUsage` named by its moment, in phase
    order (forward, backward, optimizer); and the paged optimizer bytes."""
    weights = weight_bytes(m, t)
    trainable_bytes = weights.trainable + adapter_bytes(m, t)
    param_bytes = adapter_param_bytes(t) if t.uses_lora else DTYPE_BYTES[t.dtype]
    all_grads = count_params(m, t).trainable * param_bytes
    if t.method == "full":
        all_grads += kept_fp32_bytes(m, t)  # fp32 parameters have fp32 gradients
    layerwise = is_layerwise(t.optim)
    if layerwise:  # each gradient is stepped and freed by its hook: one tensor's at a time
        all_grads = largest_gradient_bytes(m, t, param_bytes)
    optimizer = optimizer_bytes(m, t, param_bytes)
    activation = offload_activations(t, activation_bytes(m, t), m.num_hidden_layers)  # offload.py; as is without
    logits = loss_bytes(m, t)
    # lm_head's autocast copy of an fp32 weight: the fused losses cast it tile by tile (counted in loss_bytes)
    head_copy = activation.head_copy if t.loss == "hf" else 0
    # axolotl layer_offloading: the decoder layers' frozen parameters in host RAM but a window (offload.py)
    offloaded, window, step_window = layer_offload_bytes(m, t)
    persistent = {
        "weights": weights.frozen - offloaded + window,
        "quant_state": weights.quant_state,
        "trainable": trainable_bytes,
        "optimizer_states": optimizer.states,
    }
    accum_grads = all_grads if t.grad_accum > 1 else 0
    # autocast copies of fp32 weights: saved by mm (without checkpointing), or held by the cast cache in forward
    saved_copies = 0 if t.grad_ckpt else activation.layer_copies * activation.copy_layers
    forward_copies = activation.layer_cached * activation.copy_layers if t.grad_ckpt else saved_copies
    saved = activation.saved + saved_copies
    # how far one layer's forward rises above what it finally saves (its largest transient set)
    in_layer_excess = max(0, activation.layer_transient - activation.layer)
    recompute_excess = max(0, activation.recompute_transient - activation.layer)  # (a recompute stops early)
    # lm_head's autocast copy of an fp32 weight is made inside lm_head: counted with the logits / loss
    loss = Components(
        **persistent,
        gradients=accum_grads,
        activations=activation.saved + forward_copies + activation.final_hidden_bytes + activation.forward_cache_bytes,
        logits=logits.forward_peak + head_copy,
        temporaries=0,
    )
    # inside the last layer's forward: all saved activations and the layer's largest transient set (DoRA's
    # weight-sized intermediates, a large MLP intermediate). Without checkpointing, add the layer's input (the
    # decoder loop holds it) and the embedding output (the model's forward holds `inputs_embeds` until it
    # returns); with it, both are checkpointed inputs already, and the layer keeps only what it references.
    if t.grad_ckpt:
        in_layer_act = activation.saved - activation.final_saved + activation.layer_refs + forward_copies
    else:
        in_layer_act = (
            activation.saved - activation.final_saved + 2 * activation.hidden_bytes + in_layer_excess + forward_copies
        )
    inside_top_layer = Components(
        **persistent,
        gradients=accum_grads,
        activations=in_layer_act,  # (what forward allocates is activations, as the tracker files it)
    )
    head_grad = 0
    if t.method == "full":
        head_grad = m.vocab_size * m.hidden_size * param_bytes
    # ForCausalLMLoss's backward: nll_loss's and log_softmax's fp32 gradients beside the saved log-probabilities;
    # lm_head's weight gradient comes after them (the fused losses make it inside their own backward)
    head_after_loss = t.loss == "hf" and head_grad > 0
    loss_backward = Components(
        **persistent,
        gradients=accum_grads if head_after_loss else max(accum_grads, head_grad),
        activations=saved,
        logits=logits.backward_peak + head_copy,
    )
    head_backward = None
    if head_after_loss:
        # lm_head's backward: nll_loss's gradient and the log-probabilities are gone, log_softmax's input
        # gradient cast back to the head's dtype (`ToCopyBackward`) is what remains of the loss; the head's weight
        # gradient and the hidden states' gradient are made (traced: tests/oracle/test_moments.py, case full)
        head_backward = Components(
            **persistent,
            gradients=max(accum_grads, head_grad),
            activations=saved,
            logits=head_dtype_bytes(t) * t.tokens * m.vocab_size * (2 if m.final_softcap else 1) + head_copy,
            temporaries=activation.hidden_grad_bytes,
        )
    # a decoder layer's backward: at the top layer all activations are still alive; at the bottom one only its
    # own remain while the gradients of every layer above exist. The usage is linear in between, so the two
    # ends bound it. At each end, with checkpointing, either the recompute (the layer's forward again: its
    # saved set plus its largest forward transient, with the incoming gradient) or the layer's own backward
    # (its saved set plus the gradient workspace) is the larger.
    layers = m.num_hidden_layers
    n_train_layers = {"full": layers, "freeze": t.freeze_trainable_layers}.get(t.method, layers if t.uses_lora else 0)
    layer_grad = all_grads // layers if t.uses_lora else (m.layer_params * param_bytes if n_train_layers else 0)
    if layerwise:
        layer_grad = 0
    # under checkpointing DoRA's weight-sized backward tensor may outgrow the MLP's workspace
    dora_workspace = t.grad_ckpt and activation.dora_backward > activation.backward_workspace
    # (its recompute's and its backward's moments, gradients alive when its backward starts, activations kept then)
    layer_ends = [
        (
            TOP_LAYER_RECOMPUTE,
            TOP_LAYER_DORA_BACKWARD if dora_workspace else TOP_LAYER_BACKWARD,
            max(accum_grads, head_grad),
            saved - activation.final_saved,
            activation,
        ),
        (
            BOTTOM_LAYER_RECOMPUTE,
            BOTTOM_LAYER_DORA_BACKWARD if dora_workspace else BOTTOM_LAYER_BACKWARD,
            max(accum_grads, head_grad + _gradients_above_bottom(m, t, n_train_layers, layer_grad, param_bytes)),
            activation.below_bottom
            + (activation.hidden_bytes if t.grad_ckpt else activation.layer + activation.layer_copies),
            activation,
        ),
    ]
    dense = activation.dense_bottom
    if dense is not None and n_train_layers and t.method != "freeze":
        # DeepSeek-V3's dense bottom layer 0: every layer's gradients above it (the most), its smaller layer
        above = max(all_grads - _dense_layer_gradients(m, t, param_bytes), 0) if t.uses_lora else 0
        if t.method == "full":
            layer_total = m.total_params - m.embed_params - m.lm_head_params - m.final_norm_params
            above = (layer_total - _dense_layer_params(m)) * param_bytes + kept_fp32_bytes(m, t)
        layer_ends.append(
            (
                BOTTOM_LAYER_RECOMPUTE,
                BOTTOM_LAYER_BACKWARD,
                max(accum_grads, head_grad + above),
                dense.hidden_bytes if t.grad_ckpt else dense.layer + dense.layer_copies,
                dense,
            )
        )
    # a checkpointed layer's recomputed set (its input, if an op saves it, is the checkpointed one). While the
    # recompute runs, its graph is alive (the residual references it) and so is what ops keep outside saved
    # tensors (int8 matmul inputs); once it is done only the saved tensors, detached, remain (`recomputed`)
    # at the MLP workspace peak of a layer's backward, its down projection's gradients are already there
    down = [li for li in m.linears if li.name in _MLP_OUT]
    if t.uses_lora:
        down_grad = sum(lora_params_per_linear(li, t.lora_rank, False) for li in down if li.name in t.lora_target)
        down_grad *= param_bytes
    else:
        down_grad = sum(li.params for li in down) * param_bytes if n_train_layers else 0
    layer_moments = []
    for recompute_moment, backward_moment, grads_then, kept, a in layer_ends:
        recomputed = a.layer + a.layer_copies - a.layer_ctx - a.layer_input_saved
        recompute_excess = max(0, a.recompute_transient - a.layer)  # (a recompute stops early)
        if t.grad_ckpt:
            recompute = Components(
                **persistent,
                gradients=grads_then,
                activations=kept + recomputed + a.layer_ctx + recompute_excess,
                temporaries=a.hidden_bytes + a.hidden_grad_bytes + a.recompute_tail,
            )
            layer_moments.append((recompute_moment, recompute))
            layer_backward = Components(
                **persistent,
                gradients=max(accum_grads, grads_then + down_grad),
                activations=kept + recomputed - a.down_saved,
                temporaries=max(a.backward_workspace, a.dora_backward),
            )
        else:
            layer_backward = Components(
                **persistent,
                gradients=max(accum_grads, grads_then + down_grad),
                activations=kept - a.down_saved,
                temporaries=a.backward_workspace,
            )
        layer_moments.append((backward_moment, layer_backward))
        if a.output_norm_backward:  # a post-norm layer's output norm, before its MLP frees anything
            norm_backward = Components(
                **persistent,
                gradients=grads_then,
                activations=kept + (recomputed + a.layer_ctx if t.grad_ckpt else 0) - a.output_norm_freed,
                temporaries=a.output_norm_backward,
            )
            layer_moments.append((OUTPUT_NORM_BACKWARD[backward_moment], norm_backward))
    if activation.mixer_workspace:
        layer_moments += _mixer_backward(m, t, activation, persistent, layer_ends, accum_grads)
    # tied embeddings in a full fine-tune: the embedding's dense gradient (V·H) is added to the one lm_head left
    # (`AccumulateGrad` out of place: the sum is a third V·H tensor until the two operands are freed; traced on
    # Llama-3.2-1B and Gemma-2-2B at full size). Left out under gradient accumulation and layer-wise optimizers,
    # whose accumulation was not traced
    tied_sum = 2 * head_grad if (m.tie_word_embeddings and head_grad and not layerwise and not accum_grads) else 0
    end_of_backward = Components(
        **persistent, gradients=all_grads, temporaries=max(2 * activation.hidden_bytes, tied_sum)
    )
    at_step = {**persistent, "weights": weights.frozen - offloaded + step_window}  # post_step left one layer
    step = Components(**at_step, gradients=all_grads, temporaries=optimizer.step_temporaries)
    return (
        PhaseUsage("forward", loss, LOSS),
        PhaseUsage("forward", inside_top_layer, INSIDE_TOP_LAYER),
        PhaseUsage("backward", loss_backward, LOSS_BACKWARD),
        *((PhaseUsage("backward", head_backward, HEAD_BACKWARD),) if head_backward is not None else ()),
        *(PhaseUsage("backward", components, moment) for moment, components in layer_moments),
        PhaseUsage("backward", end_of_backward, END_OF_BACKWARD),
        PhaseUsage("optimizer", step, OPTIMIZER_STEP),
    ), optimizer.paged


def _mixer_backward(m: ModelSpec, t: TrainSpec, activation, persistent, layer_ends, accum_grads):
    """A hybrid's linear-attention layer backward (Qwen3.5's gated DeltaNet, estimator/delta_net_ops.py): at its
    peak the layer's saves up to the chunked delta rule's triangular solves are alive (recomputed, under
    checkpointing), with the gradient workspace there and the layer's incoming gradient. The topmost such
    layer sees every layer below it still saved (the layers above it have run their backward); layer 0 only
    its own."""
    top_kept = layer_ends[0][3] - activation.mixer_above_saved
    if not t.grad_ckpt:
        top_kept -= activation.layer  # the layer's own saves: counted by `mixer_saved`
        bottom_kept = 0
    else:
        bottom_kept = activation.hidden_bytes
    # the layer's gradients already made: its out_proj's and MLP's (adapters, or the weights when they train)
    after = [li for li in m.linears if li.name in _AFTER_MIXER]
    param_bytes = adapter_param_bytes(t) if t.uses_lora else DTYPE_BYTES[t.dtype]
    if t.uses_lora:
        layer_grads = sum(lora_params_per_linear(li, t.lora_rank, False) for li in after if li.name in t.lora_target)
    else:
        # and a Qwen3.5-MoE's router and fused experts (`other_layer_params`, 0 for the dense family)
        layer_grads = sum(li.params for li in after) + m.other_layer_params if t.method == "full" else 0
    moments = []
    for moment, kept, (_, _, grads_then, _, _) in (
        (TOP_MIXER_BACKWARD, top_kept, layer_ends[0]),
        (BOTTOM_MIXER_BACKWARD, bottom_kept, layer_ends[1]),
    ):
        usage = Components(
            **persistent,
            gradients=max(accum_grads, grads_then + layer_grads * param_bytes),
            activations=kept + activation.mixer_saved,
            temporaries=activation.mixer_workspace + activation.hidden_grad_bytes,
        )
        moments.append((moment, usage))
    return moments


def phases(m: ModelSpec, t: TrainSpec) -> tuple[tuple[PhaseUsage, ...], int]:
    """(forward, backward, optimizer) usage, each its largest moment (the first of equals), and the paged
    bytes."""
    candidates, paged = moments(m, t)
    return largest_per_phase(candidates), paged


def largest_per_phase(candidates: tuple[PhaseUsage, ...]) -> tuple[PhaseUsage, ...]:
    """Each phase's largest candidate moment (the first of equals), in phase order."""
    return tuple(max((c for c in candidates if c.phase == phase), key=lambda c: c.total) for phase in PHASES)


def _gradients_above_bottom(m: ModelSpec, t: TrainSpec, n_train_layers: int, layer_grad: int, param_bytes: int) -> int:
    """The layer gradients alive at the bottom layer's backward: of every trained layer above it. A model whose
    bottom layers have a dense MLP (DeepSeek-V3's `first_k_dense_replace`) peaks at its lowest routed layer, the
    largest one, with the routed layers above it done: that layer stands for the bottom (the dense layers below
    it, smaller, with a few more gradients alive, are not a moment of their own)."""
    if not m.dense_mlp_layers or t.method == "freeze" or not n_train_layers:
        return max(n_train_layers - 1, 0) * layer_grad
    # above the lowest routed layer (Llama 4 interleaves dense and routed layers: Maverick's layer 1)
    above = m.num_hidden_layers - 1 - min(set(range(m.num_hidden_layers)) - set(m.dense_mlp_layers))
    if t.uses_lora:
        routed = {li.name for li in m.layer_linears() if li.name in t.lora_target}
        per_layer = sum(lora_params_per_linear(li, t.lora_rank, t.dora) for li in m.linears if li.name in routed)
        experts = lora_moe_targets(m, t.lora_target)
        per_layer += sum(numel(shape) for p in experts for shape in lora_moe_shapes(p, t.lora_rank))
        return above * per_layer * param_bytes
    if m.model_type == "llama4_text":  # interleaved: each layer above by its own kind (dense or routed)
        lowest = m.num_hidden_layers - 1 - above
        dense_above = sum(1 for i in m.dense_mlp_layers if i > lowest)
        routed_layer = (m.decoder_params - len(m.dense_mlp_layers) * _dense_layer_params(m)) // m.moe_layers
        return (dense_above * _dense_layer_params(m) + (above - dense_above) * routed_layer) * param_bytes
    return above * layer_grad


def _dense_layer_params(m: ModelSpec) -> int:
    """One dense-MLP layer's parameters (DeepSeek-V3's bottom layers)."""
    return sum(li.params for li in m.layer_linears(dense=True)) + m.norm_params_per_layer


def _dense_layer_gradients(m: ModelSpec, t: TrainSpec, param_bytes: int) -> int:
    """One dense-MLP layer's LoRA gradients."""
    linears = [li for li in m.layer_linears(dense=True) if li.name in t.lora_target]
    return sum(lora_params_per_linear(li, t.lora_rank, t.dora) for li in linears) * param_bytes
