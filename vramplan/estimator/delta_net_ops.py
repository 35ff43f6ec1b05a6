"""Qwen3.5's decoder layers op by op (transformers 5.24 models/qwen3_5/modeling_qwen3_5.py), as the symbolic walk
(`walk.py`) sees them: the gated DeltaNet (`linear_attention`) and the gated attention (`full_attention`) token
mixers; the norms, the MLP and the residuals are Llama's (`layer_ops`).

The DeltaNet runs what a machine without flash-linear-attention runs (`fla` not installed: transformers'
`use_kernel_func_from_hub_with_fallback` falls back to `torch_chunk_gated_delta_rule` and `causal_conv1d_fn`,
integrations/hub_kernels.py); torch 2.13's autograd saving rules, CUDA's autocast lists (matmul and conv1d in the
autocast dtype, `linalg_solve_triangular` in the input's). Per op, with C = 64 (the chunk), T' = T padded to
whole chunks per sequence, Hv value heads of dk (keys) and dv (values), `A` the autocast dtype:

- in_proj_qkv / in_proj_z / in_proj_b / in_proj_a: nn.Linear (`linear_ops`).
- causal_conv1d_fn: `x.to(conv weight dtype)`, F.conv1d (padding K-1: a B·conv_dim·(S+K-1) output) saves its
  input; SiLU saves the padded output; `.to(x.dtype)`.
- beta = b.sigmoid() (saves its output); g = -A_log.float().exp() · softplus(a.float() + dt_bias): softplus saves
  its fp32 input, the product its fp32 output when A_log trains.
- torch_chunk_gated_delta_rule: q and k repeated to Hv heads, then q, k, v, beta, g transposed to fp32 copies;
  l2norm of q and k (saves the fp32 input and the T·Hv rsqrt each); F.pad to T' (copies, also without padding);
  v·beta and k·beta save both operands; per chunk the C×C decays (exp saves its T'·Hv·C fp32 output) and two
  C×C products (their `A` casts of k·beta, q and k saved, the `A` product saved by the decay product); k·beta
  times exp(cumulative decay) saves k·beta and the exp; two triangular solves save the T'·Hv·C fp32 system and
  their outputs; q and k are decayed (each saves its operand and an exp). The scan over the S'/C chunks saves,
  per chunk, the `A` casts of the state (twice), the intra-chunk attention and v_new, and (from the second chunk)
  of k_cumdecay and q; each state update that a later chunk reads saves the fp32 state and the `A` casts of k and
  v_new (the last one is dead code: its tensors die with the function). The output: `.to(q's dtype)`.
- Qwen3_5RMSNormGated: fp32 copy (saved), rsqrt, `weight · normed.to(dtype)` (saved by the gate product),
  `silu(z.float())` (saves the fp32 z; its output saved by the product), the product cast back.
- out_proj: nn.Linear.

Gated attention (`Qwen3_5Attention`): q_proj gives the query and the gate (2·heads·head_dim); the gate's reshape
copies it; q_norm / k_norm (zero-centred RMSNorm over head_dim); partial RoPE (a new q and k); SDPA / eager
(`layer_ops`); `out · sigmoid(gate)` (sigmoid saves its output, the product both operands); o_proj.

Traced op by op (saved tensors by autograd node) on a tiny qwen3_5_text layer, bf16 under autocast.
"""

from __future__ import annotations

import math

from vramplan.estimator.walk import SymbolicTensor, Walk, WalkSettings, promote
from vramplan.spec import ModelSpec
from vramplan.spec.qwen35 import qwen35_dims

CHUNK = 64  # torch_chunk_gated_delta_rule's chunk_size default (the model passes none)


def gated_attention(
    walk: Walk, settings: WalkSettings, m: ModelSpec, x: SymbolicTensor, project, trainable: bool, ops
) -> SymbolicTensor:
    """Qwen3_5Attention.forward on the normed input; returns o_proj's output. `ops`: layer_ops' norm, RoPE and
    attention (passed in: layer_ops dispatches here)."""
    norm, rope, attention = ops
    T, q_dim = settings.T, m.q_dim
    query_gate = project(x, "q_proj")
    gate = walk.new(T * q_dim, query_gate.dtype, query_gate.requires_grad)  # gate.reshape: a copy of the view
    walk.transient(query_gate, gate)
    walk.pinned[gate.id] = gate.nbytes
    query = SymbolicTensor(query_gate.id, query_gate.nbytes / 2, query_gate.dtype, query_gate.requires_grad, T * q_dim)
    walk.pinned[query_gate.id] = query_gate.nbytes  # the query is a view of q_proj's output until q_norm has run
    q = norm(walk, settings, m, query, trainable, m.head_dim)
    del walk.pinned[query_gate.id]
    walk.pinned[q.id] = q.nbytes
    k = norm(walk, settings, m, project(x, "k_proj"), trainable, m.head_dim)
    walk.pinned[k.id] = k.nbytes
    v = project(x, "v_proj")
    del walk.pinned[q.id], walk.pinned[k.id]
    residual_dtype = x.dtype  # the zero-centred norm returns its input's (the residual stream's) dtype: cos's
    q, k = rope(walk, q, residual_dtype), rope(walk, k, residual_dtype)
    out = attention(walk, settings, m, q, k, v, None)
    del walk.pinned[gate.id]
    gate_out = walk.new(T * q_dim, gate.dtype, gate.requires_grad)
    gated = walk.new(T * q_dim, promote(out.dtype, gate.dtype), out.requires_grad or gate.requires_grad)
    if gate.requires_grad:
        walk.save(gate_out, out)
    if out.requires_grad:
        walk.save(gate_out)
    walk.transient(out, gate, gate_out, gated)
    return project(gated, "o_proj")


def gated_delta_net(
    walk: Walk, settings: WalkSettings, m: ModelSpec, x: SymbolicTensor, project, trainable: bool, ops=None
) -> SymbolicTensor:
    """Qwen3_5GatedDeltaNet.forward on the normed input (no cache, the torch fallback); returns out_proj's output."""
    T, A = settings.T, settings.autocast_dtype
    key_heads, heads, dk, dv, kernel = qwen35_dims(m)
    key_dim, value_dim = key_heads * dk, heads * dv
    conv_dim = 2 * key_dim + value_dim
    seq = settings.seq or CHUNK
    chunks = math.ceil(seq / CHUNK)  # per sequence
    padded = chunks * CHUNK / seq  # T' / T
    param_dtype = settings.norm_dtype  # conv1d, A_log, dt_bias, the gated norm: the load dtype, fp32 after kbit prep
    # ---- projections (the forward's locals: the normed input, mixed_qkv, z, b, a, then beta and g)
    walk.pinned[x.id] = x.nbytes
    mixed = project(x, "in_proj_qkv")
    walk.pinned[mixed.id] = mixed.nbytes
    z = project(x, "in_proj_z")
    walk.pinned[z.id] = z.nbytes
    b = project(x, "in_proj_b")
    walk.pinned[b.id] = b.nbytes
    a = project(x, "in_proj_a")
    walk.pinned[a.id] = a.nbytes
    # ---- causal_conv1d_fn: conv over the padded sequence, SiLU, back to the projection's dtype
    conv_in = walk.cast(mixed, param_dtype)
    conv_dtype = A or param_dtype
    conv_cast = walk.cast(conv_in, conv_dtype)
    grad = mixed.requires_grad or trainable
    conv_out = walk.new(T * conv_dim * (1 + (kernel - 1) / seq), conv_dtype, grad)
    if grad:
        walk.save(conv_cast)
        walk.save(conv_out)  # SiLU's input: the whole padded output (the slice is a view)
    walk.transient(mixed, conv_in, conv_cast, conv_out)
    activated = walk.new(T * conv_dim, conv_dtype, grad)
    walk.transient(conv_out, activated)
    qkv = walk.cast(activated, mixed.dtype)
    walk.transient(activated, qkv)
    del walk.pinned[mixed.id]  # mixed_qkv now names the convolved tensor
    walk.pinned[qkv.id] = qkv.nbytes
    # ---- beta, g
    beta = walk.new(T * heads, b.dtype, b.requires_grad)
    if b.requires_grad:
        walk.save(beta)
    a_fp32 = walk.cast(a, "fp32")
    shifted = walk.new(T * heads, "fp32", a.requires_grad or trainable)
    softplus = walk.new(T * heads, "fp32", shifted.requires_grad)
    if shifted.requires_grad:
        walk.save(shifted)
    if trainable:
        walk.save(softplus)
    g = walk.new(T * heads, "fp32", shifted.requires_grad or trainable)
    walk.transient(b, beta, a, a_fp32, shifted, softplus, g)
    walk.pinned.update({beta.id: beta.nbytes, g.id: g.nbytes})
    out = _chunk_gated_delta_rule(walk, settings, qkv, beta, g, (key_heads, heads, dk, dv), (chunks, padded, seq))
    # ---- Qwen3_5RMSNormGated(out, z), out_proj
    walk.pinned[out.id] = out.nbytes
    normed = _gated_norm(walk, settings, out, z, heads, dv, param_dtype, trainable)
    for tensor in (x, z, b, a, qkv, beta, g, out):
        del walk.pinned[tensor.id]
    return project(normed, "out_proj")


def _chunk_gated_delta_rule(walk: Walk, settings: WalkSettings, qkv, beta, g, dims, chunking) -> SymbolicTensor:
    """torch_chunk_gated_delta_rule(q, k, v, g, beta, use_qk_l2norm_in_kernel=True) (modeling_qwen3_5.py). The
    function's locals stay referenced until reassigned (`hold` / `drop`): what a checkpointed forward holds."""
    T, A = settings.T, settings.autocast_dtype
    key_heads, heads, dk, dv = dims
    chunks, padded, seq = chunking
    grad = qkv.requires_grad or g.requires_grad
    per_chunk = chunks / seq  # chunks per token: per-chunk tensors (B·Hv·dk·dv) count this per token

    def new(numel: float, dtype: str) -> SymbolicTensor:
        return walk.new(numel, dtype, grad)

    def hold(*tensors: SymbolicTensor) -> None:
        walk.pinned.update({t.id: t.nbytes for t in tensors})

    def drop(*tensors: SymbolicTensor) -> None:
        for t in tensors:
            walk.pinned.pop(t.id, None)

    def mm_cast(tensor: SymbolicTensor) -> SymbolicTensor:
        """matmul's operand under autocast (a new copy each time), the tensor itself without."""
        return walk.cast(tensor, A) if A else tensor

    initial_dtype = qkv.dtype
    # repeat_interleave to Hv heads, then transpose(1, 2).to(fp32, contiguous): new tensors
    repeated = [new(T * heads * dk, initial_dtype) for _ in range(2)] if key_heads != heads else []
    hold(*repeated)
    q32, k32, v32 = new(T * heads * dk, "fp32"), new(T * heads * dk, "fp32"), new(T * heads * dv, "fp32")
    beta32, g32 = new(T * heads, "fp32"), new(T * heads, "fp32")
    walk.transient(qkv, q32, k32, v32, beta32, g32)
    drop(*repeated)
    hold(q32, k32, v32, beta32, g32)
    # l2norm: x·x, sum, rsqrt (saves its output), x·inv (saves both)
    normed = []
    for x32 in (q32, k32):
        inv = new(T * heads, "fp32")
        y = new(T * heads * dk, "fp32")
        if grad:
            walk.save(x32, inv)
        walk.transient(x32, walk.new(T * heads * dk, "fp32", grad), inv, y)  # (and x·x)
        drop(x32)
        hold(y)
        normed.append(y)
    q_scaled = new(T * heads * dk, "fp32")  # query * scale
    walk.transient(normed[0], q_scaled)
    drop(normed[0])
    hold(q_scaled)
    # F.pad to whole chunks: copies
    q_p, k_p = new(T * padded * heads * dk, "fp32"), new(T * padded * heads * dk, "fp32")
    v_p = new(T * padded * heads * dv, "fp32")
    walk.transient(q_p, k_p, v_p)
    drop(q_scaled, normed[1], v32)
    hold(q_p, k_p, v_p)
    beta_p, g_p = new(T * padded * heads, "fp32"), new(T * padded * heads, "fp32")
    walk.transient(beta_p, g_p)
    drop(beta32, g32)
    hold(beta_p, g_p)
    v_beta, k_beta = new(T * padded * heads * dv, "fp32"), new(T * padded * heads * dk, "fp32")
    if grad:
        walk.save(v_p, k_p, beta_p)
        walk.per_layer_saved += CHUNK * CHUNK  # the C×C bool mask masked_fill saves
    walk.transient(v_beta, k_beta)
    hold(v_beta, k_beta)
    pairs = T * padded * heads * CHUNK  # elements of one B·Hv·n·C·C tensor, per token
    cum = new(T * padded * heads, "fp32")
    hold(cum)
    difference, filled, decay = new(pairs, "fp32"), new(pairs, "fp32"), new(pairs, "fp32")
    walk.transient(difference, filled)
    walk.transient(filled, decay)
    if grad:
        walk.save(decay)
    hold(decay)
    # ut_system = (k_beta @ key^T) * decay;  intra = (query @ key^T) * decay
    products = []
    for left in (k_beta, q_p):
        left_cast, key_cast = mm_cast(left), mm_cast(k_p)
        product = new(pairs, A or "fp32")
        weighted = new(pairs, "fp32")
        if grad:
            walk.save(left_cast, key_cast, product)
        walk.transient(left_cast, key_cast, product)
        walk.transient(product, weighted)
        hold(weighted)
        products.append(weighted)
    ut_system, intra = products
    # decayed k_beta, then the two triangular solves (fp32: not an autocast op)
    cum_exp = new(T * padded * heads, "fp32")
    decayed = new(T * padded * heads * dk, "fp32")
    walk.transient(cum_exp, decayed)
    hold(decayed)
    new_values, k_cumdecay = new(T * padded * heads * dv, "fp32"), new(T * padded * heads * dk, "fp32")
    if grad:
        walk.save(cum_exp, k_beta, ut_system, new_values)
    walk.transient(new_values)
    hold(new_values)
    # the layer's backward peaks inside the first triangular solve's backward (the second to run), traced: the
    # layer's saves up to here are alive; the gradients of intra and of ut_system (from the other solve), the
    # solve's C×C product and its tril, the incoming gradient of new_values and the solve's own, and the pending
    # gradients of k·exp(cum), of q and of k (fp32; `linalg_solve_triangular_backward`, torch 2.13)
    walk.mixer_backward = walk.saved_bytes
    walk.mixer_workspace = (4 * pairs + T * padded * heads * (2 * dv + 3 * dk)) * 4
    if grad:
        walk.save(k_cumdecay)
    walk.transient(k_cumdecay)
    hold(k_cumdecay)
    state0 = walk.new(T * per_chunk * heads * dk * dv, "fp32", False)  # zeros: the initial recurrent state
    core = walk.new(T * padded * heads * dv, "fp32", False)  # zeros_like(new_values), filled chunk by chunk
    hold(state0, core)
    # query and key decayed once (each replaces its local)
    q_exp, k_exp = new(T * padded * heads, "fp32"), new(T * padded * heads, "fp32")
    q_d, k_d = new(T * padded * heads * dk, "fp32"), new(T * padded * heads * dk, "fp32")
    if grad:
        walk.save(q_exp, q_p, k_exp)
    walk.transient(q_exp, q_d)
    drop(q_p)
    hold(q_d)
    walk.transient(k_exp, k_d)
    drop(k_p)
    hold(k_d)
    # the scan: per chunk, casts of the state (B·Hv·dk·dv), of the chunk's rows (C per chunk) and the state update
    state = T * per_chunk * heads * dk * dv
    rows = T * padded * heads  # C rows per chunk, every chunk
    later = T * max(chunks - 1, 0) * CHUNK / seq * heads  # rows of the chunks after the first
    cast = A or "fp32"
    if grad:
        if A is None:
            # without autocast the matmuls save the fp32 tensors themselves (views): intra and the decayed q, k,
            # one fp32 state and v_new per chunk
            walk.save(intra, q_d, k_d, new(state, "fp32"), new(rows * dv, "fp32"))
        else:
            walk.save(
                new(2 * state, cast),  # the state's casts for k_cumdecay @ state and query @ state
                new(rows * CHUNK, cast),  # intra[:, :, i]
                new(rows * dv, cast),  # v_new
                new(later * (dk + dk), cast),  # k_cumdecay[:, :, i], query[:, :, i] (the state needs a gradient)
                new(state * max(chunks - 1, 0) / chunks, "fp32"),  # the fp32 states the updates read
                new(later * (dk + dv), cast),  # key[:, :, i]^T, v_new for the state updates a later chunk reads
            )
    # ... or inside the scan's backward (several chunks), which starts with every save above still alive: the
    # gradient buffers of intra, k_cumdecay, the decayed q and k, new_values and core, and a later chunk's
    # `select_backward` (a zero tensor the size of intra) being added to intra's buffer (the sum: a third)
    scan_workspace = T * padded * heads * ((3 if chunks > 1 else 2) * CHUNK + 3 * dk + 2 * dv) * 4
    if (walk.saved_bytes + scan_workspace).real > (walk.mixer_backward + walk.mixer_workspace).real:
        walk.mixer_backward, walk.mixer_workspace = walk.saved_bytes, scan_workspace
    # one chunk's operands and results (v_new, the products, the new state)
    chunk_live = walk.new(T * CHUNK / seq * heads * (CHUNK + 3 * dv), cast, False)
    walk.transient(chunk_live)
    # reshape, [:, :, :S], transpose, .to(initial dtype, contiguous); then every local is released
    out = walk.new(T * heads * dv, initial_dtype, grad)
    walk.transient(out)
    drop(v_p, beta_p, g_p, v_beta, k_beta, cum, decay, ut_system, intra, decayed, new_values, k_cumdecay)
    drop(state0, core, q_d, k_d)
    return out


def _gated_norm(walk, settings, x, gate, heads, dv, param_dtype, trainable) -> SymbolicTensor:
    """Qwen3_5RMSNormGated(x, gate) over the value head dim (modeling_qwen3_5.py)."""
    T = settings.T
    grad = x.requires_grad or gate.requires_grad or trainable
    x32 = walk.cast(x, "fp32")
    inv = walk.new(T * heads, "fp32", False)
    normed32 = walk.new(T * heads * dv, "fp32", x.requires_grad)
    normed = walk.cast(normed32, x.dtype)
    weighted = walk.new(T * heads * dv, promote(param_dtype, x.dtype), grad)
    if x.requires_grad:
        walk.save(x32, inv)
    if trainable:
        walk.save(normed)
    walk.transient(x, x32, inv, normed32, normed, weighted)
    gate32 = walk.cast(gate, "fp32")
    activated = walk.new(T * heads * dv, "fp32", gate.requires_grad)
    product = walk.new(T * heads * dv, "fp32", grad)
    if gate.requires_grad:
        walk.save(gate32, weighted)
    if weighted.requires_grad:
        walk.save(activated)
    walk.transient(weighted, gate, gate32, activated, product)
    out = walk.cast(product, x.dtype)
    walk.transient(product, out)
    return out
