"""The walk replay made faster moves no figure: the emitted sequence and its replays under torch's defaults and
expandable_segments:True, on a few configurations, equal what the code gave before it was made faster
(tests/data/allocator/walk_replay_reference.jsonl, recorded by benchmarks/allocator_replay_identity.py --record
from the code at hand whenever the emitted sequence changes on purpose — last: the loss's backward in
ForCausalLMLoss's order and the tied embedding's gradient sum; `--compare` checks all 107 configurations)."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import pytest

from vramplan.allocator.replay import replay, smallest_limit
from vramplan.estimator.alloc_events import step_events
from vramplan.estimator.allocator_replay import bisection_step
from vramplan.sources.profiles import load_model
from vramplan.spec import resolve_train
from vramplan.spec.alloc_conf import DEFAULT, EXPANDABLE

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "allocator" / "walk_replay_reference.jsonl"
ROWS = {row["label"]: row for row in map(json.loads, REFERENCE.read_text().splitlines())}
# quick ones across method, checkpointing, shape and family (the 7B QLoRA one: the heaviest pattern, 24k events)
LABELS = (
    "llama-3.2-1b batch=1 grad_ckpt=False method=lora seq=512",
    "qwen2.5-1.5b batch=4 grad_ckpt=True method=full seq=2048",
    "llama-2-7b batch=1 grad_ckpt=True method=qlora seq=2048",
    "gemma-2-2b batch=2 grad_ckpt=False method=qlora seq=1024",
)


@pytest.mark.parametrize("label", LABELS)
def test_the_replayed_figures_are_the_recorded_ones(label):
    row = ROWS[label]
    m = load_model(row["model"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        events = step_events(m, resolve_train(m, **row["opts"]))
    digest = hashlib.sha256(json.dumps(events, separators=(",", ":")).encode()).hexdigest()[:16]
    assert (len(events), digest) == (row["events"], row["digest"])  # the emitter: the same sequence
    for setting, config in (("default", DEFAULT), ("expandable_segments:True", EXPANDABLE)):
        unlimited = replay(events, config)
        s = unlimited.stats
        got = {
            "max_allocated_bytes": s.max_allocated_bytes,
            "max_reserved_bytes": s.max_reserved_bytes,
            "max_requested_bytes": s.max_requested_bytes,
            "num_segments": s.num_segments,
            "num_alloc_retries": s.num_alloc_retries,
            "min_limit_bytes": smallest_limit(events, config, unlimited, bisection_step(s.max_requested_bytes)),
        }
        assert got == {key: row[setting][key] for key in got}, setting
