"""One model type's entry of `vramplan/spec/architectures.json` (see vramplan.measure.architectures): the model
built on the meta device from its config class's defaults and from samples with one field changed at a time,
every parameter's shape fitted as expressions of the config's fields."""

from __future__ import annotations

import copy
import time
from typing import Any

from vramplan.measure.expression_fit import fit
from vramplan.measure.meta_build import (
    BUILD_FIXES,
    NOT_STRUCTURAL,
    SKIP_FIELDS,
    auto_class,
    auto_sub_configs,
    build,
    jsonable,
    keep_in_fp32,
    list_counts,
    make_config,
    pattern_fields,
    size_fields,
    sub_config_defaults,
)
from vramplan.spec.architectures import flatten

NOT_SIZES = ("architectures", "dtype", "torch_dtype", "problem_type")  # None in defaults, no size when set
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
    samples, set_fields = _sample(model_type, start, flat0, params0, layers_key)
    bool_fields = [k for k, v in defaults.items() if isinstance(v, bool) and not k.endswith(SKIP_FIELDS)
                   and not k.startswith(NOT_STRUCTURAL)]  # fmt: skip
    flips: dict[str, tuple[dict[str, Any], dict[str, list]]] = {}
    flip_starts: dict[str, dict[str, Any]] = {}
    fills = _none_fills(model_type, defaults)
    for field in bool_fields:
        changes = {**start, field: not defaults[field]}
        try:
            flat, params, _, _ = build(make_config(model_type, changes))
        except Exception:
            # the flipped module may need sizes the defaults leave None (gemma4's enable_moe_block: num_experts)
            changes |= fills
            try:
                flat, params, _, _ = build(make_config(model_type, changes))
            except Exception:
                continue
        if set(params) != set(params0) or any(params[k][0] != params0[k][0] for k in params0 if k in params):
            flips[field] = (flat, params)
            flip_starts[field] = changes
    for field, fill in fills.items():  # a size left None that adds or reshapes tensors when set
        changes = {**start, field: fill}  # (nemotron_h's moe_latent_size: latent projections around the experts)
        try:
            flat, params, _, _ = build(make_config(model_type, changes))
        except Exception:
            continue
        if set(params) != set(params0) or any(params[k][0] != params0[k][0] for k in params0 if k in params):
            flips[field] = (flat, params)
            flip_starts[field] = changes
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
    # matched to the fields by value (a bias takes its weight's first dimension). A flip that changes an existing
    # tensor's shape (falcon's multi_query: query_key_value's out features) or needs sizes the defaults leave
    # None (gemma4's enable_moe_block) is sampled field by field itself: its tensors get their own expressions.
    reshaped_by: dict[str, list[str]] = {}
    for field, (flat, params) in flips.items():
        vals = size_fields(flat) | list_counts(flat)
        # under the flip: the boolean flipped, or the size the defaults leave None set to any value
        on = {"when": {field: not defaults[field]}} if defaults[field] is not None else {"when_set": [field]}
        reshaped = [k for k in params0 if k in params and params[k][0] != params0[k][0]]
        fitted: dict[str, dict[str, Any]] = {}
        if reshaped or set(flip_starts[field]) - {*start, field}:
            fitted = _fit_entries(_sample(model_type, flip_starts[field], flat, params, layers_key, plus_one=True)[0],
                                  [k for k in params if k not in params0 or k in reshaped], unresolved)  # fmt: skip
        for key in reshaped:
            entries[key].setdefault("when", {})[field] = defaults[field]
            variant = f"{key}#{field}" if "#" not in key else f"{key}.{field}"
            entries[variant] = {**fitted[key], "linear": params[key][2], **copy.deepcopy(on)}
            reshaped_by.setdefault(key, []).append(field)
        for key, (shape, count, linear) in params.items():
            if key in params0:
                continue
            if key in fitted:
                entries[key] = {**fitted[key], "linear": linear, **copy.deepcopy(on)}
                continue
            weight = entries.get(key.rsplit(".", 1)[0] + ".weight")
            dims = [weight["shape"][0]] if weight and len(shape) == 1 else [_by_value(vals, n) for n in shape]
            cnt = weight["count"] if weight else _by_value(vals, count)
            entries[key] = {"shape": dims, "count": cnt, "linear": linear, **copy.deepcopy(on)}
        for key in params0:
            if key not in params:
                entries[key].setdefault("when", {})[field] = defaults[field]
    _order_flips(model_type, reshaped_by, flip_starts, defaults, entries)
    derived = {}
    for field in sizes0:
        # a field the config class computes (head_dim = hidden_size // num_attention_heads) moves when another
        # field is set: record how, fitted over the samples that do not set it
        others = [i for i in range(len(samples)) if field not in set_fields[i]]
        if any(values[i].get(field) != sizes0[field] for i in others):
            e = fit([{k: v for k, v in values[i].items() if k != field} for i in others],
                    [values[i].get(field, 0) for i in others])  # fmt: skip
            if e is not None:
                derived[field] = e
            else:
                unresolved.append(f"derived {field}")
    patterns = pattern_fields(model_type)
    return {
        **({"pattern_fields": patterns} if patterns else {}),
        "auto_class": auto_class(model_type),
        "config_class": type(default_cfg).__name__,
        "keep_in_fp32_modules": sorted(keep_in_fp32(model_type)),
        "sub_config_defaults": sub_config_defaults(model_type),
        "auto_sub_configs": auto_sub_configs(model_type),
        "defaults": {k: v for k, v in defaults.items() if jsonable(v)},
        "attribute_map": _attribute_map(default_cfg),
        "derived": derived,
        "none_defaults": none_defaults,
        "params": entries,
        "unresolved": unresolved,
        "samples": len(samples) + len(flips),
        "seconds": round(time.time() - t0, 1),
    }


def _attribute_map(config: Any) -> dict[str, str]:
    """The config class's aliases, and its sub-configs' as dotted names: Qwen3VLMoeTextConfig reads a
    `text_config.num_experts` as `text_config.num_local_experts` (Qwen3-VL-30B-A3B's config.json says
    num_experts)."""
    out = dict(getattr(type(config), "attribute_map", {}) or {})
    for name in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, name, None)
        for alias, field in (getattr(type(sub), "attribute_map", {}) or {}).items():
            out[f"{name}.{alias}"] = f"{name}.{field}"
    return out


def _sample(
    model_type: str,
    start: dict[str, Any],
    flat0: dict[str, Any],
    params0: dict[str, list],
    layers_key: str | None,
    plus_one: bool = False,
) -> tuple[list[tuple[dict[str, Any], dict[str, list]]], list[set[str]]]:
    """The build from `start` and one build per size field set to another value (ints doubled; the layer count
    plus 3), and per per-layer list holding two kinds or more one build per kind with one more layer of it (its
    count moves alone: nemotron_h's `layers_block_type`, gemma4's `layer_types`). With the fields each sets.
    `plus_one`: also each field plus one where that builds, so that two fields equal in the defaults are told
    apart (falcon's num_kv_heads = num_attention_heads = 71: doubled, `num_kv_heads // num_attention_heads` and
    `num_kv_heads * head_dim / hidden_size` agree)."""
    samples = [(flat0, params0)]
    set_fields: list[set[str]] = [set()]  # the fields each sample sets
    for field, value in size_fields(flat0).items():
        tries = [value * 2, value + 1, value * 3] if field != layers_key else [value + 3, value + 1]
        for new in tries:
            try:
                flat, params, _, _ = build(make_config(model_type, {**start, field: new}))
            except Exception:
                continue
            samples.append((flat, params))
            set_fields.append({field})
            break
        if plus_one and field != layers_key:
            try:
                flat, params, _, _ = build(make_config(model_type, {**start, field: value + 1}))
            except Exception:
                continue
            samples.append((flat, params))
            set_fields.append({field})
    layers = flat0.get(layers_key) if layers_key else None
    for field, v in flat0.items():
        if not (isinstance(v, list) and all(isinstance(x, str) for x in v) and len(set(v)) > 1):
            continue
        for kind in sorted(set(v)):
            changes = {**start, field: [*v, kind]}
            if layers is not None and len(v) == layers:
                changes[layers_key] = layers + 1
            try:
                flat, params, _, _ = build(make_config(model_type, changes))
            except Exception:
                continue
            if flat.get(field) == [*v, kind]:
                samples.append((flat, params))
                set_fields.append({k for k in changes if changes[k] != start.get(k)})
    return samples, set_fields


def _fit_entries(samples: list[tuple[dict[str, Any], dict[str, list]]], keys: list[str],
                 unresolved: list[str]) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Shape and count expressions of `keys`, fitted over samples (as for the defaults' own tensors)."""
    values = [size_fields(f) | list_counts(f) for f, _ in samples]
    list_keys = {k for v in values for k in v if k.startswith("count(")}
    values = [{**dict.fromkeys(list_keys, 0), **v} for v in values]
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        present = [i for i, (_, p) in enumerate(samples) if key in p]
        shape, count = samples[present[0]][1][key][0], samples[present[0]][1][key][1]
        dims = []
        for d in range(len(shape)):
            e = fit([values[i] for i in present], [samples[i][1][key][0][d] for i in present])
            if e is None:
                unresolved.append(f"{key}[{d}]")
                e = [[shape[d], []]]
            dims.append(e)
        e = fit([values[i] for i in present], [samples[i][1][key][1] for i in present])
        if e is None:
            unresolved.append(f"{key}#count")
            e = [[count, []]]
        out[key] = {"shape": dims, "count": e}
    return out


def _none_fills(model_type: str, defaults: dict[str, Any]) -> dict[str, int]:
    """Distinct small sizes for the fields (top-level or of a sub-config) the defaults leave None and the config
    class takes an int for (num_experts, top_k_experts, moe_latent_size; not final_logit_softcapping, a float).
    A flip that still does not build with them is not recorded."""
    names = sorted(k for k, v in defaults.items() if v is None and k.count(".") < 2 and not k.endswith(SKIP_FIELDS)
                   and not k.rpartition(".")[2].startswith(NOT_STRUCTURAL) and k.rpartition(".")[2] not in NOT_SIZES
                   and not k.endswith(("_token_id", "_name_or_path")))  # fmt: skip
    out: dict[str, int] = {}
    for name in names:
        value = 8 + 2 * len(out)
        try:
            if flatten(make_config(model_type, {name: value}).to_dict()).get(name) == value:
                out[name] = value
        except Exception:
            continue
    return out


def _order_flips(model_type: str, reshaped_by: dict[str, list[str]], flip_starts: dict[str, dict[str, Any]],
                 defaults: dict[str, Any], entries: dict[str, Any]) -> None:  # fmt: skip
    """Two flips that reshape the same tensor (falcon's new_decoder_architecture and multi_query): built
    together, the shape one of them gives wins; the other's variant then holds only with the winner at its
    default."""
    from vramplan.spec.architectures import evaluate_expr

    def variant(key: str, field: str) -> dict[str, Any]:
        return entries[f"{key}#{field}" if "#" not in key else f"{key}.{field}"]

    for key, fields in reshaped_by.items():
        for a, b in [(a, b) for i, a in enumerate(fields) for b in fields[i + 1 :]]:
            joint = {**flip_starts[a], **flip_starts[b]}
            try:
                flat, params, _, _ = build(make_config(model_type, joint))
            except Exception:
                continue
            # a point where the two variants differ (falcon's defaults: 3 * hidden_size is also
            # hidden_size + 2 * num_kv_heads * head_dim, with num_kv_heads = num_attention_heads)
            for field, value in [(None, None), *size_fields(flat).items()]:
                if field is not None:
                    try:
                        flat, params, _, _ = build(make_config(model_type, {**joint, field: value + 1}))
                    except Exception:
                        continue
                vals = size_fields(flat) | list_counts(flat)
                shapes = {f: [evaluate_expr(d, vals) for d in variant(key, f)["shape"]] for f in (a, b)}
                if shapes[a] != shapes[b] and key in params:
                    for mine, other in ((a, b), (b, a)):
                        if shapes[mine] != params[key][0]:
                            variant(key, mine).setdefault("when", {})[other] = defaults[other]
                    break


def _by_value(values: dict[str, int], n: int) -> list[list]:
    for k in sorted(values, key=len):
        if values[k] == n:
            return [[1, [k]]]
    return [[n, []]]
