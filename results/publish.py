"""`make reference`: copy finished runs' small files (scores, configs, final grid) from runs/ into the shipped reference.

    python -m results.publish                        # every finished run under runs/ -> results/reference/
    python -m results.publish --runs /tmp/runs --only-world mini

Only this command writes results/reference/: `make replicate` never does. A published run replaces the reference's
copy of the same (world, shift, method, seed) as a whole; every other reference run is kept. The reference's
scores.csv is then collected again from its runs.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from replication.runio import REPO_ROOT, atomic_write_bytes, is_done
from results.collect import CollectError, collect_rows, write_scores

REFERENCE = REPO_ROOT / "results" / "reference"
# What a shipped run keeps: no checkpoints, no intermediate grids (git stays small); enough to collect and redraw.
# Names or glob patterns relative to the run folder.
KEPT = ("DONE", "config.json", "env.json", "metrics.jsonl", "stats.jsonl", "samples/final.png", "mapper_config.json",
        "mapper_stats.json", "samples/interpolation.png", "samples/edit_*.png")


def finished_runs(runs: Path, world: str | None = None) -> list[Path]:
    """Every run folder (<world>/<shift>/<method>/seed<k>) that is finished and scored."""
    pattern = f"{world or '*'}/*/*/seed*"
    return sorted(p for p in Path(runs).glob(pattern) if is_done(p) and (p / "metrics.jsonl").is_file())


def publish_run(run_dir: Path, runs: Path, reference_runs: Path) -> Path:
    target = reference_runs / run_dir.relative_to(runs)
    staging = target.with_name(target.name + ".publishing")
    shutil.rmtree(staging, ignore_errors=True)
    for path in sorted({p for name in KEPT for p in run_dir.glob(name) if p.is_file()}):
        atomic_write_bytes(staging / path.relative_to(run_dir), path.read_bytes())
    # swap whole folders, so a reference run is never half old, half new
    if target.exists():
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old)
    else:
        staging.rename(target)
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m results.publish", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, default=REPO_ROOT / "runs")
    p.add_argument("--reference", type=Path, default=REFERENCE)
    p.add_argument("--only-world", choices=("mini", "paper"))
    args = p.parse_args(argv)
    runs = finished_runs(args.runs, args.only_world)
    if not runs:
        print(f"error: no finished, scored run under {args.runs}; run `make replicate` first", file=sys.stderr)
        return 2
    try:
        collect_rows(args.runs)  # a damaged run stops the publication before anything is copied
    except CollectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for run_dir in runs:
        publish_run(run_dir, args.runs, args.reference / "runs")
    scores = write_scores(collect_rows(args.reference / "runs"), args.reference / "scores.csv")
    print(f"published {len(runs)} run(s) into {args.reference / 'runs'}; scores: {scores}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
