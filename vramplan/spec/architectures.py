"""Every causal LM transformers can build, as data: evaluate `architectures.json` with a user's config.json.

`architectures.json` is written by `python -m vramplan.measure.architectures --write` (it needs torch and
transformers; the version it was generated from is in the file). For each model type of transformers'
`MODEL_FOR_CAUSAL_LM_MAPPING_NAMES` it holds the config class's defaults, the rules the class uses to derive
fields (`head_dim = hidden_size // num_attention_heads`), and every parameter (layer index as `*`) with its
shape and count as sums of `coefficient · field · field` terms, whether it is an `nn.Linear` / `Conv1D`
weight, the booleans it exists under (`when`; `when_set`: a field the defaults leave None, set), and whether
it is the output embedding (absent when tied).

Here, in pure Python: the user's config.json over the defaults, derived fields filled in, then every tensor's
shape and count. tests/spec/test_architectures.py holds the result to `AutoModelForCausalLM.from_config` on
the meta device for every model type at a size other than the defaults. `record` also serves the model types
transformers has no class for, written from their remote modeling code (spec/remote_code.py), to the same
evaluator.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from vramplan.errors import VramplanError

TABLE = Path(__file__).with_name("architectures.json")
LAYER_FIELDS = ("num_hidden_layers", "n_layer", "num_layers", "decoder_layers", "n_layers")
# words naming a module stack that is not the text decoder (vision / audio towers, encoders, extra heads)
TOWERS = ("vision", "visual", "audio", "encoder", "image", "speech", "mtp", "depth")
STACK_WORDS = ("layers", "layer", "h", "blocks", "block")


@functools.lru_cache(maxsize=1)
def table() -> dict[str, Any]:
    return json.loads(TABLE.read_text())


def known_types() -> frozenset[str]:
    return frozenset(table()["architectures"])


def record(model_type: Any) -> dict[str, Any] | None:
    """A model type's record: the table's (transformers builds it), else a remote-code layout
    (spec/remote_code.py, written from the hub repository's modeling file), else None."""
    from vramplan.spec.remote_code import layout

    entry = table()["architectures"].get(model_type) if isinstance(model_type, str) else None
    return entry if entry is not None else layout(model_type)


@functools.lru_cache(maxsize=1)
def supported_types() -> frozenset[str]:
    """Every model_type `estimate` accepts, as a config's own or as its `text_config.model_type`: the
    hand-modelled families, every type of the table, and the text model type of a table wrapper that has no
    entry of its own (`glm4v_text` inside `glm4v`: spec/config.py reads it through the wrapper's record)."""
    from vramplan.spec.family_traits import HAND_MODELLED_TYPES

    inner = {a["defaults"].get("text_config.model_type") for a in table()["architectures"].values()}
    from vramplan.spec.remote_code import LAYOUTS

    return HAND_MODELLED_TYPES | known_types() | {t for t in inner if isinstance(t, str)} | frozenset(LAYOUTS)


def not_built(model_type: str) -> str | None:
    """Why transformers could not build this model type from its own defaults, if it could not."""
    return table()["not_built"].get(model_type)


@dataclass(frozen=True, slots=True)
class Tensor:
    """One parameter tensor of the model (layer index as `*`), `count` times, with its module kind."""

    key: str
    shape: tuple[int, ...]
    count: int
    kind: str | None  # "Linear", "Conv1D" (a Linear with its weight transposed), or None

    @property
    def name(self) -> str:
        """The parameter's name without the `#2` that tells layers of another kind (another shape) apart."""
        return self.key.partition("#")[0]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _value(coef: int | str) -> Fraction:
    return Fraction(coef) if isinstance(coef, int) else Fraction(*map(int, coef.split("/")))


def evaluate_expr(expr: list, fields: Mapping[str, Any]) -> int:
    """A sum of `[coefficient, [field, ...]]` terms; a factor `a//b` is floor division."""
    total = Fraction(0)
    for coef, factors in expr:
        term = _value(coef)
        for f in factors:
            if "//" in f:
                a, b = f.split("//")
                term *= _field(fields, a) // _field(fields, b)
            else:
                term *= _field(fields, f)
        total += term
    return int(total)


def _field(fields: Mapping[str, Any], name: str) -> int:
    value = fields.get(name)
    if value is None and name.startswith("count("):
        return 0  # a value this config's per-layer list does not hold (lfm2's `full_attn_idxs` has no 6)
    if not isinstance(value, int) or isinstance(value, bool):
        raise VramplanError(f"config field {name!r} is {value!r}; transformers needs an integer there")
    return value


def config_fields(model_type: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The config as the config class leaves it: defaults, the user's values, derived fields, list counts."""
    arch = _record(model_type)
    user = flatten(cfg)
    renames = arch["attribute_map"]
    user = {renames.get(k, k): v for k, v in user.items()}
    for kwarg, rule in arch.get("pattern_fields", {}).items():  # nemotron_h's "MEM*E..." hybrid_override_pattern
        pattern = user.get(kwarg)
        if isinstance(pattern, str) and user.get(rule["field"]) is None:
            unknown = sorted(set(pattern) - set(rule["chars"]))
            if unknown:
                raise VramplanError(
                    f"config field {kwarg!r} holds {unknown[0]!r}; {model_type} layers are "
                    + ", ".join(f"{c!r} ({v})" for c, v in rule["chars"].items())
                )
            user[rule["field"]] = [rule["chars"][c] for c in pattern]
    given = {}  # a sub-config given as a dict starts from its own class's defaults, not the wrapper's
    for sub, sub_defaults in arch.get("sub_config_defaults", {}).items():
        value = cfg.get(sub)
        recorded = arch["defaults"].get(f"{sub}.model_type")
        picked_by_name = sub in arch.get("auto_sub_configs", (sub,))  # else a fixed class, whatever the name
        if isinstance(value, Mapping) and (not picked_by_name or value.get("model_type", recorded) == recorded):
            given.update({f"{sub}.{k}": v for k, v in sub_defaults.items() if v is not None})
    base = {**arch["defaults"], **given}
    fields = {**base, **{k: v for k, v in user.items() if v is not None}}
    for _ in range(3):  # derived fields may depend on derived fields (qk_head_dim on head_dim)
        for name, expr in (arch["derived"] | arch.get("none_defaults", {})).items():
            if user.get(name) is None:
                try:
                    fields[name] = evaluate_expr(expr, fields)
                except (VramplanError, ZeroDivisionError):
                    continue
    layers = next((fields[k] for k in LAYER_FIELDS if isinstance(fields.get(k), int)), None)
    for k, v in list(fields.items()):
        if isinstance(v, list) and v and all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in v):
            if k not in user and layers is not None and len(v) == base.get(_layers_of(k), -1):
                v = _extend(v, fields.get(_layers_of(k), layers))  # the default pattern, repeated
                fields[k] = v
            fields[f"count({k})"] = len(v)
            for x in set(v):
                fields[f"count({k}={x})"] = sum(1 for y in v if y == x)
    from vramplan.spec.remote_code import FIELD_HOOKS

    if model_type in FIELD_HOOKS:  # a width the remote code computes from several fields (MOSS-VL's merger)
        FIELD_HOOKS[model_type](fields)
    return fields


def _record(model_type: str) -> dict[str, Any]:
    entry = record(model_type)
    if entry is None:
        raise KeyError(model_type)
    return entry


def _layers_of(list_field: str) -> str:
    prefix = list_field.rpartition(".")[0]
    return f"{prefix}.num_hidden_layers" if prefix else "num_hidden_layers"


def _extend(pattern: list, n: int) -> list:
    """A per-layer default list for another layer count: its shortest period, repeated."""
    for p in range(1, len(pattern) + 1):
        if all(pattern[i] == pattern[i % p] for i in range(len(pattern))):
            return [pattern[i % p] for i in range(n)]
    return pattern


def tensors(model_type: str, cfg: Mapping[str, Any]) -> tuple[Tensor, ...]:
    """Every parameter tensor transformers would build for this config (tied output embedding left out)."""
    arch = _record(model_type)
    fields = config_fields(model_type, cfg)
    tied = _tied(fields)
    out = []
    for key, e in arch["params"].items():
        if any(fields.get(k) != v for k, v in e.get("when", {}).items()):
            continue
        if any(fields.get(k) is None for k in e.get("when_set", ())):  # nemotron_h's moe_latent_size
            continue
        if e.get("untied") and tied:
            continue
        count = evaluate_expr(e["count"], fields)
        if count <= 0:
            continue
        shape = tuple(evaluate_expr(d, fields) for d in e["shape"])
        out.append(Tensor(key, shape, count, e["linear"] or None))
    return tuple(out)


def _tied(fields: Mapping[str, Any]) -> bool:
    for k in ("tie_word_embeddings", "text_config.tie_word_embeddings"):
        if isinstance(fields.get(k), bool):
            return fields[k]
    return False


def _text_root(keys: list[str]) -> str:
    """`model.language_model.` in `model.language_model.layers.*.self_attn.q_proj.weight`: the text model's
    module, found as the prefix of the decoder stack the wrapper's table holds most linear weight in."""
    sizes: dict[str, int] = {}
    for key in keys:
        if ".*." not in key:
            continue
        stack = key[: key.index(".*.")]
        root, _, last = stack.rpartition(".")
        if last in STACK_WORDS and not any(word in stack.lower() for word in TOWERS):
            sizes[root] = sizes.get(root, 0) + 1
    best = max(sizes, key=sizes.__getitem__) if sizes else ""
    return f"{best}." if best else ""


def text_keys(model_type: str, ts: tuple[Tensor, ...]) -> frozenset[str]:
    """The keys of a wrapper's tensors that belong to its text model: under its root, and the output embedding."""
    root = _text_root([t.key for t in ts])
    untied = {key for key, e in _record(model_type)["params"].items() if e.get("untied")}
    return frozenset(t.key for t in ts if (root and t.key.startswith(root)) or t.key in untied)
