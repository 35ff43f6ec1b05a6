"""No test reads outside the repository: a user's checkout has nothing beside it.

Two guards: conftest's audit hook fails any test that opens a file beside the repository at run time
(`beside_repo`, held here to synthetic paths), and the tests' source spells no path that climbs out of it.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

from tests.conftest import REPO_ROOT, beside_repo


def test_beside_repo_flags_siblings_and_nothing_else(tmp_path: Path) -> None:
    parent = tmp_path / "work"
    root = parent / "repo"
    (root / "tests").mkdir(parents=True)
    (parent / "shared").mkdir()
    (parent / "venv").mkdir()
    sibling = parent / "shared" / "notes.md"
    assert beside_repo(sibling, root)
    assert beside_repo(root / "tests" / os.pardir / os.pardir / "shared" / "notes.md", root)  # spelled from inside
    assert beside_repo(os.fsencode(sibling), root)
    assert not beside_repo(root / "tests" / "data.json", root)
    assert not beside_repo(tmp_path / "elsewhere.txt", root)  # not under the repository's parent
    assert not beside_repo(parent / "venv" / "lib" / "x.py", root, allowed=(str(parent / "venv"),))
    assert beside_repo(sibling, root, allowed=(str(parent),))  # the parent itself never counts as allowed
    (root / "link").symlink_to(parent / "shared")
    assert beside_repo(root / "link" / "notes.md", root)  # a symlink out of the repository is still outside


# Hostile inputs the tests feed vramplan to see it refuse them (tests/test_fuzz.py): never read as test data,
# and the audit hook in conftest.py still fails the test if one is ever opened beside the repository.
HOSTILE_INPUTS = frozenset({"../../etc/passwd"})


def _climbing_literals(source: str) -> list[str]:
    """String constants that spell a path out of the repository: a `..` segment, or the workplace's `shared`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value not in HOSTILE_INPUTS:
            parts = node.value.replace("\\", "/").split("/")
            if ".." in parts or "shared" in parts:
                found.append(node.value)
    return found


def test_the_scan_sees_climbing_paths() -> None:
    assert sorted(_climbing_literals('p = root / ".." / "shared" / "x.jsonl"')) == ["..", "shared"]
    assert _climbing_literals('open("../shared/validation/a.jsonl")') == ["../shared/validation/a.jsonl"]
    assert _climbing_literals('"the shared maps"; x = "a/b.json"') == []


def test_no_test_spells_a_path_out_of_the_repository() -> None:
    offenders = {}
    for path in sorted((REPO_ROOT / "tests").rglob("*.py")):
        if path == Path(__file__).resolve():
            continue  # this module spells such paths on purpose, as examples the scan must see
        found = _climbing_literals(path.read_text())
        if found:
            offenders[str(path.relative_to(REPO_ROOT))] = found
    assert not offenders, f"paths out of the repository in tests: {offenders}"
