"""Signed-distance shape primitives and deterministic noise the mini-world renderer draws with."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

_EPS = 1e-6

# All shapes are signed distances in head units (negative inside) on the per-sample local frame (u right, v down,
# head centre at 0, head half-height 1). They are cheap approximations of the exact distance, accurate near the
# boundary, which is all the anti-aliasing and the outlines need.


def ellipse(u: Tensor, v: Tensor, cu, cv, ru, rv) -> Tensor:
    pu = (u - cu) / ru
    pv = (v - cv) / rv
    k0 = torch.sqrt(pu * pu + pv * pv)
    k1 = torch.sqrt(pu * pu / (ru * ru) + pv * pv / (rv * rv)).clamp_min(_EPS)
    return k0 * (k0 - 1.0) / k1


def circle(u: Tensor, v: Tensor, cu, cv, r) -> Tensor:
    return torch.sqrt((u - cu) ** 2 + (v - cv) ** 2) - r


def capsule(u: Tensor, v: Tensor, ax, ay, bx, by, r) -> Tensor:
    pax, pay = u - ax, v - ay
    bax, bay = bx - ax, by - ay
    h = ((pax * bax + pay * bay) / (bax * bax + bay * bay)).clamp(0.0, 1.0)
    return torch.sqrt((pax - bax * h) ** 2 + (pay - bay * h) ** 2) - r


def polygon(u: Tensor, v: Tensor, points: Sequence[tuple[float, float]]) -> Tensor:
    """Convex polygon as the maximum of its edge half-planes (exact inside, slightly short outside corners)."""
    cu = sum(p[0] for p in points) / len(points)
    cv = sum(p[1] for p in points) / len(points)
    sdf = None
    for (au, av), (bu, bv) in zip(points, list(points[1:]) + [points[0]]):
        nu, nv = bv - av, -(bu - au)
        norm = math.hypot(nu, nv)
        nu, nv = nu / norm, nv / norm
        if nu * (cu - au) + nv * (cv - av) > 0:  # make the normal point away from the centroid
            nu, nv = -nu, -nv
        edge = (u - au) * nu + (v - av) * nv
        sdf = edge if sdf is None else torch.maximum(sdf, edge)
    return sdf


def rounded_box(u: Tensor, v: Tensor, cu, cv, hu, hv, radius) -> Tensor:
    qu = (u - cu).abs() - hu + radius
    qv = (v - cv).abs() - hv + radius
    outside = torch.sqrt(qu.clamp_min(0) ** 2 + qv.clamp_min(0) ** 2)
    return outside + torch.maximum(qu, qv).clamp_max(0) - radius


def arc(u: Tensor, v: Tensor, cv: float, half_width: float, bend, thickness: float, zigzag: float = 0.0) -> Tensor:
    """Stroke along the parabola v = cv + bend * (1 - (u/w)^2) - bend/2 for |u| <= w (bend > 0: corners up)."""
    uc = u.clamp(-half_width, half_width)
    t = uc / half_width
    line = cv + bend * (0.5 - t * t)
    if zigzag:
        line = line + zigzag * (triangle_wave(uc * 6.0) - 0.5)
    slope = -2.0 * bend * uc / (half_width * half_width)
    dv = (v - line) / torch.sqrt(1.0 + slope * slope)
    return torch.sqrt((u - uc) ** 2 + dv * dv) - thickness


def triangle_wave(x: Tensor) -> Tensor:
    """Periodic 0..1..0 ramp with period 1 (0 at integers)."""
    return (x - torch.floor(x) - 0.5).abs() * -2.0 + 1.0


def hash_noise(seed: Tensor, size: int) -> Tensor:
    """Per-pixel uniform noise [N, size, size] in [0, 1): an integer hash of (seed, x, y), never a global RNG."""
    # Values are kept below 2**32 and multipliers below 2**30, so no int64 product can overflow.
    mask = 0xFFFFFFFF
    coords = torch.arange(size, dtype=torch.int64)
    h = (coords.view(1, 1, size) * 374761393 + coords.view(1, size, 1) * 668265263) & mask
    h = h ^ (((seed.view(-1, 1, 1) & mask) * 1013904223) & mask)
    h = ((h ^ (h >> 15)) * 777767777) & mask
    h = ((h ^ (h >> 13)) * 1025202361) & mask
    h = h ^ (h >> 16)
    return (h & 0xFFFFFF).to(torch.float32) / float(1 << 24)


def blur(image: Tensor, radius: int) -> Tensor:
    """Two passes of a (2r+1) box filter with edge replication: a deterministic, batch-independent soft blur."""
    if radius <= 0:
        return image
    kernel = 2 * radius + 1
    # Separable running sums (cumsum differences) cost O(1) per pixel whatever the radius; each pass eats `radius`
    # pixels of the replicated border on every side.
    image = F.pad(image, (2 * radius,) * 4, mode="replicate")
    for _ in range(2):
        for dim in (-1, -2):
            running = F.pad(image.cumsum(dim), (1, 0) if dim == -1 else (0, 0, 1, 0))
            length = running.shape[dim]
            image = (running.narrow(dim, kernel, length - kernel) - running.narrow(dim, 0, length - kernel)) / kernel
    return image


def smooth_noise(seed: Tensor, size: int, cell: int) -> Tensor:
    """Value noise [N, 1, size, size] in [0, 1]: hashed lattice of spacing `cell` px, bilinearly interpolated."""
    coarse = max(2, size // cell)
    lattice = hash_noise(seed, coarse).unsqueeze(1)
    return F.interpolate(lattice, size=(size, size), mode="bilinear", align_corners=False)
