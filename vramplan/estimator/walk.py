"""The symbolic walk behind `activations`: tensors as (bytes per token, dtype, requires-grad) tokens, which
tensors autograd saves, what is alive or referenced at each op, and the settings that shape a walk (`Ctx`).

The walk runs once per token (T = 1); a term that also grows with the sequence length (eager attention's
B·heads·S² scores = T·heads·S) carries the imaginary unit S, so one walk serves every batch and seq:
bytes(T, s) = T·(re + im·s). The decoder layer's ops live in `layer_ops`.
"""

from __future__ import annotations

from dataclasses import dataclass

from vramplan.spec import ModelSpec, TrainSpec

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1, "bool": 1}


def promote(a: str, b: str) -> str:
    return a if a == b else "fp32"


S = 1j  # the unit of a term that also grows with the sequence length (see the module docstring)


@dataclass(slots=True)
class Tok:
    id: int
    nbytes: complex
    dt: str
    rg: bool
    numel: complex


class Walk:
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

    def new(self, numel: complex, dt: str, rg: bool) -> Tok:
        self.n += 1
        return Tok(self.n, numel * BYTES[dt], dt, rg, numel)

    def cast(self, x: Tok, dt: str) -> Tok:
        return x if x.dt == dt else self.new(x.numel, dt, x.rg)

    def save(self, *toks: Tok) -> None:
        for t in toks:
            self.saved[t.id] = t.nbytes

    def transient(self, *toks: Tok, extra: int = 0, extra_ref: int | None = None) -> None:
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
class Ctx:
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


def make_ctx(m: ModelSpec, t: TrainSpec) -> Ctx:
    ac = None if t.mixed_precision == "no" else t.mixed_precision
    attn = t.attn
    if m.model_type in ("gemma2", "bloom"):
        attn = "eager"  # gemma2: _supports_sdpa = False (softcapping); bloom: alibi baddbmm attention
    return Ctx(
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
