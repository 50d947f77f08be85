"""`make metrics RUN=...`: score finished runs of either world again and collect their rows into scores.csv.

    python -m replication.pipeline.score runs/mini/mini--zombie/nada/seed0
    python -m replication.pipeline.score RUN_DIR --fid-reference data/afhq/train/dog      # a paper run, with FID
    python -m replication.pipeline.score RUN_DIR --bench results/bench/mini-scoring-cpu.json   # and time it

Each run's samples are drawn once from its final generator (checkpoints/G_tgt.pt; the source baseline is the source
generator) and shared by every metric; metrics.jsonl is rewritten and <runs>/../scores.csv collected again.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from metrics.fidelity import FidelityError
from metrics.intra_lpips import IntraLpipsError
from metrics.scoring import ScoringError, check_settings
from replication.checkpoint import CheckpointError, load_generator
from replication.clip_models import ClipModelError
from replication.config import ConfigError, ShiftConfig, available_shifts, load_shift, parse_shift
from replication.nada import GeneratorNotFound, load_source
from replication.pipeline.scoring import LazyScorers, check_eval_clip, score_and_write, settings_for
from replication.runio import cpu_name, is_done, write_json
from replication.training_loop import FINAL_NAME
from replication.weights import WeightError
from results.collect import CollectError, collect_rows, write_scores


def run_shift(run_dir: Path) -> tuple[ShiftConfig, str]:
    """The shift and method a finished run was trained with, from its config.json; ConfigError when it is no run."""
    config = Path(run_dir) / "config.json"
    if not is_done(run_dir) or not config.is_file():
        raise ConfigError(f"{run_dir} is not a finished run (no DONE or config.json); train it first "
                          f"(python -m replication.pipeline.train or make replicate)")
    resolved = json.loads(config.read_text(encoding="utf-8"))
    method = resolved.get("method", "")
    final = Path(run_dir) / "checkpoints" / FINAL_NAME
    if method != "source" and not final.is_file():
        raise ConfigError(f"{run_dir} keeps no final generator ({final}); runs cloned from git have only their "
                          f"samples: train it again to score it")
    name = resolved["task"]["name"]
    data = {"task": {k: v for k, v in resolved["task"].items() if k != "name"}, "nada": resolved["nada"]}
    if name in available_shifts():
        # the evaluation latents are the scorer's, not the run's: a shift file that widened them scores more
        data["task"]["eval_seeds"] = list(load_shift(name).task.eval_seeds)
    return parse_shift(data, name, str(config)), method


def score_one(run_dir: Path, shift: ShiftConfig, method: str, scorers: LazyScorers, progress: bool) -> None:
    G_src, _, _ = load_source(shift, torch.device("cpu"))
    G_tgt = G_src if method == "source" else load_generator(Path(run_dir) / "checkpoints" / FINAL_NAME)[0]
    score_and_write(run_dir, shift, G_src, G_tgt, scorers.for_shift(shift), progress)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m replication.pipeline.score", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", type=Path, nargs="+",
                   help="finished run folders (<runs>/<world>/<shift>/<method>/seed<k>)")
    p.add_argument("--fid-reference", type=Path, help="paper world: folder of real target-domain images for FID/KID")
    p.add_argument("--eval-clip", help="the evaluation CLIP (default: ViT-L/14 paper, mini-clip-b mini)")
    p.add_argument("--n-clip", type=int, help="samples of the CLIP (and mini ground-truth) scores (default 500)")
    p.add_argument("--n-lpips", type=int, help="samples of intra-cluster LPIPS (default 1000)")
    p.add_argument("--n-fid", type=int, help="samples of FID/KID (default 5000 paper, 1000 mini)")
    p.add_argument("--bench", type=Path, help="write the seconds each run took to score to this JSON")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    errors = (ConfigError, ScoringError, FidelityError, IntraLpipsError, WeightError, ClipModelError,
              CheckpointError, GeneratorNotFound)
    timings = []
    try:
        # every check before any sample is drawn: runs, reference folder, eval CLIP, sample counts
        runs = [(run_dir, *run_shift(run_dir)) for run_dir in args.run_dirs]
        worlds = {shift.task.world for _, shift, _ in runs}
        reference = None if args.fid_reference is None else str(args.fid_reference)
        settings = {world: settings_for(world, fid_reference=reference if world == "paper" else None,
                                        n_lpips=args.n_lpips, n_fid=args.n_fid, n_clip=args.n_clip)
                    for world in worlds}
        check_eval_clip(args.eval_clip, [shift for _, shift, _ in runs])
        for _, shift, _ in runs:
            check_settings(settings[shift.task.world], shift)
        scorers = LazyScorers(settings, args.eval_clip)
        for world in sorted(worlds):
            scorers.for_shift(next(shift for _, shift, _ in runs if shift.task.world == world))  # load models now
        for i, (run_dir, shift, method) in enumerate(runs):
            print(f"[{i + 1}/{len(runs)}] scoring {run_dir}", flush=True)
            start = time.perf_counter()
            score_one(run_dir, shift, method, scorers, not args.no_progress)
            timings.append({"run": str(run_dir), "seconds": time.perf_counter() - start})
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        for runs_root in sorted({Path(run_dir).resolve().parents[3] for run_dir, _, _ in runs}):
            print(f"scores: {write_scores(collect_rows(runs_root), runs_root.parent / 'scores.csv')}")
    except CollectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.bench is not None:
        write_json(args.bench, {"command": "python -m replication.pipeline.score " + " ".join(
            sys.argv[1:] if argv is None else argv), "cpu": cpu_name(), "threads": torch.get_num_threads(),
            "settings": {w: vars(s) for w, s in settings.items()}, "runs": timings})
        print(f"timings: {args.bench}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
