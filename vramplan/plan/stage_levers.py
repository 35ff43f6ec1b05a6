"""The levers of preference and RL runs (`--suggest`, `plan/advice.py`): each one edit of the run's stage,
estimated in full by the caller like every other suggestion.

- a frozen reference copy → the policy with its adapter disabled (TRL's default under LoRA: free);
- a reference in the step → reference log-probs precomputed before training (`precompute_ref_log_probs`:
  one pass over the data first);
- materialized logits → TRL's fused LM head (DPO / IPO / KTO: TRL's trainers instead of LLaMA-Factory's);
- a colocated vLLM → half its `vllm_gpu_memory_utilization` (a smaller KV pool, slower generation), or vLLM
  on other GPUs (`vllm_mode="server"`).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

from vramplan.spec import TrainSpec

MIN_VLLM_SHARE = 0.1  # below this a colocated vLLM rarely holds a model and a useful KV pool


class StageLever(NamedTuple):
    label: str
    cost: int  # advice.COST_LABEL: 0 free, 1 slower, 2 changes the recipe, 3 fewer tokens per step
    train: TrainSpec


def stage_levers(t: TrainSpec) -> list[StageLever]:
    st = t.stage
    out: list[StageLever] = []

    def with_stage(**changes: object) -> TrainSpec:
        return dataclasses.replace(t, stage=dataclasses.replace(st, **changes))

    if st.reference == "model" and t.uses_lora:
        out.append(StageLever("--reference adapter (the policy with its adapter disabled: no second model)", 0,
                              with_stage(reference="adapter")))  # fmt: skip
    if st.reference in ("model", "adapter") and not st.generates:
        out.append(StageLever("--precompute-ref (reference log-probs computed once before training)", 1,
                              with_stage(reference="precomputed")))  # fmt: skip
    if not st.fused_lm_head and st.stage in ("dpo", "ipo", "kto"):
        out.append(StageLever("--loss trl-chunked (TRL's DPO/KTO trainers: no batch × seq × vocab logits)", 2,
                              dataclasses.replace(with_stage(fused_lm_head=True), loss="trl-chunked")))  # fmt: skip
    if st.generates and st.generation == "vllm-colocate":
        share = round(st.vllm_gpu_memory_utilization / 2, 2)
        if share >= MIN_VLLM_SHARE:
            out.append(StageLever(f"--vllm-gpu-memory-utilization {share} (a smaller vLLM KV pool)", 1,
                                  with_stage(vllm_gpu_memory_utilization=share)))  # fmt: skip
        out.append(StageLever("--generation vllm-server (vLLM on other GPUs: trl vllm-serve)", 1,
                              with_stage(generation="vllm-server", vllm_gpu_memory_utilization=0.0)))  # fmt: skip
    return out
