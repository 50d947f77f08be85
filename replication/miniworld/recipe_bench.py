"""Time the registry's retraining recipes of the four mini-world models on this machine, stage by stage.

Each stage command of a recipe (env/weights.toml, `recipe`) is parsed exactly as its CLI parses it and run twice
through the real training function, for `short` steps and for `short` plus a span, into a temporary folder. The
difference gives the seconds per step without the fixed cost of a stage (building models, tokenising, writing files);
the span is a whole period of the stage's periodic work (text directions refreshed every 50 CLIP steps, a checkpoint
every 100 generator or evaluator steps), so that work is in the rate. A stage's time is its fixed cost plus its full
step count at that rate. Warm starts are replaced by fresh weights of the same
architecture: a step costs the same either way. Nothing in the repository is written except the result JSON.

    python -m replication.miniworld.recipe_bench                 # 2 threads, every model
    python -m replication.miniworld.recipe_bench --threads 1 --models mini-clip-b
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from replication.runio import REPO_ROOT, cpu_name, git_state, write_json

MINI_MODELS = ("mini-clip-a", "mini-clip-b", "mini-evaluator", "mini-stylegan2")
RECIPE_BAR_MINUTES = 120.0  # issue 4: each shipped model's recipe runs on 2 CPU cores in at most 2 hours


class RecipeBenchError(ValueError):
    """A recipe stage this bench cannot time; the message is one line."""


@dataclass(frozen=True)
class Stage:
    """One command of a recipe, ready to run for any number of steps in a scratch folder."""

    command: str
    steps: int  # the recipe's full step count
    run: Callable[[int, Path], None]  # (steps, scratch folder) -> trains that many steps there
    period: int = 1  # steps between the stage's periodic extra work (1: none)


def _clip_stage(command: str, args: list[str]) -> Stage:
    from replication.miniworld.clip_recipe import PRESETS
    from replication.miniworld.clip_training import train

    if len(args) != 2 or args[0] != "--name" or args[1] not in PRESETS:
        raise RecipeBenchError(f"cannot time {command!r}: expected train_clip --name <preset>")
    config = PRESETS[args[1]]

    def run(steps: int, scratch: Path) -> None:
        train(replace(config, steps=steps, init_weights="", init_sha256=""), scratch / "run", scratch / "clip.pt",
              progress=False)

    uses_directions = config.invariance_weight > 0 or config.direction_weight > 0
    return Stage(command, config.steps, run, config.directions_every if uses_directions else 1)


def _evaluator_stage(command: str, args: list[str]) -> Stage:
    from replication.miniworld.evaluator import build_parser, train, train_config

    parsed = build_parser().parse_args(args)
    if parsed.command != "train":
        raise RecipeBenchError(f"cannot time {command!r}: expected evaluator train")
    config = train_config(parsed)

    def run(steps: int, scratch: Path) -> None:
        train(scratch / "evaluator.pt", replace(config, steps=steps), progress=False)

    return Stage(command, config.steps, run, config.checkpoint_every)


def _generator_stage(command: str, args: list[str]) -> Stage:
    from replication.miniworld.generator_training import train_generator
    from replication.miniworld.train_generator import build_parser, train_config

    parsed = build_parser().parse_args(args)
    if parsed.command != "train":
        raise RecipeBenchError(f"cannot time {command!r}: expected train_generator train")
    # No warm start, hence nothing to reseed: a fresh generator of the same size costs the same per step.
    parsed.init, parsed.reseed_inputs = None, []
    config = train_config(parsed)

    def run(steps: int, scratch: Path) -> None:
        train_generator(replace(config, steps=steps), scratch / "run", scratch / "generator.pt", progress=False)

    return Stage(command, config.steps, run, config.checkpoint_every)


STAGE_READERS = {
    "replication.miniworld.train_clip": _clip_stage,
    "replication.miniworld.evaluator": _evaluator_stage,
    "replication.miniworld.train_generator": _generator_stage,
}


def recipe_stages(recipe: str) -> list[Stage]:
    """The stages of a registry recipe: `python -m <module> <args>` commands joined by `&&`."""
    stages = []
    for command in (part.strip() for part in recipe.split("&&")):
        words = shlex.split(command)
        if len(words) < 3 or words[:2] != ["python", "-m"] or words[2] not in STAGE_READERS:
            raise RecipeBenchError(f"cannot time recipe command {command!r}: expected python -m one of "
                                   f"{', '.join(STAGE_READERS)}")
        stages.append(STAGE_READERS[words[2]](command, words[3:]))
    return stages


def time_stage(stage: Stage, short: int, min_span: int) -> dict[str, float | int | str]:
    """Seconds per step (from the two runs' difference), fixed seconds, and the stage's estimated minutes. The runs
    differ by the smallest multiple of the stage's period that is at least `min_span` steps."""
    if short < 1 or min_span < 1:
        raise RecipeBenchError(f"need at least 1 short step and a span of at least 1, got {short} and {min_span}")
    long = short + stage.period * -(-min_span // stage.period)
    seconds = []
    for steps in (short, long):
        with tempfile.TemporaryDirectory(prefix="recipe_bench_") as scratch:
            began = time.perf_counter()
            stage.run(steps, Path(scratch))
            seconds.append(time.perf_counter() - began)
    per_step = max(0.0, (seconds[1] - seconds[0]) / (long - short))
    fixed = max(0.0, seconds[0] - short * per_step)
    return {"command": stage.command, "steps": stage.steps, "seconds_per_step": round(per_step, 4),
            "fixed_seconds": round(fixed, 2), "timed_steps": [short, long],
            "estimated_minutes": round((fixed + stage.steps * per_step) / 60.0, 1)}


def bench_recipe(name: str, short: int, min_span: int, *, log: Callable[[str], None] = print) -> dict:
    """Time every stage of a registry model's recipe; the total is the estimated minutes of the whole recipe."""
    from replication import weights

    entry = weights.get_entry(name)
    if not entry.recipe:
        raise RecipeBenchError(f"{name} has no recipe in env/weights.toml; choose from {', '.join(MINI_MODELS)}")
    rows = []
    for stage in recipe_stages(entry.recipe):
        rows.append(time_stage(stage, short, min_span))
        log(f"{name}: {rows[-1]['estimated_minutes']:7.1f} min  {rows[-1]['seconds_per_step']:.3f} s/step x "
            f"{stage.steps}  {stage.command.split(' -m ')[-1]}")
    total = round(sum(float(r["estimated_minutes"]) for r in rows), 1)
    return {"model": name, "recipe": entry.recipe, "stages": rows, "estimated_minutes": total,
            "within_bar": total <= RECIPE_BAR_MINUTES}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m replication.miniworld.recipe_bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MINI_MODELS), help=f"default: {' '.join(MINI_MODELS)}")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2: the bar's two cores)")
    parser.add_argument("--short", type=int, default=3, help="steps of the first timing run of each stage")
    parser.add_argument("--span", type=int, default=10,
                        help="least extra steps of the second run (rounded up to whole periods of the stage)")
    parser.add_argument("--out", type=Path, help="result JSON (default results/bench/mini-recipes-<threads>t.json)")
    args = parser.parse_args(argv)
    try:
        if args.threads < 1:
            raise RecipeBenchError("--threads must be at least 1")
        unknown = [m for m in args.models if m not in MINI_MODELS]
        if unknown:
            raise RecipeBenchError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MINI_MODELS)}")
        torch.set_num_threads(args.threads)
        state = git_state()  # the code that is timed: an edit made while the bench runs must not change the record
        began = time.time()
        models = [bench_recipe(name, args.short, args.span) for name in args.models]
    except RecipeBenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or REPO_ROOT / "results" / "bench" / f"mini-recipes-{args.threads}t.json"
    write_json(out, {"command": "python -m replication.miniworld.recipe_bench " + " ".join(
                         shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
                     "threads": args.threads, "cpu": cpu_name(), "cpu_count": os.cpu_count(),
                     "torch": torch.__version__, **state,
                     "bar_minutes": RECIPE_BAR_MINUTES, "bench_seconds": round(time.time() - began, 1),
                     "method": "per-stage seconds per step from two short runs (their difference, a whole period of "
                               "the stage's periodic work), times the recipe's steps, plus the stage's fixed cost; an "
                               "estimate, not a full run",
                     "models": models})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
