"""Command line of the mini-world CLIPs: train one recipe stage (--name) or measure a shipped file (--measure)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import torch

from replication.miniworld.clip_measure import measure
from replication.miniworld.clip_recipe import (
    PRESETS,
    RUNS_DIR,
    SHIPPED_STAGES,
    ClipTrainingError,
    default_weights_path,
    recipe_command,
)
from replication.miniworld.clip_training import train
from replication.runio import REPO_ROOT, command_line, repo_relative, write_json
from replication.weights import file_sha256

RESULTS_DIR = REPO_ROOT / "results" / "mini_world"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help=f"preset: {', '.join(PRESETS)}")
    parser.add_argument("--measure", action="store_true", help="measure the shipped weights instead of training")
    parser.add_argument("--out", type=Path, help="weights file (default replication/miniworld/weights/<name>.pt)")
    parser.add_argument("--run-dir", type=Path, help="training state folder (default artifacts/mini_clip/<name>)")
    parser.add_argument("--results", type=Path, help="measurement JSON (default results/mini_world/<name>.json)")
    parser.add_argument("--steps", type=int, help="override the preset's number of steps (smoke runs)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--n-heldout", type=int, default=2000)
    parser.add_argument("--n-pairs", type=int, default=200)
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.name not in PRESETS:
            raise ClipTrainingError(f"unknown CLIP preset {args.name!r}; choose one of {', '.join(PRESETS)}")
        if args.threads < 1 or (args.steps is not None and args.steps < 1):
            raise ClipTrainingError("--threads and --steps must be positive integers")
        torch.set_num_threads(args.threads)
        config = PRESETS[args.name]
        if args.steps is not None:
            config = replace(config, steps=args.steps)
        out_path = args.out or default_weights_path(args.name, args.measure)
        command = command_line("replication.miniworld.train_clip", argv)
        if args.measure:
            if not Path(out_path).is_file():
                raise ClipTrainingError(f"no weights at {out_path}; train them first with "
                                        f"python -m replication.miniworld.train_clip --name {args.name}")
            started = time.time()
            report = measure(Path(out_path), n_heldout=args.n_heldout, n_pairs=args.n_pairs)
            trained_as = SHIPPED_STAGES.get(args.name, (args.name,))[-1]
            train_summary = (args.run_dir or RUNS_DIR / trained_as) / "summary.json"
            report.update({"name": args.name, "command": command, "weights": repo_relative(out_path),
                           "train_command": (recipe_command(args.name) if args.name in SHIPPED_STAGES
                                             else f"python -m replication.miniworld.train_clip --name {args.name}"),
                           "train_summary": json.loads(train_summary.read_text()) if train_summary.is_file() else None,
                           "weights_sha256": file_sha256(Path(out_path)), "file_bytes": Path(out_path).stat().st_size,
                           "train_config": asdict(PRESETS[trained_as]),
                           "measure_seconds": round(time.time() - started, 1)})
            results_path = args.results or RESULTS_DIR / f"{args.name}.json"
            write_json(results_path, report)
            print(json.dumps(report["bars"], indent=1))
            return 0
        started = time.time()
        run_dir = args.run_dir or RUNS_DIR / args.name
        summary = train(config, run_dir, Path(out_path), progress=not args.no_progress)
        summary = {**summary, "command": command, "seconds_this_invocation": round(time.time() - started, 1),
                   "threads": args.threads, "weights": str(out_path)}
        write_json(Path(run_dir) / "summary.json", summary)
        print(json.dumps(summary))
        return 0
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
