"""Activations: what autograd saves for backward, and the workspace around it, for one training step.

One decoder layer is walked op by op (`layer_ops.py`, on the machinery of `walk.py`; the saved-tensor inventory
is in `layer_ops`' docstring) once per setting (cached); `activation_bytes` scales it to the batch, sequence
and layers at hand.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import NamedTuple

from vramplan.estimator.activation_bytes import ActivationBytes
from vramplan.estimator.family_ops import model_mask_bytes
from vramplan.estimator.gemma3n_ops import kv_graph_bytes, model_input_saved, output_walk, stack_dtype
from vramplan.estimator.layer_extras import output_norm_freed, shared_kv_held, stored_kv_graphs
from vramplan.estimator.layer_ops import norm
from vramplan.estimator.layer_walk import decoder_layer
from vramplan.estimator.lora_kernel_ops import fused_lora
from vramplan.estimator.llama4_ops import backward_workspace
from vramplan.estimator.params import lora_params_per_linear
from vramplan.estimator.walk import BYTES, Walk, WalkSettings, layer_specs, masked_layers, walk_settings
from vramplan.spec import ModelSpec, TrainSpec
from vramplan.spec.family_traits import EMBEDDING_SCALED_OUTSIDE, FP32_ROPE, HYBRID_LINEAR_ATTENTION, model_dropout
from vramplan.spec.family_traits import INPUT_GRADS_UNDER_CHECKPOINTING, NOPE_ON_FULL_LAYERS, OUTPUT_NORM, SINK_FAMILIES
from vramplan.spec.gemma3n import residual_streams


class _LayerWalk(NamedTuple):
    """One decoder layer's walk. Per token (complex: the imaginary part grows with seq) unless noted."""

    saved: complex  # what autograd saves
    per_layer_saved: int  # saved bytes per layer that do not scale with tokens
    live: tuple[tuple[complex, int], ...]  # (per token, per layer) alive at each op: saved so far + operands
    live_recomputed: tuple[tuple[complex, int], ...]  # `live` up to where a checkpointed recompute stops
    referenced: tuple[tuple[complex, int], ...]  # (per token, per layer) referenced at each op, autograd aside
    down_saved: complex  # what the MLP's down projection saved
    ctx: complex  # kept through `ctx.tensors` (int8 matmul inputs), alive even under checkpointing
    ctx_only: complex  # the part of `ctx` no op saves through autograd
    input_saved: complex  # the layer's input itself, when an op saves it (an fp32 residual's RMSNorm: no cast)
    recompute_tail: complex  # gradients alive when the layer's recompute starts, beyond the incoming one (DoRA)
    mixer_backward: complex  # a token mixer's backward peak (Qwen3.5's DeltaNet): the layer's saves still alive
    mixer_workspace: complex  # and the gradients and temporaries then


def _undominated(entries: list[tuple[complex, int]]) -> tuple[tuple[complex, int], ...]:
    """The entries that can be the largest for some T, seq > 0: drop any that another matches or exceeds in
    all three coefficients (per token, per token·seq, per layer). Only speeds up the max taken per estimate."""

    def key(entry: tuple[complex, int]) -> tuple[float, float, int]:
        return (entry[0].real, entry[0].imag, entry[1])

    keys = sorted({key(entry) for entry in entries}, reverse=True)
    kept: list[tuple[float, float, int]] = []
    for k in keys:
        if not any(other[0] >= k[0] and other[1] >= k[1] and other[2] >= k[2] for other in kept):
            kept.append(k)
    return tuple((complex(per_token, per_token_seq), per_layer) for per_token, per_token_seq, per_layer in kept)


@functools.lru_cache(maxsize=4096)
def _walk_layer(
    m: ModelSpec, settings: WalkSettings, trainable: bool, input_requires_grad: bool, residual_dtype: str
) -> _LayerWalk:
    walk = Walk()
    x = walk.new(m.hidden_size * residual_streams(m), residual_dtype, input_requires_grad)  # Gemma 3n: n states
    decoder_layer(walk, settings, m, x, trainable)
    return _LayerWalk(
        walk.saved_bytes,
        walk.per_layer_saved,
        _undominated(walk.live),
        _undominated(walk.live[: walk.recompute_stop]),
        _undominated(walk.referenced),
        walk.down_saved,
        sum(walk.ctx_saved.values()),
        walk.ctx_only,
        walk.saved.get(x.id, 0),
        walk.recompute_tail,
        walk.mixer_backward,
        walk.mixer_workspace,
    )


@functools.lru_cache(maxsize=4096)
def _walk_final(m: ModelSpec, settings: WalkSettings, residual_dtype: str, trainable: bool) -> tuple[complex, complex]:
    """(saved bytes, output bytes) per token of the final norm (Gemma 3n: with the AltUp stack folded back)."""
    if m.model_type == "gemma3n_text":
        return output_walk(m, settings, residual_dtype, trainable, settings.norm_dtype)
    walk = Walk()
    out = norm(walk, settings, m, walk.new(m.hidden_size, residual_dtype, True), trainable)
    return walk.saved_bytes, out.nbytes


def residual_dtype_of(t: TrainSpec) -> str:
    """The residual stream's dtype: fp32 after kbit prep or with fp32 weights, else the load dtype."""
    return "fp32" if (t.kbit_prep or t.dtype == "fp32") else t.dtype


def adapted_parameters(m: ModelSpec, t: TrainSpec) -> tuple[frozenset[str], ...]:
    """Each decoder layer's parameters (ParamSpec names) adapted through `target_parameters`, bottom layer
    first: walked for gpt-oss (gpt_oss_ops.gpt_oss_moe) and Qwen3.5-MoE (moe_ops.moe_block); other families'
    are counted, not walked."""
    layers = m.num_hidden_layers
    if not (t.uses_lora and t.target_parameters and m.model_type in ("gpt_oss", "qwen3_5_moe_text")):
        return (frozenset(),) * layers
    per_layer: list[set[str]] = [set() for _ in range(layers)]
    for path, _, instances in t.target_parameters:
        name = next((p.name for p in m.moe_params if path.endswith(f".{p.name}")), None)
        if name is None:
            continue
        # every layer's, or the one named (`model.layers.7.mlp.experts.gate_up_proj`)
        digits = [int(part) for part in path.split(".") if part.isdigit()][:1]
        for index in range(layers) if instances == layers else digits:
            per_layer[index].add(name)
    return tuple(frozenset(names) for names in per_layer)


def layer_kinds(m: ModelSpec, t: TrainSpec) -> tuple[tuple[bool, bool, bool, frozenset[str], str], ...]:
    """Each decoder layer's (trainable, input requires grad, masked, parameters adapted through
    `target_parameters`, token mixer), bottom layer first; the mixer is a hybrid's layer type (Qwen3.5:
    linear_attention / full_attention), "" for the other families."""
    layers = m.num_hidden_layers
    embed_trainable = t.method == "full"
    # kbit prep + checkpointing calls enable_input_require_grads (peft/utils/other.py): the embedding output
    # requires grad, so layer 0 saves like the others.
    # prompt learning concatenates trainable virtual-token embeddings to the inputs: every layer's input
    # requires grad (peft/peft_model.py PeftModelForCausalLM.forward, `torch.cat((prompts, inputs_embeds))`)
    embedding_output_requires_grad = embed_trainable or (t.kbit_prep and t.grad_ckpt) or t.peft.prompt_learning
    if m.model_type in INPUT_GRADS_UNDER_CHECKPOINTING and t.grad_ckpt and not t.stack.reentrant_checkpointing:
        # transformers 5.24 `gradient_checkpointing_enable` calls enable_input_require_grads for every model whose
        # main input is input_ids (modeling_utils.py), PEFT or not: traced on Qwen3.5, whose layer-0 DeltaNet
        # backward then runs; and on Ministral, whose sliding bottom layer's recompute then saves more (the other
        # families keep the rule above until re-measured)
        embedding_output_requires_grad = True
    first_trainable = (
        layers - t.freeze_trainable_layers if t.method == "freeze" else (0 if t.method == "full" else layers)
    )
    # layer 0 may see an input that does not require grad; later layers always see one that does
    # (the LoRA branches or trainable weights of earlier layers); freeze: frozen layers below the
    # trainable ones, and the first trainable one's input, see no grad at all.
    kinds = []
    masked = masked_layers(m, t)
    adapted = adapted_parameters(m, t)
    for index in range(layers):
        if t.method == "freeze":
            input_requires_grad = index > first_trainable
        else:
            input_requires_grad = embedding_output_requires_grad if index == 0 else True
        mixer = m.layer_types[index] if m.model_type in HYBRID_LINEAR_ATTENTION else ""
        if m.model_type in NOPE_ON_FULL_LAYERS and m.layer_types[index] == "full_attention":
            mixer = "nope"  # Cohere 2's full-attention layers: no rotary embedding (layer_ops._attention_block)
        kind = (index >= first_trainable, input_requires_grad, masked[index], adapted[index], mixer)
        kinds.append(kind)
    return tuple(kinds)


def activation_bytes(m: ModelSpec, t: TrainSpec) -> ActivationBytes:
    """What one step's forward saves and the workspace around it (ActivationBytes). For a model with dense-MLP
    bottom layers (DeepSeek-V3) the one-layer figures are the largest (routed) layer's, and `dense_bottom` holds
    the same figures for its dense layers (the bottom layer's backward, with the most gradients alive: peak.py)."""
    result = _activation_bytes(m, t, dense_only=False)
    if m.dense_mlp_layers and m.moe_params:
        return result._replace(dense_bottom=_activation_bytes(m, t, dense_only=True))
    return result


def _activation_bytes(m: ModelSpec, t: TrainSpec, dense_only: bool) -> ActivationBytes:
    if m.walk_basis is not None:  # a generic family: walked on its hand-modelled stand-in (spec/generic.py)
        targets = {role for name, role in m.walk_roles if name in t.lora_target}
        m, t = m.walk_basis, replace(t, lora_target=tuple(sorted(targets)))
    settings = walk_settings(m, t)
    autocast_dtype = settings.autocast_dtype
    layers = m.num_hidden_layers
    residual_dtype = stack_dtype(m, t, residual_dtype_of(t))  # Gemma 3n: its AltUp stack's
    # (the layer's ModelSpec, layer_kinds' tuple) -> how many layers
    kinds: dict[tuple[ModelSpec, tuple[bool, bool, bool, frozenset[str], str]], int] = {}
    kinds_of = layer_kinds(m, t)
    for key in zip(layer_specs(m), kinds_of, strict=True):
        kinds[key] = kinds.get(key, 0) + 1
    tokens, seq = t.tokens, t.seq

    def at(per_token: complex) -> int:
        """Bytes of a per-token walk term at this batch and seq (the imaginary part grows with seq)."""
        return round(tokens * (per_token.real + per_token.imag * seq))

    walks = {
        (spec, kind): _walk_layer(
            spec,
            settings._replace(masked=kind[2], parameter_adapters=kind[3], mixer=kind[4]),
            kind[0],
            kind[1],
            residual_dtype,
        )
        for spec, kind in kinds
    }
    hidden = tokens * m.hidden_size * BYTES[residual_dtype] * residual_streams(m)  # the layers' input and output
    # transformers < 5.0 checkpoints reentrantly (spec/stack.py): the layer's forward runs under no_grad, so
    # nothing an op keeps in ctx outlives it; its recompute holds them like any other activation
    reentrant = t.stack.reentrant_checkpointing
    if t.grad_ckpt:
        # non-reentrant checkpoint keeps each layer's input hidden state (and whatever ops keep outside
        # autograd's saved tensors: bitsandbytes int8 matmul inputs)
        kept = 0 if reentrant else sum(count * at(walks[kind].ctx) for kind, count in kinds.items())
        saved = layers * hidden + kept + shared_kv_held(m, t, tokens, residual_dtype_of(t))
    else:
        saved = sum(count * (at(walks[kind].saved) + walks[kind].per_layer_saved) for kind, count in kinds.items())
    # OLMo's cos / sin stay fp32, (1, S, head_dim) each: made once per forward, saved by every layer's RoPE (held
    # as every checkpointed layer's argument), alive until the bottom layer's backward is done
    rope_tables = 2 * seq * m.head_dim * 4 if m.model_type in FP32_ROPE else 0
    saved += rope_tables
    # Granite, Falcon-H1: gradient_checkpointing_enable hooks the embedding (enable_input_require_grads, 5.25
    # modeling_utils.py): its output becomes a leaf that requires grad, held by its AccumulateGrad node through
    # backward, while `inputs_embeds * embedding_multiplier` is what the layers read (on Llama the two are one)
    embedding_leaf = hidden if m.model_type in EMBEDDING_SCALED_OUTSIDE and t.grad_ckpt and t.method != "full" else 0
    embedding_leaf += at(model_input_saved(m, t, settings, t.method == "full"))  # Gemma 3n's AltUp stack, PLE
    saved += embedding_leaf
    if settings.masked:
        # the model's bool sliding-window mask (B·1·S·S), built once and passed to every layer (and recompute)
        saved += model_mask_bytes(m, settings, t.batch, seq)
    if model_dropout(m.model_type, m.config, "embedding_dropout") > 0 and layer_kinds(m, t)[0][1]:
        saved += tokens * m.hidden_size  # StarCoder2's embedding dropout: its bool mask, when layer 0 needs grads
    if t.grad_ckpt and settings.attn == "eager" and m.model_type in SINK_FAMILIES:
        # gpt-oss's eager masks, additive B·1·S·S in the embeddings' dtype, one per layer type (full, sliding:
        # modeling_gpt_oss.py `causal_mask_mapping`), held by the checkpointed layers' arguments through backward
        saved += len(set(m.layer_types) or {"full"}) * t.batch * seq * seq * BYTES[residual_dtype]
    # the final norm, outside the checkpointed layers; its input requires grad whenever anything trains
    final_saved, final_out = _walk_final(m, settings, residual_dtype, t.method == "full")
    saved += at(final_saved)
    below_bottom = rope_tables + embedding_leaf + stored_kv_graphs(m, t, settings, residual_dtype, kinds_of)
    below_bottom += kv_graph_bytes(m, t, tokens, settings, residual_dtype, kinds_of)  # Gemma 3n's (gemma3n_ops)
    for index in m.dense_mlp_layers if m.moe_params else ():
        key = (layer_specs(m)[index], layer_kinds(m, t)[index])
        lw = walks[key]
        below_bottom += hidden if t.grad_ckpt else at(lw.saved) + lw.per_layer_saved
    layer_items = [(key, lw) for key, lw in walks.items() if not dense_only or key[0].mlp != "moe"]
    layer_walks = [lw for _, lw in layer_items]
    layer = max(at(lw.saved) + lw.per_layer_saved for lw in layer_walks)
    down_saved = max(at(lw.down_saved) for lw in layer_walks)
    layer_ctx = 0 if (reentrant and t.grad_ckpt) else max(at(lw.ctx_only) for lw in layer_walks)
    layer_input_saved = max(at(lw.input_saved) for lw in layer_walks)
    recompute_tail = max(at(lw.recompute_tail) for lw in layer_walks)
    mixer_saved = mixer_workspace = mixer_above_saved = 0
    mixer_walks = [lw for (_, kind), lw in layer_items if kind[4] == "linear_attention"]
    if mixer_walks:
        mixer_saved = max(at(lw.mixer_backward) for lw in mixer_walks)
        mixer_workspace = max(at(lw.mixer_workspace) for lw in mixer_walks)
        keys_in_order = list(zip(layer_specs(m), layer_kinds(m, t), strict=True))
        top = max(i for i, (_, kind) in enumerate(keys_in_order) if kind[4] == "linear_attention")
        above = keys_in_order[top + 1 :]
        if not t.grad_ckpt:
            mixer_above_saved = sum(at(walks[key].saved) + walks[key].per_layer_saved for key in above)
        else:
            mixer_above_saved = len(above) * hidden
    transient = max((at(per_token) + per_layer for lw in layer_walks for per_token, per_layer in lw.live), default=0)
    if mixer_above_saved and not t.grad_ckpt:
        # the topmost linear-attention layer runs before the layers above it have saved anything: its forward
        # rises above the top layer's saved set by less than its own excess (peak.py adds every layer's saves)
        transient = max(
            max((at(pt) + pl for (_, kind), lw in layer_items if kind[4] != "linear_attention" for pt, pl in lw.live),
                default=0),
            max(at(pt) + pl for lw in mixer_walks for pt, pl in lw.live) - mixer_above_saved,
        )  # fmt: skip
    recompute_transient = max(
        (at(per_token) + per_layer for lw in layer_walks for per_token, per_layer in lw.live_recomputed), default=0
    )
    referenced = max(
        (at(per_token) + per_layer for lw in layer_walks for per_token, per_layer in lw.referenced), default=0
    )
    layer_copies = layer_cached = head_copy = 0
    n_copy_layers = t.freeze_trainable_layers if t.method == "freeze" else layers
    if autocast_dtype:
        autocast_bytes = BYTES[autocast_dtype]
        if settings.lora_targets and settings.adapter_dtype != autocast_dtype:
            # autocast casts each fp32 adapter weight to the autocast dtype; mm saves the copy (its input needs
            # a gradient), so a low-precision copy of every adapter lives from forward until its backward
            # (a hybrid's layers hold different linears: the mean layer's, `count` / layers; a model with dense
            # bottom layers counts one layer holding both kinds' linears)
            layer_copies += (
                sum(
                    lora_params_per_linear(li, t.lora_rank, False) * autocast_bytes * (li.count or layers)
                    for li in m.linears
                    if li.name in settings.lora_targets
                )
                // layers
            )
            layer_cached = layer_copies
        # unquantized linear weights stored in another dtype (fp32 master weights, a frozen fp32 base, Falcon's
        # FalconLinear that bitsandbytes leaves, fp32 after kbit prep): mm saves the cast copy whenever its input
        # needs a gradient; FalconLinear casts `weight.T`, a view, which autocast's cache never keeps
        kept = [li for li in m.linears if not (settings.quantized and li.quantizable)]
        if kept and (settings.norm_dtype if settings.quantized else t.dtype) != autocast_dtype:
            base_copy = sum(li.weight_params * (li.count or layers) for li in kept) // layers * autocast_bytes
            layer_copies += base_copy
            if t.method in ("full", "freeze") and m.model_type != "falcon":
                layer_cached += base_copy
        # autocast's cast cache keeps the copies of leaf tensors that require grad (adapters, trainable weights)
        # until the autocast region exits, i.e. through the whole forward even under checkpointing
        # (aten/src/ATen/autocast_mode.cpp `cached_cast`)
        head_dtype = "fp32" if t.kbit_prep else t.dtype
        if head_dtype != autocast_dtype:
            # lm_head (the embedding matrix when tied): kbit prep leaves it fp32, so under autocast its cast
            # copy (vocab·hidden) is saved for the input gradient until lm_head's backward
            head_copy = m.vocab_size * m.hidden_size * autocast_bytes
    # MLP intermediates: the autocast dtype, except on a bnb base whose Linear4bit returns the input's dtype
    # (fp32 after kbit prep) and the LoRA sum promotes to it
    mlp_elem_bytes = BYTES[residual_dtype if settings.quantized else (autocast_dtype or residual_dtype)]
    # StarCoder2's ungated MLP backward (c_proj's input gradient from the base and the LoRA branch, gelu's
    # backward output) holds 3·T·I, traced under checkpointing (tests/oracle FAMILY_GRID); the parallel-block
    # plain MLPs (gpt_neox, bloom, phi) keep 2, not held to a checkpointed trace
    plain = 3 if m.model_type == "starcoder2" else 2
    mlp_intermediates = {"gated": 3, "gated_fused": 3, "plain": plain}.get(m.mlp, 3 * max(m.num_experts_per_tok, 1))
    if settings.liger and m.mlp == "gated":
        mlp_intermediates = 1  # Liger's SwiGLU backward writes both operands' gradients into the saved a and b
    if m.mlp == "gated" and "mlp" in fused_lora(settings, {li.name for li in m.linears}):
        # axolotl's LoRA_MLP backward: grad of h (T·I), then swiglu_backward writes h, d_gate, d_up in place
        mlp_intermediates = 1

    workspace = mlp_intermediates * tokens * m.intermediate_size * mlp_elem_bytes + hidden
    if m.dense_mlp_layers:  # DeepSeek-V3's dense bottom layers; the shared experts' MLP in the routed ones
        widths = (m.dense_intermediate_size, m.shared_intermediate_size)
        workspace = 3 * tokens * max(widths) * mlp_elem_bytes + hidden
    if m.mlp == "moe":
        # the experts' tensors are in the expert weights' dtype (grouped_mm casts to it); the MoE backward's
        # largest moment is either the first node, the inverse-permutation index (the S·H gradient of the
        # weighted output and index_put's S·H zeros, with every saved tensor still alive: `down_saved` is 0),
        # or the grouped matmuls' 3·S·I (layer_ops._moe)
        pairs = tokens * m.num_experts_per_tok
        expert_bytes = BYTES[settings.norm_dtype]
        moe_workspace = hidden + pairs * expert_bytes * max(3 * m.intermediate_size, 2 * m.hidden_size)
        if m.shared_intermediate_size:  # the shared MLP's input gradient, waiting for the routed path's
            moe_workspace += tokens * m.hidden_size * BYTES[autocast_dtype or residual_dtype]
        if autocast_dtype and expert_bytes < 4:
            # CUDA autocast runs the final `sum` over k in fp32: its T·H fp32 gradient is alive there too
            moe_workspace += tokens * m.hidden_size * 4
        by_parameters = frozenset().union(*adapted_parameters(m, t))  # target_parameters (Qwen3.5-MoE)
        adapted = [
            p.params for p in m.moe_params
            if len(p.shape) == 3 and (settings.lora_targets & set(p.peft_names) or p.name in by_parameters)
        ]  # fmt: skip
        if adapted:
            # LoRA on the experts (PEFT ParamWrapper): the grouped matmul's backward makes the merged weight's
            # gradient (E·out·in, the compute dtype); the down projection's first, and by the time gate_up's
            # (twice the size) exists the merged down weight it saved is freed: one down-sized tensor net,
            # beside the gradient of the down projection's input (S·I), the fp32 sum's and the shared MLP's
            # input gradients and the incoming one (traced at full size: DeepSeek-V3, 5 layers, LoRA
            # all-linear on fake tensors, -44 MB of 7.6 GB; on the tiny grid this moment is not the peak)
            compute = BYTES[autocast_dtype or settings.norm_dtype]
            around = (
                pairs * m.intermediate_size * expert_bytes
                + moe_workspace
                - pairs * expert_bytes * max(3 * m.intermediate_size, 2 * m.hidden_size)
            )
            moe_workspace = max(moe_workspace, min(adapted) * compute + around)
        workspace = max(workspace, moe_workspace) if m.dense_mlp_layers or m.shared_intermediate_size else moe_workspace
        if m.model_type == "llama4_text":  # every expert sees every token (estimator/llama4_ops.py)
            compute_bytes = BYTES[autocast_dtype or settings.norm_dtype]
            workspace = max(workspace, backward_workspace(m, tokens, compute_bytes, hidden))
    if dense_only:
        workspace = 3 * tokens * m.dense_intermediate_size * mlp_elem_bytes + hidden
    largest_target = max((li.weight_params for li in m.linears if li.name in settings.lora_targets), default=0)
    return ActivationBytes(
        saved=saved,
        layer=layer,
        layer_transient=transient,
        recompute_transient=recompute_transient,
        layer_refs=referenced,
        layer_copies=layer_copies,
        layer_cached=layer_cached,
        copy_layers=n_copy_layers,
        head_copy=head_copy,
        hidden_bytes=hidden,
        backward_workspace=workspace,
        dora_backward=BYTES[autocast_dtype or settings.adapter_dtype] * largest_target
        if t.dora and settings.lora_targets
        else 0,
        down_saved=down_saved,
        layer_ctx=layer_ctx,
        layer_input_saved=layer_input_saved,
        recompute_tail=recompute_tail,
        mixer_saved=mixer_saved,
        mixer_workspace=mixer_workspace,
        mixer_above_saved=mixer_above_saved,
        final_saved=at(final_saved),
        hidden_grad_bytes=tokens * m.hidden_size * BYTES[autocast_dtype or residual_dtype],
        final_hidden_bytes=at(final_out),
        below_bottom=below_bottom,
        output_norm_backward=hidden + 5 * tokens * m.hidden_size * 4 if m.model_type in OUTPUT_NORM else 0,
        output_norm_freed=output_norm_freed(m, t, tokens),
        forward_cache_bytes=(
            2 * layers * tokens * m.num_key_value_heads * m.head_dim * BYTES[autocast_dtype or t.dtype]
            if settings.repeat_kv
            and settings.attn == "sdpa"
            and not t.grad_ckpt
            and not settings.masked
            and m.num_key_value_heads != m.num_attention_heads
            else 0
        ),
    )
