"""Assemble one steady-state training step phase by phase and pick the peak.

Steady state: optimizer states exist (they are created at the first `step()`), and with gradient
accumulation the gradients of earlier micro-batches are alive during forward. `zero_grad(set_to_none=True)`
(the Trainer's default) frees gradients after the step.
- forward: persistent + saved activations + the loss's logits copies (or the largest layer transient).
- backward: the largest of its start (all activations + the loss gradient), a decoder layer's backward
  (the layer's recomputed activations when checkpointing, its gradient workspace) and its end (all grads).
- optimizer: persistent + all grads + the step's temporaries.
"""

from __future__ import annotations

from vramplan.breakdown import Components, PhaseUsage
from vramplan.estimator.activations import activation_bytes
from vramplan.estimator.adapters import adapter_bytes
from vramplan.estimator.logits import logits_bytes
from vramplan.estimator.optimizer import optimizer_bytes
from vramplan.estimator.params import count_params
from vramplan.estimator.weights import weight_bytes
from vramplan.spec import DTYPE_BYTES, ModelSpec, TrainSpec

_MLP_OUT = frozenset({"down_proj", "dense_4h_to_h", "fc2"})  # the MLP's last linear, per family


def phases(m: ModelSpec, t: TrainSpec) -> tuple[tuple[PhaseUsage, ...], int]:
    """(forward, backward, optimizer) usage and the paged bytes."""
    wb = weight_bytes(m, t)
    trainable_bytes = wb.trainable + adapter_bytes(m, t)
    param_bytes = 4 if t.uses_lora else DTYPE_BYTES[t.dtype]
    grads = count_params(m, t).trainable * param_bytes
    ob = optimizer_bytes(m, t, param_bytes)
    act = activation_bytes(m, t)
    lg = logits_bytes(m, t)
    base = {
        "weights": wb.frozen,
        "quant_state": wb.quant_state,
        "trainable": trainable_bytes,
        "optimizer_states": ob.states,
    }
    accum_grads = grads if t.grad_accum > 1 else 0
    # autocast copies of fp32 weights: saved by mm (without checkpointing), or held by the cast cache in forward
    copies = 0 if t.grad_ckpt else act.layer_copies * act.copy_layers
    fwd_copies = act.layer_cached * act.copy_layers if t.grad_ckpt else copies
    saved = act.saved + copies
    # how far one layer's forward rises above what it finally saves (its largest transient set)
    in_layer_excess = max(0, act.layer_transient - act.layer)
    # lm_head's autocast copy of an fp32 weight is made inside lm_head: counted with the logits / loss
    fwd = Components(
        **base,
        gradients=accum_grads,
        activations=act.saved + fwd_copies + act.final_hidden_bytes,
        logits=lg.forward_peak + act.head_copy,
        temporaries=0,
    )
    # inside the last layer's forward: all saved activations and the layer's largest transient set (DoRA's
    # weight-sized intermediates, a large MLP intermediate). Without checkpointing, add the layer's input (the
    # decoder loop holds it) and the embedding output (the model's forward holds `inputs_embeds` until it
    # returns); with it, both are checkpointed inputs already, and the layer keeps only what it references.
    if t.grad_ckpt:
        in_layer_act = act.saved - act.final_saved + act.layer_refs + fwd_copies
    else:
        in_layer_act = act.saved - act.final_saved + 2 * act.hidden_bytes + in_layer_excess + fwd_copies
    in_layer = Components(
        **base,
        gradients=accum_grads,
        activations=in_layer_act,  # (what forward allocates is activations, as the tracker files it)
    )
    fwd = max(fwd, in_layer, key=lambda c: c.total)
    head_grad = 0
    if t.method == "full":
        head_grad = m.vocab_size * m.hidden_size * param_bytes
    bwd_start = Components(
        **base,
        gradients=max(accum_grads, head_grad),
        activations=saved,
        logits=lg.backward_peak + act.head_copy,
    )
    # a decoder layer's backward: at the top layer all activations are still alive; at the bottom one only its
    # own remain while the gradients of every layer above exist. The usage is linear in between, so the two
    # ends bound it. At each end, with checkpointing, either the recompute (the layer's forward again: its
    # saved set plus its largest forward transient, with the incoming gradient) or the layer's own backward
    # (its saved set plus the gradient workspace) is the larger.
    L = m.num_hidden_layers
    n_train_layers = {"full": L, "freeze": t.freeze_trainable_layers}.get(t.method, L if t.uses_lora else 0)
    layer_grad = grads // L if t.uses_lora else (m.layer_params * param_bytes if n_train_layers else 0)
    ends = (
        (max(accum_grads, head_grad), saved - act.final_saved),
        (
            max(accum_grads, head_grad + max(n_train_layers - 1, 0) * layer_grad),
            act.hidden_bytes if t.grad_ckpt else act.layer + act.layer_copies,
        ),
    )
    # a checkpointed layer's recomputed set (its input, if an op saves it, is the checkpointed one). While the
    # recompute runs, its graph is alive (the residual references it) and so is what ops keep outside saved
    # tensors (int8 matmul inputs); once it is done only the saved tensors, detached, remain
    one = act.layer + act.layer_copies - act.layer_ctx - act.layer_input_saved
    # at the MLP workspace peak of a layer's backward, its down projection's gradients are already there
    down = [li for li in m.linears if li.name in _MLP_OUT]
    if t.uses_lora:
        down_grad = sum(t.lora_rank * (li.in_features + li.out_features) for li in down if li.name in t.lora_target)
        down_grad *= param_bytes
    else:
        down_grad = sum(li.params for li in down) * param_bytes if n_train_layers else 0
    layer_phases = []
    for g, kept in ends:
        if t.grad_ckpt:
            layer_phases.append(
                Components(
                    **base,
                    gradients=g,
                    activations=kept + one + act.layer_ctx + in_layer_excess,
                    temporaries=act.hidden_bytes + act.hidden_grad_bytes + act.recompute_tail,
                )
            )
            layer_phases.append(
                Components(
                    **base,
                    gradients=max(accum_grads, g + down_grad),
                    activations=kept + one - act.down_saved,
                    temporaries=max(act.backward_workspace, act.dora_backward),
                )
            )
        else:
            layer_phases.append(
                Components(
                    **base,
                    gradients=max(accum_grads, g + down_grad),
                    activations=kept - act.down_saved,
                    temporaries=act.backward_workspace,
                )
            )
    bwd_end = Components(**base, gradients=grads, temporaries=2 * act.hidden_bytes)
    bwd = max((bwd_start, *layer_phases, bwd_end), key=lambda c: c.total)
    opt = Components(**base, gradients=grads, temporaries=ob.step_temporaries)
    return (
        PhaseUsage("forward", fwd),
        PhaseUsage("backward", bwd),
        PhaseUsage("optimizer", opt),
    ), ob.paged
