"""The documentation is generated and self-contained: every example block and docs/options.md are what
`python docs/generate.py` produces now, and no page points outside the repository."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# The workplace's notes beside the checkout, and absolute paths of this machine: a reader has neither.
OUTSIDE = re.compile(r"(?<![\w.-])shared/|/work/|/root/|/home/")
REPO_PATH = re.compile(r"(?<![\w./-])((?:vramplan|tests|benchmarks|profiles|docs|\.ci)/[\w./-]*[\w/])")


def load_generator():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#+ (.+)$", page.read_text(), re.M)}


def test_generated_docs_are_current():
    done = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "generate.py"), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_check_finds_a_stale_block(tmp_path, monkeypatch):
    generate = load_generator()
    monkeypatch.setattr(os, "environ", dict(os.environ))  # the generator's environment stays in this test
    generate.reproducible_environment(tmp_path / "runs.jsonl")
    page = tmp_path / "page.md"
    page.write_text("<!-- example: vramplan gpus --json | head -1 -->\n```console\n$ old\n```\n<!-- /example -->\n")
    text, stale = generate.regenerate(page, slow=False, root=tmp_path)
    assert [block.what for block in stale] == ["vramplan gpus --json | head -1"]
    assert "$ vramplan gpus --json | head -1\n" in text
    assert "$ old" not in text
    page.write_text(text)
    assert generate.regenerate(page, slow=False, root=tmp_path)[1] == []


def test_slow_examples_are_left_alone_without_slow(tmp_path):
    generate = load_generator()
    body = "```console\n$ vramplan simulate llama-2-7b\n(kept)\n```\n"
    page = tmp_path / "page.md"
    page.write_text(f"<!-- example: vramplan simulate llama-2-7b -->\n{body}<!-- /example -->\n")
    assert generate.regenerate(page, slow=False, root=tmp_path) == (page.read_text(), [])


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_stays_inside_the_repo(page):
    text = page.read_text()
    assert OUTSIDE.search(text) is None, f"{page.name}: {OUTSIDE.search(text)[0]!r} is outside the repo"
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.is_relative_to(ROOT), f"{page.name}: {target} points outside the repo"
        assert resolved.exists(), f"{page.name}: broken link {target}"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{page.name}: no heading for #{anchor} in {path or page.name}"
    for path in REPO_PATH.findall(text):
        assert (ROOT / path).exists(), f"{page.name}: `{path}` is not a file in the repo"
