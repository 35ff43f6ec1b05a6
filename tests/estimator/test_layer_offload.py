"""axolotl `layer_offloading` (estimator/offload.py `layer_offload_bytes`), held to a CPU trace of its hooks.

axolotl 067b021 core/trainers/mixins/layer_offloading.py `LayerOffloadManager` moves parameters between
devices on CUDA streams, so it cannot run here as it is. `_Manager` below is its logic statement by statement
(`_offload_layer`, `_load_layer`, `_prefetch_layer` with num_prefetch=1, the four hooks of `setup_hooks`,
`pre_step` / `post_step`), with one change: offloading points `param.data` at an empty tensor instead of a
pinned host copy, so a weight autograd reads while "offloaded" fails loudly, as a CPU weight would on a GPU.
The hooks fire in real torch autograd around a real transformers + PEFT model, with transformers' gradient
checkpointing (reentrant or not). Tolerance: none, the resident bytes are counted exactly.
"""

from __future__ import annotations

import warnings

import pytest

from vramplan.estimator.offload import LAYER_OFFLOAD_WINDOW, layer_offload_bytes
from vramplan.spec import model_spec_from_config, resolve_train

CONFIG = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 6,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 256,
    "max_position_embeddings": 256, "tie_word_embeddings": False,
}  # fmt: skip


class _Manager:
    """LayerOffloadManager's residency logic (see the module docstring); `peak` is the largest resident
    frozen-parameter bytes seen, `resident()` the bytes now."""

    def __init__(self, layers) -> None:
        import torch

        self.torch, self.layers, self.n = torch, layers, len(layers)
        self.frozen = [[(n, p) for n, p in layer.named_parameters() if not p.requires_grad] for layer in layers]
        self.host = [{n: p.data for n, p in frozen} for frozen in self.frozen]
        self.on_gpu = set(range(self.n))
        self.peak = 0
        for i in range(self.n):  # _offload_all
            self.offload(i)

    def layer_bytes(self, i: int) -> int:
        return sum(t.numel() * t.element_size() for t in self.host[i].values())

    def resident(self) -> int:
        return sum(self.layer_bytes(i) for i in self.on_gpu)

    def offload(self, i: int) -> None:
        if i not in self.on_gpu:
            return
        for _, p in self.frozen[i]:
            p.data = self.torch.empty(0, dtype=p.dtype)
        self.on_gpu.discard(i)

    def load(self, i: int) -> None:
        if i in self.on_gpu or i < 0 or i >= self.n:
            return
        for name, p in self.frozen[i]:
            p.data = self.host[i][name]
        self.on_gpu.add(i)
        self.peak = max(self.peak, self.resident())

    def setup_hooks(self) -> None:
        def pre_fwd(i):
            def hook(module, args):
                self.load(i)
                self.load(i + 1)  # _prefetch_layer(i + 1)

            return hook

        def post_fwd(i):
            def hook(module, args, output):
                if i > 0:
                    self.offload(i - 1)
                if i == self.n - 1:
                    self.offload(i)

            return hook

        def pre_bwd(i):
            def hook(module, grad_output):
                self.load(i)
                self.load(i - 1)

            return hook

        def post_bwd(i):
            def hook(module, grad_input, grad_output):
                if i < self.n - 1:
                    self.offload(i + 1)
                if i == 0:
                    self.offload(i)

            return hook

        for i, layer in enumerate(self.layers):
            layer.register_forward_pre_hook(pre_fwd(i))
            layer.register_forward_hook(post_fwd(i))
            layer.register_full_backward_pre_hook(pre_bwd(i))
            layer.register_full_backward_hook(post_bwd(i))

    def step_boundary(self) -> None:  # pre_step and post_step: every layer offloaded, layer 0 prefetched
        for i in list(self.on_gpu):
            self.offload(i)
        self.load(0)


def _traced(method: str, checkpointing: str | None, input_grads: bool) -> tuple[_Manager, int]:
    """(manager after one step, resident bytes after post_step) on the tiny Llama, fp32."""
    torch = pytest.importorskip("torch")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**CONFIG))
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0))
        layers = model.base_model.model.model.layers
    else:  # freeze: the top two layers trainable, as LLaMA-Factory's freeze_trainable_layers 2
        for name, p in model.named_parameters():
            p.requires_grad = any(f"layers.{i}." in name for i in (4, 5))
        layers = model.model.layers
    if checkpointing:
        reentrant = checkpointing == "reentrant"
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    if input_grads:
        model.enable_input_require_grads()
    model.train()
    manager = _Manager(layers)
    manager.setup_hooks()
    manager.step_boundary()  # pre_step
    ids = torch.randint(3, CONFIG["vocab_size"], (1, 16))
    with warnings.catch_warnings():  # torch: a full backward hook firing early when no input requires grad
        warnings.simplefilter("ignore", UserWarning)
        model(input_ids=ids, labels=ids).loss.backward()
    manager.step_boundary()  # post_step: the optimizer step sees this
    return manager, manager.resident()


@pytest.mark.parametrize(
    ("method", "checkpointing", "input_grads"),
    [
        ("lora", "non-reentrant", True),  # kbit prep + checkpointing: enable_input_require_grads
        ("lora", "reentrant", True),
        ("lora", None, True),
        ("freeze", None, False),
        ("freeze", "non-reentrant", False),
    ],
)
def test_estimate_matches_the_traced_hooks(method: str, checkpointing: str | None, input_grads: bool) -> None:
    manager, at_step = _traced(method, checkpointing, input_grads)
    m = model_spec_from_config(CONFIG, "tiny-llama")
    t = resolve_train(m, method=method, dtype="fp32", mixed_precision="no", lora_target="all-linear",
                      grad_ckpt=checkpointing is not None, freeze_trainable_layers=2, layer_offload=True)  # fmt: skip
    host, window, step_window = layer_offload_bytes(m, t)
    frozen_layers = 6 if method == "lora" else 4  # freeze: the four bottom layers
    assert host == sum(manager.layer_bytes(i) for i in range(6))
    assert host == frozen_layers * m.layer_params * 4  # layers · a layer's parameters · fp32
    # three layers at most: the one running, the next prefetched, the previous until the post-hook
    assert manager.peak == window == min(LAYER_OFFLOAD_WINDOW, frozen_layers) * m.layer_params * 4
    assert at_step == step_window == m.layer_params * 4


def test_lora_without_input_gradients_reads_offloaded_weights() -> None:
    """Without checkpointing (so without enable_input_require_grads) layer 0's input needs no gradient: its
    full backward hook fires as its backward starts and offloads the weights that backward reads. The estimate
    says so (spec/train_notes.py `layer_offload_setting`)."""
    pytest.importorskip("torch")
    with pytest.raises(RuntimeError, match="size of tensor"):
        _traced("lora", None, False)
    m = model_spec_from_config(CONFIG, "tiny-llama")
    t = resolve_train(m, method="lora", grad_ckpt=False, layer_offload=True)
    assert any("offload layer 0 before its backward" in n for n in t.notes)


def test_layer_offloading_moves_the_frozen_layers_and_nothing_of_a_full_fine_tune() -> None:
    """Llama-3-8B QLoRA: the 32 layers' packed 4-bit weights and fp32 norms leave the GPU (host RAM), three
    layers come back at a time; a full fine-tune has no frozen layer parameter (a note, nothing moved)."""
    from vramplan.api import estimate
    from vramplan.estimator.zero import layer_packed_bytes
    from vramplan.sources.profiles import load_model

    m = load_model("llama-3-8b")
    t = resolve_train(m, method="qlora", layer_offload=True)
    per_layer = layer_packed_bytes(m, t) + 2 * 4096 * 4  # packed linears + two RMSNorm weights · fp32 (kbit prep)
    plain, off = estimate(m, train=resolve_train(m, method="qlora")), estimate(m, train=t)
    assert off.host_bytes == 32 * per_layer
    forward = {p.phase: p.components.weights for p in off.phases}
    before = {p.phase: p.components.weights for p in plain.phases}
    assert before["forward"] - forward["forward"] == (32 - 3) * per_layer
    assert before["optimizer"] - forward["optimizer"] == (32 - 1) * per_layer
    full = resolve_train(m, method="full", layer_offload=True)
    assert not full.layer_offload
    assert any("a full fine-tune has none" in n for n in full.notes)
