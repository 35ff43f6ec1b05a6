"""The loss the traced step computes: the model's own (transformers' ForCausalLMLoss) or TRL's fused LM head.

`with loss_function(built, t, tracker) as forward:` gives the harness `forward(ids) -> loss`. For
`t.loss == "trl-chunked"` it patches the causal LM as `SFTTrainer.__init__` does (trl 1.16.0
trainer/sft_trainer.py: `add_fused_lm_head(model.get_base_model(), outputs=("log_probs", "entropy", "is_top1"))`)
and computes the loss as `SFTTrainer.compute_loss` does (`-log_probs`, summed, over the count of labels
that are not −100).

TRL folds the logits tiles with Triton kernels on CUDA and, elsewhere, with torch ops that allocate fp32
copies of every tile (kernels/chunked_logprob.py `_forward_tile`, `_backward_tile`) and score every position
instead of the gathered valid ones. The trace follows the CUDA path: `_use_triton` answers True; the autocast
dtype is CUDA's (the harness emulates CUDA's autocast, which `is_autocast_enabled("cpu")` does not see); the
Triton kernels are stood in for by the torch tile functions run with the tracker excluded (the kernels allocate
nothing; they update the statistics and the tile in place, which the stand-ins do too); `_addmm_fp32`, which
on CUDA accumulates `a @ b` into the fp32 buffer with `out_dtype` (no copies), runs the same way.
Liger's and cut-cross-entropy's kernels are Triton only: they are modelled from their source (estimator/loss.py)
and not traced.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import torch
from transformers import masking_utils

from vramplan.errors import VramplanError
from vramplan.measure.build import Built
from vramplan.measure.tracker import MemoryTracker
from vramplan.spec import TrainSpec

# transformers' packed-sequence detection, before the harness's CUDA equivalence turns it off for unpacked runs
# (measure/cuda_equiv.py): a packed run (CPU, real tensors) calls the real one
_FIND_PACKED = masking_utils.find_packed_sequence_indices
TRL_OUTPUTS = ("log_probs", "entropy", "is_top1")  # what SFTTrainer asks of the fused head (trl 1.16.0)


class _KernelStandIn:
    """`kernel[grid](...)` for a Triton kernel: runs `tile_function(...)` with the tracker excluded."""

    def __init__(self, tile_function: Callable, tracker: MemoryTracker) -> None:
        self.tile_function, self.tracker = tile_function, tracker

    def __getitem__(self, grid: Any) -> Callable:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        with self.tracker.excluded():
            self.tile_function(*args, **kwargs)


class _AsCuda:
    """`torch` as chunked_logprob sees it on CUDA: its autocast questions about the tensors' device (CPU here)
    are asked about CUDA, which the harness's emulated autocast answers (measure/cuda_autocast.py)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    def is_autocast_enabled(self, device_type: str = "cuda") -> bool:
        return torch.is_autocast_enabled("cuda")

    def get_autocast_dtype(self, device_type: str = "cuda") -> torch.dtype:
        return torch.get_autocast_dtype("cuda")


_PATCHED = ("_use_triton", "torch", "_forward_kernel", "_backward_kernel", "_addmm_fp32", "triton")


@contextlib.contextmanager
def _cuda_path(tracker: MemoryTracker) -> Iterator[None]:
    """Make TRL's chunked log-prob take its CUDA (Triton) path on CPU, with allocation-free stand-ins, for the
    duration of the block: TRL's module globals are restored on exit, so a later trace in the same process
    (another loss, the preference trainers of measure/preference.py) runs TRL's own CPU path again."""
    from trl.kernels import chunked_logprob
    from trl.trainer import utils as trl_utils

    missing = object()
    saved = {name: getattr(chunked_logprob, name, missing) for name in _PATCHED}
    saved_utils = trl_utils._use_triton

    def use_triton(device: torch.device) -> bool:
        return True

    def addmm_fp32(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
        with tracker.excluded():
            acc.addmm_(a.float(), b.float())

    chunked_logprob._use_triton = use_triton
    chunked_logprob.torch = _AsCuda()
    trl_utils._use_triton = use_triton
    chunked_logprob._forward_kernel = _KernelStandIn(chunked_logprob._forward_tile, tracker)
    chunked_logprob._backward_kernel = _KernelStandIn(chunked_logprob._backward_tile, tracker)
    chunked_logprob._addmm_fp32 = addmm_fp32
    if saved["triton"] is missing:  # imported only where Triton is installed; backward's grid uses it
        chunked_logprob.triton = SimpleNamespace(cdiv=lambda a, b: -(-a // b))
    try:
        yield
    finally:
        trl_utils._use_triton = saved_utils
        for name, value in saved.items():
            if value is missing:
                delattr(chunked_logprob, name)
            else:
                setattr(chunked_logprob, name, value)


def _label_head(causal_lm: torch.nn.Module) -> None:
    """The fused head never calls `lm_head`, whose pre-hook labels the logits (step_hooks `LogitsLabel`): run
    that hook on the backbone's output instead, where the fused head starts."""
    head = causal_lm.get_output_embeddings()

    def after_backbone(module: torch.nn.Module, args: tuple, output: Any) -> None:
        for hook in list(head._forward_pre_hooks.values()):
            hook(head, (output.last_hidden_state,))

    causal_lm.base_model.register_forward_hook(after_backbone)


def packed_position_ids(ids: torch.Tensor) -> torch.Tensor:
    """Position ids of rows that each pack two documents (a half and the rest), as the packing collators write
    them (TRL DataCollatorForLanguageModeling `return_position_ids`, axolotl's multipack, LLaMA-Factory's
    neat_packing): positions restart at each document."""
    seq = ids.shape[1]
    half = seq // 2
    row = torch.cat([torch.arange(half), torch.arange(seq - half)]).to(ids.device)
    return row.unsqueeze(0).expand(ids.shape[0], -1)


@contextlib.contextmanager
def _packed_detection() -> Iterator[None]:
    patched = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = _FIND_PACKED
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = patched


@contextlib.contextmanager
def loss_function(
    built: Built, t: TrainSpec, tracker: MemoryTracker
) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """`forward(ids) -> loss` for `t.loss` (labels = the inputs, every one counted), valid inside the block."""
    model = built.model
    if t.liger_kernels:
        from vramplan.measure.liger import apply_liger_stand_ins

        apply_liger_stand_ins(built.causal_lm, tracker)
    if t.lora_kernels:
        from vramplan.measure.lora_kernels import STAND_IN_TYPES, apply_lora_kernel_stand_ins

        if built.causal_lm.config.model_type not in STAND_IN_TYPES:
            raise VramplanError(
                f"--lora-kernels is traced with stand-ins of Llama-shaped attention ({', '.join(STAND_IN_TYPES)}); "
                f"{built.causal_lm.config.model_type} is estimated from axolotl's source only: measure without it"
            )

        apply_lora_kernel_stand_ins(built.causal_lm, t.lora_kernels, tracker)
    if t.loss == "hf":
        if t.packing:

            def packed(ids: torch.Tensor) -> torch.Tensor:
                with _packed_detection():
                    return model(input_ids=ids, labels=ids, position_ids=packed_position_ids(ids)).loss

            yield packed
        else:
            yield lambda ids: model(input_ids=ids, labels=ids).loss
        return
    if t.loss != "trl-chunked":
        raise VramplanError(
            f"--loss {t.loss} runs only as a Triton kernel (CUDA): it is estimated from its source, not traced; "
            "measure with --loss hf or --loss trl-chunked"
        )
    try:
        from trl.trainer.utils import add_fused_lm_head
    except ImportError:
        raise VramplanError("--loss trl-chunked traces TRL's own code: pip install trl") from None
    add_fused_lm_head(built.causal_lm, outputs=TRL_OUTPUTS)
    _label_head(built.causal_lm)

    def forward(ids: torch.Tensor) -> torch.Tensor:
        position_ids = packed_position_ids(ids) if t.packing else None
        with _packed_detection() if t.packing else contextlib.nullcontext():
            outputs = model(input_ids=ids, labels=ids, use_cache=False, fused_lm_head=True, position_ids=position_ids)
        per_token_loss = -outputs.log_probs  # zero on ignored positions
        return per_token_loss.sum() / torch.as_tensor(outputs.label_mask.sum()).clamp(min=1)

    with _cuda_path(tracker):
        yield forward
