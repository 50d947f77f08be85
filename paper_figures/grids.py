"""Sample grids per shift: the source row, then one row per method present at seed 0, on the shift's grid latents.

    python -m paper_figures.grids [--reference results/reference] [--out paper_figures/out]

Composed from each run's samples/final.png (top row: G_src, bottom row: G_tgt, on the same fixed latents), so the
figure needs no weights. Writes grids_<shift>.png and .pdf.
"""
from __future__ import annotations

import sys
from pathlib import Path

from paper_figures.common import BASELINES, GRID_SEED, OUT, REFERENCE, cli, grid_strips, save, short, skip, strip_figure

NAME = "grids"
FIRST = ("nada", "nada-freeze", "nada-global", "nada-nofreeze", "nada-mapper")  # NADA and its variants lead


def method_order(methods) -> list[str]:
    """NADA and its variants, then the baselines in table order, then anything else alphabetically."""
    known = [m for m in (*FIRST, *BASELINES) if m in methods and m != "source"]
    return known + sorted(m for m in methods if m not in known and m != "source")


def draw(reference: Path = REFERENCE, out: Path = OUT, tables: Path | None = None) -> list[Path]:
    runs = Path(reference) / "runs"
    made = []
    for world_dir in sorted(p for p in runs.glob("*") if p.is_dir()):
        for shift_dir in sorted(p for p in world_dir.glob("*") if p.is_dir()):
            methods = [p.parents[2].name for p in shift_dir.glob(f"*/seed{GRID_SEED}/samples/final.png")]
            strips = grid_strips(reference, world_dir.name, shift_dir.name, method_order(methods))
            if len(strips) < 2:
                continue
            title = f"{short(shift_dir.name)}: source, then each method (seed {GRID_SEED}, the same latents)"
            made += save(strip_figure(strips, title), out, f"grids_{shift_dir.name}")
    return made or skip(NAME, f"no run under {runs} has samples/final.png at seed {GRID_SEED}")


if __name__ == "__main__":
    sys.exit(cli(__doc__, draw))
