"""Deterministic vectorised procedural renderer of the mini world: attributes x style x character -> image."""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from replication.miniworld.attributes import (
    ATTRIBUTE_INDEX,
    CHARACTERS,
    HAIR_PALETTE,
    SKIN_PALETTE,
    STYLES,
    check_attributes,
    check_character,
    check_style,
    hsv_to_rgb,
    light_angle,
    palette_lookup,
)

# Samples are rendered in chunks so that every per-pixel temporary stays in the CPU cache; the result does not depend
# on the chunking because every operation below is elementwise or a per-image window.
_CHUNK = 32
_REFERENCE_SIZE = 64.0  # pixel constants (line widths, blur radii, block size) are given for 64 px and scaled
_EPS = 1e-6


class RenderError(ValueError):
    """A render request that cannot be honoured (bad size, mismatched per-sample lists)."""


# ----------------------------------------------------------------------------------------------------------- primitives
# All shapes are signed distances in head units (negative inside) on the per-sample local frame (u right, v down,
# head centre at 0, head half-height 1). They are cheap approximations of the exact distance, accurate near the
# boundary, which is all the anti-aliasing and the outlines need.


def _ellipse(u: Tensor, v: Tensor, cu, cv, ru, rv) -> Tensor:
    pu = (u - cu) / ru
    pv = (v - cv) / rv
    k0 = torch.sqrt(pu * pu + pv * pv)
    k1 = torch.sqrt(pu * pu / (ru * ru) + pv * pv / (rv * rv)).clamp_min(_EPS)
    return k0 * (k0 - 1.0) / k1


def _circle(u: Tensor, v: Tensor, cu, cv, r) -> Tensor:
    return torch.sqrt((u - cu) ** 2 + (v - cv) ** 2) - r


def _capsule(u: Tensor, v: Tensor, ax, ay, bx, by, r) -> Tensor:
    pax, pay = u - ax, v - ay
    bax, bay = bx - ax, by - ay
    h = ((pax * bax + pay * bay) / (bax * bax + bay * bay)).clamp(0.0, 1.0)
    return torch.sqrt((pax - bax * h) ** 2 + (pay - bay * h) ** 2) - r


def _polygon(u: Tensor, v: Tensor, points: Sequence[tuple[float, float]]) -> Tensor:
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


def _rounded_box(u: Tensor, v: Tensor, cu, cv, hu, hv, radius) -> Tensor:
    qu = (u - cu).abs() - hu + radius
    qv = (v - cv).abs() - hv + radius
    outside = torch.sqrt(qu.clamp_min(0) ** 2 + qv.clamp_min(0) ** 2)
    return outside + torch.maximum(qu, qv).clamp_max(0) - radius


def _arc(u: Tensor, v: Tensor, cv: float, half_width: float, bend, thickness: float, zigzag: float = 0.0) -> Tensor:
    """Stroke along the parabola v = cv + bend * (1 - (u/w)^2) - bend/2 for |u| <= w (bend > 0: corners up)."""
    uc = u.clamp(-half_width, half_width)
    t = uc / half_width
    line = cv + bend * (0.5 - t * t)
    if zigzag:
        line = line + zigzag * (_triangle_wave(uc * 6.0) - 0.5)
    slope = -2.0 * bend * uc / (half_width * half_width)
    dv = (v - line) / torch.sqrt(1.0 + slope * slope)
    return torch.sqrt((u - uc) ** 2 + dv * dv) - thickness


def _triangle_wave(x: Tensor) -> Tensor:
    """Periodic 0..1..0 ramp with period 1 (0 at integers)."""
    return (x - torch.floor(x) - 0.5).abs() * -2.0 + 1.0


def _hash_noise(seed: Tensor, size: int) -> Tensor:
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


def _blur(image: Tensor, radius: int) -> Tensor:
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


def _smooth_noise(seed: Tensor, size: int, cell: int) -> Tensor:
    """Value noise [N, 1, size, size] in [0, 1]: hashed lattice of spacing `cell` px, bilinearly interpolated."""
    coarse = max(2, size // cell)
    lattice = _hash_noise(seed, coarse).unsqueeze(1)
    return F.interpolate(lattice, size=(size, size), mode="bilinear", align_corners=False)


# ------------------------------------------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Layer:
    """One drawable region: its distance field in pixels, flat colour, and how line-based styles treat it."""

    name: str
    sdf_px: Tensor  # [n, H, W]
    color: Tensor  # [n, 3] in [0, 1]
    stroke: bool = False  # already a line (mouth, frames, scars): drawn solid, not outlined, in line styles
    opacity: Tensor | None = None  # [n] per-sample visibility (glasses)
    strands: Tensor | None = None  # [n, H, W] in [0, 1]: fur strands drawn as texture
    glaze: bool = False  # translucent tint (lenses): skipped by the line-only styles


@dataclass(frozen=True)
class _Scene:
    """Everything the styles need: ordered layers plus per-pixel lighting and per-sample colours."""

    layers: list[_Layer]
    background: Tensor  # [n, 3]
    lambert: Tensor  # [n, 1, H, W] diffuse light on the pseudo-3D head, in [0, 1]
    shadow: Tensor  # [n, 1, H, W] soft cast shadow of the head on the backdrop, in [0, 1]
    light_xy: Tensor  # [n, 2]
    noise_seed: Tensor  # [n] int64
    x: Tensor  # [1, 1, W] image coordinates in [-1, 1]
    y: Tensor  # [1, H, 1]
    px_scale: float  # size / 64


def _column(attrs: Tensor, name: str) -> Tensor:
    return attrs[:, ATTRIBUTE_INDEX[name]].view(-1, 1, 1)


def _mix(a: Tensor, b: tuple[float, float, float] | Tensor, t: float) -> Tensor:
    return a * (1 - t) + torch.as_tensor(b, dtype=torch.float32) * t


def _rgb(n: int, rgb: tuple[float, float, float]) -> Tensor:
    return torch.tensor(rgb, dtype=torch.float32).expand(n, 3)


def _character_colours(attrs: Tensor, tint: str) -> dict[str, Tensor]:
    """Colours [n, 3] a character gives the parts every face shares: face, neck, hair (fur, tufts), shirt, eyes."""
    n = attrs.shape[0]
    skin = palette_lookup(attrs[:, ATTRIBUTE_INDEX["skin_tone"]], SKIN_PALETTE)
    hair = palette_lookup(attrs[:, ATTRIBUTE_INDEX["hair_color"]], HAIR_PALETTE)
    fur = _mix(hair, (0.45, 0.33, 0.22), 0.55)
    face = {"zombie": _mix(skin, (0.50, 0.62, 0.44), 0.75), "clown": _rgb(n, (0.97, 0.96, 0.94)),
            "elf": _mix(skin, (0.97, 0.92, 0.88), 0.3),
            "werewolf": _mix(fur, (0.85, 0.75, 0.60), 0.45)}.get(tint, skin)
    neck = {"zombie": face, "clown": face, "werewolf": fur}.get(tint, skin)
    tufts = hsv_to_rgb(attrs[:, ATTRIBUTE_INDEX["hair_color"]], 0.85, 0.95)
    hair_col = {"zombie": _mix(hair, (0.35, 0.36, 0.33), 0.5), "elf": _mix(hair, (0.95, 0.90, 0.72), 0.45),
                "werewolf": fur, "clown": tufts}.get(tint, hair)
    shirt = {"human": (0.25, 0.38, 0.62), "zombie": (0.40, 0.34, 0.28), "werewolf": (0.30, 0.22, 0.16),
             "elf": (0.22, 0.50, 0.28)}.get(tint)
    # the clown's shirt takes the complementary colour of its hair tufts
    complement = hsv_to_rgb(attrs[:, ATTRIBUTE_INDEX["hair_color"]] + 0.5, 0.7, 0.85)
    shirt_col = complement if shirt is None else _rgb(n, shirt)
    white = {"zombie": (0.85, 0.85, 0.62), "werewolf": (0.96, 0.74, 0.12)}.get(tint, (0.97, 0.97, 0.95))
    pupil = {"zombie": (0.55, 0.55, 0.45), "elf": (0.10, 0.35, 0.20)}.get(tint, (0.10, 0.07, 0.06))
    return {"face": face, "neck": neck, "hair": hair_col, "shirt": shirt_col, "eye_white": _rgb(n, white),
            "pupil": _rgb(n, pupil)}


def _build_scene(attrs: Tensor, character: str, size: int, palette: str | None = None) -> _Scene:
    """Layers of `character`'s faces; `palette` (default: the character itself) names whose colours they wear."""
    n = attrs.shape[0]
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) * (2.0 / size) - 1.0
    x, y = coords.view(1, 1, size), coords.view(1, size, 1)

    cx = (_column(attrs, "face_x") - 0.5) * 0.30
    cy = (_column(attrs, "face_y") - 0.5) * 0.20
    half_height = 0.5 * (0.90 + 0.30 * _column(attrs, "face_scale"))
    theta = (_column(attrs, "rotation") - 0.5) * 0.50
    rx = 0.70 + 0.22 * _column(attrs, "face_width")
    eye_r = 0.12 + 0.08 * _column(attrs, "eye_size")
    bend = (2.0 * _column(attrs, "smile") - 1.0) * 0.20
    hair_len = _column(attrs, "hair_length")
    glasses = ((attrs[:, ATTRIBUTE_INDEX["glasses"]] - 0.45) / 0.10).clamp(0.0, 1.0)
    ppu = half_height * (size / 2.0)  # pixels per head unit

    cos_t, sin_t = torch.cos(theta), torch.sin(theta)
    dx, dy = x - cx, y - cy
    u = (cos_t * dx + sin_t * dy) / half_height
    v = (cos_t * dy - sin_t * dx) / half_height
    au = u.abs()  # left/right features are mirror images: one evaluation draws both

    colours = _character_colours(attrs, palette or character)
    background = hsv_to_rgb(attrs[:, ATTRIBUTE_INDEX["background_hue"]], 0.40, 0.80)

    def px(sdf: Tensor) -> Tensor:
        return sdf * ppu

    layers: list[_Layer] = []
    add = layers.append
    chin_taper = 0.30 if character == "elf" else 0.14
    head_rx = rx * (0.84 if character == "elf" else 1.0)
    # Egg-shaped head: narrowing the lower half makes a chin.
    head_u = u / (1.0 - chin_taper * v.clamp(0.0, 1.2))
    head = _ellipse(head_u, v, 0.0, 0.0, head_rx, 1.0)
    eye_u = 0.40 * head_rx + 0.05
    eye_v = -0.08
    mouth_v = 0.56

    # --- back hair, neck, clothes
    if character in ("human", "zombie", "elf"):
        length = hair_len
        if character == "elf":
            length = 0.45 + 0.55 * hair_len  # elves always wear it at least to the chin
        bottom = -0.25 + 1.75 * length
        if character == "elf":  # straight curtains: a rounded box instead of an oval
            back = _rounded_box(u, v, 0.0, (bottom - 1.12) / 2, head_rx + 0.17, (bottom + 1.12) / 2, 0.35)
        else:
            back = _ellipse(u, v, 0.0, (bottom - 1.12) / 2, rx + 0.15 + 0.12 * length, (bottom + 1.12) / 2)
            if character == "zombie":  # ragged ends
                back = back + 0.08 * _triangle_wave(u * 5.0 + v * 2.0)
        add(_Layer("back_hair", px(back), colours["hair"]))
    neck = _rounded_box(u, v, 0.0, 1.05, 0.32 * rx, 0.55, 0.1)
    neck_col = colours["neck"]
    add(_Layer("neck", px(neck), neck_col))
    shoulders = _ellipse(u, v, 0.0, 2.15, 1.55, 0.78)
    add(_Layer("shoulders", px(shoulders), colours["shirt"]))
    if character == "elf":  # V-shaped collar
        add(_Layer("collar", px(_polygon(u, v, [(-0.45, 1.33), (0.45, 1.33), (0.0, 1.85)])), _rgb(n, (0.85, 0.75, 0.3))))
    if character == "clown":  # ruffled collar
        ruff = _ellipse(u, v, 0.0, 1.35, 0.95, 0.28) - 0.07 * _triangle_wave(u * 4.0)
        add(_Layer("ruff", px(ruff), _rgb(n, (0.97, 0.93, 0.35))))

    # --- ears (behind the head)
    if character == "elf":
        ear = _polygon(au - head_rx, v, [(-0.12, -0.22), (-0.12, 0.20), (0.78, -0.55)])
        add(_Layer("ears", px(ear), colours["face"]))
    elif character == "werewolf":
        ear = _polygon(au, v, [(0.22, -0.70), (0.80, -0.55), (0.62, -1.60)])
        add(_Layer("ears", px(ear), colours["hair"]))
        inner = _polygon(au, v, [(0.36, -0.78), (0.68, -0.70), (0.58, -1.35)])
        add(_Layer("inner_ears", px(inner), _rgb(n, (0.85, 0.55, 0.55))))
    else:
        add(_Layer("ears", px(_ellipse(au, v, head_rx - 0.02, 0.02, 0.15, 0.24)), colours["face"]))

    # --- head
    if character == "werewolf":
        angle = torch.atan2(v, au)
        mane = _ellipse(u, v, 0.0, 0.05, head_rx + 0.18 + 0.22 * hair_len, 1.13 + 0.15 * hair_len)
        mane = mane - 0.10 * _triangle_wave(angle * 3.2)  # spiky fur silhouette
        strands = (0.45 - _triangle_wave(angle * 3.2 + 0.5)).clamp(0.0, 0.45) * 2.2
        add(_Layer("fur", px(mane), colours["hair"], strands=strands))
        face = _ellipse(u, v, 0.0, 0.12, head_rx * 0.80, 0.86)
        add(_Layer("head", px(face), colours["face"]))
    else:
        add(_Layer("head", px(head), colours["face"]))

    # --- front hair
    if character in ("human", "zombie", "elf"):
        cap = _ellipse(u, v, 0.0, -0.03, head_rx + 0.07, 1.06)
        t = u / head_rx
        if character == "elf":  # centre parting: the hairline rises to a point in the middle
            hairline = -0.62 + 0.55 * t.abs() + 0.1 * hair_len
        else:
            hairline = -0.52 + 0.32 * t * t + 0.12 * hair_len
        if character == "zombie":  # thin, ragged hair
            hairline = hairline - 0.18 + 0.16 * _triangle_wave(u * 4.5)
        add(_Layer("hair", px(torch.maximum(cap, v - hairline)), colours["hair"]))
    if character == "elf":  # circlet with a gem
        band = _arc(u, v, -0.50, head_rx * 0.86, -0.10, 0.08)
        add(_Layer("circlet", px(band), _rgb(n, (0.92, 0.78, 0.25)), stroke=True))
        add(_Layer("gem", px(_circle(u, v, 0.0, -0.53, 0.10)), _rgb(n, (0.20, 0.75, 0.45))))
    if character == "clown":
        radius = 0.20 + 0.14 * hair_len
        tufts = torch.minimum(_circle(au, v, head_rx - 0.02, -0.62, radius),
                              torch.minimum(_circle(au, v, head_rx + 0.18, -0.32, radius),
                                            _circle(au, v, head_rx + 0.10, -0.02, radius)))
        add(_Layer("tufts", px(tufts), colours["hair"]))

    # --- eyes
    if character == "zombie":
        socket = _ellipse(au, v, eye_u, eye_v, eye_r * 1.55, eye_r * 1.35)
        # Bruised rather than black, so that black glasses frames still show on top of it.
        add(_Layer("sockets", px(socket), _rgb(n, (0.30, 0.20, 0.27))))
    if character == "clown":
        diamond = _polygon(au - eye_u, (v - eye_v) / 2.2, [(0.0, -0.2), (0.17, 0.0), (0.0, 0.2), (-0.17, 0.0)])
        add(_Layer("makeup", px(diamond), _rgb(n, (0.20, 0.40, 0.90))))
    eye_ru = eye_r * (1.45 if character == "elf" else 1.25)
    eye_rv = eye_r * (0.80 if character == "elf" else 1.0)
    add(_Layer("eyes", px(_ellipse(au, v, eye_u, eye_v, eye_ru, eye_rv)), colours["eye_white"]))
    if character == "werewolf":
        pupil = _ellipse(au, v, eye_u, eye_v, eye_r * 0.45, eye_r * 0.9)
    elif character == "zombie":
        pupil = _circle(au, v, eye_u, eye_v, eye_r * 0.5)
    else:
        pupil = _circle(au, v, eye_u, eye_v, eye_r * 0.62)
    add(_Layer("pupils", px(pupil), colours["pupil"], stroke=True))

    # --- nose, mouth and character marks
    if character == "werewolf":
        muzzle = _ellipse(u, v, 0.0, 0.45, 0.40, 0.32)
        add(_Layer("muzzle", px(muzzle), _rgb(n, (0.90, 0.84, 0.74))))
        nose = _ellipse(u, v, 0.0, 0.22, 0.17, 0.11)
        add(_Layer("nose", px(nose), _rgb(n, (0.08, 0.06, 0.06)), stroke=True))
    elif character == "clown":
        pass  # the red nose is drawn over the mouth below
    else:
        nose = _capsule(u, v, 0.0, 0.10, 0.06, 0.30, 0.05)
        add(_Layer("nose", px(nose), neck_col * 0.78))

    if character == "clown":
        lips = _arc(u, v, mouth_v + 0.04, 0.46, bend * 1.3, 0.17)
        add(_Layer("mouth", px(lips), _rgb(n, (0.86, 0.10, 0.14))))
        inner = _arc(u, v, mouth_v + 0.04, 0.34, bend * 1.3, 0.06)
        add(_Layer("mouth_line", px(inner), _rgb(n, (0.35, 0.03, 0.05)), stroke=True))
        add(_Layer("red_nose", px(_circle(u, v, 0.0, 0.22, 0.17)), _rgb(n, (0.92, 0.10, 0.10))))
    elif character == "zombie":
        mouth = _arc(u, v, mouth_v, 0.34, bend, 0.12, zigzag=0.12)
        add(_Layer("mouth", px(mouth), _rgb(n, (0.22, 0.05, 0.06)), stroke=True))
    elif character == "werewolf":
        mouth_v_w = mouth_v + 0.08
        fangs = torch.minimum(
            _polygon(au, v, [(0.06, mouth_v_w - 0.02), (0.24, mouth_v_w - 0.02), (0.15, mouth_v_w + 0.26)]),
            _polygon(au, v, [(0.06, mouth_v_w + 0.02), (0.24, mouth_v_w + 0.02), (0.15, mouth_v_w - 0.26)]),
        )
        mouth = _arc(u, v, mouth_v_w, 0.30, bend, 0.10)
        add(_Layer("mouth", px(mouth), _rgb(n, (0.25, 0.06, 0.06)), stroke=True))
        add(_Layer("fangs", px(fangs), _rgb(n, (0.98, 0.98, 0.95))))
    else:
        mouth = _arc(u, v, mouth_v, 0.30, bend, 0.12)
        add(_Layer("mouth", px(mouth), _rgb(n, (0.70, 0.22, 0.24)), stroke=True))

    if character == "zombie":  # stitched scar across forehead and cheek
        scar = torch.minimum(_capsule(u, v, -0.58, -0.62, 0.10, -0.30, 0.09),
                             _capsule(u, v, 0.28, 0.18, 0.62, 0.48, 0.09))
        add(_Layer("scar", px(scar), _rgb(n, (0.45, 0.12, 0.12)), stroke=True))
        stitches = []
        for (au_, av_), (bu_, bv_) in (((-0.58, -0.62), (0.10, -0.30)), ((0.28, 0.18), (0.62, 0.48))):
            length = math.hypot(bu_ - au_, bv_ - av_)
            tu, tv = (bu_ - au_) / length, (bv_ - av_) / length
            along = (u - au_) * tu + (v - av_) * tv
            across = (u - au_) * -tv + (v - av_) * tu
            period = length / 3.0
            phase = (along / period - torch.floor(along / period) - 0.5).abs() * period
            stitch = torch.maximum(torch.maximum(phase - 0.06, across.abs() - 0.19),
                                   (along - length / 2).abs() - length / 2)
            stitches.append(stitch)
        add(_Layer("stitches", px(torch.minimum(*stitches)), _rgb(n, (0.12, 0.08, 0.08)), stroke=True))

    # --- glasses (any character); frame opacity carries the continuous attribute
    # Frames are 0.2 head units wide: 2.9 to 3.8 px at 64 px over the face_scale range.
    ring_r = eye_r + 0.13
    rings = (_circle(au, v, eye_u, eye_v, ring_r)).abs() - 0.10
    bridge = _capsule(au, v, 0.0, eye_v - 0.02, eye_u - ring_r, eye_v, 0.08)
    temple = _capsule(au, v, eye_u + ring_r, eye_v, head_rx * 0.98, eye_v - 0.06, 0.08)
    frame = torch.minimum(rings, torch.minimum(bridge, temple))
    # A pale lens keeps glasses readable even over dark eye sockets or black outlines.
    lens = _circle(au, v, eye_u, eye_v, ring_r)
    add(_Layer("lenses", px(lens), _rgb(n, (0.82, 0.92, 1.0)), opacity=glasses * 0.4, glaze=True))
    add(_Layer("glasses", px(frame), _rgb(n, (0.08, 0.08, 0.10)), stroke=True, opacity=glasses))

    # --- lighting: pseudo-3D ellipsoid normals of the head, a light in the image plane tilted toward the viewer
    ang = light_angle(attrs[:, ATTRIBUTE_INDEX["light_direction"]])
    light_xy = torch.stack([torch.cos(ang), torch.sin(ang)], dim=1)
    lx, ly = light_xy[:, 0].view(-1, 1, 1), light_xy[:, 1].view(-1, 1, 1)
    nu, nv = u / (head_rx + 0.2), v / 1.2
    nz = (1.0 - nu * nu - nv * nv).clamp_min(0.0).sqrt() + 0.35
    lambert = ((nu * lx + nv * ly) * 0.75 + nz * 0.62) / torch.sqrt(nu * nu + nv * nv + nz * nz)
    shadow_off = 0.16
    shadow_sdf = _ellipse(u + lx * shadow_off / half_height, v + ly * shadow_off / half_height, 0.0, 0.1,
                          head_rx + 0.1, 1.1)
    shadow = (0.5 - px(shadow_sdf) / (6.0 * size / _REFERENCE_SIZE)).clamp(0.0, 1.0)

    quant = (attrs[:, ATTRIBUTE_INDEX["background_hue"]] * 65535).long() * 65536
    seed = quant + (attrs[:, ATTRIBUTE_INDEX["light_direction"]] * 65535).long()
    return _Scene(layers, background, lambert.clamp(0.0, 1.0).unsqueeze(1), shadow.unsqueeze(1), light_xy, seed,
                  x, y, size / _REFERENCE_SIZE)


# --------------------------------------------------------------------------------------------------------------- styles


def _coverage(layer: _Layer, grow_px: float = 0.0, hard: bool = False) -> Tensor:
    """Coverage [n, 1, H, W] of a layer: a one-pixel linear ramp across its boundary, or a hard 0/1 edge."""
    if hard:
        alpha = (layer.sdf_px <= grow_px).to(torch.float32).unsqueeze(1)
    else:
        alpha = (0.5 + grow_px - layer.sdf_px).clamp(0.0, 1.0).unsqueeze(1)
    if layer.opacity is not None:
        alpha = alpha * layer.opacity.view(-1, 1, 1, 1)
    return alpha


def _band(layer: _Layer, half_width_px: float) -> Tensor:
    """Anti-aliased line [n, 1, H, W] of the given half-width centred on a layer's boundary."""
    line = (0.5 + half_width_px - layer.sdf_px.abs()).clamp(0.0, 1.0).unsqueeze(1)
    if layer.opacity is not None:
        line = line * layer.opacity.view(-1, 1, 1, 1)
    return line


def _over(image: Tensor, color: Tensor, alpha: Tensor) -> Tensor:
    if color.ndim == 2:
        color = color.view(-1, 3, 1, 1)
    return image + (color - image) * alpha


def _flat(scene: _Scene, size: int, pale: float = 0.0, grow_px: float = 0.0, strand_dark: float = 0.35,
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


def _foreground(scene: _Scene) -> Tensor:
    """Union coverage [n, 1, H, W] of every layer (everything but the backdrop)."""
    fg = None
    for layer in scene.layers:
        alpha = _coverage(layer)
        fg = alpha if fg is None else fg + alpha * (1.0 - fg)
    return fg


def _style_photo(scene: _Scene, size: int) -> Tensor:
    image = _flat(scene, size)
    fg = _foreground(scene)
    lx = scene.light_xy[:, 0].view(-1, 1, 1, 1)
    ly = scene.light_xy[:, 1].view(-1, 1, 1, 1)
    backdrop = 0.92 + 0.12 * (scene.x.unsqueeze(1) * lx + scene.y.unsqueeze(1) * ly) - 0.30 * scene.shadow
    body = 0.38 + 0.72 * scene.lambert
    image = image * (backdrop + (body - backdrop) * fg)
    grain = _hash_noise(scene.noise_seed, size).unsqueeze(1) - 0.5
    return image + 0.05 * grain


def _hatching(u: Tensor, period: float | None) -> Tensor:
    """Pencil hatching strength 0..0.99 along u (pixels across the lines) with the given period; None: an even tone."""
    if period is None:
        return torch.full_like(u, 0.4 * 2.2)
    return (_triangle_wave(u / period) - 0.55).clamp(0.0, 0.45) * 2.2


def _style_sketch(scene: _Scene, size: int, hatch_period: float | None = 4.0) -> Tensor:
    # hatch_period: spacing of the hatching along x and y in pixels at 64x64 (the diagonal lines are 1/sqrt(2) of it
    # apart); other values are for replication.miniworld.sketch_probe, never for the shipped world
    s = scene.px_scale
    n = scene.background.shape[0]
    shaded = _flat(scene, size) * (0.45 + 0.65 * scene.lambert)
    luminance = (shaded * torch.tensor([0.30, 0.59, 0.11]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    # Paper stays white except where the head casts its shadow; only the drawn figure is hatched by tone.
    fg = _foreground(scene)
    darkness = fg * ((0.55 - luminance) / 0.5).clamp(0.0, 1.0) + (1.0 - fg) * 0.45 * scene.shadow
    xp = (scene.x.unsqueeze(1) + 1.0) * (size / 2.0) / s
    yp = (scene.y.unsqueeze(1) + 1.0) * (size / 2.0) / s
    hatch_a = _hatching(xp + yp, hatch_period)
    hatch_b = _hatching(xp - yp, hatch_period)
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
    paper = 0.95 - 0.06 * _smooth_noise(scene.noise_seed, size, 3)
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


def _style_pixel_art(scene: _Scene, size: int) -> Tensor:
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


def _style_comic(scene: _Scene, size: int) -> Tensor:
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
            image = _over(image, _rgb(n, (0.04, 0.03, 0.03)), cover)
        else:
            color = (layer.color - layer.color.mean(1, keepdim=True)) * 1.3 + layer.color.mean(1, keepdim=True)
            image = _over(image, color.clamp(0, 1), cover)
            if layer.strands is not None:
                image = _over(image, _rgb(n, (0.04, 0.03, 0.03)), 0.8 * layer.strands.unsqueeze(1) * cover)
            image = _over(image, _rgb(n, (0.02, 0.02, 0.02)), _band(layer, 1.35 * s))
        fg = cover if fg is None else fg + cover * (1.0 - fg)
    in_shadow = fg * (scene.lambert < 0.5).float()
    return image * (1.0 - 0.55 * dots * in_shadow)


def _style_watercolor(scene: _Scene, size: int) -> Tensor:
    s = scene.px_scale
    n = scene.background.shape[0]
    flat = _flat(scene, size, pale=0.35, strand_dark=0.2)
    wash = _blur(flat, max(1, round(1 * s)))
    wide = _blur(flat, max(2, round(3 * s)))
    # Pigment pools at the rim of each wash: darken where the sharp and wide washes disagree.
    rim = (wash - wide).abs().sum(1, keepdim=True).clamp(0.0, 0.5)
    density = (1.0 - wash) * (1.0 + 1.6 * rim)
    granulation = _smooth_noise(scene.noise_seed, size, 5)
    density = density * (0.70 + 0.55 * granulation)
    # A white paper margin with an irregular edge: the painting does not reach the borders.
    edge = torch.minimum(1.0 - scene.x.abs(), 1.0 - scene.y.abs()).unsqueeze(1) * (size / 2.0) / s
    margin = ((edge - 3.0 - 3.0 * granulation) / 2.0).clamp(0.0, 1.0)
    paper = 0.97 - 0.05 * _hash_noise(scene.noise_seed + 7, size).unsqueeze(1)
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


def _style_neon(scene: _Scene, size: int) -> Tensor:
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
    glow = _blur(glow_lines, max(1, round(2 * s)))
    dark = 0.02 + scene.background * 0.10
    return dark.view(n, 3, 1, 1) + glow_lines + 1.6 * glow


_STYLE_FUNCTIONS = {
    "photo": _style_photo,
    "sketch": _style_sketch,
    "pixel art": _style_pixel_art,
    "comic": _style_comic,
    "watercolor": _style_watercolor,
    "neon": _style_neon,
}


# ------------------------------------------------------------------------------------------------------------ public API


def _per_sample(names: str | Sequence[str], n: int, check: Callable[[str], str], what: str) -> list[str]:
    if isinstance(names, str):
        return [check(names)] * n
    names = list(names)
    if len(names) != n:
        raise RenderError(f"got {len(names)} {what} names for {n} attribute rows; pass one name or one per row")
    return [check(name) for name in names]


def render(attrs: Tensor, style: str | Sequence[str], character: str | Sequence[str], *, size: int = 64,
           palette: str | Sequence[str] | None = None) -> Tensor:
    """Render attribute rows [N, A] as float32 images [N, 3, size, size] in [-1, 1].

    `style` and `character` are one name for the whole batch or one name per row. The output is a pure function of
    each row and its domain: identical bytes on every call and whatever else is in the batch. `palette` (character
    names, same forms) dresses each face in another character's colours while keeping its own shapes: a human face
    with a zombie's grey-green skin but no scars, sockets or stitches. Such images belong to no domain; they are the
    colour half of a character change, which a guidance should not mistake for the whole of it.
    """
    attrs = check_attributes(attrs)
    if not isinstance(size, int) or size < 16 or size > 1024:
        raise RenderError(f"size must be an integer between 16 and 1024 pixels, got {size!r}")
    n = attrs.shape[0]
    styles = _per_sample(style, n, check_style, "style")
    characters = _per_sample(character, n, check_character, "character")
    palettes = characters if palette is None else _per_sample(palette, n, check_character, "palette")
    out = torch.empty(n, 3, size, size, dtype=torch.float32)
    groups: dict[tuple[int, int, int], list[int]] = {}
    for i, (s_name, c_name, p_name) in enumerate(zip(styles, characters, palettes)):
        groups.setdefault((STYLES.index(s_name), CHARACTERS.index(c_name), CHARACTERS.index(p_name)), []).append(i)
    for (s_idx, c_idx, p_idx), rows in sorted(groups.items()):
        for start in range(0, len(rows), _CHUNK):
            index = torch.tensor(rows[start:start + _CHUNK])
            scene = _build_scene(attrs[index], CHARACTERS[c_idx], size, palette=CHARACTERS[p_idx])
            image = _STYLE_FUNCTIONS[STYLES[s_idx]](scene, size)
            out[index] = image.clamp(0.0, 1.0) * 2.0 - 1.0
    return out


def showcase_attributes() -> Tensor:
    """Six hand-picked attribute rows [6, A] that between them show every attribute at both ends of its range."""
    rows = [
        # face_x face_y scale rot width skin hair_c hair_l eye smile glasses bg light
        (0.50, 0.50, 0.60, 0.50, 0.50, 0.10, 0.05, 0.90, 0.50, 0.95, 0.90, 0.60, 0.15),
        (0.10, 0.40, 0.30, 0.30, 0.20, 0.70, 0.30, 0.10, 0.90, 0.10, 0.10, 0.05, 0.60),
        (0.90, 0.60, 0.95, 0.70, 0.90, 0.40, 0.75, 0.50, 0.20, 0.80, 0.00, 0.33, 0.85),
        (0.50, 0.30, 0.05, 0.50, 0.60, 0.95, 1.00, 0.70, 0.60, 0.50, 1.00, 0.80, 0.40),
        (0.30, 0.70, 0.75, 0.80, 0.00, 0.25, 0.52, 0.00, 0.40, 0.00, 0.70, 0.15, 0.00),
        (0.70, 0.50, 0.50, 0.20, 1.00, 0.55, 0.90, 1.00, 1.00, 1.00, 0.20, 0.50, 0.70),
    ]
    return torch.tensor(rows, dtype=torch.float32)


def render_grid(attrs: Tensor | None = None, *, size: int = 64) -> Tensor:
    """Image grid [3, 30*size, M*size] in [-1, 1]: one row per (style, character) domain, one column per attribute row."""
    attrs = check_attributes(showcase_attributes() if attrs is None else attrs)
    m = attrs.shape[0]
    domains = [(s, c) for s in STYLES for c in CHARACTERS]
    rows = [render(attrs, s, c, size=size) for s, c in domains]
    grid = torch.stack(rows)  # [30, m, 3, size, size]
    return grid.permute(2, 0, 3, 1, 4).reshape(3, len(domains) * size, m * size)


def save_grid_png(path: Path, attrs: Tensor | None = None, *, size: int = 64, label_width: int = 110) -> None:
    """Write render_grid as a PNG with each row labelled by its domain; the file is replaced atomically."""
    from PIL import Image, ImageDraw

    grid = render_grid(attrs, size=size)
    pixels = ((grid + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    body = Image.fromarray(pixels)
    canvas = Image.new("RGB", (body.width + label_width, body.height), (255, 255, 255))
    canvas.paste(body, (label_width, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (s, c) in enumerate((s, c) for s in STYLES for c in CHARACTERS):
        draw.text((4, i * size + size // 2 - 6), f"{s} / {c}", fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            canvas.save(handle, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: write a labelled PNG grid of all 30 domains for six attribute rows."""
    parser = argparse.ArgumentParser(description="Render the mini world's 30 domains for six attribute vectors.")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--seed", type=int, default=None,
                        help="draw six random attribute rows from this seed instead of the hand-picked showcase")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        attrs = None
        if args.seed is not None:
            from replication.miniworld.attributes import sample_attributes

            attrs = sample_attributes(6, torch.Generator().manual_seed(args.seed))
        if args.out.suffix.lower() != ".png":
            raise RenderError(f"--out must name a .png file, got {str(args.out)!r}")
        save_grid_png(args.out, attrs, size=args.size)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
