"""Every test the README names as the proof of a promise exists."""
import ast
import re

from replication.runio import REPO_ROOT


def test_every_test_named_by_the_readme_exists():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    named, last_file = [], None
    for ref in re.findall(r"`((?:tests/[\w/]+\.py)?(?:::\w+)?)`", readme):
        path, _, name = ref.partition("::")
        last_file = path or last_file
        if last_file:
            named.append((last_file, name))
    assert len(named) >= 8
    for path, name in named:
        assert (REPO_ROOT / path).is_file(), path
        if name:
            tree = ast.parse((REPO_ROOT / path).read_text(encoding="utf-8"))
            assert name in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, f"{path}::{name}"
