"""The gated MLP's ops on the walk (`act_fn(gate_proj(x)) * up_proj(x)`, then down_proj), shared by the decoder
layer walk (`layer_ops._mlp`), DeepSeek-V3's dense and shared-expert MLPs (`moe_ops`) and Falcon-H1's (`mamba_ops`)."""

from __future__ import annotations

from vramplan.estimator.walk import SymbolicTensor, Walk, promote


def _down(walk: Walk, project, x: SymbolicTensor, name: str) -> SymbolicTensor:
    """The MLP's down projection; records what it saves (freed first in the layer's backward), except what it
    keeps in ctx.tensors (int8): that lives until its backward has run."""
    walk.mark("down")
    saved_before, ctx_before = walk.saved_bytes, sum(walk.ctx_saved.values())
    out = project(x, name)
    walk.down_saved = walk.saved_bytes - saved_before - (sum(walk.ctx_saved.values()) - ctx_before)
    return out


def _gated(walk: Walk, x: SymbolicTensor, project, intermediate: int, prefix: str) -> SymbolicTensor:
    """act_fn(gate_proj(x)) * up_proj(x), then down_proj: the activation waits for up_proj. `prefix`: where the
    linears' names say they sit (DeepSeek-V3's `mlp.` dense MLP, its `shared_experts.`)."""
    T = 1
    gate = project(x, prefix + "gate_proj")
    activated = walk.new(T * intermediate, gate.dtype, gate.requires_grad)
    if gate.requires_grad:
        walk.save(gate)
    walk.transient(gate, activated)
    walk.pinned[activated.id] = activated.nbytes
    up = project(x, prefix + "up_proj")
    del walk.pinned[activated.id]
    product = walk.new(T * intermediate, promote(activated.dtype, up.dtype), gate.requires_grad or up.requires_grad)
    if product.requires_grad:
        walk.save(activated, up)
    walk.transient(activated, up, product)
    return _down(walk, project, product, prefix + "down_proj")
