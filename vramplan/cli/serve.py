"""`vramplan serve`: the memory to serve a model with vLLM or HF generate."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from vramplan.cli import console
from vramplan.cli_options import COUNT, resolve_gpu
from vramplan.report.common import warn


def serve_options(f: Callable) -> Callable:
    """`vramplan serve`'s options: vLLM's engine arguments and HF generate's, names as theirs."""
    opts = [
        click.option("--gpu", default=None, help="GPU name or alias (see `vramplan gpus`); `auto` = this machine's"),
        click.option("--engine", default="vllm", show_default=True, help="vllm | hf (transformers generate)"),
        click.option("--dtype", default=None, help="model dtype: bf16 | fp16 | fp32 [bf16; fp16 w/o bf16]"),
        click.option(
            "--quant",
            default=None,
            help="bitsandbytes in flight: none | nf4 | fp4 | int8 [none; a "
            "checkpoint's own quantization_config is read from its config.json]",
        ),
        click.option("--double-quant/--no-double-quant", default=True, help="bnb_4bit_use_double_quant [on]"),
        click.option("--kv-cache-dtype", default="auto", help="vLLM: auto | fp8 | fp8_e4m3 | fp8_e5m2 [auto]"),
        click.option("--enable-lora", is_flag=True, help="serve LoRA adapters (implied by --max-loras, --lora-rank)"),
        click.option("--max-loras", type=COUNT, default=None, help="adapters resident on the GPU [1]"),
        click.option("--max-lora-rank", "--lora-rank", "max_lora_rank", type=COUNT, default=None, help="LoRA r [16]"),
        click.option(
            "--lora-target",
            default="all-linear",
            show_default=True,
            help="PEFT targets: all-linear | attn | qv | names (vLLM: lora_target_modules)",
        ),
        click.option("--merged-lora", is_flag=True, help="adapter merged into the weights: no adapter memory"),
        click.option("--batch", type=COUNT, default=None, help="hf: sequences per generate() [1]"),
        click.option("--prompt-tokens", type=COUNT, default=None, help="hf: prompt length [512]"),
        click.option("--new-tokens", type=COUNT, default=None, help="hf: max_new_tokens [512]"),
        click.option("--max-model-len", type=COUNT, default=None, help="vLLM [the model's max_position_embeddings]"),
        click.option("--max-num-seqs", type=COUNT, default=None, help="vLLM [256; 1024 on >= 70 GiB GPUs but A100]"),
        click.option("--max-num-batched-tokens", type=COUNT, default=None, help="vLLM [2048; 8192 on >= 70 GiB]"),
        click.option(
            "--gpu-memory-utilization",
            type=float,
            default=None,
            help="vLLM [1.0 in 0.34 (extensible KV cache); 0.92 in 0.21; 0.9 before]",
        ),
        click.option("--block-size", type=COUNT, default=None, help="vLLM KV block, tokens [16]"),
        click.option("--enforce-eager", is_flag=True, help="vLLM: no CUDA graphs"),
        click.option("--tensor-parallel-size", "-tp", type=COUNT, default=None, help="vLLM: GPUs per layer [1]"),
        click.option("--pipeline-parallel-size", "-pp", type=COUNT, default=None, help="vLLM: pipeline stages [1]"),
        click.option("--enable-expert-parallel", is_flag=True, help="vLLM: MoE experts split across the TP ranks"),
        click.option(
            "--vllm-version",
            default=None,
            help="vLLM release whose start-up sizing applies: 0.6 | 0.10 | 0.21 | 0.34, or e.g. 0.8.5 [0.34]",
        ),
        click.option(
            "--stack",
            default=None,
            metavar="PKG==VER,...",
            help="hf: transformers / peft versions to plan for, e.g. transformers==4.44.2 [the installed ones]",
        ),
        click.option(
            "--gpu-memory-gib",
            type=float,
            default=None,
            help="the GPU's CUDA total in GiB (vLLM's total_gpu_memory) [from --gpu]",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@click.command()
@click.argument("model")
@serve_options
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of the table")
def serve(model: str, gpu: str | None, as_json: bool, **kw: Any) -> None:
    """Estimate the GPU memory to serve MODEL (weights + KV cache + adapters) with vLLM or HF generate.

    vLLM: the KV-cache tokens its pool holds and the concurrency at --max-model-len, as vLLM logs at start.
    """
    from vramplan.api import estimate_serve

    b = estimate_serve(model, gpu=resolve_gpu(gpu), **kw)
    for note in b.serve.notes:
        warn(note)
    if as_json:
        from vramplan.report.serve import serve_json

        click.echo(json.dumps(serve_json(b)))
        return
    from vramplan.report.serve import render_serve

    render_serve(b, console())
