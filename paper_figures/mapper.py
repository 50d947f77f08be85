"""The latent mapper after NADA, where NADA's samples only partly reach the target (paper section 6).

    python -m paper_figures.mapper [--reference results/reference] [--out paper_figures/out]

Reads the runs of the ablation "mapper" of replication/ablations/mini.toml (make ablate, published by make
reference): per shift mapper_<shift>.png (the source row, then NADA's and NADA + mapper's adapted rows at seed 0)
and mapper_scores.png (both variants' scores, mean over seeds with a 95% bootstrap CI); PNG and PDF.
"""
from __future__ import annotations

import sys
from pathlib import Path

from paper_figures.common import OUT, REFERENCE, cli, draw_ablation

NAME, ABLATION = "mapper", "mapper"


def draw(reference: Path = REFERENCE, out: Path = OUT, tables: Path | None = None) -> list[Path]:
    return draw_ablation(NAME, ABLATION, reference, out)


if __name__ == "__main__":
    sys.exit(cli(__doc__, draw))
