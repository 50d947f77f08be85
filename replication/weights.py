"""Registry of the official weight files (env/weights.toml): where each lives, how to get it, and its sha256 check.

Nothing here touches the network unless ``download`` is called explicitly (``resolve(name, download=True)`` or the
``download`` CLI command). A missing file is a one-line :class:`WeightError` that names the file, its URL, the expected
sha256 and the exact path to put it; a file whose hash differs is an error naming both hashes.

Environment: ``NADA_WEIGHTS_DIR`` (default ``<repo>/cache/weights``), ``NADA_WEIGHTS_TOML`` (default
``<repo>/env/weights.toml``). Hashes no public source states are recorded on first download or first use in the lock
file next to the registry (``env/weights.lock.toml``) and checked from then on.

CLI::

    python -m replication.weights list
    python -m replication.weights path ViT-B/32
    python -m replication.weights verify stylegan2-ffhq-config-f
    python -m replication.weights download stylegan2-church-config-f
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import sys
import tempfile
import time
import tomllib
import urllib.request
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from replication.checkpoint import sha256_file
from replication.runio import REPO_ROOT

KINDS = ("generator", "clip", "inception", "alexnet", "vgg", "evaluator", "test-fixture", "image-set")
FORMATS = ("tf-stylegan2", "stylegan2-ada-pytorch", "rosinality", "nada-replication-checkpoint", "clip-jit",
           "torch-state-dict", "golden-tensors", "image-file")  # image-file: an image-set of one target image
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class WeightError(ValueError):
    """A registry weight is unknown, missing, or does not match its sha256; the message is one line."""


@dataclass(frozen=True)
class WeightEntry:
    """One official weight file: what it is, where it comes from, and how to check it."""

    name: str
    kind: str  # generator | clip | inception | alexnet | vgg | evaluator | test-fixture | image-set
    format: str  # tf-stylegan2 | stylegan2-ada-pytorch | rosinality | clip-jit | torch-state-dict ...
    url: str
    filename: str  # file name inside weights_dir()
    source: str  # where the url and (if any) the sha256 come from
    resolution: int | None = None  # generators only
    sha256: str | None = None  # only where a public source states it
    sha256_prefix: str | None = None  # where a source states only a prefix (torch.hub file-name convention)
    mirrors: tuple[str, ...] = ()
    description: str = ""
    repo_path: str | None = None  # shipped in this repository at this path (the mini world's weights)
    recipe: str = ""  # the command that retrains a shipped weight

    @property
    def path(self) -> Path:
        """Where this file is expected: weights_dir() / filename, or the repository path of a shipped file."""
        return REPO_ROOT / self.repo_path if self.repo_path else weights_dir() / self.filename


def weights_dir() -> Path:
    """$NADA_WEIGHTS_DIR, or <repo>/cache/weights."""
    env = os.environ.get("NADA_WEIGHTS_DIR")
    return Path(env).expanduser() if env else REPO_ROOT / "cache" / "weights"


def converted_dir() -> Path:
    """<repo>/cache/converted: where `make convert` writes paper generators and where shifts find them."""
    return REPO_ROOT / "cache" / "converted"


def registry_path() -> Path:
    """$NADA_WEIGHTS_TOML, or <repo>/env/weights.toml."""
    env = os.environ.get("NADA_WEIGHTS_TOML")
    return Path(env).expanduser() if env else REPO_ROOT / "env" / "weights.toml"


def lock_path() -> Path:
    """The lock file beside the registry (weights.toml -> weights.lock.toml) holding first-seen hashes."""
    reg = registry_path()
    return reg.with_name(reg.stem + ".lock.toml")


def _entry_from_table(name: str, table: dict[str, Any], where: Path) -> WeightEntry:
    known = {f.name for f in fields(WeightEntry)} - {"name"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise WeightError(f"{where}: entry {name!r} has unknown field(s) {unknown}; valid fields: {sorted(known)}")
    missing = [k for k in ("kind", "format", "url", "filename", "source") if k not in table]
    if missing:
        raise WeightError(f"{where}: entry {name!r} lacks required field(s) {missing}")
    values = dict(table)
    values["mirrors"] = tuple(values.get("mirrors", ()))
    entry = WeightEntry(name=name, **values)
    if entry.kind not in KINDS:
        raise WeightError(f"{where}: entry {name!r} has kind {entry.kind!r}; use one of {list(KINDS)}")
    if entry.format not in FORMATS:
        raise WeightError(f"{where}: entry {name!r} has format {entry.format!r}; use one of {list(FORMATS)}")
    if entry.sha256 is not None and not _HEX64.match(entry.sha256):
        raise WeightError(f"{where}: entry {name!r} sha256 must be 64 lowercase hex digits")
    if entry.kind == "generator" and not isinstance(entry.resolution, int):
        raise WeightError(f"{where}: generator entry {name!r} needs an integer resolution")
    if "/" in entry.filename or "\\" in entry.filename or entry.filename in ("", ".", ".."):
        raise WeightError(f"{where}: entry {name!r} filename must be a bare file name, got {entry.filename!r}")
    return entry


def registry() -> dict[str, WeightEntry]:
    """Every entry of the registry TOML, by name."""
    path = registry_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightError(f"weight registry not found: {path} (set NADA_WEIGHTS_TOML or restore env/weights.toml)") \
            from None
    except tomllib.TOMLDecodeError as exc:
        raise WeightError(f"weight registry {path} is not valid TOML: {exc}") from None
    tables = data.get("weights")
    if not isinstance(tables, dict):
        raise WeightError(f"weight registry {path} has no [weights.<name>] tables")
    return {name: _entry_from_table(name, table, path) for name, table in tables.items()}


def get_entry(name: str) -> WeightEntry:
    """The registry entry called ``name``, or a WeightError listing the known names."""
    entries = registry()
    if name not in entries:
        raise WeightError(f"unknown weight {name!r}; known: {', '.join(sorted(entries))}")
    return entries[name]


# ---------------------------------------------------------------------------------------------------------------------
# Lock file (first-seen hashes) and the in-process hash cache.


def _read_lock() -> dict[str, dict[str, Any]]:
    path = lock_path()
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise WeightError(f"lock file {path} is not valid TOML ({exc}); fix or delete it") from None
    return {k: v for k, v in (data.get("weights") or {}).items() if isinstance(v, dict)}


def _toml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def _atomic_write_text(path: Path, text: str) -> None:
    from replication.runio import atomic_write_text

    atomic_write_text(path, text)


def _record_lock(entry: WeightEntry, sha256: str) -> None:
    locked = _read_lock()
    locked[entry.name] = {"filename": entry.filename, "sha256": sha256,
                          "recorded_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    lines = ["# sha256 of weights whose hash no public source states, recorded the first time each file was seen.",
             "# Written by replication/weights.py; commit it so every later copy of the file is checked.", ""]
    for name in sorted(locked):
        lines.append(f"[weights.{_toml_str(name)}]")
        for key in ("filename", "sha256", "recorded_utc"):
            if key in locked[name]:
                lines.append(f"{key} = {_toml_str(str(locked[name][key]))}")
        lines.append("")
    _atomic_write_text(lock_path(), "\n".join(lines))


def expected_sha256(entry: WeightEntry) -> tuple[str | None, str]:
    """(sha256, where it comes from): the registry's published hash, else the lock file's, else (None, reason)."""
    if entry.sha256:
        return entry.sha256, "registry"
    locked = _read_lock().get(entry.name)
    if locked and locked.get("sha256") and locked.get("filename", entry.filename) == entry.filename:
        return str(locked["sha256"]), f"recorded in {lock_path().name}"
    return None, "unknown, recorded on first download"


# No hash is kept on disk: any on-disk key (size, mtime, even ctime) sits next to a file anyone who can write the
# weight can also rewrite, and a result's provenance must come from its bytes, so every process hashes what it uses
# (about a second per GB). Within one process a repeated check is served from memory, keyed on the stat fields that
# any write changes and a user cannot set back (st_ctime_ns; with st_dev, st_ino, st_size, st_mtime_ns). A file
# changed in the last few seconds is never served from memory: a write within the same timestamp tick as the hash
# can leave every stat field as it was (coarse ctime on older kernels, 2 s on FAT).
_RECENT_NS = 5_000_000_000
_HASHES: dict[tuple[int, ...], str] = {}


def _stat_key(path: Path) -> tuple[int, ...]:
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def file_sha256(path: Path) -> str:
    """sha256 of ``path``'s bytes; a repeated call in this process on an unchanged file answers from memory."""
    key = _stat_key(path)
    if key in _HASHES:
        return _HASHES[key]
    started_ns = time.time_ns()
    digest = sha256_file(path)
    if _stat_key(path) == key and started_ns - key[-1] > _RECENT_NS:
        _HASHES[key] = digest
    return digest


# ---------------------------------------------------------------------------------------------------------------------
# Public API.


def missing_message(entry: WeightEntry) -> str:
    """The one-line explanation of where a missing file comes from and where to put it."""
    sha, _ = expected_sha256(entry)
    return (f"weight {entry.name!r} is missing: download {entry.filename} from {entry.url} "
            f"(sha256 {sha or 'unknown, recorded on first download'}) and put it at {entry.path}, "
            f"or run `python -m replication.weights download {entry.name}`")


def check_file(entry: WeightEntry, path: Path | None = None) -> Path:
    """Check a present file against the expected sha256 (or record it on first use); return its path."""
    path = Path(path) if path is not None else entry.path
    _checked_sha256(entry, path)
    return path


def _checked_sha256(entry: WeightEntry, path: Path) -> str:
    if not path.is_file():
        raise WeightError(missing_message(entry))
    actual = file_sha256(path)
    expected, where = expected_sha256(entry)
    if expected is not None:
        if actual != expected:
            raise WeightError(f"weight {entry.name!r} at {path} has sha256 {actual} but {expected} is expected "
                              f"({where}); the file is corrupt or a different file: delete it and download it again "
                              f"from {entry.url}")
        return actual
    if entry.sha256_prefix and not actual.startswith(entry.sha256_prefix):
        raise WeightError(f"weight {entry.name!r} at {path} has sha256 {actual} but its published prefix is "
                          f"{entry.sha256_prefix}; delete it and download it again from {entry.url}")
    _record_lock(entry, actual)
    print(f"warning: no published sha256 for {entry.name!r}; recorded {actual} in {lock_path()} "
          f"(every later copy is checked against it)", file=sys.stderr)
    return actual


def resolve(name: str, *, download: bool = False) -> Path:
    """Path of registry weight ``name`` in weights_dir(), hash-checked; downloads only when download=True."""
    entry = get_entry(name)
    if not entry.path.is_file():
        if not download:
            raise WeightError(missing_message(entry))
        return _fetch(entry)
    return check_file(entry)


def verify(name: str) -> str:
    """Hash-check a present file; returns the sha256 of the bytes just checked."""
    entry = get_entry(name)
    return _checked_sha256(entry, entry.path)


def download(name: str, *, timeout: float = 60.0) -> Path:
    """Fetch ``name`` from its URL into weights_dir() (temp file, hash check, os.replace). Never called by tests."""
    return _fetch(get_entry(name), timeout=timeout)


def _fetch(entry: WeightEntry, timeout: float = 60.0) -> Path:
    dest = entry.path
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(entry.url, timeout=timeout) as response:
            content_type = response.headers.get("Content-Type", "")
            if "text/html" in content_type:
                raise WeightError(f"{entry.url} answered with a web page, not the file (Google Drive asks for a "
                                  f"confirmation for large files); download it in a browser and put it at {dest}")
            while True:
                block = response.read(1 << 20)
                if not block:
                    break
                out.write(block)
        check_file(entry, tmp)
        os.replace(tmp, dest)
    except OSError as exc:
        raise WeightError(f"download of {entry.name!r} from {entry.url} failed ({exc}); put the file at {dest} "
                          f"by hand") from None
    finally:
        tmp.unlink(missing_ok=True)
    return check_file(entry, dest)


# ---------------------------------------------------------------------------------------------------------------------
# CLI.


def _list_lines() -> list[str]:
    lines = []
    for name, entry in sorted(registry().items()):
        sha, where = expected_sha256(entry)
        state = "present" if entry.path.is_file() else "missing"
        res = f"{entry.resolution}px" if entry.resolution else "-"
        lines.append(f"{name:28s} {entry.kind:10s} {entry.format:22s} {res:7s} {state:8s} "
                     f"sha256={'known' if sha else 'unknown'}  {entry.path}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """``list | path NAME | verify NAME | download NAME``; errors print one line and exit 2."""
    parser = argparse.ArgumentParser(prog="python -m replication.weights", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every registry entry and whether its file is present")
    for cmd, text in (("path", "print the checked path of a present weight"),
                      ("verify", "check a present weight's sha256"),
                      ("download", "fetch a weight from its URL into the weights dir")):
        sub.add_parser(cmd, help=text).add_argument("name")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            print("\n".join(_list_lines()))
        elif args.command == "path":
            print(resolve(args.name))
        elif args.command == "verify":
            print(f"ok {args.name} sha256={verify(args.name)}")
        elif args.command == "download":
            print(download(args.name))
    except WeightError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
