"""`--stack`: the versions of transformers, peft, bitsandbytes, torch and trl a plan is for, and the allocation
differences between their releases that the estimate applies.

The versions are read from the environment (each distribution's `<name>-<version>.dist-info` folder name,
`installed_version`, with which `spec/recipe.py` reads a recipe's version too: no import, no METADATA
parsing), or named (`--stack transformers==4.57.6,bitsandbytes==0.43.1`, to plan for another machine); a
package neither named nor installed is taken at the release the estimator is written against (`CURRENT`).

Each rule below is the behaviour of releases *before* `since`; from `since` on, the code behaves as the
estimator's current model. Every boundary was read in the releases' wheels (the file and the two releases
either side are cited) and traced in the older release (tests/spec/test_stack.py holds the figures).
"""

from __future__ import annotations

import functools
import os
import re
import sys
from typing import NamedTuple

from vramplan.errors import VramplanError

PACKAGES: tuple[str, ...] = ("transformers", "peft", "bitsandbytes", "torch", "trl")
# the releases the estimator's model follows (module docstrings of vramplan/estimator/*)
CURRENT = {"transformers": "5.24.0", "peft": "0.21.2", "bitsandbytes": "0.50.2", "torch": "2.13.0",
           "trl": "1.16.0"}  # fmt: skip
ALIASES = {"bnb": "bitsandbytes", "pytorch": "torch"}


class StackRule(NamedTuple):
    """Releases of `package` before `since` (or torch before `torch_since`) allocate as `older` says."""

    name: str
    package: str
    since: tuple[int, ...]
    older: str  # what those releases do differently, as the output says it
    source: str  # the file read and the releases either side of the boundary
    torch_since: tuple[int, ...] | None = None


RULES: tuple[StackRule, ...] = (
    StackRule(
        "logits-upcast-in-model", "transformers", (4, 46),
        "the model upcasts its logits to fp32 (returned fp32) and the loss copies the shifted logits",
        "models/llama/modeling_llama.py LlamaForCausalLM.forward `logits = logits.float()`, 4.44.2 and 4.45.2; "
        "4.46.3 moves the upcast into loss/loss_utils.py ForCausalLMLoss",
    ),
    StackRule(
        "shifted-logits-copy", "transformers", (4, 49),
        "the loss copies the shifted fp32 logits (`logits[..., :-1, :].contiguous()`)",
        "loss/loss_utils.py ForCausalLMLoss, 4.46.3-4.48.3; 4.49.0 pads the labels instead",
    ),
    StackRule(
        "generate-full-prompt-logits", "transformers", (4, 45),
        "generate's prefill computes the logits of every prompt position (upcast to fp32 in the model)",
        "generation/utils.py: 4.45.2 sets `model_kwargs['num_logits_to_keep'] = 1` (one row per sequence); 4.44.2 "
        "does not, and its LlamaForCausalLM.forward upcasts all rows (`logits = logits.float()`)",
    ),
    StackRule(
        "reentrant-checkpointing", "transformers", (5, 0),
        "gradient checkpointing is reentrant (use_reentrant=True): a checkpointed layer keeps nothing but its input",
        "modeling_utils.py gradient_checkpointing_enable, {'use_reentrant': True} in 4.44.2-4.57.6; False in 5.0.0",
    ),
    StackRule(
        "sdpa-repeat-kv", "transformers", (4, 54),
        "SDPA gets k and v repeated to every head (repeat_kv), no enable_gqa",
        "integrations/sdpa_attention.py: repeat_kv always in 4.49.0-4.53.3; `use_gqa_in_sdpa` (torch >= 2.5, no "
        "mask) in 4.54.1",
        torch_since=(2, 5),
    ),
    StackRule(
        "trainer-optim-adamw-torch", "transformers", (4, 54),
        "the Trainer's default optim is adamw_torch (foreach: a step temporary), not adamw_torch_fused",
        "training_args.py `default_optim`: 'adamw_torch' in 4.44.2-4.53.3; 'adamw_torch_fused' with torch >= 2.8 "
        "from 4.54.1",
        torch_since=(2, 8),
    ),
    StackRule(
        "matmul4bit-keeps-input", "bitsandbytes", (0, 44),
        "MatMul4Bit keeps its input in ctx.tensors for backward (a copy per 4-bit linear)",
        "autograd/_functions.py MatMul4Bit.forward `ctx.tensors = (A, B)` in 0.43.1; (None, B) from 0.44.0",
    ),
    StackRule(
        "bnb-compute-dtype-from-input", "bitsandbytes", (0, 47),
        "Linear4bit computes in its input's dtype when that is fp32 or bf16 (bnb_4bit_compute_dtype overridden)",
        "nn/modules.py Linear4bit `compute_type_is_set = False` then `set_compute_type(x)` in 0.43.1-0.46.1; "
        "`compute_dtype is not None` from 0.47.0",
    ),
    StackRule(
        "adapters-in-base-dtype", "peft", (0, 12),
        "LoRA adapters take the base weight's dtype (bf16 on a bf16 base; fp32 on a 4-bit one)",
        "tuners/lora/layer.py LoraLayer.update_layer `self.to(weight.device, dtype=weight.dtype)` in 0.11.1; "
        "0.12.0 adds get_peft_model(autocast_adapter_dtype=True) (fp32 adapters)",
    ),
)  # fmt: skip


def release(version: str) -> tuple[int, ...]:
    """(4, 57, 6) of "4.57.6", (2, 13, 0) of "2.13.0+cpu"; the leading numbers only (a pre-release counts as
    its release)."""
    found = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in found.group(0).split(".")) if found else ()


class Stack(NamedTuple):
    """The library versions a plan models, each with where it came from: "installed", "named" (--stack) or
    "current release" (neither: the release the estimator follows)."""

    transformers: str = CURRENT["transformers"]
    peft: str = CURRENT["peft"]
    bitsandbytes: str = CURRENT["bitsandbytes"]
    torch: str = CURRENT["torch"]
    trl: str = CURRENT["trl"]
    sources: tuple[str, ...] = ("current release",) * len(PACKAGES)  # in PACKAGES order

    def version(self, package: str) -> str:
        return str(getattr(self, package))

    def source(self, package: str) -> str:
        return self.sources[PACKAGES.index(package)]

    def older(self, rule_name: str) -> bool:
        """Whether the rule named `rule_name` applies: the stack's release predates its `since`."""
        rule = next(r for r in RULES if r.name == rule_name)
        before = release(self.version(rule.package)) < rule.since
        return before or (rule.torch_since is not None and release(self.torch) < rule.torch_since)

    @property
    def applied(self) -> tuple[StackRule, ...]:
        """The rules whose older behaviour this stack has."""
        return tuple(rule for rule in RULES if self.older(rule.name))

    @property
    def named(self) -> bool:
        return "named" in self.sources

    @property
    def label(self) -> str:
        """`transformers 4.57.6 (named) · peft 0.21.2 (installed) · ...`: every version with its source."""
        return " · ".join(f"{p} {self.version(p)} ({self.source(p)})" for p in PACKAGES)

    # ---- the rules, as the estimator reads them ----
    @property
    def logits_upcast(self) -> str:
        """Where the fp32 logits come from: "model" (transformers < 4.46), "loss-shifted" (the loss upcasts,
        then copies the shifted logits: 4.46-4.48), "loss" (4.49 on)."""
        if self.older("logits-upcast-in-model"):
            return "model"
        return "loss-shifted" if self.older("shifted-logits-copy") else "loss"

    @property
    def generate_full_prompt_logits(self) -> bool:
        return self.older("generate-full-prompt-logits")

    @property
    def reentrant_checkpointing(self) -> bool:
        return self.older("reentrant-checkpointing")

    @property
    def sdpa_repeats_kv(self) -> bool:
        return self.older("sdpa-repeat-kv")

    @property
    def trainer_default_optim(self) -> str:
        return "adamw_torch" if self.older("trainer-optim-adamw-torch") else "adamw_torch_fused"

    @property
    def matmul4bit_keeps_input(self) -> bool:
        return self.older("matmul4bit-keeps-input")

    @property
    def bnb_compute_from_input(self) -> bool:
        return self.older("bnb-compute-dtype-from-input")

    @property
    def adapters_in_base_dtype(self) -> bool:
        return self.older("adapters-in-base-dtype")

    def as_dict(self) -> dict[str, object]:
        """For JSON: each version and its source, and the names of the rules applied."""
        return {
            **{p: {"version": self.version(p), "source": self.source(p)} for p in PACKAGES},
            "rules": [rule.name for rule in self.applied],
        }


def installed_version(package: str) -> str | None:
    """The installed version of `package`, from its `<name>-<version>.dist-info` (or `.egg-info`) folder on
    sys.path, the first found as importlib.metadata finds it (the name normalized as wheels write it, PEP 427).
    Folder names only: importlib.metadata would parse every METADATA file's e-mail headers, a third of an
    estimate's cold start."""
    return _installed_versions(tuple(sys.path)).get(re.sub(r"[-_.]+", "_", package).lower())


@functools.cache
def _installed_versions(path: tuple[str, ...]) -> dict[str, str]:
    """Normalized project name -> version of every dist-info / egg-info folder on sys.path, the first one found
    for a name kept (sys.path order, then the folder's listing order): one listing of each sys.path entry
    for every package an estimate asks about (the stack's five and the recipe's)."""
    found: dict[str, str] = {}  # listed again when sys.path changes (a library user's, setuptools' _vendor)
    for entry in path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            stem, dot, suffix = name.rpartition(".")
            if not dot or suffix not in ("dist-info", "egg-info"):
                continue
            project, _, version = stem.partition("-")  # `backports.tarfile-1.2.0`: the name as its tool wrote it
            if version:
                found.setdefault(re.sub(r"[-_.]+", "_", project).lower(), version.split("-")[0])
    return found


def parse_stack(text: str) -> dict[str, str]:
    """`transformers==4.57.6,bitsandbytes==0.43.1` -> {package: version}; one error line for anything else."""
    from vramplan.errors import did_you_mean

    named: dict[str, str] = {}
    for item in str(text).split(","):
        name, sep, version = (part.strip() for part in item.partition("=="))
        if not sep:
            raise VramplanError(f"--stack {item.strip()!r}: write package==version, e.g. transformers==4.57.6")
        package = ALIASES.get(name.lower().replace("_", "-"), name.lower().replace("_", "-"))
        if package not in PACKAGES:
            raise did_you_mean(name, PACKAGES, "--stack package")
        if not re.fullmatch(r"\d+(\.\d+){0,3}[\w.+-]*", version):
            raise VramplanError(f"--stack {item.strip()!r}: the version after == must look like 4.57.6 or 0.43.1")
        if package in named:
            raise VramplanError(f"--stack names {package} twice ({named[package]} and {version}); name it once")
        named[package] = version
    return named


def resolve_stack(text: str | Stack | None = None) -> Stack:
    """The Stack `text` names (`--stack`), every package it does not name as installed, else current."""
    if isinstance(text, Stack):
        return text
    if text is not None and not str(text).strip():
        raise VramplanError("--stack is empty: name versions, e.g. --stack transformers==4.57.6,bitsandbytes==0.43.1")
    named = parse_stack(text) if text is not None else {}
    versions, sources = {}, []
    for package in PACKAGES:
        installed = None if package in named else installed_version(package)
        versions[package] = named.get(package) or installed or CURRENT[package]
        sources.append("named" if package in named else "installed" if installed else "current release")
    return Stack(**versions, sources=tuple(sources))


DEFAULT_STACK = Stack()
