"""One decoder layer's forward as allocation events: its walk (`layer_walk.decoder_layer`) recorded op by op
(`RecordingWalk`), each tensor freed after the last op that holds it unless autograd saves it (`layer_pattern`),
and that pattern at one step's sizes (`layer_template`). `alloc_events.py` emits the step from these. Pure Python.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from vramplan.allocator.replay import ALLOC, FREE
from vramplan.estimator.layer_walk import decoder_layer
from vramplan.estimator.walk import SymbolicTensor, Walk
from vramplan.spec import ModelSpec


class RecordingWalk(Walk):
    """A walk that also keeps its order: each tensor created (bytes per token and bytes per layer), each op's
    held tensors, the named marks. What the walk counts per layer rather than per tensor becomes a tensor of
    its own: an op's `extra` bytes (DoRA's weight-sized intermediates) live through that op; a rise of
    `per_layer_saved` (PEFT's MoE weight deltas, DoRA's per-feature vectors) is a tensor saved from there on.
    Those take negative ids."""

    __slots__ = ("constant_saved", "constants", "log", "recorded_per_layer")

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple] = []
        self.constant_saved: set[int] = set()
        self.recorded_per_layer = 0
        self.constants = 0  # the negative ids taken

    def _constant(self, nbytes: int) -> int:
        self.constants += 1
        tensor_id = -self.constants
        self.log.append(("new", tensor_id, (0j, nbytes)))
        return tensor_id

    def _sync(self) -> None:
        if self.per_layer_saved > self.recorded_per_layer:
            self.constant_saved.add(self._constant(self.per_layer_saved - self.recorded_per_layer))
            self.recorded_per_layer = self.per_layer_saved

    def new(self, numel: complex, dtype: str, requires_grad: bool) -> SymbolicTensor:
        self._sync()
        tensor = super().new(numel, dtype, requires_grad)
        self.log.append(("new", tensor.id, (tensor.nbytes, 0)))
        return tensor

    def mark(self, name: str) -> None:
        self._sync()
        self.log.append(("mark", name))

    def transient(self, *tensors: SymbolicTensor, extra: int = 0, extra_ref: int | None = None) -> None:
        super().transient(*tensors, extra=extra, extra_ref=extra_ref)
        self._sync()
        held = frozenset(t.id for t in tensors) | frozenset(self.pinned)
        if extra:
            held |= {self._constant(extra)}
        self.log.append(("use", held))


Size = tuple[complex, int]  # bytes per token (the imaginary part grows with seq), bytes per layer


@dataclass(frozen=True, slots=True)
class LayerPattern:
    """One decoder layer's forward as events (`Size`d).

    `events`: (ALLOC, local id, size) / (FREE, local id, 0); the input is id 0 (not allocated here), the
    output `output`; `saved`: the ids autograd (or ctx.tensors) keeps, in creation order, with the position in
    that order where the MLP's and the down projection's saves start; `ctx`: kept even under checkpointing.
    """

    events: tuple[tuple[int, int, Size | int], ...]
    checkpointed_events: tuple[tuple[int, int, Size | int], ...]  # under checkpointing: nothing saved but ctx
    saved: tuple[int, ...]
    mlp_from: int
    down_from: int
    output: int
    input_saved: bool
    ctx: frozenset[int]


@functools.lru_cache(maxsize=1024)
def layer_pattern(m: ModelSpec, settings, trainable: bool, input_requires_grad: bool, residual_dtype: str):
    """Record one decoder layer's walk (`layer_ops.decoder_layer`) and turn it into events: each tensor freed
    after the last op that holds it, unless autograd (or ctx.tensors) saves it, or it is the output."""
    walk = RecordingWalk()
    x = walk.new(m.hidden_size, residual_dtype, input_requires_grad)
    walk.log.clear()
    out = decoder_layer(walk, settings, m, x, trainable)
    walk.mark("end")

    def local(tensor_id: int) -> int:
        return tensor_id if tensor_id < 0 else tensor_id - x.id

    sizes: dict[int, Size] = {}
    last_use: dict[int, int] = {}
    order: list[int] = []
    marks: dict[str, int] = {}
    for index, entry in enumerate(walk.log):
        if entry[0] == "new":
            sizes[entry[1]] = entry[2]
            last_use[entry[1]] = index
            order.append(entry[1])
        elif entry[0] == "use":
            for tensor_id in entry[1]:
                last_use[tensor_id] = index
        else:
            marks.setdefault(entry[1], len(order))
    saved_ids = set(walk.saved) | set(walk.ctx_saved) | walk.constant_saved

    def sequence(keep: set[int]) -> tuple[tuple[int, int, Size | int], ...]:
        frees_after: dict[int, list[int]] = {}
        for tensor_id in order:
            if tensor_id not in keep:
                frees_after.setdefault(last_use[tensor_id], []).append(tensor_id)
        events: list[tuple[int, int, Size | int]] = []
        for index, entry in enumerate(walk.log):
            if entry[0] == "new":
                events.append((ALLOC, local(entry[1]), entry[2]))
            for tensor_id in frees_after.get(index, ()):
                events.append((FREE, local(tensor_id), 0))
        return tuple(events)

    saved = tuple(local(i) for i in order if i in saved_ids)
    position = {local(tensor_id): n for n, tensor_id in enumerate(order)}
    mlp_from = sum(1 for i in saved if position[i] < marks.get("mlp", len(order)))
    down_from = sum(1 for i in saved if position[i] < marks.get("down", len(order)))
    return LayerPattern(
        events=sequence(saved_ids | {out.id}),
        checkpointed_events=sequence(set(walk.ctx_saved) | {out.id}),
        saved=saved,
        mlp_from=mlp_from,
        down_from=down_from,
        output=out.id - x.id,
        input_saved=x.id in walk.saved,
        ctx=frozenset(i - x.id for i in walk.ctx_saved),
    )


@dataclass(frozen=True, slots=True)
class LayerTemplate:
    """A layer pattern's events at this step's sizes, numbered for emitting in one pass: allocation k (from 1)
    of the layer takes id `base + k`; a free names k, or 0 for the layer's input. Identical layers emit
    identical events: resolved once per pattern, repeated per layer."""

    events: tuple[tuple[int, int, int], ...]  # (ALLOC, k, bytes) / (FREE, k, 0)
    allocations: int
    local_index: dict[int, int]  # the pattern's local id -> k


def layer_template(pattern: LayerPattern, at, checkpointed: bool) -> LayerTemplate:
    local_index = {0: 0}
    sized: set[int] = set()
    events = []
    for op, local, per_token in pattern.checkpointed_events if checkpointed else pattern.events:
        if op == ALLOC:
            k = local_index[local] = len(local_index)
            nbytes = at(per_token)
            if nbytes > 0:
                events.append((ALLOC, k, nbytes))
                sized.add(k)
        else:
            k = local_index[local]
            if k == 0 or k in sized:  # a zero-byte tensor took no id (alloc_events.py `_Emitter.alloc`)
                events.append((FREE, k, 0))
                sized.discard(k)
    return LayerTemplate(tuple(events), len(local_index) - 1, local_index)
