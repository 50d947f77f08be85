"""Opening a source weight file and telling its format, without running any of its code."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

from replication.checkpoint import CheckpointError, read_torch_file
from replication.conversion.common import FORMAT_ADA, FORMAT_ROSINALITY, FORMAT_TF, FORMAT_TF_ARRAYS, ConversionError
from replication.conversion.tf_arrays import is_tf_arrays, read_tf_arrays
from replication.safe_unpickle import PersistentObjectState, TFNetworkState, UnsafePickleError, safe_load


def load_source(path: Path, expected: str | None = None) -> tuple[str, Any]:
    """(format, loaded object) of a source file; ``expected="tf-arrays"`` reads it as an array export, whatever it is.

    No TensorFlow and no foreign code: pickles go through :mod:`replication.safe_unpickle` only, which turns NVIDIA's
    network objects into inert records of their variables; array exports are read with ``allow_pickle=False``.
    """
    if not path.exists():
        raise ConversionError(f"source not found: {path}")
    if not path.is_file():
        raise ConversionError(f"source is not a file: {path}")
    if expected == FORMAT_TF_ARRAYS:
        return FORMAT_TF_ARRAYS, read_tf_arrays(path)
    if zipfile.is_zipfile(path):
        if is_tf_arrays(path):
            return FORMAT_TF_ARRAYS, read_tf_arrays(path)
        return FORMAT_ROSINALITY, _read_torch(path)
    try:
        obj = safe_load(path)
    except UnsafePickleError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure of an untrusted file becomes one clear line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"{path.name}: not a readable pickle or torch file ({first[:200]})") from None
    if isinstance(obj, int):  # torch's legacy (pre-1.6, non-zip) serialization starts with a magic-number pickle
        return FORMAT_ROSINALITY, _read_torch(path)
    if isinstance(obj, tuple) and len(obj) == 3 and all(isinstance(n, TFNetworkState) for n in obj):
        return FORMAT_TF, obj
    if isinstance(obj, dict) and any(isinstance(obj.get(k), PersistentObjectState) for k in ("G_ema", "G")):
        return FORMAT_ADA, obj
    what = type(obj).__name__ if not isinstance(obj, dict) else f"dict with keys {sorted(map(str, obj))[:8]}"
    raise ConversionError(f"{path.name}: unknown format ({what}); expected a TF pickle (G, D, Gs), an "
                          f"stylegan2-ada-pytorch pickle (dict with G_ema) or a rosinality .pt")


def _read_torch(path: Path) -> Any:
    try:
        return read_torch_file(path)
    except CheckpointError as exc:
        raise ConversionError(str(exc)) from None


def detect_format(path: str | os.PathLike) -> str:
    """'tf-stylegan2', 'ada-pytorch', 'rosinality' (also our own checkpoint format) or 'tf-arrays'."""
    return load_source(Path(path))[0]
