"""Trace a preference / RL step as TRL 1.16.0's trainers run it, under the live-tensor tracker.

The step is TRL's own code where memory is decided: the model patched with `trl.trainer.utils.add_fused_lm_head`
(`ChunkedLogProbFunction`), the reference through `trl.trainer.utils.use_adapter` (the LoRA adapter disabled)
or a second frozen model, and the order of DPOTrainer `_compute_loss` (trl/trainer/dpo_trainer.py): the policy's
forward on chosen + rejected concatenated (2 × batch), then the reference's under `torch.no_grad()`, the
sigmoid loss on the log-ratios, backward, the optimizer step. GRPO (trl/trainer/grpo_trainer.py): `generate`
of the completions under `torch.no_grad()` with the KV cache, then the policy's forward scoring the completion
tokens only. The reference forward and the generation are labelled temporaries (nothing of them outlives the
moment). The data pipeline (tokenizer, collator, Trainer loop) is left out: random token ids, every
position a completion token (the most the fused head scores).

CUDA equivalence: the fused head's tile fold runs in a Triton kernel on CUDA (`_forward_kernel`,
`_backward_kernel`) and its fp32 accumulation in one `addmm(out_dtype=float32)`; off CUDA TRL runs torch ops
that allocate fp32 copies of each tile (`_forward_tile`, `_backward_tile`, `_addmm_fp32`'s `.float()`), which
the trace does not count (`tracker.excluded()`), as CUDA would not allocate them; and it scores only the
labelled positions (`hidden_states[mask]`), as TRL does on Triton devices (on others it scores all).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch

from vramplan.breakdown import Components, PhaseUsage
from vramplan.measure.build import TORCH_DTYPES, build
from vramplan.measure.cuda_equiv import cuda_equivalence
from vramplan.measure.harness import TRAINER_MAX_GRAD_NORM, traced_moments
from vramplan.measure.step_hooks import wrap_checkpointing
from vramplan.measure.tracker import MemoryTracker
from vramplan.spec import ModelSpec, TrainSpec
from vramplan.spec.stage import SFT

DPO_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")  # DPOTrainer.__init__ add_fused_lm_head outputs
REFERENCE_FORWARD = "reference forward"
GENERATION = "generation"
LOGITS_AND_LOSS = "logits and loss"


@contextlib.contextmanager
def _sequence_classification() -> Iterator[None]:
    """The harness's build with `AutoModelForSequenceClassification(num_labels=1)` where it builds a causal LM,
    as TRL 1.16.0's RewardTrainer loads its model (trainer/reward_trainer.py `create_model_from_path(model,
    AutoModelForSequenceClassification, num_labels=1)`): a hidden × 1 `score` head instead of lm_head."""
    import peft
    import transformers

    original = transformers.AutoModelForCausalLM

    class AsSequenceClassification(original):  # type: ignore[misc, valid-type]
        @classmethod
        def from_config(cls, config: Any, **kwargs: Any) -> torch.nn.Module:
            config.num_labels = 1
            config.pad_token_id = 0
            return transformers.AutoModelForSequenceClassification.from_config(config, **kwargs)

    def lora_config(**kwargs: Any) -> Any:  # PEFT's sequence-classification task: the score head in modules_to_save
        return lora_original(**{**kwargs, "task_type": "SEQ_CLS"})

    lora_original = peft.LoraConfig
    transformers.AutoModelForCausalLM = AsSequenceClassification  # type: ignore[misc]
    peft.LoraConfig = lora_config  # type: ignore[misc, assignment]
    try:
        yield
    finally:
        transformers.AutoModelForCausalLM = original  # type: ignore[misc]
        peft.LoraConfig = lora_original  # type: ignore[misc]


@contextlib.contextmanager
def _cpu_tiles_uncounted(tracker: MemoryTracker) -> Iterator[None]:
    import trl.kernels.chunked_logprob as chunked

    originals = {name: getattr(chunked, name) for name in ("_forward_tile", "_backward_tile", "_addmm_fp32")}

    def uncounted(function: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            with tracker.excluded():
                return function(*args, **kwargs)

        return run

    import trl.trainer.utils as trl_utils

    compact = trl_utils._use_triton
    try:
        for name, function in originals.items():
            setattr(chunked, name, uncounted(function))
        chunked.torch = _AsOnCuda()  # type: ignore[attr-defined]
        trl_utils._use_triton = lambda device: True  # score only the labelled positions, as on CUDA
        yield
    finally:
        for name, function in originals.items():
            setattr(chunked, name, function)
        chunked.torch = torch  # type: ignore[attr-defined]
        trl_utils._use_triton = compact


class _AsOnCuda:
    """`torch` for the fused head's module, answering its autocast questions about the CPU tensors as CUDA
    would be answered (`ChunkedLogProbFunction.forward` picks its compute dtype with
    `torch.is_autocast_enabled(device.type)`; the trace's CUDA autocast emulation answers for "cuda")."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def is_autocast_enabled(device_type: str = "cuda") -> bool:
        return torch.is_autocast_enabled("cuda" if device_type == "cpu" else device_type)

    @staticmethod
    def get_autocast_dtype(device_type: str) -> torch.dtype:
        return torch.get_autocast_dtype("cuda" if device_type == "cpu" else device_type)


def _reference_model(m: ModelSpec, t: TrainSpec, policy: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy as DPOTrainer loads one (`create_model_from_path`, the policy's dtype, eval mode)."""
    from transformers import AutoModelForCausalLM

    from vramplan.measure.build import hf_config

    config = hf_config(m, t, policy.config._attn_implementation)
    ref = AutoModelForCausalLM.from_config(config, dtype=TORCH_DTYPES[t.dtype])
    ref.requires_grad_(False)
    return ref.eval()


def trace_stage(m: ModelSpec, t: TrainSpec, steps: int = 2) -> tuple[tuple[PhaseUsage, ...], dict[str, Components]]:
    """(each phase's traced peak, the traced peak of each named moment) of `steps` steps of `t.stage` on CPU."""
    from trl.trainer.utils import add_fused_lm_head, use_adapter

    st = t.stage
    policy_spec = dataclasses.replace(t, stage=SFT)
    autocast_dtype = TORCH_DTYPES[t.mixed_precision] if t.mixed_precision != "no" else None
    tracker = MemoryTracker(device_type="cpu")
    with (
        cuda_equivalence("cpu", autocast_dtype) as emu,
        _cpu_tiles_uncounted(tracker),
        _sequence_classification() if st.stage == "rm" else contextlib.nullcontext(),
    ):
        built = build(m, policy_spec, "cpu")
        model, optimizer, causal_lm = built.model, built.optimizer, built.causal_lm
        if st.fused_lm_head:
            add_fused_lm_head(causal_lm, outputs=DPO_OUTPUTS)
        ref = _reference_model(m, t, causal_lm) if st.reference == "model" else None
        if ref is not None and st.fused_lm_head:
            add_fused_lm_head(ref)
        tracker.register_module(model)
        if ref is not None:
            tracker.register_module(ref)
        tracker.register_optimizer(optimizer)
        _label_head(causal_lm, tracker)
        wrap_checkpointing(model, tracker, emu)  # the emulated autocast reopened in a recompute, as the harness
        params = [p for group in optimizer.param_groups for p in group["params"]]
        vocab = m.vocab_size
        sequences = t.batch * (2 if st.paired else 1)

        def autocast() -> contextlib.AbstractContextManager:
            return emu.region() if emu is not None else contextlib.nullcontext()

        def log_probs(net: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            if st.stage == "rm":  # RewardTrainer.compute_loss: one reward per sequence, (2·batch, 1)
                return net(input_ids=ids, use_cache=False).logits
            if st.fused_lm_head:
                return net(input_ids=ids, labels=labels, fused_lm_head=True, use_cache=False).log_probs
            logits = net(input_ids=ids, use_cache=False).logits
            # the loss's float32 upcast and log_softmax, filed as logits as the estimate files them (no-grad
            # forwards are labelled by their caller)
            scope = tracker.label_scope("logits") if torch.is_grad_enabled() else contextlib.nullcontext()
            with scope:
                logits = logits[:, :-1].float()
                targets = labels[:, 1:].clamp(min=0).unsqueeze(2)  # prompt positions (-100) masked by the caller
                return torch.gather(logits.log_softmax(-1), 2, targets).squeeze(2)

        with tracker:
            for _step in range(steps):
                for _ in range(t.grad_accum):
                    with tracker.phase_scope("forward"):
                        if st.generates:
                            prompt_ids = _generate(model, st, t, vocab, tracker, autocast)
                            if st.stage == "ebft":
                                _feature_forward(model, causal_lm, t, tracker)
                            if st.stage == "ppo":
                                _reward_forward(model, t, vocab, tracker, autocast)
                            ids = torch.cat(
                                [prompt_ids, torch.randint(0, vocab, (t.batch, t.seq - prompt_ids.shape[1]))], 1
                            )
                            labels = ids.clone()
                            labels[:, : prompt_ids.shape[1]] = -100
                            del prompt_ids
                        else:
                            ids = torch.randint(0, vocab, (sequences, t.seq))
                            labels = ids

                        def reference(ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
                            if st.reference not in ("model", "adapter"):
                                return torch.zeros(ids.shape[0])  # precomputed: read from the batch
                            with (
                                tracker.moment_scope(REFERENCE_FORWARD),
                                tracker.label_scope("temporaries"),
                                torch.no_grad(),
                                autocast(),
                            ):
                                if ref is not None:
                                    return log_probs(ref, ids, labels).sum(-1)
                                with use_adapter(model, adapter_name=None):
                                    return log_probs(model, ids, labels).sum(-1)

                        # GRPO scores the reference while generating, before the policy's forward; DPO and KTO
                        # after it (`_compute_loss`); ASFT before it, its logits kept into the loss
                        if st.stage == "asft":
                            ratios = _asft_loss(model, ref, ids, labels, tracker, autocast, st.pref_beta)
                            policy_logps = ref_logps = None
                        else:
                            ref_logps = reference(ids, labels) if st.generates else None
                            with autocast():
                                policy_logps = log_probs(model, ids, labels).sum(-1)
                            if ref_logps is None:
                                ref_logps = reference(ids, labels)
                            ratios = policy_logps - ref_logps
                        if st.stage == "asft":
                            loss = ratios
                        elif st.paired:
                            chosen, rejected = ratios.chunk(2)
                            beta = 1.0 if st.stage == "rm" else st.pref_beta  # RewardTrainer: the rewards' margin
                            loss = -torch.nn.functional.logsigmoid(beta * (chosen - rejected)).mean()
                        else:
                            loss = -ratios.mean()
                        if t.grad_accum > 1:
                            loss = loss / t.grad_accum
                        del policy_logps, ref_logps, ratios, ids, labels
                    with tracker.phase_scope("backward"):
                        loss.backward()
                    del loss
                with tracker.phase_scope("optimizer"):
                    torch.nn.utils.clip_grad_norm_(params, TRAINER_MAX_GRAD_NORM)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
        tracker.remove_hooks()
    return traced_moments(tracker)


def _asft_loss(model, ref, ids, labels, tracker: MemoryTracker, autocast, alpha: float) -> torch.Tensor:
    """LLaMA-Factory's ASFT loss, statement by statement (hiyouga/LLaMA-Factory ff6d4d1): the reference's forward
    under `torch.no_grad()` first, its logits kept, then the policy's forward with the labels (the model computes
    its own loss too) (src/llamafactory/train/sft/trainer.py `CustomSeq2SeqTrainer.compute_loss`), then
    `asft_loss_func` / `_asft_cross_entropy` / `_dft_cross_entropy` / `_kl_divergence`
    (src/llamafactory/train/trainer_utils.py) outside autocast, as HF Trainer runs `compute_loss_func`. What
    `compute_loss` holds (the outputs, the reference logits) is freed when it returns, before backward."""
    import torch.nn.functional as F

    with tracker.moment_scope(REFERENCE_FORWARD), tracker.label_scope("temporaries"), torch.no_grad(), autocast():
        ref_logits = ref(input_ids=ids, use_cache=False).logits
    with autocast():
        outputs = model(input_ids=ids, labels=labels, use_cache=False)
    with tracker.label_scope("logits"):
        logits = outputs.get("logits").float()
        shift_logits = logits[..., :-1, :].contiguous()
        shift_labels = labels[..., 1:].contiguous()
        shift_ref_logits = ref_logits[..., :-1, :].contiguous()
        vocab_size = shift_logits.size(-1)
        shift_logits = shift_logits.view(-1, vocab_size)
        shift_ref_logits = shift_ref_logits.view(-1, vocab_size)
        shift_labels = shift_labels.view(-1)
        # _dft_cross_entropy
        per_token_loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="none")
        valid_mask = shift_labels != -100
        valid_losses = per_token_loss[valid_mask]
        with torch.no_grad():
            target_probs = torch.exp(-valid_losses)
        dft_loss = (valid_losses * target_probs).mean()
        # _kl_divergence
        log_p = F.log_softmax(shift_logits, dim=-1)
        q = F.softmax(shift_ref_logits, dim=-1)
        kl = F.kl_div(log_p, q, reduction="none").sum(dim=-1)
        mask = (shift_labels != -100).float()
        kl_loss = (kl * mask).sum() / mask.sum()
        loss = dft_loss + alpha * kl_loss
        del outputs, ref_logits, logits, shift_logits, shift_ref_logits, per_token_loss, valid_losses, log_p, q, kl
    return loss


def _generate(model, st, t: TrainSpec, vocab: int, tracker: MemoryTracker, autocast) -> torch.Tensor:
    """GRPO's generation: `model.generate` of `max_completion_length` tokens for the batch's prompts, under
    `torch.no_grad()` with the KV cache (TRL's `unwrap_model_for_generation`); returns the prompts."""
    completion = min(st.max_completion_length, t.seq - 1)
    prompts = torch.randint(0, vocab, (t.batch * t.grad_accum, t.seq - completion))
    with tracker.moment_scope(GENERATION), tracker.label_scope("temporaries"), torch.no_grad(), autocast():
        model.generate(
            input_ids=prompts, max_new_tokens=completion, min_new_tokens=completion, do_sample=True,
            use_cache=True, pad_token_id=0,
        )  # fmt: skip
    return prompts[: t.batch]


def _reward_forward(model, t: TrainSpec, vocab: int, tracker: MemoryTracker, autocast) -> None:
    """LLaMA-Factory's PPO reward (train/ppo/trainer.py `get_rewards`): a no-grad forward of the batch through
    the value-head wrapper (the policy with its reward adapter swapped in), whose logits TRL's
    `AutoModelForCausalLMWithValueHead.forward` upcasts to float32."""
    ids = torch.randint(0, vocab, (t.batch, t.seq))
    with tracker.moment_scope("reward forward"), tracker.label_scope("temporaries"), torch.no_grad(), autocast():
        logits = model(input_ids=ids, use_cache=False).logits
        logits = logits.float()
        del logits


def _feature_forward(model, causal_lm, t: TrainSpec, tracker: MemoryTracker) -> None:
    """Structured EBFT's reward (axolotl 0.19.0 core/trainers/ebft/trainer.py `_feature_matching_reward`,
    rewards.py `extract_hidden_states`): under `torch.no_grad()`, with the adapter disabled, `model.model` (the
    causal LM under PEFT) with `output_hidden_states=True` on the generation batch's sequences, the feature
    layers concatenated, then the same on one ground-truth sequence per prompt (outside autocast, as GRPO calls
    its reward functions)."""
    st = t.stage
    depth = causal_lm.config.num_hidden_layers
    layers = [int(fraction * depth) for fraction in (0.25, 0.5, 0.75)][: st.feature_layers]
    generated = t.batch * t.grad_accum
    vocab = causal_lm.config.vocab_size
    scope = tracker.moment_scope("feature forward"), tracker.label_scope("temporaries")
    with scope[0], scope[1], torch.no_grad(), model.disable_adapter():
        body = model.model
        ids = torch.randint(0, vocab, (generated, t.seq))
        out = body(ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
        gen_hidden = torch.cat([out.hidden_states[i] for i in layers], dim=-1)
        del out
        truth = torch.randint(0, vocab, (max(generated // st.num_generations, 1), t.seq))
        out = body(truth, attention_mask=torch.ones_like(truth), output_hidden_states=True)
        truth_hidden = torch.cat([out.hidden_states[i] for i in layers], dim=-1)
        del out, gen_hidden, truth_hidden


def _label_head(causal_lm: torch.nn.Module, tracker: MemoryTracker) -> None:
    """Label as logits what the fused head (or lm_head and the loss) allocates: from the backbone's output to
    the end of the causal LM's forward, and in backward until the gradient of the backbone's output exists."""
    backbone = getattr(causal_lm, causal_lm.base_model_prefix)

    def after_backbone(module: torch.nn.Module, args: tuple, output: Any) -> None:
        if tracker.phase != "forward" or torch._C._current_graph_task_id() != -1 or not torch.is_grad_enabled():
            return  # no-grad forwards (reference, generation) are labelled by their caller
        tracker.label = "logits"
        if tracker.moment is None:
            tracker.moment = LOGITS_AND_LOSS
        hidden = output.last_hidden_state
        if hidden.requires_grad:
            hidden.register_hook(end_of_head_backward)
            tracker._pending_head_backward = True  # type: ignore[attr-defined]

    def after_model(module: torch.nn.Module, args: tuple, output: Any) -> None:
        if tracker.phase == "forward" and tracker.label == "logits":
            tracker.label = None
            if tracker.moment == LOGITS_AND_LOSS:
                tracker.moment = None

    def end_of_head_backward(grad: torch.Tensor) -> None:
        tracker.label = None

    tracker._handles.append(backbone.register_forward_hook(after_backbone))
    tracker._handles.append(causal_lm.register_forward_hook(after_model))

    original = tracker.phase_scope

    @contextlib.contextmanager
    def phase_scope(phase):
        with original(phase) as scope:
            if phase == "backward" and getattr(tracker, "_pending_head_backward", False):
                tracker.label = "logits"
                tracker._pending_head_backward = False  # type: ignore[attr-defined]
            yield scope
            if phase == "backward":
                tracker.label = None

    tracker.phase_scope = phase_scope  # type: ignore[method-assign]
