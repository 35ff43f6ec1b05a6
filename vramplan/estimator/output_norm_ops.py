"""The norm on a decoder layer's MLP output, the layer's last saving op in the families whose layer ends in one:
post-norm layers (OLMo 2 / 3, EXAONE 4: `post_norm_ops`), sandwich-norm ones (Gemma 2 / 3's
`post_feedforward_layernorm`, GLM-4's `post_mlp_layernorm`: `layer_ops`) and Gemma 4's (`gemma4_ops`)
(family_traits.OUTPUT_NORM).

What it changes in a checkpointed layer's backward (torch 2.13 torch/utils/checkpoint.py, non-reentrant: the
recompute stops once the layer's last saved tensor is packed again, `_StopRecomputationError`):
- the recompute does not stop inside the MLP's down projection, as a Llama layer's does at lora_B's saves: it
  runs through PEFT's `result + lora_B(lora_A(x)) * scaling` (tuners/lora/layer.py `Linear.forward`, 0.21.2),
  whose scaled product is alive beside lora_B's output, the base output and the input's copy, and on into the
  norm;
- backward reaches the recompute at the norm's first node that needs a saved tensor, holding the incoming T·H
  gradient and, where the norm casts its fp32 product back (`.to(input_dtype)` / `.type_as(x)`), that cast's
  fp32 gradient: not the T·H gradient of a Llama layer's LoRA scaling (`ActivationBytes.hidden_grad_bytes`,
  which `Walk.recompute_tail` replaces here);
- the norm's backward is the layer's first, with every tensor the layer saved still alive
  (`ActivationBytes.output_norm_backward`, peak.py's output-norm moment).
Traced on the tiny grid (tests/oracle/test_oracle_tiny.py FAMILY_GRID: gemma3_text, glm4, gemma4_text; OLMo 2 /
3 and EXAONE 4), 2 × 64 tokens.
"""

from __future__ import annotations

from collections.abc import Callable

from vramplan.estimator.walk import BYTES, SymbolicTensor, Walk, WalkSettings
from vramplan.spec import ModelSpec
from vramplan.spec.family_traits import FP32_PRODUCT_NORM


def output_norm(
    walk: Walk,
    settings: WalkSettings,
    m: ModelSpec,
    mlp_out: SymbolicTensor,
    residual_dtype: str,
    norm: Callable[[SymbolicTensor], SymbolicTensor],
) -> SymbolicTensor:
    """`norm(mlp_out)`, the layer's output norm (module docstring); returns its output."""
    T = settings.T
    if "down_proj" in settings.lora_targets and not settings.dora and not settings.lora_kernels:
        # the down projection's scaled LoRA product beside what its last op held (`live[-1]`)
        per_token, per_layer = walk.live[-1]
        scaled = T * m.hidden_size * BYTES[settings.autocast_dtype or settings.adapter_dtype]
        walk.live.append((per_token + scaled, per_layer))
    saved_before = walk.saved_bytes
    normed = norm(mlp_out)
    # its backward runs before the MLP's: what it saved is freed, with the down projection's, by the MLP's peak
    walk.down_saved += walk.saved_bytes - saved_before
    cast_back = m.model_type in FP32_PRODUCT_NORM and mlp_out.dtype != "fp32"
    incoming = BYTES[settings.autocast_dtype or residual_dtype]
    walk.recompute_tail = T * m.hidden_size * ((4 if cast_back else 0) - incoming)
    return normed
