"""Record every causal-LM architecture of the installed transformers as data: `vramplan/spec/architectures.json`.

    python -m vramplan.measure.architectures --write        # regenerate the table (about 10 minutes, 2 cores)
    python -m vramplan.measure.architectures --only llama   # print one entry

For each model type of transformers' `MODEL_FOR_CAUSAL_LM_MAPPING_NAMES` the model is built with
`AutoModelForCausalLM.from_config` on the meta device, from the config class's defaults (few layers) and from
samples where one config field at a time takes another value (ints doubled, booleans flipped). Every
parameter, its layer index replaced by `*`, gets:
- its shape as expressions of the config's fields (after the config class ran: derived fields such as
  `head_dim = hidden_size // num_attention_heads` are fields too, with their own rule in `derived`),
- its count (how many times it occurs: `num_hidden_layers`, `num_hidden_layers*num_local_experts`, the number
  of `layer_types` entries of a kind),
- whether it is the weight of an `nn.Linear` (what bitsandbytes quantizes and LoRA targets),
- the booleans it exists under (`attention_bias`), and `untied` for the output embedding.
An expression is a sum of terms `coefficient · field · field` (or `field // field`), fitted exactly over all
samples and kept only if it reproduces every sample. `vramplan.spec.architectures` evaluates the table with a
user's config.json in pure Python; tests/spec/test_architectures.py holds it to `from_config` at other sizes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vramplan.spec.architectures import flatten

OUT = Path(__file__).resolve().parent.parent / "spec" / "architectures.json"
LAYERS = 6  # decoder layers of the samples (fewer than the defaults: a meta build costs per module)
SKIP_FIELDS = ("_id", "_ids", "num_labels", "transformers_version")
NOT_STRUCTURAL = ("return_", "output_", "use_cache", "torchscript", "is_encoder_decoder", "tie_encoder",
                  "add_cross_attention", "chunk_size", "tie_word_embeddings")  # fmt: skip
# config values some classes need before they can build from defaults at all (one line each, with the reason)
BUILD_FIXES: dict[str, dict[str, Any]] = {
    "reformer": {"is_decoder": True},  # ReformerModelWithLMHead asserts is_decoder
}


# ------------------------------------------------------------------ building
def _size_fields(flat: dict[str, Any]) -> dict[str, int]:
    return {
        k: v
        for k, v in flat.items()
        if isinstance(v, int) and not isinstance(v, bool) and v > 0 and not k.endswith(SKIP_FIELDS)
    }


def _list_counts(flat: dict[str, Any]) -> dict[str, int]:
    """`count(layer_types=full_attention)`: how many entries of a per-layer list take each value."""
    out: dict[str, int] = {}
    for k, v in flat.items():
        if isinstance(v, list) and v and all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in v):
            for x in set(v):
                out[f"count({k}={x})"] = sum(1 for y in v if y == x)
    return out


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in flat.items():
        parts = k.split(".")
        d = out
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = v
    return out


def make_config(model_type: str, changes: dict[str, Any]):
    from transformers import AutoConfig

    base = AutoConfig.for_model(model_type, **BUILD_FIXES.get(model_type, {}))
    kwargs = {**BUILD_FIXES.get(model_type, {})}
    for k, v in changes.items():
        top, _, rest = k.partition(".")
        if rest:
            sub = kwargs.get(top) or getattr(base, top).to_dict()
            sub = flatten(sub)
            sub[rest] = v
            kwargs[top] = _nest(sub)
        else:
            kwargs[k] = v
    return AutoConfig.for_model(model_type, **kwargs)


def build(config) -> tuple[dict[str, Any], dict[str, list], dict[str, str], str | None]:
    """(flat config fields, {key: [shape, count, module class if Linear/Conv1D]}, those weights, output key)."""
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    linear_weights = {
        f"{n}.weight": type(mod).__name__
        for n, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) or type(mod).__name__ == "Conv1D"
    }
    params: dict[str, list] = {}
    for name, p in model.named_parameters():
        key = _key(name)
        shape = list(p.shape)
        entry = params.setdefault(key, [shape, 0, linear_weights.get(name)])
        if entry[0] != shape:  # the same name in another shape (layers of another kind): its own key
            key = f"{key}#{tuple(shape)}"
            entry = params.setdefault(key, [shape, 0, linear_weights.get(name)])
        entry[1] += 1
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    out_key = None
    if out_emb is not None and getattr(out_emb, "weight", None) is not None:
        names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        full = names.get(id(out_emb.weight))
        if full is not None:
            out_key = _key(full)
            if out_key not in params:  # tied: not in named_parameters(); record its shape anyway
                params[out_key] = [list(out_emb.weight.shape), 0, type(out_emb).__name__]
    flat = flatten(config.to_dict())
    return flat, params, linear_weights, out_key


def _key(name: str) -> str:
    return ".".join("*" if part.isdigit() else part for part in name.split("."))


# ------------------------------------------------------------------ fitting
def _monomials(fields: list[str]) -> list[tuple[str, ...]]:
    mons: list[tuple[str, ...]] = [()]
    mons += [(f,) for f in fields]
    mons += [(a, b) for a, b in itertools.combinations_with_replacement(fields, 2)]
    ratios = [f"{a}//{b}" for a, b in itertools.permutations(fields, 2)]
    mons += [(r,) for r in ratios]
    mons += [(f, r) for f in fields for r in ratios]  # num_key_value_heads * (hidden_size // num_attention_heads)
    return mons


def mono_value(mono: tuple[str, ...], values: dict[str, int]) -> int:
    v = 1
    for f in mono:
        if "//" in f:
            a, b = f.split("//")
            v *= values[a] // values[b]
        else:
            v *= values[f]
    return v


def _solve(rows: list[list[int]], target: list[int]) -> list[Fraction] | None:
    """Exact least-squares-free solve: Gaussian elimination over the rationals; None unless exact and unique."""
    n = len(rows[0])
    mat = [[Fraction(x) for x in r] + [Fraction(t)] for r, t in zip(rows, target, strict=True)]
    piv_cols: list[int] = []
    r = 0
    for c in range(n):
        p = next((i for i in range(r, len(mat)) if mat[i][c] != 0), None)
        if p is None:
            return None  # a free column: not unique
        mat[r], mat[p] = mat[p], mat[r]
        pv = mat[r][c]
        mat[r] = [x / pv for x in mat[r]]
        for i in range(len(mat)):
            if i != r and mat[i][c] != 0:
                f = mat[i][c]
                mat[i] = [a - f * b for a, b in zip(mat[i], mat[r], strict=True)]
        piv_cols.append(c)
        r += 1
    if any(row[n] != 0 for row in mat[r:]):
        return None
    return [mat[i][n] for i in range(n)]


def fit(samples: list[dict[str, int]], target: list[int], cache: dict | None = None) -> list[list] | None:
    """The simplest sum of monomials (by number of terms, then degree) equal to `target` in every sample.

    The fields tried are those that moved in a sample where the target moved; if no sum of them fits, also
    those that moved together in a sample where it did not (head_dim halves when num_attention_heads doubles).
    """
    if len(set(target)) == 1:
        return [[target[0], []]]
    if cache is not None:
        if tuple(target) not in cache:
            cache[tuple(target)] = fit(samples, target)
        return cache[tuple(target)]
    base = samples[0]
    moved = [{k for k in s if s.get(k) != base.get(k)} for s in samples]
    changed = set().union(*(m for m, t in zip(moved, target, strict=True) if t != target[0]))
    together = set().union(*(m for m, t in zip(moved, target, strict=True) if t == target[0] and len(m) > 1))
    for fields in (changed, changed | together):
        expr = _fit_fields(samples, target, sorted(fields, key=lambda f: (len(f), f))[:10])
        if expr is not None:
            return expr
    return None


def _fit_fields(samples: list[dict[str, int]], target: list[int], fields: list[str]) -> list[list] | None:
    mons = [m for m in _monomials(fields) if m]
    keep, seen = [], set()
    for i, s in enumerate(samples):  # distinct rows only: most samples leave these fields alone
        row = (*(s.get(f) for f in fields), target[i])
        if None not in row and row not in seen:
            seen.add(row)
            keep.append(i)
    if len(keep) < 2:
        return None
    tgt = [target[i] for i in keep]
    tgt_f = np.array(tgt, dtype=float)
    vals = {}
    for m in mons:
        try:
            vals[m] = [mono_value(m, samples[i]) for i in keep]
        except ZeroDivisionError:
            continue
    mons = [m for m in mons if m in vals]
    # fewest terms first (a constant is a term), floor division only when nothing else fits
    plain = [m for m in mons if "//" not in "".join(m)]
    for terms in (1, 2, 3):  # fewest terms first; floor division only when no plain sum that long fits
        for pool in (plain, mons):
            for const in (False, True):
                size = terms - const
                if size < 1 or (size >= 2 and len(pool) > 400) or (size == 3 and len(pool) > 40):
                    continue
                for combo in itertools.combinations(pool, size):
                    cols = [vals[m] for m in combo] + ([[1] * len(keep)] if const else [])
                    if len(keep) < len(cols) + 1:
                        continue
                    a = np.array(cols, dtype=float).T
                    x, *_ = np.linalg.lstsq(a, tgt_f, rcond=None)
                    if not np.allclose(a @ x, tgt_f, rtol=1e-9, atol=1e-6):
                        continue  # a float pass first; the exact solve below decides
                    sol = _solve([list(r) for r in zip(*cols, strict=True)], tgt)
                    if sol is None or any(c == 0 or c.denominator > 2 for c in sol):
                        continue
                    out = [[_num(c), list(m)] for c, m in zip(sol, combo, strict=False)]
                    return [*out, [_num(sol[-1]), []]] if const else out
    return None


def _num(c: Fraction) -> int | str:
    return int(c) if c.denominator == 1 else f"{c.numerator}/{c.denominator}"


def fmt(expr: list[list]) -> str:
    parts = []
    for coef, mono in expr:
        body = "*".join(mono)
        parts.append(f"{coef}" if not mono else (body if coef == 1 else f"{coef}*{body}"))
    return " + ".join(parts)


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
    sizes0 = _size_fields(flat0)
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
    values = [_size_fields(f) | _list_counts(f) for f, _ in samples]
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
        vals = _size_fields(flat) | _list_counts(flat)
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
        "config_class": type(default_cfg).__name__,
        "defaults": {k: v for k, v in defaults.items() if _jsonable(v)},
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


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
    except TypeError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    transformers.logging.set_verbosity_error()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help=f"write {OUT}")
    ap.add_argument("--only", help="comma list of model types")
    a = ap.parse_args(argv)
    types = a.only.split(",") if a.only else sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    table: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for mt in types:
        try:
            table[mt] = record(mt)
        except Exception as e:  # transformers cannot build the class's defaults: say why, keep going
            failed[mt] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        print(mt, "failed: " + failed[mt] if mt in failed else f"{len(table[mt]['params'])} keys, "
              f"{len(table[mt]['unresolved'])} unresolved, {table[mt]['seconds']} s", file=sys.stderr)  # fmt: skip
    doc = {
        "generated_by": "python -m vramplan.measure.architectures --write",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "architectures": table,
        "not_built": failed,
    }
    if a.write:
        OUT.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    else:
        json.dump(doc, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
