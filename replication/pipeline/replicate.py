"""`make replicate`: train every shift of a world with every method and seed, score each run, collect, draw figures.

Finished runs are skipped and interrupted ones resume. Examples:
    python -m replication.pipeline.replicate                                  # mini world, default methods and seeds
    python -m replication.pipeline.replicate --world mini --shifts mini--sketch --methods nada --seeds 0
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from baselines import METHODS, check_method
from paper_figures.make_all import make_all
from replication.checkpoint import CheckpointError
from replication.clip_models import ClipModelError, PromptError
from replication.config import ConfigError, available_shifts, load_shift
from replication.nada import GeneratorNotFound, load_source, run_weight_sha256
from metrics.scoring import ScoringError, check_settings
from replication.pipeline.scoring import LazyScorers, check_eval_clip, score_and_write, scorer_sha256, scores_are_current, settings_for
from replication.pipeline.train import check_outdir, check_seeds, resolve_device, run_dir_for
from replication.runio import REPO_ROOT, is_done
from replication.training_loop import FINAL_NAME
from replication.weights import WeightError
from results.collect import CollectError, collect_rows, write_scores

DEFAULT_METHODS = ("source", "nada", "nada-global", "nada-freeze")
# The mini world also trains the two oracles (baselines/oracle.py): NADA's budget spent on the true targets (the
# generator's ceiling) and on each latent's true CLIP direction (the ceiling of CLIP-direction guidance)
MINI_EXTRA_METHODS = ("paired-oracle", "clip-oracle")
DEFAULT_SEEDS = (0,)  # SEEDS="0 1 2" for confidence intervals over seeds


def methods_for(world: str, methods: list[str] | None) -> list[str]:
    """The methods a replicate call trains: those asked for, else the defaults of the world."""
    if methods:
        return list(methods)
    return list(DEFAULT_METHODS) + (list(MINI_EXTRA_METHODS) if world == "mini" else [])


def world_shifts(world: str) -> list[str]:
    return [name for name in available_shifts() if load_shift(name).task.world == world]


def trained_on_current_weights(run_dir: Path, shift) -> bool:
    """True when the run's env.json records today's generator and guidance CLIP files."""
    try:
        trained_on = json.loads((Path(run_dir) / "env.json").read_text(encoding="utf-8")).get("weights_sha256")
    except (OSError, ValueError):
        return False
    return trained_on == run_weight_sha256(shift)


def run_is_current(run_dir: Path, shift) -> bool:
    """A finished run is current when it was trained on today's generator and guidance CLIP files (env.json) and
    scored by today's scoring weights (metrics.jsonl)."""
    return (trained_on_current_weights(run_dir, shift)
            and scores_are_current(run_dir, scorer_sha256(shift.task.world)))


def can_rescore(run_dir: Path, shift, method: str) -> bool:
    """A finished run can be scored again without training when it was trained on today's weights and its final
    generator is still on disk (runs keep it locally; a clone has only the samples) or it is the source baseline."""
    return (trained_on_current_weights(run_dir, shift)
            and (method == "source" or (Path(run_dir) / "checkpoints" / FINAL_NAME).is_file()))


def run_one(shift_name: str, method: str, seed: int, outdir: Path, device: torch.device, progress: bool,
            scorers: LazyScorers, rerun_stale: bool = False, rescore: bool = False) -> Path:
    """Train and score one run; a finished run is kept, unless its scores are stale and rerun_stale is set, or
    rescore is set and it can be scored again from its saved final generator (new metrics, no retraining)."""
    shift = load_shift(shift_name)
    run_dir = run_dir_for(outdir, shift.task.world, shift.task.name, method, seed)
    if is_done(run_dir) and (run_dir / "metrics.jsonl").is_file() and not (rescore and can_rescore(run_dir, shift, method)):
        if shift.task.world != "mini" or not rerun_stale or run_is_current(run_dir, shift):
            return run_dir
        # Runs keep no final weights (only samples), and every run is a pure function of its config and seed, so
        # re-scoring with new scorer models means training it again.
        print(f"re-running {run_dir}: it was trained or scored with other weights than the registry's", flush=True)
        shutil.rmtree(run_dir)
    G_src, latent_avg, shas = load_source(shift, device)
    G_tgt = METHODS[method](G_src, shift, seed, run_dir, weights_sha256=shas, progress=progress, latent_avg=latent_avg)
    score_and_write(run_dir, shift, G_src, G_tgt, scorers.for_shift(shift), progress)
    return run_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m replication.pipeline.replicate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", default="mini", choices=("mini", "paper"))
    p.add_argument("--shifts", nargs="*", help="shift names (default: every shift of the world)")
    p.add_argument("--methods", nargs="*",
                   help=f"default: {' '.join(DEFAULT_METHODS)} (and {' '.join(MINI_EXTRA_METHODS)} on the mini world)")
    p.add_argument("--seeds", nargs="*", type=int, default=list(DEFAULT_SEEDS))
    p.add_argument("--outdir", type=Path, default=REPO_ROOT / "results" / "runs")
    p.add_argument("--n-eval", type=int, default=None,
                   help="latents of the CLIP scores and the mini world's ground truth (default 500)")
    p.add_argument("--fid-references", type=Path,
                   help="paper world: a folder with one folder of real target images per shift (<dir>/<shift>/)")
    p.add_argument("--eval-clip", help="the evaluation CLIP (default: ViT-L/14 paper, mini-clip-b mini); it must "
                                       "not guide any run it judges")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--rerun-stale", action="store_true",
                   help="re-run finished mini runs trained or scored with other weights than the registry's")
    p.add_argument("--rescore", action="store_true",
                   help="score finished runs again from their saved final generator (after a metric is added)")
    args = p.parse_args(argv)

    try:
        # every argument is checked before any weight loads or any file is written
        for flag, values in (("--shifts", args.shifts), ("--methods", args.methods)):
            if values is not None and not values:
                raise ConfigError(f"{flag} needs at least one name (leave it out for the default)")
        check_seeds(args.seeds, "--seeds")
        if args.n_eval is not None and args.n_eval < 2:
            raise ConfigError(f"--n-eval {args.n_eval}: the scores need at least 2 latents (default 500)")
        device = resolve_device(args.device)
        check_outdir(args.outdir)
        args.methods = methods_for(args.world, args.methods)
        unknown = [m for m in args.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"unknown method(s) {unknown}; known: {sorted(METHODS)}")
        shifts = args.shifts or world_shifts(args.world)
        settings = {world: settings_for(world, n_clip=args.n_eval) for world in ("mini", "paper")}
        scorers = LazyScorers(settings, args.eval_clip, args.fid_references)  # each loaded at its first use
        loaded = [load_shift(name) for name in shifts]
        check_eval_clip(args.eval_clip, loaded)
        for shift in loaded:  # a method or a scorer that cannot take a shift fails here, before anything trains
            check_settings(scorers.settings(shift.task.world), shift)
            for method in args.methods:
                check_method(method, shift)
        jobs = [(s, m, k) for s in shifts for m in args.methods for k in args.seeds]
        stale: list[str] = []
        for i, (shift_name, method, seed) in enumerate(jobs):
            print(f"[{i + 1}/{len(jobs)}] {shift_name} {method} seed{seed}", flush=True)
            run_dir = run_one(shift_name, method, seed, args.outdir, device, not args.no_progress, scorers,
                              args.rerun_stale, args.rescore)
            shift = load_shift(shift_name)
            if shift.task.world == "mini" and not run_is_current(run_dir, shift):
                stale.append(str(run_dir))
    except (ConfigError, CheckpointError, ClipModelError, PromptError, GeneratorNotFound, WeightError,
            ScoringError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if stale:
        print(f"warning: {len(stale)} finished run(s) were trained or scored with other weights than the registry's "
              f"(first: {stale[0]}); redo them with --rerun-stale (make replicate RERUN_STALE=1)", file=sys.stderr)
    try:
        rows = collect_rows(args.outdir)
    except CollectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    scores = write_scores(rows, args.outdir.parent / "scores.csv")
    print(f"scores: {scores}")
    if not args.no_figures:
        for path in make_all(scores, args.outdir, scores.parent.parent / "paper_figures" / "out"
                             if args.outdir == REPO_ROOT / "results" / "runs" else args.outdir.parent / "figures"):
            print(f"figure: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
