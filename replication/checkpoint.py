"""Our generator checkpoint format (one weights_only-loadable .pt dict), its atomic writer, and loaders for it and rosinality files."""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from replication.runio import atomic_torch_save
from replication.networks import (
    Discriminator,
    DiscriminatorConfig,
    Generator,
    GeneratorConfig,
)

FORMAT_NAME = "nada-replication-checkpoint"
FORMAT_VERSION = 1
ROSINALITY_FORMAT = "rosinality"
# Keys of a rosinality training checkpoint that hold optimiser or run state: accepted, not used.
_ROSINALITY_OPTIONAL = ("g", "d", "g_optim", "d_optim", "args", "ada_aug_p", "latent_avg")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, of an unknown format, or does not fit the architecture."""


@dataclass(frozen=True)
class Checkpoint:
    """A loaded generator checkpoint: config, EMA weights, W average and where the weights came from."""

    path: Path
    source_format: str  # FORMAT_NAME for our files, ROSINALITY_FORMAT for plain rosinality .pt dicts
    generator_config: GeneratorConfig
    g_ema: dict[str, torch.Tensor]
    latent_avg: torch.Tensor | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    g: dict[str, torch.Tensor] | None = None
    d: dict[str, torch.Tensor] | None = None
    discriminator_config: DiscriminatorConfig | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def resolution(self) -> int:
        return int(self.generator_config.size)


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks so large weights never sit in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def make_provenance(source_path: str | os.PathLike, *, source_format: str, converter_version: str | None = None,
                    source_sha256: str | None = None) -> dict[str, Any]:
    """Provenance record for a checkpoint made from ``source_path`` (only its basename is stored)."""
    source_path = Path(source_path)
    return {
        "source_path": source_path.name,
        "source_sha256": source_sha256 if source_sha256 is not None else sha256_file(source_path),
        "source_format": source_format,
        "converter_version": converter_version,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Expected shapes of a config, from a parameter-free model.


def _expected_shapes(model_cls: type, cfg: Any) -> dict[str, tuple[int, ...]]:
    # Building on the meta device allocates nothing, so checking a 1024 px config is cheap.
    try:
        with torch.device("meta"):
            model = model_cls(cfg)
    except Exception:  # noqa: BLE001 - a constructor that needs real data falls back to CPU
        model = model_cls(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def expected_generator_shapes(cfg: GeneratorConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of ``Generator(cfg)`` with its shape."""
    return _expected_shapes(Generator, cfg)


def expected_discriminator_shapes(cfg: DiscriminatorConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of ``Discriminator(cfg)`` with its shape."""
    return _expected_shapes(Discriminator, cfg)


def check_state_dict(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], what: str) -> None:
    """Raise CheckpointError naming missing, unexpected and wrongly shaped keys of ``state``."""
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{what} is a {type(state).__name__}, expected a state dict")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} != {expected[k]}" for k in expected
             if k in state and (not isinstance(state[k], torch.Tensor) or tuple(state[k].shape) != expected[k])]
    problems = []
    if missing:
        problems.append(f"missing {_short_list(missing)}")
    if unexpected:
        problems.append(f"unexpected {_short_list(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes {_short_list(wrong)}")
    if problems:
        raise CheckpointError(f"{what} does not fit its architecture: " + "; ".join(problems))


def _short_list(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)})"


# ---------------------------------------------------------------------------------------------------------------------
# Inferring configs from rosinality state dicts.


def infer_generator_config(state: Mapping[str, torch.Tensor], lr_mlp: float = 0.01) -> GeneratorConfig:
    """GeneratorConfig of a rosinality ``g_ema`` state dict, read from its key counts and weight shapes."""
    try:
        n_mlp = 0
        while f"style.{n_mlp + 1}.weight" in state:
            n_mlp += 1
        if n_mlp == 0:
            raise CheckpointError("no mapping layers (style.1.weight) in the generator state dict")
        style_dim = int(state["style.1.weight"].shape[1])
        n_rgb = 0
        while f"to_rgbs.{n_rgb}.conv.weight" in state:
            n_rgb += 1
        size = 2 ** (n_rgb + 2)
        channels = [(4, int(state["input.input"].shape[1]))]
        for i in range(n_rgb):
            channels.append((2 ** (i + 3), int(state[f"convs.{2 * i}.conv.weight"].shape[1])))
    except KeyError as exc:
        raise CheckpointError(f"generator state dict lacks {exc.args[0]!r}; is this a rosinality g_ema?") from None
    _check_default_blur(state, "convs.0.conv.blur.kernel")
    return GeneratorConfig(size=size, style_dim=style_dim, n_mlp=n_mlp, lr_mlp=lr_mlp, channels=tuple(channels))


def infer_discriminator_config(state: Mapping[str, torch.Tensor]) -> DiscriminatorConfig:
    """DiscriminatorConfig of a rosinality ``d`` state dict, read from its key counts and weight shapes."""
    try:
        n_blocks = 0
        while f"convs.{n_blocks + 1}.conv1.0.weight" in state:
            n_blocks += 1
        size = 2 ** (n_blocks + 2)
        channels = [(size, int(state["convs.0.0.weight"].shape[0]))]
        for i in range(1, n_blocks + 1):
            channels.append((size // 2 ** i, int(state[f"convs.{i}.conv2.1.weight"].shape[0])))
    except KeyError as exc:
        raise CheckpointError(f"discriminator state dict lacks {exc.args[0]!r}; is this a rosinality d?") from None
    return DiscriminatorConfig(size=size, channels=tuple(sorted(channels)))


def _check_default_blur(state: Mapping[str, torch.Tensor], key: str) -> None:
    if key not in state:
        return
    k1 = torch.tensor([1.0, 3.0, 3.0, 1.0])
    expected = torch.outer(k1, k1)
    expected = expected / expected.sum() * 4
    if tuple(state[key].shape) != (4, 4) or not torch.allclose(state[key].float(), expected, atol=1e-6):
        raise CheckpointError(f"{key} is not the [1,3,3,1] blur kernel; other blur kernels are not supported")


# ---------------------------------------------------------------------------------------------------------------------
# Saving.


def _cpu_state(state: Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{what} must be a state dict (mapping of name -> tensor), got {type(state).__name__}")
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{what}[{key!r}] is a {type(value).__name__}, expected a tensor")
        # contiguous() materialises strided views so the file holds exactly the tensor, not its whole storage.
        out[str(key)] = value.detach().to("cpu").contiguous().clone()
    return out


def _check_plain(value: Any, where: str) -> None:
    # Only what torch.load(weights_only=True) can read back may go into the file.
    if value is None or isinstance(value, (str, int, float, bool, torch.Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise CheckpointError(f"{where} has a key of type {type(key).__name__}; use str keys")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise CheckpointError(f"{where} holds a {type(value).__name__}; only plain containers, numbers, str and tensors "
                          f"can be stored")


def save_checkpoint(path: str | os.PathLike, *, generator_config: GeneratorConfig | Mapping[str, Any],
                    g_ema: Mapping[str, torch.Tensor], latent_avg: torch.Tensor | None = None,
                    provenance: Mapping[str, Any] | None = None, g: Mapping[str, torch.Tensor] | None = None,
                    d: Mapping[str, torch.Tensor] | None = None,
                    discriminator_config: DiscriminatorConfig | Mapping[str, Any] | None = None,
                    extra: Mapping[str, Any] | None = None) -> Path:
    """Validate and write a checkpoint atomically (temp file in the same folder, then os.replace)."""
    path = Path(path)
    g_cfg = generator_config if isinstance(generator_config, GeneratorConfig) else GeneratorConfig.from_dict(
        dict(generator_config))
    payload: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "generator_config": g_cfg.to_dict(),
        "g_ema": _cpu_state(g_ema, "g_ema"),
        "latent_avg": None,
        "provenance": dict(provenance) if provenance is not None else {},
    }
    g_shapes = expected_generator_shapes(g_cfg)
    check_state_dict(payload["g_ema"], g_shapes, "g_ema")
    if latent_avg is not None:
        latent_avg = latent_avg.detach().to("cpu", torch.float32).reshape(-1).clone()
        if latent_avg.numel() != g_cfg.style_dim:
            raise CheckpointError(f"latent_avg has {latent_avg.numel()} values, expected style_dim={g_cfg.style_dim}")
        payload["latent_avg"] = latent_avg
    if g is not None:
        payload["g"] = _cpu_state(g, "g")
        check_state_dict(payload["g"], g_shapes, "g")
    if d is not None:
        if discriminator_config is None:
            raise CheckpointError("a discriminator state dict was given without discriminator_config")
        d_cfg = discriminator_config if isinstance(discriminator_config, DiscriminatorConfig) else \
            DiscriminatorConfig.from_dict(dict(discriminator_config))
        payload["d"] = _cpu_state(d, "d")
        payload["discriminator_config"] = d_cfg.to_dict()
        check_state_dict(payload["d"], expected_discriminator_shapes(d_cfg), "d")
    if extra is not None:
        payload["extra"] = dict(extra)
    _check_plain(payload["provenance"], "provenance")
    _check_plain(payload.get("extra"), "extra")

    atomic_torch_save(payload, path)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Loading.


def read_torch_file(path: str | os.PathLike) -> Any:
    """torch.load(weights_only=True) of an untrusted file, every failure turned into one CheckpointError line."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path} (check the path, or run `make convert`)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    try:
        # rosinality's training checkpoints store their argparse Namespace; it holds only data, so it may pass.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message advises weights_only=False, i.e. running the file's code: only its reason is passed on
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
        _, refused, rest = text.partition("WeightsUnpickler error:")
        reason = next((line.strip() for line in rest.splitlines() if line.strip()), "") if refused else ""
        if reason:
            reason = reason.split(" was not an allowed global")[0].split(". Please")[0]
            raise CheckpointError(f"{path.name}: refused by weights-only loading ({reason[:200]}): not a checkpoint of "
                                  f"tensors and plain data; convert a foreign StyleGAN pickle with "
                                  f"`python -m replication.convert`") from None
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise CheckpointError(f"{path.name}: not a PyTorch file ({first[:200]})") from None
    except Exception as exc:  # noqa: BLE001 - weights_only never runs the file's code; any failure means unreadable
        # Corrupt bytes reach the weights_only unpickler's internals (IndexError, TypeError, struct.error, ...).
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path.name}: not a readable PyTorch file ({first[:200]})") from None


def detect_checkpoint_format(obj: Any) -> str:
    """FORMAT_NAME, ROSINALITY_FORMAT, or raise CheckpointError for anything else."""
    if isinstance(obj, dict) and obj.get("format") == FORMAT_NAME:
        return FORMAT_NAME
    if isinstance(obj, dict) and "format" in obj:
        raise CheckpointError(f"unknown checkpoint format {obj['format']!r} (expected {FORMAT_NAME!r})")
    if isinstance(obj, dict) and isinstance(obj.get("g_ema"), Mapping):
        return ROSINALITY_FORMAT
    keys = sorted(map(str, obj.keys()))[:8] if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(f"unknown checkpoint format: neither {FORMAT_NAME!r} nor a rosinality dict with 'g_ema' "
                          f"(found {keys})")


def checkpoint_from_object(obj: Any, path: str | os.PathLike = "<memory>", *,
                           expected_resolution: int | None = None) -> Checkpoint:
    """Validate a loaded checkpoint object (ours or rosinality's) and wrap it in a Checkpoint."""
    path = Path(path)
    fmt = detect_checkpoint_format(obj)
    if fmt == FORMAT_NAME:
        version = obj.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
            raise CheckpointError(f"{path.name}: format_version {version!r} is not supported (this code reads "
                                  f"1..{FORMAT_VERSION}); update the code or re-convert")
        for key in ("generator_config", "g_ema"):
            if key not in obj:
                raise CheckpointError(f"{path.name}: missing key {key!r}")
        try:
            g_cfg = GeneratorConfig.from_dict(dict(obj["generator_config"]))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path.name}: bad generator_config ({exc})") from None
        d_cfg = None
        if obj.get("discriminator_config") is not None:
            try:
                d_cfg = DiscriminatorConfig.from_dict(dict(obj["discriminator_config"]))
            except (TypeError, ValueError) as exc:
                raise CheckpointError(f"{path.name}: bad discriminator_config ({exc})") from None
        provenance = dict(obj.get("provenance") or {})
        extra = dict(obj.get("extra") or {})
    else:
        g_cfg = infer_generator_config(obj["g_ema"])
        d_cfg = infer_discriminator_config(obj["d"]) if isinstance(obj.get("d"), Mapping) else None
        provenance = {"source_path": path.name, "source_format": ROSINALITY_FORMAT}
        extra = {}
    if expected_resolution is not None and int(expected_resolution) != g_cfg.size:
        raise CheckpointError(f"{path.name} is a {g_cfg.size}px generator but {expected_resolution}px was requested; "
                              f"use a matching checkpoint or resolution")
    g_shapes = expected_generator_shapes(g_cfg)
    check_state_dict(obj["g_ema"], g_shapes, f"{path.name}: g_ema")
    g_state = obj.get("g") if isinstance(obj.get("g"), Mapping) else None
    if g_state is not None:
        check_state_dict(g_state, g_shapes, f"{path.name}: g")
    d_state = obj.get("d") if isinstance(obj.get("d"), Mapping) else None
    if d_state is not None and d_cfg is not None:
        check_state_dict(d_state, expected_discriminator_shapes(d_cfg), f"{path.name}: d")
    latent_avg = obj.get("latent_avg")
    if latent_avg is not None:
        if not isinstance(latent_avg, torch.Tensor) or latent_avg.numel() != g_cfg.style_dim:
            raise CheckpointError(f"{path.name}: latent_avg must be a tensor of {g_cfg.style_dim} values")
        latent_avg = latent_avg.reshape(-1).float()
    return Checkpoint(path=path, source_format=fmt, generator_config=g_cfg, g_ema=dict(obj["g_ema"]),
                      latent_avg=latent_avg, provenance=provenance, g=dict(g_state) if g_state is not None else None,
                      d=dict(d_state) if d_state is not None else None, discriminator_config=d_cfg, extra=extra)


def load_checkpoint(path: str | os.PathLike, *, expected_resolution: int | None = None) -> Checkpoint:
    """Load our checkpoint format or a plain rosinality .pt dict; raises CheckpointError with one clear line."""
    return checkpoint_from_object(read_torch_file(path), path, expected_resolution=expected_resolution)


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu", *,
                   expected_resolution: int | None = None) -> tuple[Generator, Checkpoint]:
    """Build the generator of a checkpoint, load ``g_ema`` strictly, eval mode (requires_grad left to the caller)."""
    ckpt = load_checkpoint(path, expected_resolution=expected_resolution)
    generator = Generator(ckpt.generator_config)
    generator.load_state_dict(ckpt.g_ema, strict=True)
    return generator.to(device).eval(), ckpt
