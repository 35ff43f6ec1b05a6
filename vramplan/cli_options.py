"""The option groups the `vramplan` commands share, and how their values become specs.

train_options (estimate, fit, measure, simulate), from_options (--from FILE, --model), parallel_options, and
COUNT, the type of every count option; `resolve_plan` / `resolve_inputs` turn them into (ModelSpec, TrainSpec,
GpuProfile), printing what is not modeled and the warnings on stderr. Nothing here imports more than click at
module level. A command's own options live in its module (`cli/fit.py` seq_list_option, `cli/serve.py`
serve_options).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from vramplan.errors import VramplanError
from vramplan.report.common import warn


class Count(click.ParamType):
    """A count as typed: 2048, or 2k / 2K (× 1024), as LLaMA-Factory writes cutoff_len: every count option of
    every command (spec.counts.parse_count). The sign is kept, so the range check where the value is used names
    the flag and the range (`--batch must be a positive integer, got 0`) as it does for a config file's value."""

    name = "N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        from vramplan.spec.counts import parse_count

        if isinstance(value, int):
            return value
        try:
            return parse_count(value, "value", signed=True)
        except VramplanError:
            shown = repr(value) if len(str(value)) <= 40 else repr(str(value)[:39] + "…")
            self.fail(f"{shown} is not an integer such as 2048 or 2k (× 1024)", param, ctx)


COUNT = Count()


def train_options(f: Callable) -> Callable:
    """The options every training command shares (estimate, fit, measure, simulate); names follow HF."""
    opts = [
        click.option("--method", default="qlora", show_default=True, help="full | lora | qlora | freeze"),
        click.option("--gpu", default=None, help="GPU name or alias (see `vramplan gpus`); `auto` = this machine's"),
        click.option("--dtype", default=None, help="weight load dtype: bf16 | fp16 | fp32 [bf16; fp16 w/o bf16]"),
        click.option(
            "--mixed-precision", default=None, help="autocast: bf16 | fp16 | no (HF Trainer bf16=True) [bf16]"
        ),
        click.option("--quant", default=None, help="none | nf4 | fp4 | int8 [nf4 for qlora, else none]"),
        click.option("--double-quant/--no-double-quant", default=None, help="bnb_4bit_use_double_quant [on]"),
        click.option(
            "--kbit-prep/--no-kbit-prep",
            default=None,
            help="prepare_model_for_kbit_training [on if quantized]",
        ),
        click.option("--batch", type=COUNT, default=1, show_default=True, help="per_device_train_batch_size"),
        click.option("--seq", type=COUNT, default=1024, show_default=True, help="tokens per sequence (2k = 2048)"),
        click.option("--grad-accum", type=COUNT, default=1, show_default=True, help="gradient_accumulation_steps"),
        click.option("--lora-rank", type=COUNT, default=16, show_default=True, help="LoRA r"),
        click.option("--lora-alpha", type=COUNT, default=None, help="lora_alpha [2 × rank]"),
        click.option("--lora-dropout", type=float, default=0.05, show_default=True),
        click.option(
            "--lora-target",
            default="all-linear",
            show_default=True,
            help="all-linear | attn | qv (PEFT's default) | comma list of module names",
        ),
        click.option("--dora/--no-dora", default=False, show_default=True, help="use_dora"),
        click.option(
            "--optim",
            default=None,
            help="HF TrainingArguments.optim [the Trainer's default: adamw_torch_fused; adamw_torch before "
            "transformers 4.54 or torch 2.8]",
        ),
        click.option(
            "--optim-rank", type=Count(), default=None, help="GaLore / APOLLO projection rank [128; apollo_mini 1]"
        ),
        click.option("--grad-ckpt/--no-grad-ckpt", default=None, help="gradient checkpointing [on for qlora]"),
        click.option(
            "--activation-offload",
            default="none",
            show_default=True,
            help="to host RAM: checkpoints (each checkpointed input, one back at a time: LLaMA-Factory "
            "use_unsloth_gc, axolotl legacy) | unsloth (unsloth_zoo's checkpointer: the last input and two staging "
            "buffers stay) | all (activation_offloading)",
        ),
        click.option(
            "--attn", default="sdpa", show_default=True, help="eager | sdpa | flash_attention_2 | flex_attention"
        ),
        click.option(
            "--recipe",
            default="trainer",
            show_default=True,
            help="the framework whose defaults fill what you leave unset: trainer | trl | llamafactory | axolotl | "
            "unsloth, at its installed version or a named one (trl==0.21); --from picks the file's",
        ),
        click.option(
            "--stack",
            default=None,
            metavar="PKG==VER,...",
            help="library versions to plan for, e.g. transformers==4.57.6,bitsandbytes==0.43.1 (transformers, "
            "peft, bitsandbytes, torch, trl) [the installed ones]",
        ),
        click.option(
            "--loss",
            default="hf",
            show_default=True,
            help="hf (full logits) | trl-chunked (TRL's fused LM head) | liger (fused linear CE) | cce "
            "(cut-cross-entropy) [the recipe's; trl-chunked for TRL's dpo, ipo, kto, grpo]",
        ),
        click.option(
            "--liger/--no-liger",
            "liger_kernels",
            default=False,
            show_default=True,
            help="Liger's RMSNorm, SwiGLU and RoPE kernels (modelled from their Triton source)",
        ),
        click.option(
            "--lora-kernels",
            default="",
            help="axolotl's fused LoRA kernels in place of PEFT's branches: qkv,o,mlp (any of them) [none]",
        ),
        click.option(
            "--packing/--no-packing",
            default=False,
            show_default=True,
            help="packed / padding-free batches (sample_packing, packing, padding_free): every token real",
        ),
        click.option(
            "--freeze-trainable-layers",
            type=COUNT,
            default=2,
            show_default=True,
            help="freeze: train the last N layers",
        ),
        click.option(
            "--alloc-conf",
            default=None,
            metavar="CONF",
            help="PYTORCH_CUDA_ALLOC_CONF to plan for, e.g. expandable_segments:True [torch's defaults]",
        ),
        click.option(
            "--image-tokens",
            type=COUNT,
            default=0,
            show_default=True,
            help="VLM: image positions per sequence, added to --seq (e.g. 576 for llava-1.5)",
        ),
        click.option(
            "--modules-to-save",
            default=None,
            help="PEFT modules_to_save: embed_tokens, lm_head (trainable full copies)",
        ),
        click.option(
            "--target-parameters",
            default=None,
            help="PEFT target_parameters: comma list (e.g. experts.gate_up_proj,experts.down_proj)",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return stage_options(from_options(f))


def stage_options(f: Callable) -> Callable:
    """The stage of the run and its keys (spec/stage.py), named as LLaMA-Factory, axolotl and TRL name them."""
    opts = [
        click.option(
            "--stage", "--rl", "stage", default=None,
            help="sft | pt | rm | dpo | ipo | kto | orpo | simpo | cpo | grpo | ppo | ebft | asft (LF stage, "
            "axolotl rl; asft = LF sft + use_asft_loss)",
        ),
        click.option("--reference", default=None, help="reference policy: model | adapter | precomputed | none "
                     "[adapter under LoRA, else model; none without one]"),
        click.option("--precompute-ref", "precompute_ref", is_flag=True, default=None,
                     help="precompute_ref_log_probs: no reference in the step (= --reference precomputed)"),
        click.option("--pref-beta", type=float, default=None,
                     help="DPO/KTO beta, ASFT asft_alpha; GRPO beta > 0 loads a reference [0.1; grpo 0.0]"),
        click.option("--fused-lm-head/--no-fused-lm-head", default=None,
                     help="deprecated: = --loss trl-chunked / --loss hf"),
        click.option("--num-generations", type=COUNT, default=None, help="GRPO completions per prompt [8]"),
        click.option("--max-completion-length", type=COUNT, default=None, help="GRPO/PPO generated tokens [512]"),
        click.option("--generation", default=None,
                     help="grpo/ppo: hf (model.generate) | vllm-colocate | vllm-server [hf]"),
        click.option("--vllm-gpu-memory-utilization", type=float, default=None,
                     help="colocated vLLM's share of the GPU [0.3]"),
        click.option("--peft", default=None, help="PEFT method (PeftType names): lora | adalora | ia3 | loha | lokr | "
                     "vera | oft | boft | lora_fa | prompt_tuning | p_tuning | prefix_tuning; rslora, loraplus, "
                     "pissa, olora, loftq = lora in memory [lora]"),
        click.option("--num-virtual-tokens", type=COUNT, default=None, help="prompt / prefix tuning tokens [20]"),
        click.option("--block-size", type=COUNT, default=None, help="oft_block_size [32] / boft_block_size [4]"),
        click.option("--reward-model", default=None,
                     help="ppo: adapter (LoRA on the policy) | model [adapter under LoRA]"),
        click.option("--ebft-mode", default=None,
                     help="axolotl ebft.mode: structured (GRPO + feature reward) | strided [structured]"),
    ]  # fmt: skip
    for opt in reversed(opts):
        f = opt(f)
    return f


TRAIN_KEYS = (
    "method", "dtype", "mixed_precision", "quant", "double_quant", "kbit_prep", "batch", "seq", "grad_accum",
    "lora_rank", "lora_alpha", "lora_dropout", "lora_target", "dora", "optim", "grad_ckpt", "attn",
    "freeze_trainable_layers", "alloc_conf", "loss", "packing", "recipe", "liger_kernels", "image_tokens",
    "modules_to_save", "target_parameters", "optim_rank", "activation_offload", "stack", "lora_kernels",
)  # fmt: skip
STAGE_KEYS = (
    "stage", "reference", "pref_beta", "fused_lm_head", "num_generations", "max_completion_length", "generation",
    "vllm_gpu_memory_utilization", "reward_model", "peft", "num_virtual_tokens", "block_size", "ebft_mode",
)  # fmt: skip


def from_options(f: Callable) -> Callable:
    """--from FILE (repeatable) and --model, for any command with train_options: its resolve_inputs /
    resolve_plan reads them from **kw (make MODEL `required=False` so --from can name the model)."""
    f = click.option("--model", "model_option", default=None, help="the model, instead of MODEL [the --from file's]")(f)
    return click.option(
        "--from", "from_files", multiple=True, metavar="FILE",
        help="settings from a LLaMA-Factory or axolotl YAML, a TrainingArguments JSON, an "
        "adapter_config.json or a config.json (repeatable); options you type override them",
    )(f)  # fmt: skip


def parallel_options(f: Callable) -> Callable:
    """--gpus, --strategy, --gpus-per-node, --offload: one GPU's share of a DDP / DeepSpeed / FSDP run."""
    opts = [
        click.option("--gpus", type=COUNT, default=1, show_default=True, help="data-parallel GPUs (ranks)"),
        click.option("--strategy", default=None, help="ddp | zero1 | zero2 | zero3 | fsdp | fsdp-hybrid"),
        click.option("--gpus-per-node", type=COUNT, default=8, show_default=True, help="fsdp-hybrid's group"),
        click.option("--offload", default="none", show_default=True, help="none | optimizer | params (CPU)"),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def parallel_plan(m, t, b, kw: dict[str, Any]):
    """The ParallelPlan of the one-GPU Breakdown `b` for kw's --gpus/--strategy/...; warnings to stderr."""
    p = resolve_parallel_spec(t, kw)
    if p.plain:  # the engines' rules (estimator.distributed) are loaded for several GPUs or an engine only
        from vramplan.estimator.parallel_plan import ParallelPlan

        return ParallelPlan.one_gpu(p, b)
    from vramplan.estimator.distributed import shard

    return shard(m, t, p, b)


def resolve_parallel_spec(t, kw: dict[str, Any]):
    """The ParallelSpec of kw's --gpus/--strategy/--gpus-per-node/--offload; warnings to stderr."""
    from vramplan.spec.parallel import resolve_parallel

    p = resolve_parallel(
        t, gpus=kw["gpus"], strategy=kw["strategy"], gpus_per_node=kw["gpus_per_node"], offload=kw["offload"],
        buckets=kw.get("buckets"), reshard_after_forward=kw.get("reshard_after_forward", True),
    )  # fmt: skip
    for note in p.notes:
        warn(note)
    return p


def resolve_gpu(gpu: str | None):
    """The GpuProfile of --gpu (a name, an alias, or `auto` for this machine's), with the overheads of the
    user's stored calibration: resolved once per command, so every estimate the command makes agrees."""
    if gpu is None:  # `--gpu ""` is an unknown GPU, not no GPU
        return None
    from vramplan.trust.calibration import calibrate

    if gpu == "auto":
        from vramplan.sources.local_gpu import local_gpu_profile

        return calibrate(local_gpu_profile())
    from vramplan.sources.profiles import find_gpu

    return calibrate(find_gpu(gpu))


def resolve_plan(model: str | None, gpu: str | None, kw: dict[str, Any]):
    """(ModelSpec, TrainSpec, GpuProfile | None, Plan) from CLI values and kw's --from files: an option the
    user typed (click's ParameterSource) beats a file's value. Prints what is not modeled on one line."""
    from click.core import ParameterSource

    from vramplan.sources.inputs import plan_inputs
    from vramplan.spec import resolve_train

    option = kw.get("model_option")
    if model and option and model != option:
        raise VramplanError(f"two models: MODEL {model!r} and --model {option!r}; pass one")
    ctx = click.get_current_context(silent=True)
    defaults = (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    # fit's --seq is a list (parameter `seq_list`); its first value is the chosen seq
    keys = (*TRAIN_KEYS, *(k for k in STAGE_KEYS if kw.get(k) is not None))  # stage keys only when typed
    param = {k: k if ctx is None or k in ctx.params else {"seq": "seq_list"}.get(k, k) for k in keys}
    typed = {k for k in keys if ctx is None or ctx.get_parameter_source(param[k]) not in defaults}
    flags = {k: kw[k] for k in keys}
    if kw.get("precompute_ref"):
        flags["reference"] = "precomputed"
        typed.add("reference")
    g = resolve_gpu(gpu)
    plan = plan_inputs(model or option, kw.get("from_files") or (), flags, typed)
    if plan.not_modeled:
        warn("not modeled, estimated without: " + "; ".join(map(str, plan.not_modeled)), label="note")
    if plan.recipe is not None:
        for note in plan.recipe.notes:
            if "not modelled" not in note:
                warn(note, label="note")
    for note in plan.file_notes:
        warn(note, label="note")
    # the files' DeepSpeed / FSDP / accelerate settings, under the --gpus / --strategy / --offload typed
    parallel_typed = {k for k in ("gpus", "strategy", "offload") if k in kw and ctx is not None
                      and ctx.get_parameter_source(k) not in defaults}  # fmt: skip
    if "strategy" in parallel_typed:
        plan_parallel = {k: v for k, v in plan.parallel.items() if k == "gpus"}
    else:
        plan_parallel = dict(plan.parallel)
    for k, v in plan_parallel.items():
        if k not in parallel_typed and (k in kw or k in ("buckets", "reshard_after_forward")):
            kw[k] = v
    t = resolve_train(
        plan.model,
        gpu_bf16=g.bf16 if g else True,
        gpu_compute_capability=g.compute_capability if g else None,
        explicit={k for k, source in plan.sources.items() if source == "flag"},
        **plan.settings,
    )
    return plan.model, t, g, plan


def resolve_inputs(model: str | None, gpu: str | None, kw: dict[str, Any]):
    """(ModelSpec, TrainSpec, GpuProfile | None) from CLI values; raises VramplanError on bad input."""
    return resolve_plan(model, gpu, kw)[:3]


def emit_notes(t) -> None:
    for note in t.notes:
        warn(note)
