"""Build the mini world's scorer once, score finished runs with it, and tell which stored scores are stale."""
from __future__ import annotations

import json
from pathlib import Path

from metrics.scoring import EVAL_CLIP_MINI, MiniScorer, score_mini_run
from replication import weights
from replication.clip_models import load_clip
from replication.config import ShiftConfig
from replication.miniworld.evaluator import load_evaluator
from replication.runio import atomic_write_text

EVALUATOR = "mini-evaluator"
MINI_SCORERS = (EVALUATOR, EVAL_CLIP_MINI)  # the models a mini run's scores depend on, besides the run itself
MINI_CLIPS = ("mini-clip-a", "mini-clip-b")  # every CLIP a mini run may be guided by, and the evaluation CLIP


def scorer_sha256() -> dict[str, str]:
    """sha256 of every registry model that scores mini runs; stored in each metrics row so stale scores are found."""
    return {name: weights.verify(name) for name in MINI_SCORERS}


def build_mini_scorer() -> MiniScorer:
    """Load the evaluator and the mini CLIPs from the registry (sha256 checked) into one scorer."""
    return MiniScorer(evaluator=load_evaluator(weights.resolve(EVALUATOR)),
                      clips={name: load_clip(name) for name in MINI_CLIPS}, eval_clip=EVAL_CLIP_MINI,
                      weights_sha256=scorer_sha256())


def scores_are_current(run_dir: Path, current: dict[str, str]) -> bool:
    """True when run_dir/metrics.jsonl exists and every row was scored by exactly the `current` scorer models."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return False
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return bool(rows) and all(row.get("scorers") == current for row in rows)


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    atomic_write_text(Path(run_dir) / "metrics.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


class LazyMiniScorer:
    """The mini scorer, built on first use and then reused by every run of a replicate or sweep call."""

    def __init__(self) -> None:
        self._scorer: MiniScorer | None = None

    def get(self) -> MiniScorer:
        if self._scorer is None:
            self._scorer = build_mini_scorer()
        return self._scorer


def score_run(run_dir: Path, shift: ShiftConfig, G_src, G_tgt, scorer: MiniScorer, n_eval: int) -> None:
    """Score a finished mini run on the CPU (where the scorer models and the evaluation latents live)."""
    write_metrics(run_dir, score_mini_run(scorer, G_src.cpu(), G_tgt.eval().cpu(), shift, n=n_eval))
