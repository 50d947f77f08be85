"""Run many (shift, method, seed) jobs on an existing engine: inline, a local process pool, or Slurm via submitit."""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from tqdm import tqdm

from baselines import METHODS
from metrics.scoring import ScoringError, ScoringSettings
from replication.checkpoint import CheckpointError
from replication.clip_models import ClipModelError, PromptError
from replication.config import ConfigError, ShiftConfig, load_shift
from replication.layer_select import LayerSelectionError
from replication.losses import DirectionError, GuidanceError, ImageFolderError
from replication.nada import GeneratorNotFound, load_source, run_weight_sha256
from replication.pipeline.scoring import LazyScorers, score_and_write, scorer_sha256, scores_are_current
from replication.pipeline.train import resolve_device, run_dir_for
from replication.runio import is_done
from replication.training_loop import FINAL_NAME, RunBusyError, RunConflictError, TrainingDiverged
from replication.weights import WeightError

LAUNCHERS = ("local", "slurm")
# A job's failures that are the user's to fix: reported as one line per run, the other runs go on.
USER_ERRORS = (ConfigError, CheckpointError, ClipModelError, PromptError, LayerSelectionError, DirectionError,
               GuidanceError, ImageFolderError, GeneratorNotFound, RunConflictError, RunBusyError, WeightError,
               ScoringError, TrainingDiverged)


@dataclass(frozen=True)
class Job:
    """One run: a shift (name or TOML path), a method of baselines.METHODS, a seed, and optional [nada] overrides that
    make it a named variant (its folder is `name`, else the method's)."""

    shift: str
    method: str
    seed: int
    name: str = ""
    nada: tuple[tuple[str, Any], ...] = ()

    @property
    def folder(self) -> str:
        return self.name or self.method

    def config(self) -> ShiftConfig:
        return load_shift(self.shift, {"nada": dict(self.nada)} if self.nada else None)

    def label(self) -> str:
        return f"{Path(self.shift).stem} {self.folder} seed{self.seed}"


@dataclass(frozen=True)
class JobOptions:
    """What every job of one call shares: where runs go, how they are scored, and what to redo."""

    outdir: str
    settings: dict[str, ScoringSettings] = field(default_factory=dict)
    eval_clip: str | None = None
    fid_references: str | None = None
    device: str = "cpu"
    threads: int = 0  # torch threads per job (0: torch's default)
    rerun_stale: bool = False  # re-run finished mini runs trained or scored with other weights than the registry's
    rescore: bool = False  # score finished runs again from their saved final generator
    progress: bool = False  # a per-step bar inside the job (only when jobs run one at a time in this process)


@dataclass(frozen=True)
class JobResult:
    job: Job
    run_dir: str
    status: str  # "kept", "trained", "rescored" or "failed"
    seconds: float = 0.0
    error: str = ""
    current: bool = True  # trained and scored with the registry's weights of today


@dataclass(frozen=True)
class SlurmOptions:
    """submitit's Slurm parameters; `cluster` "local" runs the same path on this machine (used by the tests)."""

    partition: str | None = None
    time_min: int = 60
    gpus: int = 0
    cpus: int = 2
    parallel: int = 16  # array jobs running at once
    cluster: str | None = None  # None: Slurm when sbatch exists; "local": submitit's local executor


def job_run_dir(job: Job, outdir: Path) -> Path:
    shift = job.config()
    return run_dir_for(outdir, shift.task.world, shift.task.name, job.folder, job.seed)


def trained_on_current_weights(run_dir: Path, shift: ShiftConfig) -> bool:
    """True when the run's env.json records today's generator and guidance CLIP files."""
    try:
        trained_on = json.loads((Path(run_dir) / "env.json").read_text(encoding="utf-8")).get("weights_sha256")
    except (OSError, ValueError):
        return False
    return trained_on == run_weight_sha256(shift)


def run_is_current(run_dir: Path, shift: ShiftConfig) -> bool:
    """A finished run is current when it was trained on today's generator and guidance CLIP files (env.json) and
    scored by today's scoring weights (metrics.jsonl)."""
    return (trained_on_current_weights(run_dir, shift)
            and scores_are_current(run_dir, scorer_sha256(shift.task.world)))


def can_rescore(run_dir: Path, shift: ShiftConfig, method: str) -> bool:
    """A finished run can be scored again without training when it was trained on today's weights and its final
    generator is still on disk (runs keep it locally; shipped references keep only samples) or it is the source."""
    return (trained_on_current_weights(run_dir, shift)
            and (method == "source" or (Path(run_dir) / "checkpoints" / FINAL_NAME).is_file()))


def finished(run_dir: Path) -> bool:
    return is_done(run_dir) and (Path(run_dir) / "metrics.jsonl").is_file()


def needs_work(job: Job, options: JobOptions) -> bool:
    """False when the job's run is finished and nothing asks to redo it: such jobs never reach a worker, so a second
    call over finished runs returns at once."""
    shift = job.config()
    run_dir = run_dir_for(Path(options.outdir), shift.task.world, shift.task.name, job.folder, job.seed)
    if not finished(run_dir):
        return True
    if options.rescore and can_rescore(run_dir, shift, job.method):
        return True
    return options.rerun_stale and shift.task.world == "mini" and not run_is_current(run_dir, shift)


_SCORERS: dict[tuple, LazyScorers] = {}  # one per process and scoring setup: a pool worker loads its models once


def _scorers(options: JobOptions) -> LazyScorers:
    key = (tuple(sorted(options.settings.items())), options.eval_clip, options.fid_references)
    if key not in _SCORERS:
        _SCORERS[key] = LazyScorers(options.settings, options.eval_clip,
                                    None if options.fid_references is None else Path(options.fid_references))
    return _SCORERS[key]


def run_job(job: Job, options: JobOptions) -> JobResult:
    """Train (or keep) and score one run; a finished run is kept unless options ask to rescore or re-run it. Never
    raises for a user error: the result carries its one-line message, so one bad run does not stop the others."""
    start = time.perf_counter()
    if options.threads > 0:
        torch.set_num_threads(options.threads)
    run_dir = Path(options.outdir)
    try:
        shift = job.config()
        run_dir = run_dir_for(Path(options.outdir), shift.task.world, shift.task.name, job.folder, job.seed)
        status = "trained"
        if finished(run_dir):
            if options.rescore and can_rescore(run_dir, shift, job.method):
                status = "rescored"
            elif options.rerun_stale and shift.task.world == "mini" and not run_is_current(run_dir, shift):
                # runs are pure functions of config and seed: new scorer models mean training again
                shutil.rmtree(run_dir)
            else:
                return JobResult(job, str(run_dir), "kept", current=_current(run_dir, shift))
        device = resolve_device(options.device)  # "auto" is resolved where the job runs (a Slurm node)
        G_src, latent_avg, shas = load_source(shift, device)
        kw: dict[str, Any] = dict(weights_sha256=shas, progress=options.progress, latent_avg=latent_avg)
        if job.name and job.method == "nada":  # a named NADA variant records its name in every row
            kw["method"] = f"nada[{job.name}]"
        G_tgt = METHODS[job.method](G_src, shift, job.seed, run_dir, **kw)
        score_and_write(run_dir, shift, G_src, G_tgt, _scorers(options).for_shift(shift), options.progress)
    except USER_ERRORS as exc:
        prefix = "training diverged: " if isinstance(exc, TrainingDiverged) else ""
        return JobResult(job, str(run_dir), "failed", time.perf_counter() - start, f"{prefix}{exc}")
    return JobResult(job, str(run_dir), status, time.perf_counter() - start, current=_current(run_dir, shift))


def _current(run_dir: Path, shift: ShiftConfig) -> bool:
    return shift.task.world != "mini" or run_is_current(run_dir, shift)


def machine_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def plan_workers(n_jobs: int, device: str, workers: int = 0, threads: int = 0) -> tuple[int, int]:
    """(workers, threads per worker) for the local launcher: on a CPU one single-thread worker per core (small
    models use a second thread poorly, two runs at once use both cores fully); on a GPU one worker."""
    cores = machine_cores()
    if workers <= 0:
        workers = 1 if device != "cpu" else max(1, min(n_jobs, cores))
    if threads <= 0:
        threads = max(1, cores // workers)
    return workers, threads


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"


def _report(result: JobResult, bar: tqdm) -> None:
    if result.status == "failed":
        bar.write(f"failed: {result.job.label()}: {result.error}")
    else:
        bar.write(f"{result.status}: {result.job.label()} in {result.seconds:.0f} s -> {result.run_dir}")


def _tracked(results: Iterable[JobResult], total: int, show: bool) -> Iterator[JobResult]:
    """Yield each result as it arrives while a bar shows runs done / left and the mean seconds per run."""
    bar = tqdm(total=total, desc="runs", unit="run", disable=not show, dynamic_ncols=True, file=sys.stdout)
    seconds: list[float] = []
    try:
        for result in results:
            bar.update(1)
            if result.status != "failed":
                seconds.append(result.seconds)
                bar.set_postfix_str(f"{sum(seconds) / len(seconds):.0f} s/run")
            _report(result, bar)
            yield result
    finally:
        bar.close()


def _inline(jobs: list[Job], options: JobOptions) -> Iterator[JobResult]:
    for job in jobs:
        yield run_job(job, options)


def _die_with_parent() -> None:
    """Pool initializer: a worker gets SIGTERM when its parent dies (Linux), so a killed `make replicate` leaves no
    orphan still holding a run folder's lock; the run resumes from its last checkpoint on the next call."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _pool(jobs: list[Job], options: JobOptions, workers: int) -> Iterator[JobResult]:
    # spawn, not fork: a forked copy of a process that has started torch's thread pool can deadlock
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_die_with_parent) as pool:
        submitted = {pool.submit(run_job, job, options): job for job in jobs}
        pending = set(submitted)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    try:
                        yield future.result()
                    except Exception as exc:  # a worker that died (out of memory, killed) fails its run only
                        yield JobResult(submitted[future], "", "failed", error=_first_line(exc))
        finally:
            for future in pending:
                future.cancel()


def _slurm(jobs: list[Job], options: JobOptions, slurm: SlurmOptions, log_dir: Path) -> Iterator[JobResult]:
    import submitit

    executor = submitit.AutoExecutor(folder=str(log_dir), cluster=slurm.cluster)
    params: dict[str, Any] = dict(timeout_min=slurm.time_min, cpus_per_task=slurm.cpus, gpus_per_node=slurm.gpus,
                                  slurm_array_parallelism=slurm.parallel, name="nada-replicate")
    if slurm.partition:
        params["slurm_partition"] = slurm.partition
    if executor.cluster != "slurm":  # the local executor takes only the generic parameters
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    executor.update_parameters(**params)
    submitted = executor.map_array(run_job, jobs, [options] * len(jobs))
    by_id = {id(sub): job for sub, job in zip(submitted, jobs)}
    for sub in submitit.helpers.as_completed(submitted, poll_frequency=1):
        try:
            yield sub.result()
        except Exception as exc:  # the job crashed on its node: its own log says why
            yield JobResult(by_id[id(sub)], "", "failed", error=f"{_first_line(exc)} (log: {sub.paths.stderr})")


def launch(jobs: list[Job], options: JobOptions, *, launcher: str = "local", workers: int = 0,
           slurm: SlurmOptions | None = None, log_dir: Path | None = None, show: bool = True) -> list[JobResult]:
    """Run every job that needs work (finished runs are kept without starting anything) and return one result per
    job, in the jobs' order. Local: inline when one worker suffices, else a process pool of workers x threads."""
    if launcher not in LAUNCHERS:
        raise ConfigError(f"launcher {launcher!r} is unknown; use one of {LAUNCHERS}")
    todo = [i for i, job in enumerate(jobs) if needs_work(job, options)]
    results: list[JobResult | None] = [None if i in set(todo) else run_job(job, options)  # kept: no training
                                       for i, job in enumerate(jobs)]
    if todo:
        todo_jobs = [jobs[i] for i in todo]
        if launcher == "slurm":
            print(f"{len(todo)} run(s) to do, {len(jobs) - len(todo)} finished; submitting them as one array job",
                  flush=True)
            stream = _slurm(todo_jobs, options, slurm or SlurmOptions(),
                            Path(log_dir or Path(options.outdir) / "slurm-logs"))
        else:
            n_workers, threads = plan_workers(len(todo), options.device, workers, options.threads)
            options = replace(options, threads=threads, progress=options.progress and n_workers == 1)
            print(f"{len(todo)} run(s) to do, {len(jobs) - len(todo)} finished; {n_workers} worker(s) x "
                  f"{threads} thread(s)", flush=True)
            stream = _inline(todo_jobs, options) if n_workers == 1 else _pool(todo_jobs, options, n_workers)
        for result in _tracked(stream, len(todo), show):
            # a result names its job; equal jobs (same fields) are the same run, so any matching slot is right
            slot = next(i for i in todo if results[i] is None and jobs[i] == result.job)
            results[slot] = result
    return [r for r in results if r is not None]
