"""What is trained, and against what: the training stage (SFT, reward modelling, preference, RL) and its keys.

Names as the frameworks spell them: LLaMA-Factory `stage: pt|sft|rm|ppo|dpo|kto` (with `pref_loss:
sigmoid|orpo|simpo|ipo`), axolotl `rl: dpo|ipo|orpo|kto|simpo|grpo`, TRL's trainers (DPOTrainer `loss_type`,
`precompute_ref_log_probs`, GRPOConfig `beta`, `num_generations`, `max_completion_length`, `use_vllm`,
`vllm_mode`, `vllm_gpu_memory_utilization`). Defaults are TRL 1.16.0's (trl/trainer/dpo_config.py,
grpo_config.py): DPO beta 0.1, GRPO beta 0.0 (no reference model), 8 generations, 512 completion tokens,
generation with `model.generate`, colocated vLLM at 0.3 of the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from vramplan.errors import VramplanError

Stage = Literal["sft", "pt", "rm", "dpo", "ipo", "kto", "orpo", "simpo", "cpo", "grpo", "ppo", "ebft", "asft"]
STAGES: tuple[str, ...] = (
    "sft", "pt", "rm", "dpo", "ipo", "kto", "orpo", "simpo", "cpo", "grpo", "ppo", "ebft", "asft"
)  # fmt: skip
# names the frameworks use for a stage whose memory is another's: DPO's loss variants (cDPO = label
# smoothing, RPO = + NLL term on the chosen) change the loss only; `reward` is TRL's RewardTrainer
STAGE_ALIASES = {"cdpo": "dpo", "rpo": "dpo", "reward": "rm", "sigmoid": "dpo"}
Reference = Literal["model", "adapter", "precomputed", "none"]
REFERENCES: tuple[str, ...] = ("model", "adapter", "precomputed", "none")
Generation = Literal["hf", "vllm-colocate", "vllm-server"]
GENERATIONS: tuple[str, ...] = ("hf", "vllm-colocate", "vllm-server")

# stages whose loss compares with a reference policy (TRL DPOTrainer, KTOTrainer; PPO's KL penalty; LLaMA-Factory's
# ASFT, `stage: sft` with `use_asft_loss`: a KL term to a frozen copy's logits)
WITH_REFERENCE = frozenset({"dpo", "ipo", "kto", "ppo", "asft"})
# stages that score a chosen and a rejected completion of each prompt in one concatenated batch of 2 × batch
PAIRED = frozenset({"rm", "dpo", "ipo", "orpo", "simpo", "cpo"})
# stages that generate their completions during training
GENERATING = frozenset({"grpo", "ppo", "ebft"})

ASFT_ALPHA = 0.1  # LLaMA-Factory finetuning_args.py asft_alpha
DPO_BETA = 0.1  # DPOConfig.beta (TRL 1.16.0); LLaMA-Factory pref_beta 0.1
GRPO_BETA = 0.0  # GRPOConfig.beta (TRL 1.16.0): 0.0 = no reference model loaded
NUM_GENERATIONS = 8  # GRPOConfig.num_generations
MAX_COMPLETION_LENGTH = 512  # GRPOConfig.max_completion_length
VLLM_GPU_MEMORY_UTILIZATION = 0.3  # GRPOConfig.vllm_gpu_memory_utilization (colocate)
# axolotl's energy-based fine-tuning (core/trainers/ebft/args.py, axolotl 0.19.0): `structured` extends
# GRPOConfig (its generation keys are GRPO's); `strided` generates blocks itself (AxolotlStridedEBFTConfig)
EBFT_MODES: tuple[str, ...] = ("structured", "strided")
EBFT_FEATURE_LAYERS = 3  # ebft_feature_layers [0.25, 0.5, 0.75]
EBFT_STRIDE = 8  # ebft_stride
EBFT_CONTEXT_LENGTH = 8  # ebft_context_length
EBFT_GENERATE_MAX_LEN = 8  # ebft_generate_max_len
EBFT_N_SAMPLES = 4  # ebft_n_samples_per_prompt


@dataclass(frozen=True, slots=True)
class StageSpec:
    """The stage of a training step, resolved: `reference` is how the reference policy's log-probs are had
    ("model": a second frozen copy of the model; "adapter": the policy itself with its LoRA adapter disabled,
    TRL's default for a PEFT model; "precomputed": before training; "none"). `fused_lm_head`: TRL 1.16's
    `add_fused_lm_head`, per-token log-probs in vocabulary tiles without the b·s·vocab logits (False: the
    logits are materialized, as LLaMA-Factory's trainers and TRL's RewardTrainer do)."""

    stage: Stage = "sft"
    reference: Reference = "none"
    pref_beta: float = 0.0
    fused_lm_head: bool = False
    num_generations: int = 1
    max_completion_length: int = 0
    generation: Generation = "hf"
    vllm_gpu_memory_utilization: float = 0.0
    reward_model: Reference = "none"  # PPO: a separate reward model ("model") or a LoRA adapter on the policy
    # EBFT (axolotl `rl: ebft`, the `ebft:` block): its mode, the feature layers read, and the strided mode's
    # blocks: a rollout of `ebft_generate_max_len` tokens every `ebft_stride` tokens after `ebft_context_length`,
    # `ebft_n_samples` rollouts per document; `ebft_ce`: ce_coef > 0 scores every position, not just rollouts
    ebft_mode: str = ""
    feature_layers: int = 0
    ebft_stride: int = 0
    ebft_context_length: int = 0
    ebft_generate_max_len: int = 0
    ebft_n_samples: int = 0
    ebft_ce: bool = False

    @property
    def is_sft(self) -> bool:
        return self.stage in ("sft", "pt")

    @property
    def paired(self) -> bool:
        return self.stage in PAIRED

    @property
    def generates(self) -> bool:
        return self.stage in GENERATING

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]


SFT = StageSpec()


def _count(value: Any, flag: str, limit: int) -> int:
    """A positive int up to `limit` (spec/train.py `positive`'s rule; that module imports this one)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise VramplanError(f"{flag} must be an integer in [1, {limit:,}], got {value!r}")
    return value


def _fraction(value: Any, flag: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise VramplanError(f"{flag} must be a number in (0, 1), got {value!r}")
    return float(value)


def resolve_stage(
    *,
    uses_lora: bool,
    stage: str | None = None,
    reference: str | None = None,
    pref_beta: float | None = None,
    fused_lm_head: bool | None = None,
    num_generations: int | None = None,
    max_completion_length: int | None = None,
    generation: str | None = None,
    vllm_gpu_memory_utilization: float | None = None,
    reward_model: str | None = None,
    ebft_mode: str | None = None,
    feature_layers: int | None = None,
    ebft_stride: int | None = None,
    ebft_context_length: int | None = None,
    ebft_generate_max_len: int | None = None,
    ebft_n_samples: int | None = None,
    ebft_ce: bool | None = None,
) -> tuple[StageSpec, tuple[str, ...]]:
    """The stage with TRL 1.16's defaults filled in, and the warnings for settings it does not read.

    Reference: DPO / IPO / KTO / PPO keep one: by default the policy with its adapter disabled under LoRA
    (DPOTrainer with a PeftModel and ref_model None), else a frozen copy; GRPO only when beta > 0 (GRPOConfig
    beta 0.0 by default); ORPO, SimPO, CPO and reward modelling never."""
    from vramplan.errors import did_you_mean

    notes: list[str] = []
    name = str(stage or "sft").lower()
    name = STAGE_ALIASES.get(name, name)
    if name not in STAGES:
        raise did_you_mean(str(stage), STAGES, "--stage value", "LLaMA-Factory stage / axolotl rl names")
    if reference is not None and str(reference).lower() not in REFERENCES:
        raise did_you_mean(str(reference), REFERENCES, "--reference value")
    if generation is not None and str(generation).lower() not in GENERATIONS:
        raise did_you_mean(str(generation), GENERATIONS, "--generation value")
    if pref_beta is not None and (isinstance(pref_beta, bool) or not isinstance(pref_beta, (int, float))):
        raise VramplanError(f"--pref-beta must be a number, got {pref_beta!r}")
    beta = float(pref_beta) if pref_beta is not None else (GRPO_BETA if name in ("grpo", "ebft") else DPO_BETA)
    if name == "asft":  # the KL term's weight: LLaMA-Factory asft_alpha (default 0.1); memory does not depend on it
        beta = float(pref_beta) if pref_beta is not None else ASFT_ALPHA
    if name in ("sft", "pt", "rm", "orpo", "simpo", "cpo"):
        beta = 0.0 if name in ("sft", "pt", "rm") else beta
    strided = name == "ebft" and str(ebft_mode or "").lower() == "strided"  # AxolotlStridedEBFTConfig has no beta
    needs_reference = name in WITH_REFERENCE or (name in ("grpo", "ebft") and beta > 0 and not strided)
    default_reference = ("adapter" if uses_lora else "model") if needs_reference else "none"
    if name == "asft":  # create_ref_model loads the copy; CustomSeq2SeqTrainer.compute_loss calls it as a model
        default_reference = "model"
    ref = str(reference).lower() if reference is not None else default_reference
    if not needs_reference and ref != "none":
        why = "beta is 0" if name in ("grpo", "ebft") else "its loss has no reference"
        notes.append(f"--reference {ref} does nothing with --stage {name} ({why}): ignored")
        ref = "none"
    if needs_reference and ref == "none":
        ref = default_reference
    if ref == "adapter" and not uses_lora:
        raise VramplanError(
            "--reference adapter needs a LoRA policy (--method lora|qlora): a full fine-tune has no adapter to "
            "disable; use --reference model or precomputed"
        )
    if name == "asft" and ref != "model":
        raise VramplanError(
            f"--reference {ref} cannot work with --stage asft: LLaMA-Factory's ASFT calls a frozen reference model "
            "every step (CustomSeq2SeqTrainer.compute_loss); use --reference model"
        )
    if ref == "precomputed" and name in GENERATING:
        raise VramplanError(f"--reference precomputed cannot work with --stage {name}: its completions are generated "
                            "during training; use --reference model or adapter")  # fmt: skip
    generations = completion = 0
    gen: str = "hf"
    utilization = 0.0
    if name in GENERATING:
        generations = NUM_GENERATIONS if name in ("grpo", "ebft") else 1
        if num_generations is not None:
            generations = _count(num_generations, "--num-generations", 1024)
        completion = MAX_COMPLETION_LENGTH
        if max_completion_length is not None:
            completion = _count(max_completion_length, "--max-completion-length", 2**24)
        gen = str(generation).lower() if generation is not None else "hf"
        if gen == "vllm-colocate":
            utilization = VLLM_GPU_MEMORY_UTILIZATION
            if vllm_gpu_memory_utilization is not None:
                utilization = _fraction(vllm_gpu_memory_utilization, "--vllm-gpu-memory-utilization")
    else:
        unused = [flag for flag, value in (("--num-generations", num_generations),
                  ("--max-completion-length", max_completion_length), ("--generation", generation),
                  ("--vllm-gpu-memory-utilization", vllm_gpu_memory_utilization)) if value is not None]  # fmt: skip
        if unused:
            notes.append(f"{', '.join(unused)} applies to --stage grpo|ppo, not {name}: ignored")
    reward = "none"
    if name == "ebft":  # the feature network: the policy with its adapter disabled, else a deepcopy (trainer.py)
        reward = "adapter" if uses_lora else "model"
    if name == "ppo":
        reward = str(reward_model).lower() if reward_model is not None else ("adapter" if uses_lora else "model")
        if reward not in ("model", "adapter"):
            raise did_you_mean(reward, ("model", "adapter"), "--reward-model value")
        if reward == "adapter" and not uses_lora:
            raise VramplanError("--reward-model adapter needs a LoRA policy (--method lora|qlora)")
    # `stage_loss` (resolve_train) derives it from --loss (trl-chunked); direct callers may pass it
    fused = name in ("dpo", "ipo", "kto", "grpo") if fused_lm_head is None else bool(fused_lm_head)
    ebft: dict[str, Any] = {}
    if name == "ebft":
        mode = str(ebft_mode or "structured").lower()
        if mode not in EBFT_MODES:
            raise did_you_mean(mode, EBFT_MODES, "--ebft-mode value", "axolotl ebft.mode")
        ebft = {
            "ebft_mode": mode,
            "feature_layers": _count(feature_layers or EBFT_FEATURE_LAYERS, "ebft.feature_layers", 1024),
        }
        if mode == "strided":
            # the strided trainer generates its own blocks and keeps no reference: GRPO's keys do not apply
            generations, completion, gen, utilization = 1, 0, "hf", 0.0
            ebft |= {
                "ebft_stride": _count(ebft_stride or EBFT_STRIDE, "ebft.stride", 2**20),
                "ebft_context_length": _count(ebft_context_length or EBFT_CONTEXT_LENGTH, "ebft.context_length", 2**24),
                "ebft_generate_max_len": _count(
                    ebft_generate_max_len or EBFT_GENERATE_MAX_LEN, "ebft.generate_max_len", 2**20
                ),
                "ebft_n_samples": _count(ebft_n_samples or EBFT_N_SAMPLES, "ebft.n_samples_per_prompt", 1024),
                "ebft_ce": bool(ebft_ce),
            }  # fmt: skip
        fused = fused and mode == "structured"  # the strided trainer's own chunked log-softmax
    elif any(
        v is not None for v in (ebft_mode, ebft_stride, ebft_context_length, ebft_generate_max_len, ebft_n_samples)
    ):
        notes.append(f"the ebft keys apply to --stage ebft, not {name}: ignored")
    return (
        StageSpec(
            stage=name,  # type: ignore[arg-type]
            reference=ref,  # type: ignore[arg-type]
            pref_beta=beta,
            fused_lm_head=fused and name not in ("sft", "pt", "rm", "asft"),
            num_generations=generations,
            max_completion_length=completion,
            generation=gen,  # type: ignore[arg-type]
            vllm_gpu_memory_utilization=utilization,
            reward_model=reward,  # type: ignore[arg-type]
            **ebft,
        ),
        tuple(notes),
    )


# stages whose TRL trainer patches the model with `add_fused_lm_head` (trl 1.16.0 dpo_trainer.py, kto_trainer.py,
# grpo_trainer.py `__init__`); LLaMA-Factory's trainers (custom DPO / KTO) materialize the logits instead
TRL_FUSED_STAGES = ("dpo", "ipo", "kto", "grpo")


def stage_loss(loss: str, stage: dict[str, Any], explicit: set[str], recipe: str, notes: list[str]) -> str:
    """The one LM-head control: `--loss` (`trl-chunked` = TRL's fused LM head). `--fused-lm-head` /
    `--no-fused-lm-head` (stage keyword `fused_lm_head`) is its deprecated alias for trl-chunked / hf. Unset,
    a stage whose TRL trainer patches the fused head gets trl-chunked (not under the LLaMA-Factory recipe); the
    stage's `fused_lm_head` is then derived from the loss, so the two cannot disagree."""
    alias = stage.pop("fused_lm_head", None)
    decided = "loss" in explicit
    if alias is not None and not (decided and "fused_lm_head" not in explicit):  # a typed --loss beats a file's
        mapped = "trl-chunked" if alias else "hf"
        if decided and loss != mapped:
            flag = "--fused-lm-head" if alias else "--no-fused-lm-head"
            raise VramplanError(f"{flag} (deprecated: = --loss {mapped}) contradicts --loss {loss}: pass --loss only")
        loss, decided = mapped, True
    name = str(stage.get("stage") or "sft").lower()
    name = STAGE_ALIASES.get(name, name)
    if name == "rm":
        if decided and loss != "hf":
            notes.append(f"--loss {loss} does nothing with --stage rm (a hidden x 1 score head, no vocab): ignored")
        return "hf"
    trl_fused = name in TRL_FUSED_STAGES or (name == "ebft" and str(stage.get("ebft_mode") or "") != "strided")
    if not decided and loss == "hf" and trl_fused and not recipe.startswith("llamafactory"):
        loss = "trl-chunked"
    stage["fused_lm_head"] = loss == "trl-chunked" and name not in ("sft", "pt", "asft")  # strided ebft: resolve_stage
    return loss
