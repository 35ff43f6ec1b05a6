"""Record every causal-LM and vision-language architecture of the installed transformers as data:
`vramplan/spec/architectures.json`.

    nice -n 10 python -m vramplan.measure.architectures --write           # the whole table (15-30 min, 2 cores)
    python -m vramplan.measure.architectures --write --resume             # only the types not in the file yet
    python -m vramplan.measure.architectures --write --only llama4_text   # re-record some types in the file
    python -m vramplan.measure.architectures --only llama                 # print (the table with) one entry

For each model type of transformers' `MODEL_FOR_CAUSAL_LM_MAPPING_NAMES` (and of
`MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES`: the VLM wrappers, with their vision tower and projector) the
model is built with `AutoModelForCausalLM` (`AutoModelForImageTextToText`) `.from_config` on the meta
device, from the config class's defaults (few layers) and from samples where one config field at a time
takes another value (ints doubled, booleans flipped). Every
parameter, its layer index replaced by `*`, gets:
- its shape as expressions of the config's fields (after the config class ran: derived fields such as
  `head_dim = hidden_size // num_attention_heads` are fields too, with their own rule in `derived`),
- its count (how many times it occurs: `num_hidden_layers`, `num_hidden_layers*num_local_experts`, the number
  of `layer_types` entries of a kind),
- whether it is the weight of an `nn.Linear` (what bitsandbytes quantizes and LoRA targets),
- the booleans it exists under (`attention_bias`), and `untied` for the output embedding.
Per type also: the auto class, the modules the class keeps in fp32 (bitsandbytes leaves them alone). A type
taking longer than `--timeout` seconds is listed under `not_built`; the file is rewritten after every type.
An expression is a sum of terms `coefficient · field · field` (or `field // field`), fitted exactly over all
samples and kept only if it reproduces every sample. `vramplan.spec.architectures` evaluates the table with a
user's config.json in pure Python; tests/spec/test_architectures.py holds it to `from_config` at other sizes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from vramplan.measure.expression_fit import fit
from vramplan.measure.meta_build import (  # noqa: F401 (auto_class, model_types, BUILD_FIXES are read from here by the tests)
    BUILD_FIXES,
    NOT_STRUCTURAL,
    SKIP_FIELDS,
    auto_class,
    build,
    jsonable,
    keep_in_fp32,
    list_counts,
    make_config,
    model_types,
    param_key,
    size_fields,
    sub_config_defaults,
)
from vramplan.spec.architectures import flatten

OUT = Path(__file__).resolve().parent.parent / "spec" / "architectures.json"
LAYERS = 6  # decoder layers of the samples (fewer than the defaults: a meta build costs per module)


# ------------------------------------------------------------------ one model type
def record(model_type: str) -> dict[str, Any]:
    from transformers import AutoConfig

    t0 = time.time()
    default_cfg = AutoConfig.for_model(model_type, **BUILD_FIXES.get(model_type, {}))
    defaults = flatten(default_cfg.to_dict())
    layer_names = ("num_hidden_layers", "text_config.num_hidden_layers", "n_layer", "num_layers", "decoder_layers")
    layers_key = next((k for k in layer_names if isinstance(defaults.get(k), int)), None)
    start: dict[str, Any] = {}
    none_defaults: dict[str, list] = {}
    if (
        defaults.get("head_dim") is None
        and isinstance(defaults.get("hidden_size"), int)
        and defaults.get("num_attention_heads")
    ):
        # head_dim None means hidden_size // num_attention_heads to the modeling code; a config.json may set it
        # to something else (Qwen3-MoE), so it is sampled as a field with that rule for when it is absent
        start["head_dim"] = defaults["hidden_size"] // defaults["num_attention_heads"]
        none_defaults["head_dim"] = [[1, ["hidden_size//num_attention_heads"]]]
    if layers_key and defaults[layers_key] > LAYERS:
        start[layers_key] = LAYERS
    try:
        flat0, params0, _, out_key = build(make_config(model_type, start))
    except Exception:
        start = {}
        flat0, params0, _, out_key = build(make_config(model_type, start))
    sizes0 = size_fields(flat0)
    samples = [(flat0, params0)]
    set_fields: list[str | None] = [None]  # the field each sample sets
    bool_fields = [k for k, v in defaults.items() if isinstance(v, bool) and not k.endswith(SKIP_FIELDS)
                   and not k.startswith(NOT_STRUCTURAL)]  # fmt: skip
    for field, value in list(sizes0.items()):
        tries = [value * 2, value + 1, value * 3] if field != layers_key else [value + 3, value + 1]
        for new in tries:
            try:
                flat, params, _, _ = build(make_config(model_type, {**start, field: new}))
            except Exception:
                continue
            samples.append((flat, params))
            set_fields.append(field)
            break
    flips: dict[str, tuple[dict[str, Any], dict[str, list]]] = {}
    for field in bool_fields:
        try:
            flat, params, _, _ = build(make_config(model_type, {**start, field: not defaults[field]}))
        except Exception:
            continue
        if set(params) != set(params0) or any(params[k][0] != params0[k][0] for k in params0 if k in params):
            flips[field] = (flat, params)
    values = [size_fields(f) | list_counts(f) for f, _ in samples]
    # a value absent from a per-layer list occurs 0 times (llama4's `moe_layers` gains indices with the layers)
    list_keys = {k for v in values for k in v if k.startswith("count(")}
    values = [{**dict.fromkeys(list_keys, 0), **v} for v in values]
    entries: dict[str, Any] = {}
    unresolved: list[str] = []
    caches: dict[Any, dict] = {}
    for key, (shape, _count, linear) in params0.items():
        present = [i for i, (_, p) in enumerate(samples) if key in p]
        vs = [values[i] for i in present]
        dims = []
        for d in range(len(shape)):
            e = fit(vs, [samples[i][1][key][0][d] for i in present], caches.setdefault(tuple(present), {}))
            if e is None:
                unresolved.append(f"{key}[{d}]")
                e = [[shape[d], []]]
            dims.append(e)
        e = fit(values, [p[key][1] if key in p else 0 for _, p in samples], caches.setdefault("all", {}))
        if e is None:  # a sample where layers of two kinds took one shape (gemma4 with head_dim = global_head_dim)
            same = [i for i, (_, p) in enumerate(samples) if set(p) == set(params0)]  # merges their keys: without it
            e = fit([values[i] for i in same], [samples[i][1][key][1] for i in same])
        if key == out_key and e == [[0, []]]:
            e = [[1, []]]  # tied in every sample: one matrix when untied
        if e is None:
            unresolved.append(f"{key}#count")
            e = [[_count, []]]
        entries[key] = {"shape": dims, "count": e, "linear": linear}
        if key == out_key:
            entries[key]["untied"] = True
    # parameters that exist only under a flipped boolean (biases, q/k norms): shapes from that sample alone,
    # matched to the fields by value (a bias takes its weight's first dimension)
    for field, (flat, params) in flips.items():
        vals = size_fields(flat) | list_counts(flat)
        for key, (shape, count, linear) in params.items():
            if key in params0:
                continue
            weight = entries.get(key.rsplit(".", 1)[0] + ".weight")
            dims = [weight["shape"][0]] if weight and len(shape) == 1 else [_by_value(vals, n) for n in shape]
            cnt = weight["count"] if weight else _by_value(vals, count)
            entries[key] = {"shape": dims, "count": cnt, "linear": linear, "when": {field: not defaults[field]}}
        for key in params0:
            if key not in params:
                entries[key].setdefault("when", {})[field] = defaults[field]
    derived = {}
    for field in sizes0:
        # a field the config class computes (head_dim = hidden_size // num_attention_heads) moves when another
        # field is set: record how, fitted over the samples that do not set it
        others = [i for i in range(len(samples)) if set_fields[i] != field]
        if any(values[i].get(field) != sizes0[field] for i in others):
            e = fit([{k: v for k, v in values[i].items() if k != field} for i in others],
                    [values[i].get(field, 0) for i in others])  # fmt: skip
            if e is not None:
                derived[field] = e
            else:
                unresolved.append(f"derived {field}")
    return {
        "auto_class": auto_class(model_type),
        "config_class": type(default_cfg).__name__,
        "keep_in_fp32_modules": sorted(keep_in_fp32(model_type)),
        "sub_config_defaults": sub_config_defaults(model_type),
        "defaults": {k: v for k, v in defaults.items() if jsonable(v)},
        "attribute_map": dict(getattr(type(default_cfg), "attribute_map", {}) or {}),
        "derived": derived,
        "none_defaults": none_defaults,
        "params": entries,
        "unresolved": unresolved,
        "samples": len(samples) + len(flips),
        "seconds": round(time.time() - t0, 1),
    }


def _by_value(values: dict[str, int], n: int) -> list[list]:
    for k in sorted(values, key=len):
        if values[k] == n:
            return [[1, [k]]]
    return [[n, []]]


class TypeTimeout(Exception):
    """One model type took longer than `--timeout` seconds to record."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise TypeTimeout


def main(argv: list[str] | None = None) -> int:
    import signal

    import transformers

    transformers.logging.set_verbosity_error()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help=f"write {OUT} (after every model type)")
    ap.add_argument("--resume", action="store_true", help="keep the types already in the file (same versions)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per model type before it counts as not built")
    ap.add_argument("--only", help="comma list of model types")
    a = ap.parse_args(argv)
    types = a.only.split(",") if a.only else model_types()
    table: dict[str, Any] = {}
    failed: dict[str, str] = {}
    if (a.resume or a.only) and OUT.exists():
        old = json.loads(OUT.read_text())
        if old.get("transformers") == transformers.__version__:
            table, failed = old["architectures"], old["not_built"]
    for mt, entry in table.items():  # entries recorded before these fields existed: no build needed for them
        entry.setdefault("auto_class", auto_class(mt))
        entry.setdefault("keep_in_fp32_modules", sorted(keep_in_fp32(mt)))
        entry.setdefault("sub_config_defaults", sub_config_defaults(mt))
    signal.signal(signal.SIGALRM, _on_alarm)
    for mt in types:
        if a.resume and not a.only and (mt in table or mt in failed):
            continue
        table.pop(mt, None)
        failed.pop(mt, None)
        signal.alarm(a.timeout)
        try:
            table[mt] = record(mt)
        except TypeTimeout:
            failed[mt] = f"timeout: not recorded within {a.timeout} s"
        except Exception as e:  # transformers cannot build the class's defaults: say why, keep going
            failed[mt] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        finally:
            signal.alarm(0)
        done = f"{len(table[mt]['params'])} keys, {len(table[mt]['unresolved'])} unresolved" if mt in table else ""
        print(
            mt,
            f"failed: {failed[mt]}" if mt in failed else f"{done}, {table[mt]['seconds']} s",
            file=sys.stderr,
            flush=True,
        )
        if a.write:
            _write(table, failed)
    if a.write:
        _write(table, failed)
    else:
        json.dump(_document(table, failed), sys.stdout, indent=1)
    return 0


def _document(table: dict[str, Any], failed: dict[str, str]) -> dict[str, Any]:
    import transformers

    return {
        "generated_by": "python -m vramplan.measure.architectures --write",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "architectures": dict(sorted(table.items())),
        "not_built": dict(sorted(failed.items())),
    }


def _write(table: dict[str, Any], failed: dict[str, str]) -> None:
    """Write through a temporary file, so an interrupted run leaves the previous table whole."""
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_document(table, failed), indent=1, sort_keys=True) + "\n")
    tmp.replace(OUT)


if __name__ == "__main__":
    raise SystemExit(main())
