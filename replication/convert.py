"""Convert NVIDIA StyleGAN2 weights and rosinality .pt files to our checkpoint; `--all` is what `make convert` runs.

`--all` converts every registry generator present in the weights dir with the TF-free reader; with the legacy TF
environment and ``--nvidia-tf-repo`` it also cross-checks every TF pickle against NVIDIA's own graph
(:mod:`replication.conversion.crosscheck`), and ``--converter tf`` has NVIDIA's unpickler export the arrays instead.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from replication.checkpoint import FORMAT_NAME, CheckpointError, load_checkpoint, make_provenance, save_checkpoint
from replication.conversion import crosscheck as xcheck
from replication.conversion.ada import read_ada
from replication.conversion.common import (
    FORMAT_ADA,
    FORMAT_ROSINALITY,
    FORMAT_TF,
    FORMAT_TF_ARRAYS,
    ConversionError,
    DiscriminatorConversionError,
)
from replication.conversion.compare import compare_with_tf_render
from replication.conversion.rosinality import read_rosinality
from replication.conversion.sources import load_source
from replication.conversion.tf import read_tf
from replication.safe_unpickle import UnsafePickleError
from replication.weights import WeightError, check_file, converted_dir, file_sha256, missing_message, registry

CONVERTER_VERSION = "1.0.0"
CLI_FORMATS = ("auto", FORMAT_TF, FORMAT_ADA, FORMAT_ROSINALITY, FORMAT_TF_ARRAYS)
# make convert's CONVERTER: our restricted reader (default) or NVIDIA's unpickler in the legacy env (TF pickles only).
CONVERTERS = ("tf-free", "tf")
_READERS = {"tf-free": "restricted unpickler (no TensorFlow)", "tf": "NVIDIA's TF unpickler (legacy env), plain arrays"}
# Registry spellings of the same formats.
_REGISTRY_FORMATS = {"tf-stylegan2": FORMAT_TF, "stylegan2-ada-pytorch": FORMAT_ADA, "rosinality": FORMAT_ROSINALITY,
                     FORMAT_NAME: FORMAT_ROSINALITY}


def convert(src_path: str | os.PathLike, dst_path: str | os.PathLike, *, fmt: str = "auto", which: str = "G_ema",
            include_d: bool = True, expected_resolution: int | None = None,
            source_sha256: str | None = None) -> Path:
    """Convert ``src_path`` into our checkpoint at ``dst_path``; nothing is written unless everything converts.

    fmt: auto | tf-stylegan2 | ada-pytorch | rosinality | tf-arrays (a TF pickle exported as plain arrays by
    ``legacy_tf_crosscheck.py --export-arrays``; its provenance names the pickle it came from).
    which: "G_ema" (the EMA generator NADA uses) or "G" (the raw one); the other is stored as ``g`` when the source
    has it. include_d: also convert the discriminator.
    expected_resolution: fail (ConversionError) if the generator's resolution differs.
    """
    src_path, dst_path = Path(src_path), Path(dst_path)
    fmt = _REGISTRY_FORMATS.get(fmt, fmt)
    if fmt not in CLI_FORMATS:
        raise ConversionError(f"unknown format {fmt!r}; use one of {', '.join(CLI_FORMATS)}")
    if which not in ("G_ema", "G"):
        raise ConversionError(f"which must be 'G_ema' or 'G', got {which!r}")
    detected, obj = load_source(src_path, expected=fmt)
    if fmt != "auto" and fmt != detected:
        raise ConversionError(f"{src_path.name} is a {detected} file, not {fmt}; pass --format auto or {detected}")
    provenance_path, reader = src_path, _READERS["tf-free"]
    if detected == FORMAT_TF_ARRAYS:
        if source_sha256 is not None and source_sha256 != obj.source_sha256:
            raise ConversionError(f"{src_path.name} was exported from a file with sha256 {obj.source_sha256}, not "
                                  f"{source_sha256}")
        provenance_path, source_sha256, reader = Path(obj.source_filename), obj.source_sha256, _READERS["tf"]
        detected = FORMAT_TF
        nets = read_tf(obj.networks, provenance_path.name, which=which, include_d=include_d,
                       expected_resolution=expected_resolution)
    elif detected == FORMAT_TF:
        nets = read_tf(obj, src_path.name, which=which, include_d=include_d, expected_resolution=expected_resolution)
    elif detected == FORMAT_ADA:
        nets = read_ada(obj, src_path.name, which=which, include_d=include_d, expected_resolution=expected_resolution)
    else:
        nets = read_rosinality(obj, src_path, include_d=include_d, expected_resolution=expected_resolution)
    latent_avg = None if nets.latent_avg is None else nets.latent_avg.reshape(-1)
    provenance = make_provenance(provenance_path, source_format=detected, converter_version=CONVERTER_VERSION,
                                 source_sha256=source_sha256)
    provenance["network"] = which
    provenance["reader"] = reader
    try:
        return save_checkpoint(dst_path, generator_config=nets.generator_config, g_ema=nets.g_ema,
                               latent_avg=latent_avg, provenance=provenance, g=nets.g, d=nets.d,
                               discriminator_config=nets.discriminator_config, extra=_plain(nets.extra))
    except CheckpointError as exc:
        raise ConversionError(str(exc)) from None


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def convert_all(out_dir: str | os.PathLike | None = None, *, require_all: bool = False,
                log: Callable[[str], None] = print, warn: Callable[[str], None] | None = None,
                converter: str = "tf-free", nvidia_repo: str | os.PathLike | None = None,
                legacy_python: str | os.PathLike | None = None, tolerance: float = xcheck.TOLERANCE) -> int:
    """Convert every present registry generator to ``out_dir/<name>.pt``; returns the CLI exit code (0 or 2).

    With a legacy TF environment and ``nvidia_repo``, every TF pickle is also rendered by NVIDIA's graph and compared
    (``<name>.crosscheck.json`` and ``.png`` next to the checkpoint); a file above ``tolerance`` is an error and its
    checkpoint is not installed (a previous one stays). ``converter="tf"`` builds TF pickles from NVIDIA's own
    unpickler's array export instead of the restricted reader (it needs the legacy environment).
    """
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    if converter not in CONVERTERS:
        warn(f"error: unknown converter {converter!r}; use one of {', '.join(CONVERTERS)}")
        return 2
    out_dir = Path(out_dir) if out_dir is not None else converted_dir()
    # Generators shipped in our format already (the mini world's) have nothing to convert.
    entries = [(name, entry) for name, entry in sorted(registry().items())
               if entry.kind == "generator" and entry.format != "nada-replication-checkpoint"]
    legacy, reason = xcheck.find_legacy_tf(nvidia_repo, legacy_python)
    if converter == "tf" and legacy is None:
        warn(f"error: CONVERTER=tf needs the legacy TF 1.15 environment and NVIDIA's code ({reason}); "
             f"{xcheck.ENABLE_HINT}")
        return 2
    if legacy is None and any(_is_tf(e) and e.path.is_file() for _, e in entries):
        log(xcheck.skip_line(reason))
    failed = missing = 0
    for name, entry in entries:
        if not entry.path.is_file():
            missing += 1
            warn(f"{'error' if require_all else 'missing'}: {missing_message(entry)}")
            continue
        dst = out_dir / f"{name}.pt"
        manifest = out_dir / f"{name}.json"
        check = legacy if _is_tf(entry) else None
        route = converter if _is_tf(entry) else "tf-free"
        try:
            check_file(entry)
            source_sha = file_sha256(entry.path)
            if _up_to_date(dst, manifest, source_sha, route, check is not None):
                log(f"up to date: {dst}")
                continue
            out_dir.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{name}.staging-"))
            try:
                record = _convert_staged(name, entry, source_sha, route, check, staging, dst, tolerance, warn)
                os.replace(staging / dst.name, dst)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            _write_manifest(manifest, name, entry.filename, source_sha, dst, route, record)
            log(f"converted: {entry.path} -> {dst}" + (_summary(record) if record else ""))
        except ValueError as exc:  # WeightError, ConversionError, UnsafePickleError, CheckpointError
            failed += 1
            warn(f"error: {name}: {exc}")
    if failed or (require_all and missing):
        return 2
    return 0


def _is_tf(entry: Any) -> bool:
    return _REGISTRY_FORMATS.get(entry.format, entry.format) == FORMAT_TF


def _convert_staged(name: str, entry: Any, source_sha: str, route: str, legacy: xcheck.LegacyTF | None,
                    staging: Path, dst: Path, tolerance: float, warn: Callable[[str], None]) -> dict | None:
    """Convert into ``staging/<dst.name>``, cross-check it when ``legacy`` is given; returns the cross-check record.

    Raises ConversionError (one line) above tolerance, after writing the evidence next to ``dst``.
    """
    staged = staging / dst.name
    src, fmt = entry.path, entry.format
    npzs: list[Path] = []
    if route == "tf":  # one legacy process: NVIDIA's unpickler exports the arrays and its graph renders the cases
        src, fmt = staging / "arrays.npz", FORMAT_TF_ARRAYS
        npzs = xcheck.render_with_nvidia(legacy, entry.path, staging / "renders", export_arrays=src)

    def run(include_d: bool) -> None:
        convert(src, staged, fmt=fmt, expected_resolution=entry.resolution, source_sha256=source_sha,
                include_d=include_d)

    try:
        run(True)
    except DiscriminatorConversionError as exc:
        # NADA needs only the generator; an unusual discriminator must not block it.
        warn(f"warning: {name}: discriminator not converted ({exc})")
        run(False)
    if legacy is None:
        return None
    has_d = load_checkpoint(staged).d is not None
    if not npzs:
        npzs = xcheck.render_with_nvidia(legacy, entry.path, staging / "renders", discriminator=has_d)
    json_path, grid = dst.with_name(f"{name}.crosscheck.json"), dst.with_name(f"{name}.crosscheck.png")
    record = xcheck.crosscheck_record(staged, npzs, grid, tolerance=tolerance, use_d_scores=has_d)
    record.update({"name": name, "source_sha256": source_sha, "converter": route,
                   "checkpoint": dst.name, "checkpoint_sha256": file_sha256(staged),
                   "installed": bool(record["passed"]), "nvidia_repo": str(legacy.nvidia_repo)})
    xcheck.write_json(json_path, record)
    if not record["passed"]:
        raise ConversionError(xcheck.failure_line(record, json_path))
    return record


def _summary(record: dict) -> str:
    text = f" (cross-checked against NVIDIA's TF graph: max |diff| {record['max_abs_diff']:.2g}"
    if record.get("d_max_abs_diff") is not None:
        text += f", D {record['d_max_abs_diff']:.2g}"
    return text + f", {len(record['cases'])} renders)"


def _up_to_date(dst: Path, manifest: Path, source_sha: str, route: str = "tf-free",
                need_crosscheck: bool = False) -> bool:
    if not dst.is_file() or not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if data.get("converter", "tf-free") != route or (need_crosscheck and not data.get("crosschecked")):
        return False
    return (data.get("source_sha256") == source_sha and data.get("converter_version") == CONVERTER_VERSION
            and data.get("output_size") == dst.stat().st_size and data.get("output_mtime_ns") == dst.stat().st_mtime_ns)


def _write_manifest(manifest: Path, name: str, filename: str, source_sha: str, dst: Path, route: str = "tf-free",
                    crosscheck: dict | None = None) -> None:
    stat = dst.stat()
    record = {"name": name, "source_filename": filename, "source_sha256": source_sha,
              "converter_version": CONVERTER_VERSION, "converter": route, "output": dst.name,
              "output_size": stat.st_size, "output_mtime_ns": stat.st_mtime_ns,
              "crosschecked": crosscheck is not None,
              "crosscheck_max_abs_diff": None if crosscheck is None else crosscheck["max_abs_diff"]}
    fd, tmp = tempfile.mkstemp(dir=manifest.parent, prefix=f".{manifest.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1)
    os.replace(tmp, manifest)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; errors print one `error: ...` line to stderr and exit 2."""
    parser = argparse.ArgumentParser(prog="python -m replication.convert",
                                     description="Convert StyleGAN2 weights to the replication checkpoint format.")
    parser.add_argument("src", nargs="?", help="source file (TF pickle, stylegan2-ada-pytorch pickle, rosinality .pt)")
    parser.add_argument("dst", nargs="?", help="destination .pt")
    parser.add_argument("--format", default="auto", choices=CLI_FORMATS, dest="fmt")
    parser.add_argument("--which", default="G_ema", choices=("G_ema", "G"), help="which generator becomes g_ema")
    parser.add_argument("--no-discriminator", action="store_true", help="do not convert D")
    parser.add_argument("--resolution", type=int, default=None, help="fail unless the generator has this resolution")
    parser.add_argument("--all", action="store_true", help="convert every registry generator present in the "
                                                           "weights dir (make convert)")
    parser.add_argument("--require-all", action="store_true", help="with --all: a missing file is an error")
    parser.add_argument("--out-dir", default=None, help="with --all: output folder (default <repo>/cache/converted)")
    parser.add_argument("--converter", default="tf-free", choices=CONVERTERS,
                        help="with --all: how TF pickles are read: our restricted reader (tf-free) or NVIDIA's "
                             "unpickler in the legacy env, exported as plain arrays (tf)")
    parser.add_argument("--nvidia-tf-repo", default=None, metavar="DIR",
                        help="with --all: clone of NVlabs/stylegan2; with .venv-legacy, cross-check every TF pickle")
    parser.add_argument("--legacy-python", default=None, metavar="PY",
                        help="the legacy env's python (default .venv-legacy/bin/python)")
    parser.add_argument("--tolerance", type=float, default=xcheck.TOLERANCE,
                        help="with --all: the largest max |TF - ours| the cross-check accepts")
    parser.add_argument("--compare-npz", default=None, metavar="NPZ",
                        help="instead of converting: compare SRC (a converted .pt) with a TF render from "
                             "legacy_tf_crosscheck.py and write a TF/ours/|diff| grid PNG to DST (default: next to "
                             "the npz)")
    args = parser.parse_args(argv)
    try:
        if args.all:
            if args.src or args.dst:
                raise ConversionError("--all takes no SRC/DST; use either `--all` or `SRC DST`")
            return convert_all(args.out_dir, require_all=args.require_all, converter=args.converter,
                               nvidia_repo=args.nvidia_tf_repo, legacy_python=args.legacy_python,
                               tolerance=args.tolerance)
        if args.compare_npz:
            if not args.src:
                raise ConversionError("--compare-npz needs the converted .pt as SRC")
            result = compare_with_tf_render(args.src, args.compare_npz, args.dst)
            print(json.dumps(result))
            return 0
        if not args.src or not args.dst:
            raise ConversionError("give SRC and DST (or --all); see --help")
        out = convert(args.src, args.dst, fmt=args.fmt, which=args.which, include_d=not args.no_discriminator,
                      expected_resolution=args.resolution)
        print(f"converted: {args.src} -> {out}")
        return 0
    except (ConversionError, UnsafePickleError, CheckpointError, WeightError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
