"""A Gemma 3n decoder layer op by op, as the symbolic walk (`walk.py`) sees it (transformers 5.25
models/gemma3n/modeling_gemma3n.py `Gemma3nTextDecoderLayer`, `Gemma3nTextAltUp`, `Gemma3nTextLaurelBlock`,
`Gemma3nTextMLP`, `Gemma3nTextAttention`, `Gemma3nRMSNorm`).

The layer's input and output are the AltUp stack: `altup_num_inputs` (n) hidden states, n·T·H (the walk's `x`).
Each layer walks its own shapes (`walk.layer_specs`: its linears, its MLP width, whether its MLP is sparse).
- `altup.predict`: the router (`router_norm`, `* H^-1`, `modality_router`, fp32 tanh) on the active state
  (a view of the stack: an fp32 stack is saved whole by the norm), `prediction_coefs`, then
  `matmul(stack.permute(1, 2, 3, 0), coefs)`: the bmm saves the stack (its view; under autocast of an fp32
  stack, the bf16 copy) and the coefficients; `+= stack` in place, `.contiguous()` (a new n·T·H), `.type_as`;
- the attention on `input_layernorm(predictions[0])` as Gemma 4's (q / k norms with weight, v_norm without,
  scaling 1.0; a KV-shared layer attends over the storing layer's keys and values, saved there already);
- Laurel beside it: `linear_left`, `linear_right`, `post_laurel_norm`, `+ normed input`;
- `(active + post_attention_layernorm(attn) + laurel) / sqrt(2)`, the MLP between its two norms (with activation
  sparsity: gate's mean and std (which saves gate_proj's output), `relu(gate - cutoff)` saving its output, GELU
  on it), the residual add;
- `altup.correct`: the router again on the layer's result, `innovation.repeat(n)` (n·T·H, saved by the product
  with the coefficients: `correction_coefs` runs as `F.linear` on its clamped weight, so a LoRA on it is never
  called), `+= predictions` in place;
- `corrected[0].clone() * correct_output_scale`, `per_layer_input_gate`, GELU, `* per_layer_input` (a slice of
  the model's T·L·P per-layer inputs: saves both operands), `per_layer_projection`, `post_per_layer_input_norm`,
  `corrected[1:] +=` it in place.
"""

from __future__ import annotations

from vramplan.estimator.layer_ops import _attention, _rope
from vramplan.estimator.linear_ops import linear
from vramplan.estimator.mlp_ops import _down
from vramplan.estimator.walk import SymbolicTensor, Walk, WalkSettings, promote
from vramplan.spec import ModelSpec
from vramplan.spec.gemma3n import SPARSE_ACT, residual_streams


def g3n_norm(
    walk: Walk,
    x: SymbolicTensor,
    features: int,
    trainable: bool,
    with_scale: bool = True,
    base: SymbolicTensor | None = None,
) -> SymbolicTensor:
    """Gemma3nRMSNorm over the last `features` of x: `x.float()`, `x * torch.pow(x.pow(2).mean(-1) + eps, -0.5)`
    (pow saves its input, the product both operands: the fp32 input and two fp32 row vectors), `* weight.float()`
    (a trainable weight saves the fp32 normed tensor), `.type_as(x)`. `base`: the tensor x is a view of (the
    AltUp stack): an fp32 x is that view, and saving it keeps all of `base`."""
    rows = x.numel / features
    if x.dtype == "fp32":
        x_fp32 = base if base is not None else x
    else:
        x_fp32 = walk.new(x.numel, "fp32", x.requires_grad)
    mean_eps = walk.new(rows, "fp32", x.requires_grad)
    inverse = walk.new(rows, "fp32", x.requires_grad)
    normed = walk.new(rows * features, "fp32", x.requires_grad)
    if x.requires_grad:
        walk.save(x_fp32, mean_eps, inverse)
    operands = (x_fp32,) if x_fp32 is not base else ()
    if not with_scale:
        out = walk.cast(normed, x.dtype)
        walk.transient(x, *operands, normed, out)
        return out
    product = walk.new(rows * features, "fp32", x.requires_grad or trainable)
    if trainable:
        walk.save(normed)
    out = walk.cast(product, x.dtype)
    walk.transient(x, *operands, normed, product, out)
    return out


def decoder_layer(
    walk: Walk, settings: WalkSettings, m: ModelSpec, x: SymbolicTensor, trainable: bool, kv_graph: list | None = None
) -> SymbolicTensor:
    """One Gemma 3n decoder layer of `m` (this layer's spec, `walk.layer_specs`) on the AltUp stack `x`;
    `kv_graph` collects what the graph behind its keys and values saves (`kv_graph_bytes`)."""
    T, hidden, n = settings.T, m.hidden_size, residual_streams(m)
    residual_dtype = x.dtype
    names = {li.name for li in m.linears}
    if "altup_projections.0" in settings.lora_targets:  # the bottom layer's stack: adapted projections' outputs
        x = x._replace(requires_grad=True)
    # the model's per-layer inputs require grad when their projection (or, in full, the model) trains
    per_layer_grad = trainable or "per_layer_model_projection" in settings.lora_targets

    def project(inp: SymbolicTensor, name: str) -> SymbolicTensor:
        spec = next(li for li in m.linears if li.name == name)  # (AltUp's coefficients stay unquantized)
        return linear(walk, settings, inp, name, spec.out_features, trainable, settings.quantized and spec.quantizable)

    def norm(tensor: SymbolicTensor, features: int = 0, with_scale: bool = True, base=None) -> SymbolicTensor:
        return g3n_norm(walk, tensor, features or hidden, trainable, with_scale, base)

    def view(of: SymbolicTensor) -> SymbolicTensor:  # stack[0]: T·H of the stack's storage, no new bytes
        return SymbolicTensor(of.id, of.nbytes / n, of.dtype, of.requires_grad, of.numel / n)

    # ---- altup.predict
    walk.pinned[x.id] = x.nbytes
    coefs = project(_modalities(walk, settings, m, norm(view(x), base=x), project, n), "prediction_coefs")
    predictions = _predict(walk, settings, x, coefs, n)
    del walk.pinned[x.id]
    walk.pinned[predictions.id] = predictions.nbytes  # until `correct` has added it
    normed_input = norm(view(predictions), base=predictions)
    upstream = walk.saved_bytes  # saved so far: all of it lies behind the keys and values
    # ---- Laurel beside the attention
    left = project(normed_input, "linear_left")
    laurel = norm(project(left, "linear_right"))
    laurel_out = walk.new(T * hidden, promote(normed_input.dtype, laurel.dtype), True)
    walk.transient(laurel, laurel_out)
    walk.pinned[laurel_out.id] = laurel_out.nbytes
    # ---- attention
    attention_out = _attention_block(walk, settings, m, normed_input, project, norm, names, residual_dtype, kv_graph)
    if kv_graph is not None:  # (laurel's and q's saves lie beside them, not behind: kv_graph holds k / v's own)
        kv_graph[0] += upstream + (0 if x.id in walk.saved else x.nbytes)
    attention_out = norm(attention_out)
    gated = walk.new(T * hidden, promote(residual_dtype, attention_out.dtype), True)
    walk.transient(attention_out, gated)
    summed = walk.new(T * hidden, promote(gated.dtype, laurel_out.dtype), True)
    walk.transient(gated, summed)
    del walk.pinned[laurel_out.id]
    attn_laurel = walk.new(T * hidden, summed.dtype, True)  # / sqrt(2)
    walk.transient(summed, attn_laurel)
    walk.pinned[attn_laurel.id] = attn_laurel.nbytes  # the residual, alive through the MLP
    # ---- MLP
    walk.mark("mlp")
    mlp_out = norm(_mlp(walk, m, norm(attn_laurel), project))
    del walk.pinned[attn_laurel.id]
    activated = walk.new(T * hidden, promote(attn_laurel.dtype, mlp_out.dtype), True)
    walk.transient(mlp_out, activated)
    # ---- altup.correct
    walk.pinned[activated.id] = activated.nbytes
    modalities = _modalities(walk, settings, m, norm(activated), project, n)
    del walk.pinned[activated.id]
    corrected = _correct(walk, settings, activated, predictions, modalities, n, trainable)
    del walk.pinned[predictions.id]
    walk.pinned[corrected.id] = corrected.nbytes
    # ---- the per-layer input, added to the other states in place
    first = walk.new(T * hidden, corrected.dtype, True)  # corrected[0].clone()
    walk.transient(first)
    if m.config.get("altup_correct_scale", True):
        scaled = walk.new(T * hidden, promote(first.dtype, settings.norm_dtype), True)  # * correct_output_scale
        if trainable:
            walk.save(first)
        walk.transient(first, scaled)
        first = walk.cast(scaled, corrected.dtype)
    gate = project(first, "per_layer_input_gate")
    activated_gate = walk.new(gate.numel, gate.dtype, True)
    walk.save(gate)
    walk.transient(gate, activated_gate)
    product = walk.new(gate.numel, promote(gate.dtype, residual_dtype), True)  # * per_layer_input
    if per_layer_grad:  # (the per-layer input's slice it saves is the model's, held whole anyway)
        walk.save(activated_gate)
    walk.transient(activated_gate, product)
    added = norm(project(product, "per_layer_projection"))
    walk.transient(added)
    del walk.pinned[corrected.id]
    return corrected


def _modalities(walk: Walk, settings: WalkSettings, m: ModelSpec, normed, project, n: int) -> SymbolicTensor:
    """`compute_router_modalities` after its norm: `* router_input_scale`, `modality_router`, fp32 tanh (saves
    its output), `.type_as(x)`."""
    T = settings.T
    scaled = walk.new(normed.numel, normed.dtype, normed.requires_grad)
    walk.transient(normed, scaled)
    routed = project(scaled, "modality_router")
    routed_fp32 = walk.cast(routed, "fp32")
    tanh = walk.new(T * n, "fp32", routed.requires_grad)
    if routed.requires_grad:
        walk.save(tanh)
    out = walk.cast(tanh, normed.dtype)
    walk.transient(routed, routed_fp32, tanh, out)
    return out


def _predict(walk: Walk, settings: WalkSettings, x: SymbolicTensor, coefs: SymbolicTensor, n: int) -> SymbolicTensor:
    """`matmul(stack.permute(1, 2, 3, 0), coefs)` (bmm on views: saves the stack, or its autocast copy, and the
    coefficients), `+= stack` in place, `.contiguous()`, `.type_as(stack)`."""
    compute = settings.autocast_dtype or x.dtype
    stack = walk.cast(x, compute)
    coefs_cast = walk.cast(coefs, compute)
    requires_grad = x.requires_grad or coefs.requires_grad
    out = walk.new(x.numel, compute, requires_grad)
    if coefs.requires_grad:  # bmm saves each operand the other's gradient needs
        walk.save(stack)
    if x.requires_grad:
        walk.save(coefs_cast)
    walk.transient(stack, coefs, out)
    contiguous = walk.new(out.numel, compute, requires_grad)
    walk.transient(out, contiguous)
    predictions = walk.cast(contiguous, x.dtype)
    walk.transient(contiguous, predictions)
    return predictions


def _correct(walk: Walk, settings, activated, predictions, modalities, n: int, trainable: bool) -> SymbolicTensor:
    """`innovation = activated - predictions[0]`, `.repeat(n)`, `F.linear(modalities, clamped weight) + 1`,
    `innovation * coefs` (saves both), `+= predictions` in place, `.type_as(activated)`."""
    T = settings.T
    innovation = walk.new(activated.numel, promote(activated.dtype, predictions.dtype), True)
    walk.transient(activated, innovation)
    repeated = walk.new(n * activated.numel, innovation.dtype, True)
    walk.transient(innovation, repeated)
    walk.pinned[repeated.id] = repeated.nbytes
    coefs_in = walk.cast(modalities, settings.autocast_dtype or modalities.dtype)
    if trainable:  # the clamped weight trains only with the model (a LoRA on correction_coefs is not called)
        walk.save(coefs_in)
    coefs = walk.new(T * n, coefs_in.dtype, modalities.requires_grad or trainable)
    coefs_plus = walk.new(T * n, coefs.dtype, coefs.requires_grad)
    walk.transient(coefs_in, coefs, coefs_plus)
    del walk.pinned[repeated.id]
    corrected = walk.new(repeated.numel, promote(repeated.dtype, coefs_plus.dtype), True)
    walk.save(repeated, coefs_plus)
    walk.transient(repeated, coefs_plus, corrected)
    out = walk.cast(corrected, activated.dtype)
    walk.transient(corrected, out)
    return out


def _attention_block(walk, settings, m, normed_input, project, norm, names, residual_dtype, kv_graph=None):
    """q / k / v projections, q / k norms (with weight) and v_norm (without), RoPE, attention, o_proj."""
    q = _rope(walk, norm(project(normed_input, "q_proj"), m.head_dim), residual_dtype)
    if "k_proj" in names:
        before = walk.saved_bytes
        k = _rope(walk, norm(project(normed_input, "k_proj"), m.head_dim), residual_dtype)
        v = norm(project(normed_input, "v_proj"), m.head_dim, with_scale=False)
        if kv_graph is not None:  # k and v themselves and what their projections and norms saved
            kv_graph[0] += walk.saved_bytes - before + k.nbytes + v.nbytes
    else:  # KV-shared: the storing layer's keys and values, saved by its own attention already (no bytes here)
        k = walk.new(0, q.dtype, False)
        v = walk.new(0, q.dtype, False)
    return project(_attention(walk, settings, m, q, k, v, None), "o_proj")


def _mlp(walk: Walk, m: ModelSpec, x: SymbolicTensor, project) -> SymbolicTensor:
    """`act_fn(gate_proj(x)) * up_proj(x)`, then down_proj; a sparse layer first runs the gaussian top-k on the
    gate: mean and std over the features (std saves its input), the cutoff, `relu(gate - cutoff)` (saves its
    output, which the GELU saves too)."""
    gate = project(x, "gate_proj")
    width = gate.numel
    if m.hidden_act.startswith(SPARSE_ACT):
        rows = walk.new(width / next(li.out_features for li in m.linears if li.name == "gate_proj"), gate.dtype, True)
        walk.save(gate, rows)  # std's input and output
        walk.transient(gate, rows)
        shifted = walk.new(width, gate.dtype, True)
        walk.transient(gate, shifted)
        relu = walk.new(width, gate.dtype, True)
        walk.transient(shifted, relu)
        gate = relu
    activated = walk.new(width, gate.dtype, gate.requires_grad)
    if gate.requires_grad:
        walk.save(gate)
    walk.transient(gate, activated)
    walk.pinned[activated.id] = activated.nbytes
    up = project(x, "up_proj")
    del walk.pinned[activated.id]
    product = walk.new(width, promote(activated.dtype, up.dtype), gate.requires_grad or up.requires_grad)
    if product.requires_grad:
        walk.save(activated, up)
    walk.transient(activated, up, product)
    return _down(walk, project, product, "down_proj")


def stack_dtype(m: ModelSpec, t, residual_dtype: str) -> str:
    """The AltUp stack's dtype: the model scales each projected state by `target_magnitude`, a `** 2` (pow: fp32
    under CUDA autocast) of the embeddings, so under autocast the stack, every layer's output and the final norm's
    input are fp32 (`torch.stack` promotes); without autocast the weights' dtype (modeling_gemma3n.py
    `Gemma3nTextModel.forward`, 5.25). Other families: `residual_dtype`."""
    if m.model_type != "gemma3n_text" or t.mixed_precision == "no":
        return residual_dtype
    return "fp32"


def _magnitude_scaled(walk: Walk, settings: WalkSettings, state: SymbolicTensor, target, out_dtype: str):
    """`state * target_magnitude / sqrt(clamp(mean(state ** 2)))` (pow: fp32 under autocast, saving its input;
    sqrt its output; the product saves the state when the target needs a gradient, the quotient its numerator)."""
    T = settings.T
    state = walk.cast(state, out_dtype)  # `.to(hidden_states_0.dtype)`
    squared_in = walk.cast(state, "fp32") if settings.autocast_dtype else state
    magnitude = walk.new(T, squared_in.dtype, state.requires_grad)
    if state.requires_grad:
        walk.save(squared_in, magnitude, walk.new(T, magnitude.dtype, False))  # pow's input, sqrt's output, clamp
    product = walk.new(state.numel, promote(state.dtype, target.dtype), state.requires_grad or target.requires_grad)
    if target.requires_grad:
        walk.save(state)
    if state.requires_grad:
        walk.save(target, product)
    quotient = walk.new(state.numel, promote(product.dtype, magnitude.dtype), product.requires_grad)
    walk.transient(state, squared_in, product, quotient)
    return quotient


def model_input_saved(m: ModelSpec, t, settings: WalkSettings, trainable: bool) -> complex:
    """What the model saves below its bottom layer, per token, alive to the end of backward: the per-layer inputs
    (`project_per_layer_inputs`: per_layer_model_projection, `* scale`, per_layer_projection_norm, `+ embeddings)
    * scale`, T·L·P, whose slices the layers save or take as checkpointed arguments) and the AltUp stack's making
    (each `altup_projections[i]` output scaled to the embeddings' magnitude). 0 for other families."""
    if m.model_type != "gemma3n_text":
        return 0
    T, h, layers = settings.T, m.hidden_size, m.num_hidden_layers
    n = residual_streams(m)
    walk = Walk()
    embed_dtype = "fp32" if t.kbit_prep else t.dtype
    requires_grad = t.method == "full" or t.grad_ckpt  # enable_input_require_grads (family_traits, traced)
    x0 = walk.new(h, embed_dtype, requires_grad)
    projection = next(li for li in m.linears if li.name == "per_layer_model_projection")
    ple = linear(walk, settings, x0, projection.name, projection.out_features, trainable, settings.quantized)
    normed = g3n_norm(walk, ple, projection.out_features // layers, trainable)
    per_layer = walk.new(normed.numel, promote(normed.dtype, embed_dtype), normed.requires_grad or trainable)
    walk.save(per_layer)  # (a slice saved by each layer's product, or its checkpointed argument)
    squared = walk.cast(x0, "fp32") if settings.autocast_dtype else x0
    target = walk.new(T, squared.dtype, requires_grad)
    if requires_grad:
        walk.save(squared, target)
    for i in range(n - 1):
        name = f"altup_projections.{i}"
        state = linear(walk, settings, x0, name, h, trainable, settings.quantized)
        _magnitude_scaled(walk, settings, state, target, embed_dtype)
    return walk.saved_bytes


def output_walk(m: ModelSpec, settings: WalkSettings, stack: str, trainable: bool, embed_dtype: str):
    """(saved bytes, output bytes) per token of the model's output stage: the final stack folded back (its first
    state's `** 2` saves the stack whole; each `altup_unembed_projections[i]` output scaled to its magnitude), the
    mean over the states, the final norm. Freed before the top layer's backward."""
    T, h, n = settings.T, m.hidden_size, residual_streams(m)
    walk = Walk()
    x = walk.new(n * h, stack, True)
    target = walk.new(T, "fp32" if settings.autocast_dtype else stack, True)
    for i in range(n - 1):
        state = linear(walk, settings, x._replace(nbytes=x.nbytes / n, numel=h), f"altup_unembed_projections.{i}", h,
                       trainable, settings.quantized)  # fmt: skip
        _magnitude_scaled(walk, settings, state, target, embed_dtype)
    walk.save(x, target)  # `hidden_states[0] ** 2` saves the stack's first state: the whole stack
    mean = walk.new(T * h, stack, True)
    out = g3n_norm(walk, mean, h, trainable)
    return walk.saved_bytes, out.nbytes


def kv_graph_bytes(m: ModelSpec, t, tokens: int, settings: WalkSettings, residual_dtype: str, kinds) -> int:
    """Under checkpointing, what the KV-storing layers' recomputes leave alive to the end of backward: a "store"
    layer's recompute puts its recomputed keys and values in the model's `shared_kv_states` dict (held by every
    checkpointed layer's arguments), and with them their autograd graph, whose nodes hold what the recompute saved
    behind k and v (torch 2.13 utils/checkpoint.py `_recomputation_hook` returns the tensor itself): the stack,
    the predictions, the input norm's, the k / v projections' and norms'. Those of the storing layers above the
    bottom one are alive at its backward (traced: modeling_gemma3n.py 5.25 `Gemma3nTextAttention.forward`). 0
    without checkpointing, and for other families. `kinds`: activations.layer_kinds."""
    if m.model_type != "gemma3n_text" or not t.grad_ckpt:
        return 0
    from vramplan.estimator.walk import layer_specs
    from vramplan.spec.gemma3n import gemma3n_dims

    total = 0.0
    modes = gemma3n_dims(m)["modes"]
    for index, (spec, kind) in enumerate(zip(layer_specs(m), kinds, strict=True)):
        if index == 0 or modes[index] != "store":
            continue
        walk, graph = Walk(), [0]
        x = walk.new(m.hidden_size * residual_streams(m), residual_dtype, kind[1])
        decoder_layer(walk, settings._replace(masked=kind[2]), spec, x, kind[0], graph)
        total += graph[0].real
    return round(tokens * total)
