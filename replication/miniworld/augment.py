"""Domain-preserving image augmentation and source-domain hard negatives for mini-world images in [-1, 1].

Two pure functions, both driven by an explicit torch.Generator so that a batch is reproducible from its seed:

- ``augment(x, rng, strength=1.0)``: mild, per-image colour jitter (brightness, contrast, saturation, hue rotation),
  rare greyscale, a light blur and a small whole-pixel translation. The ranges are deliberately small: a photo must
  still look like a photo (smooth shading, skin colours, fine noise) and never like a sketch (no colour, graphite
  lines), a neon image (glow on black) or a watercolour. Every style's defining structure (outlines, halftone, pixel
  blocks, glow) survives these changes, so a model trained with them has to read structure, not colour statistics.
- ``hard_negatives(x_photo_human, rng)``: strong colour shifts, greyscale, heavy blur, tints and posterised blobs of
  SOURCE (photo + human) renders, labelled as the source domain. The prototype's CLIP and evaluator read tinted
  blobs as "sketch" or "zombie"; these examples teach them that colour alone does not change the domain.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from replication.miniworld.attributes import CHARACTERS, SOURCE_CHARACTER, SOURCE_STYLE, STYLES

# Ranges of augment() at strength 1; each is a half-width around "no change" unless noted.
BRIGHTNESS_RANGE = 0.08  # added to [0, 1] intensities
CONTRAST_RANGE = 0.15  # multiplicative, around each image's mean intensity
SATURATION_RANGE = 0.20  # multiplicative, around each pixel's grey value
HUE_RANGE = 0.06  # hue rotation in turns (0.06 turn = 22 degrees keeps skin looking like skin)
GREYSCALE_PROBABILITY = 0.05  # rare: a greyscale photo keeps its smooth shading, unlike a graphite sketch
BLUR_PROBABILITY = 0.3
BLUR_SIGMA_MAX = 0.7  # pixels at 64 px; below one pixel so outlines, halftone dots and pixel blocks stay readable
TRANSLATE_MAX_PX = 2  # whole pixels so pixel-art blocks are moved, not resampled

# The hard-negative kinds, in the order of the `kind` indices hard_negatives() returns.
HARD_NEGATIVE_KINDS: tuple[str, ...] = ("colour_shift", "greyscale", "blur", "tint", "blob")


class AugmentInputError(ValueError):
    """An image batch that is not a float tensor of shape [N, 3, H, W]."""


class HardNegativeBatch(NamedTuple):
    """Hard negatives with their labels: every row is labelled as the source domain (photo + human)."""

    images: Tensor  # [N, 3, H, W] in [-1, 1]
    kind: Tensor  # [N] long, index into HARD_NEGATIVE_KINDS
    style_idx: Tensor  # [N] long, all STYLES.index("photo")
    character_idx: Tensor  # [N] long, all CHARACTERS.index("human")


def _check_images(x: Tensor) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise AugmentInputError(f"expected a float image batch of shape [N, 3, H, W] in [-1, 1], got {shape}")
    return x


def _uniform(n: int, rng: torch.Generator, low: float, high: float) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=rng)


def _grey(x01: Tensor) -> Tensor:
    """Luma [N, 1, H, W] of [0, 1] RGB (ITU-R 601 weights, as torchvision's rgb_to_grayscale)."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=x01.dtype).view(1, 3, 1, 1)
    return (x01 * weights).sum(dim=1, keepdim=True)


def _hue_rotate(x01: Tensor, turns: Tensor) -> Tensor:
    """Rotate every pixel's colour about the grey axis by `turns` [N] of a full circle (Rodrigues' formula)."""
    angle = turns * 2.0 * math.pi
    cos, sin = angle.cos().view(-1, 1, 1), angle.sin().view(-1, 1, 1)
    axis = torch.full((3,), 1.0 / math.sqrt(3.0), dtype=x01.dtype)
    cross = torch.tensor([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]],
                         dtype=x01.dtype)
    outer = torch.outer(axis, axis)
    eye = torch.eye(3, dtype=x01.dtype)
    rotation = cos * eye + sin * cross + (1.0 - cos) * outer  # [N, 3, 3]
    return torch.einsum("nij,njhw->nihw", rotation, x01)


def _gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Blur each image with its own Gaussian sigma [N] (pixels); sigma 0 leaves the image unchanged."""
    n, c, h, w = x.shape
    radius = max(1, int(math.ceil(3.0 * float(sigma.max())))) if n else 1
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype)
    safe_sigma = sigma.clamp_min(1e-3).view(-1, 1)
    kernel = torch.exp(-0.5 * (offsets.view(1, -1) / safe_sigma) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # [N, K]; sigma ~0 gives a unit impulse
    kernel = kernel.repeat_interleave(c, dim=0)  # one kernel per (image, channel) for a grouped convolution
    flat = x.reshape(1, n * c, h, w)
    flat = F.pad(flat, (radius, radius, 0, 0), mode="replicate")
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.pad(flat, (0, 0, radius, radius), mode="replicate")
    flat = F.conv2d(flat, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, h, w)


def _translate(x: Tensor, shift_px: Tensor) -> Tensor:
    """Shift each image by whole pixels shift_px [N, 2] (dx, dy), repeating the border so no black edge appears."""
    n, _, h, w = x.shape
    pad = int(shift_px.abs().max()) if n else 0
    if pad == 0:
        return x
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    rows = torch.arange(h).view(1, h) + pad - shift_px[:, 1:2]  # [N, H]
    cols = torch.arange(w).view(1, w) + pad - shift_px[:, 0:1]  # [N, W]
    batch = torch.arange(n).view(n, 1, 1)
    # advanced indexing gathers [N, H, W, C]; permute back to NCHW
    gathered = padded.permute(0, 2, 3, 1)[batch, rows.view(n, h, 1), cols.view(n, 1, w)]
    return gathered.permute(0, 3, 1, 2).contiguous()


def augment(x: Tensor, rng: torch.Generator, strength: float = 1.0) -> Tensor:
    """Domain-preserving augmentation of an image batch [N, 3, H, W] in [-1, 1]; returns a new batch in [-1, 1].

    Per image: brightness, contrast, saturation and hue jitter, greyscale with probability 0.05 * strength, a light
    Gaussian blur (sigma < 0.7 px * strength) with probability 0.3, and a translation by up to 2 whole pixels.
    strength scales every range (0 = identity); the same rng state gives the same output.
    """
    x = _check_images(x)
    if strength < 0:
        raise AugmentInputError(f"strength must be >= 0, got {strength}")
    n = x.shape[0]
    s = float(strength)
    # draw every random number up front, in a fixed order, so the output depends only on the rng state
    brightness = _uniform(n, rng, -BRIGHTNESS_RANGE * s, BRIGHTNESS_RANGE * s)
    contrast = _uniform(n, rng, 1.0 - CONTRAST_RANGE * s, 1.0 + CONTRAST_RANGE * s)
    saturation = _uniform(n, rng, 1.0 - SATURATION_RANGE * s, 1.0 + SATURATION_RANGE * s)
    hue = _uniform(n, rng, -HUE_RANGE * s, HUE_RANGE * s)
    make_grey = torch.rand(n, generator=rng) < GREYSCALE_PROBABILITY * s
    do_blur = torch.rand(n, generator=rng) < BLUR_PROBABILITY
    sigma = torch.rand(n, generator=rng) * BLUR_SIGMA_MAX * s * do_blur
    max_shift = int(round(TRANSLATE_MAX_PX * min(s, 1.0)))
    shift = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=rng)

    out = (x.float() + 1.0) / 2.0
    out = _hue_rotate(out, hue)
    grey = _grey(out)
    out = grey + (out - grey) * saturation.view(-1, 1, 1, 1)
    out = torch.where(make_grey.view(-1, 1, 1, 1), _grey(out).expand_as(out), out)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = mean + (out - mean) * contrast.view(-1, 1, 1, 1) + brightness.view(-1, 1, 1, 1)
    out = out.clamp(0.0, 1.0)
    if bool(sigma.gt(0).any()):
        out = _gaussian_blur(out, sigma)
    out = _translate(out, shift)
    return (out * 2.0 - 1.0).clamp(-1.0, 1.0).to(x.dtype)


def hard_negatives(x: Tensor, rng: torch.Generator) -> HardNegativeBatch:
    """Strongly recoloured / blurred / posterised versions of SOURCE (photo + human) renders [N, 3, H, W] in [-1, 1].

    Each image gets one kind, drawn uniformly from HARD_NEGATIVE_KINDS:
    colour_shift (hue rotated 0.15-0.85 turn, saturation x0.3-2.0), greyscale, blur (sigma 1.5-3 px), tint (blended
    40-70% towards a random colour) and blob (sigma 2.5-4 px blur, then posterised to 3 levels per channel). All
    rows are labelled photo + human: the content and the domain did not change, only colour and sharpness did.
    """
    x = _check_images(x)
    n = x.shape[0]
    kind = torch.randint(0, len(HARD_NEGATIVE_KINDS), (n,), generator=rng)
    hue = _uniform(n, rng, 0.15, 0.85)
    saturation = _uniform(n, rng, 0.3, 2.0)
    blur_sigma = _uniform(n, rng, 1.5, 3.0)
    tint_colour = torch.rand(n, 3, generator=rng)
    tint_amount = _uniform(n, rng, 0.4, 0.7)
    blob_sigma = _uniform(n, rng, 2.5, 4.0)

    x01 = (x.float() + 1.0) / 2.0
    shifted = _hue_rotate(x01, hue)
    grey = _grey(shifted)
    shifted = (grey + (shifted - grey) * saturation.view(-1, 1, 1, 1)).clamp(0.0, 1.0)
    greyscale = _grey(x01).expand_as(x01)
    blurred = _gaussian_blur(x01, blur_sigma)
    tinted = torch.lerp(x01, tint_colour.view(n, 3, 1, 1).expand_as(x01), tint_amount.view(-1, 1, 1, 1))
    levels = 3
    blob = (_gaussian_blur(x01, blob_sigma).clamp(0.0, 1.0) * (levels - 1)).round() / (levels - 1)

    candidates = torch.stack([shifted, greyscale, blurred, tinted, blob], dim=1)  # [N, K, 3, H, W]
    chosen = candidates[torch.arange(n), kind]
    images = (chosen * 2.0 - 1.0).clamp(-1.0, 1.0).to(x.dtype)
    style_idx = torch.full((n,), STYLES.index(SOURCE_STYLE), dtype=torch.long)
    character_idx = torch.full((n,), CHARACTERS.index(SOURCE_CHARACTER), dtype=torch.long)
    return HardNegativeBatch(images=images, kind=kind, style_idx=style_idx, character_idx=character_idx)
