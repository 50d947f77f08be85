"""`make convert`'s link to the legacy TF 1.15 environment: NVIDIA's own graph renders each official TF pickle, and
the renders are compared with our converted checkpoint (and, for ``CONVERTER=tf``, NVIDIA's unpickler exports it).

The legacy half runs as a subprocess, ``.venv-legacy/bin/python replication/legacy_tf_crosscheck.py`` (Python 3.7,
TF 1.15, numpy; no torch), with a clone of NVlabs/stylegan2 (``NVIDIA_TF_REPO``). Without either, the conversion still
runs (TF-free reader) and `make convert` prints one line saying the cross-check was skipped and how to enable it.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from replication.conversion.common import ConversionError
from replication.conversion.compare import compare_cases
from replication.runio import REPO_ROOT

LEGACY_PYTHON = REPO_ROOT / ".venv-legacy" / "bin" / "python"
LEGACY_SCRIPT = REPO_ROOT / "replication" / "legacy_tf_crosscheck.py"
# Max |TF - ours| over images of range about [-1, 1]: float32 noise is 1e-6..1e-4; a mapping error is > 0.02.
TOLERANCE = 1e-3
ENABLE_HINT = "run `make env-legacy` and pass NVIDIA_TF_REPO=/path/to/a/clone/of/NVlabs/stylegan2"
LEGACY_TIMEOUT_S = 3600


@dataclass(frozen=True)
class Case:
    """One render of the cross-check: z from RandomState(seed), truncation psi on W+ layers < cutoff (None: all)."""

    seed: int
    psi: float
    cutoff: int | None = None

    def arg(self) -> str:
        return f"{self.seed}:{self.psi!r}" + (f":{self.cutoff}" if self.cutoff is not None else "")


# No truncation; the original convert_weight.py's check (psi 0.5); a truncated case with a cutoff (coarse layers only).
CASES = (Case(0, 1.0), Case(1, 0.5), Case(2, 0.7, 4))


@dataclass(frozen=True)
class LegacyTF:
    """A usable legacy environment: its Python and the user's clone of NVIDIA's TF StyleGAN2 code."""

    python: Path
    nvidia_repo: Path


def find_legacy_tf(nvidia_repo: str | os.PathLike | None,
                   python: str | os.PathLike | None = None) -> tuple[LegacyTF | None, str]:
    """(LegacyTF, "") when the legacy env and an NVIDIA clone are both there, else (None, why not)."""
    python = Path(python) if python else LEGACY_PYTHON
    if not nvidia_repo:
        return None, "NVIDIA_TF_REPO is not set"
    repo = Path(nvidia_repo).expanduser().resolve()
    if not (repo / "dnnlib" / "tflib").is_dir():
        return None, f"NVIDIA_TF_REPO={nvidia_repo} is not a clone of NVlabs/stylegan2 (no dnnlib/tflib)"
    if not python.is_file():
        return None, f"no legacy TF 1.15 environment at {_shown(python)}"
    return LegacyTF(python, repo), ""


def skip_line(reason: str) -> str:
    """The one line `make convert` prints when it cannot cross-check."""
    return f"cross-check against NVIDIA's TF graph skipped ({reason}); to enable it, {ENABLE_HINT}"


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def run_legacy(legacy: LegacyTF, argv: Sequence[str], what: str, timeout: float = LEGACY_TIMEOUT_S) -> str:
    """Run ``legacy.python argv...`` from the repo root; its stdout, or ConversionError with its last stderr line."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)  # the trainer venv's paths must not leak into Python 3.7
    command = [str(legacy.python), *map(str, argv)]
    try:
        proc = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConversionError(f"{what} could not run in the legacy TF environment ({exc})") from None
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        last = lines[-1] if lines else "no message"
        raise ConversionError(f"{what} failed in the legacy TF environment (exit {proc.returncode}): {last[:300]}")
    return proc.stdout


def render_with_nvidia(legacy: LegacyTF, pickle_path: str | os.PathLike, out_dir: str | os.PathLike,
                       cases: Sequence[Case] = CASES, *, discriminator: bool = True,
                       export_arrays: str | os.PathLike | None = None, n: int | None = None) -> list[Path]:
    """Render ``cases`` with NVIDIA's graph into ``out_dir/case{k}.npz``; with ``export_arrays``, NVIDIA's own
    unpickler loads the file and its variables are also written there as plain arrays (one legacy process)."""
    args = ["--pickle", str(pickle_path), "--out", str(out_dir), *[a for c in cases for a in ("--case", c.arg())]]
    if not discriminator:
        args.append("--no-discriminator")
    if export_arrays is not None:
        args += ["--export-arrays", str(export_arrays)]
    if n is not None:
        args += ["--n", str(n)]
    run_legacy(legacy, [str(LEGACY_SCRIPT), "--nvidia-repo", str(legacy.nvidia_repo), *args],
               f"NVIDIA's TF render of {Path(pickle_path).name}")
    return [Path(out_dir) / f"case{k}.npz" for k in range(len(cases))]


def crosscheck_record(converted_pt: str | os.PathLike, npzs: Sequence[str | os.PathLike], grid_path: Path, *,
                      tolerance: float = TOLERANCE, use_d_scores: bool = True) -> dict[str, Any]:
    """Compare every case, write the grid; the record says each case's differences and whether all are in tolerance.

    Images must agree within ``tolerance``; D scores (when compared) within ``tolerance`` times the score range.
    """
    results = compare_cases(converted_pt, npzs, grid_path, use_d_scores=use_d_scores)
    worst = max(r["max_abs_diff"] for r in results)
    d_worst = max((r["d_max_abs_diff"] for r in results if "d_max_abs_diff" in r), default=None)
    d_scale = max((max(abs(r["d_score_min"]), abs(r["d_score_max"]), 1.0) for r in results if "d_score_min" in r),
                  default=1.0)
    passed = worst <= tolerance and (d_worst is None or d_worst <= tolerance * d_scale)
    for r in results:
        r.pop("grid_path", None)
    return {"passed": passed, "max_abs_diff": worst, "d_max_abs_diff": d_worst, "tolerance": tolerance,
            "d_tolerance": tolerance * d_scale if d_worst is not None else None, "cases": results,
            "grid": grid_path.name}


def failure_line(record: dict[str, Any], json_path: Path) -> str:
    """One line naming what exceeded the tolerance and where the evidence is."""
    what = (f"max |TF - ours| {record['max_abs_diff']:.3g} (tolerance {record['tolerance']:.3g})"
            if record["max_abs_diff"] > record["tolerance"] else
            f"D scores differ by {record['d_max_abs_diff']:.3g} (tolerance {record['d_tolerance']:.3g})")
    return (f"conversion rejected: {what} against NVIDIA's TF graph; checkpoint not installed; see {json_path} "
            f"and {json_path.with_name(record['grid'])}")


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Atomic JSON write (temp file in the same folder, then os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=1)
            handle.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
