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
        click.option("--kbit-prep/--no-kbit-prep", default=None, help="prepare_model_for_kbit_training [on if quantized]"),
        click.option("--batch", type=int, default=1, show_default=True, help="per_device_train_batch_size"),
        click.option("--seq", type=int, default=1024, show_default=True, help="tokens per sequence"),
        click.option("--grad-accum", type=int, default=1, show_default=True, help="gradient_accumulation_steps"),
        click.option("--lora-rank", type=int, default=16, show_default=True, help="LoRA r"),
        click.option("--lora-alpha", type=int, default=None, help="lora_alpha [2 × rank]"),
        click.option("--lora-dropout", type=float, default=0.05, show_default=True),
        click.option(
            "--lora-target", default="all-linear", show_default=True,
            help="all-linear | attn | qv (PEFT's default) | comma list of module names",
        ),
        click.option("--dora/--no-dora", default=False, show_default=True, help="use_dora"),
        click.option("--optim", default="adamw_torch_fused", show_default=True, help="HF TrainingArguments.optim"),
        click.option("--grad-ckpt/--no-grad-ckpt", default=None, help="gradient checkpointing [on for qlora]"),
        click.option("--attn", default="sdpa", show_default=True, help="eager | sdpa | flash_attention_2"),
        click.option("--freeze-trainable-layers", type=int, default=2, show_default=True,
                     help="freeze: train the last N layers"),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


TRAIN_KEYS = (
    "method", "dtype", "mixed_precision", "quant", "double_quant", "kbit_prep", "batch", "seq", "grad_accum",
    "lora_rank", "lora_alpha", "lora_dropout", "lora_target", "dora", "optim", "grad_ckpt", "attn",
    "freeze_trainable_layers",
)  # fmt: skip


def resolve_inputs(model: str, gpu: str | None, kw: dict[str, Any]):
    """(ModelSpec, TrainSpec, GpuProfile | None) from CLI values; raises VramplanError on bad input."""
    from vramplan.profiles import find_gpu, load_model
    from vramplan.spec import resolve_train

    g = None
    if gpu == "auto":
        from vramplan.local_gpu import local_gpu_profile

        g = local_gpu_profile()
    elif gpu:
        g = find_gpu(gpu)
    m = load_model(model)
    t = resolve_train(m, gpu_bf16=g.bf16 if g else True, **{k: kw[k] for k in TRAIN_KEYS})
    return m, t, g


def _emit_notes(t) -> None:  # noqa: ANN001
    for note in t.notes:
        click.echo(f"warning: {note}", err=True)


@main.command()
@click.argument("model")
@train_options
@click.option("--suggest", is_flag=True, help="rank the cheapest changes that make it fit (needs --gpu)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of the table")
def estimate(model: str, gpu: str | None, suggest: bool, as_json: bool, **kw: Any) -> None:
    """Estimate the peak GPU memory of one training step of MODEL.

    MODEL: a built-in name (`vramplan models`), a config.json or its folder, or a hub id in the local HF cache.
    """
    from vramplan.estimate import estimate as run_estimate
    from vramplan.fit import advice_lines
    from vramplan.fit import suggest as run_suggest

    m, t, g = resolve_inputs(model, gpu, kw)
    _emit_notes(t)
    b = run_estimate(m, gpu=g, train=t)
    if suggest and g is None:
        raise VramplanError("--suggest needs a GPU to fit: add --gpu NAME (see `vramplan gpus`)")
    suggestions = run_suggest(m, t, g) if (g is not None and (suggest or b.verdict != "fits")) else []
    if as_json:
        from vramplan.report import breakdown_json

        extra = {}
        if suggest:
            extra["suggestions"] = [
                {"change": s.change, "cost": s.cost, "device_bytes": s.device_bytes, "verdict": s.breakdown.verdict}
                for s in suggestions
            ]
        click.echo(json.dumps(breakdown_json(b, extra)))
        return
    from vramplan.report import render_advice, render_breakdown

    con = _console()
    render_breakdown(b, con)
    if g is not None and (suggest or b.verdict != "fits"):
        render_advice(advice_lines(m, t, g, n=6 if suggest else 2), con)


@main.command()
@click.option("--json", "as_json", is_flag=True)
def gpus(as_json: bool) -> None:
    """The GPU profiles: memory (GiB, as NVML reports it) and bf16 support."""
    from vramplan.profiles import load_gpus

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
        t.add_row(g.key, g.name, gib(g.memory_bytes), g.compute_capability, "yes" if g.bf16 else "no",
                  ", ".join(g.aliases))
    _console().print(t)


@main.command()
@click.option("--json", "as_json", is_flag=True)
def models(as_json: bool) -> None:
    """The built-in model profiles, with parameter counts."""
    from vramplan.profiles import builtin_model_names, load_model

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
        t.add_row(s.name, s.model_type, f"{s.total_params / 1e9:.2f} B", str(s.num_hidden_layers),
                  str(s.hidden_size), f"{s.num_attention_heads}/{s.num_key_value_heads}", f"{s.vocab_size:,}")
    _console().print(t)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
