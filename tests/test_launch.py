"""The harness's engine: a process pool and submitit run the same jobs, finished runs are kept, a killed call resumes."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from replication.pipeline.launch import Job, JobOptions, launch, plan_workers
from replication.pipeline.replicate import main as replicate_main
from quickruns import SETTINGS, TINY, short_shift
from replication.runio import REPO_ROOT

def test_workers_and_threads_fill_the_machine_without_oversubscribing(monkeypatch):
    monkeypatch.setattr("replication.pipeline.launch.machine_cores", lambda: 8)
    assert plan_workers(27, "cpu") == (8, 1)
    assert plan_workers(2, "cpu") == (2, 4)  # fewer runs than cores: each run gets more threads
    assert plan_workers(27, "cuda") == (1, 8)
    assert plan_workers(27, "cpu", workers=3, threads=2) == (3, 2)


def test_a_process_pool_runs_the_jobs_and_a_second_call_starts_nothing(tmp_path):
    options = JobOptions(outdir=str(tmp_path), settings=SETTINGS, threads=1)
    jobs = [Job("mini--sketch", "source", 0), Job("mini--zombie", "source", 0)]
    results = launch(jobs, options, workers=2, show=False)
    assert [r.status for r in results] == ["trained", "trained"]
    assert [r.job for r in results] == jobs  # in the jobs' order whatever order they finished in
    for result in results:
        assert (Path(result.run_dir) / "DONE").is_file() and (Path(result.run_dir) / "metrics.jsonl").is_file()
    start = time.perf_counter()
    again = launch(jobs, options, workers=2, show=False)
    assert [r.status for r in again] == ["kept", "kept"]
    assert time.perf_counter() - start < 5  # no worker, no model loaded


def test_one_failing_run_is_reported_in_one_line_and_the_others_finish(tmp_path, capsys):
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"not a checkpoint")  # found by the checks before training; unreadable only when loaded
    broken = short_shift(tmp_path, "mini--broken")
    broken.write_text(broken.read_text().replace('generator = "mini-stylegan2"', f'generator = "{damaged}"'))
    args = ["--shifts", str(broken), "mini--sketch", "--methods", "source", "--seeds", "0", "--outdir",
            str(tmp_path / "runs"), *TINY]
    assert replicate_main(args) == 1
    err = capsys.readouterr().err
    failures = [line for line in err.splitlines() if line.startswith("error: mini--broken source seed0: ")]
    assert len(failures) == 1 and "damaged.pt" in failures[0]
    assert "1 of 2 run(s) failed" in err
    assert (tmp_path / "runs" / "mini" / "mini--sketch" / "source" / "seed0" / "DONE").is_file()
    with open(tmp_path / "runs" / "scores.csv") as handle:
        assert {row["shift"] for row in csv.DictReader(handle)} == {"mini--sketch"}


def test_the_slurm_launcher_runs_through_submitits_executor(tmp_path):
    pytest.importorskip("submitit")
    outdir = tmp_path / "runs"
    args = ["--shifts", "mini--sketch", "--methods", "source", "--seeds", "0", "1", "--outdir", str(outdir),
            "--launcher", "slurm", "--slurm-cpus", "1", *TINY]
    assert replicate_main(args, slurm_cluster="local") == 0  # submitit's local executor: same code path as Slurm
    assert list((outdir / "slurm-logs").iterdir())  # submitit wrote its job files there
    with open(outdir / "scores.csv") as handle:
        assert {row["seed"] for row in csv.DictReader(handle)} == {"0", "1"}


def test_paper_world_lists_every_missing_weight_at_once(tmp_path, capsys):
    assert replicate_main(["--world", "paper", "--outdir", str(tmp_path), *TINY]) == 2
    err = capsys.readouterr().err
    missing = [line for line in err.splitlines() if line.startswith("  - ")]
    generators = {line for line in missing if "source generator" in line}
    assert len(generators) >= 5, err  # one line per absent generator, not only the first
    assert any("ViT-L/14" in line for line in missing)  # the evaluation CLIP too
    assert not any(tmp_path.iterdir())  # nothing was written


def test_a_killed_call_resumes_without_redoing_finished_runs(tmp_path):
    shift = short_shift(tmp_path, iterations=60)
    outdir = tmp_path / "runs"
    command = [sys.executable, "-m", "replication.pipeline.replicate", "--shifts", str(shift), "--methods", "nada",
               "--seeds", "0", "1", "--outdir", str(outdir), "--workers", "1", "--threads", "1", *TINY]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first_done = outdir / "mini" / "mini--quick" / "nada" / "seed0" / "DONE"
    second = outdir / "mini" / "mini--quick" / "nada" / "seed1"
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    deadline = time.time() + 240
    while not (second / "checkpoints" / "resume.pt").is_file() and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # midway through the second run, after a checkpoint
    process.wait()
    assert first_done.is_file() and not (second / "DONE").is_file()
    finished_at = first_done.stat().st_mtime_ns
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    assert first_done.stat().st_mtime_ns == finished_at  # the finished run was not redone
    assert "1 run(s) to do, 1 finished" in result.stdout
    stats = [json.loads(line) for line in (second / "stats.jsonl").read_text().splitlines() if line.strip()]
    assert [s["step"] for s in stats] == sorted({s["step"] for s in stats})  # resumed: no step twice, none lost
