"""The one road to a result: every `Breakdown` and `ServeBreakdown` is constructed here.

- `build_breakdown(model, spec, gpu)`: the estimate of a training step (`TrainSpec`) or of serving
  (`ServeSpec`) on `gpu`, with the overheads the GPU carries (`GpuProfile.overheads`: the documented defaults,
  or the user's calibration, resolved once per command by `vramplan.trust.calibration.calibrate`). estimate,
  fit, advice, the multi-GPU plans and serve all come through here, so they cannot disagree.
- `measured_breakdown(...)`: a traced or measured step (`vramplan.measure`), the same result type, so an
  estimate and a measurement line up component by component.
- `with_phases(b, phases, paged_bytes)`: one GPU's share of a multi-GPU run (estimator/distributed.py): the
  same inputs and overheads, other phases.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Literal, overload

from vramplan.breakdown import Breakdown, MeasuredRun, PhaseUsage
from vramplan.errors import VramplanError
from vramplan.estimator.params import count_params
from vramplan.estimator.peak import largest_per_phase as training_phases_of
from vramplan.estimator.peak import phases as training_phases
from vramplan.spec import ModelSpec, TrainSpec
from vramplan.spec.overheads import Overheads

if TYPE_CHECKING:  # serving's modules load with the first serving estimate (a training one does not need them)
    from vramplan.serve_breakdown import ServeBreakdown
    from vramplan.spec.gpu import GpuProfile
    from vramplan.spec.serve import ServeSpec

# where the caching allocator's figures come from (`build_breakdown`): the slack model, the walk replay where it
# could change the verdict ("auto", `estimate`'s default), the walk replay wherever its route goes
AllocatorModel = Literal["auto", "replay", "slack"]
ALLOCATOR_MODELS: tuple[str, ...] = ("auto", "replay", "slack")

# a hand-modelled text model read from a vision-language wrapper's text_config (Gemma 3)
TEXT_ONLY_NOTE = "text model only: the {} wrapper's vision tower and projector are not counted"


@overload
def build_breakdown(
    model: ModelSpec,
    spec: TrainSpec,
    gpu: GpuProfile | None,
    replay_allocator: bool = False,
    replay_verdict: bool = False,
    allocator_model: AllocatorModel = "slack",
) -> Breakdown: ...
@overload
def build_breakdown(
    model: ModelSpec,
    spec: ServeSpec,
    gpu: GpuProfile | None,
    replay_allocator: bool = False,
    replay_verdict: bool = False,
    allocator_model: AllocatorModel = "slack",
) -> ServeBreakdown: ...
def build_breakdown(
    model: ModelSpec,
    spec: TrainSpec | ServeSpec,
    gpu: GpuProfile | None,
    replay_allocator: bool = False,
    replay_verdict: bool = False,
    allocator_model: AllocatorModel = "slack",
) -> Breakdown | ServeBreakdown:
    """The estimate of `spec` (a training step or a serving setup) of `model` on `gpu` (None: no verdict,
    documented overheads). The caching allocator's figures (docs/caching-allocator.md), by `allocator_model`:
    "slack": the slack model's (`fit`'s and `--suggest`'s probes); "auto" (`estimate`'s default): a replay of
    the walk's allocation sequence, for the reserved figure and the verdict, where `allocator_replay.replay_route`
    takes it and the verdict could come out otherwise than the slack model's (`allocator_replay.may_change_
    verdict`), else the slack model's; "replay": the replay wherever the route takes it. `replay_allocator`
    (the former switch, "replay" for the reserved figure) with `replay_verdict` (for the verdict too)."""
    overheads = gpu.overheads if gpu is not None else Overheads()
    if not isinstance(spec, TrainSpec):
        return _serve(model, spec, gpu, overheads)
    if model.approximation is not None:  # a generic family: its stand-in's error adds to the estimator's
        overheads = dataclasses.replace(overheads, error_band=overheads.error_band + model.approximation.error_band)
    if spec.peft.error_band:  # a PEFT method walked as LoRA: its traced error adds to the estimator's
        overheads = dataclasses.replace(overheads, error_band=overheads.error_band + spec.peft.error_band)
    counts = count_params(model, spec)
    train = spec
    if spec.peft.prompt_learning:  # the virtual tokens lengthen every sequence the layers and lm_head see
        spec = dataclasses.replace(spec, seq=spec.seq + spec.peft.num_virtual_tokens)
    if spec.stage.is_sft:
        phases, paged = training_phases(model, spec)
    else:  # preference / RL steps (their module loads only for them)
        from vramplan.estimator.stage_moments import stage_moments

        candidates, paged = stage_moments(model, spec, gpu.memory_bytes if gpu else None)
        phases = training_phases_of(candidates)
    if replay_allocator:
        allocator_model = "replay"
    else:
        replay_verdict = True  # "auto" and "replay" replay for the verdict
    b = Breakdown(
        model=model.name,
        phases=phases,
        params_total=counts.total,
        params_trainable=counts.trainable,
        paged_bytes=paged,
        train=train,
        gpu=gpu.key if gpu else None,
        gpu_bytes=gpu.memory_bytes if gpu else None,
        overheads=overheads,
        approximation=model.approximation,
        notes=(TEXT_ONLY_NOTE.format(model.text_of),) if model.text_of else (),
        host_bytes=_offloaded_host_bytes(model, spec),
    )
    if allocator_model == "slack" or not spec.stage.is_sft or (allocator_model == "auto" and gpu is None):
        return b  # no verdict to change without a GPU: the replay's modules are not even imported
    from vramplan.estimator.allocator_replay import may_change_verdict, replay_route, replayed_allocator
    from vramplan.spec.alloc_conf import parse_alloc_conf

    config = parse_alloc_conf(spec.alloc_conf)
    if not replay_route(spec, config) or (allocator_model == "auto" and not may_change_verdict(b)):
        return b
    replayed = replayed_allocator(model, spec, config, b.peak_bytes, replay_verdict)
    return dataclasses.replace(b, replayed_allocator=replayed, replay_verdict=replay_verdict)


def _offloaded_host_bytes(model: ModelSpec, spec: TrainSpec) -> int:
    """Host RAM the offloaded activations and (axolotl layer_offloading) frozen layer parameters take."""
    if spec.activation_offload == "none" and not spec.layer_offload:
        return 0
    from vramplan.estimator.activations import activation_bytes
    from vramplan.estimator.offload import host_bytes, layer_offload_bytes

    layers = layer_offload_bytes(model, spec)[0]
    if spec.activation_offload == "none":
        return layers
    return layers + host_bytes(spec, activation_bytes(model, spec), model.num_hidden_layers)


def _serve(m: ModelSpec, s: ServeSpec, gpu: GpuProfile | None, overheads: Overheads) -> ServeBreakdown:
    from vramplan.estimator.serve import adapter_elem_bytes, adapter_params, hf_phases, serve_weight_bytes
    from vramplan.estimator.vllm import vllm_serving
    from vramplan.serve_breakdown import ServeBreakdown, ServeComponents

    w, q = serve_weight_bytes(m, s)
    resident = ServeComponents(weights=w, quant_state=q, adapters=adapter_params(m, s) * adapter_elem_bytes(s))
    common = {
        "model": m.name,
        "params_total": m.total_params,
        "adapter_params": adapter_params(m, s),
        "serve": s,
        "gpu": gpu.key if gpu else None,
        "gpu_bytes": gpu.memory_bytes if gpu else None,
        "overheads": overheads,
    }
    if s.engine == "vllm":
        if gpu is None:
            raise VramplanError("--engine vllm sizes its KV pool from the GPU's memory: add --gpu NAME (vramplan gpus)")
        phase, pool, problems = vllm_serving(m, s, gpu, resident)
        # KV tensors are single allocations and the activation peak is reserved once: no allocator slack
        return ServeBreakdown(
            engine="vllm", phases=(phase,), allocator_overhead_bytes=0, vllm=pool, problems=problems, **common
        )
    phases = hf_phases(m, s, resident)
    peak = max(p.total for p in phases)
    allocator = overheads.allocator_bytes(peak)
    return ServeBreakdown(engine="hf", phases=phases, allocator_overhead_bytes=allocator, **common)


def measured_breakdown(
    model: str,
    train: TrainSpec,
    phases: tuple[PhaseUsage, ...],
    *,
    params_total: int,
    params_trainable: int,
    paged_bytes: int,
    gpu: str | None,
    gpu_bytes: int | None,
    overheads: Overheads,
    source: str,
    notes: tuple[str, ...],
    run: MeasuredRun,
) -> Breakdown:
    """A traced (`simulate`, CPU `measure`) or measured (CUDA `measure`) step as a Breakdown; `overheads`
    carries the measured CUDA context and allocator slack where a GPU showed them."""
    return Breakdown(
        model=model,
        phases=phases,
        params_total=params_total,
        params_trainable=params_trainable,
        paged_bytes=paged_bytes,
        train=train,
        gpu=gpu,
        gpu_bytes=gpu_bytes,
        overheads=overheads,
        source=source,  # type: ignore[arg-type]
        notes=notes,
        run=run,
    )


def with_phases(b: Breakdown, phases: tuple[PhaseUsage, ...], paged_bytes: int) -> Breakdown:
    """`b` with other phases (one GPU's share of a multi-GPU run): same inputs, overheads and GPU. A rank whose
    phases differ takes the slack model's allocator figures (the walk replay follows the one-GPU step)."""
    replayed = b.replayed_allocator if phases == b.phases else None
    return dataclasses.replace(b, phases=phases, paged_bytes=paged_bytes, replayed_allocator=replayed)


__all__ = ["build_breakdown", "measured_breakdown", "with_phases"]
