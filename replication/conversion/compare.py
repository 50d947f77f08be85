"""Torch side of the TF cross-check: render a converted checkpoint like a legacy TF render and report the gap."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from replication.checkpoint import load_generator
from replication.conversion.common import ConversionError
from replication.networks import Discriminator


def compare_with_tf_render(converted_pt: str | os.PathLike, npz: str | os.PathLike,
                           grid_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Render the npz's z with our converted generator and compare with the TF images; writes a TF/ours/|diff| grid.

    The npz comes from ``replication/legacy_tf_crosscheck.py``: ``z`` [N, style_dim], ``images`` [N, 3, H, W]
    (NCHW, TF's raw output), ``noise{i}`` (the fixed noise maps TF used), ``truncation_psi``, optionally
    ``truncation_cutoff`` (NVIDIA's: only W+ layers < cutoff truncated); optionally ``d_scores`` [N, 1] (TF's D on the
    TF images, in chunks of ``d_chunk``), compared with our converted D on the same images, and ``images_unfused``
    (TF's non-fused render), whose distance to ``images`` is reported. Truncation uses the checkpoint's
    ``latent_avg`` (TF's ``dlatent_avg``), exactly as Gs.run(..., truncation_psi=psi) does.
    From the shell: ``python -m replication.convert --compare-npz tf_render.npz converted.pt [grid.png]``.
    """
    grid_path = Path(grid_path) if grid_path is not None else Path(npz).with_suffix(".png")
    return compare_cases(converted_pt, [npz], grid_path)[0]


def compare_cases(converted_pt: str | os.PathLike, npzs: Sequence[str | os.PathLike], grid_path: str | os.PathLike,
                  *, use_d_scores: bool = True) -> list[dict[str, Any]]:
    """:func:`compare_with_tf_render` for several renders (cases) of one network; one grid, three rows per case.

    use_d_scores=False ignores TF's D scores (for a checkpoint converted without its discriminator).
    """
    generator, ckpt = load_generator(converted_pt)
    grid_path = Path(grid_path)
    results, rows, n_cols = [], [], None
    for npz in npzs:
        result, images = _compare_one(generator, ckpt, converted_pt, npz, use_d_scores)
        result["grid_path"] = str(grid_path)
        n_cols = n_cols or result["n_images"]
        if result["n_images"] != n_cols:
            raise ConversionError(f"{Path(npz).name} has {result['n_images']} images, the first case {n_cols}")
        results.append(result)
        rows.append(images)
    _write_grid(torch.cat(rows), n_cols or 1, grid_path)
    return results


def _compare_one(generator: Any, ckpt: Any, converted_pt: str | os.PathLike, npz: str | os.PathLike,
                 use_d_scores: bool) -> tuple[dict[str, Any], torch.Tensor]:
    with np.load(npz, allow_pickle=False) as data:
        z = torch.from_numpy(np.asarray(data["z"], dtype=np.float32))
        tf_images = torch.from_numpy(np.asarray(data["images"], dtype=np.float32))
        psi = float(data["truncation_psi"]) if "truncation_psi" in data else 0.5
        cutoff = int(data["truncation_cutoff"]) if "truncation_cutoff" in data else None
        noise = [torch.from_numpy(np.asarray(data[f"noise{i}"], dtype=np.float32)) for i in range(generator.num_layers)
                 if f"noise{i}" in data]
        tf_scores = (torch.from_numpy(np.asarray(data["d_scores"], dtype=np.float32))
                     if "d_scores" in data and use_d_scores else None)
        d_chunk = int(data["d_chunk"]) if "d_chunk" in data else len(z)
        unfused = (torch.from_numpy(np.asarray(data["images_unfused"], dtype=np.float32))
                   if "images_unfused" in data else None)
        seed = int(data["seed"]) if "seed" in data else None
    if len(noise) != generator.num_layers:
        raise ConversionError(f"{Path(npz).name} has {len(noise)} noise maps, the generator needs "
                              f"{generator.num_layers}")
    if ckpt.latent_avg is None and psi != 1.0:
        raise ConversionError(f"{Path(converted_pt).name} has no latent_avg, needed for truncation psi={psi}")
    with torch.no_grad():
        ours, _ = generator([z], noise_mode="given", noise=noise, truncation=psi, truncation_cutoff=cutoff,
                            truncation_latent=None if ckpt.latent_avg is None else ckpt.latent_avg.reshape(1, -1))
    if ours.shape != tf_images.shape:
        raise ConversionError(f"TF images have shape {tuple(tf_images.shape)}, ours {tuple(ours.shape)}")
    diff = (ours - tf_images).abs()
    result: dict[str, Any] = {
        "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
        "n_images": int(len(z)), "image_min": float(tf_images.min()), "image_max": float(tf_images.max()),
        "truncation_psi": round(psi, 6), "truncation_cutoff": cutoff,  # psi travels as float32: 0.7 -> 0.69999999
    }
    if seed is not None:
        result["seed"] = seed
    if unfused is not None:
        result["tf_fused_vs_unfused_max_abs_diff"] = float((unfused - tf_images).abs().max())
    if tf_scores is not None:
        if ckpt.d is None or ckpt.discriminator_config is None:
            raise ConversionError(f"{Path(npz).name} has TF discriminator scores but {Path(converted_pt).name} has "
                                  f"no discriminator; convert without --no-discriminator")
        if d_chunk < 1:
            raise ConversionError(f"{Path(npz).name}: d_chunk must be at least 1, got {d_chunk}")
        discriminator = Discriminator(ckpt.discriminator_config).eval()
        discriminator.load_state_dict(ckpt.d)
        with torch.no_grad():
            # Same chunks as TF, so that each minibatch-stddev group holds the same images.
            our_scores = torch.cat([discriminator(chunk) for chunk in tf_images.split(d_chunk)])
        if our_scores.shape != tf_scores.shape:
            raise ConversionError(f"TF D scores have shape {tuple(tf_scores.shape)}, ours {tuple(our_scores.shape)}")
        result["d_max_abs_diff"] = float((our_scores - tf_scores).abs().max())
        result["d_score_min"] = float(tf_scores.min())
        result["d_score_max"] = float(tf_scores.max())
    return result, torch.cat([tf_images, ours, diff * 2 - 1])


def _write_grid(images: torch.Tensor, n_cols: int, path: Path) -> None:
    from PIL import Image
    from torchvision.utils import make_grid

    if images.shape[-1] < 128:
        # Tiny test networks: enlarge (nearest) so that a person can see the pixels.
        factor = 128 // images.shape[-1]
        images = images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    grid = make_grid(((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8), nrow=n_cols, padding=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a grid is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
