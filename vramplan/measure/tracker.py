"""Live-tensor memory tracker: the bytes of every tensor storage alive, by category and phase.

`MemoryTracker` is a `TorchDispatchMode`. Every aten op that runs while it is active passes through it; each
output storage it has not seen before is counted once (`untyped_storage().nbytes()`) and uncounted when the
storage dies. Views, in-place ops and `out=` variants return storages already counted (or storages of inputs
that existed before tracking) and add nothing. It works the same for real (CPU/CUDA), meta and
`FakeTensorMode` tensors, so a fake or meta trace of a full-size model gives the same tensor-level peak as the
real run, without allocating it.

Categories (the closed set `CATEGORIES`, each described in `vramplan.measure.tracked`): a storage created in
forward is an activation, one created later a temporary, unless a label scope names its category or a
registration (`vramplan.measure.registration`) or relabel hook says it is a parameter, gradient or optimizer
state.

Moments: a caller may name the instant inside a phase (`moment_scope("layer 3 recompute")`); the tracker then
keeps the peak of each (phase, moment) too, and every peak records the moment it was reached in. Naming moments
changes no other reading.

A relabel also moves the storage in the recorded peaks when it was alive at the peak (allocated before it and
alive now), so an optimizer state created lazily inside the first `step()` counts as optimizer_states, not as
a temporary, in a peak inside that step.

Not seen (tensor level only, by design or by torch): allocations inside a kernel that do not go through the
dispatcher (workspaces, cuBLAS/cuDNN scratch, the caching allocator's rounding and reserve), and
`UntypedStorage.resize_` (FSDP's way of freeing/refilling parameters), which bypasses dispatch; only
`Tensor.resize_` (an aten op, also used by `out=` kernels) is seen. A storage first seen as an alias of an
input that was never registered (e.g. the batch created before tracking) is not counted; register it with
`register_tensor`. Storages created inside `excluded()` are never counted (CUDA managed memory, e.g.
bitsandbytes' paged optimizer states, is outside `torch.cuda.memory_allocated`).

Source: torch 2.13 `torch/utils/_python_dispatch.py` (TorchDispatchMode), `torch/optim/adam.py`
(`_single_tensor_adam`, lazy state in `_init_group`), bitsandbytes 0.50 `functional.QuantState`.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vramplan.allocator.replay import ALLOC, FREE
from vramplan.measure.registration import Registration
from vramplan.measure.tensors import leaf_tensors
from vramplan.measure.tracked import (
    CATEGORIES,
    PHASES,
    Category,
    PeakRecord,
    Phase,
    StorageEntry,
    TrackedPeak,
    tracked_peak,
)

# `torch.tensor(...)`, `as_tensor`, `from_numpy` build their storage outside the dispatcher and then pass it
# through `lift_fresh`, which returns its input: that storage is new although it aliases the op's input.
_FRESH_OPS = frozenset({torch.ops.aten.lift_fresh.default})


class MemoryTracker(Registration, TorchDispatchMode):
    """Count every tensor storage once, by category, and keep the overall and per-phase peaks.

    Usage::

        tracker = MemoryTracker()
        tracker.register_module(model)        # parameters, buffers, bitsandbytes quant state
        tracker.register_optimizer(optimizer)  # gradients before / optimizer states after each step
        with tracker:
            with tracker.phase_scope("forward"):
                loss = model(**batch).loss
            with tracker.phase_scope("backward"):
                loss.backward()
            del loss
            with tracker.phase_scope("optimizer"):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        tracker.result()

    Under `FakeTensorMode`, enter the tracker inside (after) the fake mode so it sees ops first.
    `device_type` ("cuda", "cpu", "meta", ...) restricts counting to tensors on that device type; for fake
    tensors it is the fake device, not "meta".

    `record_events`: keep the allocation sequence in `events`, `(ALLOC, id, bytes)` when a counted storage
    appears (registration included) and `(FREE, id, 0)` when it dies, for `vramplan.allocator.model.replay`.
    A storage grown by `Tensor.resize_` is a new allocation followed by the free of the old one, as
    `resize_bytes_cuda` allocates, copies and frees.
    """

    def __init__(self, device_type: str | None = None, record_events: bool = False) -> None:
        super().__init__()
        self.device_type = device_type
        self.events: list[tuple[int, int, int]] | None = [] if record_events else None
        self._resize_ids = 0
        self._entries: dict[int, StorageEntry] = {}
        self._totals: dict[Category, int] = dict.fromkeys(CATEGORIES, 0)
        self._current = 0
        self._seq = 0
        self._phase: Phase | None = None
        self._label: Category | None = None
        self._excluding = False
        self._excluded: dict[int, weakref.ref] = {}
        self._peak = PeakRecord(0, 0, dict(self._totals), None)
        self._phase_peaks: dict[Phase, PeakRecord] = {}
        self._moment: str | None = None
        self._moment_peaks: dict[tuple[Phase | None, str], PeakRecord] = {}
        self._handles: list[Any] = []

    # phases

    @property
    def phase(self) -> Phase | None:
        return self._phase

    @phase.setter
    def phase(self, value: Phase | None) -> None:
        if value is not None and value not in PHASES:
            raise ValueError(f"unknown phase {value!r}; expected one of {', '.join(PHASES)} or None")
        self._phase = value
        self._update_peaks()  # what is alive on entry already counts towards the new phase's peak

    @contextmanager
    def phase_scope(self, phase: Phase) -> Iterator[MemoryTracker]:
        """Set `phase` for the duration of the block, then restore the previous one."""
        previous = self._phase
        self.phase = phase
        try:
            yield self
        finally:
            self.phase = previous

    # moments: a name for the instant inside a phase, for the per-moment peaks

    @property
    def moment(self) -> str | None:
        return self._moment

    @moment.setter
    def moment(self, value: str | None) -> None:
        self._moment = value
        self._update_peaks()  # what is alive on entry already counts towards the new moment's peak

    @contextmanager
    def moment_scope(self, moment: str | None) -> Iterator[MemoryTracker]:
        """Name the moment for the duration of the block, then restore the previous one."""
        previous = self._moment
        self.moment = moment
        try:
            yield self
        finally:
            self.moment = previous

    # labels: a category for new storages that overrides the phase rule

    @property
    def label(self) -> Category | None:
        return self._label

    @label.setter
    def label(self, value: Category | None) -> None:
        if value is not None and value not in CATEGORIES:
            raise ValueError(f"unknown category {value!r}; expected one of {', '.join(CATEGORIES)} or None")
        self._label = value

    @contextmanager
    def label_scope(self, category: Category | None) -> Iterator[MemoryTracker]:
        """Count storages created in the block as `category` (None: by phase); restore the label after."""
        previous = self._label
        self.label = category
        try:
            yield self
        finally:
            self._label = previous

    @contextmanager
    def excluded(self) -> Iterator[MemoryTracker]:
        """Never count storages created in the block, now or later (memory outside the device allocator)."""
        previous = self._excluding
        self._excluding = True
        try:
            yield self
        finally:
            self._excluding = previous

    # readings

    @property
    def current_bytes(self) -> int:
        return self._current

    @property
    def current_breakdown(self) -> dict[Category, int]:
        return dict(self._totals)

    @property
    def peak_bytes(self) -> int:
        return self._peak.nbytes

    @property
    def peak_breakdown(self) -> dict[Category, int]:
        return dict(self._peak.breakdown)

    @property
    def phase_peaks(self) -> dict[Phase, tuple[int, dict[Category, int]]]:
        return {p: (pk.nbytes, dict(pk.breakdown)) for p, pk in self._phase_peaks.items()}

    def result(self) -> TrackedPeak:
        return tracked_peak(self._peak, self._phase_peaks, self._moment_peaks, self._current)

    def reset_peaks(self) -> None:
        """Forget the peaks so far (e.g. after a warm-up step); what is alive now is the new baseline."""
        self._peak = PeakRecord(self._current, self._seq, dict(self._totals), self._phase, self._moment)
        self._phase_peaks = {}
        self._moment_peaks = {}
        self._update_peaks()

    # the dispatch mode

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        category: Category = self._label or ("activations" if self._phase == "forward" else "temporaries")
        input_keys: set[int] | None = None
        for tensor in leaf_tensors(out):
            if not self._counts(tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage._cdata
            entry = self._entries.get(key)
            if entry is not None:
                # A view, in-place or out= result: the storage is counted already. `Tensor.resize_` (and the
                # out= kernels that call it) can have grown it, though. `UntypedStorage.resize_` bypasses
                # dispatch entirely: such a change shows only at the storage's next op, or never.
                nbytes = storage.nbytes()
                if nbytes != entry.nbytes:
                    self._resize(entry, nbytes)
                continue
            if func not in _FRESH_OPS:
                if input_keys is None:
                    input_keys = {
                        t.untyped_storage()._cdata for t in leaf_tensors((args, kwargs)) if t.layout is torch.strided
                    }
                if key in input_keys:
                    continue  # aliases an input that predates tracking and was never registered
            if self._excluding:
                self._exclude(storage)
                continue
            self._track(storage, category)
        return out

    # bookkeeping

    def _counts(self, tensor: torch.Tensor) -> bool:
        # Sparse and other non-strided layouts have no single storage; LLM fine-tuning does not use them.
        if tensor.layout is not torch.strided:
            return False
        if self._excluded and tensor.untyped_storage()._cdata in self._excluded:
            return False
        return self.device_type is None or tensor.device.type == self.device_type

    def _exclude(self, storage: torch.UntypedStorage) -> None:
        key = storage._cdata
        self._excluded[key] = weakref.ref(storage, partial(self._on_excluded_free, key))

    def _on_excluded_free(self, key: int, ref: weakref.ref) -> None:
        if self._excluded.get(key) is ref:
            del self._excluded[key]

    def _track(self, storage: torch.UntypedStorage, category: Category) -> None:
        # The UntypedStorage Python object is tied one-to-one to its StorageImpl (PyObject preservation), so
        # its weakref callback fires exactly when the last tensor or view of the storage dies, for real, meta
        # and fake storages alike; `_cdata` (the StorageImpl address) is a stable key while it is alive.
        key = storage._cdata
        nbytes = int(storage.nbytes())
        self._seq += 1
        ref = weakref.ref(storage, partial(self._on_free, key))
        self._entries[key] = StorageEntry(nbytes, category, self._seq, ref)
        if self.events is not None:
            self.events.append((ALLOC, self._seq, nbytes))
        self._totals[category] += nbytes
        self._current += nbytes
        self._update_peaks()

    def _on_free(self, key: int, ref: weakref.ref) -> None:
        entry = self._entries.get(key)
        if entry is None or entry.ref is not ref:
            return
        del self._entries[key]
        if self.events is not None:
            self.events.append((FREE, entry.event_id, 0))
        self._totals[entry.category] -= entry.nbytes
        self._current -= entry.nbytes

    def _resize(self, entry: StorageEntry, nbytes: int) -> None:
        delta = nbytes - entry.nbytes
        if self.events is not None:
            self._resize_ids -= 1  # negative ids: apart from the sequence numbers of `_track`
            self.events.append((ALLOC, self._resize_ids, nbytes))
            self.events.append((FREE, entry.event_id, 0))
            entry.event_id = self._resize_ids
        entry.nbytes = nbytes
        self._totals[entry.category] += delta
        self._current += delta
        if delta > 0:
            self._update_peaks()

    def _assign(self, storage: torch.UntypedStorage, category: Category) -> None:
        entry = self._entries.get(storage._cdata)
        if entry is None:
            self._track(storage, category)
            return
        old = entry.category
        if old == category:
            return
        entry.category = category
        self._totals[old] -= entry.nbytes
        self._totals[category] += entry.nbytes
        # Alive now and allocated no later than a peak means alive at that peak: move it there too.
        for peak in (self._peak, *self._phase_peaks.values(), *self._moment_peaks.values()):
            if entry.seq <= peak.seq:
                peak.breakdown[old] -= entry.nbytes
                peak.breakdown[category] += entry.nbytes

    def _update_peaks(self) -> None:
        current = self._current
        phase, moment = self._phase, self._moment
        if current > self._peak.nbytes:
            self._peak = PeakRecord(current, self._seq, dict(self._totals), phase, moment)
        if phase is not None:
            peak = self._phase_peaks.get(phase)
            if peak is None or current > peak.nbytes:
                self._phase_peaks[phase] = PeakRecord(current, self._seq, dict(self._totals), phase, moment)
        if moment is not None:
            peak = self._moment_peaks.get((phase, moment))
            if peak is None or current > peak.nbytes:
                self._moment_peaks[(phase, moment)] = PeakRecord(current, self._seq, dict(self._totals), phase, moment)
