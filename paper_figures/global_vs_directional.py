"""Directional vs global CLIP loss (paper section 4.1, figure 3): sample grids and scores.

    python -m paper_figures.global_vs_directional [--reference results/reference] [--out paper_figures/out]

Reads the runs of the ablation "loss" of replication/ablations/mini.toml (make ablate, published by make reference):
per shift global_vs_directional_<shift>.png (the source row, then each variant's adapted row at seed 0) and
global_vs_directional_scores.png (each variant's scores, mean over seeds with a 95% bootstrap CI); PNG and PDF.
"""
from __future__ import annotations

import sys
from pathlib import Path

from paper_figures.common import OUT, REFERENCE, cli, draw_ablation

NAME, ABLATION = "global_vs_directional", "loss"


def draw(reference: Path = REFERENCE, out: Path = OUT, tables: Path | None = None) -> list[Path]:
    return draw_ablation(NAME, ABLATION, reference, out)


if __name__ == "__main__":
    sys.exit(cli(__doc__, draw))
