"""The layering contract: the method imports nothing above it; only the pipeline imports baselines and results."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("replication", "metrics", "baselines", "results", "paper_figures")

# Which floors each floor may import. The method (replication/ without its pipeline) stands alone; metrics score
# what they are handed with the method's models and maths; figures read results with metrics' pure statistics; the
# pipeline sits on top of everything.
ALLOWED = {
    "method": {"method"},
    "metrics": {"metrics", "method"},
    "baselines": {"baselines", "method"},
    "results": {"results", "method"},
    "paper_figures": {"paper_figures", "method", "metrics"},
    "pipeline": {"pipeline", "method", "metrics", "baselines", "results", "paper_figures"},
}


def floor_of(module: str) -> str | None:
    """The floor of a dotted module name, or None for code outside the product (stdlib, third party)."""
    top = module.split(".")[0]
    if top == "replication":
        in_pipeline = module == "replication.pipeline" or module.startswith("replication.pipeline.")
        return "pipeline" if in_pipeline else "method"
    return top if top in PACKAGES else None


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in a file, at any depth (imports inside functions count too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def layer_violations(root: Path) -> list[str]:
    """'file:line: floor imports module (floor)' for every import that goes against ALLOWED under `root`."""
    problems = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            here = floor_of(module_name(path, root))
            for line, module in imported_modules(path):
                there = floor_of(module)
                if there is not None and there not in ALLOWED[here]:
                    problems.append(f"{path.relative_to(root)}:{line}: {here} imports {module} ({there})")
    return sorted(problems)


def test_the_product_keeps_its_floors():
    assert layer_violations(REPO) == []


def test_a_wrong_import_is_reported(tmp_path):
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "replication" / "pipeline").mkdir()
    (tmp_path / "replication" / "pipeline" / "run.py").write_text("import baselines\nfrom metrics import x\n")
    (tmp_path / "replication" / "nada.py").write_text("import torch\n\ndef f():\n    from metrics.scoring import y\n")
    (tmp_path / "metrics" / "calc.py").write_text("from replication.pipeline.scoring import z\n")
    (tmp_path / "baselines" / "m.py").write_text("import results.collect\n")
    assert layer_violations(tmp_path) == [
        "baselines/m.py:1: baselines imports results.collect (results)",
        "metrics/calc.py:1: metrics imports replication.pipeline.scoring (pipeline)",
        "replication/nada.py:4: method imports metrics.scoring (metrics)",
    ]
