"""A CPU stand-in of axolotl's linearized Llama 4 experts, swapped into transformers as axolotl swaps it.

axolotl's `llama4_linearized_experts: true` calls `patch_llama4_linearized_modeling()`
(src/axolotl/monkeypatch/models/llama4/modeling.py, axolotl-ai-cloud/axolotl commit 102fdac6), which replaces
`transformers.models.llama4.modeling_llama4.Llama4TextExperts` before the model is built by a module with
per-expert `nn.Linear` ModuleLists: `gate_projs` and `up_projs` (hidden -> intermediate, no bias) and
`down_projs` (intermediate -> hidden). Its forward views the routed input (experts · tokens, hidden) as
(experts, tokens, hidden), fills `torch.zeros_like` of it expert by expert in a Python loop
(`next_states[i] = down(up(x_i) * act(gate(x_i)))`, an in-place copy into a slice) and returns the flat view.

This module re-states that layout and forward for the harness and the tests (axolotl is not installed here);
the parameter layout and the autograd graph are the same: bitsandbytes quantizes the experts (they are
nn.Linear) and PEFT can target them (`experts.gate_projs.[0-9]+$`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from transformers.activations import ACT2FN


class LinearizedLlama4TextExperts(nn.Module):
    """Llama4TextExperts with one nn.Linear per expert and projection (axolotl's layout)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.num_experts = config.num_local_experts
        self.hidden_size = config.hidden_size
        self.expert_dim = config.intermediate_size
        self.gate_projs = nn.ModuleList(
            nn.Linear(self.hidden_size, self.expert_dim, bias=False) for _ in range(self.num_experts)
        )
        self.up_projs = nn.ModuleList(
            nn.Linear(self.hidden_size, self.expert_dim, bias=False) for _ in range(self.num_experts)
        )
        self.down_projs = nn.ModuleList(
            nn.Linear(self.expert_dim, self.hidden_size, bias=False) for _ in range(self.num_experts)
        )
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states.view(self.num_experts, -1, self.hidden_size)
        next_states = torch.zeros_like(hidden_states)
        for i in range(self.num_experts):
            expert_input = hidden_states[i]
            gate = self.gate_projs[i](expert_input)
            up = self.up_projs[i](expert_input)
            next_states[i] = self.down_projs[i](up * self.act_fn(gate))
        return next_states.view(-1, self.hidden_size)


@contextlib.contextmanager
def linearized_experts() -> Iterator[None]:
    """Build Llama 4 models with the linearized experts inside this block (axolotl's patch, then undone)."""
    from transformers.models.llama4 import modeling_llama4

    fused = modeling_llama4.Llama4TextExperts
    modeling_llama4.Llama4TextExperts = LinearizedLlama4TextExperts  # type: ignore[misc]
    try:
        yield
    finally:
        modeling_llama4.Llama4TextExperts = fused  # type: ignore[misc]
