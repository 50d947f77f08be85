"""Convert NVIDIA StyleGAN2 weights and rosinality .pt files to our checkpoint; `--all` is what `make convert` runs."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from replication.checkpoint import FORMAT_NAME, CheckpointError, make_provenance, save_checkpoint
from replication.conversion.ada import read_ada
from replication.conversion.common import (
    FORMAT_ADA,
    FORMAT_ROSINALITY,
    FORMAT_TF,
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
CLI_FORMATS = ("auto", FORMAT_TF, FORMAT_ADA, FORMAT_ROSINALITY)
# Registry spellings of the same formats.
_REGISTRY_FORMATS = {"tf-stylegan2": FORMAT_TF, "stylegan2-ada-pytorch": FORMAT_ADA, "rosinality": FORMAT_ROSINALITY,
                     FORMAT_NAME: FORMAT_ROSINALITY}


def convert(src_path: str | os.PathLike, dst_path: str | os.PathLike, *, fmt: str = "auto", which: str = "G_ema",
            include_d: bool = True, expected_resolution: int | None = None,
            source_sha256: str | None = None) -> Path:
    """Convert ``src_path`` into our checkpoint at ``dst_path``; nothing is written unless everything converts.

    fmt: auto | tf-stylegan2 | ada-pytorch | rosinality. which: "G_ema" (the EMA generator NADA uses) or "G" (the
    raw one); the other is stored as ``g`` when the source has it. include_d: also convert the discriminator.
    expected_resolution: fail (ConversionError) if the generator's resolution differs.
    """
    src_path, dst_path = Path(src_path), Path(dst_path)
    fmt = _REGISTRY_FORMATS.get(fmt, fmt)
    if fmt not in CLI_FORMATS:
        raise ConversionError(f"unknown format {fmt!r}; use one of {', '.join(CLI_FORMATS)}")
    if which not in ("G_ema", "G"):
        raise ConversionError(f"which must be 'G_ema' or 'G', got {which!r}")
    detected, obj = load_source(src_path)
    if fmt != "auto" and fmt != detected:
        raise ConversionError(f"{src_path.name} is a {detected} file, not {fmt}; pass --format auto or {detected}")
    if detected == FORMAT_TF:
        nets = read_tf(obj, src_path.name, which=which, include_d=include_d, expected_resolution=expected_resolution)
    elif detected == FORMAT_ADA:
        nets = read_ada(obj, src_path.name, which=which, include_d=include_d, expected_resolution=expected_resolution)
    else:
        nets = read_rosinality(obj, src_path, include_d=include_d, expected_resolution=expected_resolution)
    latent_avg = None if nets.latent_avg is None else nets.latent_avg.reshape(-1)
    provenance = make_provenance(src_path, source_format=detected, converter_version=CONVERTER_VERSION,
                                 source_sha256=source_sha256)
    provenance["network"] = which
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
                log: Callable[[str], None] = print, warn: Callable[[str], None] | None = None) -> int:
    """Convert every present registry generator to ``out_dir/<name>.pt``; returns the CLI exit code (0 or 2)."""
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    out_dir = Path(out_dir) if out_dir is not None else converted_dir()
    failed = missing = 0
    for name, entry in sorted(registry().items()):
        if entry.kind != "generator" or entry.format == "nada-replication-checkpoint":
            continue  # shipped in our format already (the mini world's): nothing to convert
        if not entry.path.is_file():
            missing += 1
            warn(f"{'error' if require_all else 'missing'}: {missing_message(entry)}")
            continue
        dst = out_dir / f"{name}.pt"
        manifest = out_dir / f"{name}.json"
        try:
            check_file(entry)
            source_sha = file_sha256(entry.path)
            if _up_to_date(dst, manifest, source_sha):
                log(f"up to date: {dst}")
                continue
            try:
                convert(entry.path, dst, fmt=entry.format, expected_resolution=entry.resolution,
                        source_sha256=source_sha)
            except DiscriminatorConversionError as exc:
                # NADA needs only the generator; an unusual discriminator must not block it.
                warn(f"warning: {name}: discriminator not converted ({exc})")
                convert(entry.path, dst, fmt=entry.format, expected_resolution=entry.resolution,
                        source_sha256=source_sha, include_d=False)
            _write_manifest(manifest, name, entry.filename, source_sha, dst)
            log(f"converted: {entry.path} -> {dst}")
        except ValueError as exc:  # WeightError, ConversionError, UnsafePickleError, CheckpointError
            failed += 1
            warn(f"error: {name}: {exc}")
    if failed or (require_all and missing):
        return 2
    return 0


def _up_to_date(dst: Path, manifest: Path, source_sha: str) -> bool:
    if not dst.is_file() or not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (data.get("source_sha256") == source_sha and data.get("converter_version") == CONVERTER_VERSION
            and data.get("output_size") == dst.stat().st_size and data.get("output_mtime_ns") == dst.stat().st_mtime_ns)


def _write_manifest(manifest: Path, name: str, filename: str, source_sha: str, dst: Path) -> None:
    stat = dst.stat()
    record = {"name": name, "source_filename": filename, "source_sha256": source_sha,
              "converter_version": CONVERTER_VERSION, "output": dst.name, "output_size": stat.st_size,
              "output_mtime_ns": stat.st_mtime_ns}
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
    parser.add_argument("--compare-npz", default=None, metavar="NPZ",
                        help="instead of converting: compare SRC (a converted .pt) with a TF render from "
                             "legacy_tf_crosscheck.py and write a TF/ours/|diff| grid PNG to DST (default: next to "
                             "the npz)")
    args = parser.parse_args(argv)
    try:
        if args.all:
            if args.src or args.dst:
                raise ConversionError("--all takes no SRC/DST; use either `--all` or `SRC DST`")
            return convert_all(args.out_dir, require_all=args.require_all)
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
