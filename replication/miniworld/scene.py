"""Scene building of the mini world: a face's layers, colours and lighting from attribute rows and a character."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from replication.miniworld.attributes import (
    ATTRIBUTE_INDEX,
    HAIR_PALETTE,
    SKIN_PALETTE,
    hsv_to_rgb,
    light_angle,
    palette_lookup,
)
from replication.miniworld.shapes import arc, capsule, circle, ellipse, polygon, rounded_box, triangle_wave

_REFERENCE_SIZE = 64.0  # pixel constants (line widths, blur radii, block size) are given for 64 px and scaled


@dataclass(frozen=True)
class Layer:
    """One drawable region: its distance field in pixels, flat colour, and how line-based styles treat it."""

    name: str
    sdf_px: Tensor  # [n, H, W]
    color: Tensor  # [n, 3] in [0, 1]
    stroke: bool = False  # already a line (mouth, frames, scars): drawn solid, not outlined, in line styles
    opacity: Tensor | None = None  # [n] per-sample visibility (glasses)
    strands: Tensor | None = None  # [n, H, W] in [0, 1]: fur strands drawn as texture
    glaze: bool = False  # translucent tint (lenses): skipped by the line-only styles


@dataclass(frozen=True)
class Scene:
    """Everything the styles need: ordered layers plus per-pixel lighting and per-sample colours."""

    layers: list[Layer]
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


def rgb(n: int, value: tuple[float, float, float]) -> Tensor:
    return torch.tensor(value, dtype=torch.float32).expand(n, 3)


def _character_colours(attrs: Tensor, tint: str) -> dict[str, Tensor]:
    """Colours [n, 3] a character gives the parts every face shares: face, neck, hair (fur, tufts), shirt, eyes."""
    n = attrs.shape[0]
    skin = palette_lookup(attrs[:, ATTRIBUTE_INDEX["skin_tone"]], SKIN_PALETTE)
    hair = palette_lookup(attrs[:, ATTRIBUTE_INDEX["hair_color"]], HAIR_PALETTE)
    fur = _mix(hair, (0.45, 0.33, 0.22), 0.55)
    face = {"zombie": _mix(skin, (0.50, 0.62, 0.44), 0.75), "clown": rgb(n, (0.97, 0.96, 0.94)),
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
    shirt_col = complement if shirt is None else rgb(n, shirt)
    white = {"zombie": (0.85, 0.85, 0.62), "werewolf": (0.96, 0.74, 0.12)}.get(tint, (0.97, 0.97, 0.95))
    pupil = {"zombie": (0.55, 0.55, 0.45), "elf": (0.10, 0.35, 0.20)}.get(tint, (0.10, 0.07, 0.06))
    return {"face": face, "neck": neck, "hair": hair_col, "shirt": shirt_col, "eye_white": rgb(n, white),
            "pupil": rgb(n, pupil)}


def build_scene(attrs: Tensor, character: str, size: int, palette: str | None = None) -> Scene:
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

    layers: list[Layer] = []
    add = layers.append
    chin_taper = 0.30 if character == "elf" else 0.14
    head_rx = rx * (0.84 if character == "elf" else 1.0)
    # Egg-shaped head: narrowing the lower half makes a chin.
    head_u = u / (1.0 - chin_taper * v.clamp(0.0, 1.2))
    head = ellipse(head_u, v, 0.0, 0.0, head_rx, 1.0)
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
            back = rounded_box(u, v, 0.0, (bottom - 1.12) / 2, head_rx + 0.17, (bottom + 1.12) / 2, 0.35)
        else:
            back = ellipse(u, v, 0.0, (bottom - 1.12) / 2, rx + 0.15 + 0.12 * length, (bottom + 1.12) / 2)
            if character == "zombie":  # ragged ends
                back = back + 0.08 * triangle_wave(u * 5.0 + v * 2.0)
        add(Layer("back_hair", px(back), colours["hair"]))
    neck = rounded_box(u, v, 0.0, 1.05, 0.32 * rx, 0.55, 0.1)
    neck_col = colours["neck"]
    add(Layer("neck", px(neck), neck_col))
    shoulders = ellipse(u, v, 0.0, 2.15, 1.55, 0.78)
    add(Layer("shoulders", px(shoulders), colours["shirt"]))
    if character == "elf":  # V-shaped collar
        add(Layer("collar", px(polygon(u, v, [(-0.45, 1.33), (0.45, 1.33), (0.0, 1.85)])), rgb(n, (0.85, 0.75, 0.3))))
    if character == "clown":  # ruffled collar
        ruff = ellipse(u, v, 0.0, 1.35, 0.95, 0.28) - 0.07 * triangle_wave(u * 4.0)
        add(Layer("ruff", px(ruff), rgb(n, (0.97, 0.93, 0.35))))

    # --- ears (behind the head)
    if character == "elf":
        ear = polygon(au - head_rx, v, [(-0.12, -0.22), (-0.12, 0.20), (0.78, -0.55)])
        add(Layer("ears", px(ear), colours["face"]))
    elif character == "werewolf":
        ear = polygon(au, v, [(0.22, -0.70), (0.80, -0.55), (0.62, -1.60)])
        add(Layer("ears", px(ear), colours["hair"]))
        inner = polygon(au, v, [(0.36, -0.78), (0.68, -0.70), (0.58, -1.35)])
        add(Layer("inner_ears", px(inner), rgb(n, (0.85, 0.55, 0.55))))
    else:
        add(Layer("ears", px(ellipse(au, v, head_rx - 0.02, 0.02, 0.15, 0.24)), colours["face"]))

    # --- head
    if character == "werewolf":
        angle = torch.atan2(v, au)
        mane = ellipse(u, v, 0.0, 0.05, head_rx + 0.18 + 0.22 * hair_len, 1.13 + 0.15 * hair_len)
        mane = mane - 0.10 * triangle_wave(angle * 3.2)  # spiky fur silhouette
        strands = (0.45 - triangle_wave(angle * 3.2 + 0.5)).clamp(0.0, 0.45) * 2.2
        add(Layer("fur", px(mane), colours["hair"], strands=strands))
        face = ellipse(u, v, 0.0, 0.12, head_rx * 0.80, 0.86)
        add(Layer("head", px(face), colours["face"]))
    else:
        add(Layer("head", px(head), colours["face"]))

    # --- front hair
    if character in ("human", "zombie", "elf"):
        cap = ellipse(u, v, 0.0, -0.03, head_rx + 0.07, 1.06)
        t = u / head_rx
        if character == "elf":  # centre parting: the hairline rises to a point in the middle
            hairline = -0.62 + 0.55 * t.abs() + 0.1 * hair_len
        else:
            hairline = -0.52 + 0.32 * t * t + 0.12 * hair_len
        if character == "zombie":  # thin, ragged hair
            hairline = hairline - 0.18 + 0.16 * triangle_wave(u * 4.5)
        add(Layer("hair", px(torch.maximum(cap, v - hairline)), colours["hair"]))
    if character == "elf":  # circlet with a gem
        band = arc(u, v, -0.50, head_rx * 0.86, -0.10, 0.08)
        add(Layer("circlet", px(band), rgb(n, (0.92, 0.78, 0.25)), stroke=True))
        add(Layer("gem", px(circle(u, v, 0.0, -0.53, 0.10)), rgb(n, (0.20, 0.75, 0.45))))
    if character == "clown":
        radius = 0.20 + 0.14 * hair_len
        tufts = torch.minimum(circle(au, v, head_rx - 0.02, -0.62, radius),
                              torch.minimum(circle(au, v, head_rx + 0.18, -0.32, radius),
                                            circle(au, v, head_rx + 0.10, -0.02, radius)))
        add(Layer("tufts", px(tufts), colours["hair"]))

    # --- eyes
    if character == "zombie":
        socket = ellipse(au, v, eye_u, eye_v, eye_r * 1.55, eye_r * 1.35)
        # Bruised rather than black, so that black glasses frames still show on top of it.
        add(Layer("sockets", px(socket), rgb(n, (0.30, 0.20, 0.27))))
    if character == "clown":
        diamond = polygon(au - eye_u, (v - eye_v) / 2.2, [(0.0, -0.2), (0.17, 0.0), (0.0, 0.2), (-0.17, 0.0)])
        add(Layer("makeup", px(diamond), rgb(n, (0.20, 0.40, 0.90))))
    eye_ru = eye_r * (1.45 if character == "elf" else 1.25)
    eye_rv = eye_r * (0.80 if character == "elf" else 1.0)
    add(Layer("eyes", px(ellipse(au, v, eye_u, eye_v, eye_ru, eye_rv)), colours["eye_white"]))
    if character == "werewolf":
        pupil = ellipse(au, v, eye_u, eye_v, eye_r * 0.45, eye_r * 0.9)
    elif character == "zombie":
        pupil = circle(au, v, eye_u, eye_v, eye_r * 0.5)
    else:
        pupil = circle(au, v, eye_u, eye_v, eye_r * 0.62)
    add(Layer("pupils", px(pupil), colours["pupil"], stroke=True))

    # --- nose, mouth and character marks
    if character == "werewolf":
        muzzle = ellipse(u, v, 0.0, 0.45, 0.40, 0.32)
        add(Layer("muzzle", px(muzzle), rgb(n, (0.90, 0.84, 0.74))))
        nose = ellipse(u, v, 0.0, 0.22, 0.17, 0.11)
        add(Layer("nose", px(nose), rgb(n, (0.08, 0.06, 0.06)), stroke=True))
    elif character == "clown":
        pass  # the red nose is drawn over the mouth below
    else:
        nose = capsule(u, v, 0.0, 0.10, 0.06, 0.30, 0.05)
        add(Layer("nose", px(nose), neck_col * 0.78))

    if character == "clown":
        lips = arc(u, v, mouth_v + 0.04, 0.46, bend * 1.3, 0.17)
        add(Layer("mouth", px(lips), rgb(n, (0.86, 0.10, 0.14))))
        inner = arc(u, v, mouth_v + 0.04, 0.34, bend * 1.3, 0.06)
        add(Layer("mouth_line", px(inner), rgb(n, (0.35, 0.03, 0.05)), stroke=True))
        add(Layer("red_nose", px(circle(u, v, 0.0, 0.22, 0.17)), rgb(n, (0.92, 0.10, 0.10))))
    elif character == "zombie":
        mouth = arc(u, v, mouth_v, 0.34, bend, 0.12, zigzag=0.12)
        add(Layer("mouth", px(mouth), rgb(n, (0.22, 0.05, 0.06)), stroke=True))
    elif character == "werewolf":
        mouth_v_w = mouth_v + 0.08
        fangs = torch.minimum(
            polygon(au, v, [(0.06, mouth_v_w - 0.02), (0.24, mouth_v_w - 0.02), (0.15, mouth_v_w + 0.26)]),
            polygon(au, v, [(0.06, mouth_v_w + 0.02), (0.24, mouth_v_w + 0.02), (0.15, mouth_v_w - 0.26)]),
        )
        mouth = arc(u, v, mouth_v_w, 0.30, bend, 0.10)
        add(Layer("mouth", px(mouth), rgb(n, (0.25, 0.06, 0.06)), stroke=True))
        add(Layer("fangs", px(fangs), rgb(n, (0.98, 0.98, 0.95))))
    else:
        mouth = arc(u, v, mouth_v, 0.30, bend, 0.12)
        add(Layer("mouth", px(mouth), rgb(n, (0.70, 0.22, 0.24)), stroke=True))

    if character == "zombie":  # stitched scar across forehead and cheek
        scar = torch.minimum(capsule(u, v, -0.58, -0.62, 0.10, -0.30, 0.09),
                             capsule(u, v, 0.28, 0.18, 0.62, 0.48, 0.09))
        add(Layer("scar", px(scar), rgb(n, (0.45, 0.12, 0.12)), stroke=True))
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
        add(Layer("stitches", px(torch.minimum(*stitches)), rgb(n, (0.12, 0.08, 0.08)), stroke=True))

    # --- glasses (any character); frame opacity carries the continuous attribute
    # Frames are 0.2 head units wide: 2.9 to 3.8 px at 64 px over the face_scale range.
    ring_r = eye_r + 0.13
    rings = (circle(au, v, eye_u, eye_v, ring_r)).abs() - 0.10
    bridge = capsule(au, v, 0.0, eye_v - 0.02, eye_u - ring_r, eye_v, 0.08)
    temple = capsule(au, v, eye_u + ring_r, eye_v, head_rx * 0.98, eye_v - 0.06, 0.08)
    frame = torch.minimum(rings, torch.minimum(bridge, temple))
    # A pale lens keeps glasses readable even over dark eye sockets or black outlines.
    lens = circle(au, v, eye_u, eye_v, ring_r)
    add(Layer("lenses", px(lens), rgb(n, (0.82, 0.92, 1.0)), opacity=glasses * 0.4, glaze=True))
    add(Layer("glasses", px(frame), rgb(n, (0.08, 0.08, 0.10)), stroke=True, opacity=glasses))

    # --- lighting: pseudo-3D ellipsoid normals of the head, a light in the image plane tilted toward the viewer
    ang = light_angle(attrs[:, ATTRIBUTE_INDEX["light_direction"]])
    light_xy = torch.stack([torch.cos(ang), torch.sin(ang)], dim=1)
    lx, ly = light_xy[:, 0].view(-1, 1, 1), light_xy[:, 1].view(-1, 1, 1)
    nu, nv = u / (head_rx + 0.2), v / 1.2
    nz = (1.0 - nu * nu - nv * nv).clamp_min(0.0).sqrt() + 0.35
    lambert = ((nu * lx + nv * ly) * 0.75 + nz * 0.62) / torch.sqrt(nu * nu + nv * nv + nz * nz)
    shadow_off = 0.16
    shadow_sdf = ellipse(u + lx * shadow_off / half_height, v + ly * shadow_off / half_height, 0.0, 0.1,
                         head_rx + 0.1, 1.1)
    shadow = (0.5 - px(shadow_sdf) / (6.0 * size / _REFERENCE_SIZE)).clamp(0.0, 1.0)

    quant = (attrs[:, ATTRIBUTE_INDEX["background_hue"]] * 65535).long() * 65536
    seed = quant + (attrs[:, ATTRIBUTE_INDEX["light_direction"]] * 65535).long()
    return Scene(layers, background, lambert.clamp(0.0, 1.0).unsqueeze(1), shadow.unsqueeze(1), light_xy, seed,
                 x, y, size / _REFERENCE_SIZE)
