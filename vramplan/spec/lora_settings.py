"""A LoRA run's settings resolved against the model: which modules are adapted (`resolve_lora_selection`), what
PEFT does with a MoE model's router and experts (`moe_lora_checks`), and axolotl's fused LoRA kernels
(`resolve_lora_kernels`). The target tables themselves are spec/lora_targets.py's."""

from __future__ import annotations

from collections.abc import Collection

from vramplan.errors import VramplanError
from vramplan.spec.lora_targets import (
    LoraSelection,
    lora_moe_targets,
    resolve_modules_to_save,
    resolve_target_parameters,
    select_lora_targets,
    without_mamba_refused,
)
from vramplan.spec.model import ModelSpec
from vramplan.spec.peft_method import IA3_TARGETS, PeftMethod
from vramplan.spec.train_notes import moe_note

LORA_KERNELS: tuple[str, ...] = ("qkv", "o", "mlp")
TargetParameters = tuple[tuple[str, tuple[int, ...], int], ...]


def resolve_lora_selection(
    model: ModelSpec,
    lora_target: str,
    explicit: Collection[str],
    modules_to_save: str | None,
    target_parameters: str | None,
    uses_lora: bool,
    peft_method: PeftMethod,
    notes: list[str],
) -> tuple[tuple[str, ...], str, LoraSelection, tuple[str, ...], TargetParameters]:
    """The adapted modules: (target names, preset, the selection, modules_to_save, target_parameters).

    IA³'s targets are PEFT's default for the model type unless named; a target list under another method is not
    checked; what matches nothing, what a regex selects in some layers only, and LoRA settings of a run without
    LoRA are said in `notes`; prompt learning adapts no linear."""
    if peft_method.name == "ia3" and "lora_target" not in set(explicit) and lora_target == "all-linear":
        if model.model_type not in IA3_TARGETS:
            raise VramplanError(f"PEFT has no default IA³ targets for {model.model_type}: pass --lora-target NAMES")
        lora_target = ",".join(IA3_TARGETS[model.model_type])
    saved = resolve_modules_to_save(model, modules_to_save)
    # a LoRA target list under another method is a setting nothing reads (axolotl with an empty `adapter:` keeps
    # its lora_target_modules): not checked against the model, said by contradictions() when typed
    selection = select_lora_targets(model, lora_target if uses_lora else "all-linear", saved)
    targets, preset = selection.names, selection.preset
    if uses_lora:
        named = "lora_target" in set(explicit) or lora_target.strip().lower() not in ("all-linear", "all")
        targets, mamba_note = without_mamba_refused(model, targets, named)
        notes += [mamba_note] if mamba_note else []
        if model.model_type == "llama4_text" and preset == "all-linear":
            # PEFT 0.21.2's all-linear also wraps Llama4Router (an nn.Linear subclass whose forward returns a
            # tuple): LoRA's forward then fails (`'tuple' object has no attribute 'dtype'`, lora/layer.py)
            notes.append(
                "LoRA on every nn.Linear but Llama 4's router: PEFT's all-linear also wraps the router and then "
                "fails in its forward; pass the linears as a list (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,"
                "down_proj), as this estimate does"
            )
    if selection.unmatched and uses_lora:
        many = len(selection.unmatched) > 1
        notes.append(
            f"LoRA target{'s' if many else ''} {', '.join(selection.unmatched)} match{'' if many else 'es'} no "
            f"module of {model.name}: PEFT skips {'them' if many else 'it'} and adapts the other targets (it "
            "raises only when none matches)"
        )
    params = resolve_target_parameters(model, target_parameters)
    if (saved or params or selection.embeddings) and not uses_lora:
        notes.append("modules_to_save / target_parameters / embedding targets are LoRA settings: ignored")
        saved, params, selection = (), (), LoraSelection(targets, preset)
    if selection.layers:
        notes.append(
            "LoRA target selects some layers only ("
            + ", ".join(f"{name} in {n}" for name, n in selection.layers)
            + f" of {model.num_hidden_layers}): parameters counted so, activations walked as if in every layer"
        )
    if peft_method.prompt_learning:
        targets, preset = (), "none"  # virtual tokens, no adapted linear
        saved, params, selection = (), (), LoraSelection(targets, preset)
    return targets, preset, selection, saved, params


def moe_lora_checks(
    model: ModelSpec,
    targets: tuple[str, ...],
    preset: str,
    params: TargetParameters,
    *,
    uses_lora: bool,
    dora: bool,
    lora_dropout: float,
    kbit_prep: bool,
    quant: str,
    mixed_precision: str,
    dtype: str,
    notes: list[str],
) -> None:
    """What PEFT refuses or fails at on a MoE model's router and experts (lora.ParamWrapper), as an error (DoRA)
    or in `notes`, and how the fused experts are stored."""
    moe = lora_moe_targets(model, targets) if uses_lora else ()
    if moe and dora:
        raise VramplanError(
            f"--dora cannot adapt {model.name}'s router/experts ({', '.join(p.name for p in moe)}): PEFT's "
            "lora.ParamWrapper does not support DoRA; use --lora-target attn or --no-dora"
        )
    if (moe or params) and lora_dropout > 0 and uses_lora:
        notes.append(
            f"PEFT rejects lora_dropout != 0 on {model.name}'s router/experts (lora.ParamWrapper): "
            "train with --lora-dropout 0 (estimated as given) or --lora-target attn"
        )
    if moe and kbit_prep and quant != "none" and mixed_precision != "no":
        # traced: the autocast baddbmm gives W + s·BA in the autocast dtype while kbit prep left W in fp32, and
        # torch.nn.utils.parametrize refuses a parametrization that changes the dtype (peft 0.21.2
        # tuners/lora/layer.py ParamWrapper._activate_lora); Mixtral and Qwen3-MoE alike
        notes.append(
            f"PEFT fails at the first forward on {model.name}'s router/experts here: kbit prep leaves them fp32 "
            "and the autocast LoRA delta is not (parametrization dtype error): train with --lora-target attn "
            "or --no-kbit-prep (estimated as given)"
        )
    if (
        uses_lora
        and model.fused_expert_params
        and (quant != "none" or moe or (model.from_table and preset == "all-linear"))
    ):
        experts_adapted = bool(moe) or any(len(shape) == 3 for _, shape, _ in params)
        notes.append(moe_note(model, quant, dtype, kbit_prep and quant != "none", experts_adapted))


def resolve_lora_kernels(text: str | None, method: str, dora: bool, peft: str, notes: list[str]) -> tuple[str, ...]:
    """`--lora-kernels qkv,o,mlp` (axolotl's lora_qkv_kernel / lora_o_kernel / lora_mlp_kernel): the fused
    Functions replace PEFT's LoRA branches of LoRA runs; DoRA through them is estimated as PEFT's DoRA."""
    from vramplan.errors import did_you_mean

    names = [n.strip().lower() for n in str(text or "").split(",") if n.strip() and n.strip().lower() != "none"]
    for name in names:
        if name not in LORA_KERNELS:
            raise did_you_mean(name, LORA_KERNELS, "--lora-kernels value")
    if not names:
        return ()
    if method not in ("lora", "qlora") or peft != "lora":
        notes.append("--lora-kernels fuses LoRA branches: ignored without LoRA")
        return ()
    if dora:
        notes.append("--lora-kernels with DoRA: estimated as PEFT's DoRA (the kernels' DoRA path not modelled)")
        return ()
    return tuple(n for n in LORA_KERNELS if n in names)
