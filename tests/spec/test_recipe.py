"""--recipe: each framework's defaults at a version (vramplan/spec/recipe.py)."""

from __future__ import annotations

import pytest

from vramplan.errors import VramplanError
from vramplan.spec.recipe import TRL_FUSED_HEAD_SINCE, TRL_GRAD_CKPT_SINCE, parse_recipe, resolve_recipe


def test_trl_defaults_change_with_the_release():
    current = dict(resolve_recipe("trl==1.16.0").settings)
    before_fused = dict(resolve_recipe("trl==1.14.0").settings)
    before_ckpt = dict(resolve_recipe("trl==0.21").settings)
    assert (1, 16, 0) >= TRL_FUSED_HEAD_SINCE > (1, 14, 0) >= TRL_GRAD_CKPT_SINCE > (0, 21)
    assert (current["loss"], current["grad_ckpt"]) == ("trl-chunked", True)
    assert (before_fused["loss"], before_fused["grad_ckpt"]) == ("hf", True)
    assert (before_ckpt["loss"], before_ckpt["grad_ckpt"]) == ("hf", False)


def test_installed_version_is_read_without_import(monkeypatch):
    import vramplan.spec.recipe as recipe

    monkeypatch.setattr(recipe, "_installed", lambda name: "0.21.0")  # an older TRL installed
    r = resolve_recipe("trl")
    assert (r.version, r.version_source, dict(r.settings)["loss"]) == ("0.21.0", "installed", "hf")


@pytest.mark.parametrize("text", ["torchtune", "trl==latest"])
def test_bad_recipe_is_one_error(text):
    with pytest.raises(VramplanError):
        parse_recipe(text)


def test_trl_recipe_differs_from_trainer_by_what_trl_changes():
    from vramplan import estimate

    trainer = estimate("llama-3.1-8b", method="lora", recipe="trainer")
    trl = estimate("llama-3.1-8b", method="lora", recipe="trl==1.16.0")
    assert trl.train.loss == "trl-chunked"
    assert trainer.train.loss == "hf"
    # the fused head never holds the T·V logits: its loss is far below the HF loss's fp32 copies
    assert trl.components.logits < trainer.components.logits


def test_installed_version_reads_what_importlib_metadata_reads():
    """`_installed` reads dist-info folder names instead of parsing METADATA (cold start): for every
    distribution of this environment it gives importlib.metadata's version, and None for a missing one."""
    from importlib.metadata import distributions, version

    from vramplan.spec.recipe import _installed

    seen = set()
    for dist in distributions():
        name = dist.metadata["Name"]
        if not name or name.lower() in seen:
            continue
        seen.add(name.lower())
        assert _installed(name) == version(name), name
    assert len(seen) > 20  # the test environment's packages, not an empty path
    assert _installed("no-such-distribution-vramplan") is None
