"""The symbolic walk behind `activations`: tensors as (bytes per token, dtype, requires-grad) tokens, which
tensors autograd saves, what is alive or referenced at each op, and the settings that shape a walk
(`WalkSettings`).

The walk runs once per token (T = 1); a term that also grows with the sequence length (eager attention's
B·heads·S² scores = T·heads·S) carries the imaginary unit S, so one walk serves every batch and seq:
bytes(T, s) = T·(re + im·s). The decoder layer's ops live in `layer_ops`.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import NamedTuple

from vramplan.estimator.adapters import adapter_dtype
from vramplan.spec import DTYPE_BYTES, ModelSpec, TrainSpec
from vramplan.spec.family_traits import HYBRID_LINEAR_ATTENTION, PER_LAYER_SHAPES

BYTES = {**DTYPE_BYTES, "bool": 1, "int32": 4, "int64": 8}  # the walk also holds bool masks and index tensors


def promote(a: str, b: str) -> str:
    return a if a == b else "fp32"


S = 1j  # the unit of a term that also grows with the sequence length (see the module docstring)


class SymbolicTensor(NamedTuple):
    """A tensor of the walk: its identity, bytes and elements per token, dtype, and whether it requires grad."""

    id: int
    nbytes: complex
    dtype: str
    requires_grad: bool
    numel: complex


class Walk:
    """Symbolic forward: creates tensors, records which are saved, tracks the largest transient set."""

    __slots__ = (
        "count",
        "ctx_only",
        "ctx_saved",
        "down_saved",
        "live",
        "mixer_backward",
        "mixer_workspace",
        "per_layer_saved",
        "pinned",
        "recompute_stop",
        "recompute_tail",
        "referenced",
        "saved",
    )

    def __init__(self) -> None:
        # saved through `ctx.tensors` attributes (MatMul8bitLt) rather than save_for_backward: checkpointing's
        # saved-tensor hooks never see them, so they stay alive through a checkpointed forward too (each once,
        # whether or not another op also saves it: under checkpointing those saves are dropped)
        self.ctx_saved: dict[int, complex] = {}
        self.ctx_only: complex = 0  # the part no op saves through autograd (a recompute does not keep it)
        self.down_saved: complex = 0
        # gradients the layer's last linear leaves alive before its first node that needs saved tensors (where
        # a checkpointed layer's recompute starts), beyond the incoming T·hidden gradient
        self.recompute_tail: complex = 0
        self.per_layer_saved = 0  # saved bytes that do not scale with tokens (PEFT's MoE weight deltas)
        # a token mixer whose own backward can outgrow the MLP's (Qwen3.5's DeltaNet): what the layer has saved
        # up to the op whose backward peaks (delta_net_ops)
        self.mixer_backward: complex = 0
        self.mixer_workspace: complex = 0  # the gradients and temporaries alive there
        self.count = 0  # tensors created so far (the next one's identity)
        self.saved: dict[int, complex] = {}
        self.live: list[tuple[complex, int]] = []  # (per token, per layer) bytes alive at each op
        self.pinned: dict[int, complex] = {}  # referenced through a stretch of ops (residuals, operands-to-be)
        # (per token, per layer) bytes referenced at each op: its operands, the pinned tensors, the extras; what
        # a checkpointed forward holds, where autograd keeps nothing
        self.referenced: list[tuple[complex, int]] = []
        # how many `live` entries a checkpointed layer's recompute reaches: it stops once the layer's last saved
        # tensor is packed again (torch/utils/checkpoint.py non-reentrant `_StopRecomputationError`); None: all
        self.recompute_stop: int | None = None

    def new(self, numel: complex, dtype: str, requires_grad: bool) -> SymbolicTensor:
        self.count += 1
        return SymbolicTensor(self.count, numel * BYTES[dtype], dtype, requires_grad, numel)

    def cast(self, x: SymbolicTensor, dtype: str) -> SymbolicTensor:
        return x if x.dtype == dtype else self.new(x.numel, dtype, x.requires_grad)

    def save(self, *tensors: SymbolicTensor) -> None:
        for tensor in tensors:
            self.saved[tensor.id] = tensor.nbytes

    def mark(self, name: str) -> None:
        """A named point of the layer's forward ("mlp", "down"); only a recording walk keeps it
        (`vramplan.estimator.alloc_events`)."""

    def transient(self, *tensors: SymbolicTensor, extra: int = 0, extra_ref: int | None = None) -> None:
        """Record what is alive at this op: everything saved so far plus the op's unsaved operands, and `extra`
        bytes that do not scale with tokens (DoRA's weight-sized intermediates), of which `extra_ref` (default:
        all) are referenced rather than only saved by autograd."""
        held = {tensor.id: tensor.nbytes for tensor in tensors} | self.pinned
        unsaved = sum(nbytes for tensor_id, nbytes in held.items() if tensor_id not in self.saved)
        self.live.append((sum(self.saved.values()) + unsaved, self.per_layer_saved + extra))
        self.referenced.append((sum(held.values()), extra if extra_ref is None else extra_ref))

    @property
    def saved_bytes(self) -> complex:
        return sum(self.saved.values())


def scaled(walk: Walk, x: SymbolicTensor) -> SymbolicTensor:
    """`x * multiplier` (a Python float, or a tensor that needs no grad): a new tensor in x's dtype; a float
    saves nothing."""
    out = walk.new(x.numel, x.dtype, x.requires_grad)
    walk.transient(x, out)
    return out


class WalkSettings(NamedTuple):
    """The training settings that shape a decoder layer's walk (dtypes as `BYTES` keys)."""

    T = 1  # the walk counts per token
    masked: bool  # an explicit attention mask (sliding window shorter than seq): repeat_kv + mem-efficient
    autocast_dtype: str | None  # None: no autocast
    weight_dtype: str  # dtype of unquantized linear weights
    norm_dtype: str  # dtype of norm weights
    adapter_dtype: str  # LoRA adapter dtype
    quantized: bool  # bitsandbytes linear layers (4-bit or int8)
    int8: bool  # LLM.int8 (Linear8bitLt) rather than 4-bit
    bnb_compute_dtype: str  # bnb_4bit_compute_dtype
    lora_targets: frozenset[str]
    lora_dropout: bool  # a dropout with p > 0 on the LoRA branch
    lora_rank: int
    dora: bool
    attn: str
    liger: bool = False  # Liger's RMSNorm, SwiGLU and RoPE kernels in place of the model's ops (layer_ops.py)
    # a pre-quantized base (spec/prequantized_base.py TrainingKernel): what its frozen linears save ("" none)
    # and how many weight-sized copies in the compute dtype they hold while dequantizing, and with the output
    prequantized: str = ""
    dequant_copies: int = 0
    matmul_copies: int = 0
    # ---- older releases (spec/stack.py) ----
    repeat_kv: bool = False  # SDPA gets k/v repeated to every head even without a mask (transformers < 4.54)
    matmul4bit_keeps_input: bool = False  # MatMul4Bit's ctx.tensors = (A, B) (bitsandbytes < 0.44)
    bnb_compute_from_input: bool = False  # Linear4bit computes in its input's dtype when fp32/bf16 (bnb < 0.47)
    lora_kernels: frozenset[str] = frozenset()  # axolotl's fused LoRA Functions: "qkv", "o", "mlp"
    # this layer's non-Linear parameters PEFT adapts through `target_parameters` (ParamSpec names: gpt-oss's
    # "gate_up_proj", "down_proj", "router.weight"), set per layer by activations.layer_kinds
    parameter_adapters: frozenset[str] = frozenset()
    # ---- hybrids (Qwen3.5): the layer's token mixer, and the sequence length its chunked kernels pad to ----
    mixer: str = ""  # "linear_attention" (gated DeltaNet) or "full_attention"; "" every other family
    seq: int = 0  # tokens per sequence (chunk padding, per-chunk states); 0 where the walk does not need it


@functools.lru_cache(maxsize=256)
def dense_layer_spec(m: ModelSpec) -> ModelSpec:
    """The ModelSpec a dense-MLP layer of an MoE model walks (DeepSeek-V3's first `first_k_dense_replace`
    layers: a gated MLP of `dense_intermediate_size`, no router, experts or shared experts)."""
    return replace(
        m, mlp="gated", intermediate_size=m.dense_intermediate_size, moe_params=(), num_local_experts=0,
        num_experts_per_tok=0, shared_intermediate_size=0, dense_mlp_layers=(),
    )  # fmt: skip


@functools.lru_cache(maxsize=64)
def _gemma4_layer_specs(m: ModelSpec) -> tuple[ModelSpec, ...]:
    """Gemma 4 and Gemma 3n: each layer's own head_dim, key heads and linears (spec/gemma4.py, spec/gemma3n.py)."""
    from vramplan.spec.gemma3n import per_layer_linears

    out = []
    for index, kind in enumerate(m.layer_types):
        head_dim, kv_heads, linears, act = per_layer_linears(m, index)
        window = m.sliding_window if kind == "sliding_attention" else None
        out.append(replace(m, head_dim=head_dim, num_key_value_heads=kv_heads, linears=linears, sliding_window=window,
                           layer_types=(kind,), num_hidden_layers=1, hidden_act=act))  # fmt: skip
    return tuple(out)


@functools.lru_cache(maxsize=256)
def nope_layer_spec(m: ModelSpec) -> ModelSpec:
    """The ModelSpec a NoPE layer walks (SmolLM3's `no_rope_layers`): the same layer without RoPE."""
    return replace(m, rope=False)


def layer_specs(m: ModelSpec) -> tuple[ModelSpec, ...]:
    """The ModelSpec each decoder layer walks, bottom layer first."""
    if m.model_type in PER_LAYER_SHAPES:
        return _gemma4_layer_specs(m)
    if not m.no_rope_layers and not m.dense_mlp_layers:
        return (m,) * m.num_hidden_layers
    dense = dense_layer_spec(m) if m.dense_mlp_layers else m  # Llama 4: dense or routed, RoPE or NoPE
    kinds = ((dense if index in m.dense_mlp_layers else m) for index in range(m.num_hidden_layers))
    return tuple(nope_layer_spec(s) if i in m.no_rope_layers else s for i, s in enumerate(kinds))


def effective_attn(m: ModelSpec, t: TrainSpec) -> str:
    """The attention the model really runs: gemma2 has `_supports_sdpa = False` (softcapping) and bloom's alibi
    attention is a baddbmm, so both run eager whatever --attn says."""
    return "eager" if m.model_type in ("gemma2", "bloom") else t.attn


def masked_layers(m: ModelSpec, t: TrainSpec) -> tuple[bool, ...]:
    """Which decoder layers get an explicit attention mask: the sliding-window ones whose window the sequence
    reaches (transformers 5.24 masking_utils `_ignore_causal_mask_sdpa` skips the mask only while
    kv_length < window; full-attention layers run SDPA causal without one). Mistral / Mixtral slide every
    layer; Gemma 3, OLMo 3 and EXAONE 4 their `sliding_attention` layers (modeling_gemma3.py, 5.25
    modeling_olmo3.py / modeling_exaone4.py `causal_mask_mapping`)."""
    n = m.num_hidden_layers
    if effective_attn(m, t) == "flex_attention":  # causal, sliding and packed masks are BlockMasks (block tables)
        return (False,) * n
    if t.packing and effective_attn(m, t) == "sdpa":
        # packed rows (position_ids restarting inside a row): `find_packed_sequence_indices` turns the causal
        # skip off and SDPA gets the block-diagonal B·1·S·S mask (masking_utils.py `_preprocess_mask_arguments`)
        return (True,) * n
    if m.model_type == "falcon":  # FalconModel: create_causal_mask(allow_is_causal_skip=False), for ALiBi too
        return (True,) * n
    if m.model_type == "llama4_text":  # chunked RoPE layers: create_chunked_causal_mask's `local_size` (5.25)
        chunk = m.config.get("attention_chunk_size")
        return tuple(kind == "chunked_attention" and t.seq >= chunk for kind in m.layer_types)
    window = m.sliding_window
    if window is None or t.seq < window:
        return (False,) * n
    if m.model_type in ("mistral", "mixtral", "starcoder2", "ministral3"):  # every layer slides (Starcoder2Model, 5.25)
        return (True,) * n
    if m.model_type in (
        "gemma3_text", "gemma3n_text", "gemma4_text", "olmo3", "exaone4", "cohere2", "ministral", "smollm3"
    ):  # fmt: skip
        return tuple(kind == "sliding_attention" for kind in m.layer_types)
    return (False,) * n


def walk_settings(m: ModelSpec, t: TrainSpec) -> WalkSettings:
    autocast_dtype = None if t.mixed_precision == "no" else t.mixed_precision
    attn = effective_attn(m, t)
    kernel = None
    if t.checkpoint is not None:  # a pre-quantized base's kernels, loaded only for one
        from vramplan.spec.prequantized_base import training_kernel

        kernel = training_kernel(t.checkpoint, autocast_dtype or t.dtype)
    return WalkSettings(
        prequantized=kernel.matmul if kernel else "",
        dequant_copies=kernel.dequant_copies if kernel else 0,
        matmul_copies=kernel.matmul_copies if kernel else 0,
        masked=any(masked_layers(m, t)),
        autocast_dtype=autocast_dtype,
        weight_dtype=t.dtype,
        norm_dtype="fp32" if t.kbit_prep else t.dtype,
        adapter_dtype=adapter_dtype(t),  # fp32 (PEFT autocast_adapter_dtype=True); the base's before PEFT 0.12
        # the LoRA branch as PEFT's bnb / awq / aqlm layers run it (no input cast under autocast)
        quantized=t.quant != "none" or (kernel is not None and not kernel.peft_casts_input),
        int8=t.quant == "int8",
        bnb_compute_dtype=t.compute_dtype,
        lora_targets=frozenset(t.lora_target) if t.uses_lora else frozenset(),
        lora_dropout=t.lora_dropout > 0 and t.uses_lora,
        lora_rank=t.lora_rank,
        dora=t.dora,
        attn=attn,
        liger=t.liger_kernels and m.norm == "rms",
        repeat_kv=t.stack.sdpa_repeats_kv,
        matmul4bit_keeps_input=t.stack.matmul4bit_keeps_input,
        bnb_compute_from_input=t.stack.bnb_compute_from_input,
        lora_kernels=frozenset(t.lora_kernels),
        seq=t.seq if m.model_type in HYBRID_LINEAR_ATTENTION else 0,
    )
