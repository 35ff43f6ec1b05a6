"""Build the model and optimizer of a training step the way users' Hugging Face recipes do.

- Base model: `AutoConfig.for_model(**config.json)` (our `vramplan_profile` key removed, `use_cache=False`),
  random weights (`AutoModelForCausalLM.from_config(config, dtype=..., attn_implementation=...)`);
  `weights=PATH` loads a checkpoint with `from_pretrained` instead.
- QLoRA: transformers' own bitsandbytes quantizer (`AutoHfQuantizer` for a `BitsAndBytesConfig`) swaps the
  decoder `nn.Linear`s for `Linear4bit` / `Linear8bitLt` on the meta device (lm_head and tied weights kept, as
  `from_pretrained(quantization_config=...)` does), then each weight is drawn on the target device and
  quantized by transformers' `Bnb4bitQuantize` / `Bnb8bitQuantize` one layer at a time: the full-precision
  model never exists.
- `prepare_model_for_kbit_training(model, use_gradient_checkpointing=grad_ckpt)` with PEFT's default kwargs
  when `kbit_prep`; then `model.gradient_checkpointing_enable()` (transformers' defaults: non-reentrant), as
  the Trainer does for `gradient_checkpointing=True`.
- LoRA: `get_peft_model(model, LoraConfig(r, lora_alpha, lora_dropout, target_modules, use_dora,
  target_parameters))`.
- freeze: LLaMA-Factory's `finetuning_type: freeze`: the last N decoder layers trainable, everything else
  frozen (LLaMA-Factory also upcasts the trainable ones to fp32 unless `pure_bf16`; we keep `--dtype`, as the
  estimator).
- Optimizer: the Trainer's two parameter groups (decay / no decay), lr 5e-5, betas (0.9, 0.999), eps 1e-8,
  and the class the Trainer picks for the HF name (transformers 5.24 trainer_optimizer.py), with the
  implementation CUDA would run made explicit: `adamw_torch` = AdamW(foreach=True), `adamw_torch_fused` =
  AdamW(fused=True).

`device`: "cpu" / "cuda" (real tensors), "meta" (meta tensors, for QLoRA traces: `Params4bit` cannot wrap a
FakeTensor, and bitsandbytes registers meta kernels), or "fake" (build inside the caller's FakeTensorMode on a
fake "cpu" device; never call `Module.to()` there: `swap_tensors` fails on fake parameters).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vramplan.errors import VramplanError
from vramplan.measure.cuda_equiv import patched
from vramplan.measure.trainer_setup import build_optimizer, decoder_layers, freeze_all_but_last_layers
from vramplan.spec import ModelSpec, TrainSpec

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Built:
    """A model ready to train and its optimizer; `causal_lm` is the transformers `*ForCausalLM` inside any
    PEFT wrapper (its `lm_head` and loss are what the harness labels as logits)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    causal_lm: nn.Module
    device: torch.device
    notes: tuple[str, ...]


def hf_config(m: ModelSpec, t: TrainSpec, attn: str):
    """The transformers config of `m` (its config.json minus our metadata), training-ready."""
    from transformers import AutoConfig

    cfg = {k: v for k, v in m.config.items() if k != "vramplan_profile"}
    model_type = cfg.pop("model_type")
    for key in ("torch_dtype", "dtype", "transformers_version", "_name_or_path", "architectures"):
        cfg.pop(key, None)
    config = AutoConfig.for_model(model_type, **cfg)
    config.use_cache = False  # training (the Trainer's recipes set it; checkpointing forces it)
    config._attn_implementation = attn
    return config


def supports_sdpa(m: ModelSpec) -> bool:
    """Whether transformers' model class for `m` implements SDPA (gemma2 and bloom do not, 5.24)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config_cls = type(AutoConfig.for_model(m.model_type))
    model_cls = AutoModelForCausalLM._model_mapping.get(config_cls, None)
    return bool(getattr(model_cls, "_supports_sdpa", True))


def bnb_config(t: TrainSpec, m: ModelSpec | None = None):
    """`t`'s BitsAndBytesConfig; for a model with linears bitsandbytes must not take (Gemma 3n's AltUp
    coefficients, spec/gemma3n.py), `llm_int8_skip_modules` names them with lm_head, as a user must."""
    from transformers import BitsAndBytesConfig

    skipped = sorted({li.name for li in m.linears if not li.quantizable}) if m is not None else []
    skip = {"llm_int8_skip_modules": ["lm_head", *skipped]} if skipped and m.model_type == "gemma3n_text" else {}
    if t.quant == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, **skip)
    return BitsAndBytesConfig(
        **skip,
        load_in_4bit=True,
        bnb_4bit_quant_type=t.quant,
        bnb_4bit_use_double_quant=t.double_quant,
        bnb_4bit_compute_dtype=TORCH_DTYPES[t.compute_dtype],
    )


def attn_implementation(t: TrainSpec, device: str) -> tuple[str, str | None]:
    """`t.attn`, except flash_attention_2 off CUDA (or without flash-attn): SDPA's flash kernel saves the
    same."""
    if t.attn == "flex_attention" and device != "cuda":
        # torch 2.13 refuses flex attention's backward on CPU (nn/attention/flex_attention.py `_validate_device`)
        return (
            "sdpa",
            "flex_attention traced as SDPA (its compiled graph saves q, k, v, output, logsumexp; k/v are repeated "
            "to every head first when the head count is not a power of two)",
        )
    if t.attn != "flash_attention_2":
        return t.attn, None
    if device == "cuda":
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            return (
                "sdpa",
                "flash-attn is not installed: traced with SDPA (its flash kernel saves the same tensors)",
            )
        return t.attn, None
    return (
        "sdpa",
        "flash_attention_2 traced as SDPA's flash kernel (same saved tensors: q, k, v, output, logsumexp)",
    )


def build(
    m: ModelSpec, t: TrainSpec, device: str, *, weights: str | None = None, progress: Progress | None = None
) -> Built:
    """Model (+ quantization, kbit prep, checkpointing, LoRA / freeze) and optimizer for `t` on `device`."""
    say = progress or (lambda _msg: None)
    attn, note = attn_implementation(t, device)
    if attn == "sdpa" and not supports_sdpa(m):
        attn, note = "eager", f"{m.model_type} has no SDPA attention in transformers: traced with eager"
    notes = [note] if note else []
    target = torch.device("cpu" if device == "fake" else device)
    with (
        warnings.catch_warnings(),
        _fake_safe_module_apply() if device == "fake" else contextlib.nullcontext(),
    ):
        warnings.simplefilter("ignore", FutureWarning)
        if weights is not None:
            model = _from_pretrained(weights, t, attn, target, say)
        elif t.quant != "none":
            model = _quantized_from_config(m, t, attn, target, say)
            if t.quant == "int8" and target.type == "meta":
                _int8_without_outliers(model)
                notes.append(
                    "int8 on meta: the outlier decomposition (threshold 6.0) is data-dependent and is traced off; "
                    "its T x outlier-columns slices are not counted"
                )
        else:
            say(f"building {m.name} ({t.dtype}, random weights)")
            model = _from_config(m, t, attn, target, say, fake=device == "fake")
        model.config.use_cache = False
        causal_lm = model
        if t.kbit_prep:
            from peft import prepare_model_for_kbit_training

            say("prepare_model_for_kbit_training")
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=t.grad_ckpt)
        if t.grad_ckpt:
            model.gradient_checkpointing_enable()  # what Trainer(gradient_checkpointing=True) calls
        if t.method == "freeze":
            freeze_all_but_last_layers(model, t.freeze_trainable_layers)
        if t.uses_lora:
            from peft import LoraConfig, get_peft_model

            say(f"adding LoRA r={t.lora_rank} to {', '.join(t.lora_target)}")
            meta_dora = t.dora and t.quant in ("nf4", "fp4") and target.type == "meta"
            try:
                with _dora_base_not_copied() if meta_dora else contextlib.nullcontext():
                    model = get_peft_model(
                        model,
                        LoraConfig(
                            r=t.lora_rank,
                            lora_alpha=t.lora_alpha,
                            lora_dropout=t.lora_dropout,
                            target_modules=list(t.lora_target),
                            use_dora=t.dora,
                            task_type="CAUSAL_LM",
                            **_target_parameters(m, t),
                        ),
                    )
            except ValueError as e:  # the real stack refuses it, e.g. dropout on Mixtral's expert parameters
                raise VramplanError(f"PEFT refuses this LoRA setup: {e}") from None
    model.train()
    optimizer = build_optimizer(model, t.optim)
    return Built(model=model, optimizer=optimizer, causal_lm=causal_lm, device=target, notes=tuple(notes))


def _target_parameters(m: ModelSpec, t: TrainSpec) -> dict[str, list[str]]:
    """PEFT's `target_parameters` for t's resolved entries: a parameter every layer adapts by its path inside
    the layer (`mlp.experts.gate_up_proj`), one layer's by its full path (`model.layers.7.mlp...`)."""
    if not t.target_parameters:
        return {}
    stack = m.module_prefix.replace("*", "0") if m.module_prefix else "model.layers.0."
    names = [path.removeprefix(stack) if n == m.num_hidden_layers else path for path, _, n in t.target_parameters]
    return {"target_parameters": names}


def _dora_base_not_copied() -> contextlib.AbstractContextManager[None]:
    """PEFT's `DoraLinearLayer.update_layer` deep-copies a `Linear4bit` base before dequantizing it for the
    initial weight norm (peft/tuners/lora/dora.py, 0.21.2: for FSDP), and `Params4bit` cannot be deep-copied on
    meta. The copy is a temporary at build time, before any step: use the layer itself."""
    from peft.tuners.lora import dora

    return patched(dora, "deepcopy", lambda module: module)


@contextlib.contextmanager
def _fake_safe_module_apply() -> Iterator[None]:
    """`Module._apply` (behind `.to()`, `.float()`, ...) swaps fake parameters with
    `torch.utils.swap_tensors`, which fails: the fake-tensor converter holds weak references to them (torch
    2.13 nn/modules/module.py). PEFT moves each new adapter with `.to()`; during a fake build, move by
    `.data =` (what `_apply` does for real tensors), which allocates the same."""
    from torch._subclasses.fake_tensor import FakeTensor

    original = nn.Module._apply

    def _apply(self: nn.Module, fn: Callable, recurse: bool = True) -> nn.Module:
        if not any(isinstance(t, FakeTensor) for t in (*self._parameters.values(), *self._buffers.values())):
            return original(self, fn, recurse)
        if recurse:
            for child in self.children():
                child._apply(fn)
        for param in self._parameters.values():
            if param is None:
                continue
            with torch.no_grad():
                param.data = fn(param)
                if param.grad is not None:
                    param.grad.data = fn(param.grad)
        for key, buf in self._buffers.items():
            if buf is not None:
                self._buffers[key] = fn(buf)
        return self

    nn.Module._apply = _apply
    try:
        yield
    finally:
        nn.Module._apply = original


def _from_config(
    m: ModelSpec, t: TrainSpec, attn: str, device: torch.device, say: Progress, *, fake: bool
) -> nn.Module:
    """Random weights. Real devices: on meta, then one module at a time on `device` with transformers'
    `_init_weights` (as `from_pretrained` initializes missing weights; half the time of `from_config`, which
    runs torch's init and then transformers'). Fake tensors cost nothing: `from_config` directly."""
    from transformers import AutoModelForCausalLM

    config = hf_config(m, t, attn)
    dtype = TORCH_DTYPES[t.dtype]
    with torch.device("cpu" if fake else "meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    if not fake and device.type != "meta":
        materialize(model, None, dtype, device, say)
    return model


def _from_pretrained(path: str, t: TrainSpec, attn: str, device: torch.device, say: Progress) -> nn.Module:
    from transformers import AutoModelForCausalLM

    if device.type not in ("cpu", "cuda"):
        raise VramplanError("--weights loads a real checkpoint: use it with `vramplan measure`, not `simulate`")
    say(f"loading {path}")
    kwargs: dict[str, Any] = {
        "dtype": TORCH_DTYPES[t.dtype],
        "attn_implementation": attn,
        "device_map": {"": device},
    }
    if t.quant != "none":
        kwargs["quantization_config"] = bnb_config(t)
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise VramplanError(f"--weights {path}: cannot load a checkpoint there ({e})") from None


def _quantized_from_config(m: ModelSpec, t: TrainSpec, attn: str, device: torch.device, say: Progress) -> nn.Module:
    """Build on meta, swap the decoder linears for bitsandbytes ones with transformers' quantizer, then draw
    and quantize one weight at a time on `device` (transformers' Bnb4bitQuantize / Bnb8bitQuantize ops)."""
    from transformers import AutoModelForCausalLM
    from transformers.quantizers import AutoHfQuantizer

    say(f"building {m.name} on meta")
    config = hf_config(m, t, attn)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=TORCH_DTYPES[t.dtype], attn_implementation=attn)
    quantizer = AutoHfQuantizer.from_config(bnb_config(t, m), pre_quantized=False)
    quantizer.preprocess_model(model, device_map={"": device}, dtype=TORCH_DTYPES[t.dtype])
    materialize(model, quantizer, TORCH_DTYPES[t.dtype], device, say)
    quantizer.postprocess_model(model)
    model.hf_quantizer = quantizer
    return model


def _int8_without_outliers(model: nn.Module) -> None:
    """LLM.int8's outlier columns (`threshold` > 0) have a data-dependent count, which meta tensors cannot
    express (bitsandbytes' fake kernels ask for a dynamic size): trace the int8 matmuls with threshold 0."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear8bitLt):
            module.state.threshold = 0.0


def materialize(model: nn.Module, quantizer: Any, dtype: torch.dtype, device: torch.device, say: Progress) -> None:
    """Give every meta parameter and buffer of `model` a value on `device`: quantized bitsandbytes weights for
    the swapped linears (drawn N(0, 0.02) in `dtype`, one at a time), transformers' `_init_weights` for the
    rest."""
    if quantizer is not None:
        import bitsandbytes as bnb

        quantize = quantizer.get_quantize_ops()
        bnb_types: tuple[type, ...] = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    else:
        bnb_types = ()
    std = getattr(model.config, "initializer_range", 0.02) or 0.02
    layers = decoder_layers(model)
    layer_of = {id(mod): i for i, layer in enumerate(layers) for mod in layer.modules()}
    done_layer = -1
    new: dict[int, nn.Parameter] = {}  # tied parameters stay tied
    with torch.no_grad():
        for name, module in model.named_modules():
            i = layer_of.get(id(module))
            if i is not None and i > done_layer:
                say(f"{'quantizing' if bnb_types else 'initializing'} layer {i + 1}/{len(layers)}")
                done_layer = i
            if isinstance(module, bnb_types):
                value = torch.empty(module.weight.shape, dtype=dtype, device=device).normal_(0.0, std)
                if device.type == "meta" and isinstance(module, bnb.nn.Linear8bitLt):
                    # transformers' Bnb8bitQuantize copies the value to CPU first (no data on meta): build the
                    # Int8Params it would, with the same attributes, and quantize on meta
                    kwargs = {k: v for k, v in module.weight.__dict__.items() if k != "SCB"}
                    weight = bnb.nn.Int8Params(value, requires_grad=False, **kwargs)._quantize(device)
                else:
                    param = quantize.convert({f"{name}.weight": value}, model=model, full_layer_name=f"{name}.weight")
                    weight = param[f"{name}.weight"]
                    if device.type == "meta":  # Params4bit.to("meta") skips quantization
                        weight = weight._quantize(device)
                module.weight = weight
                if module.bias is not None and module.bias.device.type == "meta":
                    module.bias = nn.Parameter(torch.zeros(module.bias.shape, dtype=dtype, device=device), False)
                del value
                continue
            touched = False
            for pname, p in list(module._parameters.items()):
                if p is None or p.device.type != "meta" or device.type == "meta":
                    continue
                if id(p) not in new:
                    new[id(p)] = nn.Parameter(torch.empty_like(p, device=device), requires_grad=p.requires_grad)
                    touched = True
                module._parameters[pname] = new[id(p)]
            for bname, b in list(module._buffers.items()):
                if b is not None and b.device.type == "meta" and device.type != "meta":
                    module._buffers[bname] = torch.empty_like(b, device=device)
                    touched = True
            if touched:
                try:
                    model._init_weights(module)
                except AttributeError:  # Gemma 3n's reads its base model's `hidden_size`: the owning model's
                    from transformers import PreTrainedModel

                    owner = next(o for o in model.modules() if isinstance(o, PreTrainedModel) and module in o.modules()
                                 and not hasattr(o, "lm_head"))  # fmt: skip
                    owner._init_weights(module)
