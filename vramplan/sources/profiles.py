"""GPU and model profiles (data under profiles/), Hugging Face config.json files, aliases, did-you-mean."""

from __future__ import annotations

import os
import re
import sys
from functools import cache
from typing import TYPE_CHECKING, Any, NamedTuple

from vramplan.errors import VramplanError, did_you_mean
from vramplan.sources.files import check_name, is_dir, is_file, parse_json, read_path_text, short
from vramplan.spec import ModelSpec, model_spec_from_config

if TYPE_CHECKING:
    from pathlib import Path

    from vramplan.spec.gpu import GpuProfile


def profiles_dir() -> Path:
    """profiles/ shipped inside the wheel (vramplan/profiles), else the checkout's top-level profiles/."""
    from pathlib import Path

    return Path(profiles_path())


def profiles_path() -> str:
    """`profiles_dir()` as a str (os.path, not pathlib: a cold `estimate` of a built-in model never imports
    pathlib)."""
    package = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # vramplan/
    for cand in (os.path.join(package, "profiles"), os.path.join(os.path.dirname(package), "profiles")):
        if os.path.isfile(os.path.join(cand, "gpus.toml")):
            return cand
    raise VramplanError(
        f"vramplan's profiles/ folder is missing under {os.path.dirname(package)}; reinstall the package"
    )


def builtin_path(name: str) -> str:
    """The shipped config.json of built-in model `name` (which has no `/`)."""
    return os.path.join(profiles_path(), "models", f"{name}.json")


def _norm(name: str) -> str:
    """Lowercase, no spaces/dashes/underscores, no vendor words: 'NVIDIA GeForce RTX 3060 Ti' -> 'rtx3060ti'."""
    s = name.lower()
    s = re.sub(r"\b(nvidia|geforce|tesla)\b", "", s)
    return re.sub(r"[\s_\-]+", "", s)


@cache
def load_gpus() -> dict[str, GpuProfile]:
    if sys.version_info >= (3, 11):  # the TOML parser only when a GPU is looked up
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    from vramplan.spec.gpu import GpuProfile

    with open(os.path.join(profiles_path(), "gpus.toml")) as f:  # as Path.read_text: the locale's encoding
        data = tomllib.loads(f.read())
    out = {}
    for key, d in data.items():
        out[key] = GpuProfile(
            key=key,
            name=d["name"],
            memory_bytes=int(d["memory_bytes"]),
            compute_capability=str(d["compute_capability"]),
            bf16=bool(d["bf16"]),
            aliases=tuple(d.get("aliases", ())),
            source=d.get("source", ""),
            cuda_total_bytes=int(d["cuda_total_bytes"]) if "cuda_total_bytes" in d else None,
            cuda_total_source=d.get("cuda_total_source", ""),
            fp8=bool(d["fp8"]),
            fp4=bool(d["fp4"]),
        )
    return out


@cache
def _gpu_index() -> dict[str, str]:
    index: dict[str, str] = {}
    for key, g in load_gpus().items():
        for label in (key, g.name, *g.aliases):
            index.setdefault(_norm(label), key)
    return index


def find_gpu(name: str) -> GpuProfile:
    """Resolve a GPU by slug, NVML name or alias, case- and punctuation-insensitive."""
    key = _gpu_index().get(_norm(name))
    if key is None:
        raise did_you_mean(name, load_gpus().keys(), "GPU", "see `vramplan gpus`")
    return load_gpus()[key]


def builtin_model_names() -> list[str]:
    return sorted(p.stem for p in (profiles_dir() / "models").glob("*.json"))


def _read_json(path: str) -> dict[str, Any]:
    """The JSON object in config.json `path`, a path in pathlib's form (`str(Path(...))` or `builtin_path`)."""
    data = parse_json(read_path_text(path, "config.json"), short(path, 120), "a config.json")
    if not isinstance(data, dict):
        raise VramplanError(f"{short(str(path), 120)}: expected a JSON object (a config.json)")
    return data


def _hf_cache_config(repo_id: str) -> Path | None:
    """`config.json` of `repo_id` in the local Hugging Face hub cache, without importing huggingface_hub."""
    from pathlib import Path

    roots = []
    if os.environ.get("HF_HUB_CACHE"):
        roots.append(Path(os.environ["HF_HUB_CACHE"]))
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    roots.append(hf_home / "hub")
    folder = "models--" + repo_id.replace("/", "--")
    for root in roots:
        snaps = root / folder / "snapshots"
        if snaps.is_dir():
            ref = root / folder / "refs" / "main"
            if ref.is_file() and (snaps / ref.read_text().strip() / "config.json").is_file():
                return snaps / ref.read_text().strip() / "config.json"
            found = sorted(snaps.glob("*/config.json"), key=lambda p: p.stat().st_mtime)
            if found:
                return found[-1]
    return None


class ModelConfig(NamedTuple):
    """A model's `config.json` mapping, the name to show, and where it was found.

    `origin`: `builtin:<profile>`, the path of the config.json, or `hf-cache:<path>` / `hub:<path>` for a hub
    id read from the local Hugging Face cache or downloaded. `prequantized`: for a hub id resolved to a
    built-in profile, the quantization words of its name (`GPTQ`, `bnb-4bit`): the checkpoint is a
    pre-quantized copy whose own `quantization_config` was not read.
    """

    name: str
    config: dict[str, Any]
    origin: str
    prequantized: str = ""


# A Hugging Face repo id: owner/name, letters, digits, `-`, `_`, `.`, at most 96 characters each
# (huggingface_hub utils/_validators.py `REPO_ID_REGEX`)
HUB_ID = re.compile(r"[\w\-.]{1,96}/[\w\-.]{1,96}")

# Words that name a variant with the base model's shapes: `-Instruct`, `-chat`, `-it` (Gemma), `-hf`, `-Base`.
_VARIANT_WORDS = frozenset({"instruct", "chat", "it", "hf", "base"})
# Words from which on a name describes a pre-quantized copy (`-GPTQ`, `-AWQ`, `-bnb-4bit`, `-AQLM-2Bit-1x16`,
# `-unsloth-bnb-4bit`): the architecture is the name before them.
_QUANT_WORDS = frozenset(
    {"gptq", "awq", "aqlm", "bnb", "4bit", "8bit", "nf4", "int4", "int8", "gguf", "exl2", "fp8", "nvfp4", "mlx"}
)
# Trailing words of a re-saved full-precision copy (`casperhansen/llama-3-70b-fp16`).
_DTYPE_WORDS = frozenset({"fp16", "bf16", "fp32", "dequantized"})


class RepoKey(NamedTuple):
    """A hub id reduced to what names its architecture, and the quantization words cut off its name."""

    key: str
    prequantized: str


def repo_key(repo_id: str) -> RepoKey:
    """'meta-llama/Meta-Llama-3-8B-Instruct' -> 'llama-3-8b'; 'TheBloke/Llama-2-7B-GPTQ' -> 'llama-2-7b' (GPTQ).

    Name without owner, lowercase, `_` and spaces as `-`, no `Meta-` prefix, no variant words, cut at the first
    quantization word, trailing dtype words dropped.
    """
    name = re.sub(r"[\s_]+", "-", repo_id.rstrip("/").rsplit("/", 1)[-1])
    words = name.lower().removeprefix("meta-").split("-")
    cut = next((i for i, w in enumerate(words) if w in _QUANT_WORDS), len(words))
    if cut > 0 and words[cut - 1] == "unsloth" and cut < len(words):  # unsloth's dynamic `-unsloth-bnb-4bit`
        cut -= 1
    prequantized = "-".join(name.split("-")[cut - len(words) :]) if cut < len(words) else ""
    kept = [w for w in words[:cut] if w not in _VARIANT_WORDS]
    while kept and kept[-1] in _DTYPE_WORDS:
        kept.pop()
    return RepoKey("-".join(kept), prequantized)


def _repo_key(repo_id: str) -> str:
    return repo_key(repo_id).key


@cache
def _builtin_repo_index() -> dict[str, str]:
    """Repo key -> profile, from each profile's `vramplan_profile.repo` and `aliases`; a profile's own name too."""
    index: dict[str, str] = {}
    for name in builtin_model_names():
        meta = _read_json(builtin_path(name)).get("vramplan_profile", {})
        for repo in (meta.get("repo"), *meta.get("aliases", ())):
            if repo:
                index.setdefault(_repo_key(repo), name)
    for name in builtin_model_names():
        index.setdefault(_repo_key(name), name)
    return index


def builtin_for_repo(repo_id: str) -> str | None:
    """The built-in profile whose `vramplan_profile.repo` (or one of its `aliases`) is `repo_id`, a mirror of
    it under another owner (`NousResearch/Meta-Llama-3-8B`), its instruct/chat variant
    (`meta-llama/Llama-2-7b-chat-hf`) or a pre-quantized copy (`TheBloke/Llama-2-7B-GPTQ`), or None.
    """
    return _builtin_repo_index().get(_repo_key(repo_id))


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no", "off")


HUB_TIMEOUT_SECONDS = 10.0  # the whole download of config.json; an unreachable hub fails after this


def hub_download_command(repo_id: str) -> str:
    """The command that fetches `repo_id`'s config.json with the installed huggingface_hub: `hf download`
    (huggingface_hub >= 1.0 ships only `hf`), `huggingface-cli download` before it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major = int(version("huggingface_hub").split(".", 1)[0])
    except (PackageNotFoundError, ValueError):
        return f"pip install huggingface_hub && hf download {repo_id} config.json"
    cli = "hf" if major >= 1 else "huggingface-cli"
    return f"{cli} download {repo_id} config.json"


def _hub_download_config(repo_id: str) -> Path | None:
    """Download `config.json` of `repo_id` (huggingface_hub, imported only here) within HUB_TIMEOUT_SECONDS;
    None when HF_HUB_OFFLINE is set or huggingface_hub is absent. The download runs in a daemon thread so
    an unreachable network (DNS or connect waits, the client's retries) cannot hold the command."""
    if _hub_offline():
        return None
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None
    import logging
    import threading
    from pathlib import Path

    result: dict[str, Any] = {}

    def fetch() -> None:
        try:
            result["path"] = Path(hf_hub_download(repo_id, "config.json", etag_timeout=5))
        except Exception as e:  # no network, gated or missing repo: reported below by type
            result["error"] = e

    hub_log = logging.getLogger("huggingface_hub")  # its retry warnings would break the one-line error
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)
    try:
        worker = threading.Thread(target=fetch, name="vramplan-hub-download", daemon=True)
        worker.start()
        worker.join(HUB_TIMEOUT_SECONDS)
    finally:
        hub_log.setLevel(level)
    if "path" in result:
        return result["path"]
    why = type(result["error"]).__name__ if "error" in result else f"no answer in {HUB_TIMEOUT_SECONDS:.0f} s"
    raise VramplanError(
        f"{repo_id!r}: config.json is not in the local Hugging Face cache and downloading it failed ({why}); "
        f"run `{hub_download_command(repo_id)}` or pass a path to config.json"
    )


def find_model_config(model: str) -> ModelConfig:
    """A built-in name, a config.json path/folder, or a hub id: from the local HF cache, else the built-in
    profile of that repo (or its instruct/chat variant), else downloaded unless HF_HUB_OFFLINE is set."""
    check_name(model, "MODEL")
    if not model.strip():
        raise VramplanError("MODEL is empty; pass a built-in name (`vramplan models`), a config.json or a hub id")
    builtin = builtin_path(model.lower())
    if "/" not in model and is_file(builtin):
        return ModelConfig(model.lower(), _read_json(builtin), f"builtin:{model.lower()}")
    from pathlib import Path

    path = Path(model)
    if is_dir(path):
        path = path / "config.json"
        if not is_file(path):
            raise VramplanError(f"{short(model, 120)}: folder has no config.json")
    if is_file(path):
        return ModelConfig(str(model), _read_json(str(path)), str(path))
    if model.count("/") == 1 and not model.endswith(".json") and HUB_ID.fullmatch(model):
        cached = _hf_cache_config(model)
        if cached is not None:
            return ModelConfig(model, _read_json(str(cached)), f"hf-cache:{cached}")
        profile = builtin_for_repo(model)
        if profile is not None:
            cfg = _read_json(builtin_path(profile))
            return ModelConfig(model, cfg, f"builtin:{profile}", repo_key(model).prequantized)
        downloaded = _hub_download_config(model)
        if downloaded is not None:
            return ModelConfig(model, _read_json(str(downloaded)), f"hub:{downloaded}")
        raise VramplanError(
            f"{model!r} is not a built-in model and its config.json is not in the local Hugging Face cache "
            f"(HF_HUB_OFFLINE is set); run `{hub_download_command(model)}` or pass a path to config.json"
        )
    if model.endswith(".json") or "/" in model:
        raise VramplanError(f"no such file: {short(model, 120)}")
    profile = builtin_for_repo(model)  # `Qwen3-4B-Instruct`, `llama_3_8b`: a built-in by its hub name
    if profile is not None:
        cfg = _read_json(builtin_path(profile))
        return ModelConfig(profile, cfg, f"builtin:{profile}", repo_key(model).prequantized)
    raise did_you_mean(short(model), builtin_model_names(), "model", "see `vramplan models`, or pass a config.json")


def load_model_config(model: str) -> tuple[str, dict[str, Any]]:
    """(display name, config mapping) for a built-in name, a config.json path/folder, or a hub id."""
    found = find_model_config(model)
    return found.name, found.config


@cache
def load_model(model: str) -> ModelSpec:
    name, cfg = load_model_config(model)
    return model_spec_from_config(cfg, name)
