"""Reader of the plain-array export of a TF pickle (``CONVERTER=tf``): the trainer-side half of the legacy route.

In the legacy environment NVIDIA's own code unpickles the official file and ``legacy_tf_crosscheck.py
--export-arrays`` writes every variable of G, D and Gs as a plain array (``v0``, ``v1``, ...) plus ``meta``, a JSON
string that names each network, its static kwargs, components and variables, and the source file's name and sha256.
Here the file is opened with ``np.load(allow_pickle=False)`` only: an object (pickled) array is refused, never loaded.
The result is the same ``TFNetworkState`` records the restricted unpickler gives, so both routes share one mapping
(:func:`replication.conversion.tf.read_tf`) and give tensor-equal checkpoints.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from replication.conversion.common import ConversionError
from replication.legacy_tf_crosscheck import ARRAYS_FORMAT, ARRAYS_FORMAT_VERSION, NETWORK_ORDER
from replication.safe_unpickle import TFNetworkState


@dataclass(frozen=True)
class TFArrays:
    """(G, D, Gs) rebuilt from an array export, and the source pickle it was exported from."""

    networks: tuple[TFNetworkState, TFNetworkState, TFNetworkState]
    source_filename: str
    source_sha256: str


def is_tf_arrays(path: str | os.PathLike) -> bool:
    """True for a zip (npz) holding ``meta.npy`` and no torch archive record: an array export, not a torch file."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return "meta.npy" in names and not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names)


def read_tf_arrays(path: str | os.PathLike) -> TFArrays:
    """The networks of an array export; ConversionError (one line) for anything but plain arrays and valid meta."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.files)
            arrays = {key: _load(data, key, path.name) for key in keys}
    except ConversionError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ConversionError(f"{path.name}: not a readable array export ({_first_line(exc)})") from None
    meta = _meta(arrays.pop("meta", None), path.name)
    used: set[str] = set()
    networks = tuple(_network(meta["networks"].get(key), arrays, used, f"{path.name} {key}") for key in NETWORK_ORDER)
    unused = sorted(set(arrays) - used)
    if unused:
        raise ConversionError(f"{path.name}: arrays no network names: {unused[:8]}")
    source = meta.get("source") or {}
    filename, sha = source.get("filename"), source.get("sha256")
    if not isinstance(filename, str) or not isinstance(sha, str) or len(sha) != 64:
        raise ConversionError(f"{path.name}: meta does not name the source pickle and its sha256")
    return TFArrays(networks, filename, sha)  # type: ignore[arg-type]


def _first_line(exc: BaseException) -> str:
    return ((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:200]


def _load(data: Any, key: str, name: str) -> np.ndarray:
    try:
        return data[key]
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise ConversionError(f"{name}: array {key!r} is a pickled object array; refusing to unpickle it (an "
                                  f"export holds plain numeric arrays only)") from None
        raise


def _meta(value: np.ndarray | None, name: str) -> dict[str, Any]:
    if value is None or value.shape != () or value.dtype.kind != "U":
        raise ConversionError(f"{name}: no 'meta' string; not an array export of legacy_tf_crosscheck.py")
    try:
        meta = json.loads(str(value))
    except ValueError as exc:
        raise ConversionError(f"{name}: meta is not JSON ({_first_line(exc)})") from None
    if not isinstance(meta, dict) or meta.get("format") != ARRAYS_FORMAT:
        raise ConversionError(f"{name}: meta format is not {ARRAYS_FORMAT!r}")
    if meta.get("format_version") != ARRAYS_FORMAT_VERSION:
        raise ConversionError(f"{name}: array export version {meta.get('format_version')!r}; this reader knows "
                              f"{ARRAYS_FORMAT_VERSION}")
    if not isinstance(meta.get("networks"), dict):
        raise ConversionError(f"{name}: meta lists no networks")
    return meta


def _network(record: Any, arrays: dict[str, np.ndarray], used: set[str], what: str) -> TFNetworkState:
    if not isinstance(record, dict):
        raise ConversionError(f"{what}: network missing from the export")
    variables = []
    for item in record.get("variables") or []:
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
            raise ConversionError(f"{what}: malformed variable entry {item!r}")
        var_name, key = item
        if key not in arrays:
            raise ConversionError(f"{what}: variable {var_name} refers to missing array {key!r}")
        if key in used:
            raise ConversionError(f"{what}: array {key!r} is named twice")
        value = arrays[key]
        if value.dtype.kind not in "fiub":
            raise ConversionError(f"{what}: variable {var_name} has dtype {value.dtype}, not a number")
        used.add(key)
        variables.append((var_name, value))
    components = record.get("components") or {}
    if not isinstance(components, dict):
        raise ConversionError(f"{what}: malformed components")
    state = {"version": record.get("version"), "name": record.get("name"),
             "static_kwargs": dict(record.get("static_kwargs") or {}), "build_module_src": "",
             "build_func_name": record.get("build_func_name"),
             "components": {key: _network(comp, arrays, used, f"{what}/{key}") for key, comp in components.items()},
             "variables": variables}
    return TFNetworkState(state)
