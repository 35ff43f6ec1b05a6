"""`vramplan.spec.SUPPORTED_MODEL_TYPES`: every model_type `estimate` accepts (the hand-modelled families, every
type of the architecture table, a table wrapper's text model type, the remote-code layouts), computed lazily; `HAND_MODELLED_TYPES`: the
families spec/families.py builds exactly."""

from __future__ import annotations

import subprocess
import sys

import pytest

import vramplan.spec
from tests.conftest import TINY_CONFIGS
from vramplan.errors import VramplanError
from vramplan.spec import HAND_MODELLED_TYPES, model_spec_from_config
from vramplan.spec.architectures import known_types, table
from vramplan.spec.remote_code import LAYOUTS

# the text model type of each table wrapper whose text model has no entry of its own (glm4v -> glm4v_text)
WRAPPED = {
    inner: wrapper
    for wrapper, a in sorted(table()["architectures"].items())
    if isinstance(inner := a["defaults"].get("text_config.model_type"), str) and inner not in known_types()
}


def test_supported_is_hand_modelled_table_and_wrapped_text_types() -> None:
    supported = vramplan.spec.SUPPORTED_MODEL_TYPES
    assert supported == HAND_MODELLED_TYPES | known_types() | set(WRAPPED) | set(LAYOUTS)
    assert {"qwen", "btlm", "mimo", "moss_vl"} <= supported - known_types()  # remote code (spec/remote_code.py)
    assert {"glm4v_text", "mllama_text_model", "dbrx", "starcoder2", "gemma3n_text"} <= supported  # real configs'
    assert "no_such_model" not in supported
    assert vramplan.spec.SUPPORTED_MODEL_TYPES is supported  # computed once
    with pytest.raises(AttributeError, match="NO_SUCH_NAME"):
        vramplan.spec.NO_SUCH_NAME  # noqa: B018


def test_importing_spec_does_not_read_the_table() -> None:
    """Cold start: `import vramplan.spec` leaves the 3 MB table unread; asking for SUPPORTED_MODEL_TYPES reads it."""
    code = (
        "import vramplan.spec, vramplan.spec.architectures as a\n"
        "before = a.table.cache_info().currsize\n"
        "n = len(vramplan.spec.SUPPORTED_MODEL_TYPES)\n"
        "print(before, a.table.cache_info().currsize, n)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    assert out[:2] == ["0", "1"]
    assert int(out[2]) > len(HAND_MODELLED_TYPES)


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_hand_modelled_types_are_built_exactly(family: str) -> None:
    cfg = TINY_CONFIGS[family]
    assert cfg["model_type"] in HAND_MODELLED_TYPES
    assert model_spec_from_config(cfg, f"tiny-{family}").approximation is None  # not the generic path


def test_every_supported_type_is_accepted() -> None:
    """No supported type is refused as unknown: the table's with their class defaults (a type whose defaults
    lack a size is refused for that, in one line), a wrapped text type inside its wrapper."""
    for mt in sorted(vramplan.spec.SUPPORTED_MODEL_TYPES - HAND_MODELLED_TYPES):
        cfg = {"model_type": WRAPPED[mt], "text_config": {"model_type": mt}} if mt in WRAPPED else {"model_type": mt}
        try:
            model_spec_from_config(cfg, mt)
        except VramplanError as e:
            assert "unknown model_type" not in str(e) and "\n" not in str(e), (mt, str(e))
    with pytest.raises(VramplanError, match="unknown model_type 'no_such_model'"):
        model_spec_from_config({"model_type": "no_such_model", "hidden_size": 8}, "x")
