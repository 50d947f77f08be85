"""Command line of the mini world's evaluator: `train` (or resume) it, `measure` it on held-out renders."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from replication.miniworld.evaluator_fidelity import (
    FEATURE_EXTRACTOR_NAME,
    UInt8ImageDataset,
    from_uint8,
    register_feature_extractor,
    to_uint8,
)
from replication.miniworld.evaluator_measure import WHERE_RENDERED, measure
from replication.miniworld.evaluator_model import DEFAULT_WEIGHTS, EvaluatorError, load_evaluator
from replication.miniworld.evaluator_training import TrainConfig, train
from replication.runio import REPO_ROOT, command_line, write_json

# The evaluator's public names that other packages import from here; importing this module also registers the
# torch-fidelity feature extractor.
__all__ = [
    "FEATURE_EXTRACTOR_NAME", "WHERE_RENDERED", "UInt8ImageDataset", "build_parser", "from_uint8", "load_evaluator",
    "main", "register_feature_extractor", "to_uint8", "train", "train_config",
]

DEFAULT_RESULTS = REPO_ROOT / "results" / "mini_world" / "evaluator.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m replication.miniworld.evaluator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train (or resume) the evaluator")
    p_train.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS)
    p_train.add_argument("--steps", type=int, default=TrainConfig.steps)
    p_train.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p_train.add_argument("--seed", type=int, default=TrainConfig.seed)
    p_train.add_argument("--threads", type=int, default=1)
    p_measure = sub.add_parser("measure", help="score the evaluator on held-out renders and write results JSON")
    p_measure.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p_measure.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    p_measure.add_argument("--samples-per-domain", type=int, default=2000)
    p_measure.add_argument("--threads", type=int, default=1)
    return parser


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The recipe config of parsed `train` arguments."""
    return TrainConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = command_line("replication.miniworld.evaluator", argv)
    try:
        if args.threads < 1:
            raise EvaluatorError("--threads must be at least 1")
        torch.set_num_threads(args.threads)
        if args.command == "train":
            train(args.out, train_config(args), command=command)
            print(f"wrote {args.out}")
        else:
            if args.samples_per_domain < 10:
                raise EvaluatorError("--samples-per-domain must be at least 10 (covariances need samples)")
            model = load_evaluator(args.weights)
            began = time.time()
            result = measure(model, args.samples_per_domain)
            result = {"command": command, "weights": str(args.weights), "seconds": round(time.time() - began, 1),
                      "training": torch.load(args.weights, map_location="cpu", weights_only=True).get("training", {}),
                      **result}
            write_json(args.out, result)
            print(json.dumps({k: result[k] for k in ("style_accuracy", "character_accuracy", "hard_negatives",
                                                      "attribute_r2", "attribute_r2_where_rendered",
                                                      "fid_smallest_inter_domain", "all_bars_pass")}))
    except EvaluatorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
