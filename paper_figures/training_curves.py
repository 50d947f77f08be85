"""Mini-world training curves: each method's loss against the training step, per shift, from the runs' stats.jsonl.

    python -m paper_figures.training_curves [--reference results/reference] [--out paper_figures/out]

A panel per shift, a line per method: the loss each run logged at every step, smoothed over SMOOTH steps, the mean
over seeds with the band from the lowest to the highest seed. The methods' losses differ (NADA's directional CLIP
loss, the oracles' own), so compare a method's curve across shifts and seeds, not across methods. Writes
training_curves.png and .pdf.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from paper_figures.common import OUT, REFERENCE, cli, read_stats, save, short, skip
from paper_figures.grids import method_order

NAME = "training_curves"
SMOOTH = 20  # steps of the rolling mean


def curves(reference: Path, world: str = "mini") -> pd.DataFrame:
    """Every run's (shift, method, seed, step, loss), the loss smoothed over SMOOTH steps."""
    frames = []
    for path in sorted((Path(reference) / "runs" / world).glob("*/*/seed*/stats.jsonl")):
        stats = read_stats(path)
        if stats.empty or not {"step", "loss"} <= set(stats.columns):
            continue
        stats = stats[["step", "loss"]].dropna().sort_values("step")
        frames.append(stats.assign(loss=stats.loss.rolling(SMOOTH, min_periods=1).mean(), shift=path.parts[-4],
                                   method=path.parts[-3], seed=int(path.parts[-2].removeprefix("seed"))))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def draw(reference: Path = REFERENCE, out: Path = OUT, tables: Path | None = None) -> list[Path]:
    data = curves(reference)
    if data.empty:
        return skip(NAME, f"no mini run under {Path(reference) / 'runs'} has a stats.jsonl with step and loss")
    shifts = sorted(data["shift"].unique())
    methods = method_order(set(data.method))
    cols = min(3, len(shifts))
    rows = math.ceil(len(shifts) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.9 * rows), squeeze=False)
    palette = dict(zip(methods, sns.color_palette(n_colors=len(methods))))
    for ax, shift in zip(axes.flat, shifts):
        sns.lineplot(data=data[data["shift"] == shift], x="step", y="loss", hue="method", hue_order=[
            m for m in methods if m in set(data[data["shift"] == shift].method)], palette=palette,
            errorbar=("pi", 100), estimator="mean", ax=ax, linewidth=1.0, legend=False)
        ax.set_yscale("log")
        ax.set_title(short(shift), fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel(f"loss (mean of {SMOOTH} steps)", fontsize=8)
    for ax in axes.flat[len(shifts):]:
        ax.set_axis_off()
    handles = [plt.Line2D([], [], color=palette[m], label=m) for m in methods]
    fig.legend(handles=handles, loc="upper right", fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    return save(fig, out, NAME)


if __name__ == "__main__":
    sys.exit(cli(__doc__, draw))
