"""A hybrid decoder layer (Falcon-H1) op by op, as the symbolic walk sees it: the Mamba-2 mixer beside the
attention, the muP multipliers, the gated MLP.

Source: transformers 5.24 models/falcon_h1/modeling_falcon_h1.py (`FalconH1DecoderLayer.forward`,
`FalconH1Mixer.forward`, `mamba2_chunk_scan`, `segment_sum`, `causal_conv1d_fn`, `FalconH1RMSNormGated`,
`FalconH1MLP`). The mixer runs transformers' torch path: its `mamba_split_conv1d_scan_combined`,
`mamba_chunk_scan_combined` and `causal_conv1d_fn` fall back to the PyTorch reference when `mamba_ssm` /
`causal_conv1d` are not importable (integrations/hub_kernels.py `use_kernel_func_from_hub_with_fallback`), as
with axolotl's `mamba-ssm` extra (mamba-ssm 1.2.0.post1: no Mamba-2 `ops.triton.ssd_combined`). The reference
SSD materialises chunk-by-chunk tensors of heads · chunk per token (segment sums, the decay matrix L, the
C·Bᵀ scores G and M = G·L), in fp32, with every einsum's operands as copies (under autocast: cast to the
autocast dtype, as torch's autocast runs einsum's bmm).

Multipliers: `x * multiplier` by a Python float saves nothing and allocates its output, so the op after it
saves the multiplied copy (in_proj saves `hidden · ssm_in_multiplier`, q/k/v `hidden · attention_in_multiplier`,
SiLU its `gate · gate_multiplier` input); `projected * mup_vector` (a non-persistent buffer in the load dtype)
saves only the buffer. Traced under saved-tensor hooks on a tiny Falcon-H1 (tests/oracle: FAMILY_GRID).
Per token (T = 1), the chunk-state tensors (batch · chunks · heads · head_dim · state) count
heads · head_dim · state / chunk; a sequence that is not a multiple of the chunk is padded to one by the
reference (not counted), and the chunk-to-chunk decay (batch · heads · (chunks + 1)²) is left out.
"""

from __future__ import annotations

from vramplan.estimator.layer_ops import _attention, _rope, norm
from vramplan.estimator.mlp_ops import _down
from vramplan.estimator.linear_ops import linear
from vramplan.estimator.walk import SymbolicTensor, Walk, WalkSettings, promote
from vramplan.estimator.walk import scaled as _scaled
from vramplan.spec import ModelSpec


def _product(walk: Walk, a: SymbolicTensor, b: SymbolicTensor, numel: complex) -> SymbolicTensor:
    """An elementwise product (broadcasting to `numel`): saves b for a's gradient and a for b's."""
    out = walk.new(numel, promote(a.dtype, b.dtype), a.requires_grad or b.requires_grad)
    if a.requires_grad:
        walk.save(b)
    if b.requires_grad:
        walk.save(a)
    walk.transient(a, b, out)
    return out


def _unary(walk: Walk, x: SymbolicTensor, saves: str, dtype: str = "") -> SymbolicTensor:
    """A pointwise op that saves its input (`softplus`, `clamp`, `silu`), its result (`exp`) or nothing."""
    out = walk.new(x.numel, dtype or x.dtype, x.requires_grad)
    if x.requires_grad and saves == "input":
        walk.save(x)
    if x.requires_grad and saves == "result":
        walk.save(out)
    walk.transient(x, out)
    return out


def _einsum(walk: Walk, settings: WalkSettings, operands: tuple[SymbolicTensor, ...], out_numel: complex):
    """torch.einsum as bmm: each operand permuted into a new contiguous copy (cast to the autocast dtype under
    autocast: einsum runs bmm, an autocast op), both saved when the result needs a gradient."""
    dtype = settings.autocast_dtype or operands[0].dtype
    copies = tuple(walk.new(x.numel, dtype, x.requires_grad) for x in operands)
    out = walk.new(out_numel, dtype, any(x.requires_grad for x in operands))
    if out.requires_grad:
        walk.save(*copies)
    walk.transient(*operands, *copies, out)
    return out


def mamba_mixer(walk: Walk, settings: WalkSettings, m: ModelSpec, x: SymbolicTensor, trainable: bool) -> SymbolicTensor:
    """FalconH1Mixer.forward in training without a cache, on transformers' torch path; returns out_proj's
    output (T · hidden)."""
    mamba = m.mamba
    assert mamba is not None
    T = settings.T
    d, heads, chunk = mamba.d_ssm, mamba.heads, mamba.chunk
    head_state = heads * mamba.state  # B and C repeated to every head
    param_dtype = settings.norm_dtype  # conv1d, D, dt_bias, A_log: the load dtype, fp32 after kbit prep
    buffer_dtype = settings.weight_dtype  # mup_vector: a buffer, cast with the model, untouched by kbit prep
    # 1. in_proj(hidden · ssm_in_multiplier) · mup_vector
    scaled = _scaled(walk, x)
    projected = linear(walk, settings, scaled, "in_proj", mamba.projection, trainable, settings.quantized)
    zxbcdt = walk.new(T * mamba.projection, promote(projected.dtype, buffer_dtype), projected.requires_grad)
    walk.transient(projected, zxbcdt)
    walk.pinned[zxbcdt.id] = zxbcdt.nbytes  # gate, x·B·C and dt are views of it, referenced to the end
    grad = zxbcdt.requires_grad or trainable
    # 2. causal_conv1d_fn: x·B·C.to(conv weight dtype), F.conv1d (an autocast op), [:seq], SiLU, .to(dtype)
    xbc = zxbcdt if zxbcdt.dtype == param_dtype else walk.new(T * mamba.conv_dim, param_dtype, grad)
    conv_input = xbc  # the x·B·C view of zxbcdt, or its copy in the conv weight's dtype
    if settings.autocast_dtype and xbc.dtype != settings.autocast_dtype:
        conv_input = walk.new(T * mamba.conv_dim, settings.autocast_dtype, grad)  # autocast's copy of the slice
    conv_out = walk.new(T * mamba.conv_dim, conv_input.dtype, grad)  # (B, C, S + kernel - 1): the tail left out
    if grad:
        walk.save(conv_input)  # even for a frozen weight (a view of zxbcdt when no cast copies it)
    walk.transient(xbc, conv_input, conv_out)
    activated = _unary(walk, conv_out, "input")
    activated = walk.cast(activated, zxbcdt.dtype)
    walk.pinned[activated.id] = activated.nbytes  # x, B, C: its views
    # 3. mamba2_chunk_scan (torch reference). Its locals stay referenced until it returns (what a checkpointed
    # forward holds, autograd saving nothing): `keep` pins each final value of a local
    scan_locals: list[int] = []

    def keep(*tensors: SymbolicTensor) -> None:
        for tensor in tensors:
            walk.pinned[tensor.id] = tensor.nbytes
            scan_locals.append(tensor.id)

    dt = walk.new(T * heads, zxbcdt.dtype, grad)  # dt + dt_bias.to(dt.dtype)
    walk.transient(zxbcdt, dt)
    dt = _unary(walk, dt, "input")  # softplus
    dt = _unary(walk, dt, "input")  # clamp to time_step_limit
    keep(dt)
    # x.float(); B, C .float().repeat_interleave(heads // groups)
    x_fp32 = walk.new(T * d, "fp32", grad) if activated.dtype != "fp32" else activated
    b_rep, c_rep = (walk.new(T * head_state, "fp32", grad) for _ in range(2))
    walk.transient(activated, x_fp32, b_rep, c_rep)
    # D_residual = D[..., None] * pad(x) (F.pad copies even with no padding)
    x_padded = walk.new(T * d, "fp32", grad)
    d_residual = walk.new(T * d, "fp32", grad)
    if trainable:
        walk.save(x_padded)
    walk.transient(x_fp32, x_padded, d_residual)
    keep(d_residual)
    # x · dt[..., None].float(); A.to(fp32) · dt.float() (two fp32 copies of dt unless it is fp32 already)
    dt_column = walk.cast(dt, "fp32") if dt.dtype != "fp32" else dt
    x_dt = _product(walk, x_fp32, dt_column, T * d)
    dt_row = walk.new(T * heads, "fp32", grad) if dt.dtype != "fp32" else dt
    a_dt = walk.new(T * heads, "fp32", grad)
    if trainable:
        walk.save(dt_row)  # for A's gradient (A = -exp(A_log) trains with the layer)
    walk.transient(dt, dt_row, a_dt)
    # reshape_into_chunks: F.pad copies x, A, B, C
    x_chunks, a_chunks, b_chunks, c_chunks = (walk.new(t.numel, "fp32", grad) for t in (x_dt, a_dt, b_rep, c_rep))
    walk.transient(x_dt, a_dt, b_rep, c_rep, x_chunks, a_chunks, b_chunks, c_chunks)
    keep(x_chunks, a_chunks, b_chunks, c_chunks)
    a_cumsum = walk.new(T * heads, "fp32", grad)
    walk.transient(a_chunks, a_cumsum)
    keep(a_cumsum)
    # 1. intra-chunk: L = exp(segment_sum(A)) over heads · chunk per token
    filled, summed, masked = (walk.new(T * heads * chunk, "fp32", grad) for _ in range(3))
    walk.transient(a_chunks, filled, summed)
    walk.transient(summed, masked)
    decay = _unary(walk, masked, "result")  # L
    keep(decay)
    scores = _einsum(walk, settings, (c_chunks, b_chunks), T * heads * chunk)  # G = C·Bᵀ
    keep(scores)
    masked_scores = _product(walk, scores, decay, T * heads * chunk)  # M = G * L
    keep(masked_scores)
    y_diag = _einsum(walk, settings, (masked_scores, x_chunks), T * d)
    keep(y_diag)
    # 2. chunk states: B · exp(A_cumsum[-1] - A_cumsum), summed against x
    difference = walk.new(T * heads, "fp32", grad)
    walk.transient(a_cumsum, difference)
    decay_states = _unary(walk, difference, "result")
    keep(decay_states)
    b_decay = _product(walk, b_chunks, decay_states, T * head_state)
    keep(b_decay)
    chunk_state = heads * mamba.head_dim * mamba.state / chunk  # per token: batch · chunks · heads · p · n
    states = _einsum(walk, settings, (b_decay, x_chunks), T * chunk_state)
    # 3. inter-chunk recurrence: cat a zero initial state, decay over chunks (the (chunks + 1)² decay left out)
    states = walk.new(T * chunk_state, states.dtype, states.requires_grad)
    keep(states)
    new_states = _einsum(walk, settings, (states,), T * chunk_state)
    keep(new_states)
    # 4. state -> output
    state_decay_out = _unary(walk, a_cumsum, "result")
    keep(state_decay_out)
    c_states = _einsum(walk, settings, (c_chunks, new_states), T * d)
    keep(c_states)
    y_off = _product(walk, c_states, state_decay_out, T * d)
    keep(y_off)
    summed_out = walk.new(T * d, promote(y_diag.dtype, y_off.dtype), grad)
    contiguous = walk.new(T * d, summed_out.dtype, grad)
    walk.transient(y_diag, y_off, summed_out, contiguous)
    keep(contiguous)
    scan_out = walk.new(T * d, "fp32", grad)  # output + D_residual
    walk.transient(contiguous, d_residual, scan_out)
    for tensor_id in scan_locals:
        walk.pinned.pop(tensor_id, None)
    del walk.pinned[activated.id]
    # the gate: FalconH1RMSNormGated(scan, gate) or scan * silu(gate)
    gate = zxbcdt  # a view
    if mamba.rms_norm:
        gated = _gated_norm(walk, m, scan_out, gate, trainable, grad)
    else:
        silu_gate = walk.new(T * d, gate.dtype, grad)  # SiLU saves its input: the gate, a view of zxbcdt
        if grad:
            walk.save(gate)
        walk.transient(gate, silu_gate)
        gated = _product(walk, scan_out, silu_gate, T * d)
    del walk.pinned[zxbcdt.id]
    # 4. out_proj(scan_output.to(dtype))
    gated = walk.cast(gated, x.dtype)
    return linear(walk, settings, gated, "out_proj", m.hidden_size, trainable, settings.quantized)


def _gated_norm(
    walk: Walk, m: ModelSpec, scan: SymbolicTensor, gate: SymbolicTensor, trainable: bool, grad: bool
) -> SymbolicTensor:
    """FalconH1RMSNormGated.forward over n_groups groups, in fp32 (scan is fp32): with `mamba_norm_before_gate`
    false (the released checkpoints) the gate multiplies first, `hidden * silu(gate.to(fp32))`; pow saves its
    input, rsqrt its result (T · groups), the normalising product both; the weight's product saves the normed
    tensor when the weight trains; with norm_before_gate true (FalconH1Config's default) the gate comes last."""
    mamba = m.mamba
    assert mamba is not None
    T, d = 1, mamba.d_ssm
    before_gate = bool(m.config.get("mamba_norm_before_gate", True))

    def gated(x: SymbolicTensor) -> SymbolicTensor:
        gate_fp32 = walk.new(T * d, "fp32", grad) if gate.dtype != "fp32" else gate  # a view when fp32
        walk.transient(gate, gate_fp32)
        activated = walk.new(T * d, "fp32", grad)  # SiLU saves its input (a view of zxbcdt when fp32)
        if grad:
            walk.save(gate_fp32)
        walk.transient(gate_fp32, activated)
        return _product(walk, x, activated, T * d)

    x = scan if before_gate else gated(scan)
    inverse_rms = walk.new(T * mamba.groups, "fp32", False)
    normed = walk.new(T * d, "fp32", grad)
    if grad:
        walk.save(x, inverse_rms)
    walk.transient(x, inverse_rms, normed)
    weighted = walk.new(T * d, "fp32", grad)
    if trainable:
        walk.save(normed)
    walk.transient(normed, weighted)
    return gated(weighted) if before_gate else weighted


def hybrid_layer(
    walk: Walk, settings: WalkSettings, m: ModelSpec, x: SymbolicTensor, trainable: bool
) -> SymbolicTensor:
    """FalconH1DecoderLayer.forward: input_layernorm; the mixer, then the attention, on the same normed input
    (each through its multiplier); their sum on the residual; pre_ff_layernorm; the gated MLP
    `down_proj(up_proj(h) * silu(gate_proj(h) * gate_multiplier)) * down_multiplier`."""
    T, residual_dtype = settings.T, x.dtype

    def project(inp: SymbolicTensor, name: str) -> SymbolicTensor:
        spec = next(li for li in m.linears if li.name == name)
        return linear(walk, settings, inp, name, spec.out_features, trainable, settings.quantized)

    walk.pinned[x.id] = x.nbytes  # the residual, until the attention's sum is added to it
    normed = norm(walk, settings, m, x, trainable)
    walk.pinned[normed.id] = normed.nbytes  # read again by the attention after the mixer
    mamba_out = _scaled(walk, mamba_mixer(walk, settings, m, normed, trainable))
    walk.pinned[mamba_out.id] = mamba_out.nbytes
    attention_input = _scaled(walk, normed)
    del walk.pinned[normed.id]
    q = project(attention_input, "q_proj")
    k = _scaled(walk, project(attention_input, "k_proj"))  # key_multiplier
    v = project(attention_input, "v_proj")
    q, k = _rope(walk, q, residual_dtype), _rope(walk, k, residual_dtype)
    attention_out = _scaled(walk, project(_attention(walk, settings, m, q, k, v, None), "o_proj"))
    del walk.pinned[mamba_out.id]
    mixed = walk.new(T * m.hidden_size, promote(mamba_out.dtype, attention_out.dtype), True)
    walk.transient(mamba_out, attention_out, mixed)
    del walk.pinned[x.id]
    residual = walk.new(T * m.hidden_size, promote(residual_dtype, mixed.dtype), True)
    walk.transient(x, mixed, residual)
    walk.pinned[residual.id] = residual.nbytes  # alive through the MLP for the second residual add
    h = norm(walk, settings, m, residual, trainable)
    walk.mark("mlp")
    up = project(h, "up_proj")
    walk.pinned[up.id] = up.nbytes
    gate = _scaled(walk, project(h, "gate_proj"))  # gate_multiplier
    activated = _unary(walk, gate, "input")  # SiLU saves its (multiplied) input
    del walk.pinned[up.id]
    product = _product(walk, up, activated, T * m.intermediate_size)
    down = _scaled(walk, _down(walk, project, product, "down_proj"))  # down_multiplier
    # its gradient `grad * down_multiplier` (a node that saves nothing) is alive when the recompute starts
    walk.recompute_tail += down.nbytes
    del walk.pinned[residual.id]
    out = walk.new(T * m.hidden_size, promote(residual.dtype, down.dtype), True)
    walk.transient(residual, down, out)
    return out
