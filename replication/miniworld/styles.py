"""The mini world's six style painters: each turns a Scene into float images [n, 3, H, W] (render clamps to [0, 1])."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from replication.miniworld.attributes import HAIR_PALETTE, SKIN_PALETTE
from replication.miniworld.scene import Layer, Scene, rgb
from replication.miniworld.shapes import blur, hash_noise, smooth_noise, triangle_wave

# Spacing of the sketch hatching along x and y in pixels at 64 px (the diagonal lines are 1/sqrt(2) of it apart).
HATCH_PERIOD = 4.0


def _coverage(layer: Layer, grow_px: float = 0.0, hard: bool = False) -> Tensor:
    """Coverage [n, 1, H, W] of a layer: a one-pixel linear ramp across its boundary, or a hard 0/1 edge."""
    if hard:
        alpha = (layer.sdf_px <= grow_px).to(torch.float32).unsqueeze(1)
    else:
        alpha = (0.5 + grow_px - layer.sdf_px).clamp(0.0, 1.0).unsqueeze(1)
    if layer.opacity is not None:
        alpha = alpha * layer.opacity.view(-1, 1, 1, 1)
    return alpha


def _band(layer: Layer, half_width_px: float) -> Tensor:
    """Anti-aliased line [n, 1, H, W] of the given half-width centred on a layer's boundary."""
    line = (0.5 + half_width_px - layer.sdf_px.abs()).clamp(0.0, 1.0).unsqueeze(1)
    if layer.opacity is not None:
        line = line * layer.opacity.view(-1, 1, 1, 1)
    return line


def _over(image: Tensor, color: Tensor, alpha: Tensor) -> Tensor:
    if color.ndim == 2:
        color = color.view(-1, 3, 1, 1)
    return image + (color - image) * alpha


def _flat(scene: Scene, size: int, pale: float = 0.0, grow_px: float = 0.0, strand_dark: float = 0.35,
          hard: bool = False) -> Tensor:
    n = scene.background.shape[0]
    image = scene.background.view(n, 3, 1, 1).expand(n, 3, size, size)
    for layer in scene.layers:
        color = layer.color if not pale else 1.0 - (1.0 - layer.color) * (1.0 - pale)
        # Only small features are thickened (pixel art), so that no eye or frame falls between block centres.
        grow = grow_px if layer.stroke or layer.name in ("eyes", "fangs", "nose", "gem", "red_nose") else 0.0
        alpha = _coverage(layer, grow, hard)
        if layer.strands is not None:
            color = color.view(n, 3, 1, 1) * (1.0 - strand_dark * layer.strands.unsqueeze(1))
        image = _over(image, color, alpha)
    return image


def _foreground(scene: Scene) -> Tensor:
    """Union coverage [n, 1, H, W] of every layer (everything but the backdrop)."""
    fg = None
    for layer in scene.layers:
        alpha = _coverage(layer)
        fg = alpha if fg is None else fg + alpha * (1.0 - fg)
    return fg


def _style_photo(scene: Scene, size: int) -> Tensor:
    image = _flat(scene, size)
    fg = _foreground(scene)
    lx = scene.light_xy[:, 0].view(-1, 1, 1, 1)
    ly = scene.light_xy[:, 1].view(-1, 1, 1, 1)
    backdrop = 0.92 + 0.12 * (scene.x.unsqueeze(1) * lx + scene.y.unsqueeze(1) * ly) - 0.30 * scene.shadow
    body = 0.38 + 0.72 * scene.lambert
    image = image * (backdrop + (body - backdrop) * fg)
    grain = hash_noise(scene.noise_seed, size).unsqueeze(1) - 0.5
    return image + 0.05 * grain


def _hatching(u: Tensor) -> Tensor:
    """Pencil hatching strength 0..0.99 along u (pixels across the lines, at 64 px)."""
    return (triangle_wave(u / HATCH_PERIOD) - 0.55).clamp(0.0, 0.45) * 2.2


def _style_sketch(scene: Scene, size: int) -> Tensor:
    s = scene.px_scale
    n = scene.background.shape[0]
    shaded = _flat(scene, size) * (0.45 + 0.65 * scene.lambert)
    luminance = (shaded * torch.tensor([0.30, 0.59, 0.11]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    # Paper stays white except where the head casts its shadow; only the drawn figure is hatched by tone.
    fg = _foreground(scene)
    darkness = fg * ((0.55 - luminance) / 0.5).clamp(0.0, 1.0) + (1.0 - fg) * 0.45 * scene.shadow
    xp = (scene.x.unsqueeze(1) + 1.0) * (size / 2.0) / s
    yp = (scene.y.unsqueeze(1) + 1.0) * (size / 2.0) / s
    hatch_a = _hatching(xp + yp)
    hatch_b = _hatching(xp - yp)
    hatch = torch.maximum(hatch_a * (darkness * 1.6).clamp(0.0, 1.0), hatch_b * (darkness * 2.0 - 1.3).clamp(0.0, 1.0))
    # Lines are drawn in painter's order so that nearer shapes hide the pencil lines behind them; hatching follows
    # the visible tone, so it needs no such care.
    lines = torch.zeros(n, 1, size, size)
    for layer in scene.layers:
        if layer.glaze:
            continue
        cover = _coverage(layer)
        if layer.stroke:
            ink = cover * 0.9
        else:
            ink = _band(layer, 0.9 * s) * 0.85
            if layer.strands is not None:
                ink = torch.maximum(ink, 0.55 * layer.strands.unsqueeze(1) * cover)
        lines = torch.maximum(lines * (1.0 - cover), ink)
    graphite = torch.maximum(lines, hatch * 0.75)
    paper = 0.95 - 0.06 * smooth_noise(scene.noise_seed, size, 3)
    grey = paper * (1.0 - 0.85 * graphite)
    return grey.expand(n, 3, size, size)


_PIXEL_PALETTE = torch.tensor([
    (0.00, 0.00, 0.00), (0.11, 0.17, 0.33), (0.49, 0.15, 0.33), (0.00, 0.53, 0.32), (0.67, 0.32, 0.21),
    (0.37, 0.34, 0.31), (0.76, 0.76, 0.78), (1.00, 0.95, 0.91), (1.00, 0.00, 0.30), (1.00, 0.64, 0.00),
    (1.00, 0.93, 0.15), (0.00, 0.89, 0.21), (0.16, 0.68, 1.00), (0.51, 0.46, 0.61), (1.00, 0.47, 0.66),
    (1.00, 0.80, 0.67), (0.80, 0.58, 0.42), (0.45, 0.28, 0.18), (0.55, 0.66, 0.48), (0.93, 0.83, 0.55),
    (0.55, 0.35, 0.60), (0.30, 0.60, 0.75), (0.85, 0.40, 0.35), (0.25, 0.25, 0.28),
    *SKIN_PALETTE, *HAIR_PALETTE, (0.45, 0.55, 0.40), (0.62, 0.50, 0.36), (0.35, 0.25, 0.18),
    (0.60, 0.75, 0.55), (0.75, 0.55, 0.75), (0.55, 0.80, 0.85), (0.80, 0.80, 0.55),
], dtype=torch.float32)


def _style_pixel_art(scene: Scene, size: int) -> Tensor:
    # 3 px blocks at 64 px: coarse enough to read as pixel art, fine enough to keep eyes, frames and mouths.
    block = max(2, round(3 * scene.px_scale))
    image = _flat(scene, size, grow_px=0.4 * scene.px_scale, strand_dark=0.5, hard=True)
    # One sample at each block centre gives the hard, unblended edges of hand-placed pixels.
    centres = (torch.arange(-(-size // block)) * block + block // 2).clamp(max=size - 1)
    small = image.index_select(2, centres).index_select(3, centres)
    dist = None
    for channel in range(3):  # per channel keeps every temporary contiguous
        diff = small[:, channel:channel + 1] - _PIXEL_PALETTE[:, channel].view(1, -1, 1, 1)
        dist = diff * diff if dist is None else dist + diff * diff
    index = dist.argmin(1)
    quantised = _PIXEL_PALETTE[index].permute(0, 3, 1, 2)
    # The last block is cut at the border when block does not divide size.
    return quantised.repeat_interleave(block, 2).repeat_interleave(block, 3)[:, :, :size, :size]


def _style_comic(scene: Scene, size: int) -> Tensor:
    s = scene.px_scale
    n = scene.background.shape[0]
    xp = (scene.x.unsqueeze(1) + 1.0) * (size / 2.0) / s
    yp = (scene.y.unsqueeze(1) + 1.0) * (size / 2.0) / s
    # Halftone: a 45-degree grid of dots, 4 px apart.
    ru, rv = (xp + yp) / 4.0, (xp - yp) / 4.0
    du = ru - torch.floor(ru) - 0.5
    dv = rv - torch.floor(rv) - 0.5
    dots = (0.5 + (0.36 - torch.sqrt(du * du + dv * dv)) * 4.0 * s).clamp(0.0, 1.0)
    saturated = scene.background * 1.15 - 0.1
    image = saturated.clamp(0, 1).view(n, 3, 1, 1) * (1.0 - 0.18 * dots)
    fg = None
    for layer in scene.layers:
        cover = _coverage(layer)
        if layer.glaze:
            image = _over(image, layer.color, cover)
        elif layer.stroke:
            image = _over(image, rgb(n, (0.04, 0.03, 0.03)), cover)
        else:
            color = (layer.color - layer.color.mean(1, keepdim=True)) * 1.3 + layer.color.mean(1, keepdim=True)
            image = _over(image, color.clamp(0, 1), cover)
            if layer.strands is not None:
                image = _over(image, rgb(n, (0.04, 0.03, 0.03)), 0.8 * layer.strands.unsqueeze(1) * cover)
            image = _over(image, rgb(n, (0.02, 0.02, 0.02)), _band(layer, 1.35 * s))
        fg = cover if fg is None else fg + cover * (1.0 - fg)
    in_shadow = fg * (scene.lambert < 0.5).float()
    return image * (1.0 - 0.55 * dots * in_shadow)


def _style_watercolor(scene: Scene, size: int) -> Tensor:
    s = scene.px_scale
    n = scene.background.shape[0]
    flat = _flat(scene, size, pale=0.35, strand_dark=0.2)
    wash = blur(flat, max(1, round(1 * s)))
    wide = blur(flat, max(2, round(3 * s)))
    # Pigment pools at the rim of each wash: darken where the sharp and wide washes disagree.
    rim = (wash - wide).abs().sum(1, keepdim=True).clamp(0.0, 0.5)
    density = (1.0 - wash) * (1.0 + 1.6 * rim)
    granulation = smooth_noise(scene.noise_seed, size, 5)
    density = density * (0.70 + 0.55 * granulation)
    # A white paper margin with an irregular edge: the painting does not reach the borders.
    edge = torch.minimum(1.0 - scene.x.abs(), 1.0 - scene.y.abs()).unsqueeze(1) * (size / 2.0) / s
    margin = ((edge - 3.0 - 3.0 * granulation) / 2.0).clamp(0.0, 1.0)
    paper = 0.97 - 0.05 * hash_noise(scene.noise_seed + 7, size).unsqueeze(1)
    return (paper - density * margin * 0.92).expand(n, 3, size, size)


def _neon_tint(color: Tensor) -> Tensor:
    """Fully saturated, full-brightness version of each colour; near-greys become an icy cyan."""
    hi = color.max(1, keepdim=True).values
    lo = color.min(1, keepdim=True).values
    chroma = hi - lo
    vivid = (color - lo) / chroma.clamp_min(1e-3)
    vivid = 0.15 + 0.85 * vivid
    icy = torch.tensor([0.55, 0.95, 1.0]).view(1, 3)
    weight = (chroma / hi.clamp_min(1e-3) * 4.0).clamp(0.0, 1.0)
    return icy + (vivid - icy) * weight


def _style_neon(scene: Scene, size: int) -> Tensor:
    s = scene.px_scale
    n = scene.background.shape[0]
    glow_lines = torch.zeros(n, 3, size, size)
    for layer in scene.layers:
        if layer.glaze:
            continue
        cover = _coverage(layer)
        tint = _neon_tint(layer.color)
        line = cover if layer.stroke else _band(layer, 0.75 * s)
        if not layer.stroke:  # a nearer shape hides the lines behind it
            glow_lines = glow_lines * (1.0 - cover)
        glow_lines = _over(glow_lines, tint, line)
    glow = blur(glow_lines, max(1, round(2 * s)))
    dark = 0.02 + scene.background * 0.10
    return dark.view(n, 3, 1, 1) + glow_lines + 1.6 * glow


STYLE_FUNCTIONS: dict[str, Callable[[Scene, int], Tensor]] = {
    "photo": _style_photo,
    "sketch": _style_sketch,
    "pixel art": _style_pixel_art,
    "comic": _style_comic,
    "watercolor": _style_watercolor,
    "neon": _style_neon,
}
