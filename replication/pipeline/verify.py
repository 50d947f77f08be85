"""`make verify`: fresh scores against the shipped reference (mini world) and the published numbers (paper world).

    python -m replication.pipeline.verify                       # runs/scores.csv against results/reference/
    python -m replication.pipeline.verify --scores other/scores.csv --out runs/verify.md

Mini world: for every shift whose TOML has a [verify] table, each listed score's mean over the seeds present in both
files must stay within the stated tolerance of the reference's mean. Paper world: each row of
results/reference_numbers.toml (a paper's or peer's number with its source) is compared with the fresh mean where such
a run exists; a row with a tolerance passes or fails, one without is reported. Exit 1 when anything fails.
"""
from __future__ import annotations

import argparse
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from metrics.scoring import metric_prefix
from replication.config import ConfigError, available_shifts, load_tolerances
from replication.runio import REPO_ROOT, atomic_write_text

FRESH = REPO_ROOT / "runs" / "scores.csv"
REFERENCE = REPO_ROOT / "results" / "reference" / "scores.csv"
NUMBERS = REPO_ROOT / "results" / "reference_numbers.toml"


@dataclass(frozen=True)
class Check:
    world: str
    shift: str
    method: str
    metric: str
    seeds: int
    reference: float
    fresh: float
    tolerance: float | None
    source: str

    @property
    def delta(self) -> float:
        return self.fresh - self.reference

    @property
    def verdict(self) -> str:
        if self.tolerance is None:
            return "reported"
        return "pass" if abs(self.delta) <= self.tolerance + 1e-12 else "FAIL"  # NaN (a missing score) fails


def read_scores(path: Path, what: str) -> pd.DataFrame:
    """A long-format scores file (results.collect) with a metric-prefix column; a missing file is a ConfigError."""
    if not Path(path).is_file():
        raise ConfigError(f"{what} {path} does not exist; " + (
            "train and score first with `make replicate`" if what == "fresh scores" else
            "restore it from git, or write it with `make reference`"))
    frame = pd.read_csv(path, dtype={"seed": int, "value": float})
    missing = {"world", "shift", "method", "seed", "metric", "value"} - set(frame.columns)
    if missing:
        raise ConfigError(f"{path} lacks column(s) {sorted(missing)}; it must be a scores.csv from results.collect")
    frame["prefix"] = frame.metric.map(metric_prefix)
    return frame


def mini_checks(fresh: pd.DataFrame, reference: pd.DataFrame) -> list[Check]:
    """Every (shift, method, score) with a tolerance, over the seeds both files hold for it."""
    checks = []
    for shift in sorted(set(fresh["shift"]) & set(available_shifts())):
        tolerances = load_tolerances(shift)
        for method in sorted(set(fresh[fresh["shift"] == shift].method)):
            for prefix, tolerance in tolerances.items():
                def rows(frame: pd.DataFrame) -> pd.Series:
                    keep = (frame["shift"] == shift) & (frame.method == method) & (frame.prefix == prefix)
                    return frame[keep].groupby("seed").value.mean()

                new, old = rows(fresh), rows(reference)
                if new.empty and not old.empty:  # a score the reference has that the fresh runs lost
                    checks.append(Check("mini", shift, method, prefix, 0, float(old.mean()), float("nan"),
                                        tolerance, "results/reference/scores.csv (missing from the fresh scores)"))
                    continue
                seeds = sorted(set(new.index) & set(old.index))
                if not seeds:
                    continue
                checks.append(Check("mini", shift, method, prefix, len(seeds), float(old[seeds].mean()),
                                    float(new[seeds].mean()), tolerance, "results/reference/scores.csv"))
    return checks


def load_numbers(path: Path) -> list[dict]:
    """The published numbers: [[rows]] tables with world, shift, method, metric, value, source and an optional
    tolerance (and spread, protocol)."""
    if not Path(path).is_file():
        return []
    try:
        rows = tomllib.loads(Path(path).read_text(encoding="utf-8")).get("rows", [])
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    for i, row in enumerate(rows):
        missing = {"world", "shift", "method", "metric", "value", "source"} - set(row)
        if missing:
            raise ConfigError(f"{path}: [[rows]] {i + 1} lacks {sorted(missing)}")
    return rows


def paper_checks(fresh: pd.DataFrame, numbers: list[dict]) -> list[Check]:
    checks = []
    for row in numbers:
        keep = ((fresh.world == row["world"]) & (fresh["shift"] == row["shift"]) & (fresh.method == row["method"])
                & (fresh.prefix == row["metric"]))
        values = fresh[keep].groupby("seed").value.mean()
        if values.empty:
            continue
        checks.append(Check(row["world"], row["shift"], row["method"], row["metric"], len(values), float(row["value"]),
                            float(values.mean()), row.get("tolerance"), row["source"]))
    return checks


def table(checks: list[Check]) -> str:
    header = "| world | shift | method | score | seeds | reference | fresh | delta | tolerance | verdict | source |"
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for c in checks:
        tol = "" if c.tolerance is None else f"{c.tolerance:g}"
        lines.append(f"| {c.world} | {c.shift} | {c.method} | {c.metric} | {c.seeds} | {c.reference:.4f} | "
                     f"{c.fresh:.4f} | {c.delta:+.4f} | {tol} | {c.verdict} | {c.source} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m replication.pipeline.verify", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scores", type=Path, default=FRESH, help="fresh scores (make replicate writes runs/scores.csv)")
    p.add_argument("--reference", type=Path, default=REFERENCE)
    p.add_argument("--numbers", type=Path, default=NUMBERS)
    p.add_argument("--out", type=Path, help="also write the table here (Markdown)")
    args = p.parse_args(argv)
    try:
        fresh = read_scores(args.scores, "fresh scores")
        reference = read_scores(args.reference, "reference scores")
        checks = mini_checks(fresh, reference) + paper_checks(fresh, load_numbers(args.numbers))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not checks:
        print(f"error: no fresh score in {args.scores} has a reference to compare with (a mini shift's [verify] "
              f"scores, or a row of {args.numbers}); run `make replicate` first", file=sys.stderr)
        return 2
    text = table(checks)
    print(text, end="")
    if args.out:
        atomic_write_text(args.out, text)
    failed = [c for c in checks if c.verdict == "FAIL"]
    passed = sum(c.verdict == "pass" for c in checks)
    print(f"{passed} passed, {len(failed)} failed, {len(checks) - passed - len(failed)} reported without a tolerance")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
