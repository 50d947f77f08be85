"""Deterministic vectorised procedural renderer of the mini world: attributes x style x character -> image."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

from replication.miniworld.attributes import (
    CHARACTERS,
    STYLES,
    check_attributes,
    check_character,
    check_style,
)
from replication.miniworld.scene import build_scene
from replication.miniworld.styles import STYLE_FUNCTIONS

# Samples are rendered in chunks so that every per-pixel temporary stays in the CPU cache; the result does not depend
# on the chunking because every scene and style operation is elementwise or a per-image window.
_CHUNK = 32


class RenderError(ValueError):
    """A render request that cannot be honoured (bad size, mismatched per-sample lists)."""


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
            scene = build_scene(attrs[index], CHARACTERS[c_idx], size, palette=CHARACTERS[p_idx])
            image = STYLE_FUNCTIONS[STYLES[s_idx]](scene, size)
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
