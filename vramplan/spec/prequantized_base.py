"""Training LoRA on a pre-quantized base: what transformers + PEFT keep and allocate for each checkpoint format.

A checkpoint whose config.json carries a `quantization_config` loads quantized whatever the training config
says; `resolve_base` turns it into the base the estimate trains on, and `training_kernel` says how the
format's frozen linears run in training. What each format stores is counted by
`vramplan.estimator.served_weights.matrix_bytes` (the same counts as serving, with transformers' layout).
Read from (transformers 5.24 quantizers/, PEFT 0.21.2 utils/other.py, gptqmodel 7.7.0, aqlm 1.1.7,
compressed-tensors 0.20.1):

- GPTQ (`GptqHfQuantizer` → optimum 2.3 → gptqmodel): the trainable kernels (BACKEND.AUTO_TRAINABLE:
  TritonV2Linear, TorchLinear; Marlin / ExLlama raise on `train()`, `BaseQuantLinear.train`) run
  nn_modules/qlinear/torch.py `TorchLinear._forward_eager`: `weights = self.dequantize_weight()` (fp16, the
  scales' dtype; torch.compile'd, so its unpacking fuses), `.to(x.dtype)`, `torch.matmul(x, weights)`.
  The input needs a gradient, so autograd saves the dequantized weight: one full-precision copy of every
  quantized linear lives from its forward until its backward. gptqmodel registers `g_idx` (int32 · in) for
  every linear, act-order or not, and fp16 scales (`_register_gptq_buffers`).
- AWQ (`AwqQuantizer` → gptqmodel, trainable from gptqmodel 5.0): AwqGEMMLinear's `AwqGemmFn`
  (nn_modules/qlinear/gemm_awq.py) saves qweight, qzeros, scales only; its forward dequantizes the whole weight
  for more than 1024 rows and matmuls, its backward dequantizes it again: a transient copy, nothing saved.
- FP8 (`FineGrainedFP8HfQuantizer`, is_trainable): integrations/finegrained_fp8.py `FP8LinearFunction` saves
  the fp8 weight and its scales; forward is the Triton / DeepGEMM fp8 matmul (activations quantized per
  token group); backward `_dequantize_fp8_weight` casts the weight to the gradient's dtype (one copy, scaled in
  place). fbgemm_fp8 is inference-only (`is_trainable` False).
- AQLM (`AqlmHfQuantizer`, trainable with aqlm >= 1.0.2): inference.py `_QuantizedMatmul.forward` saves its
  input (with codes, codebooks, scales); for more than 6 rows `code1x16_matmat_dequant` (cuda_kernel.cpp)
  allocates the out × in weight and matmuls; backward's `..._dequant_transposed` does it again.
- compressed-tensors (`CompressedTensorsHfQuantizer`): without `use_optimized_inference` (opt-in, inference
  only) the model is decompressed by a forward pre-hook on its first forward
  (model_compressor.py `add_decompress_hook`): the linears become dense weights in the model dtype, and each
  forward fake-quantizes the weight (quantization/lifecycle/forward.py `forward_quantize`): a dense model and
  a transient quantize–dequantize of each weight. Training saves nothing beyond a dense frozen linear.
- MXFP4 (`Mxfp4HfQuantizer.is_trainable` False): the Trainer refuses it; gpt-oss is fine-tuned with
  `Mxfp4Config(dequantize=True)`, dense in bf16.
- NVFP4 (`NVFP4HfQuantizer.is_trainable` False): transformers' Trainer refuses it; axolotl trains LoRA on
  NVFP4 checkpoints with its own kernels plugin (not read here): counted as stored, with one dequantized copy
  of a weight per matmul, as FP8's backward does.
- bitsandbytes pre-quantized (`-bnb-nf4-bf16`, `-BNB-NF4`): the checkpoint's quantization is bitsandbytes
  nf4: QLoRA, as `--quant nf4`.
PEFT's `prepare_model_for_kbit_training` is what casts the rest of a model to fp32; TRL and the HF Trainer
call it for bitsandbytes models only (`is_loaded_in_4bit` / `is_loaded_in_8bit`), LLaMA-Factory not at all,
axolotl also for `gptq: true`, where PEFT skips the cast (`is_gptq_quantized`): a pre-quantized base other
than bitsandbytes keeps its embeddings, norms and lm_head in the model dtype.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from vramplan.errors import VramplanError
from vramplan.spec.checkpoint_quant import CheckpointQuant, read_checkpoint_quant

Matmul = Literal["saves_weight", "saves_input", "transient", "dense"]


@dataclass(frozen=True, slots=True)
class TrainingKernel:
    """How a frozen quantized linear runs forward under autograd. `matmul`: what it saves beyond the quantized
    tensors ("saves_weight": the dequantized weight; "saves_input": its input; "transient": nothing; "dense":
    the model is decompressed, a frozen dense linear). `dequant_copies`: weight-sized tensors in the compute dtype
    alive at once while the weight is dequantized; `matmul_copies`: those still alive when the output is
    allocated. `backward_copies`: the weight dequantized again in backward (AWQ, FP8, AQLM, NVFP4), transient.
    `peft_casts_input`: PEFT's LoRA layer casts x to the adapter dtype even under autocast (tuners/lora/gptq.py,
    and lora.Linear for the nn.Linear subclasses FP8Linear and compressed-tensors' linears); its awq.py and
    aqlm.py skip the cast under autocast, as bnb.py does (PEFT 0.21.2)."""

    matmul: Matmul
    dequant_copies: int
    matmul_copies: int
    backward_copies: int
    kernel: str
    peft_casts_input: bool = True


def training_kernel(q: CheckpointQuant, compute_dtype: str) -> TrainingKernel:
    """The training behaviour of format `q` with matmuls in `compute_dtype` (module docstring for sources)."""
    cast = 0 if compute_dtype == "fp16" else 1  # dequantized in fp16 (the scales' dtype), then .to(x.dtype)
    if q.source == "compressed-tensors":  # quantize then dequantize the dense weight: two copies, then F.linear
        return TrainingKernel("dense", 2, 1, 0, "compressed-tensors, decompressed on the first forward")
    if q.format == "gptq":
        return TrainingKernel("saves_weight", 1 + cast, 1, 0, "gptqmodel TorchLinear (dequantize + torch.matmul)")
    if q.format == "awq":
        return TrainingKernel("transient", 1 + cast, 1, 1 + cast, "gptqmodel AwqGemmFn", peft_casts_input=False)
    if q.format == "aqlm":
        return TrainingKernel("saves_input", 1, 1, 1, "aqlm code1x16_matmat_dequant", peft_casts_input=False)
    if q.format in ("fp8", "nvfp4"):  # the fp8 kernel reads the weight as stored; backward dequantizes it
        return TrainingKernel("transient", 0, 0, 1, "FP8LinearFunction" if q.format == "fp8" else "NVFP4 (assumed)")
    return TrainingKernel("dense", 0, 0, 0, q.format)


def model_checkpoint(config: Mapping[str, Any]) -> CheckpointQuant | None:
    """The checkpoint format of a model config.json, None when it has none or one vramplan does not count (the
    config reader says so: sources/configs/reader.py)."""
    try:
        return read_checkpoint_quant(config)
    except VramplanError:
        return None


def resolve_base(
    checkpoint: CheckpointQuant | None, quant: str | None, method: str, assumed: bool
) -> tuple[CheckpointQuant | None, str | None, str, tuple[str, ...]]:
    """(checkpoint format trained on, --quant, method, notes) for a base whose checkpoint is `checkpoint`.

    bitsandbytes checkpoints become `--quant` (QLoRA); MXFP4 is trained dequantized; any other format trains
    LoRA on its stored weights (method "lora": a QLoRA request on it is LoRA on the checkpoint's format).
    A `quant` the user set wins over the checkpoint (said). `assumed`: the format was read from the name.
    """
    if checkpoint is None:
        return None, quant, method, ()
    said = f"{checkpoint.label} (assumed from the model name; its config.json was not available)" if assumed else ""
    if checkpoint.format == "bitsandbytes":
        bnb = "int8" if checkpoint.bits == 8 else checkpoint.bnb_quant_type
        if quant is None:
            return None, bnb, "qlora" if method == "lora" else method, ()
        return None, quant, method, ()
    if quant not in (None, "none"):
        return None, quant, method, (f"--quant {quant} replaces the checkpoint's {checkpoint.label} weights",)
    if checkpoint.format == "mxfp4" and method in ("full", "freeze"):
        # Mxfp4Config(dequantize=True) loads dense bf16 experts (integrations/mxfp4.py `Mxfp4Dequantize`): what
        # the gpt-oss full fine-tuning recipes train (axolotl examples/gpt-oss/*-fft-*.yaml)
        note = "MXFP4 is not trainable in transformers (Mxfp4HfQuantizer.is_trainable): estimated dequantized"
        return None, "none", method, (note + " (Mxfp4Config(dequantize=True)): the experts in the load dtype",)
    if method in ("full", "freeze"):
        raise VramplanError(
            f"the base is a pre-quantized {checkpoint.label} checkpoint: its weights cannot be trained with "
            f"--method {method}; use --method lora (LoRA on the quantized base)"
        )
    if checkpoint.format == "mxfp4":
        note = "MXFP4 is not trainable in transformers (Mxfp4HfQuantizer.is_trainable): estimated dequantized"
        return None, "none", "lora", (note + " (Mxfp4Config(dequantize=True)), as gpt-oss is fine-tuned",)
    notes = [f"pre-quantized base: {said}"] if said else []
    if checkpoint.format == "nvfp4" and checkpoint.source != "compressed-tensors":
        notes.append(
            "transformers' NVFP4 quantizer is inference-only (is_trainable False); estimated as stored with a "
            "dequantized copy per matmul (axolotl's kernels plugin, not read)"
        )
    if checkpoint.source == "fbgemm_fp8":
        notes.append("fbgemm_fp8 is inference-only in transformers (is_trainable False); estimated as fine-grained FP8")
    return checkpoint, "none", "lora", tuple(notes)
