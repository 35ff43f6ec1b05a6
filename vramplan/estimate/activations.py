"""Activations: what autograd saves for backward, found by walking the decoder layer op by op.

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

import functools
from dataclasses import dataclass
from typing import NamedTuple

from vramplan.spec import ModelSpec, TrainSpec

_B = {"fp32": 4, "bf16": 2, "fp16": 2, "bool": 1}


def _promote(a: str, b: str) -> str:
    return a if a == b else "fp32"


# The walk runs once per token (T = 1); a term that also grows with the sequence length (eager attention's
# B·heads·S² scores = T·heads·S) carries the imaginary unit S, so one walk serves every batch and seq:
# bytes(T, s) = T·(re + im·s). Walk results are cached by the settings that shape them.
S = 1j


@dataclass(slots=True)
class _Tok:
    id: int
    nbytes: complex
    dt: str
    rg: bool
    numel: complex


class _Walk:
    """Symbolic forward: creates tensors, records which are saved, tracks the largest transient set."""

    __slots__ = ("const", "ctx_only", "ctx_saved", "down_saved", "live", "n", "pinned", "refs", "saved", "tail")

    def __init__(self) -> None:
        # saved through `ctx.tensors` attributes (MatMul8bitLt) rather than save_for_backward: checkpointing's
        # saved-tensor hooks never see them, so they stay alive through a checkpointed forward too (each once,
        # whether or not another op also saves it: under checkpointing those saves are dropped)
        self.ctx_saved: dict[int, complex] = {}
        self.ctx_only: complex = 0  # the part no op saves through autograd (a recompute does not keep it)
        self.down_saved: complex = 0
        # gradients the layer's last linear leaves alive before its first node that needs saved tensors (where
        # a checkpointed layer's recompute starts), beyond the incoming T·hidden gradient
        self.tail: complex = 0
        self.const = 0  # saved bytes that do not scale with tokens (PEFT's MoE weight deltas)
        self.n = 0
        self.saved: dict[int, complex] = {}
        self.live: list[tuple[complex, int]] = []  # (per token, per layer) bytes alive at each op
        self.pinned: dict[int, complex] = {}  # referenced through a stretch of ops (residuals, operands-to-be)
        # (per token, per layer) bytes referenced at each op: its operands, the pinned tensors, the extras; what
        # a checkpointed forward holds, where autograd keeps nothing
        self.refs: list[tuple[complex, int]] = []

    def new(self, numel: complex, dt: str, rg: bool) -> _Tok:
        self.n += 1
        return _Tok(self.n, numel * _B[dt], dt, rg, numel)

    def cast(self, x: _Tok, dt: str) -> _Tok:
        return x if x.dt == dt else self.new(x.numel, dt, x.rg)

    def save(self, *toks: _Tok) -> None:
        for t in toks:
            self.saved[t.id] = t.nbytes

    def transient(self, *toks: _Tok, extra: int = 0, extra_ref: int | None = None) -> None:
        """Record what is alive at this op: everything saved so far plus the op's unsaved operands, and `extra`
        bytes that do not scale with tokens (DoRA's weight-sized intermediates), of which `extra_ref` (default:
        all) are referenced rather than only saved by autograd."""
        held = {t.id: t.nbytes for t in toks} | self.pinned
        unsaved = sum(v for k, v in held.items() if k not in self.saved)
        self.live.append((sum(self.saved.values()) + unsaved, self.const + extra))
        self.refs.append((sum(held.values()), extra if extra_ref is None else extra_ref))

    @property
    def saved_bytes(self) -> complex:
        return sum(self.saved.values())


@dataclass(frozen=True, slots=True)
class _Ctx:
    T = 1  # the walk counts per token
    masked: bool  # an explicit attention mask (sliding window shorter than seq): repeat_kv + mem-efficient
    ac: str | None  # autocast dtype
    wdt: str  # dtype of unquantized linear weights
    ndt: str  # dtype of norm weights
    ad: str  # LoRA adapter dtype
    quant: bool
    int8: bool  # LLM.int8 (Linear8bitLt) rather than 4-bit
    bnb_cd: str  # bnb compute dtype
    lora: frozenset[str]
    dropout: bool
    rank: int
    dora: bool
    attn: str


def _ctx(m: ModelSpec, t: TrainSpec) -> _Ctx:
    ac = None if t.mixed_precision == "no" else t.mixed_precision
    attn = t.attn
    if m.model_type in ("gemma2", "bloom"):
        attn = "eager"  # gemma2: _supports_sdpa = False (softcapping); bloom: alibi baddbmm attention
    return _Ctx(
        # transformers masking_utils `_ignore_causal_mask_sdpa` skips the mask only while kv_length < window
        masked=m.sliding_window is not None and t.seq >= m.sliding_window and m.model_type in ("mistral", "mixtral"),
        ac=ac,
        wdt=t.dtype,
        ndt="fp32" if t.kbit_prep else t.dtype,
        ad="fp32",  # PEFT autocast_adapter_dtype=True keeps adapters in fp32
        quant=t.quant != "none",
        int8=t.quant == "int8",
        bnb_cd=t.compute_dtype,
        lora=frozenset(t.lora_target) if t.uses_lora else frozenset(),
        dropout=t.lora_dropout > 0 and t.uses_lora,
        rank=t.lora_rank,
        dora=t.dora,
        attn=attn,
    )


def _linear(w: _Walk, c: _Ctx, x: _Tok, name: str, out_f: int, trainable: bool, quantized: bool) -> _Tok:
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
        ca = w.new(x.numel / 2, "fp16", False)  # int8 CA (1 B per element)
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
    res = w.new(T * out_f, _promote(out.dt, bout.dt), True)
    if c.dora:
        # result_dora = (m/||W+sBA|| - 1)·base + (m/||W+sBA||)·lora·s: both products save their tensor operand
        # (the base result and the lora result); m/||.|| is fp32 (the magnitude is), so are the products.
        base = out
        if c.dropout:
            # with dropout DoRA does not reuse the base result: it recomputes F.linear(dropout(x), W) with W in
            # x's dtype; autograd saves W (its autocast copy, or W itself): a weight-sized tensor per target
            if c.ac and c.ac != xd.dt:
                w.const += out_f * in_f * _B[c.ac]
            else:
                w.const += wx  # the weight in x's dtype, if that was a copy, now saved rather than held
                held -= wx
            base = w.new(T * out_f, c.ac or xd.dt, True)
        w.save(base, bout)
        pdt = _promote(c.ad, base.dt)
        # per output feature: the detached norm (divisor of m/||.||), m/||.|| and m/||.|| - 1 (mul operands)
        w.const += out_f * (_B[xd.dt] + 2 * _B[pdt])
        prods = [w.new(T * out_f, pdt, True) for _ in range(3)]  # (m-1)·base, m·lora, (m·lora)·s
        w.transient(x, xa, xd, a, bout, out, *prods, extra=held, extra_ref=held - kept)  # (xin: saved only)
        res = w.new(T * out_f, _promote(out.dt, pdt), True)
        # backward reaches DoRA's first saving node after the nodes that save nothing: the result's .to(dtype)
        # (a gradient in the result's dtype), result + result_dora (the base's share in its own dtype) and
        # `· s` (m·lora's gradient); measured where a checkpointed layer's recompute starts
        cast = not quantized and res.dt != out.dt
        w.tail = T * out_f * (_B[pdt] + (_B[res.dt] if cast else 0) + (_B[out.dt] if out.dt != res.dt else 0))
    if not quantized:
        res = w.cast(res, out.dt)
    return res


def _dora_weight_norm(
    w: _Walk, c: _Ctx, live: tuple[_Tok, ...], in_f: int, out_f: int, quantized: bool
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
    eye = in_f * in_f * _B[c.ad]
    eye_c = in_f * in_f * _B[c.ac] if c.ac and c.ac != c.ad else 0
    a_out = in_f * c.rank * _B[cdt]
    kept = (eye_c or eye) + a_out  # saved by lora_A's and lora_B's mm
    w.transient(*live, extra=eye + eye_c)  # the identity's autocast cast
    # lora_B(lora_A(eye)): the lora weight; with checkpointing the cast is gone (lora_A saved nothing)
    w.transient(*live, extra=eye + eye_c + a_out + wn * _B[cdt], extra_ref=eye + a_out + wn * _B[cdt])
    lw = wn * _B[xdt]
    wdt = ("fp32" if c.int8 else c.wdt) if quantized else c.wdt  # int8_vectorwise_dequant computes in fp32
    if quantized:
        # dequantize: 4-bit -> the original dtype; int8 -> A·SCB·(1/127), two fp32 weight-sized temporaries
        dq = wn * _B[wdt] * (2 if c.int8 else 1)
        w.transient(*live, extra=kept + lw + dq, extra_ref=lw + dq)
    wx = wn * _B[xdt] if (quantized or wdt != xdt) else 0
    # s·BA and W + s·BA, both in x's dtype, while the norm runs
    w.transient(*live, extra=kept + lw + wx + 2 * wn * _B[xdt], extra_ref=lw + wx + 2 * wn * _B[xdt])
    return kept + lw + wx, kept, wx


def _norm(w: _Walk, c: _Ctx, m: ModelSpec, x: _Tok, trainable: bool, dim: int = 0) -> _Tok:
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
    out = w.new(T * h, _promote(c.ndt, x.dt), x.rg or trainable)
    if x.rg:
        w.save(x32, rs)
    if trainable:
        w.save(y)
    w.transient(x, x32, y32, y, out)
    return out


def _attention(w: _Walk, c: _Ctx, m: ModelSpec, q: _Tok, k: _Tok, v: _Tok, kv_store: _Tok | None) -> _Tok:
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


def _rope(w: _Walk, q: _Tok, rd: str) -> _Tok:
    return w.new(q.numel, _promote(q.dt, rd), q.rg)


def _layer(w: _Walk, c: _Ctx, m: ModelSpec, x: _Tok, trainable: bool) -> _Tok:
    """One decoder layer; returns its output hidden state."""
    T, rd = c.T, x.dt
    q_quant = c.quant

    def lin(inp: _Tok, name: str) -> _Tok:
        spec = next(li for li in m.linears if li.name == name)
        return _linear(w, c, inp, name, spec.out_features, trainable, q_quant)

    n1 = _norm(w, c, m, x, trainable)
    names = {li.name for li in m.linears}
    kv_store = None
    if "q_proj" in names:
        q, k, v = lin(n1, "q_proj"), lin(n1, "k_proj"), lin(n1, "v_proj")
    else:
        fused = "qkv_proj" if "qkv_proj" in names else "query_key_value"
        qkv = lin(n1, fused)
        kv_store = qkv  # q, k, v are views of one storage
        q = _Tok(qkv.id, T * m.q_dim * _B[qkv.dt], qkv.dt, qkv.rg, T * m.q_dim)
        k = _Tok(qkv.id, T * m.kv_dim * _B[qkv.dt], qkv.dt, qkv.rg, T * m.kv_dim)
        v = _Tok(qkv.id, T * m.kv_dim * _B[qkv.dt], qkv.dt, qkv.rg, T * m.kv_dim)
    if m.head_norm_params and m.norm == "rms":  # qwen3: RMSNorm over head_dim on q and k before RoPE
        q = _norm(w, c, m, q, trainable, m.head_dim)
        k = _norm(w, c, m, k, trainable, m.head_dim)
    q, k = _rope(w, q, rd), _rope(w, k, rd)
    a = _attention(w, c, m, q, k, v, kv_store)
    o = lin(a, "o_proj" if "o_proj" in names else "dense")
    if m.norms_per_layer == 4:  # gemma2: post_attention_layernorm on the attention output
        o = _norm(w, c, m, o, trainable)
    if m.parallel_residual:
        n2 = n1 if m.norms_per_layer == 1 else _norm(w, c, m, x, trainable)
        mo = _mlp(w, c, m, n2, lin)
        return w.new(T * m.hidden_size, _promote(_promote(mo.dt, o.dt), rd), True)
    h1 = w.new(T * m.hidden_size, _promote(rd, o.dt), x.rg or o.rg)
    w.pinned[h1.id] = h1.nbytes  # the residual, alive through the MLP for the second residual add
    n2 = _norm(w, c, m, h1, trainable)
    mo = _mlp(w, c, m, n2, lin)
    if m.norms_per_layer == 4:
        mo = _norm(w, c, m, mo, trainable)
    del w.pinned[h1.id]
    return w.new(T * m.hidden_size, _promote(h1.dt, mo.dt), h1.rg or mo.rg)


def _down(w: _Walk, lin, x: _Tok, name: str) -> _Tok:
    """The MLP's down projection; records what it saves (freed first in the layer's backward), except what it
    keeps in ctx.tensors (int8): that lives until its backward has run."""
    before, ctx_before = w.saved_bytes, sum(w.ctx_saved.values())
    out = lin(x, name)
    w.down_saved = w.saved_bytes - before - (sum(w.ctx_saved.values()) - ctx_before)
    return out


def _mlp(w: _Walk, c: _Ctx, m: ModelSpec, x: _Tok, lin) -> _Tok:
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
        prod = w.new(T * i, _promote(act.dt, u.dt), g.rg or u.rg)
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
            w.const += e * 3 * i * h * _B[dt]
    w.transient(w.new(T * k * 2 * i, dt, True))
    return w.new(T * h, dt, x.rg)


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


@functools.lru_cache(maxsize=4096)
def _walk_layer(m: ModelSpec, c: _Ctx, trainable: bool, rg_in: bool, rd: str) -> _LayerWalk:
    w = _Walk()
    x = w.new(m.hidden_size, rd, rg_in)
    _layer(w, c, m, x, trainable)
    return _LayerWalk(
        w.saved_bytes,
        w.const,
        tuple(w.live),
        tuple(w.refs),
        w.down_saved,
        sum(w.ctx_saved.values()),
        w.ctx_only,
        w.saved.get(x.id, 0),
        w.tail,
    )


@functools.lru_cache(maxsize=4096)
def _walk_final(m: ModelSpec, c: _Ctx, rd: str, trainable: bool) -> tuple[complex, complex]:
    """(saved bytes, output bytes) per token of the final norm."""
    w = _Walk()
    out = _norm(w, c, m, w.new(m.hidden_size, rd, True), trainable)
    return w.saved_bytes, out.nbytes


def activation_bytes(m: ModelSpec, t: TrainSpec) -> ActivationBytes:
    c = _ctx(m, t)
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
    hidden = T * m.hidden_size * _B[rd]
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
        ab = _B[c.ac]
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
    cdb = _B[rd if c.quant else (c.ac or rd)]
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
        dora_backward=_B[c.ac or c.ad] * max((li.weight_params for li in m.linears if li.name in c.lora), default=0)
        if t.dora and c.lora
        else 0,
        down_saved=down_saved,
        layer_ctx=layer_ctx,
        layer_input_saved=layer_input_saved,
        recompute_tail=recompute_tail,
        final_saved=at(final_saved),
        hidden_grad_bytes=T * m.hidden_size * _B[c.ac or rd],
        final_hidden_bytes=at(final_out),
    )
