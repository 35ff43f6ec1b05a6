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
- the booleans it exists under (`attention_bias`; a boolean that reshapes a tensor, falcon's `multi_query`,
  gives that tensor a variant `key#multi_query` fitted under the flip), and `untied` for the output embedding.
Per-layer lists holding several kinds (`layer_types`, nemotron_h's `layers_block_type`) are sampled one more
layer of each kind at a time, so that counts follow `count(layer_types=moe)`; a string pattern the config class
turns into such a list (`hybrid_override_pattern`) is recorded as `pattern_fields` with its characters.
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
from pathlib import Path
from typing import Any

import torch

from vramplan.measure.architecture_record import record
from vramplan.measure.meta_build import (  # noqa: F401 (BUILD_FIXES is read from here by the tests)
    BUILD_FIXES,
    auto_class,
    auto_sub_configs,
    keep_in_fp32,
    model_types,
    sub_config_defaults,
)

OUT = Path(__file__).resolve().parent.parent / "spec" / "architectures.json"


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
        entry.setdefault("auto_sub_configs", auto_sub_configs(mt))
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
