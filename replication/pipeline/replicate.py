"""`make replicate`: train every shift of a world with every method and seed, score each run, collect, draw figures.

Runs go to runs/ (git-ignored); finished runs are kept and interrupted ones resume. The shipped reference results
(results/reference/) are written only by `make reference`. Examples:
    python -m replication.pipeline.replicate                                  # mini world: NADA, seeds 0 1 2
    python -m replication.pipeline.replicate --world mini --shifts mini--sketch --methods nada source --seeds 0
    python -m replication.pipeline.replicate --launcher slurm --slurm-partition gpu --slurm-gpus 1 --device cuda
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from baselines import METHODS, check_method
from metrics.scoring import ScoringError, check_settings
from paper_figures.make_all import make_all
from replication import weights
from replication.checkpoint import CheckpointError
from replication.clip_models import ClipModelError, PromptError
from replication.config import ConfigError, ShiftConfig, available_shifts, load_shift
from replication.nada import GeneratorNotFound, resolve_generator_path
from replication.pipeline.launch import Job, JobOptions, SlurmOptions, launch
from replication.pipeline.scoring import (
    EVAL_CLIP,
    EVALUATOR,
    INCEPTION,
    MINI_CLIPS,
    VGG16,
    check_eval_clip,
    settings_for,
)
from replication.pipeline.train import DEFAULT_OUTDIR, check_outdir, check_seeds, resolve_device
from replication.weights import WeightError
from results.collect import CollectError, collect_rows, write_scores

DEFAULT_METHODS = ("nada",)  # METHODS="source nada nada-global ..." for the comparisons (make ablate runs those)
DEFAULT_SEEDS = (0, 1, 2)  # three seeds: every table gives a bootstrap CI over them


def methods_for(world: str, methods: list[str] | None) -> list[str]:
    """The methods a replicate call trains: those asked for, else the defaults."""
    return list(methods) if methods else list(DEFAULT_METHODS)


def world_shifts(world: str) -> list[str]:
    return [name for name in available_shifts() if load_shift(name).task.world == world]


def _weight_problem(name: str) -> str | None:
    """Why a CLIP or scoring weight named by registry name or path cannot be read, or None when its file is there."""
    if Path(name).is_file():
        return None
    entry = weights.registry().get(name)
    if entry is None:
        return f"{name}: neither a file nor a weight-registry name"
    return None if entry.path.is_file() else weights.missing_message(entry)


def missing_weights(shifts: list[ShiftConfig], eval_clip: str | None) -> list[str]:
    """Every weight file the runs and their scoring need that is not on disk, each once with how to get it: a user
    fixes them all in one go instead of meeting them one run at a time."""
    problems: list[str] = []
    for shift in shifts:
        try:
            resolve_generator_path(shift.task.generator)
        except GeneratorNotFound as exc:
            problems.append(str(exc))
        for name, weight in zip(shift.nada.clip_models, shift.nada.clip_model_weights):
            problems.append(_weight_problem(name) if weight > 0 else None)
        for images in (shift.task.target_images, shift.task.source_images):  # a folder, or a registry image set
            if images is not None and not Path(images).is_dir():
                problems.append(_weight_problem(images))
        world = shift.task.world
        judges = (EVALUATOR, *MINI_CLIPS) if world == "mini" else (INCEPTION, VGG16)
        for name in (*judges, eval_clip or EVAL_CLIP[world]):
            problems.append(_weight_problem(name))
    return list(dict.fromkeys(p for p in problems if p))


def add_launch_options(p: argparse.ArgumentParser) -> None:
    """The options of every command that runs many jobs (replicate, ablate, sweep)."""
    p.add_argument("--device", default="auto")
    p.add_argument("--launcher", default="local", choices=("local", "slurm"),
                   help="local: this machine (a process pool when several runs fit); slurm: one array job via submitit")
    p.add_argument("--workers", type=int, default=0, help="local runs at once (0: one per core on a CPU, 1 on a GPU)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (0: cores / workers)")
    p.add_argument("--slurm-partition")
    p.add_argument("--slurm-time", type=int, default=60, help="minutes per run")
    p.add_argument("--slurm-gpus", type=int, default=0)
    p.add_argument("--slurm-cpus", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")


def slurm_options(args: argparse.Namespace, cluster: str | None = None) -> SlurmOptions:
    return SlurmOptions(partition=args.slurm_partition, time_min=args.slurm_time, gpus=args.slurm_gpus,
                        cpus=args.slurm_cpus, cluster=cluster)


def check_launch_options(args: argparse.Namespace) -> None:
    for flag in ("workers", "threads", "slurm_gpus"):
        if getattr(args, flag) < 0:
            raise ConfigError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: give a count >= 0")
    if args.slurm_time < 1 or args.slurm_cpus < 1:
        raise ConfigError("--slurm-time and --slurm-cpus must be >= 1")
    if args.launcher == "slurm":
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise ConfigError("--launcher slurm needs submitit: install env/requirements.txt (make env)") from None


def run_jobs(jobs: list[Job], options: JobOptions, args: argparse.Namespace, cluster: str | None = None) -> int:
    """Launch the jobs; print each failure's line. Returns the number of failed runs."""
    results = launch(jobs, options, launcher=args.launcher, workers=args.workers, slurm=slurm_options(args, cluster),
                     show=not args.no_progress)
    failed = [r for r in results if r.status == "failed"]
    stale = [r for r in results if r.status != "failed" and not r.current]
    if stale:
        print(f"warning: {len(stale)} finished run(s) were trained or scored with other weights than the registry's "
              f"(first: {stale[0].run_dir}); redo them with --rerun-stale (make replicate RERUN_STALE=1)",
              file=sys.stderr)
    for result in failed:
        print(f"error: {result.job.label()}: {result.error}", file=sys.stderr)
    return len(failed)


def main(argv: list[str] | None = None, *, slurm_cluster: str | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m replication.pipeline.replicate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", default="mini", choices=("mini", "paper"))
    p.add_argument("--shifts", nargs="*", help="shift names (default: every shift of the world)")
    p.add_argument("--methods", nargs="*", help=f"default: {' '.join(DEFAULT_METHODS)}; known: "
                                                f"{' '.join(sorted(METHODS))}")
    p.add_argument("--seeds", nargs="*", type=int, default=list(DEFAULT_SEEDS))
    p.add_argument("--outdir", type=Path, default=DEFAULT_OUTDIR)
    p.add_argument("--n-eval", type=int, default=None,
                   help="latents of the CLIP scores and the mini world's ground truth (default 500)")
    p.add_argument("--n-lpips", type=int, default=None, help="samples of intra-cluster LPIPS (default 1000)")
    p.add_argument("--n-fid", type=int, default=None, help="samples of FID/KID (default 1000 mini, 5000 paper)")
    p.add_argument("--fid-references", type=Path,
                   help="paper world: a folder with one folder of real target images per shift (<dir>/<shift>/)")
    p.add_argument("--eval-clip", help="the evaluation CLIP (default: ViT-L/14 paper, mini-clip-b mini); it must "
                                       "not guide any run it judges")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--rerun-stale", action="store_true",
                   help="re-run finished mini runs trained or scored with other weights than the registry's")
    p.add_argument("--rescore", action="store_true",
                   help="score finished runs again from their saved final generator (after a metric is added)")
    add_launch_options(p)
    args = p.parse_args(argv)

    try:
        # every argument is checked before any weight loads or any file is written
        for flag, values in (("--shifts", args.shifts), ("--methods", args.methods)):
            if values is not None and not values:
                raise ConfigError(f"{flag} needs at least one name (leave it out for the default)")
        check_seeds(args.seeds, "--seeds")
        check_launch_options(args)
        for flag in ("n_eval", "n_lpips", "n_fid"):
            if getattr(args, flag) is not None and getattr(args, flag) < 2:
                raise ConfigError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: a score needs at least 2 "
                                  f"samples (leave it out for the default)")
        device = resolve_device(args.device) if args.launcher == "local" else args.device
        check_outdir(args.outdir)
        args.methods = methods_for(args.world, args.methods)
        unknown = [m for m in args.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"unknown method(s) {unknown}; known: {sorted(METHODS)}")
        shifts = args.shifts or world_shifts(args.world)
        settings = {world: settings_for(world, n_clip=args.n_eval, n_lpips=args.n_lpips, n_fid=args.n_fid)
                    for world in ("mini", "paper")}
        loaded = [load_shift(name) for name in shifts]
        check_eval_clip(args.eval_clip, loaded)
        if args.fid_references is not None and not args.fid_references.is_dir():
            raise ScoringError(f"--fid-references {args.fid_references} does not exist; pass a folder holding one "
                               f"folder of real images per paper shift")
        for shift in loaded:  # a method or a scorer that cannot take a shift fails here, before anything trains
            check_settings(settings[shift.task.world], shift)
            for method in args.methods:
                check_method(method, shift)
        missing = missing_weights(loaded, args.eval_clip)
        if missing:
            print(f"error: {len(missing)} weight file(s) are missing (`make convert` converts official generators "
                  f"once they are in the weight cache):", file=sys.stderr)
            for line in missing:
                print(f"  - {line}", file=sys.stderr)
            return 2
    except (ConfigError, CheckpointError, ClipModelError, PromptError, GeneratorNotFound, WeightError,
            ScoringError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    jobs = [Job(s, m, k) for s in shifts for m in args.methods for k in args.seeds]
    options = JobOptions(outdir=str(args.outdir), settings=settings, eval_clip=args.eval_clip,
                         fid_references=None if args.fid_references is None else str(args.fid_references),
                         device=str(device), threads=args.threads, rerun_stale=args.rerun_stale,
                         rescore=args.rescore, progress=not args.no_progress)
    failed = run_jobs(jobs, options, args, slurm_cluster)
    try:
        rows = collect_rows(args.outdir)
    except CollectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    scores = write_scores(rows, args.outdir / "scores.csv")
    print(f"runs: {args.outdir}\nscores: {scores}")
    if not args.no_figures:
        for path in make_all(scores, args.outdir, args.outdir / "figures"):
            print(f"figure: {path}")
    if failed:
        print(f"error: {failed} of {len(jobs)} run(s) failed (listed above); fix them and call again: finished runs "
              f"are kept", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
