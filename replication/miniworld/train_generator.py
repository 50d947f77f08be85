"""Command line of the mini source generator: `train` one stage of its recipe, `measure` the shipped weights."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch

from replication.checkpoint import CheckpointError
from replication.miniworld.generator_measure import (DEFAULT_EVALUATOR, DEFAULT_EVALUATOR_RESULTS, DEFAULT_GRID,
                                                     DEFAULT_RESULTS, measure_generator)
from replication.miniworld.generator_recipe import (DEFAULT_WEIGHTS, RECIPE_MODULE, GeneratorRecipeError, LossWeights,
                                                    TrainGeneratorConfig)
from replication.miniworld.generator_training import DEFAULT_RUN_DIR, train_generator
from replication.runio import command_line, repo_relative, write_json
from replication.weights import file_sha256

USAGE = """\
    python -m replication.miniworld.train_generator train     # stage 1: resumable, ~20-25 min on one CPU thread
    make mini-world-generator                                 # all four stages of the shipped generator
    python -m replication.miniworld.train_generator measure   # -> results/mini_world/generator.json + sample grid
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {RECIPE_MODULE}", description=__doc__, epilog=USAGE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="distil the renderer into the mini StyleGAN2 (resumable)")
    defaults = TrainGeneratorConfig()
    train.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help="resumable training state lives here")
    train.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS, help="final checkpoint (our format)")
    train.add_argument("--steps", type=int, default=defaults.steps)
    train.add_argument("--batch", type=int, default=defaults.batch)
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate (cosine decay)")
    train.add_argument("--adversarial", type=float, default=defaults.adversarial,
                       help="weight of the discriminator term (0 = distillation only, as the shipped generator)")
    train.add_argument("--mouth", type=float, default=defaults.loss.mouth,
                       help="weight of the L1 term on the pixels the smile moves (0 = off)")
    train.add_argument("--init", type=Path, default=None,
                       help="warm-start from this checkpoint of the recipe (stage 2 of the shipped generator)")
    train.add_argument("--reseed-inputs", nargs="*", default=[], metavar="ATTRIBUTE",
                       help="with --init: redraw these attributes' input columns of the first mapping layer")
    train.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    train.add_argument("--threads", type=int, default=1, help="torch threads (the recipe is timed on 1)")
    train.add_argument("--no-progress", action="store_true", help="hide the tqdm bar")
    measure = sub.add_parser("measure", help="score the shipped generator against the renderer (and evaluator)")
    measure.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    measure.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    measure.add_argument("--grid", type=Path, default=DEFAULT_GRID)
    measure.add_argument("--evaluator", type=Path, default=DEFAULT_EVALUATOR,
                         help="evaluator weights; skipped (and said so in the JSON) when the file does not exist")
    measure.add_argument("--evaluator-results", type=Path, default=DEFAULT_EVALUATOR_RESULTS)
    measure.add_argument("--n-samples", type=int, default=5000, help="samples for FID, accuracy and spans")
    measure.add_argument("--seed", type=int, default=2024)
    measure.add_argument("--threads", type=int, default=1)
    return parser


def train_config(args: argparse.Namespace) -> TrainGeneratorConfig:
    """The recipe config of parsed `train` arguments; a warm start (`--init`, an existing file) is recorded by repo
    path and sha256."""
    init, init_sha = "", ""
    if args.init is not None:
        init, init_sha = repo_relative(args.init), file_sha256(args.init.resolve())
    return TrainGeneratorConfig(steps=args.steps, batch=args.batch, seed=args.seed, lr=args.lr,
                                adversarial=args.adversarial, loss=LossWeights(mouth=args.mouth),
                                checkpoint_every=args.checkpoint_every, init_weights=init, init_sha256=init_sha,
                                reseed_inputs=tuple(args.reseed_inputs))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    try:
        if args.command == "train":
            if args.init is not None and not args.init.is_file():
                raise GeneratorRecipeError(f"--init {args.init} does not exist; train stage 1 first")
            cfg = train_config(args)
            path = train_generator(cfg, args.run_dir, args.out, progress=not args.no_progress,
                                   command=command_line(RECIPE_MODULE, argv))
            print(f"wrote {path}")
        else:
            report = measure_generator(args.weights, evaluator_path=args.evaluator,
                                       evaluator_results=args.evaluator_results, n_samples=args.n_samples,
                                       seed=args.seed, grid_path=args.grid)
            report["command"] = command_line(RECIPE_MODULE, argv)
            write_json(args.out, report)
            print(f"wrote {args.out} and {args.grid}")
    except (GeneratorRecipeError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
