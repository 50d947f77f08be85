"""Draw every figure from the shipped reference (results/reference/: scores and final grids) only (no weights, no GPU).

    python -m paper_figures.make_all                                  # results/reference -> paper_figures/out
    python -m paper_figures.make_all --reference DIR --out DIR --tables DIR

Besides its own figures (scores, stacked grids, seed verdicts) it runs every figure script of this folder (SCRIPTS:
grids, the loss, freezing and mapper ablations, editing transfer, the comparison tables, training curves); each says
in one line when its inputs are missing. `make figures` then runs paper_figures.ablations (the ablation table).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from metrics.miniworld import HEADLINE  # noqa: E402
from metrics.scoring import metric_prefix  # noqa: E402
from metrics.stats import bootstrap_ci  # noqa: E402
from paper_figures import (  # noqa: E402
    comparison,
    editing_transfer,
    global_vs_directional,
    grids,
    layer_freezing,
    mapper,
    training_curves,
)
from paper_figures.common import OUT, REFERENCE  # noqa: E402
from replication.runio import REPO_ROOT  # noqa: E402

# The figure scripts, each draw(reference, out, tables) -> written paths (none, after one line, when inputs are missing)
SCRIPTS = (grids, global_vs_directional, layer_freezing, mapper, editing_transfer, comparison, training_curves)
SEEDS_CSV = REPO_ROOT / "results" / "sweeps" / "mini-seeds.csv"



def _base(metric: str) -> str:
    """Headline name of a stored metric ("mini_paired_l1_n500" -> "paired_l1"); "" for others, including the
    *_src references (the unadapted generator's score beside a metric, which must not be pooled with it)."""
    core = metric_prefix(metric).removeprefix("mini_")
    if core.endswith("_src"):
        return ""
    for name in HEADLINE:
        if core == name or core.startswith(name + "_"):
            return name
    return ""


def fig_mini_scores(scores: pd.DataFrame, out: Path) -> Path | None:
    """One panel per headline metric: mean over seeds with a 95% bootstrap CI, per shift and method."""
    df = scores[(scores.world == "mini")].copy()
    df["base"] = df.metric.map(_base)
    df = df[df.base != ""]
    if df.empty:
        return None
    metrics = [m for m in HEADLINE if m in set(df.base)]
    shifts, methods = sorted(df["shift"].unique()), sorted(df.method.unique())
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.4), squeeze=False)
    width = 0.8 / len(methods)
    for ax, metric in zip(axes[0], metrics):
        for j, method in enumerate(methods):
            for i, shift in enumerate(shifts):
                vals = df[(df.base == metric) & (df.method == method) & (df["shift"] == shift)].value
                if vals.empty:
                    continue
                mean, lo, hi = bootstrap_ci(vals.to_numpy())
                ax.bar(i + j * width, mean, width, yerr=[[mean - lo], [hi - mean]], capsize=2,
                       color=f"C{j}", label=method if i == 0 else None)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(shifts))], [s.replace("mini--", "") for s in shifts],
                      rotation=30, fontsize=8)
        ax.set_title(metric, fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = out / "mini_scores.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def fig_mini_grids(runs_dir: Path, out: Path, seed: int = 0) -> Path | None:
    """Final sample grids (source row above adapted row) of every mini shift and method, seed 0, stacked."""
    grids = sorted(runs_dir.glob(f"mini/*/*/seed{seed}/samples/final.png"))
    if not grids:
        return None
    fig, axes = plt.subplots(len(grids), 1, figsize=(6, 1.9 * len(grids)), squeeze=False)
    for ax, path in zip(axes[:, 0], grids):
        ax.imshow(Image.open(path))
        ax.set_axis_off()
        ax.set_title(f"{path.parts[-5]} / {path.parts[-4]}", fontsize=8)
    fig.tight_layout()
    path = out / "mini_grids.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fig_seed_verdicts(seed_scores: pd.DataFrame, out: Path) -> Path | None:
    """One panel per thresholded NADA bar: every seed's score per (shift, method), the bar as a dashed line, so how
    much of a pass or a miss rests on the seed can be seen (results/sweeps/mini-seeds.csv)."""
    from metrics.miniworld import NADA_BARS, bars_for_shift
    from replication.config import load_shift

    df = seed_scores[seed_scores.world == "mini"].copy()
    df["prefix"] = df.metric.map(metric_prefix)
    bars = [bar for bar in NADA_BARS if bar.lowest is not None and bar.metric in set(df.prefix)]
    if not bars:
        return None
    groups = sorted({(shift, method) for shift, method in zip(df["shift"], df.method)})
    applicable = {shift: bars_for_shift(load_shift(shift).task) for shift, _ in groups}
    fig, axes = plt.subplots(1, len(bars), figsize=(3.0 * len(bars), 3.6), squeeze=False)
    for ax, bar in zip(axes[0], bars):
        for i, (shift, method) in enumerate(groups):
            vals = df[(df.prefix == bar.metric) & (df["shift"] == shift) & (df.method == method)].value.to_numpy()
            if len(vals) == 0 or bar not in applicable[shift]:  # e.g. no edge bar on a character shift
                continue
            passed = vals >= bar.lowest
            ax.scatter([i] * len(vals), vals, s=14, c=["C2" if p else "C3" for p in passed], alpha=0.8)
            ax.text(i, 1.02, f"{passed.sum()}/{len(vals)}", ha="center", fontsize=7, transform=ax.get_xaxis_transform())
        ax.axhline(bar.lowest, color="k", ls="--", lw=0.8)
        ax.set_xticks(range(len(groups)), [f"{s.replace('mini--', '')}\n{m}" for s, m in groups], rotation=45,
                      fontsize=7, ha="right")
        ax.set_title(f"{bar.name} (bar {bar.lowest:g})", fontsize=9, pad=14)
    fig.tight_layout()
    path = out / "mini_seeds.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def make_all(scores_csv: Path, runs_dir: Path, out: Path, seeds_csv: Path | None = None) -> list[Path]:
    """Every figure whose data exist; `seeds_csv`: a many-seed sweep's scores (results/sweeps/mini-seeds.csv)."""
    out.mkdir(parents=True, exist_ok=True)
    scores = pd.read_csv(scores_csv) if Path(scores_csv).is_file() else pd.DataFrame(columns=["world"])
    made = [fig_mini_scores(scores, out) if not scores.empty else None, fig_mini_grids(Path(runs_dir), out)]
    if seeds_csv is not None and Path(seeds_csv).is_file():
        made.append(fig_seed_verdicts(pd.read_csv(seeds_csv), out))
    return [p for p in made if p is not None]


def draw_all(reference: Path = REFERENCE, out: Path = OUT, tables: Path | None = None,
             seeds_csv: Path | None = None) -> list[Path]:
    """make_all's figures of a results tree (<reference>/scores.csv, <reference>/runs/), then every script's; tables
    go to `tables` (default: the results tree)."""
    made = make_all(Path(reference) / "scores.csv", Path(reference) / "runs", Path(out), seeds_csv)
    for script in SCRIPTS:
        made += script.draw(Path(reference), Path(out), tables)
    return made


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m paper_figures.make_all", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", type=Path, default=REFERENCE, help="results tree (scores.csv, runs/)")
    p.add_argument("--out", type=Path, default=OUT, help="where figures go")
    p.add_argument("--tables", type=Path, help="where tables go (default: the results tree)")
    args = p.parse_args(argv)
    seeds = SEEDS_CSV if args.reference == REFERENCE else None
    for path in draw_all(args.reference, args.out, args.tables, seeds):
        print(f"figure: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
