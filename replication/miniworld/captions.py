"""Text captions of mini-world images, templated from attributes, style and character."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from replication.miniworld.attributes import (
    ATTRIBUTE_INDEX,
    FROWNING_THRESHOLD,
    GLASSES_THRESHOLD,
    LONG_HAIR_THRESHOLD,
    NUM_ATTRIBUTES,
    SHORT_HAIR_THRESHOLD,
    SMILING_THRESHOLD,
    AttributeShapeError,
    check_character,
    check_style,
    hair_color_name,
)

# Every form contains the style name verbatim so that text directions such as "photo" -> "sketch" are meaningful.
STYLE_FORMS: dict[str, tuple[str, ...]] = {
    "photo": ("a photo of {}", "a close-up photo of {}", "a portrait photo of {}", "{}, photo"),
    "sketch": ("a sketch of {}", "a pencil sketch of {}", "a rough sketch of {}", "{}, sketch"),
    "pixel art": ("a pixel art picture of {}", "pixel art of {}", "a pixel art portrait of {}", "{}, pixel art"),
    "comic": ("a comic drawing of {}", "a comic book picture of {}", "a comic portrait of {}", "{}, comic"),
    "watercolor": ("a watercolor painting of {}", "a watercolor of {}", "a watercolor portrait of {}", "{}, watercolor"),
    "neon": ("a neon drawing of {}", "a neon sign of {}", "a glowing neon portrait of {}", "{}, neon"),
}
ARTICLES: dict[str, str] = {"human": "a", "zombie": "a", "werewolf": "a", "elf": "an", "clown": "a"}
HUE_NAMES: tuple[tuple[float, str], ...] = (
    (0.0, "red"), (1 / 12, "orange"), (1 / 6, "yellow"), (1 / 3, "green"), (1 / 2, "cyan"), (2 / 3, "blue"),
    (3 / 4, "purple"), (11 / 12, "pink"), (1.0, "red"),
)
_DRAWS = 7  # uniform numbers consumed per caption


def hue_name(hue: float) -> str:
    """Everyday colour name nearest to a hue in [0, 1] on the colour wheel."""
    return min(HUE_NAMES, key=lambda anchor: abs(anchor[0] - hue % 1.0))[1]


def caption_subject(character: str, adjective: str = "", clause: str = "") -> str:
    """The subject of a caption, e.g. "a smiling zombie", "an elf with glasses"."""
    article = "a" if adjective else ARTICLES[character]
    words = " ".join(w for w in (article, adjective, character) if w)
    return f"{words} with {clause}" if clause else words


def _caption_from_draws(row: Tensor, style: str, character: str, draws: Sequence[float] | None) -> str:
    """Caption of one attribute row; draws=None gives the single deterministic, most complete caption."""

    def keep(i: int, probability: float) -> bool:
        return True if draws is None else draws[i] < probability

    value = {name: float(row[i]) for name, i in ATTRIBUTE_INDEX.items()}
    adjectives = []
    if value["smile"] > SMILING_THRESHOLD and keep(1, 0.85):
        adjectives.append("smiling")
    elif value["smile"] < FROWNING_THRESHOLD and keep(1, 0.6):
        adjectives.append("frowning")

    clauses = []
    if value["glasses"] > GLASSES_THRESHOLD and keep(2, 0.85):
        clauses.append("glasses")
    elif value["glasses"] <= GLASSES_THRESHOLD and draws is not None and draws[2] < 0.15:
        clauses.append("no glasses")
    if keep(3, 0.6):
        length = ("long " if value["hair_length"] > LONG_HAIR_THRESHOLD
                  else "short " if value["hair_length"] < SHORT_HAIR_THRESHOLD else "")
        if character == "werewolf":
            colour = hair_color_name(value["hair_color"]) + " " if keep(4, 0.5) else ""
            clauses.append(f"{length}{colour}fur" if length or colour else "fur")
        elif character == "clown":
            colour = hue_name(value["hair_color"]) + " " if keep(4, 0.7) else ""
            clauses.append(f"{colour}hair tufts")
        else:
            colour = hair_color_name(value["hair_color"]) + " " if keep(4, 0.5) else ""
            if length or colour:
                clauses.append(f"{length}{colour}hair")

    subject = " ".join([ARTICLES[character] if not adjectives else "a", *adjectives, character])
    if clauses:
        subject += " with " + " and ".join(clauses)
    if keep(5, 0.35):
        subject += f" on a {hue_name(value['background_hue'])} background"
    forms = STYLE_FORMS[style]
    form = forms[0] if draws is None else forms[min(len(forms) - 1, int(draws[0] * len(forms)))]
    return form.format(subject)


def caption(attrs_row: Tensor, style: str, character: str, *, rng: torch.Generator | None = None) -> str:
    """Caption of one attribute row [A] in a domain; with `rng`, template and mentioned details are drawn from it."""
    check_style(style)
    check_character(character)
    if not isinstance(attrs_row, Tensor) or attrs_row.shape != (NUM_ATTRIBUTES,):
        raise AttributeShapeError(f"caption needs one attribute row of shape [{NUM_ATTRIBUTES}], got "
                                  f"{tuple(attrs_row.shape) if isinstance(attrs_row, Tensor) else type(attrs_row)}")
    draws = None if rng is None else torch.rand(_DRAWS, generator=rng).tolist()
    return _caption_from_draws(attrs_row, style, character, draws)


def captions(attrs: Tensor, styles: str | Sequence[str], characters: str | Sequence[str],
             generator: torch.Generator | None = None) -> list[str]:
    """Captions for attribute rows [N, A]; styles/characters are one name or one per row; reproducible per generator."""
    if not isinstance(attrs, Tensor) or attrs.ndim != 2 or attrs.shape[1] != NUM_ATTRIBUTES:
        raise AttributeShapeError(f"attributes must have shape [N, {NUM_ATTRIBUTES}], got "
                                  f"{tuple(attrs.shape) if isinstance(attrs, Tensor) else type(attrs)}")
    n = attrs.shape[0]
    style_list = [styles] * n if isinstance(styles, str) else list(styles)
    character_list = [characters] * n if isinstance(characters, str) else list(characters)
    if len(style_list) != n or len(character_list) != n:
        raise AttributeShapeError(f"got {len(style_list)} styles and {len(character_list)} characters for {n} rows; "
                                  "pass one name or one per row")
    for style in set(style_list):
        check_style(style)
    for character in set(character_list):
        check_character(character)
    draws = None if generator is None else torch.rand(n, _DRAWS, generator=generator).tolist()
    return [
        _caption_from_draws(attrs[i], style_list[i], character_list[i], None if draws is None else draws[i])
        for i in range(n)
    ]
