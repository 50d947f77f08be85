"""CLI: would a coarser sketch let the mini generator reach the sketch bars? The paired oracle on redrawn sketches.

    python -m replication.miniworld.sketch_probe    # -> results/mini_world/candidates/sketch_world_probe.json
    python -m replication.miniworld.sketch_probe --periods 4 8 --iterations 300

The shipped sketch hatches tone with diagonal lines whose spacing is 4/sqrt(2) = 2.8 pixels at 64x64, close to the
pixel grid, and even the paired oracle (NADA's loop and budget trained on each latent's true render) reaches an edge
correlation of only 0.80-0.81 with it (bar 0.85). This probe redraws the sketch style with a wider hatching period (or
none) and trains the same oracle toward it, so a change of the world can be judged before the CLIPs and the evaluator
are retrained on it. Scores that need no network trained on sketches (edge correlation, paired L1 and their
unadapted references) are the probe's result; the evaluator's attribute R^2 of an off-distribution sketch is
reported for completeness only.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from replication.miniworld import render as render_module
from replication.runio import REPO_ROOT, cpu_name, git_state, write_json

class SketchProbeError(ValueError):
    """Bad probe arguments."""


def sketch_style(period: float | None) -> Callable:
    """The sketch style function with hatching of the given period (None: no hatching, tone drawn as even graphite);
    at the shipped period it draws exactly what the shipped renderer draws."""
    return functools.partial(render_module._style_sketch, hatch_period=period)


@contextlib.contextmanager
def sketch_world(period: float | None) -> Iterator[None]:
    """Within the block the renderer draws `sketch` with the given hatching period."""
    saved = render_module._STYLE_FUNCTIONS["sketch"]
    render_module._STYLE_FUNCTIONS["sketch"] = sketch_style(period)
    try:
        yield
    finally:
        render_module._STYLE_FUNCTIONS["sketch"] = saved


def probe_period(period: float | None, iterations: int, n_eval: int, seed: int = 0,
                 progress: bool = True) -> dict[str, float]:
    """Train the paired oracle on mini--sketch drawn at `period` and score it against the same sketches."""
    from baselines.oracle import adapt
    from metrics.calc import eval_latents
    from metrics.miniworld import mini_shift, sample, score_shift
    from replication.config import load_shift
    from replication.miniworld.evaluator import load_evaluator
    from replication.miniworld.train_generator import latent_to_attributes
    from replication.nada import load_source

    shift = load_shift("mini--sketch", {"nada": {"iterations": iterations, "output_interval": 10 ** 9,
                                                 "save_interval": 0}})
    with sketch_world(period), tempfile.TemporaryDirectory() as tmp:
        G_src, latent_avg, shas = load_source(shift, torch.device("cpu"))
        began = time.time()
        G_tgt = adapt(G_src, shift, seed, Path(tmp) / "run", weights_sha256=shas, progress=progress,
                      latent_avg=latent_avg)
        seconds = time.time() - began
        z = eval_latents(shift, G_src.style_dim, n_eval)
        images = (sample(G_src, z), sample(G_tgt.eval(), z))
        scores = score_shift(G_src, G_tgt, load_evaluator(), mini_shift("photo", "sketch"), z,
                             true_attrs=latent_to_attributes(z), images=images)
    keep = ("edge_corr_true", "edge_corr_true_src", "paired_l1", "paired_l1_src", "attr_r2_ratio",
            "attr_r2_ratio_true")
    return {"hatch_period": period, "train_seconds": round(seconds, 1), **{k: scores[k] for k in keep}}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m replication.miniworld.sketch_probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--periods", nargs="+", default=["4", "8", "12", "none"],
                        help="hatching periods to try (4 is the shipped one; 'none': no hatching)")
    parser.add_argument("--iterations", type=int, default=300, help="oracle steps (NADA's budget: 300)")
    parser.add_argument("--n-eval", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "mini_world" / "candidates" /
                        "sketch_world_probe.json")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        periods = [None if p.lower() == "none" else float(p) for p in args.periods]
    except ValueError:
        print(f"error: --periods takes numbers of pixels or 'none', got {' '.join(args.periods)}", file=sys.stderr)
        return 2
    if any(p is not None and not p > 0 for p in periods) or args.iterations < 1 or args.n_eval < 2:
        print("error: periods must be > 0, --iterations >= 1 and --n-eval >= 2", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    results = [probe_period(p, args.iterations, args.n_eval, progress=not args.no_progress) for p in periods]
    for r in results:
        print(f"period {r['hatch_period']}: oracle edge corr {r['edge_corr_true']:.3f} (source "
              f"{r['edge_corr_true_src']:.3f}), paired L1 {r['paired_l1']:.3f} (source {r['paired_l1_src']:.3f})")
    write_json(args.out, {
        "command": "python -m replication.miniworld.sketch_probe " + " ".join(argv if argv is not None
                                                                             else sys.argv[1:]),
        "what": "the paired oracle (baselines/oracle.py, NADA's loop and budget on the true renders) on photo -> "
                "sketch, with the sketch style redrawn at each hatching period; edge corr and paired L1 are against "
                "those redrawn sketches; attr R^2 uses the shipped evaluator, trained on the shipped sketches only",
        "iterations": args.iterations, "n_eval": args.n_eval, "threads": args.threads, "cpu": cpu_name(),
        **git_state(), "results": results})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
