"""The ablation table (Markdown, LaTeX) and figure from scores alone: each variant's mean over seeds with a 95% CI.

    python -m paper_figures.ablations                         # shipped reference -> paper_figures/out/, results/reference/
    python -m paper_figures.ablations --scores runs/scores.csv --out runs/ablations
"""
from __future__ import annotations

import argparse
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from metrics.scoring import metric_prefix  # noqa: E402
from metrics.stats import bootstrap_ci  # noqa: E402
from replication.runio import REPO_ROOT, atomic_write_text  # noqa: E402

SPEC = REPO_ROOT / "replication" / "ablations" / "mini.toml"
REFERENCE_SCORES = REPO_ROOT / "results" / "reference" / "scores.csv"
# (column, stored metric prefix, higher is better): what each ablation is judged on
COLUMNS = (("target acc.", "mini_target_accuracy", True), ("kept label", "mini_kept_label_accuracy", True),
           ("R^2 ratio", "mini_attr_r2_ratio", True), ("clip_dir (B)", "clip_dir_miniclipb", True),
           ("FID (evaluator)", "fid_evaluator", False))


class AblationError(ValueError):
    """A malformed ablation file; the message names the file and the fix."""


@dataclass(frozen=True)
class Variant:
    name: str
    method: str
    nada: tuple[tuple[str, Any], ...] = ()

    @property
    def folder(self) -> str:
        """The run folder: the method's own when nothing is overridden (shared with make replicate)."""
        return self.method if not self.nada else f"{self.method}+{self.name}"


@dataclass(frozen=True)
class Ablation:
    name: str
    title: str
    shifts: tuple[str, ...]
    variants: tuple[Variant, ...]


def load_ablations(path: Path = SPEC) -> tuple[tuple[int, ...], tuple[Ablation, ...]]:
    """(seeds, ablations) of an ablation file; structure only (the pipeline checks methods and overrides)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise AblationError(f"{path}: cannot read it as TOML ({exc})") from None
    seeds = data.get("seeds", [0, 1, 2])
    if not (isinstance(seeds, list) and seeds and all(isinstance(k, int) and k >= 0 for k in seeds)):
        raise AblationError(f"{path}: seeds must list seeds >= 0, like seeds = [0, 1, 2]")
    ablations = []
    for raw in data.get("ablation", []):
        try:
            variants = tuple(Variant(v["name"], v["method"], tuple(sorted(v.get("nada", {}).items())))
                             for v in raw["variants"])
            ablation = Ablation(raw["name"], raw.get("title", raw["name"]), tuple(raw["shifts"]), variants)
        except (KeyError, TypeError, AttributeError) as exc:
            raise AblationError(f"{path}: each [[ablation]] needs name, shifts and variants (each with name and method, "
                                f"optional nada overrides); problem: {exc!r}") from None
        if len({v.name for v in variants}) != len(variants):
            raise AblationError(f"{path}: ablation {ablation.name!r} repeats a variant name")
        ablations.append(ablation)
    if not ablations:
        raise AblationError(f"{path}: no [[ablation]] tables")
    return tuple(seeds), tuple(ablations)


def summarise(scores: pd.DataFrame, ablations: tuple[Ablation, ...], columns=COLUMNS) -> pd.DataFrame:
    """One row per ablation, shift, variant and score (of `columns`: (column, metric prefix, higher is better)): mean
    over seeds, its 95% bootstrap CI and the seed count."""
    scores = scores.assign(prefix=scores.metric.map(metric_prefix))
    rows = []
    for ablation in ablations:
        for shift in ablation.shifts:
            for variant in ablation.variants:
                runs = scores[(scores["shift"] == Path(shift).stem) & (scores.method == variant.folder)]
                for column, prefix, _ in columns:
                    values = runs[runs.prefix == prefix].groupby("seed").value.mean()
                    if values.empty:
                        continue
                    mean, lo, hi = bootstrap_ci(values.to_numpy()) if len(values) > 1 else (values.iloc[0],) * 3
                    rows.append(dict(ablation=ablation.name, shift=shift, variant=variant.name, score=column,
                                     mean=float(mean), lo=float(lo), hi=float(hi), seeds=len(values)))
    return pd.DataFrame(rows, columns=["ablation", "shift", "variant", "score", "mean", "lo", "hi", "seeds"])


def markdown(summary: pd.DataFrame, ablations: tuple[Ablation, ...], columns=COLUMNS,
             row_label: str = "variant") -> str:
    """A table per ablation: rows shift x variant, cells "mean [lo, hi]" over seeds."""
    parts = []
    for ablation in ablations:
        part = summary[summary.ablation == ablation.name]
        if part.empty:
            continue
        header = ["shift", row_label, "seeds", *[c for c, _, _ in columns]]
        lines = [f"**{ablation.title}**\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for shift in ablation.shifts:
            for variant in ablation.variants:
                cells = part[(part["shift"] == shift) & (part.variant == variant.name)].set_index("score")
                if cells.empty:
                    continue
                values = [f"{cells.at[c, 'mean']:.2f} [{cells.at[c, 'lo']:.2f}, {cells.at[c, 'hi']:.2f}]"
                          if c in cells.index else "" for c, _, _ in columns]
                lines.append("| " + " | ".join([Path(shift).stem.removeprefix("mini--"), variant.name,
                                                str(int(cells.seeds.max())), *values]) + " |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def latex(summary: pd.DataFrame, columns=COLUMNS) -> str:
    """The same numbers as one LaTeX tabular (booktabs), for a paper."""
    wide = summary.assign(cell=[f"{m:.2f} [{lo:.2f}, {hi:.2f}]" for m, lo, hi in
                                zip(summary["mean"], summary.lo, summary.hi)])
    wide = wide.pivot_table(index=["ablation", "shift", "variant"], columns="score", values="cell", aggfunc="first",
                            sort=False)
    return wide.reindex(columns=[c for c, _, _ in columns if c in wide.columns]).to_latex(na_rep="")


def figure(summary: pd.DataFrame, ablations: tuple[Ablation, ...], out: Path, stem: str = "ablations") -> list[Path]:
    """One row of panels per ablation (a panel per score): variant on x, mean with its CI, one colour per shift;
    written to <out>/<stem>.png and .pdf."""
    present = [a for a in ablations if a.name in set(summary.ablation)]
    if not present:
        return []
    fig, axes = plt.subplots(len(present), len(COLUMNS), figsize=(3.2 * len(COLUMNS), 2.9 * len(present)),
                             squeeze=False)
    for row, ablation in zip(axes, present):
        part = summary[summary.ablation == ablation.name]
        order = [v.name for v in ablation.variants]
        for ax, (column, _, higher) in zip(row, COLUMNS):
            data = part[part.score == column]
            for i, shift in enumerate(ablation.shifts):
                d = data[data["shift"] == shift].set_index("variant").reindex(order).dropna(subset=["mean"])
                x = [order.index(v) + (i - (len(ablation.shifts) - 1) / 2) * 0.12 for v in d.index]
                ax.errorbar(x, d["mean"], yerr=[d["mean"] - d.lo, d.hi - d["mean"]], fmt="o-", ms=4, capsize=2,
                            color=sns.color_palette()[i], label=Path(shift).stem.removeprefix("mini--"))
            ax.set_xticks(range(len(order)), order, rotation=30, ha="right", fontsize=8)
            ax.set_title(f"{column} ({'higher' if higher else 'lower'} is better)", fontsize=8)
        row[0].set_ylabel(ablation.name)
        row[-1].legend(fontsize=7)
    fig.tight_layout()
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return paths


def write_all(scores_csv: Path, out: Path, table_dir: Path | None = None, spec: Path = SPEC) -> list[Path]:
    """Table (ablations.md, ablations.tex) and figure for every ablation with scores; nothing when none has any."""
    scores = pd.read_csv(scores_csv) if Path(scores_csv).is_file() else pd.DataFrame(columns=["shift", "method",
                                                                                             "metric", "seed", "value"])
    _, ablations = load_ablations(spec)
    summary = summarise(scores, ablations)
    if summary.empty:
        return []
    out.mkdir(parents=True, exist_ok=True)
    table_dir = table_dir or out
    table_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(table_dir / "ablations.md", markdown(summary, ablations))
    atomic_write_text(table_dir / "ablations.tex", latex(summary))
    return [table_dir / "ablations.md", table_dir / "ablations.tex", *figure(summary, ablations, out)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m paper_figures.ablations", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scores", type=Path, default=REFERENCE_SCORES)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "paper_figures" / "out")
    p.add_argument("--tables", type=Path, default=None,
                   help="where the Markdown and LaTeX tables go (default: results/reference/ for the reference, "
                        "else --out)")
    p.add_argument("--spec", type=Path, default=SPEC)
    args = p.parse_args(argv)
    tables = args.tables or (REFERENCE_SCORES.parent if args.scores == REFERENCE_SCORES else args.out)
    try:
        made = write_all(args.scores, args.out, tables, args.spec)
    except AblationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not made:
        print(f"skipped: no ablation run has scores in {args.scores} (make ablate trains them)")
    for path in made:
        print(f"wrote: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
