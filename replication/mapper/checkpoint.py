"""Mapper checkpoints: our own format, and the original StyleCLIP/NADA mapper files."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from replication.mapper.config import MapperConfig, MapperError
from replication.mapper.model import LatentMapper
from replication.runio import atomic_torch_save

CHECKPOINT_FORMAT = "nada-replication/latent-mapper/v1"


def save_mapper(path: str | Path, mapper: LatentMapper, cfg: MapperConfig) -> None:
    """Write the mapper's weights, shape and config to `path` (temp file + rename: an existing file stays intact)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "n_latent": mapper.n_latent,
        "style_dim": mapper.style_dim,
        "config": cfg.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in mapper.state_dict().items()},
    }
    atomic_torch_save(payload, Path(path))


def _read_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MapperError(f"no mapper checkpoint at {path}; train one with train_mapper(..., run_dir=...) first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure, including a refused foreign object, means "not ours"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MapperError(f"{path} is not a loadable mapper checkpoint ({first_line}); "
                          "only save_mapper files and StyleCLIP/NADA mapper checkpoints are accepted") from None
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise MapperError(f"{path} holds no mapper state_dict; expected a file written by save_mapper")
    return payload


def _from_styleclip(payload: dict[str, Any], path: Path) -> tuple[LatentMapper, MapperConfig, dict[str, Any]]:
    """Config and state dict of an original StyleCLIP/NADA mapper checkpoint ({'state_dict', 'opts'})."""
    opts = payload["opts"]
    state = {k[len("mapper."):]: v for k, v in payload["state_dict"].items() if k.startswith("mapper.")}
    weight_keys = [k for k in state if k.endswith("mapping.1.weight")]
    if not weight_keys or "stylegan_size" not in opts:
        raise MapperError(f"{path} looks like a StyleCLIP checkpoint but has no mapper weights or stylegan_size")
    style_dim = int(state[weight_keys[0]].shape[1])
    n_latent = 2 * int(math.log2(int(opts["stylegan_size"]))) - 2
    types = {"LevelsMapper": "levels", "SingleMapper": "single"}
    if opts.get("mapper_type", "LevelsMapper") not in types:
        raise MapperError(f"{path}: mapper_type {opts.get('mapper_type')!r} is unknown; expected one of {list(types)}")
    cfg = MapperConfig(
        description=str(opts.get("description") or "unknown"),
        mapper_type=types[opts.get("mapper_type", "LevelsMapper")],
        no_coarse=bool(opts.get("no_coarse_mapper", False)), no_medium=bool(opts.get("no_medium_mapper", False)),
        no_fine=bool(opts.get("no_fine_mapper", False)), lambda_clip=float(opts.get("clip_lambda", 1.0)),
        lambda_l2=float(opts.get("latent_l2_lambda", 0.8)), lambda_norm=float(opts.get("norm_lambda", 0.0)),
        lambda_id=float(opts.get("id_lambda", 0.1)), lr=float(opts.get("learning_rate", 0.5)),
        batch=int(opts.get("batch_size", 2)), steps=int(opts.get("max_steps", 50001)),
        optimizer=str(opts.get("optim_name", "ranger")), mode="faithful")
    return LatentMapper.from_config(n_latent, style_dim, cfg), cfg, state


def load_mapper(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[LatentMapper, MapperConfig]:
    """Load a mapper written by save_mapper, or an original StyleCLIP/NADA mapper checkpoint, with weights_only=True."""
    path = Path(path)
    payload = _read_checkpoint(path)
    if "opts" in payload and payload.get("format") != CHECKPOINT_FORMAT:
        mapper, cfg, state = _from_styleclip(payload, path)
    elif payload.get("format") == CHECKPOINT_FORMAT:
        try:
            cfg = MapperConfig.from_dict(payload["config"])
            mapper = LatentMapper.from_config(int(payload["n_latent"]), int(payload["style_dim"]), cfg)
        except (KeyError, TypeError) as exc:
            raise MapperError(f"{path} is a damaged mapper checkpoint (missing or bad field {exc})") from None
        state = payload["state_dict"]
    else:
        raise MapperError(f"{path} has format {payload.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    try:
        mapper.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise MapperError(f"{path}: weights do not fit the mapper its config describes "
                          f"({str(exc).splitlines()[0]})") from None
    return mapper.to(map_location).eval(), cfg
