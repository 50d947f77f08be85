"""Flatten every run's metrics.jsonl under results/runs into results/scores.csv (long format, sorted, deterministic).

Example: python -m results.collect
"""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from replication.runio import REPO_ROOT, atomic_write_text

RUNS_DIR = REPO_ROOT / "results" / "runs"
SCORES_CSV = REPO_ROOT / "results" / "scores.csv"
COLUMNS = ("world", "shift", "method", "seed", "mode", "metric", "value", "n_samples", "protocol", "code_version")


def collect_rows(runs_dir: Path = RUNS_DIR) -> list[dict]:
    """One row per (run, metric); only finished runs (DONE marker) with metrics are read."""
    rows = []
    for metrics_path in sorted(Path(runs_dir).glob("*/*/*/seed*/metrics.jsonl")):
        run_dir = metrics_path.parent
        if not (run_dir / "DONE").is_file():
            continue
        config = json.loads((run_dir / "config.json").read_text())
        env = json.loads((run_dir / "env.json").read_text()) if (run_dir / "env.json").is_file() else {}
        world, shift, method = run_dir.parts[-4], run_dir.parts[-3], run_dir.parts[-2]
        for line in metrics_path.read_text().splitlines():
            m = json.loads(line)
            rows.append({"world": world, "shift": shift, "method": method, "seed": int(run_dir.name[4:]),
                         "mode": config.get("mode", config.get("nada", {}).get("mode", "")), "metric": m["metric"],
                         "value": m["value"], "n_samples": m.get("n_samples", ""), "protocol": m.get("protocol", ""),
                         "code_version": env.get("git_sha", "unknown")[:12]})
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
    rows = collect_rows()
    path = write_scores(rows)
    print(f"{len(rows)} rows -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
