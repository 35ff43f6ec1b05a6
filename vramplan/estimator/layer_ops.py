"""The decoder layer op by op, as the symbolic walk (`walk.py`) sees it: what each op saves and holds.

The walk mirrors the forward code of transformers 5.24 (modeling_llama.py and siblings), PEFT 0.21.2
(tuners/lora/layer.py `Linear.forward`, tuners/lora/bnb.py `Linear4bit.forward`) and bitsandbytes 0.50.2
(`Linear4bit.forward`, `MatMul4Bit`), with torch 2.13's autograd saving rules, on the kernels CUDA runs.
Each symbolic tensor has an identity, so a tensor saved by several ops (the normed hidden state read by
q/k/v) is counted once, as the tracker counts storages.

Saved-tensor inventory (per decoder layer, T = batch·seq tokens; "rg" = requires grad):
- RMSNorm (HF): `x.to(fp32)` (a new fp32 copy unless x is fp32 already) saved by `pow` and `mul`; rsqrt
  (T·4 B). A frozen weight saves nothing more; a trainable one also saves `y.to(input_dtype)`.
- LayerNorm: under autocast an fp32 op: fp32 copy of the input, mean and rstd (T·4 B each); output fp32.
- frozen nn.Linear: saves nothing (its weight needs no grad; autograd saves the input only for dW).
  Trainable: the input in the compute dtype; with fp32 master weights under autocast also the bf16 copy of
  the weight held in autocast's cast cache.
- bitsandbytes Linear4bit: `x.to(compute_dtype)` (transient), output `.to(input dtype)`; MatMul4Bit saves
  no activation (ctx.tensors = (None, B)).
- LoRA branch (PEFT Linear): `x.to(adapter dtype)` (fp32 by default: a new tensor); dropout p>0 saves a
  bool mask (CUDA native_dropout; CPU's non-fused path would save an fp32 noise tensor instead); lora_A
  saves its input in the autocast dtype (a new copy unless already that dtype); lora_B saves lora_A's
  output (T·r). On a bnb base under autocast PEFT does not cast x first. Each target makes its own copies.
- RoPE: q·cos + rotate_half(q)·sin saves only cos/sin (shared); the result dtype promotes with cos, which
  has the residual stream's dtype (fp32 after kbit prep).
- SDPA / flash: q, k, v (cast to the autocast dtype: new copies if they were fp32), output, fp32
  logsumexp (B·heads·S). GQA without a mask uses `enable_gqa` (no repeat). Eager: repeat_kv copies,
  fp32 softmax output and its cast (B·heads·S² each), output and its transposed contiguous copy.
- Gated MLP: gate output (SiLU input), SiLU output and up output (saved by the product); fused gate_up
  (Phi-3) keeps the T·2I storage alive through its views; plain MLP saves fc1's output (GELU input).
- bitsandbytes Linear8bitLt (LLM.int8) -> MatMul8bitLt, CUDA's path (bitsandbytes sends CPU inputs to
  MatMul8bitFp instead; the harness routes them back): keeps its input in `ctx.tensors` (not a saved tensor:
  checkpointing does not drop it, a recompute's copy dies with the recompute's graph); the output has the
  input's dtype (int8_scaled_mm(..., dtype=A.dtype), a custom op autocast leaves alone): fp32 after kbit prep.
- DoRA (PEFT `DoraLinearLayer.forward`): per target, the base and lora results saved by the two products,
  three fp32 vectors per output feature, and transients while the target runs: an `in × in` identity (and
  its autocast cast, saved while the lora weight lives), the lora weight and the base weight in x's dtype,
  s·BA and W + s·BA (`_dora_weight_norm`), then three fp32 T·out products.
- Gradient checkpointing (HF, non-reentrant): per layer only its input hidden state; one layer's
  activations are recomputed during backward. Inside a checkpointed forward a layer holds only what Python
  references (operands, the residual, DoRA's weight-sized locals), not what autograd would save (`refs`).
- Alive without being saved: the decoder loop's reference to the layer input, the model's `inputs_embeds`
  until its forward returns, the attention residual through the MLP (`pinned`).
"""

from __future__ import annotations

from vramplan.estimator.walk import BYTES, Ctx, S, Tok, Walk, promote
from vramplan.spec import ModelSpec


def _linear(w: Walk, c: Ctx, x: Tok, name: str, out_f: int, trainable: bool, quantized: bool) -> Tok:
    T = c.T
    if quantized and c.int8:
        # bitsandbytes Linear8bitLt -> MatMul8bitLt (autograd/_functions.py, 0.50.2; CUDA's path): keeps its
        # input A in ctx.tensors whenever A needs a gradient; quantizes A.to(fp16) row-wise to int8 and returns
        # int8_scaled_mm(..., dtype=A.dtype): the output is in x's dtype (a custom op: autocast does not apply)
        out = w.new(T * out_f, x.dt, x.rg)
        if x.rg:
            if x.id not in w.saved:
                w.ctx_only += x.nbytes
            w.ctx_saved[x.id] = x.nbytes
            w.save(x)
        ca = w.new(x.numel, "int8", False)
        w.transient(x, w.new(x.numel, "fp16", False), ca)  # int8_vectorwise_quant(A.to(fp16)): A16 then dies
        w.transient(x, ca, out)  # int8_mixed_scaled_mm
    elif quantized:
        xc = w.cast(x, c.bnb_cd)
        out = w.new(T * out_f, c.bnb_cd, x.rg)
        w.transient(x, xc, out)
        out = w.cast(out, x.dt)
    else:
        xc = w.cast(x, c.ac) if c.ac else x
        out = w.new(T * out_f, c.ac or c.wdt, x.rg or trainable)
        w.transient(x, xc, out)
        if trainable:
            w.save(xc)
    w.tail = 0
    if name not in c.lora:
        return out
    # LoRA branch: lora_B(lora_A(dropout(x))) * scaling
    xa = x if (quantized and c.ac) else w.cast(x, c.ad)
    if c.dropout:
        mask = w.new(x.numel, "bool", False)
        w.save(mask)
        xd = w.new(xa.numel, xa.dt, xa.rg)
    else:
        xd = xa
    in_f = int(x.numel.real)  # the walk runs per token
    held, kept, wx = _dora_weight_norm(w, c, (x, xa, xd, out), in_f, out_f, quantized) if c.dora else (0, 0, 0)
    xin = w.cast(xd, c.ac) if c.ac else xd
    w.save(xin)
    a = w.new(T * c.rank, c.ac or c.ad, True)
    w.save(a)
    bout = w.new(T * out_f, c.ac or c.ad, True)
    w.transient(x, xa, xd, xin, a, bout, out)
    if quantized and not c.ac:
        bout = w.cast(bout, out.dt)  # peft lora/bnb.py: `output.to(expected_dtype)` when autocast is off
    res = w.new(T * out_f, promote(out.dt, bout.dt), True)
    if c.dora:
        # result_dora = (m/||W+sBA|| - 1)·base + (m/||W+sBA||)·lora·s: both products save their tensor operand
        # (the base result and the lora result); m/||.|| is fp32 (the magnitude is), so are the products.
        base = out
        if c.dropout:
            # with dropout DoRA does not reuse the base result: it recomputes F.linear(dropout(x), W) with W in
            # x's dtype; autograd saves W (its autocast copy, or W itself): a weight-sized tensor per target
            if c.ac and c.ac != xd.dt:
                w.const += out_f * in_f * BYTES[c.ac]
            else:
                w.const += wx  # the weight in x's dtype, if that was a copy, now saved rather than held
                held -= wx
            base = w.new(T * out_f, c.ac or xd.dt, True)
        w.save(base, bout)
        pdt = promote(c.ad, base.dt)
        # per output feature: the detached norm (divisor of m/||.||), m/||.|| and m/||.|| - 1 (mul operands)
        w.const += out_f * (BYTES[xd.dt] + 2 * BYTES[pdt])
        prods = [w.new(T * out_f, pdt, True) for _ in range(3)]  # (m-1)·base, m·lora, (m·lora)·s
        w.transient(x, xa, xd, a, bout, out, *prods, extra=held, extra_ref=held - kept)  # (xin: saved only)
        res = w.new(T * out_f, promote(out.dt, pdt), True)
        # backward reaches DoRA's first saving node after the nodes that save nothing: the result's .to(dtype)
        # (a gradient in the result's dtype), result + result_dora (the base's share in its own dtype) and
        # `· s` (m·lora's gradient); measured where a checkpointed layer's recompute starts
        cast = not quantized and res.dt != out.dt
        w.tail = T * out_f * (BYTES[pdt] + (BYTES[res.dt] if cast else 0) + (BYTES[out.dt] if out.dt != res.dt else 0))
    if not quantized:
        res = w.cast(res, out.dt)
    return res


def _dora_weight_norm(
    w: Walk, c: Ctx, live: tuple[Tok, ...], in_f: int, out_f: int, quantized: bool
) -> tuple[int, int, int]:
    """DoRA's weight-sized intermediates inside one target's forward: (what stays alive until it returns, the
    part of it only autograd keeps, the base weight's copy in x's dtype).

    peft/tuners/lora/dora.py `DoraLinearLayer.forward` (peft 0.21.2, DoRA caching off, as in training):
    `get_lora_weight` runs lora_B(lora_A(eye(in))) with an `in × in` identity in the adapter dtype (autocast
    casts it, and lora_A's mm saves the cast for lora_A's gradient, alive while the lora weight is: not under
    checkpointing, which keeps no saved tensor); the lora weight and the base weight (dequantized first when
    4-/8-bit) are moved to x's dtype, and the column norm of W + s·BA allocates s·BA and the sum before
    `linalg_vector_norm` (fp32 accumulation, no copy under CUDA autocast). The lora weight and the base weight
    in x's dtype stay alive until forward returns. Measured op by op under the tracker on single DoRA layers
    (in² and weight terms separate) and in checkpointed 7B QLoRA layers (peak at the identity's cast).
    """
    wn = in_f * out_f
    xdt = live[2].dt  # PEFT casts x to the adapter dtype (a bnb base under autocast leaves it)
    cdt = c.ac or c.ad  # lora_B(lora_A(eye)) output
    eye = in_f * in_f * BYTES[c.ad]
    eye_c = in_f * in_f * BYTES[c.ac] if c.ac and c.ac != c.ad else 0
    a_out = in_f * c.rank * BYTES[cdt]
    kept = (eye_c or eye) + a_out  # saved by lora_A's and lora_B's mm
    w.transient(*live, extra=eye + eye_c)  # the identity's autocast cast
    # lora_B(lora_A(eye)): the lora weight; with checkpointing the cast is gone (lora_A saved nothing)
    w.transient(*live, extra=eye + eye_c + a_out + wn * BYTES[cdt], extra_ref=eye + a_out + wn * BYTES[cdt])
    lw = wn * BYTES[xdt]
    wdt = ("fp32" if c.int8 else c.wdt) if quantized else c.wdt  # int8_vectorwise_dequant computes in fp32
    if quantized:
        # dequantize: 4-bit -> the original dtype; int8 -> A·SCB·(1/127), two fp32 weight-sized temporaries
        dq = wn * BYTES[wdt] * (2 if c.int8 else 1)
        w.transient(*live, extra=kept + lw + dq, extra_ref=lw + dq)
    wx = wn * BYTES[xdt] if (quantized or wdt != xdt) else 0
    # s·BA and W + s·BA, both in x's dtype, while the norm runs
    w.transient(*live, extra=kept + lw + wx + 2 * wn * BYTES[xdt], extra_ref=lw + wx + 2 * wn * BYTES[xdt])
    return kept + lw + wx, kept, wx


def norm(w: Walk, c: Ctx, m: ModelSpec, x: Tok, trainable: bool, dim: int = 0) -> Tok:
    """A norm over the last `dim` features of x (hidden_size by default; qwen3's q/k norms: head_dim)."""
    h = dim or m.hidden_size
    T = x.numel / h  # rows
    if m.norm == "layer":
        dt = "fp32" if c.ac else x.dt
        xi = w.cast(x, dt)
        out = w.new(T * h, dt, x.rg or trainable)
        if x.rg or trainable:
            w.save(xi, w.new(T, "fp32", False), w.new(T, "fp32", False))
        w.transient(x, xi, out)
        return out
    x32 = w.cast(x, "fp32")
    rs = w.new(T, "fp32", False)
    y32 = w.new(T * h, "fp32", x.rg)
    y = w.cast(y32, x.dt)
    out = w.new(T * h, promote(c.ndt, x.dt), x.rg or trainable)
    if x.rg:
        w.save(x32, rs)
    if trainable:
        w.save(y)
    w.transient(x, x32, y32, y, out)
    return out


def _attention(w: Walk, c: Ctx, m: ModelSpec, q: Tok, k: Tok, v: Tok, kv_store: Tok | None) -> Tok:
    T = c.T
    heads, kvh = m.num_attention_heads, m.num_key_value_heads
    rg = q.rg or k.rg or v.rg
    masked = c.masked
    if c.attn == "eager":
        dt = c.ac or q.dt
        qc, kc, vc = w.cast(q, dt), w.cast(k, dt), w.cast(v, dt)
        if kvh != heads:
            kc, vc = w.new(T * m.q_dim, dt, k.rg), w.new(T * m.q_dim, dt, v.rg)
        scores = T * heads * S  # B·heads·S² = T·heads·S
        sc = w.new(scores, dt, rg)
        probs32 = w.new(scores, "fp32", rg)
        probs = w.new(scores, dt, rg)
        out = w.new(T * m.q_dim, dt, rg)
        if rg:
            w.save(qc, kc, probs32, probs, vc)
            if m.attn_softcap:  # gemma2: scores / cap -> tanh (saves its output) -> * cap
                w.save(w.new(scores, dt, True))
        w.transient(qc, kc, vc, sc, probs32, probs, out)
        return w.new(T * m.q_dim, dt, rg)  # transpose(1, 2).contiguous()
    dt = c.ac or q.dt
    qc, kc, vc = w.cast(q, dt), w.cast(k, dt), w.cast(v, dt)
    if masked and kvh != heads:  # repeat_kv before SDPA when a mask is passed (sdpa_attention.py)
        kc, vc = w.new(T * m.q_dim, dt, k.rg), w.new(T * m.q_dim, dt, v.rg)
    out = w.new(T * m.q_dim, dt, rg)
    lse = w.new(T * heads, "fp32", False)  # B·heads·S
    if rg:
        w.save(qc, kc, out, lse)
        w.save(kv_store if (kv_store is not None and vc is v) else vc)
        if masked:
            # the memory-efficient kernel takes the bool mask as an additive bias in q's dtype (torch
            # `convert_boolean_attn_mask`: B·1·S·S) and saves it for backward
            w.save(w.new(T * S, dt, False))
    w.transient(qc, kc, vc, out)
    return out


def _rope(w: Walk, q: Tok, rd: str) -> Tok:
    return w.new(q.numel, promote(q.dt, rd), q.rg)


def decoder_layer(w: Walk, c: Ctx, m: ModelSpec, x: Tok, trainable: bool) -> Tok:
    """One decoder layer; returns its output hidden state."""
    T, rd = c.T, x.dt
    q_quant = c.quant

    def lin(inp: Tok, name: str) -> Tok:
        spec = next(li for li in m.linears if li.name == name)
        return _linear(w, c, inp, name, spec.out_features, trainable, q_quant)

    n1 = norm(w, c, m, x, trainable)
    names = {li.name for li in m.linears}
    kv_store = None
    if "q_proj" in names:
        q, k, v = lin(n1, "q_proj"), lin(n1, "k_proj"), lin(n1, "v_proj")
    else:
        fused = "qkv_proj" if "qkv_proj" in names else "query_key_value"
        qkv = lin(n1, fused)
        kv_store = qkv  # q, k, v are views of one storage
        q = Tok(qkv.id, T * m.q_dim * BYTES[qkv.dt], qkv.dt, qkv.rg, T * m.q_dim)
        k = Tok(qkv.id, T * m.kv_dim * BYTES[qkv.dt], qkv.dt, qkv.rg, T * m.kv_dim)
        v = Tok(qkv.id, T * m.kv_dim * BYTES[qkv.dt], qkv.dt, qkv.rg, T * m.kv_dim)
    if m.head_norm_params and m.norm == "rms":  # qwen3: RMSNorm over head_dim on q and k before RoPE
        q = norm(w, c, m, q, trainable, m.head_dim)
        k = norm(w, c, m, k, trainable, m.head_dim)
    q, k = _rope(w, q, rd), _rope(w, k, rd)
    a = _attention(w, c, m, q, k, v, kv_store)
    o = lin(a, "o_proj" if "o_proj" in names else "dense")
    if m.norms_per_layer == 4:  # gemma2: post_attention_layernorm on the attention output
        o = norm(w, c, m, o, trainable)
    if m.parallel_residual:
        n2 = n1 if m.norms_per_layer == 1 else norm(w, c, m, x, trainable)
        mo = _mlp(w, c, m, n2, lin)
        return w.new(T * m.hidden_size, promote(promote(mo.dt, o.dt), rd), True)
    h1 = w.new(T * m.hidden_size, promote(rd, o.dt), x.rg or o.rg)
    w.pinned[h1.id] = h1.nbytes  # the residual, alive through the MLP for the second residual add
    n2 = norm(w, c, m, h1, trainable)
    mo = _mlp(w, c, m, n2, lin)
    if m.norms_per_layer == 4:
        mo = norm(w, c, m, mo, trainable)
    del w.pinned[h1.id]
    return w.new(T * m.hidden_size, promote(h1.dt, mo.dt), h1.rg or mo.rg)


def _down(w: Walk, lin, x: Tok, name: str) -> Tok:
    """The MLP's down projection; records what it saves (freed first in the layer's backward), except what it
    keeps in ctx.tensors (int8): that lives until its backward has run."""
    before, ctx_before = w.saved_bytes, sum(w.ctx_saved.values())
    out = lin(x, name)
    w.down_saved = w.saved_bytes - before - (sum(w.ctx_saved.values()) - ctx_before)
    return out


def _mlp(w: Walk, c: Ctx, m: ModelSpec, x: Tok, lin) -> Tok:
    T, i = c.T, m.intermediate_size
    if m.mlp == "gated":
        # act_fn(gate_proj(x)) * up_proj(x): the activation waits for up_proj
        g = lin(x, "gate_proj")
        act = w.new(T * i, g.dt, g.rg)
        if g.rg:
            w.save(g)
        w.transient(g, act)
        w.pinned[act.id] = act.nbytes
        u = lin(x, "up_proj")
        del w.pinned[act.id]
        prod = w.new(T * i, promote(act.dt, u.dt), g.rg or u.rg)
        if prod.rg:
            w.save(act, u)
        w.transient(act, u, prod)
        return _down(w, lin, prod, "down_proj")
    if m.mlp == "gated_fused":
        gu = lin(x, "gate_up_proj")
        act = w.new(T * i, gu.dt, gu.rg)
        prod = w.new(T * i, gu.dt, gu.rg)
        if gu.rg:
            w.save(gu, act)
        w.transient(gu, act, prod)
        return _down(w, lin, prod, "down_proj")
    if m.mlp == "plain":
        up, down = ("fc1", "fc2") if m.model_type == "phi" else ("dense_h_to_4h", "dense_4h_to_h")
        f = lin(x, up)
        if m.hidden_act == "gelu_new":
            # NewGELUActivation: 0.5·x·(1 + tanh(c·(x + 0.044715·pow(x, 3)))) (transformers/activations.py)
            # saves x for pow, tanh's output, and both factors of the last product. Under autocast `pow` is an
            # fp32 op: it saves an fp32 copy of x and everything after it is fp32 but 0.5·x.
            hi = "fp32" if c.ac else f.dt
            g = w.new(T * i, hi, f.rg)
            if f.rg:  # pow saves its (autocast-cast) input, not x itself
                w.save(w.cast(f, hi), w.new(T * i, hi, True), w.new(T * i, f.dt, True), w.new(T * i, hi, True))
        else:
            g = w.new(T * i, f.dt, f.rg)
            if f.rg:
                w.save(f)
        w.transient(f, g)
        return _down(w, lin, g, down)
    # MoE (Mixtral, transformers 5 MixtralExperts): each token visits top_k experts, gathered per expert.
    # Saved per routed token: the gate_up output (2I, kept whole by the SiLU's and product's views), the SiLU
    # output (I), the expert output scaled by its routing weight (H); router softmax (T·E fp32). With LoRA on
    # the experts (PEFT `target_parameters`, ParamWrapper) the expert weights require grad, so the gathered
    # input (H) and the down-projection input (I) are saved too, and PEFT materialises each layer's weight
    # deltas (E·3·I·H in the compute dtype), saved for the backward: a per-layer constant, not per token.
    k, e, h = m.num_experts_per_tok, m.num_local_experts, m.hidden_size
    dt = c.ac or x.dt
    expert_lora = bool(c.lora & {"w1", "w3", "w2"})
    if x.rg or expert_lora:
        w.save(w.new(T * k * (3 * i + h), dt, True), w.new(2 * T * e, "fp32", False))
        if expert_lora:
            w.save(w.new(T * k * (h + i), dt, True))
            w.const += e * 3 * i * h * BYTES[dt]
    w.transient(w.new(T * k * 2 * i, dt, True))
    return w.new(T * h, dt, x.rg)
