"""estimator/optimizer_memory_efficient.py against the real optimizers' `state` after one step on CPU.

A tiny llama (tests/conftest.py, vocab 2048) in bf16, full fine-tuning (vramplan's pure-bf16 default), every
parameter given a gradient, one `step()`, then the bytes of every tensor the optimizer holds (tensor
subclasses by their inner tensors, GaLore / APOLLO projectors by their `ortho_matrix`, BAdam's fp32 copies
by its base optimizer's param_groups). Param groups as transformers 5.24's trainer_optimizer.py builds them:
GaLore / APOLLO get the decoder layers' Linear weights (LLaMA-Factory `galore_target: all`), the rest plain.
Versions traced: galore-torch 1.0, apollo-torch 1.0.3, torchao 0.18.0, schedulefree 1.4.1, adam-mini 1.1.1,
badam 1.4, torch 2.13 (torch.optim.Muon). GaLoreAdamW8bit needs CUDA (bitsandbytes) and is held to its
source only: test_galore_8bit_is_bitsandbytes_on_the_projection.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from tests.conftest import TINY_CONFIGS
from vramplan.estimator.optimizer import optimizer_bytes
from vramplan.estimator.optimizer_memory_efficient import TORCHAO_MIN_QUANT_NUMEL
from vramplan.spec import model_spec_from_config, resolve_train

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CONFIG = {**TINY_CONFIGS["llama"], "vocab_size": 2048}
M = model_spec_from_config(CONFIG, "tiny-llama-v2048")
RANK = 4


def _model() -> Any:
    cfg = transformers.AutoConfig.for_model(
        **{k: v for k, v in CONFIG.items() if k != "model_type"}, model_type="llama"
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    return model


def _tensor_bytes(value: Any) -> int:
    if hasattr(value, "__tensor_flatten__") and type(value) is not torch.Tensor:
        names, _ = value.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(value, n)) for n in names)
    return value.numel() * value.element_size()


def _state_bytes(optimizer: Any, skip: tuple[str, ...] = ()) -> int:
    total = 0
    for state in optimizer.state.values():
        for key, value in state.items():
            if key in skip:
                continue
            if torch.is_tensor(value):
                total += _tensor_bytes(value)
            elif hasattr(value, "ortho_matrix") and torch.is_tensor(value.ortho_matrix):  # GaLore / APOLLO
                total += _tensor_bytes(value.ortho_matrix)
    return total


def _projected_groups(model: Any, **group: Any) -> list[dict[str, Any]]:
    layer = [p for n, p in model.named_parameters() if p.dim() == 2 and ".layers." in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() == 2 and ".layers." in n)]
    return [{"params": layer, **group}, {"params": rest}]


def _estimated(optim: str, **kw: Any) -> int:
    t = resolve_train(M, method="full", optim=optim, **kw)
    return optimizer_bytes(M, t, 2).states  # bf16 parameters


def _step(optimizer: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if hasattr(optimizer, "train"):
            optimizer.train()  # schedule-free
        optimizer.step()
    return optimizer


@pytest.mark.parametrize(("optim", "rank"), [("galore_adamw", RANK), ("galore_adafactor", RANK)])
def test_galore(optim: str, rank: int):
    galore_torch = pytest.importorskip("galore_torch")
    cls = {"galore_adamw": galore_torch.GaLoreAdamW, "galore_adafactor": galore_torch.GaLoreAdafactor}[optim]
    model = _model()
    kw = {"lr": 1e-3} if optim == "galore_adamw" else {"lr": 1e-3, "relative_step": False, "scale_parameter": False}
    opt = _step(cls(_projected_groups(model, rank=rank, update_proj_gap=200, scale=0.25, proj_type="std"), **kw))
    assert _estimated(optim, optim_rank=rank) == _state_bytes(opt)


@pytest.mark.parametrize("rank", [RANK, 1])  # rank 1 with tensor scaling: APOLLO-Mini
def test_apollo(rank: int):
    apollo_torch = pytest.importorskip("apollo_torch")
    model = _model()
    scale = {"scale_type": "tensor" if rank == 1 else "channel", "scale": 128 if rank == 1 else 1}
    groups = _projected_groups(model, rank=rank, proj="random", update_proj_gap=200, proj_type="std", **scale)
    opt = _step(apollo_torch.APOLLOAdamW(groups, lr=1e-3))
    optim = "apollo_mini" if rank == 1 else "apollo_adamw"
    assert _estimated(optim, **({} if rank == 1 else {"optim_rank": rank})) == _state_bytes(opt)


@pytest.mark.parametrize("optim", ["adamw_torch_8bit", "adamw_torch_4bit", "adamw_torch_fp8"])
def test_torchao_low_bit_adamw(optim: str):
    ao = pytest.importorskip("torchao.optim")
    cls = {"adamw_torch_8bit": ao.AdamW8bit, "adamw_torch_4bit": ao.AdamW4bit, "adamw_torch_fp8": ao.AdamWFp8}[optim]
    model = _model()
    # the tiny model has both kinds of tensor: quantized (>= 4096 elements) and plain (norms, 1-D)
    sizes = [p.numel() for p in model.parameters()]
    assert min(sizes) < TORCHAO_MIN_QUANT_NUMEL <= max(sizes)
    opt = _step(cls(model.parameters(), lr=1e-3))
    assert _estimated(optim) == _state_bytes(opt)


def test_schedule_free_adamw():
    schedulefree = pytest.importorskip("schedulefree")
    model = _model()
    opt = _step(schedulefree.AdamWScheduleFree(model.parameters(), lr=1e-3))
    assert _estimated("schedule_free_adamw") == _state_bytes(opt)


def test_muon():
    """torch.optim.Muon on the layers' 2-D weights (it refuses others), AdamW on the rest; `step` left out
    (a CPU scalar for non-fused AdamW on CUDA too)."""
    model = _model()
    layer, rest = (g["params"] for g in _projected_groups(model))
    muon = _step(torch.optim.Muon(layer, lr=1e-3))
    adamw = _step(torch.optim.AdamW(rest, lr=1e-3))
    assert _estimated("muon") == _state_bytes(muon) + _state_bytes(adamw, skip=("step",))


def test_adam_mini():
    adam_mini = pytest.importorskip("adam_mini")
    model = _model()
    opt = adam_mini.Adam_mini(
        named_parameters=model.named_parameters(), lr=1e-3, dim=M.hidden_size, n_heads=M.num_attention_heads,
        n_kv_heads=M.num_key_value_heads, verbose=False,
    )  # fmt: skip
    assert _estimated("adam_mini") == _state_bytes(_step(opt))


def test_badam_active_block():
    """BAdam (mode layer) over one active decoder layer = `--method freeze --freeze-trainable-layers 1`:
    fp32 Adam states + the fp32 copy of the block's bf16 parameters (its base optimizer's param_groups)."""
    badam = pytest.importorskip("badam")
    model = _model()
    base = torch.optim.AdamW(model.parameters(), lr=1e-3)
    last = f"model.layers.{M.num_hidden_layers - 1}."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = badam.BlockOptimizer(
            base_optimizer=base, named_parameters_list=list(model.named_parameters()), switch_block_every=100,
            block_prefix_list=[[last]], verbose=0,
        )  # fmt: skip
    for p in model.parameters():
        p.grad = torch.randn_like(p) if p.requires_grad else None
    opt.step()
    copies = sum(p.numel() * p.element_size() for g in base.param_groups for p in g["params"])
    t = resolve_train(M, method="freeze", freeze_trainable_layers=1, optim="badam")
    assert optimizer_bytes(M, t, 2).states == _state_bytes(base, skip=("step",)) + copies


def test_galore_8bit_is_bitsandbytes_on_the_projection():
    """galore_torch/adamw8bit.py `AdamW8bit(Optimizer2State)`: bitsandbytes 8-bit states of the projected
    gradient (uint8 + fp32 absmax per 256; fp32 below 4096 elements) + the projector in the param dtype.
    A 64 × 2048 weight at rank 4: projection (2048, 4)... as GaLoreProjector orients it (64 < 2048: r × n)."""
    from vramplan.estimator.optimizer_memory_efficient import _projected_states

    k = 4 * 2048  # projected (4, 2048): 8,192 elements >= 4096 -> 8-bit
    assert _projected_states((64, 2048), 4, 2, "galore_adamw_8bit") == 2 * (k + 4 * (k // 256)) + 4 * 64 * 2
    k = 4 * 512  # (4, 512) = 2,048 elements < 4096 -> fp32 states
    assert _projected_states((64, 512), 4, 2, "galore_adamw_8bit") == 2 * 4 * k + 4 * 64 * 2


def test_layerwise_optimizers_hold_one_gradient():
    """HF *_layerwise: each gradient is stepped and freed by its post-accumulate hook; Llama-2-7B full:
    gradients at the end of backward are the largest tensor's (embed_tokens 32000 × 4096, bf16), not all."""
    from vramplan.api import estimate
    from vramplan.sources.profiles import load_model

    m = load_model("llama-2-7b")
    plain = estimate(m, train=resolve_train(m, method="full", optim="galore_adamw"))
    layerwise = estimate(m, train=resolve_train(m, method="full", optim="galore_adamw_layerwise"))
    assert layerwise.phases[2].components.gradients == 32000 * 4096 * 2
    assert plain.phases[2].components.gradients == plain.params_trainable * 2
    assert layerwise.phases[2].components.optimizer_states == plain.phases[2].components.optimizer_states
