"""The `vramplan` command: parsing and rendering only; the arithmetic lives in vramplan.estimate / fit.

Heavy libraries (torch, transformers, peft, bitsandbytes) are imported only inside `measure`/`simulate`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from vramplan.errors import VramplanError


def _console():  # rich is imported lazily: `--json` and `--help` don't pay for it
    from rich.console import Console

    return Console()


class _Group(click.Group):
    """Turn a VramplanError anywhere in a command into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VramplanError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vramplan")
def main() -> None:
    """Plan GPU memory for fine-tuning and serving LLMs. Sizes are GiB (1024³ bytes)."""


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
        click.option("--batch", type=int, default=1, show_default=True, help="per_device_train_batch_size"),
        click.option("--seq", type=int, default=1024, show_default=True, help="tokens per sequence"),
        click.option("--grad-accum", type=int, default=1, show_default=True, help="gradient_accumulation_steps"),
        click.option("--lora-rank", type=int, default=16, show_default=True, help="LoRA r"),
        click.option("--lora-alpha", type=int, default=None, help="lora_alpha [2 × rank]"),
        click.option("--lora-dropout", type=float, default=0.05, show_default=True),
        click.option(
            "--lora-target",
            default="all-linear",
            show_default=True,
            help="all-linear | attn | qv (PEFT's default) | comma list of module names",
        ),
        click.option("--dora/--no-dora", default=False, show_default=True, help="use_dora"),
        click.option("--optim", default="adamw_torch_fused", show_default=True, help="HF TrainingArguments.optim"),
        click.option("--grad-ckpt/--no-grad-ckpt", default=None, help="gradient checkpointing [on for qlora]"),
        click.option("--attn", default="sdpa", show_default=True, help="eager | sdpa | flash_attention_2"),
        click.option(
            "--freeze-trainable-layers",
            type=int,
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
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


TRAIN_KEYS = (
    "method", "dtype", "mixed_precision", "quant", "double_quant", "kbit_prep", "batch", "seq", "grad_accum",
    "lora_rank", "lora_alpha", "lora_dropout", "lora_target", "dora", "optim", "grad_ckpt", "attn",
    "freeze_trainable_layers", "alloc_conf",
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
        click.option("--gpus", type=int, default=1, show_default=True, help="data-parallel GPUs (ranks)"),
        click.option("--strategy", default=None, help="ddp | zero1 | zero2 | zero3 | fsdp | fsdp-hybrid"),
        click.option("--gpus-per-node", type=int, default=8, show_default=True, help="fsdp-hybrid's group"),
        click.option("--offload", default="none", show_default=True, help="none | optimizer | params (CPU)"),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def parallel_plan(m, t, b, kw: dict[str, Any]):
    """The ParallelPlan of the one-GPU Breakdown `b` for kw's --gpus/--strategy/...; warnings to stderr."""
    from vramplan.estimator.distributed import shard

    return shard(m, t, resolve_parallel_spec(t, kw), b)


def resolve_parallel_spec(t, kw: dict[str, Any]):
    """The ParallelSpec of kw's --gpus/--strategy/--gpus-per-node/--offload; warnings to stderr."""
    from vramplan.spec.parallel import resolve_parallel

    p = resolve_parallel(
        t, gpus=kw["gpus"], strategy=kw["strategy"], gpus_per_node=kw["gpus_per_node"], offload=kw["offload"]
    )
    for note in p.notes:
        click.echo(f"warning: {note}", err=True)
    return p


def resolve_gpu(gpu: str | None):
    """The GpuProfile of --gpu (a name, an alias, or `auto` for this machine's), with the overheads of the
    user's stored calibration: resolved once per command, so every estimate the command makes agrees."""
    if not gpu:
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
    typed = {k for k in TRAIN_KEYS if ctx is None or ctx.get_parameter_source(k) not in defaults}
    g = resolve_gpu(gpu)
    plan = plan_inputs(model or option, kw.get("from_files") or (), {k: kw[k] for k in TRAIN_KEYS}, typed)
    if plan.not_modeled:
        click.echo("note: not modeled, estimated without: " + "; ".join(map(str, plan.not_modeled)), err=True)
    t = resolve_train(plan.model, gpu_bf16=g.bf16 if g else True, **plan.settings)
    return plan.model, t, g, plan


def resolve_inputs(model: str | None, gpu: str | None, kw: dict[str, Any]):
    """(ModelSpec, TrainSpec, GpuProfile | None) from CLI values; raises VramplanError on bad input."""
    return resolve_plan(model, gpu, kw)[:3]


def _emit_notes(t) -> None:
    for note in t.notes:
        click.echo(f"warning: {note}", err=True)


@main.command()
@click.argument("model", required=False)
@train_options
@from_options
@parallel_options
@click.option("--suggest", is_flag=True, help="rank the cheapest changes that make it fit (needs --gpu)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of the table")
def estimate(model: str | None, gpu: str | None, suggest: bool, as_json: bool, **kw: Any) -> None:
    """Estimate the peak GPU memory of one training step of MODEL.

    MODEL: a built-in name (`vramplan models`), a config.json or its folder, or a hub id (the local HF cache,
    else its built-in profile); optional when a --from file names the model.
    """
    from vramplan.api import estimate as run_estimate
    from vramplan.plan.advice import advice_lines
    from vramplan.plan.advice import suggest as run_suggest

    m, t, g, plan = resolve_plan(model, gpu, kw)
    _emit_notes(t)
    pp = parallel_plan(m, t, run_estimate(m, gpu=g, train=t), kw)
    b = pp.breakdown  # one GPU's share; the one-GPU estimate itself when pp.spec.plain
    if suggest and g is None:
        raise VramplanError("--suggest needs a GPU to fit: add --gpu NAME (see `vramplan gpus`)")
    wants_advice = g is not None and (suggest or b.verdict != "fits")
    suggestions = run_suggest(m, t, g) if (wants_advice and pp.spec.plain) else []  # one-GPU changes
    if as_json:
        from vramplan.report import breakdown_json, parallel_json

        extra: dict[str, Any] = {"parallel": parallel_json(pp)}
        if suggest:
            extra["suggestions"] = [
                {
                    "change": s.change,
                    "cost": s.cost,
                    "device_bytes": s.device_bytes,
                    "verdict": s.breakdown.verdict,
                }
                for s in suggestions
            ]
        out = breakdown_json(b, extra)
        skipped = [str(u) for u in plan.not_modeled]
        out["inputs"].update(sources=dict(plan.sources), not_modeled=skipped, model_config=plan.model_config)
        click.echo(json.dumps(out))
        return
    from vramplan.report import parallel_advice_lines, render_advice, render_parallel

    con = _console()
    render_parallel(pp, con)
    from vramplan.report import render_calibration_note

    render_calibration_note(b, con)
    if g is not None and not pp.spec.plain and (suggest or b.verdict != "fits"):
        from vramplan.estimator.distributed import alternatives

        render_advice(parallel_advice_lines(alternatives(m, t, pp)), con)
    elif g is not None and (suggest or b.verdict != "fits"):
        render_advice(advice_lines(m, t, g, n=6 if suggest else 2), con)


def _seq_list(f: Callable) -> Callable:
    """`fit` takes a list of sequence lengths: its --seq replaces train_options' single one."""
    f.__click_params__ = [p for p in f.__click_params__ if p.name != "seq"]  # type: ignore[attr-defined]
    return click.option(
        "--seq", "seq_list", default=None, metavar="N[,N...]",
        help="sequence lengths (columns) [512,1024,2048,4096,8192]; the first is the rank search's [1024]",
    )(f)  # fmt: skip


@main.command()
@click.argument("model")
@_seq_list
@train_options
@parallel_options
@click.option(
    "--plot",
    default=None,
    is_flag=False,
    flag_value="-",
    metavar="[FILE.png]",
    help="peak vs sequence length per method (at --batch): in the terminal, or a PNG file",
)
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of the table")
@click.pass_context
def fit(
    ctx: click.Context, model: str, gpu: str | None, seq_list: str | None, plot: str | None, as_json: bool,
    **kw: Any,
) -> None:  # fmt: skip
    """What fits on a GPU: the largest batch per method and sequence length, the longest sequence, the largest
    LoRA rank.

    Rows: full, LoRA, QLoRA (only --method's when given), each without / with gradient checkpointing, with
    --optim and with 8-bit AdamW. A cell is the largest batch whose verdict is `fits` or `tight` (* = tight).
    """
    from click.core import ParameterSource

    from vramplan.plan.fit import fit_table, parse_seqs, peak_curves

    if gpu is None:
        raise VramplanError("fit needs a GPU: --gpu NAME (see `vramplan gpus`) or --gpu auto")
    if plot == "-" and as_json:
        raise VramplanError("the terminal plot cannot go with --json; write a file instead: --plot out.png")
    seqs, kw["seq"] = parse_seqs(seq_list)
    m, t, g = resolve_inputs(model, gpu, kw)
    _emit_notes(t)
    methods = None if ctx.get_parameter_source("method") is ParameterSource.DEFAULT else (t.method,)
    p = resolve_parallel_spec(t, kw)
    ft = fit_table(m, t, g, seqs, methods, parallel=p)
    curves = peak_curves(m, t, g, seqs, methods, parallel=p) if plot else []
    local = None
    if gpu == "auto":
        from vramplan.sources.local_gpu import query_local_gpus

        local = query_local_gpus()[0]
    from vramplan import report

    title = report.plot_title(m.name, g, t.batch)
    if plot and plot != "-":
        report.plot_png(curves, g, title, plot, ft.error_band)
    if as_json:
        extra = {"local_gpu": report.local_gpus_json([local])[0] if local else None, "plot": plot}
        click.echo(json.dumps(report.fit_json(ft, extra)))
        return
    con = _console()
    if local is not None:
        con.print(report.local_gpu_line(local, g))
    report.render_fit_table(ft, con)
    if plot == "-":
        click.echo(report.plot_terminal(curves, g, title, width=con.width, color=con.is_terminal))
    elif plot:
        con.print(f"plot written to {plot}")


@main.command()
@click.option("--local", is_flag=True, help="the GPUs NVML sees in this machine: name, total and free memory")
@click.option("--json", "as_json", is_flag=True)
def gpus(local: bool, as_json: bool) -> None:
    """The GPU profiles: memory (GiB, as NVML reports it) and bf16 support."""
    if local:
        from vramplan.report import local_gpus_json, render_local_gpus
        from vramplan.sources.local_gpu import query_local_gpus

        found = query_local_gpus()
        if as_json:
            click.echo(json.dumps(local_gpus_json(found)))
        else:
            render_local_gpus(found, _console())
        return
    from vramplan.sources.profiles import load_gpus

    rows = list(load_gpus().values())
    if as_json:
        click.echo(json.dumps([
            {"key": g.key, "name": g.name, "memory_bytes": g.memory_bytes, "compute_capability": g.compute_capability,
             "bf16": g.bf16, "aliases": list(g.aliases)} for g in rows
        ]))  # fmt: skip
        return
    from rich.table import Table

    from vramplan.report import gib

    t = Table(title="GPU profiles (memory in GiB = 1024³ B)", title_justify="left", show_edge=False)
    for col in ("key", "name", "GiB", "cc", "bf16", "aliases"):
        t.add_column(col, justify="right" if col == "GiB" else "left")
    for g in sorted(rows, key=lambda g: (g.memory_bytes, g.key)):
        t.add_row(
            g.key,
            g.name,
            gib(g.memory_bytes),
            g.compute_capability,
            "yes" if g.bf16 else "no",
            ", ".join(g.aliases),
        )
    _console().print(t)


@main.command()
@click.option("--json", "as_json", is_flag=True)
def models(as_json: bool) -> None:
    """The built-in model profiles, with parameter counts."""
    from vramplan.sources.profiles import builtin_model_names, load_model

    specs = [load_model(n) for n in builtin_model_names()]
    if as_json:
        click.echo(json.dumps([
            {"name": s.name, "model_type": s.model_type, "params": s.total_params, "layers": s.num_hidden_layers,
             "hidden_size": s.hidden_size, "vocab_size": s.vocab_size} for s in specs
        ]))  # fmt: skip
        return
    from rich.table import Table

    t = Table(title="built-in models", title_justify="left", show_edge=False)
    for col in ("name", "type", "params", "layers", "hidden", "heads/kv", "vocab"):
        t.add_column(col, justify="left" if col in ("name", "type") else "right")
    for s in specs:
        t.add_row(
            s.name,
            s.model_type,
            f"{s.total_params / 1e9:.2f} B",
            str(s.num_hidden_layers),
            str(s.hidden_size),
            f"{s.num_attention_heads}/{s.num_key_value_heads}",
            f"{s.vocab_size:,}",
        )
    _console().print(t)


@main.command()
@click.argument("model")
@click.option("--gpu", default=None, help="GPU name or alias (see `vramplan gpus`); `auto` = this machine's")
@click.option("--engine", default="vllm", show_default=True, help="vllm | hf (transformers generate)")
@click.option("--dtype", default=None, help="model dtype: bf16 | fp16 | fp32 [bf16; fp16 w/o bf16]")
@click.option("--quant", default=None, help="bitsandbytes: none | nf4 | fp4 | int8 [none]")
@click.option("--double-quant/--no-double-quant", default=True, help="bnb_4bit_use_double_quant [on]")
@click.option("--kv-cache-dtype", default="auto", help="vLLM: auto | fp8 | fp8_e4m3 | fp8_e5m2 [auto]")
@click.option("--enable-lora", is_flag=True, help="serve LoRA adapters (implied by --max-loras, --lora-rank)")
@click.option("--max-loras", type=int, default=None, help="adapters resident on the GPU [1]")
@click.option("--max-lora-rank", "--lora-rank", "max_lora_rank", type=int, default=None, help="LoRA r [16]")
@click.option("--lora-target", default="all-linear", show_default=True,
              help="PEFT targets: all-linear | attn | qv | names (vLLM: lora_target_modules)")  # fmt: skip
@click.option("--merged-lora", is_flag=True, help="adapter merged into the weights: no adapter memory")
@click.option("--batch", type=int, default=None, help="hf: sequences per generate() [1]")
@click.option("--prompt-tokens", type=int, default=None, help="hf: prompt length [512]")
@click.option("--new-tokens", type=int, default=None, help="hf: max_new_tokens [512]")
@click.option("--max-model-len", type=int, default=None, help="vLLM [the model's max_position_embeddings]")
@click.option("--max-num-seqs", type=int, default=None, help="vLLM [256; 1024 on >= 70 GiB GPUs but A100]")
@click.option("--max-num-batched-tokens", type=int, default=None, help="vLLM [2048; 8192 on >= 70 GiB]")
@click.option("--gpu-memory-utilization", type=float, default=None, help="vLLM [0.9]")
@click.option("--block-size", type=int, default=None, help="vLLM KV block, tokens [16]")
@click.option("--enforce-eager", is_flag=True, help="vLLM: no CUDA graphs")
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of the table")
def serve(model: str, gpu: str | None, as_json: bool, **kw: Any) -> None:
    """Estimate the GPU memory to serve MODEL (weights + KV cache + adapters) with vLLM or HF generate.

    vLLM: the KV-cache tokens its pool holds and the concurrency at --max-model-len, as vLLM logs at start.
    """
    from vramplan.api import estimate_serve

    b = estimate_serve(model, gpu=resolve_gpu(gpu), **kw)
    for note in b.serve.notes:
        click.echo(f"warning: {note}", err=True)
    if as_json:
        from vramplan.report import serve_json

        click.echo(json.dumps(serve_json(b)))
        return
    from vramplan.report import render_serve

    render_serve(b, _console())


@main.command()
@click.option("--data", default=None, metavar="FILE.jsonl", help="a validation set [shipped published-dev]")
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of the table")
def validate(data: str | None, as_json: bool) -> None:
    """Compare the estimator with published measurements (papers, READMEs): error by confidence level."""
    from vramplan.trust.validate import validate as run_validate

    v = run_validate(data)
    if as_json:
        from vramplan.report import validation_json

        click.echo(json.dumps(validation_json(v)))
        return
    from vramplan.report import render_validation

    render_validation(v, _console())


@main.command()
@click.option("--store", default=None, metavar="PATH", help="runs file [$VRAMPLAN_STORE, else user data dir]")
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of the tables")
def calibration(store: str | None, as_json: bool) -> None:
    """Runs stored by `measure --save` and the per-GPU figures `estimate` uses from them."""
    from vramplan.trust.calibration import calibrations, default_store, read_runs

    path = store or str(default_store())
    runs = read_runs(path)
    cals = calibrations(runs)
    if as_json:
        from vramplan.report import calibration_json

        click.echo(json.dumps(calibration_json(runs, cals, path)))
        return
    from vramplan.report import render_calibration

    render_calibration(runs, cals, path, _console())


class _Progress:
    """Harness progress (building, quantizing layer i/N, step k/N) on stderr: a rich status line on a terminal,
    plain lines otherwise."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.status = self.console.status("starting") if self.console.is_terminal else None

    def __enter__(self) -> _Progress:
        if self.status is not None:
            self.status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.status is not None:
            self.status.stop()

    def __call__(self, message: str) -> None:
        if self.status is not None:
            self.status.update(message)
        elif not message.startswith(("quantizing layer", "initializing layer")):
            click.echo(message, err=True)


def _measured(r, estimate_b, as_json: bool) -> None:
    from vramplan.estimator.allocator_slack import allocator_slacks

    summary = r.allocator_summary()
    modelled = allocator_slacks(estimate_b.components, estimate_b.train.grad_ckpt)
    if as_json:
        from vramplan.report import measurement_json
        from vramplan.report.allocator import allocator_json

        out = measurement_json(r, estimate_b)
        if summary is not None:
            out["allocator"] = allocator_json(summary, modelled, r.cuda)
        click.echo(json.dumps(out))
        return
    from vramplan.report import render_measurement
    from vramplan.report.allocator import render_allocator

    console = _console()
    render_measurement(r, estimate_b, console)
    if summary is not None:
        render_allocator(summary, modelled, estimate_b.peak_bytes, console, r.cuda)


@main.command()
@click.argument("model")
@train_options
@click.option("--steps", type=int, default=3, show_default=True, help="training steps (states appear in 1)")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default=None, help="[cuda if torch sees one, else cpu]")
@click.option("--weights", default=None, metavar="PATH", help="from_pretrained(PATH), not random weights")
@click.option("--save", is_flag=True, help="add this CUDA run to the calibration store")
@click.option("--store", default=None, metavar="PATH", help="--save's file [$VRAMPLAN_STORE, else user dir]")
@click.option("--json", "as_json", is_flag=True, help="estimate's JSON shape, measured, plus measured fields")
def measure(
    model: str,
    gpu: str | None,
    steps: int,
    device: str | None,
    weights: str | None,
    save: bool,
    store: str | None,
    as_json: bool,
    **kw: Any,
) -> None:
    """Run real training steps of MODEL (transformers + peft + bitsandbytes) and measure their memory.

    On CUDA: torch's max_memory_allocated / max_memory_reserved, NVML's figure for this process and the
    tracked breakdown; an out-of-memory error is a result (verdict oom). On CPU: the same step, traced tensor
    by tensor with the kernels CUDA would run (models up to 2B parameters). The estimate is printed beside it.
    """
    from vramplan.api import estimate as run_estimate

    m, t, g = resolve_inputs(model, gpu, kw)
    _emit_notes(t)
    from vramplan.measure.harness import run_step

    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if save and device != "cuda":
        raise VramplanError(f"--save stores CUDA measurements; --device {device} has none")
    with _Progress() as progress:
        r = run_step(m, t, device=device, steps=steps, weights=weights, gpu=g, progress=progress)
    estimate_b = run_estimate(m, gpu=g, train=t)
    if save and r.oom is None:
        from vramplan.measure.harness import run_record
        from vramplan.trust.calibration import append_run

        path = append_run(run_record(r, estimate_b), store)
        click.echo(f"saved to {path}", err=True)
    _measured(r, estimate_b, as_json)


@main.command()
@click.argument("model")
@train_options
@click.option("--steps", type=int, default=2, show_default=True, help="training steps to trace")
@click.option("--json", "as_json", is_flag=True, help="estimate's JSON shape, traced, plus traced fields")
def simulate(model: str, gpu: str | None, steps: int, as_json: bool, **kw: Any) -> None:
    """Trace real training steps of MODEL at full size without memory (fake / meta tensors, no GPU needed).

    The real transformers + peft + bitsandbytes code runs on tensors that have shapes but no data; the
    tracker records what CUDA would allocate (tensor level) and the estimate is printed beside it.
    """
    from vramplan.api import estimate as run_estimate

    m, t, g = resolve_inputs(model, gpu, kw)
    _emit_notes(t)
    from vramplan.measure.harness import simulate as run_simulate

    with _Progress() as progress:
        r = run_simulate(m, t, steps=steps, gpu=g, progress=progress)
    _measured(r, run_estimate(m, gpu=g, train=t), as_json)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
