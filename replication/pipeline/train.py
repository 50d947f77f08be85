"""CLI: train one domain shift with one method and seed into runs/<world>/<shift>/<method>/seed<k>/.

Examples:
    python -m replication.pipeline.train --shift ffhq--sketch --seed 0
    python -m replication.pipeline.train --shift path/to/my-shift.toml --seed 1 --outdir /tmp/runs --dry-run
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from baselines import METHODS, check_method
from replication.checkpoint import CheckpointError, read_torch_file
from replication.clip_models import ClipModelError, PromptError
from replication.config import SEED_LIMIT, ConfigError, load_shift, to_dict
from replication.layer_select import LayerSelectionError
from replication.losses import DirectionError, GuidanceError, ImageFolderError
from replication.nada import GeneratorNotFound, load_source
from replication.runio import REPO_ROOT, is_done
from replication.training_loop import FINAL_NAME, RESUME_NAME, RunConflictError, TrainingDiverged
from replication.weights import WeightError

DEFAULT_OUTDIR = REPO_ROOT / "runs"  # git-ignored; the shipped reference is results/reference/


def run_dir_for(outdir: Path, world: str, shift: str, method: str, seed: int) -> Path:
    return Path(outdir) / world / shift / method / f"seed{seed}"


def resolve_device(spec: str) -> torch.device:
    """--device as a torch.device ("auto": cuda when torch sees a GPU, else cpu); a device this machine lacks is a
    ConfigError."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"--device {spec!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {spec}: torch sees no CUDA GPU on this machine; use --device cpu (or auto)")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {spec}: torch sees {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    elif device.type != "cpu" and not (device.type == "mps" and torch.backends.mps.is_available()):
        raise ConfigError(f"--device {spec}: not available here; use auto, cpu, cuda or cuda:N")
    return device


def check_outdir(path: Path, flag: str = "--outdir") -> None:
    """Raise ConfigError unless path is a folder, or can become one, that this process may write into."""
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{flag} {path} cannot be a folder: {existing} is a file; choose another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: {existing} is not writable; choose another {flag} or fix its permissions")


def check_seeds(seeds: list[int] | None, flag: str) -> None:
    """A seed option given with no value or with a seed torch cannot take is a ConfigError."""
    if seeds is not None and not seeds:
        raise ConfigError(f"{flag} needs at least one seed, e.g. {flag} 0 1 2 (leave it out for the default)")
    bad = [seed for seed in seeds or () if not 0 <= seed < SEED_LIMIT]
    if bad:
        raise ConfigError(f"{flag} {bad[0]}: seeds are integers in [0, {SEED_LIMIT})")


def check_run_dir(run_dir: Path, method: str) -> None:
    """A finished run needs its final generator to be kept, an interrupted one a readable resume state."""
    final, resume = run_dir / "checkpoints" / FINAL_NAME, run_dir / "checkpoints" / RESUME_NAME
    if is_done(run_dir):
        if method != "source" and not final.is_file():
            raise ConfigError(f"{run_dir} is a finished run without its final generator {final} (a clone keeps only "
                              f"its samples); delete that folder to train it again, or choose another --outdir")
        return
    if resume.exists():
        try:
            state = read_torch_file(resume)
        except CheckpointError:
            state = None
        if not (isinstance(state, dict) and {"step", "G_tgt", "optimizer", "rng"} <= set(state)):
            raise ConfigError(f"cannot resume {run_dir}: {resume} is damaged or not a resume state; delete it to train "
                              f"the run again from step 0")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m replication.pipeline.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shift", required=True, help="shift name (replication/shifts/<name>.toml) or a .toml path")
    p.add_argument("--method", default="nada", help="method name (see baselines.METHODS)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--outdir", type=Path, default=DEFAULT_OUTDIR, help="root of the run folders")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    p.add_argument("--dry-run", action="store_true", help="check everything, print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    user_errors = (ConfigError, CheckpointError, ClipModelError, PromptError, LayerSelectionError, DirectionError,
                   GuidanceError, ImageFolderError, GeneratorNotFound, RunConflictError, WeightError)
    try:
        # every check before any weight loads or any file is written
        check_seeds([args.seed], "--seed")
        shift = load_shift(args.shift)
        check_method(args.method, shift)
        device = resolve_device(args.device)
        check_outdir(args.outdir)
        run_dir = run_dir_for(args.outdir, shift.task.world, shift.task.name, args.method, args.seed)
        check_run_dir(run_dir, args.method)
        if args.dry_run:
            print(json.dumps({"method": args.method, "seed": args.seed, "run_dir": str(run_dir), **to_dict(shift)},
                             indent=2))
            return 0
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
