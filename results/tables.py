"""Print the README's two mini-world score tables from results/scores.csv, for one seed or as ranges over seeds.

Example: python -m results.tables            (seed 0, as in the README)
         python -m results.tables --over-seeds  (min-max over every seed in scores.csv)
"""
from __future__ import annotations

import argparse
import csv
import sys
import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from replication.runio import REPO_ROOT

SCORES_CSV = REPO_ROOT / "results" / "scores.csv"
SHIFTS_DIR = REPO_ROOT / "replication" / "shifts"
N = "_n500"  # every mini shift is scored on eval seeds [0, 500)

MAIN_SHIFTS = ("mini--sketch", "mini--zombie")
MAIN_METHODS = ("nada", "nada-freeze", "nada-global", "paired-oracle", "clip-oracle")
OTHER_SHIFTS = ("mini--pixel-art", "mini--comic", "mini--neon", "mini--watercolor", "mini--clown", "mini--elf",
                "mini--werewolf")

MAIN_HEADER = ("| shift, method | evaluator reads target (>= 0.8) | keeps other label (>= 0.9) | attribute R^2 ratio "
               "(>= 0.7) | edge corr. with true target, sketch (>= 0.85; source as is) | paired L1 (source as is) | "
               "pixel spread vs source (>= 0.5) | feature spread vs truth | CLIP A clip_dir (truth) | CLIP B clip_dir "
               "(truth) |")
OTHER_HEADER = ("| shift | nada: target | kept label | attribute R^2 ratio | edge corr. with true target (source as is) "
                "| spread: pixels, features | CLIP A clip_dir (truth) | nada-freeze: target, R^2 ratio, edge corr. | "
                "nada-global: target, "
                "R^2 ratio | oracle: target, R^2 ratio, edge corr. | clip-oracle: target, R^2 ratio, edge corr. |")


class TableError(ValueError):
    """scores.csv lacks a value a table needs."""


def read_scores(path: Path) -> dict[tuple[str, str, str], dict[int, float]]:
    """{(shift, method, metric): {seed: value}} for the mini world."""
    if not Path(path).is_file():
        raise TableError(f"no scores file at {path}; run python -m results.collect first")
    scores: dict[tuple[str, str, str], dict[int, float]] = defaultdict(dict)
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            if row["world"] == "mini":
                scores[(row["shift"], row["method"], row["metric"])][int(row["seed"])] = float(row["value"])
    return scores


def shift_label(shift: str) -> str:
    """'photo -> sketch' from the shift's TOML."""
    task = tomllib.loads((SHIFTS_DIR / f"{shift}.toml").read_text())["task"]
    return f"{task['source_text']} -> {task['target_text']}"


def fmt(values: Sequence[float]) -> str:
    """Two decimals; a 'low-high' range where the values differ at that precision ('low to high' below zero)."""
    low, high = f"{min(values):.2f}", f"{max(values):.2f}"
    if low == high:
        return low
    return f"{low} to {high}" if low.startswith("-") else f"{low}-{high}"


class Cells:
    """Formats one metric of one run set: the chosen seed, or every seed in the file."""

    def __init__(self, scores: dict, seed: int | None):
        self.scores, self.seed = scores, seed

    def __call__(self, shift: str, method: str, metric: str) -> str:
        by_seed = self.scores.get((shift, method, metric + N))
        if not by_seed or (self.seed is not None and self.seed not in by_seed):
            which = "any seed" if self.seed is None else f"seed {self.seed}"
            raise TableError(f"results/scores.csv has no {metric + N} for {shift} / {method} at {which}; "
                             f"run make replicate for it, then python -m results.collect")
        return fmt(list(by_seed.values()) if self.seed is None else [by_seed[self.seed]])

    def with_truth(self, shift: str, method: str, metric: str, truth: str) -> str:
        return f"{self(shift, method, metric)} ({self(shift, method, truth)})"


def main_table(cells: Cells) -> list[str]:
    lines = [MAIN_HEADER, "|---" * 10 + "|"]
    for shift in MAIN_SHIFTS:
        for method in MAIN_METHODS:
            row = [f"{shift_label(shift)}, {method}", cells(shift, method, "mini_target_accuracy"),
                   cells(shift, method, "mini_kept_label_accuracy"), cells(shift, method, "mini_attr_r2_ratio"),
                   cells.with_truth(shift, method, "mini_edge_corr_true", "mini_edge_corr_true_src"),
                   cells.with_truth(shift, method, "mini_paired_l1", "mini_paired_l1_src"),
                   cells(shift, method, "mini_pixel_spread_ratio"), cells(shift, method, "mini_feature_spread_ratio"),
                   cells.with_truth(shift, method, "train_clip_dir_miniclipa", "train_truth_clip_dir_miniclipa"),
                   cells.with_truth(shift, method, "clip_dir_miniclipb", "truth_clip_dir_miniclipb")]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def other_table(cells: Cells) -> list[str]:
    lines = [OTHER_HEADER, "|---" * 11 + "|"]
    for shift in OTHER_SHIFTS:
        row = [shift_label(shift), cells(shift, "nada", "mini_target_accuracy"),
               cells(shift, "nada", "mini_kept_label_accuracy"), cells(shift, "nada", "mini_attr_r2_ratio"),
               cells.with_truth(shift, "nada", "mini_edge_corr_true", "mini_edge_corr_true_src"),
               ", ".join(cells(shift, "nada", m) for m in ("mini_pixel_spread_ratio", "mini_feature_spread_ratio")),
               cells.with_truth(shift, "nada", "train_clip_dir_miniclipa", "train_truth_clip_dir_miniclipa"),
               ", ".join(cells(shift, "nada-freeze", m) for m in ("mini_target_accuracy", "mini_attr_r2_ratio",
                                                                   "mini_edge_corr_true")),
               ", ".join(cells(shift, "nada-global", m) for m in ("mini_target_accuracy", "mini_attr_r2_ratio")),
               *(", ".join(cells(shift, oracle, m) for m in ("mini_target_accuracy", "mini_attr_r2_ratio",
                                                              "mini_edge_corr_true"))
                 for oracle in ("paired-oracle", "clip-oracle"))]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def tables(scores_path: Path = SCORES_CSV, seed: int | None = 0) -> str:
    """Both tables as markdown, one blank line between them."""
    cells = Cells(read_scores(scores_path), seed)
    return "\n".join(main_table(cells)) + "\n\n" + "\n".join(other_table(cells)) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scores", type=Path, default=SCORES_CSV)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--seed", type=int, default=0, help="the seed whose values are printed (default 0)")
    group.add_argument("--over-seeds", action="store_true", help="print min-max over every seed in the file")
    args = parser.parse_args(argv)
    try:
        sys.stdout.write(tables(args.scores, None if args.over_seeds else args.seed))
    except TableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
