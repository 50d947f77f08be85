"""CLI: NADA in a mini world whose sketch is redrawn (sketch_probe's hatching periods): a CLIP stage, then NADA runs.

    python -m replication.miniworld.sketch_world_nada clip --period none --out artifacts/mini_clip/clip_b_wash.pt
    python -m replication.miniworld.sketch_world_nada nada --period none --clip artifacts/mini_clip/clip_b_wash.pt
    python -m replication.miniworld.sketch_world_nada nada --period none --clip ... --method clip-oracle

`clip` continues the shipped CLIP B with its last recipe stage (clip_b_smiling's settings and steps) on renders whose
sketch is redrawn, and measures it there; `nada` runs NADA photo -> sketch guided by such a CLIP and scores it against
the redrawn sketches (results/mini_world/candidates/sketch_world_nada_<period>.json), or, with `--method
clip-oracle`, NADA's loop following each latent's CLIP direction between its redrawn true renders
(sketch_world_clip-oracle_<period>.json): the ceiling of that CLIP's guidance there. A probe of a change of the
world, never the shipped world: the registry's models are untouched.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch

from replication.miniworld.sketch_probe import sketch_world
from replication.runio import REPO_ROOT, cpu_name, git_state, write_json
from replication.weights import file_sha256

CANDIDATES = REPO_ROOT / "results" / "mini_world" / "candidates"


def _period(text: str) -> float | None:
    if text.lower() == "none":
        return None
    value = float(text)
    if not value > 0:
        raise ValueError(text)
    return value


def _tag(period: float | None) -> str:
    return "wash" if period is None else f"hatch{period:g}"


def train_clip_stage(period: float | None, out: Path, progress: bool = True) -> dict:
    """The shipped CLIP B plus its last recipe stage on the redrawn world; then its measurement there."""
    from replication.miniworld.train_clip import PRESETS, measure, train

    config = dataclasses.replace(PRESETS["clip_b_smiling"], name=f"clip_b_{_tag(period)}_probe",
                                 init_weights="replication/miniworld/weights/clip_b.pt")
    with sketch_world(period), tempfile.TemporaryDirectory() as run_dir:
        summary = train(config, Path(run_dir), out, progress=progress)
        report = measure(out)
    return {"train": summary, "measure": report, "weights_sha256": file_sha256(out)}


def nada_runs(period: float | None, clip_path: Path, seeds: Sequence[int], n_eval: int, progress: bool = True,
              iterations: int | None = None, method: str = "nada") -> list:
    """NADA photo -> sketch, or another method of baselines.METHODS (the shift's settings, or `iterations` steps),
    guided by clip_path, scored against the redrawn sketches."""
    from baselines import METHODS
    from metrics.calc import score_mini_run
    from replication.config import load_shift
    from replication.nada import load_source

    adapt = METHODS[method]
    overrides = {"clip_models": [str(clip_path)], "output_interval": 10 ** 9, "save_interval": 0}
    if iterations is not None:
        overrides["iterations"] = iterations
    shift = load_shift("mini--sketch", {"nada": overrides})
    rows = []
    with sketch_world(period), tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            G_src, latent_avg, shas = load_source(shift, torch.device("cpu"))
            began = time.time()
            G_tgt = adapt(G_src, shift, seed, Path(tmp) / f"seed{seed}", weights_sha256=shas, progress=progress,
                          latent_avg=latent_avg)
            seconds = time.time() - began
            scores = {r["metric"]: r["value"] for r in score_mini_run(G_src, G_tgt.eval(), shift, n=n_eval)}
            rows.append({"seed": seed, "train_seconds": round(seconds, 1), "scores": scores})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m replication.miniworld.sketch_world_nada", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    clip_p = sub.add_parser("clip", help="continue CLIP B on the redrawn world and measure it there")
    clip_p.add_argument("--out", type=Path, required=True)
    nada_p = sub.add_parser("nada", help="NADA photo -> sketch on the redrawn world")
    nada_p.add_argument("--clip", type=Path, required=True)
    nada_p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    nada_p.add_argument("--n-eval", type=int, default=500)
    nada_p.add_argument("--method", choices=("nada", "clip-oracle"), default="nada",
                        help="clip-oracle: each latent's true CLIP direction instead of the text one")
    for p in (clip_p, nada_p):
        p.add_argument("--period", default="none", help="hatching period in pixels, or 'none' (an even wash)")
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        period = _period(args.period)
    except ValueError:
        print(f"error: --period takes a positive number of pixels or 'none', got {args.period!r}", file=sys.stderr)
        return 2
    if args.command == "nada" and not args.clip.is_file():
        print(f"error: no CLIP at {args.clip}; train one with the `clip` command first", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    command = "python -m replication.miniworld.sketch_world_nada " + " ".join(
        argv if argv is not None else sys.argv[1:])
    record = {"command": command, "hatch_period": period, "threads": args.threads, "cpu": cpu_name(), **git_state()}
    if args.command == "clip":
        record.update(train_clip_stage(period, args.out, progress=not args.no_progress))
        out = CANDIDATES / f"sketch_world_clip_b_{_tag(period)}.json"
    else:
        record.update(clip=str(args.clip), clip_sha256=file_sha256(args.clip),
                      method=args.method, runs=nada_runs(period, args.clip, args.seeds, args.n_eval,
                                                         progress=not args.no_progress, method=args.method))
        out = CANDIDATES / f"sketch_world_{args.method}_{_tag(period)}.json"
    write_json(out, record)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
