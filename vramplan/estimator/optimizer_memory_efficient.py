"""The optimizers people pick to save memory: GaLore, APOLLO, torchao's low-bit AdamW, schedule-free AdamW,
Muon, Adam-mini, BAdam. States as each library allocates them, traced on CPU (tests/estimator/
test_optimizer_memory_efficient.py runs every one that runs on CPU and holds these bytes to its `state`).

Names are HF `TrainingArguments.optim`'s (transformers 5.24 `OptimizerNames`) where it has them; LLaMA-Factory
(`use_galore`, `use_apollo`, `use_muon`, `use_adam_mini`, `use_badam`) and axolotl (`optimizer: muon`,
`ao_adamw_8bit`, ...) map onto them (sources/configs).
"""

from __future__ import annotations

from vramplan.estimator.params import Shape, numel, trainable_shapes
from vramplan.spec import ModelSpec, TrainSpec
from vramplan.units import ceil_div

GALORE = ("galore_adamw", "galore_adamw_8bit", "galore_adafactor")
APOLLO = ("apollo_adamw",)
PROJECTED = tuple(f"{o}{s}" for o in (*GALORE, *APOLLO) for s in ("", "_layerwise"))
TORCHAO = {"adamw_torch_8bit": (256, 1.0, 256), "adamw_torch_4bit": (128, 0.5, 16), "adamw_torch_fp8": (256, 1.0, 0)}
OTHERS = ("schedule_free_adamw", "muon", "adam_mini", "badam")
MEMORY_EFFICIENT_OPTIMIZERS: tuple[str, ...] = (*PROJECTED, *TORCHAO, *OTHERS)
# torchao/optim/adam.py `_AdamBase._new_buffer` (torchao 0.18.0): a state is quantized only when
# `p.numel() >= 4096 and p.numel() % block_size == 0`; else a plain tensor in the parameter's dtype.
TORCHAO_MIN_QUANT_NUMEL = 4096
BNB_OPTIM_BLOCK = 256  # bitsandbytes Optimizer2State absmax block (GaLoreAdamW8bit is a bnb Optimizer2State)
BNB_MIN_8BIT_SIZE = 4096


def is_layerwise(optim: str) -> bool:
    """HF `*_layerwise`: one optimizer per parameter, stepped from a post-accumulate-grad hook that frees the
    gradient at once (transformers trainer.py `optimizer_hook`: `optimizer_dict[param].step(); zero_grad()`),
    so gradients never exist all together."""
    return optim.endswith("_layerwise")


def _is_projected(shape: Shape, m: ModelSpec) -> bool:
    """GaLore / APOLLO / Muon work on the 2-D weights of the decoder layers: HF's `optim_target_modules` of
    LLaMA-Factory's `galore_target: all` (every Linear but lm_head), not embeddings or lm_head (vocab rows)."""
    return len(shape) == 2 and m.vocab_size not in shape


def _projected_states(shape: Shape, rank: int, elem: int, optim: str) -> int:
    """One targeted (m, n) weight: the gradient projected to rank r along its shorter side (states r·max(m, n))
    and the projector's r·min(m, n) matrix, both in the parameter dtype (galore_torch/galore_projector.py
    `GaLoreProjector.project`, proj_type std; apollo_torch/random_projector.py likewise stores its
    `ortho_matrix`, plus a 0-dim `scaled_grad`)."""
    rows, cols = shape
    r = min(rank, rows, cols)
    long_side, short_side = max(rows, cols), min(rows, cols)
    projected = (long_side, r) if rows >= cols else (r, long_side)
    # GaLoreAdafactor upcasts a half-precision gradient before projecting: its projector is fp32
    proj = r * short_side * (4 if optim.startswith("galore_adafactor") else elem)
    if optim.startswith("galore_adamw_8bit"):
        k = numel(projected)
        states = 2 * (k + 4 * ceil_div(k, BNB_OPTIM_BLOCK)) if k >= BNB_MIN_8BIT_SIZE else 2 * 4 * k
    elif optim.startswith("galore_adafactor"):
        states = 4 * (projected[0] + projected[1] + 1)  # factored row / col second moments + RMS, fp32
    else:
        states = 2 * numel(projected) * elem
    return states + proj + (elem if optim.startswith("apollo") else 0)


def _torchao_state(k: int, elem: int, optim: str) -> int:
    """One torchao state of k elements: codes + fp32 scale per block + (8/4-bit) its own fp32 qmap
    (torchao/optim/subclass_8bit.py OptimState8bit, subclass_4bit.py OptimState4bit packs 2 codes a byte,
    subclass_fp8.py OptimStateFp8 float8_e4m3fn codes); small or ragged tensors stay plain."""
    block, code_bytes, qmap = TORCHAO[optim]
    if k < TORCHAO_MIN_QUANT_NUMEL or k % block:
        return k * elem
    return int(k * code_bytes) + 4 * (k // block) + 4 * qmap


def _adam_mini_vmean(m: ModelSpec, t: TrainSpec, shapes: list[tuple[Shape, int]]) -> int:
    """Adam-mini's `vmean` elements (adam_mini 1.1.1 `Adam_mini.step`): one per output row of a 2-D weight
    (embeddings and lm_head too), one for a 1-D tensor, and for the layers' `q_proj` / `k_proj` one per
    (query / key-value) head, their `m` being reshaped to heads × rest (names as Adam-mini matches them)."""
    total = sum(n * (s[0] if len(s) == 2 else 1) for s, n in shapes)
    if t.uses_lora:
        return total
    layers = t.freeze_trainable_layers if t.method == "freeze" else None
    heads = {"q_proj": m.num_attention_heads, "k_proj": m.num_key_value_heads}
    for lin in m.linears:
        if lin.name in heads:
            count = layers if layers is not None else m.instances(lin)
            total -= count * (lin.out_features - heads[lin.name])
    return total


def memory_efficient_states(m: ModelSpec, t: TrainSpec, param_bytes: int) -> tuple[int, int]:
    """(optimizer state bytes, step temporaries) of `t.optim` for the trainable tensors.

    - galore_* / apollo_* (GaLoreAdamW, GaLoreAdamW8bit, GaLoreAdafactor, APOLLOAdamW): targeted 2-D weights
      as `_projected_states`, at rank `t.optim_rank`; other tensors two AdamW states (GaLoreAdafactor:
      factored). Step temporaries: the projector refresh (every update_proj_gap steps, step 1 included) runs
      `torch.linalg.svd` on an fp32 copy of the largest gradient (galore_projector.py
      `get_orthogonal_matrix`: `matrix.data.float()`, U m·k, Vh k·n, k = min), and the update is projected
      back to the full shape in the parameter dtype.
    - adamw_torch_8bit / 4bit / fp8 (torchao AdamW8bit / AdamW4bit / AdamWFp8): two `_torchao_state`s and a
      0-dim fp32 `step` per tensor; the step is a torch.compile'd fused kernel per tensor (no temporaries).
    - schedule_free_adamw (schedulefree.AdamWScheduleFree): `z` and `exp_avg_sq`, param dtype.
    - muon (torch.optim.Muon, LLaMA-Factory's Muon): `momentum_buffer` for the 2-D layer weights, AdamW's two
      states for the rest; Newton–Schulz on the largest weight holds X, X·Xᵀ and two products in bf16
      (torch/optim/_muon.py `_zeropower_via_newtonschulz`).
    - adam_mini: `m` (param dtype) and `vmean` (`_adam_mini_vmean`).
    - badam (badam 1.4 `BlockOptimizer`, LLaMA-Factory's `use_badam`, mode layer): the base AdamW steps
      fp32 copies of the active block's half-precision parameters (its param_groups hold them), so fp32 Adam
      states and that fp32 copy for the active block only (the trainable layers of `--method freeze`); during
      the step the block's gradients in fp32. (`step` is a CPU scalar for the non-fused AdamW.)
    """
    shapes = trainable_shapes(m, t)
    opt = t.optim
    states = temp = 0
    if opt in PROJECTED:
        rank = t.optim_rank
        big = 0
        for s, n in shapes:
            if _is_projected(s, m):
                states += n * _projected_states(s, rank, param_bytes, opt)
                k = min(s)
                big = max(big, 4 * (numel(s) + s[0] * k + k + k * s[1]) + numel(s) * param_bytes)
            elif opt.startswith("galore_adafactor"):  # Adafactor's own rule: factored when 2-D, fp32, + RMS
                states += n * 4 * ((s[0] + s[1]) if len(s) == 2 else numel(s)) + n * 4
            else:
                states += n * 2 * numel(s) * param_bytes
        temp = big
    elif opt in TORCHAO:
        for s, n in shapes:
            states += n * (2 * _torchao_state(numel(s), param_bytes, opt) + 4)
    elif opt == "schedule_free_adamw":
        states = sum(2 * numel(s) * n for s, n in shapes) * param_bytes
    elif opt == "muon":
        big = 0
        for s, n in shapes:
            if _is_projected(s, m):
                states += n * numel(s) * param_bytes
                k = min(s)
                big = max(big, 2 * (2 * numel(s) + 2 * k * k))
            else:
                states += n * 2 * numel(s) * param_bytes
        temp = big
    elif opt == "adam_mini":
        states = (sum(numel(s) * n for s, n in shapes) + _adam_mini_vmean(m, t, shapes)) * param_bytes
    elif opt == "badam":
        active = sum(numel(s) * n for s, n in shapes)
        states = active * (2 * 4 + (4 if param_bytes < 4 else 0))
        temp = active * 4 if param_bytes < 4 else 0
    return states, temp


def largest_gradient_bytes(m: ModelSpec, t: TrainSpec, param_bytes: int) -> int:
    """The gradient alive under a layer-wise optimizer: the largest trainable tensor's."""
    return max((numel(s) for s, _ in trainable_shapes(m, t)), default=0) * param_bytes
