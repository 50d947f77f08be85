"""What the figure scripts share: where results live, reading them, the rows of a run's final grid, saving, skipping.

Every script of paper_figures/ reads a results tree (results/reference/ by default: scores.csv and runs/ with each
run's small files) and nothing else, writes PNG and PDF into paper_figures/out/, and prints one line and draws nothing
when its inputs are missing.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from metrics.scoring import metric_prefix  # noqa: E402
from replication.runio import REPO_ROOT  # noqa: E402

REFERENCE = REPO_ROOT / "results" / "reference"  # the shipped results tree
OUT = REPO_ROOT / "paper_figures" / "out"
GRID_SEED = 0  # the seed whose sample grids figures show
# The methods compared with NADA, in table order: the floor, the published baselines, the two mini-world ceilings.
BASELINES = ("source", "styleclip-opt", "stylespace", "ipl", "paired-oracle", "clip-oracle")


def skip(script: str, reason: str) -> list[Path]:
    """Say in one line why a script drew nothing; an empty list of written paths."""
    print(f"skipped {script}: {reason}")
    return []


def read_scores(reference: Path) -> pd.DataFrame | None:
    """The long score table of a results tree with a `prefix` column (metric without its _n<N>), or None."""
    path = Path(reference) / "scores.csv"
    if not path.is_file():
        return None
    scores = pd.read_csv(path)
    return scores.assign(prefix=scores.metric.map(metric_prefix)) if not scores.empty else None


def run_folder(reference: Path, world: str, shift: str, method: str, seed: int = GRID_SEED) -> Path:
    return Path(reference) / "runs" / world / shift / method / f"seed{seed}"


def short(shift: str) -> str:
    """"mini--zombie" -> "zombie" (paper shifts keep their name)."""
    return shift.removeprefix("mini--")


def final_rows(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(source row, adapted row) of a run's samples/final.png: two rows of square tiles with torchvision's 2-px
    padding (the training loop's save_grid), each returned as an RGB strip of the full width."""
    grid = np.asarray(Image.open(path).convert("RGB"))
    tile = (grid.shape[0] - 2) // 2 - 2
    return tuple(grid[2 + r * (tile + 2): 2 + r * (tile + 2) + tile] for r in (0, 1))


def grid_strips(reference: Path, world: str, shift: str, methods, seed: int = GRID_SEED,
                labels=None) -> list[tuple[str, np.ndarray]]:
    """[("source", row), (label, adapted row) ...] for the methods (run folders) whose final grid exists at `seed`;
    the source row is the first such run's top row (every run of a shift draws the same grid latents)."""
    labels = list(labels or methods)
    strips = []
    for method, label in zip(methods, labels):
        path = run_folder(reference, world, shift, method, seed) / "samples" / "final.png"
        if path.is_file():
            source, adapted = final_rows(path)
            if not strips:
                strips.append(("source", source))
            strips.append((label, adapted))
    return strips


def strip_figure(strips: list[tuple[str, np.ndarray]], title: str, width: float = 7.0):
    """One labelled image row per strip, stacked; returns the figure."""
    height = width * strips[0][1].shape[0] / strips[0][1].shape[1]
    fig, axes = plt.subplots(len(strips), 1, figsize=(width + 1.2, (height + 0.05) * len(strips) + 0.4),
                             squeeze=False)
    for ax, (label, strip) in zip(axes[:, 0], strips):
        ax.imshow(strip)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def save(fig, out: Path, stem: str) -> list[Path]:
    """Write a figure as <out>/<stem>.png and .pdf and close it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=130)
    plt.close(fig)
    return paths


def read_stats(path: Path) -> pd.DataFrame:
    """A run's stats.jsonl (one JSON object per training step) as a table; empty when unreadable."""
    try:
        rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        return pd.DataFrame()
    return pd.DataFrame(rows)


def cli(description: str, draw, tables: bool = False, argv: list[str] | None = None) -> int:
    """The command line of a figure script: --reference (results tree), --out (figures), --tables (Markdown/LaTeX,
    default: the results tree itself) when the script writes tables; calls draw(reference, out, tables) and prints
    what it wrote."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", type=Path, default=REFERENCE, help="results tree (scores.csv, runs/)")
    p.add_argument("--out", type=Path, default=OUT, help="where figures go")
    if tables:
        p.add_argument("--tables", type=Path, help="where tables go (default: the results tree)")
    args = p.parse_args(argv)
    made = draw(args.reference, args.out, getattr(args, "tables", None))
    for path in made:
        print(f"wrote: {path}")
    return 0


def draw_ablation(script: str, name: str, reference: Path, out: Path) -> list[Path]:
    """An ablation of replication/ablations/mini.toml from a results tree: per shift a grid (source row, then each
    variant's adapted row at seed 0) and the variants' scores (paper_figures.ablations' figure, mean over seeds with
    a 95% CI). Skips unless at least two variants have scores."""
    from paper_figures.ablations import figure, load_ablations, summarise

    ablation = {a.name: a for a in load_ablations()[1]}[name]
    scores = read_scores(reference)
    summary = summarise(scores, (ablation,)) if scores is not None else pd.DataFrame(columns=["variant"])
    present = [v.name for v in ablation.variants if v.name in set(summary.variant)]
    if len(present) < 2:
        folders = ", ".join(v.folder for v in ablation.variants)
        return skip(script, f"ablation {name!r} needs scores of at least two of its runs ({folders}) in "
                            f"{Path(reference) / 'scores.csv'}; make ablate trains them, make reference publishes them")
    made = []
    for shift in ablation.shifts:
        strips = grid_strips(reference, "mini", shift, [v.folder for v in ablation.variants],
                             labels=[v.name for v in ablation.variants])
        if len(strips) > 2:
            made += save(strip_figure(strips, f"{ablation.title}\n{short(shift)}, seed {GRID_SEED}"), out,
                         f"{script}_{shift}")
    Path(out).mkdir(parents=True, exist_ok=True)
    return made + figure(summary, (ablation,), Path(out), stem=f"{script}_scores")
