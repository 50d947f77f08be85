"""The figure scripts draw from a results tree alone, skip in one line without their inputs, and make_all is fast."""
import json
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from metrics.editing import EDIT_ATTRIBUTES
from paper_figures import (
    comparison,
    editing_transfer,
    global_vs_directional,
    grids,
    layer_freezing,
    make_all,
    mapper,
    training_curves,
)
from paper_figures.ablations import COLUMNS
from paper_figures.common import REFERENCE, final_rows

SCRIPTS = (grids, global_vs_directional, layer_freezing, mapper, editing_transfer, comparison, training_curves)
SHIFTS = ("mini--zombie", "mini--sketch", "mini--werewolf", "mini--clown", "mini--comic")
# run folders: NADA, the loss/freezing/mapper ablation arms, and baselines
METHODS = ("nada", "nada-global", "nada+both", "nada-freeze", "nada+adaptive-k3", "nada-mapper", "source",
           "paired-oracle", "stylespace")
TILE = 16


def final_png(path, shade: int) -> None:
    """A torchvision-style 2 x 8 grid with 2-px padding: source tiles grey 100, adapted tiles grey `shade`."""
    grid = np.zeros((2 * (TILE + 2) + 2, 8 * (TILE + 2) + 2, 3), np.uint8)
    for row, value in enumerate((100, shade)):
        for col in range(8):
            y, x = 2 + row * (TILE + 2), 2 + col * (TILE + 2)
            grid[y:y + TILE, x:x + TILE] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)


@pytest.fixture
def results_tree(tmp_path):
    """scores.csv (two seeds of every method on every shift, editing rows for NADA) and seed-0 runs with grids and
    training stats."""
    rows = []
    for shift in SHIFTS:
        for m, method in enumerate(METHODS):
            for seed in (0, 1):
                values = {f"{prefix}_n500": 0.1 * m + 0.01 * seed for _, prefix, _ in COLUMNS}
                if method == "nada":
                    for a in EDIT_ATTRIBUTES:
                        values.update({f"mini_edit_{a}_src_n50": 0.5, f"mini_edit_{a}_tgt_n50": 0.4 + 0.02 * seed,
                                       f"mini_edit_{a}_transfer_n50": 0.8 + 0.04 * seed})
                rows += [dict(world="mini", shift=shift, method=method, seed=seed, metric=k, value=v)
                         for k, v in values.items()]
            run = tmp_path / "runs" / "mini" / shift / method / "seed0"
            final_png(run / "samples" / "final.png", 20 * m)
            (run / "stats.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / (1 + s + m)}) + "\n"
                                                     for s in range(30)))
    scores = pd.DataFrame(rows).assign(mode="fixed", n_samples=500, protocol="p", code_version="x")
    scores.to_csv(tmp_path / "scores.csv", index=False)
    return tmp_path


def test_final_rows_split_a_grid_into_its_source_and_adapted_rows(tmp_path):
    final_png(tmp_path / "final.png", 7)
    source, adapted = final_rows(tmp_path / "final.png")
    assert source.shape == adapted.shape == (TILE, 8 * (TILE + 2) + 2, 3)
    assert source[:, 2:2 + TILE].min() == 100 and adapted[:, 2:2 + TILE].max() == 7


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.__name__.rsplit(".", 1)[-1])
def test_each_script_draws_from_a_results_tree(script, results_tree, tmp_path, capsys):
    out, tables = tmp_path / "out", tmp_path / "tables"
    made = script.draw(results_tree, out, tables)
    assert made and all(path.is_file() and path.stat().st_size > 0 for path in made)
    figures = [p for p in made if p.suffix in (".png", ".pdf")]
    assert {p.with_suffix("") for p in figures if p.suffix == ".png"} == \
        {p.with_suffix("") for p in figures if p.suffix == ".pdf"}  # every figure in both formats
    assert "skipped" not in capsys.readouterr().out


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.__name__.rsplit(".", 1)[-1])
def test_each_script_skips_with_one_line_without_its_inputs(script, tmp_path, capsys):
    assert script.draw(tmp_path / "empty", tmp_path / "out", tmp_path / "tables") == []
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith(f"skipped {script.NAME}:")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_tables_hold_the_means_and_intervals_over_seeds(results_tree, tmp_path):
    editing_transfer.draw(results_tree, tmp_path / "out", tmp_path)
    text = (tmp_path / "editing_transfer.md").read_text()
    assert "| zombie | nada | 2 | 0.82 [0.80, 0.84] (0.50 -> 0.41) |" in text
    comparison.draw(results_tree, tmp_path / "out", tmp_path)
    text = (tmp_path / "comparison.md").read_text()
    methods = [line.split(" | ")[1] for line in text.splitlines() if line.startswith("| zombie |")]
    assert methods == ["nada", "source", "stylespace", "paired-oracle"]  # NADA, then the baselines in table order
    assert "\\begin{tabular}" in (tmp_path / "comparison.tex").read_text()


def test_grids_put_the_source_row_first_then_a_row_per_method(results_tree, tmp_path):
    made = grids.draw(results_tree, tmp_path / "out")
    assert tmp_path / "out" / "grids_mini--zombie.png" in made
    assert grids.method_order({"source", "ipl", "zzz", "nada-global", "nada"}) == ["nada", "nada-global", "ipl", "zzz"]


def test_make_all_draws_the_shipped_reference_in_under_two_minutes(tmp_path, capsys):
    before = sorted(p.name for p in REFERENCE.iterdir())
    start = time.perf_counter()
    made = make_all.draw_all(REFERENCE, tmp_path / "out", tmp_path / "tables")
    assert time.perf_counter() - start < 120
    assert tmp_path / "out" / "mini_scores.png" in made and tmp_path / "tables" / "comparison.md" in made
    assert sorted(p.name for p in REFERENCE.iterdir()) == before  # tables went where they were told
    skipped = [line for line in capsys.readouterr().out.splitlines() if line.startswith("skipped")]
    assert len(skipped) <= len(SCRIPTS)
