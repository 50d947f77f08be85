"""`make ablate`: train and score every variant of the ablation file (replication/ablations/mini.toml), then write the
ablation table and figure (paper_figures.ablations) next to the runs.

    python -m replication.pipeline.ablate                        # runs/ -> runs/ablations/{ablations.md,.tex,.png,.pdf}
    python -m replication.pipeline.ablate --only loss mapper --seeds 0
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from baselines import check_method
from metrics.scoring import ScoringError, check_settings
from paper_figures.ablations import SPEC, AblationError, load_ablations, write_all
from replication.checkpoint import CheckpointError
from replication.clip_models import ClipModelError
from replication.config import ConfigError, load_shift
from replication.pipeline.launch import Job, JobOptions
from replication.pipeline.replicate import add_launch_options, check_launch_options, missing_weights, run_jobs
from replication.pipeline.scoring import settings_for
from replication.pipeline.train import DEFAULT_OUTDIR, check_outdir, check_seeds, resolve_device
from replication.weights import WeightError
from results.collect import CollectError, collect_rows, write_scores


def ablation_jobs(ablations, seeds) -> list[Job]:
    """One job per (shift, variant, seed), each run once even when several ablations share it (plain NADA)."""
    jobs: list[Job] = []
    for ablation in ablations:
        for shift in ablation.shifts:
            for variant in ablation.variants:
                for seed in seeds:
                    job = Job(shift, variant.method, seed, name=variant.folder if variant.nada else "",
                              nada=variant.nada)
                    if job not in jobs:
                        jobs.append(job)
    return jobs


def main(argv: list[str] | None = None, *, slurm_cluster: str | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m replication.pipeline.ablate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", type=Path, default=SPEC, help="ablation file")
    p.add_argument("--only", nargs="*", help="ablation names (default: all)")
    p.add_argument("--seeds", nargs="*", type=int, help="override the file's seeds")
    p.add_argument("--outdir", type=Path, default=DEFAULT_OUTDIR)
    p.add_argument("--n-eval", type=int, default=None, help="latents of the CLIP and truth scores (default 500)")
    p.add_argument("--n-lpips", type=int, default=None)
    p.add_argument("--n-fid", type=int, default=None)
    add_launch_options(p)
    args = p.parse_args(argv)
    try:
        check_seeds(args.seeds, "--seeds")
        check_launch_options(args)
        device = resolve_device(args.device) if args.launcher == "local" else args.device
        check_outdir(args.outdir)
        seeds, ablations = load_ablations(args.spec)
        if args.only is not None:
            unknown = sorted(set(args.only) - {a.name for a in ablations})
            if not args.only or unknown:
                raise ConfigError(f"--only {unknown or '(nothing)'}: name ablations of {args.spec}: "
                                  f"{[a.name for a in ablations]}")
            ablations = tuple(a for a in ablations if a.name in args.only)
        seeds = tuple(args.seeds or seeds)
        settings = {"mini": settings_for("mini", n_clip=args.n_eval, n_lpips=args.n_lpips, n_fid=args.n_fid),
                    "paper": settings_for("paper", n_clip=args.n_eval, n_lpips=args.n_lpips, n_fid=args.n_fid)}
        jobs = ablation_jobs(ablations, seeds)
        shifts = []
        for job in jobs:  # every method and override is checked before anything trains
            shift = job.config()
            check_method(job.method, shift)
            check_settings(settings[shift.task.world], shift)
            shifts.append(shift)
        missing = missing_weights(shifts, None)
        if missing:
            raise WeightError("; ".join(missing))
    except (AblationError, ConfigError, CheckpointError, ClipModelError, WeightError, ScoringError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    options = JobOptions(outdir=str(args.outdir), settings=settings, device=str(device), threads=args.threads,
                         progress=not args.no_progress)
    failed = run_jobs(jobs, options, args, slurm_cluster)
    try:
        scores = write_scores(collect_rows(args.outdir), args.outdir / "scores.csv")
    except CollectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in write_all(scores, args.outdir / "ablations", spec=args.spec):
        print(f"wrote: {path}")
    if failed:
        print(f"error: {failed} of {len(jobs)} run(s) failed (listed above); call again to retry them",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
