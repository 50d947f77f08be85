"""CLI: train one domain shift with one method and seed into results/runs/<world>/<shift>/<method>/seed<k>/.

Examples:
    python -m replication.pipeline.train --shift ffhq--sketch --seed 0
    python -m replication.pipeline.train --shift path/to/my-shift.toml --seed 1 --outdir /tmp/runs --dry-run
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from baselines import METHODS, check_method
from replication.checkpoint import CheckpointError
from replication.clip_models import ClipModelError, PromptError
from replication.config import ConfigError, load_shift, to_dict
from replication.layer_select import LayerSelectionError
from replication.losses import DirectionError, GuidanceError, ImageFolderError
from replication.nada import GeneratorNotFound, load_source
from replication.runio import REPO_ROOT
from replication.training_loop import RunConflictError, TrainingDiverged
from replication.weights import WeightError

DEFAULT_OUTDIR = REPO_ROOT / "results" / "runs"


def run_dir_for(outdir: Path, world: str, shift: str, method: str, seed: int) -> Path:
    return Path(outdir) / world / shift / method / f"seed{seed}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m replication.pipeline.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shift", required=True, help="shift name (replication/shifts/<name>.toml) or a .toml path")
    p.add_argument("--method", default="nada", help="method name (see baselines.METHODS)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--outdir", type=Path, default=DEFAULT_OUTDIR, help="root of the run folders")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    user_errors = (ConfigError, CheckpointError, ClipModelError, PromptError, LayerSelectionError, DirectionError,
                   GuidanceError, ImageFolderError, GeneratorNotFound, RunConflictError, WeightError)
    try:
        shift = load_shift(args.shift)
        check_method(args.method, shift)
        run_dir = run_dir_for(args.outdir, shift.task.world, shift.task.name, args.method, args.seed)
        if args.dry_run:
            print(json.dumps({"method": args.method, "seed": args.seed, "run_dir": str(run_dir), **to_dict(shift)},
                             indent=2))
            return 0
        device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                              ("cpu" if args.device == "auto" else args.device))
        G_src, latent_avg, shas = load_source(shift, device)
        METHODS[args.method](G_src, shift, args.seed, run_dir, weights_sha256=shas, progress=not args.no_progress,
                             latent_avg=latent_avg)
    except user_errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"error: training diverged: {exc}", file=sys.stderr)
        return 3
    print(f"done: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
