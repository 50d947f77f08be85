"""Editing transfer (NADA section 7.2): does a source-generator edit still edit the adapted generator, per shift and
method.

    python -m paper_figures.editing_transfer [--reference results/reference] [--out paper_figures/out] [--tables DIR]

Reads the mini_edit_<attr>_{src,tgt,transfer} rows of scores.csv (metrics/editing.py): editing_transfer.png/.pdf (a
panel per shift: each method's transfer per attribute, mean over seeds with a 95% bootstrap CI; 1 = the edit works as
on the source, 0 = it does nothing) and editing_transfer.md in the results tree (each cell: transfer [CI], then the
source's and the adapted generator's mean attribute change under the same 2-sd edit).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns

from metrics.editing import EDIT_ATTRIBUTES
from paper_figures.ablations import Ablation, Variant, summarise
from paper_figures.common import OUT, REFERENCE, cli, read_scores, save, short, skip
from paper_figures.grids import method_order
from replication.runio import atomic_write_text

NAME = "editing_transfer"
KINDS = ("src", "tgt", "transfer")


def attributes_in(prefixes) -> list[str]:
    """The edited attributes that have rows, in the metric's order (then any others alphabetically)."""
    found = {p.removeprefix("mini_edit_").rsplit("_", 1)[0] for p in prefixes if p.startswith("mini_edit_")}
    return [a for a in EDIT_ATTRIBUTES if a in found] + sorted(found - set(EDIT_ATTRIBUTES))


def summary_of(scores):
    """(summary per shift, method, column "<attr> <kind>", attributes, shifts, methods) over seeds."""
    edit = scores[scores.prefix.str.startswith("mini_edit_")]
    attributes = attributes_in(set(edit.prefix))
    shifts = sorted(edit["shift"].unique())
    methods = method_order(set(edit.method))
    columns = [(f"{a} {k}", f"mini_edit_{a}_{k}", True) for a in attributes for k in KINDS]
    table = Ablation(NAME, "Editing transfer", tuple(shifts), tuple(Variant(m, m) for m in methods))
    return summarise(edit, (table,), columns), attributes, shifts, methods


def markdown(summary, attributes, shifts, methods) -> str:
    lines = ["**Editing transfer**: an InterFaceGAN-style W direction fitted on the source generator, each latent "
             "moved 2 sd along it; cell: adapted change / source change, mean [95% bootstrap CI] over seeds "
             "(source change -> adapted change, attribute units). 1: the edit works as on the source; 0: it does "
             "nothing.\n",
             "| shift | method | seeds | " + " | ".join(attributes) + " |", "|" + "---|" * (3 + len(attributes))]
    for shift in shifts:
        for method in methods:
            cells = summary[(summary["shift"] == shift) & (summary.variant == method)].set_index("score")
            if cells.empty:
                continue
            values = []
            for a in attributes:
                t, s, g = (f"{a} {k}" for k in ("transfer", "src", "tgt"))
                ratio = (f"{cells.at[t, 'mean']:.2f} [{cells.at[t, 'lo']:.2f}, {cells.at[t, 'hi']:.2f}]"
                         if t in cells.index else "-")
                change = f" ({cells.at[s, 'mean']:.2f} -> {cells.at[g, 'mean']:.2f})" if {s, g} <= set(cells.index) \
                    else ""
                values.append(ratio + change)
            lines.append(f"| {short(shift)} | {method} | {int(cells.seeds.max())} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def figure(summary, attributes, shifts, methods, out: Path) -> list[Path]:
    ratios = summary[summary.score.str.endswith(" transfer")].assign(
        attribute=lambda d: d.score.str.removesuffix(" transfer"))
    cols = min(3, len(shifts))
    rows = math.ceil(len(shifts) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False, sharey=True)
    palette = dict(zip(methods, sns.color_palette(n_colors=len(methods))))
    width = 0.8 / len(methods)
    for ax, shift in zip(axes.flat, shifts):
        for j, method in enumerate(methods):
            d = ratios[(ratios["shift"] == shift) & (ratios.variant == method)].set_index("attribute")
            d = d.reindex([a for a in attributes if a in d.index])
            x = [attributes.index(a) - 0.4 + (j + 0.5) * width for a in d.index]
            ax.bar(x, d["mean"], width, yerr=[d["mean"] - d.lo, d.hi - d["mean"]], capsize=2, color=palette[method],
                   label=method)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xticks(range(len(attributes)), attributes, rotation=20, fontsize=8)
        ax.set_title(short(shift), fontsize=9)
    for ax in axes.flat[len(shifts):]:
        ax.set_axis_off()
    axes[0][0].set_ylabel("edit transfer (adapted / source)")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    return save(fig, out, NAME)


def draw(reference: Path = REFERENCE, out: Path = OUT, tables: Path | None = None) -> list[Path]:
    scores = read_scores(reference)
    if scores is None or not scores.prefix.str.startswith("mini_edit_").any():
        return skip(NAME, f"no mini_edit_* rows in {Path(reference) / 'scores.csv'} (runs scored before the "
                          f"editing metric: make replicate RESCORE=1, then make reference)")
    summary, attributes, shifts, methods = summary_of(scores)
    table = Path(tables or reference) / f"{NAME}.md"
    atomic_write_text(table, markdown(summary, attributes, shifts, methods))
    return [table, *figure(summary, attributes, shifts, methods, out)]


if __name__ == "__main__":
    sys.exit(cli(__doc__, draw, tables=True))
