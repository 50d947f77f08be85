"""Run directories: atomic writes, resolved config and environment records, per-step stats, the completion marker."""
from __future__ import annotations

import fcntl
import io
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
DONE_NAME = "DONE"
LOCK_NAME = ".lock"
TMP_PATTERNS = (".*.tmp", ".*.tmp.png")  # every temp file our writers leave when killed; the second is an older name


class NonFiniteState(ValueError):
    """A state about to be saved holds a NaN or inf tensor; the file it would replace is kept."""


def repo_path(path: str | Path) -> Path:
    """A path as written in configs: repo-relative unless absolute."""
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path


def repo_relative(path: str | Path) -> str:
    """The path as committed results show it: repo-relative when inside the repo (no machine-specific prefix)."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO_ROOT) if resolved.is_relative_to(REPO_ROOT) else resolved)


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The shell command that ran `python -m module` with argv (sys.argv[1:] when None), quoted to be re-run as is."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python -m", module, *(shlex.quote(a) for a in args)])


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _write_temp(path: Path, data: bytes) -> Path:
    """data in a new, uniquely named temp file beside path (so that concurrent writers never share one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write through a temp file in the same folder and rename, so a kill never leaves a half-written file."""
    path = Path(path)
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save through the same temp-file-and-rename path as every other write."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _first_non_finite(obj: Any, where: str = "") -> str | None:
    """The key path of the first floating tensor in obj (nested dicts, lists, tuples) holding a NaN or inf."""
    if isinstance(obj, torch.Tensor):
        return (where or "tensor") if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        found = _first_non_finite(value, f"{where}/{key}" if where else str(key))
        if found:
            return found
    return None


def save_checked(obj: Any, path: Path, previous: Path | None = None) -> None:
    """torch.save obj beside path, read it back and require every tensor finite; only then keep the old file as
    `previous` (when given) and move the new one to path. A failed check (NonFiniteState) leaves both untouched."""
    path, previous = Path(path), None if previous is None else Path(previous)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    tmp = _write_temp(path, buffer.getvalue())
    try:
        bad = _first_non_finite(torch.load(tmp, map_location="cpu", weights_only=True))
        if bad:
            raise NonFiniteState(f"{bad} is not finite")
        if previous is not None and path.exists():
            # a second name for the old file, swapped in atomically: path exists at every instant
            spare = previous.with_name(f".{previous.name}.{uuid.uuid4().hex[:8]}.tmp")
            try:
                os.link(path, spare)
            except OSError:  # a file system without hard links
                shutil.copyfile(path, spare)
            os.replace(spare, previous)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def run_lock(run_dir: Path) -> Iterator[bool]:
    """Hold an exclusive lock on run_dir for the block; yields False, holding nothing, when another process has it.

    The lock is a flock on run_dir/.lock, which the kernel drops when its holder dies; the file is removed on release,
    so a lock won on a file that its last holder has just removed is retaken on the current file.
    """
    path = Path(run_dir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            fd = None
            break
        try:
            held, current = os.fstat(fd), os.stat(path)
            if (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    if fd is None:
        yield False
        return
    try:
        yield True
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def remove_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temp files that killed writers left anywhere in run_dir; only while holding its run_lock."""
    removed = []
    for pattern in TMP_PATTERNS:
        for path in Path(run_dir).rglob(pattern):
            if path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def is_done(run_dir: Path) -> bool:
    return (Path(run_dir) / DONE_NAME).is_file()


def mark_done(run_dir: Path, summary: dict[str, Any]) -> None:
    """The completion marker is written last; its presence means every other file of the run is complete."""
    write_json(Path(run_dir) / DONE_NAME, summary)


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what the platform module knows: timings depend on it."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_state() -> dict[str, Any]:
    def run(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    sha = run("rev-parse", "HEAD")
    return {"git_sha": sha or "unknown", "git_dirty": bool(run("status", "--porcelain", "--untracked-files=no"))}


def environment_record(device: torch.device, weights: dict[str, str]) -> dict[str, Any]:
    """Versions, device and the sha256 of every weight file used, for env.json."""
    import torchvision

    record: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "num_threads": torch.get_num_threads(),
        "weights_sha256": dict(sorted(weights.items())),
    }
    try:
        from importlib.metadata import version

        record["clip_anytorch"] = version("clip-anytorch")
    except Exception:  # the record is informative; a missing distribution must not stop a run
        record["clip_anytorch"] = "unknown"
    record.update(git_state())
    return record


class StatsLog:
    """Append-only JSON-lines log of per-step statistics that can be cut back to a resumed step."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def truncate_to(self, step: int) -> None:
        """Keep only rows with step < `step` (rows written after the last checkpoint are recomputed on resume)."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] < step]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def append(self, row: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]
