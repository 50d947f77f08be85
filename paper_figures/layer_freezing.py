"""Layer freezing on the shape change human -> werewolf (paper section 4.2): sample grids and scores.

    python -m paper_figures.layer_freezing [--reference results/reference] [--out paper_figures/out]

Reads the runs of the ablation "freezing" of replication/ablations/mini.toml (make ablate, published by make
reference): layer_freezing_mini--werewolf.png (the source row, then each variant's adapted row at seed 0: off,
adaptive k = 3, 6, 9 of 10 W+ entries, the fixed texture and shape phases) and layer_freezing_scores.png (each
variant's scores, mean over seeds with a 95% bootstrap CI); PNG and PDF.
"""
from __future__ import annotations

import sys
from pathlib import Path

from paper_figures.common import OUT, REFERENCE, cli, draw_ablation

NAME, ABLATION = "layer_freezing", "freezing"


def draw(reference: Path = REFERENCE, out: Path = OUT, tables: Path | None = None) -> list[Path]:
    return draw_ablation(NAME, ABLATION, reference, out)


if __name__ == "__main__":
    sys.exit(cli(__doc__, draw))
