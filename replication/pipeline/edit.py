"""CLI: a finished run's latent-editing and cross-model interpolation grids (NADA sections 7.2 and 7.4), into samples/.

    python -m replication.pipeline.edit runs/mini/mini--zombie/nada/seed0            # mini: the fitted directions
    python -m replication.pipeline.edit RUN_DIR --attribute smile --video             # one attribute, and a GIF
    python -m replication.pipeline.edit RUN_DIR --boundary smile.npy --attribute smile   # an InterFaceGAN boundary

samples/interpolation.png: a row per latent (the first 4 grid seeds), the same w drawn by generators whose weights go
from G_src (left) to G_tgt (right) in 6 steps, as NADA's generate_videos.py morphs between models.
samples/edit_<attr>.png: a source row above an adapted row (the first grid seed); columns move w along the
attribute's direction by alpha = -3 ... 3 (standard deviations of the source latents for a fitted mini-world
direction, latent units for a boundary file: InterFaceGAN's convention, applied as w + alpha n).
--video adds samples/interpolation.gif (G_src -> G_tgt -> G_src).

Mini runs fit their directions with metrics.editing (the editing-transfer metric's); paper runs need a boundary file
(a .npy of shape [style_dim] or [1, style_dim]), and without one get the interpolation grid only. Every draw is at
the generators' fixed noise and no truncation unless --truncation says otherwise. A run needs its final generator
(checkpoints/G_tgt.pt), which runs keep locally and the shipped reference does not.
"""
from __future__ import annotations

import argparse
import copy
import io
import re
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.utils import make_grid

from metrics.editing import EDIT_ATTRIBUTES, FIT_LATENTS, Direction, EditingError, can_edit, draw, fit_directions
from replication import weights
from replication.checkpoint import CheckpointError, load_generator
from replication.config import ConfigError, ShiftConfig
from replication.miniworld.evaluator import load_evaluator
from replication.nada import GeneratorNotFound, load_source
from replication.networks import Generator
from replication.pipeline.train import resolve_device
from replication.runio import atomic_write_bytes
from replication.training_loop import FINAL_NAME, GRID_MAX_PX, latents_from_seeds
from replication.weights import WeightError

INTERPOLATION_LATENTS = 4  # rows of interpolation.png: the first grid seeds
INTERPOLATION_STEPS = 6  # columns: weights t = 0, 0.2, ..., 1 between G_src and G_tgt
EDIT_LATENTS = 1  # latents of edit_<attr>.png, each a source row above an adapted row
EDIT_ALPHAS = (-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0)
VIDEO_FRAMES = 24  # frames of the GIF each way (G_src -> G_tgt, then back)
VIDEO_FRAME_MS = 80


def can_interpolate(G_src, G_tgt) -> bool:
    """Weights can be interpolated between two plain generators of one architecture (not a mapper-wrapped or a
    per-latent-optimising method)."""
    if not (isinstance(G_src, Generator) and type(G_tgt) is type(G_src)):
        return False
    a, b = G_src.state_dict(), G_tgt.state_dict()
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)


def interpolated(G_src: Generator, G_tgt: Generator, t: float, out: Generator | None = None) -> Generator:
    """A generator whose floating weights are (1 - t) G_src + t G_tgt (written into `out` when given)."""
    out = copy.deepcopy(G_src) if out is None else out
    target = G_tgt.state_dict()
    out.load_state_dict({k: torch.lerp(v, target[k], t) if v.is_floating_point() else v
                         for k, v in G_src.state_dict().items()})
    return out.eval()


def grid_latents(G_src, shift: ShiftConfig, n: int, truncation: float = 1.0,
                 latent_avg: torch.Tensor | None = None) -> torch.Tensor:
    """w [n, style_dim] of the first n grid seeds, through the source mapping (truncated toward latent_avg if psi<1)."""
    seeds = list(shift.task.grid_seeds)
    seeds = (seeds * n)[:n] if seeds else list(range(n))
    with torch.no_grad():
        w = G_src.mapping(latents_from_seeds(seeds, G_src.style_dim, torch.device("cpu")).to(_device(G_src)))
        if truncation != 1.0:
            avg = latent_avg if latent_avg is not None else G_src.mean_latent(
                4096, torch.Generator(device=w.device).manual_seed(0))
            w = avg.reshape(1, -1).to(w) + truncation * (w - avg.reshape(1, -1).to(w))
    return w


def _device(G) -> torch.device:
    return next(G.parameters()).device


def interpolation_frames(G_src: Generator, G_tgt: Generator, w: torch.Tensor, ts) -> list[torch.Tensor]:
    """For each t, the images [len(w), 3, H, W] of w drawn by the generator interpolated at t."""
    work = copy.deepcopy(G_src)
    return [draw(interpolated(G_src, G_tgt, float(t), work), w) for t in ts]


def interpolation_grid(G_src: Generator, G_tgt: Generator, w: torch.Tensor,
                       steps: int = INTERPOLATION_STEPS) -> torch.Tensor:
    """Images [len(w) * steps, 3, H, W], row-major: a row per latent, weights from G_src to G_tgt."""
    frames = interpolation_frames(G_src, G_tgt, w, torch.linspace(0, 1, steps).tolist())
    return torch.stack(frames, dim=1).flatten(0, 1)


def edit_grid(G_src, G_tgt, w: torch.Tensor, direction: Direction, alphas=EDIT_ALPHAS) -> torch.Tensor:
    """Images [2 len(w) len(alphas), 3, H, W], row-major: per latent a source row above an adapted row, alpha across."""
    rows = []
    for i in range(w.shape[0]):
        wplus = G_src.make_wplus([w[i:i + 1].expand(len(alphas), -1)], input_is_latent=True)
        edited = direction.edit(wplus, torch.tensor(alphas))
        rows += [draw(G_src, edited), draw(G_tgt, edited)]
    return torch.cat(rows)


def _png(images: torch.Tensor, nrow: int) -> bytes:
    """A grid as a 256-colour PNG: a third of the bytes of full colour and no visible difference at these sizes,
    which matters as every published run keeps these grids."""
    buffer = io.BytesIO()
    _as_pil(images, nrow).quantize(256).save(buffer, format="png", optimize=True)
    return buffer.getvalue()


def _as_pil(images: torch.Tensor, nrow: int) -> Image.Image:
    """A grid of images in [-1, 1] (each at most GRID_MAX_PX wide, as every sample grid), as one RGB image."""
    x = images.float().clamp(-1, 1).add(1).div(2)
    if x.shape[-1] > GRID_MAX_PX:
        x = F.interpolate(x, size=GRID_MAX_PX, mode="area")
    grid = make_grid(x, nrow=nrow, padding=2).mul(255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(grid)


def write_gif(path: Path, frames: list[torch.Tensor], nrow: int) -> Path:
    images = [_as_pil(frame, nrow) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="gif", save_all=True, append_images=images[1:], duration=VIDEO_FRAME_MS, loop=0)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def write_edit_samples(run_dir: Path, shift: ShiftConfig, G_src, G_tgt, directions: dict[str, Direction], *,
                       video: bool = False, truncation: float = 1.0,
                       latent_avg: torch.Tensor | None = None) -> list[Path]:
    """Write samples/interpolation.png (when the weights interpolate), samples/edit_<attr>.png per direction (when the
    method edits cheaply, see metrics.editing.can_edit) and, with video, samples/interpolation.gif; return the paths."""
    samples = Path(run_dir) / "samples"
    written = []
    G_src, G_tgt = G_src.eval(), G_tgt.eval()
    if can_interpolate(G_src, G_tgt):
        w = grid_latents(G_src, shift, INTERPOLATION_LATENTS, truncation, latent_avg)
        atomic_write_bytes(samples / "interpolation.png", _png(interpolation_grid(G_src, G_tgt, w),
                                                               INTERPOLATION_STEPS))
        written.append(samples / "interpolation.png")
        if video:
            ts = torch.linspace(0, 1, VIDEO_FRAMES).tolist()
            frames = interpolation_frames(G_src, G_tgt, w, ts + ts[::-1][1:-1])
            written.append(write_gif(samples / "interpolation.gif", frames, INTERPOLATION_LATENTS))
    if can_edit(G_tgt):
        w = grid_latents(G_src, shift, EDIT_LATENTS, truncation, latent_avg)
        for name, direction in directions.items():
            path = samples / f"edit_{name}.png"
            atomic_write_bytes(path, _png(edit_grid(G_src, G_tgt, w, direction), len(EDIT_ALPHAS)))
            written.append(path)
    return written


def load_boundary(path: Path, attribute: str, G) -> Direction:
    """An InterFaceGAN boundary file as a Direction (plain arrays only: no pickle is ever loaded)."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise EditingError(f"--boundary {path}: not a readable .npy array ({exc}); save it with numpy.save") from None
    return Direction.from_boundary(array, attribute, G.style_dim, G.n_latent)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m replication.pipeline.edit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a finished run folder (<runs>/<world>/<shift>/<method>/seed<k>)")
    p.add_argument("--boundary", type=Path, help="an InterFaceGAN boundary .npy ([style_dim] or [1, style_dim])")
    p.add_argument("--attribute", help=f"the boundary's attribute name (mini world without --boundary: one of "
                                       f"{', '.join(EDIT_ATTRIBUTES)} or any mini attribute; default: those four)")
    p.add_argument("--video", action="store_true", help="also write samples/interpolation.gif")
    p.add_argument("--truncation", type=float, default=1.0, help="truncation psi of the drawn latents (default 1)")
    p.add_argument("--fit-latents", type=int, default=FIT_LATENTS,
                   help=f"mini world: latents of the directions' fit (default {FIT_LATENTS}, the metric's)")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:1 ...")
    args = p.parse_args(argv)
    # imported here, not at the top: replication.pipeline.scoring draws every scored mini run's grids with this module
    from replication.pipeline.score import run_shift
    from replication.pipeline.scoring import EVALUATOR

    errors = (ConfigError, EditingError, CheckpointError, GeneratorNotFound, WeightError)
    try:
        if args.boundary is not None and not args.attribute:
            raise EditingError("--boundary needs --attribute NAME (it names edit_<NAME>.png)")
        if args.attribute is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", args.attribute):
            raise EditingError(f"--attribute {args.attribute!r}: use letters, digits, _ and - only (it names a file)")
        if args.boundary is not None and not args.boundary.is_file():
            raise EditingError(f"--boundary {args.boundary} does not exist")
        if args.fit_latents < 2:
            raise EditingError(f"--fit-latents must be at least 2, got {args.fit_latents}")
        if not 0.0 <= args.truncation <= 1.0:
            raise EditingError(f"--truncation is a psi in [0, 1], got {args.truncation}")
        shift, method = run_shift(args.run_dir)
        device = resolve_device(args.device)
        G_src, latent_avg, _ = load_source(shift, device)
        G_tgt = G_src if method == "source" else load_generator(args.run_dir / "checkpoints" / FINAL_NAME, device)[0]
        if args.boundary is not None:
            directions = {args.attribute: load_boundary(args.boundary, args.attribute, G_src)}
        elif shift.task.world == "mini":
            evaluator = load_evaluator(weights.resolve(EVALUATOR), device)
            attributes = (args.attribute,) if args.attribute else EDIT_ATTRIBUTES
            directions = fit_directions(G_src, evaluator, attributes, args.fit_latents)
            for d in directions.values():
                print(f"direction {d.attribute}: R^2 {d.r2:.2f} of the reading on it, 1 sd = {d.scale:.3f} in W")
        else:
            directions = {}
            print("no --boundary: a paper run gets the interpolation grid only (pass an InterFaceGAN boundary .npy "
                  "with --attribute NAME for edit grids)")
        written = write_edit_samples(args.run_dir, shift, G_src, G_tgt, directions, video=args.video,
                                     truncation=args.truncation, latent_avg=latent_avg)
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not written:
        print(f"nothing to draw for {args.run_dir}: method {method!r} neither interpolates nor edits cheaply")
    for path in written:
        print(f"wrote: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
