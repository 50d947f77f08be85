"""CLI: a hyper-parameter sweep of a method over mini shifts from one TOML file -> results/sweeps/<name>.{csv,md}.

    python -m replication.pipeline.sweep replication/sweeps/mini-nada.toml            # train, score, tabulate (resumable)
    python -m replication.pipeline.sweep replication/sweeps/mini-nada.toml --only default lr0.004 --seeds 0 1

The file lists `shifts`, `seeds`, `n_eval` (and optionally `n_lpips`, `n_fid`) and [[variant]] tables, each with a `name`, a `nada` table of overrides
of the shift's [nada] section and an optional `method` (default "nada"; any name of baselines.METHODS). Runs live in
results/sweeps/<name>/mini/<shift>/<variant>/seed<k>/ exactly like `make replicate` runs, are scored by the same function, and a finished run is kept.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib
import torch

from baselines import METHODS, check_method
from metrics.miniworld import NADA_BARS, bars_for_shift
from metrics.scoring import ScoringError, check_settings, metric_prefix
from replication.checkpoint import CheckpointError
from replication.clip_models import ClipModelError
from replication.config import SEED_LIMIT, ConfigError, load_shift, shift_path
from replication.losses import GuidanceError
from replication.pipeline.launch import Job, JobOptions
from replication.pipeline.replicate import add_launch_options, check_launch_options, run_jobs
from replication.pipeline.scoring import settings_for
from replication.pipeline.train import check_outdir, check_seeds, resolve_device
from replication.runio import REPO_ROOT, atomic_write_text, is_done
from replication.weights import WeightError
from results.collect import CollectError, collect_rows, metric_rows, write_scores

SWEEPS_OUT = REPO_ROOT / "results" / "sweeps"
# Headline metrics of the table: (column, stored metric prefix); "_src" columns are the unadapted generator's.
TABLE_COLUMNS = (("target", "mini_target_accuracy"), ("kept", "mini_kept_label_accuracy"),
                 ("R^2 ratio", "mini_attr_r2_ratio"),
                 ("R^2 ratio truth", "mini_attr_r2_ratio_true"), ("edge corr", "mini_edge_corr_true"),
                 ("edge corr src", "mini_edge_corr_true_src"), ("paired L1", "mini_paired_l1"),
                 ("spread", "mini_pixel_spread_ratio"),
                 ("feature spread", "mini_feature_spread_ratio"), ("chroma", "mini_chroma"),
                 ("chroma truth", "mini_chroma_true"), ("guidance clip_dir", "train_clip_dir_miniclipa"),
                 ("... at the truth", "train_truth_clip_dir_miniclipa"))
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_-]*$")


@dataclass(frozen=True)
class Variant:
    """One point of a sweep: a folder-safe name, the [nada] overrides it applies to every shift, and the method."""

    name: str
    nada: dict[str, Any]
    method: str = "nada"


@dataclass(frozen=True)
class Sweep:
    """A sweep file: its stem names the output; every variant runs on every shift and seed."""

    name: str
    shifts: tuple[str, ...]
    seeds: tuple[int, ...]
    n_eval: int
    variants: tuple[Variant, ...]
    n_lpips: int | None = None  # samples of intra-cluster LPIPS (None: the mini world's default, 1,000)
    n_fid: int | None = None  # samples of FID/KID (None: 1,000)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_sweep(path: Path) -> Sweep:
    """Parse and check a sweep TOML: unknown keys, wrong types, bad names and overrides that no shift accepts are
    ConfigErrors naming the sweep file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist; see replication/sweeps/ for examples")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - {"shifts", "seeds", "n_eval", "n_lpips", "n_fid", "variant"})
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; valid: shifts, seeds, n_eval, n_lpips, n_fid, "
                          f"[[variant]]")
    for key in ("n_lpips", "n_fid"):
        if key in data and not (_is_int(data[key]) and data[key] >= 2):
            raise ConfigError(f"{path}: `{key}` (samples of that metric) must be an integer >= 2, like {key} = 1000; "
                              f"got {data[key]!r}")
    shifts, seeds, n_eval = data.get("shifts", []), data.get("seeds", [0]), data.get("n_eval", 500)
    if not (isinstance(shifts, list) and shifts and all(isinstance(s, str) for s in shifts)):
        raise ConfigError(f"{path}: `shifts` must list at least one mini shift, like shifts = [\"mini--sketch\"]; "
                          f"got {shifts!r}")
    if not (isinstance(seeds, list) and seeds and all(_is_int(k) and 0 <= k < SEED_LIMIT for k in seeds)):
        raise ConfigError(f"{path}: `seeds` must list at least one seed in [0, {SEED_LIMIT}), like seeds = [0, 1, 2]; "
                          f"got {seeds!r}")
    if not (_is_int(n_eval) and n_eval >= 2):
        raise ConfigError(f"{path}: `n_eval` (latents of each score) must be an integer >= 2, like n_eval = 500; "
                          f"got {n_eval!r}")
    raw_variants = data.get("variant", [])
    if not (isinstance(raw_variants, list) and all(isinstance(raw, dict) for raw in raw_variants)):
        raise ConfigError(f"{path}: variants are [[variant]] tables with a `name`; got variant = {raw_variants!r}")
    variants = []
    for raw in raw_variants:
        extra = sorted(set(raw) - {"name", "nada", "method"})
        name = raw.get("name", "")
        if extra or not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise ConfigError(f"{path}: each [[variant]] needs a folder-safe `name` (letters, digits, . + _ -), "
                              f"an optional `nada` table and `method`; got name {name!r}, extra keys {extra}")
        method, nada = raw.get("method", "nada"), raw.get("nada", {})
        if not isinstance(method, str) or method not in METHODS:
            raise ConfigError(f"{path}: variant {name!r} has unknown method {method!r}; known: {sorted(METHODS)}")
        if not isinstance(nada, dict):
            raise ConfigError(f"{path}: variant {name!r}: `nada` must be a table of [nada] overrides, like "
                              f"nada = {{ lr = 0.004 }}; got {nada!r}")
        variants.append(Variant(name, dict(nada), method))
    names = [v.name for v in variants]
    if not variants or len(set(names)) != len(names):
        raise ConfigError(f"{path}: needs at least one [[variant]] and distinct names, got {names}")
    sweep = Sweep(path.stem, tuple(shifts), tuple(seeds), n_eval, tuple(variants), data.get("n_lpips"),
                  data.get("n_fid"))
    for shift_name in sweep.shifts:
        try:
            shift = load_shift(shift_name)
        except ConfigError as exc:
            raise ConfigError(f"{path}: shifts: {exc}") from None
        if shift.task.world != "mini":
            raise ConfigError(f"{path}: {shift_name} is a {shift.task.world}-world shift; sweeps score against "
                              "the mini world's ground truth, so list mini shifts only")
        for variant in sweep.variants:  # every override is validated before anything trains
            try:
                shift = load_shift(shift_name, {"nada": variant.nada})
            except ConfigError as exc:  # the shift file loaded above: the variant's override is at fault
                reason = str(exc).removeprefix(f"{shift_path(shift_name)}: ")
                raise ConfigError(f"{path}: variant {variant.name!r} (its nada overrides, on {shift_name}): "
                                  f"{reason}") from None
            check_method(variant.method, shift)
    return sweep


def sweep_jobs(sweep: Sweep, variants: list[Variant], seeds: tuple[int, ...]) -> list[Job]:
    """One job per shift x variant x seed; a variant's folder is its name."""
    return [Job(shift_name, v.method, seed, name=v.name, nada=tuple(sorted(v.nada.items())))
            for shift_name in sweep.shifts for v in variants for seed in seeds]


def _run_scores(run_dir: Path) -> dict[str, float] | None:
    """A finished run's stored scores by metric prefix ("mini_target_accuracy_n500" -> "mini_target_accuracy"), or
    None when the run is not finished."""
    if not (is_done(run_dir) and (run_dir / "metrics.jsonl").is_file()):
        return None
    rows = metric_rows(run_dir / "metrics.jsonl")
    return {metric_prefix(row["metric"]): float(row["value"]) for row in rows}


def _finished_runs(sweep: Sweep, outdir: Path):
    """(shift, variant, seed, run_dir, scores) of every finished run of the sweep, in table order."""
    for shift_name in sweep.shifts:
        for variant in sweep.variants:
            for seed in sweep.seeds:
                run_dir = outdir / sweep.name / "mini" / shift_name / variant.name / f"seed{seed}"
                scores = _run_scores(run_dir)
                if scores is not None:
                    yield shift_name, variant, seed, run_dir, scores


def table_markdown(sweep: Sweep, outdir: Path) -> str:
    """One row per finished (shift, variant, seed): the headline scores and the training seconds; then, where a
    (shift, variant) has several seeds, their mean and spread and how many seeds pass each of issue 4's bars."""
    header = ["shift", "variant", "seed", *[c for c, _ in TABLE_COLUMNS], "train s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for shift_name, variant, seed, run_dir, scores in _finished_runs(sweep, outdir):
        seconds = json.loads((run_dir / "DONE").read_text() or "{}").get("seconds")
        cells = [scores.get(prefix) for _, prefix in TABLE_COLUMNS]
        lines.append("| " + " | ".join([shift_name, variant.name, str(seed),
                                        *["" if v is None else f"{v:.2f}" for v in cells],
                                        "" if seconds is None else f"{seconds:.0f}"]) + " |")
    summary = summary_markdown(sweep, outdir)
    return "\n".join(lines) + "\n" + (f"\n{summary}" if summary else "")


def _weakest_attribute(runs: list[dict[str, float]]) -> str:
    """The attribute whose R^2 (G_tgt against the truth) is lowest on average over the runs, e.g. "eye_size -0.74"."""
    prefix = "mini_attr_r2_tgt_"
    names = {k[len(prefix):] for scores in runs for k in scores if k.startswith(prefix)}
    means = {name: sum(scores[prefix + name] for scores in runs) / len(runs) for name in names
             if all(prefix + name in scores for scores in runs)}
    if not means:
        return ""
    name = min(means, key=means.get)
    return f"{name} {means[name]:.2f}"


def summary_markdown(sweep: Sweep, outdir: Path) -> str:
    """Per (shift, variant) with two or more finished seeds: each bar's score as mean +- sd over seeds and, in
    brackets, how many seeds pass it; the last column counts the seeds that pass every bar of the shift."""
    groups: dict[tuple[str, str], list[dict[str, float]]] = {}
    for shift_name, variant, _, _, scores in _finished_runs(sweep, outdir):
        groups.setdefault((shift_name, variant.name), []).append(scores)
    groups = {key: runs for key, runs in groups.items() if len(runs) >= 2}
    if not groups:
        return ""
    header = ["shift", "variant", "seeds", *[bar.name for bar in NADA_BARS], "weakest attribute (mean R^2)",
              "seeds passing every bar"]
    lines = ["Over seeds: mean +- sd (seeds passing the bar); blank where the bar is not the shift's.\n",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (shift_name, variant_name), runs in groups.items():
        applicable = bars_for_shift(load_shift(shift_name).task)
        cells, every = [], [True] * len(runs)
        for bar in NADA_BARS:
            verdicts = [bar.passes(scores) for scores in runs]
            if bar not in applicable or any(v is None for v in verdicts):
                cells.append("")
                continue
            values = torch.tensor([scores[bar.metric] for scores in runs], dtype=torch.float64)
            cells.append(f"{values.mean():.2f} +- {values.std():.2f} ({sum(verdicts)}/{len(runs)})")
            every = [e and v for e, v in zip(every, verdicts)]
        lines.append("| " + " | ".join([shift_name, variant_name, str(len(runs)), *cells, _weakest_attribute(runs),
                                        f"{sum(every)}/{len(runs)}"]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, *, slurm_cluster: str | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m replication.pipeline.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", type=Path, help="sweep TOML (replication/sweeps/*.toml)")
    p.add_argument("--only", nargs="*", help="run only these variant names")
    p.add_argument("--seeds", nargs="*", type=int, help="override the file's seeds")
    p.add_argument("--outdir", type=Path, default=SWEEPS_OUT)
    p.add_argument("--rerun-stale", action="store_true",
                   help="train again the finished runs made with other weights than the registry's")
    add_launch_options(p)
    args = p.parse_args(argv)
    try:
        # every argument is checked before any weight loads or any file is written
        check_seeds(args.seeds, "--seeds")
        if args.only is not None and not args.only:
            raise ConfigError("--only needs at least one variant name (leave it out to run every variant)")
        check_launch_options(args)
        device = resolve_device(args.device) if args.launcher == "local" else args.device
        sweep = load_sweep(args.sweep)
        check_outdir(args.outdir)
        # the table covers every seed of the file and those asked for, not only this invocation's
        table_sweep = dataclasses.replace(sweep, seeds=tuple(sorted({*sweep.seeds, *(args.seeds or ())})))
        if args.seeds:
            sweep = dataclasses.replace(sweep, seeds=tuple(args.seeds))
        chosen = [v for v in sweep.variants if not args.only or v.name in args.only]
        missing = sorted(set(args.only or ()) - {v.name for v in sweep.variants})
        if missing:
            raise ConfigError(f"--only names {missing} are not variants of {args.sweep}; it has "
                              f"{[v.name for v in sweep.variants]}")
        settings = {"mini": settings_for("mini", n_clip=sweep.n_eval, n_lpips=sweep.n_lpips, n_fid=sweep.n_fid)}
        for shift_name in sweep.shifts:
            check_settings(settings["mini"], load_shift(shift_name))
    except (ConfigError, CheckpointError, ClipModelError, GuidanceError, WeightError, ScoringError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    options = JobOptions(outdir=str(args.outdir / sweep.name), settings=settings, device=str(device),
                         threads=args.threads, rerun_stale=args.rerun_stale, progress=not args.no_progress)
    failed = run_jobs(sweep_jobs(sweep, chosen, sweep.seeds), options, args, slurm_cluster)
    try:
        rows = collect_rows(args.outdir / sweep.name)
        table = table_markdown(table_sweep, args.outdir)
    except CollectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    csv_path = write_scores(rows, args.outdir / f"{sweep.name}.csv")
    md_path = args.outdir / f"{sweep.name}.md"
    atomic_write_text(md_path, table)
    print(f"scores: {csv_path}\ntable: {md_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
