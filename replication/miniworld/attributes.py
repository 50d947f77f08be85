"""Attribute vectors of the mini world: names, [0,1] storage, physical meaning, sampling, domain names."""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Every attribute is stored in [0, 1] so a generator (or an evaluator's regression head) can interpolate between any two
# faces; the physical meaning of each stored value u is given by the mapping next to it. Image coordinates run from -1
# (left/top) to +1 (right/bottom); "head units" are multiples of the head's half-height.
ATTRIBUTE_NAMES: tuple[str, ...] = (
    "face_x",  # head centre x = (u - 0.5) * 0.30 image units (about +-5 px at 64 px)
    "face_y",  # head centre y = (u - 0.5) * 0.20 image units (down is positive)
    "face_scale",  # head half-height = 0.5 * (0.90 + 0.30 u) image units (14.4 to 19.2 px at 64 px)
    "rotation",  # in-plane head tilt = (u - 0.5) * 0.50 rad (about +-14 degrees), clockwise positive
    "face_width",  # head half-width / half-height = 0.70 + 0.22 u
    "skin_tone",  # position on a light-to-dark skin palette (0 = lightest)
    "hair_color",  # position on the palette black -> brown -> auburn -> blond -> grey
    "hair_length",  # 0 = cropped, 1 = down to the shoulders (long hair is > 0.66, short < 0.33)
    "eye_size",  # eye radius = 0.12 + 0.08 u head units
    "smile",  # mouth curvature = 2u - 1 in [-1, 1]; "smiling" is curvature > 0.3 (u > 0.65)
    "glasses",  # frame opacity ramps from 0 at u = 0.45 to 1 at u = 0.55; "with glasses" is u > 0.5
    "background_hue",  # hue of the backdrop, on the colour wheel (0 = red, 1/3 = green, 2/3 = blue)
    "light_direction",  # angle of the key light in the image plane = 2 pi u (0 = from the right, pi/2 = from below)
)
NUM_ATTRIBUTES: int = len(ATTRIBUTE_NAMES)
ATTRIBUTE_INDEX: dict[str, int] = {name: i for i, name in enumerate(ATTRIBUTE_NAMES)}

STYLES: tuple[str, ...] = ("photo", "sketch", "pixel art", "comic", "watercolor", "neon")
CHARACTERS: tuple[str, ...] = ("human", "zombie", "werewolf", "elf", "clown")
# The source domain: the only one the mini generator is trained on, and the start of every mini shift.
SOURCE_STYLE, SOURCE_CHARACTER = STYLES[0], CHARACTERS[0]

SMILING_THRESHOLD: float = 0.65  # stored value; curvature 0.3
FROWNING_THRESHOLD: float = 0.35  # stored value; curvature -0.3
GLASSES_THRESHOLD: float = 0.5
LONG_HAIR_THRESHOLD: float = 0.66
SHORT_HAIR_THRESHOLD: float = 0.33
GLASSES_PROBABILITY: float = 0.4

# Hair palette stops, evenly spaced on [0, 1]; names are what captions call each stop's neighbourhood.
HAIR_PALETTE: tuple[tuple[float, float, float], ...] = (
    (0.07, 0.06, 0.06),
    (0.30, 0.18, 0.10),
    (0.62, 0.27, 0.12),
    (0.88, 0.74, 0.42),
    (0.78, 0.78, 0.80),
)
HAIR_COLOR_NAMES: tuple[str, ...] = ("black", "brown", "red", "blond", "grey")
SKIN_PALETTE: tuple[tuple[float, float, float], ...] = (
    (0.98, 0.84, 0.74),
    (0.87, 0.68, 0.53),
    (0.66, 0.46, 0.32),
    (0.40, 0.26, 0.17),
)


class UnknownDomainError(ValueError):
    """A style or character name that the mini world does not know."""


class AttributeShapeError(ValueError):
    """An attribute tensor whose shape or values do not describe mini-world faces."""


def check_style(style: str) -> str:
    """Return `style` if it is one of STYLES, else raise UnknownDomainError naming the valid styles."""
    if style not in STYLES:
        raise UnknownDomainError(f"unknown style {style!r}; valid styles are: {', '.join(STYLES)}")
    return style


def check_character(character: str) -> str:
    """Return `character` if it is one of CHARACTERS, else raise UnknownDomainError naming the valid characters."""
    if character not in CHARACTERS:
        raise UnknownDomainError(f"unknown character {character!r}; valid characters are: {', '.join(CHARACTERS)}")
    return character


def check_attributes(attrs: Tensor) -> Tensor:
    """Return `attrs` as float32 [N, A] after checking its shape and that values are finite and inside [0, 1]."""
    if not isinstance(attrs, Tensor):
        raise AttributeShapeError(f"attributes must be a torch.Tensor of shape [N, {NUM_ATTRIBUTES}], got {type(attrs)}")
    if attrs.ndim != 2 or attrs.shape[1] != NUM_ATTRIBUTES:
        raise AttributeShapeError(
            f"attributes must have shape [N, {NUM_ATTRIBUTES}] (columns {', '.join(ATTRIBUTE_NAMES)}), "
            f"got {tuple(attrs.shape)}"
        )
    attrs = attrs.detach().to(device="cpu", dtype=torch.float32)
    if attrs.numel() and (not torch.isfinite(attrs).all() or attrs.min() < 0 or attrs.max() > 1):
        raise AttributeShapeError("attribute values must be finite and inside [0, 1]; clamp them with attrs.clamp(0, 1)")
    return attrs


def sample_attributes(n: int, generator: torch.Generator) -> Tensor:
    """Draw n attribute vectors [n, A] in [0, 1], reproducibly from `generator`.

    Continuous attributes are uniform; glasses are bimodal so that 40% of faces clearly wear them and the rest clearly
    do not, which keeps both classes common while still being a continuous coordinate.
    """
    if n < 0:
        raise AttributeShapeError(f"cannot sample a negative number of attribute vectors (n={n})")
    uniform = torch.rand(n, NUM_ATTRIBUTES, generator=generator)
    wears = torch.rand(n, generator=generator) < GLASSES_PROBABILITY
    spread = torch.rand(n, generator=generator) * 0.4
    attrs = uniform.clone()
    attrs[:, ATTRIBUTE_INDEX["glasses"]] = torch.where(wears, 0.6 + spread, spread)
    return attrs


def default_attributes(n: int = 1) -> Tensor:
    """Attributes of an average centred face (every coordinate 0.5, no glasses), shape [n, A]."""
    attrs = torch.full((n, NUM_ATTRIBUTES), 0.5)
    attrs[:, ATTRIBUTE_INDEX["glasses"]] = 0.0
    return attrs


def palette_lookup(position: Tensor, palette: tuple[tuple[float, float, float], ...]) -> Tensor:
    """Piecewise-linear colour [N, 3] at `position` [N] in [0, 1] along evenly spaced palette stops."""
    stops = torch.tensor(palette, dtype=torch.float32)
    scaled = position.clamp(0, 1) * (len(palette) - 1)
    low = scaled.floor().clamp(max=len(palette) - 2).long()
    frac = (scaled - low.float()).unsqueeze(1)
    return stops[low] * (1 - frac) + stops[low + 1] * frac


def hsv_to_rgb(hue: Tensor, saturation: Tensor | float, value: Tensor | float) -> Tensor:
    """RGB [..., 3] in [0, 1] from hue in [0, 1] (wrapping) and saturation/value in [0, 1]."""
    hue = hue.remainder(1.0)
    saturation = torch.as_tensor(saturation, dtype=torch.float32).expand_as(hue)
    value = torch.as_tensor(value, dtype=torch.float32).expand_as(hue)
    # Standard hexcone formula written with a smooth per-channel offset so it vectorises without branches.
    channels = []
    for offset in (0.0, 2.0 / 3.0, 1.0 / 3.0):
        k = (hue + offset).remainder(1.0) * 6.0
        ramp = (torch.abs(k - 3.0) - 1.0).clamp(0.0, 1.0)
        channels.append(value * (1.0 - saturation * (1.0 - ramp)))
    return torch.stack(channels, dim=-1)


def hair_color_name(value: float) -> str:
    """Name of the hair palette stop nearest to a stored hair_color value."""
    return HAIR_COLOR_NAMES[min(len(HAIR_COLOR_NAMES) - 1, int(round(value * (len(HAIR_COLOR_NAMES) - 1))))]


def light_angle(value: Tensor) -> Tensor:
    """Light angle in radians from the stored light_direction value."""
    return value * (2.0 * math.pi)
