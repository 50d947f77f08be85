"""Flatten every run's metrics.jsonl under runs/ into runs/scores.csv (long format, sorted, deterministic).

Example: python -m results.collect
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path

from replication.runio import REPO_ROOT, atomic_write_text

RUNS_DIR = REPO_ROOT / "runs"
SCORES_CSV = RUNS_DIR / "scores.csv"
COLUMNS = ("world", "shift", "method", "seed", "mode", "metric", "value", "n_samples", "protocol", "code_version")


class CollectError(ValueError):
    """A finished run's files cannot be collected; the one-line message names the file and how to fix it."""


def _rescore_hint(run_dir: Path) -> str:
    return f"score the run again: `make metrics RUN={run_dir}`, or `make replicate RERUN_STALE=1`"


def _damaged_hint(run_dir: Path) -> str:
    return f"the run folder {run_dir} is damaged: restore it, or delete it and train it again with `make replicate`"


def _read_json(path: Path, run_dir: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CollectError(f"{path}: unreadable ({exc}); {_damaged_hint(run_dir)}") from None
    if not isinstance(value, dict):
        raise CollectError(f"{path}: not a JSON object; {_damaged_hint(run_dir)}")
    return value


def metric_rows(metrics_path: Path) -> list[dict]:
    """Every record of a finished run's metrics.jsonl, each checked: a named metric with a finite numeric value."""
    run_dir = metrics_path.parent
    records = []
    try:
        text = metrics_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CollectError(f"{metrics_path}: unreadable ({exc}); {_rescore_hint(run_dir)}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{metrics_path}:{number}"
        try:
            m = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CollectError(f"{where}: not valid JSON ({exc.msg}); {_rescore_hint(run_dir)}") from None
        if not isinstance(m, dict) or not isinstance(m.get("metric"), str) or not m["metric"]:
            raise CollectError(f"{where}: no \"metric\" name; {_rescore_hint(run_dir)}")
        if "value" not in m:
            raise CollectError(f"{where}: metric {m['metric']!r} has no \"value\"; {_rescore_hint(run_dir)}")
        value = m["value"]
        # bool is an int to Python but never a score; NaN/inf would poison every mean in the tables
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (isinstance(value, float) and not math.isfinite(value)):
            raise CollectError(f"{where}: metric {m['metric']!r} has value {json.dumps(value)[:60]}, not a finite "
                               f"number; {_rescore_hint(run_dir)}")
        records.append(m)
    if not records:
        raise CollectError(f"{metrics_path}: a finished run with no metrics; {_rescore_hint(run_dir)}")
    return records


def collect_rows(runs_dir: Path = RUNS_DIR) -> list[dict]:
    """One row per (run, metric); only finished runs (DONE marker) with metrics are read. A bad file of a finished
    run raises CollectError before anything is returned, so no caller writes a partial scores file."""
    rows = []
    for metrics_path in sorted(Path(runs_dir).glob("*/*/*/seed*/metrics.jsonl")):
        run_dir = metrics_path.parent
        if not (run_dir / "DONE").is_file():
            continue
        try:
            seed = int(run_dir.name[4:])
        except ValueError:
            raise CollectError(f"{run_dir}: a run folder must be named seed<integer>; rename or remove it") from None
        config = _read_json(run_dir / "config.json", run_dir)
        env = _read_json(run_dir / "env.json", run_dir) if (run_dir / "env.json").is_file() else {}
        world, shift, method = run_dir.parts[-4], run_dir.parts[-3], run_dir.parts[-2]
        for m in metric_rows(metrics_path):
            rows.append({"world": world, "shift": shift, "method": method, "seed": seed,
                         "mode": config.get("mode", config.get("nada", {}).get("mode", "")), "metric": m["metric"],
                         "value": m["value"], "n_samples": m.get("n_samples", ""), "protocol": m.get("protocol", ""),
                         "code_version": str(env.get("git_sha", "unknown"))[:12]})
    rows.sort(key=lambda r: (r["world"], r["shift"], r["method"], r["seed"], r["metric"]))
    return rows


def write_scores(rows: list[dict], path: Path = SCORES_CSV) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
    return path


def main(argv: list[str] | None = None) -> int:
    try:
        rows = collect_rows(RUNS_DIR)
    except CollectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = write_scores(rows, SCORES_CSV)
    print(f"{len(rows)} rows -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
