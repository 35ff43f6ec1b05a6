"""What a cold `vramplan` loads: the modules `estimate --json` and `--help` import, not their time.

Timing is benchmarks/speed.py's (a shared machine makes a timed test flaky); these tests hold the import set,
which is what made the time: each module named below was once loaded by these commands and cost milliseconds
(issue 15). The command runs in a fresh interpreter started with `-S`: no site, so no `.pth` file of the
machine imports anything first (a sandbox's certificate hook imports importlib.resources, zipfile, tempfile, ...
at every start, which would hide the same imports made by vramplan); sys.path is this interpreter's, so the
same packages are found.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

# Never on these paths: the harness's stack, tables (rich), YAML, the store's default folder, the hub.
HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "rich", "yaml", "platformdirs",
         "huggingface_hub")  # fmt: skip
# Standard-library modules none of these commands needs (each one was, or is one import away from, a few ms):
# archives and package resources, package metadata (parses every METADATA file), temporary files, the TOML
# parser (gpus.toml, read only when a GPU is named), statistics (fractions, decimal), processes, logging,
# networking.
STDLIB_UNUSED = ("zipfile", "importlib.resources", "importlib.metadata", "email", "tempfile", "tomllib",
                 "statistics", "decimal", "fractions", "random", "subprocess", "logging", "socket", "ssl",
                 "http", "urllib.request", "difflib", "csv")  # fmt: skip
# vramplan's modules a one-GPU `estimate --json` without --from files does not use: the engines of several GPUs,
# the readers of --from files, the GPU table, calibration, serving (and a pre-quantized checkpoint's storage),
# searches, and every renderer but the JSON.
ESTIMATE_UNUSED = (
    "vramplan.measure", "vramplan.estimator.distributed", "vramplan.estimator.zero",
    "vramplan.estimator.serve", "vramplan.estimator.vllm", "vramplan.estimator.served_weights",
    "vramplan.sources.configs.formats",
    "vramplan.sources.configs.axolotl", "vramplan.sources.configs.llamafactory",
    "vramplan.sources.configs.llamafactory_v1", "vramplan.sources.configs.deepspeed", "vramplan.sources.local_gpu",
    "vramplan.spec.gpu", "vramplan.spec.serve", "vramplan.spec.architectures", "vramplan.trust", "vramplan.plan",
    "vramplan.report.trust", "vramplan.report.fit", "vramplan.report.plot", "vramplan.report.serve",
    "vramplan.report.profiles", "vramplan.report.measure", "vramplan.report.allocator",
    # the replay of the walk's allocation sequence, asked for with --allocator-replay (its error table too)
    "vramplan.allocator", "vramplan.estimator.allocator_replay", "vramplan.estimator.alloc_events",
    # the readers and kernels of a pre-quantized base (a config.json with a quantization_config)
    "vramplan.spec.checkpoint_quant", "vramplan.spec.prequantized_base",
)  # fmt: skip
# `--help` needs click and the list of commands (vramplan.cli.COMMANDS): none of the commands' modules or their
# options, none of the estimator, its inputs or its results.
COMMAND_MODULES = ("vramplan.cli.estimate", "vramplan.cli.fit", "vramplan.cli.harness", "vramplan.cli.profiles",
                   "vramplan.cli.serve", "vramplan.cli.trust", "vramplan.cli_options")  # fmt: skip
HELP_UNUSED = ("vramplan.api", "vramplan.spec", "vramplan.estimator", "vramplan.sources", "vramplan.breakdown",
               "vramplan.plan", "vramplan.trust", "vramplan.measure", *COMMAND_MODULES)  # fmt: skip


def modules_after(argv: list[str]) -> set[str]:
    """sys.modules after `vramplan ARGV` ran in a fresh `python -S` (the output and exit code are the
    command's own; its stdout is checked to hold the command's output, not only the module list)."""
    code = (
        "import sys\n"
        "from vramplan.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print('MODULES=' + ' '.join(sorted(sys.modules)))\n"
    )
    path = os.pathsep.join([str(REPO_ROOT), *(p for p in sys.path if p)])
    env = {**os.environ, "PYTHONPATH": path, "VRAMPLAN_STORE": os.devnull + ".absent", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    assert run.returncode == 0, run.stderr
    output, _, modules = run.stdout.rpartition("MODULES=")
    assert output.strip(), f"`vramplan {' '.join(argv)}` printed nothing: {run.stderr}"
    return set(modules.split())


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """Those of `names` imported, a package counting with any of its submodules."""
    return sorted(n for n in names if n in modules or any(m.startswith(n + ".") for m in modules))


def test_the_probe_sees_what_a_command_imports():
    """The same probe, on commands that do load what the lists forbid: a list that no command can trip
    would pass whatever vramplan imports."""
    modules = modules_after(["estimate", "llama-2-7b", "--gpus", "4", "--strategy", "zero3", "--gpu", "a100-80gb"])
    assert loaded(modules, ("rich", "tomllib", "vramplan.estimator.distributed", "vramplan.spec.gpu")) == [
        "rich", "tomllib", "vramplan.estimator.distributed", "vramplan.spec.gpu",
    ]  # fmt: skip
    assert "vramplan.estimator.peak" in modules_after(["estimate", "llama-2-7b", "--json"])
    replayed = modules_after(["estimate", "llama-2-7b", "--allocator-replay", "--json"])
    assert loaded(replayed, ("vramplan.allocator", "vramplan.estimator.allocator_replay")) == [
        "vramplan.allocator", "vramplan.estimator.allocator_replay",
    ]  # fmt: skip
    prequantized = modules_after(["estimate", "tests/data/my-model", "--json"])  # a bitsandbytes checkpoint
    assert loaded(prequantized, ("vramplan.spec.checkpoint_quant", "vramplan.spec.prequantized_base")) == [
        "vramplan.spec.checkpoint_quant", "vramplan.spec.prequantized_base",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "argv", [["estimate", "llama-2-7b", "--json"], ["estimate", "llama-7b", "--method", "qlora", "--json"]]
)
def test_estimate_json_imports_what_it_uses(argv: list[str]):
    modules = modules_after(argv)
    assert loaded(modules, HEAVY) == []
    assert loaded(modules, STDLIB_UNUSED) == []
    assert loaded(modules, ESTIMATE_UNUSED) == []
    # its own command's module only: the other commands' options are never built
    assert loaded(modules, COMMAND_MODULES) == ["vramplan.cli.estimate", "vramplan.cli_options"]


def test_help_imports_no_estimator():
    modules = modules_after(["--help"])
    assert loaded(modules, HEAVY) == []
    assert loaded(modules, STDLIB_UNUSED) == []
    assert loaded(modules, HELP_UNUSED) == []
