"""Which PEFT method trains the adapters, named as PEFT 0.21 names them (`PeftType`, lower case).

- LoRA itself, and the variants that change nothing in memory: `rslora` (the scaling α/√r), `loraplus`
  (LoRA+: a larger learning rate for B), `pissa` / `olora` / `loftq` (initialisations of A and B), `lora_ga`:
  estimated as LoRA, and said so.
- Adapters with their own parameters (`estimator/peft_methods.py` counts them exactly): `adalora`, `ia3`,
  `loha`, `lokr`, `vera`, `oft`, `boft`, `lora_fa` (LoRA with A frozen: peft.optimizers `create_lorafa_optimizer`).
- Prompt learning: `prompt_tuning`, `p_tuning`, `prefix_tuning`: `num_virtual_tokens` virtual tokens.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from vramplan.errors import VramplanError

LORA_EQUIVALENT = ("lora", "rslora", "loraplus", "pissa", "olora", "loftq", "lora_ga")
OWN_ADAPTERS = ("adalora", "ia3", "loha", "lokr", "vera", "oft", "boft", "lora_fa")
PROMPT_LEARNING = ("prompt_tuning", "p_tuning", "prefix_tuning")
PEFT_METHODS: tuple[str, ...] = (*LORA_EQUIVALENT, *OWN_ADAPTERS, *PROMPT_LEARNING)
ALIASES = {"lora+": "loraplus", "lora-plus": "loraplus", "lorafa": "lora_fa", "lora-fa": "lora_fa", "ia3": "ia3",
           "ptuning": "p_tuning", "prompt": "prompt_tuning", "prefix": "prefix_tuning"}  # fmt: skip
# Houlsby / Pfeiffer bottleneck adapters (a down-up MLP inserted after attention and the MLP) are in AdapterHub's
# `adapters` library only: PEFT 0.21.2 has no such PeftType (`adaption_prompt` is LLaMA-Adapter's gated prompts),
# LLaMA-Factory's finetuning_type is lora | oft | freeze | full, axolotl's adapter lora | qlora | llama-adapter
BOTTLENECK_NAMES = ("adapter", "adapters", "houlsby", "pfeiffer", "bottleneck", "bottleneck_adapter")
NUM_VIRTUAL_TOKENS = 20  # a common choice in PEFT's examples (PromptLearningConfig has no default)
OFT_BLOCK_SIZE = 32  # OFTConfig.oft_block_size default (peft 0.21.2)
BOFT_BLOCK_SIZE = 4  # the block size PEFT's BOFT examples use (BOFTConfig: boft_block_size 4)
# IA³'s default targets per model type: peft/utils/constants.py TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING
# (peft 0.21.2); the feedforward ones (TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING) scale their input
IA3_TARGETS = {
    "llama": ("k_proj", "v_proj", "down_proj"), "mistral": ("k_proj", "v_proj", "down_proj"),
    "mixtral": ("k_proj", "v_proj", "w2"), "qwen2": ("q_proj", "v_proj", "down_proj"),
    "qwen3": ("q_proj", "v_proj", "down_proj"), "gemma": ("q_proj", "v_proj", "down_proj"),
    "gemma2": ("q_proj", "v_proj", "down_proj"), "gpt_neox": ("query_key_value", "dense_4h_to_h"),
    "bloom": ("query_key_value", "dense_4h_to_h"), "phi": ("q_proj", "v_proj", "fc2"),
}  # fmt: skip
IA3_FEEDFORWARD = ("down_proj", "fc2", "dense_4h_to_h", "w2")


# How far the estimate of a method's step (its activations walked as LoRA of the same rank on the same targets,
# prompt learning as longer sequences) fell short of, or over, PEFT 0.21.2's traced step on the 4-layer Llama
# of the accuracy grid (batch 2 x seq 128, bf16 autocast, all-linear, r 8; vramplan/measure/peft_trace.py):
# worst forward/backward phase error, rounded up to the next 5 %. It widens the `tight` band of the verdict, as a
# generic family's does. IA3 -3.7 %, VeRA -1.6 %, prompt tuning -1.0 %, P-tuning -2.8 %, prefix tuning +5.3 %,
# LoHa -12.3 %, LoKr -18.6 %, AdaLoRA -18.3 %, OFT -15.3 %, BOFT -38.9 % (its in x in rotation per target).
PEFT_ERROR_BAND = {
    "ia3": 0.05, "vera": 0.05, "prompt_tuning": 0.05, "p_tuning": 0.05, "prefix_tuning": 0.10, "loha": 0.15,
    "lokr": 0.20, "adalora": 0.20, "oft": 0.20, "boft": 0.40, "lora_fa": 0.0,
}  # fmt: skip


class PeftMethod(NamedTuple):
    """`name`: the PEFT method; `num_virtual_tokens` (prompt learning), `block_size` (OFT / BOFT)."""

    name: str = "lora"
    num_virtual_tokens: int = 0
    block_size: int = 0

    @property
    def lora_equivalent(self) -> bool:
        return self.name in LORA_EQUIVALENT

    @property
    def prompt_learning(self) -> bool:
        return self.name in PROMPT_LEARNING

    @property
    def error_band(self) -> float:
        """The estimator's extra relative error for this method (PEFT_ERROR_BAND; 0 for LoRA)."""
        return PEFT_ERROR_BAND.get(self.name, 0.0)

    def as_dict(self) -> dict[str, Any]:
        return {"peft": self.name, "num_virtual_tokens": self.num_virtual_tokens, "block_size": self.block_size}


LORA = PeftMethod()


def bottleneck_error(flag: str, value: str) -> VramplanError:
    """The one line for a Houlsby / bottleneck adapter: no framework vramplan reads trains one."""
    return VramplanError(
        f"{flag} {value}: Houlsby / bottleneck adapters are not in PEFT 0.21, LLaMA-Factory or axolotl (only "
        "AdapterHub's `adapters` library, not modelled); use --method lora (--peft ia3 for the fewest parameters)"
    )


def resolve_peft(
    name: str | None, num_virtual_tokens: int | None = None, block_size: int | None = None
) -> tuple[PeftMethod, tuple[str, ...]]:
    from vramplan.errors import did_you_mean

    text = str(name or "lora").lower()
    if text.replace("-", "_") in BOTTLENECK_NAMES:
        raise bottleneck_error("--peft", str(name))
    text = ALIASES.get(text, text)
    if text not in PEFT_METHODS:
        raise did_you_mean(str(name), PEFT_METHODS, "--peft value", "PEFT's PeftType names")
    notes = []
    if text in LORA_EQUIVALENT and text != "lora":
        notes.append(f"--peft {text} is LoRA in memory (same A and B, other scaling, init or learning rate)")
    if text in OWN_ADAPTERS:
        notes.append(
            f"--peft {text}: its trainable parameters are PEFT's; its activations are walked as LoRA of rank "
            f"--lora-rank on the same targets (traced error up to {PEFT_ERROR_BAND[text]:.0%}, added to the tight band)"
        )
    tokens = 0
    if text in PROMPT_LEARNING:
        tokens = NUM_VIRTUAL_TOKENS if num_virtual_tokens is None else num_virtual_tokens
        if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= 2**16:
            raise VramplanError(f"--num-virtual-tokens must be an integer in [1, 65,536], got {tokens!r}")
    size = 0
    if text in ("oft", "boft"):
        size = block_size if block_size is not None else (OFT_BLOCK_SIZE if text == "oft" else BOFT_BLOCK_SIZE)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise VramplanError(f"--block-size must be a positive integer, got {size!r}")
    return PeftMethod(text, tokens, size), tuple(notes)
