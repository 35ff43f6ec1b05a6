"""`vramplan serve`: serving memory by component, vLLM's start-up figures (KV tokens, concurrency), verdict."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vramplan.report.common import (
    band_text,
    bar,
    calibration_json,
    figures_json,
    gib,
    listed,
    print_flow,
    print_labelled,
    print_notes,
    stack_line,
    verdict_line,
)

if TYPE_CHECKING:
    from rich.console import Console

    from vramplan.serve_breakdown import ServeBreakdown


def serve_inputs_json(b: ServeBreakdown) -> dict[str, Any]:
    return {"model": b.model, "gpu": b.gpu, **listed(b.serve.as_dict()), **calibration_json(b)}


def serve_json(b: ServeBreakdown) -> dict[str, Any]:
    """`vramplan serve --json`: the keys of `breakdown_json` where they mean the same, plus `vllm`."""
    out: dict[str, Any] = {
        "model": b.model,
        "engine": b.engine,
        "source": "estimate",
        **figures_json(b),
        "params": {"total": b.params_total, "adapters": b.adapter_params},
        "problems": list(b.problems),
        "inputs": serve_inputs_json(b),
    }
    if b.vllm is not None:
        v = b.vllm
        out["vllm"] = {
            "total_bytes": v.total_bytes,
            "requested_bytes": v.requested_bytes,
            "cuda_graph_bytes": v.cuda_graph_bytes,
            "non_kv_bytes": v.non_kv_bytes,
            "forward_bytes": v.forward_bytes,
            "sampler_bytes": v.sampler_bytes,
            "available_kv_bytes": v.available_kv_bytes,
            "page_bytes": v.kv.page_bytes,
            "block_size": v.kv.block_size,
            "num_blocks": v.kv.num_blocks,
            "kv_cache_tokens": v.kv.tokens,
            "max_model_len": v.max_model_len,
            "max_concurrency": round(v.kv.max_concurrency, 4),
            "max_model_len_fit": v.max_model_len_fit,
        }
    return out


def budget_extra(b: ServeBreakdown) -> str:
    """What else comes off the budget in the release modelled (spec/vllm_versions.py)."""
    from vramplan.spec.vllm_versions import vllm_release

    release, v = vllm_release(b.serve.vllm_version), b.vllm
    if v is None or not release.graphs_in_budget:
        return "; CUDA graphs on top"
    if release.extensible_kv_cache:
        return f"; CUDA graphs {gib(v.cuda_graph_bytes)} GiB, CUDA context and the free margin of the extensible cache"
    return f"; CUDA graphs {gib(v.cuda_graph_bytes)} GiB"


def render_serve(b: ServeBreakdown, console: Console) -> None:
    """Components table, vLLM's own start-up lines (KV tokens, concurrency), verdict with headroom."""
    from rich.table import Table
    from rich.text import Text

    from vramplan.serve_breakdown import SERVE_COMPONENT_LABELS

    s = b.serve
    gpu = f" · {b.gpu}" if b.gpu else ""
    lora = f" · LoRA {s.max_loras} × r{s.max_lora_rank}" if s.enable_lora else ""
    quant = f" · {s.quant_label}" if s.quant_label else ""
    if b.engine == "vllm":
        parallel = ""
        if s.tensor_parallel_size * s.pipeline_parallel_size > 1:
            parallel = f" · TP {s.tensor_parallel_size} × PP {s.pipeline_parallel_size}, figures per GPU"
        head = (
            f"{b.model} · vLLM {s.vllm_version} · max_model_len {s.max_model_len:,} · {s.dtype}{quant}{lora}{gpu}"
            f"{parallel}"
        )
    else:
        head = (
            f"{b.model} · transformers generate · batch {s.batch} × ({s.prompt_tokens} prompt + "
            f"{s.new_tokens} new tokens) · {s.dtype}{quant}{lora}{gpu}"
        )
    print_flow(head, console, style="italic")
    t = Table(show_edge=False, pad_edge=False)
    t.add_column("component")
    t.add_column("GiB", justify="right")
    t.add_column("share")
    dev = max(b.device_bytes, 1)
    for name, val in b.components.as_dict().items():
        if val:
            t.add_row(SERVE_COMPONENT_LABELS[name], gib(val), bar(val / dev))
    t.add_row(Text(f"peak ({b.peak_phase})", style="bold"), Text(gib(b.peak_bytes), style="bold"), "")
    if b.allocator_overhead_bytes:
        t.add_row("allocator overhead (reserved − allocated)", gib(b.allocator_overhead_bytes),
                  bar(b.allocator_overhead_bytes / dev))  # fmt: skip
    t.add_row("CUDA context", gib(b.cuda_context_bytes), bar(b.cuda_context_bytes / dev))
    t.add_row(Text("device total (as nvidia-smi)", style="bold"), Text(gib(b.device_bytes), style="bold"), "")
    console.print(t)
    if s.engine == "hf" and stack_line(s):
        print_flow(stack_line(s), console)
    if b.vllm is not None:
        v = b.vllm
        console.print(
            f"vLLM {s.vllm_version} budget: {s.gpu_memory_utilization} × {gib(v.total_bytes)} GiB (CUDA's total) = "
            f"{gib(v.requested_bytes)} GiB; weights, activation peak, non-torch {gib(v.non_kv_bytes)} GiB"
            f"{budget_extra(b)} → {gib(max(v.available_kv_bytes, 0))} GiB for the KV cache, in "
            f"{v.kv.num_blocks:,} blocks of {v.kv.block_size} tokens ({v.kv.page_bytes:,} B per layer)"
        )
        console.print(Text(f"GPU KV cache size: {v.kv.tokens:,} tokens", style="bold"))
        conc = f"Maximum concurrency for {v.max_model_len:,} tokens per request: {v.kv.max_concurrency:.2f}x"
        console.print(Text(conc, style="bold"))
    if b.gpu_bytes is not None and b.verdict is not None:
        console.print(
            verdict_line(b, band_text(b.error_band) + " · units GiB = 1024³ B", console.width), soft_wrap=True
        )
    for p in b.problems:
        print_labelled("problem", "red", p, console)
    print_notes(s.notes, console)
