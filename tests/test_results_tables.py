"""The README's mini-world tables are what results.tables prints from the committed scores."""
from __future__ import annotations

import csv
import json

import pytest

from results import tables
from replication.runio import REPO_ROOT


def test_readme_tables_are_printed_from_the_committed_scores():
    readme = (REPO_ROOT / "README.md").read_text()
    block = tables.readme_block()
    printed = [line for line in block.splitlines() if line.startswith("|")]
    assert len(printed) == 2 + 2 * len(tables.MAIN_METHODS) + 2 + len(tables.OTHER_SHIFTS) + 2 + len(
        [p for p in tables.BENCH_DIR.glob("*.json") if "seconds_per_step_median" in json.loads(p.read_text())]) + len(
        [line for line in tables.reference_tables(tables.SCORES_CSV.parent).splitlines() if line.startswith("|")])
    assert block in readme, "README's generated block differs from python -m results.tables --readme; run it"


def test_readme_block_is_rewritten_in_place(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{tables.BLOCK_START}\nstale | 1 |\n{tables.BLOCK_END}\n\nafter\n")
    tables.write_readme(readme)
    text = readme.read_text()
    assert text.startswith("# title\n\n") and text.endswith("\n\nafter\n") and "stale" not in text
    assert tables.readme_block() in text
    readme.write_text("# no block here\n")
    with pytest.raises(tables.TableError, match="one generated block"):
        tables.write_readme(readme)
    assert readme.read_text() == "# no block here\n"  # nothing written on bad input


def _write_scores(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=tables.SCORES_CSV.open().readline().strip().split(","))
        writer.writeheader()
        for shift, method, seed, metric, value in rows:
            writer.writerow({"world": "mini", "shift": shift, "method": method, "seed": seed, "mode": "fixed",
                             "metric": metric + tables.N, "value": value, "n_samples": 500, "protocol": "",
                             "code_version": "x"})


def test_cells_show_one_seed_or_the_range_over_seeds(tmp_path):
    path = tmp_path / "scores.csv"
    _write_scores(path, [("mini--zombie", "nada", 0, "mini_target_accuracy", 0.914),
                         ("mini--zombie", "nada", 1, "mini_target_accuracy", 0.871),
                         ("mini--zombie", "nada", 2, "mini_target_accuracy", 0.8712),
                         ("mini--zombie", "nada-global", 0, "mini_attr_r2_ratio", -0.8),
                         ("mini--zombie", "nada-global", 1, "mini_attr_r2_ratio", -0.53)])
    scores = tables.read_scores(path)
    assert tables.Cells(scores, 0)("mini--zombie", "nada", "mini_target_accuracy") == "0.91"
    assert tables.Cells(scores, None)("mini--zombie", "nada", "mini_target_accuracy") == "0.87-0.91"
    assert tables.Cells(scores, None)("mini--zombie", "nada-global", "mini_attr_r2_ratio") == "-0.80 to -0.53"
    with pytest.raises(tables.TableError, match="no mini_target_accuracy_n500 for mini--zombie / nada at seed 3"):
        tables.Cells(scores, 3)("mini--zombie", "nada", "mini_target_accuracy")


def test_missing_scores_file_is_one_line_and_exit_2(tmp_path, capsys):
    assert tables.main(["--scores", str(tmp_path / "none.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "python -m results.collect" in err
