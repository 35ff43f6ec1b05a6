"""The error of the generic path, measured where the exact one exists: hand-modelled families run as if unknown.

    python benchmarks/generic_band.py

For each built-in profile of a hand-modelled family, the model is estimated twice, by its own ModelSpec and
by `vramplan.spec.generic.generic_model_spec` (the architecture table + the Llama / Mixtral stand-in walk),
over methods x batch x seq x checkpointing; prints the relative difference of the device total per row and the
largest. `GENERIC_ERROR_BAND` in spec/generic.py is that largest figure, rounded up.
"""

from __future__ import annotations

import itertools
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vramplan.api import estimate
from vramplan.sources.profiles import builtin_model_names, load_model, load_model_config
from vramplan.spec.architectures import known_types
from vramplan.spec.generic import generic_model_spec


def main() -> int:
    worst = 0.0
    rows = []
    by_kind: dict[str, tuple[float, str]] = {}  # the stand-in's kind (its band) -> its worst row
    bands: dict[str, float] = {}
    for name in builtin_model_names():
        exact = load_model(name)
        if exact.model_type not in known_types() or exact.approximation is not None:
            continue  # not hand-modelled (itself generic, or a VLM wrapper): no exact estimate to compare to
        _, cfg = load_model_config(name)
        cfg = {k: v for k, v in cfg.items() if k != "vramplan_profile"}
        generic = generic_model_spec(cfg, name)
        bands[generic.approximation.basis] = generic.approximation.error_band
        if generic.total_params != exact.total_params:  # the generic path's own miscount (glm4_moe_lite)
            print(f"skipped {name}: the generic path counts {generic.total_params:,} of its "
                  f"{exact.total_params:,} parameters", file=sys.stderr)  # fmt: skip
            continue
        grid = itertools.product(("full", "lora", "qlora"), (1, 4), (512, 2048), (False, True))
        for method, batch, seq, ckpt in grid:
            opts = {"method": method, "batch": batch, "seq": seq, "grad_ckpt": ckpt}
            a = estimate(exact, gpu="a100-80gb", allocator_model="slack", **opts).device_bytes
            b = estimate(generic, gpu="a100-80gb", allocator_model="slack", **opts).device_bytes
            err = (b - a) / a
            worst = max(worst, abs(err))
            kind = generic.approximation.basis
            rows.append({"model": name, **opts, "exact": a, "generic": b, "relative": round(err, 4), "stand_in": kind})
            if abs(err) > by_kind.get(kind, (0.0, ""))[0]:
                by_kind[kind] = (abs(err), f"{name} {method} b{batch} s{seq}{' ckpt' if ckpt else ''}")
    for r in rows:
        print(json.dumps(r))
    for kind, (err, where) in sorted(by_kind.items()):
        band = f"band {bands[kind]:.2f}" if kind in bands else ""
        print(f"{kind}: worst {err:.4f} ({where}) {band}", file=sys.stderr)
    print(f"largest |generic - exact| / exact of the device total: {worst:.4f} over {len(rows)} rows", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
