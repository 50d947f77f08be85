"""NADA beside every baseline present, per shift: mean [95% bootstrap CI] over seeds, as Markdown and LaTeX.

    python -m paper_figures.comparison [--reference results/reference] [--tables DIR]

Methods: nada, then whichever of source (the unadapted floor), styleclip-opt, stylespace, ipl and, in the mini world,
the two ceilings paired-oracle and clip-oracle have scores. Scores: the ablation table's in the mini world (target
reading, kept label, attribute R^2 ratio, held-out CLIP B clip_dir, evaluator FID), the eval CLIP's, FID and
intra-cluster LPIPS in the paper world. Writes comparison.md and comparison.tex into the results tree.
"""
from __future__ import annotations

import sys
from pathlib import Path

from paper_figures.ablations import COLUMNS, Ablation, Variant, latex, markdown, summarise
from paper_figures.common import BASELINES, OUT, REFERENCE, cli, read_scores, skip
from replication.runio import atomic_write_text

NAME = "comparison"
# (column, stored metric prefix, higher is better) per world; the mini world's are the ablation table's
WORLD_COLUMNS = {
    "mini": COLUMNS,
    "paper": (("clip_dir (ViT-L/14)", "clip_dir_vitl14", True), ("CLIP quality", "clip_quality_vitl14", True),
              ("CLIP diversity", "clip_diversity_vitl14", True), ("FID (Inception)", "fid_inception", False),
              ("intra-LPIPS (VGG)", "intra_lpips_lpipsvgg_all", True)),
}


def draw(reference: Path = REFERENCE, out: Path = OUT, tables: Path | None = None) -> list[Path]:
    scores = read_scores(reference)
    if scores is None:
        return skip(NAME, f"no scores in {Path(reference) / 'scores.csv'}")
    parts, latex_parts = [], []
    for world, columns in WORLD_COLUMNS.items():
        here = scores[scores.world == world]
        methods = ["nada", *[m for m in BASELINES if m in set(here.method)]]
        if "nada" not in set(here.method) or len(methods) < 2:
            continue
        shifts = tuple(sorted(here[here.method == "nada"]["shift"].unique()))
        table = Ablation(world, f"NADA vs baselines, {world} world: mean [95% bootstrap CI] over seeds", shifts,
                         tuple(Variant(m, m) for m in methods))
        summary = summarise(here, (table,), columns)
        parts.append(markdown(summary, (table,), columns, row_label="method"))
        latex_parts.append(latex(summary, columns))
    if not parts:
        return skip(NAME, f"no shift in {Path(reference) / 'scores.csv'} has NADA and a baseline "
                          f"({', '.join(BASELINES)})")
    folder = Path(tables or reference)
    atomic_write_text(folder / f"{NAME}.md", "\n".join(parts))
    atomic_write_text(folder / f"{NAME}.tex", "\n".join(latex_parts))
    return [folder / f"{NAME}.md", folder / f"{NAME}.tex"]


if __name__ == "__main__":
    sys.exit(cli(__doc__, draw, tables=True))
