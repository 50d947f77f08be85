"""Tests of the mini world's renderer, attributes and captions: determinism, domains, attribute effects, captions."""

from __future__ import annotations

import hashlib
import itertools
import subprocess
import sys
import warnings

import pytest
import torch

from replication.miniworld.attributes import (
    ATTRIBUTE_INDEX,
    ATTRIBUTE_NAMES,
    CHARACTERS,
    NUM_ATTRIBUTES,
    STYLES,
    default_attributes,
    sample_attributes,
)
from replication.miniworld.captions import caption, captions
from replication.miniworld.render import main as render_cli
from replication.miniworld.render import render, render_grid

torch.set_num_threads(1)
DOMAINS = [(s, c) for s in STYLES for c in CHARACTERS]


def _attrs(n: int, seed: int = 0) -> torch.Tensor:
    return sample_attributes(n, torch.Generator().manual_seed(seed))


def _set(attrs: torch.Tensor, **values: float) -> torch.Tensor:
    attrs = attrs.clone()
    for name, value in values.items():
        attrs[:, ATTRIBUTE_INDEX[name]] = value
    return attrs


def _digest(images: torch.Tensor) -> str:
    return hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()


@pytest.fixture(scope="module")
def domain_images() -> dict[tuple[str, str], torch.Tensor]:
    attrs = _attrs(6, seed=3)
    return {domain: render(attrs, *domain) for domain in DOMAINS}


# ------------------------------------------------------------------------------------------------------------ attributes


def test_sample_attributes_is_reproducible_normalised_and_glasses_are_bimodal():
    first, second = _attrs(4000, seed=7), _attrs(4000, seed=7)
    assert first.shape == (4000, NUM_ATTRIBUTES) and len(ATTRIBUTE_NAMES) == NUM_ATTRIBUTES
    assert torch.equal(first, second)
    assert not torch.equal(first, _attrs(4000, seed=8))
    assert first.min() >= 0 and first.max() <= 1
    glasses = first[:, ATTRIBUTE_INDEX["glasses"]]
    assert 0.36 < (glasses > 0.5).float().mean() < 0.44
    assert ((glasses > 0.4) & (glasses < 0.6)).sum() == 0  # both classes are clear-cut
    smiling = first[:, ATTRIBUTE_INDEX["smile"]] > 0.65
    assert 0.25 < smiling.float().mean() < 0.45


# ---------------------------------------------------------------------------------------------- shapes and determinism


def test_every_domain_renders_finite_images_in_range(domain_images):
    for domain, images in domain_images.items():
        assert images.shape == (6, 3, 64, 64) and images.dtype == torch.float32, domain
        assert torch.isfinite(images).all(), domain
        assert images.min() >= -1 and images.max() <= 1, domain
        assert images.std() > 0.1, f"{domain} is nearly blank"


def test_other_sizes_keep_shape_and_range():
    for size in (32, 48, 128):
        images = render(_attrs(2), ["pixel art", "watercolor"], ["elf", "clown"], size=size)
        assert images.shape == (2, 3, size, size)
        assert torch.isfinite(images).all() and images.abs().max() <= 1


def test_render_is_byte_identical_across_calls_and_processes():
    attrs = _attrs(8, seed=11)
    styles = [STYLES[i % len(STYLES)] for i in range(8)]
    characters = [CHARACTERS[i % len(CHARACTERS)] for i in range(8)]
    first = render(attrs, styles, characters)
    assert _digest(first) == _digest(render(attrs, styles, characters))
    script = (
        "import hashlib, torch\n"
        "from replication.miniworld.attributes import sample_attributes, STYLES, CHARACTERS\n"
        "from replication.miniworld.render import render\n"
        "a = sample_attributes(8, torch.Generator().manual_seed(11))\n"
        "img = render(a, [STYLES[i % 6] for i in range(8)], [CHARACTERS[i % 5] for i in range(8)])\n"
        "print(hashlib.sha256(img.contiguous().numpy().tobytes()).hexdigest())\n"
    )
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                           env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert other.stdout.strip() == _digest(first)


def test_a_sample_renders_the_same_alone_or_inside_any_batch():
    attrs = _attrs(41, seed=5)  # more than one internal chunk of a domain
    gen = torch.Generator().manual_seed(2)
    styles = [STYLES[i] for i in torch.randint(0, len(STYLES), (41,), generator=gen)]
    characters = [CHARACTERS[i] for i in torch.randint(0, len(CHARACTERS), (41,), generator=gen)]
    styles[:36] = ["comic"] * 36  # a big group of one style, split across chunks
    characters[:36] = ["werewolf"] * 36
    batch = render(attrs, styles, characters)
    for i in (0, 3, 33, 35, 36, 38, 40):
        alone = render(attrs[i:i + 1], styles[i], characters[i])
        assert torch.equal(alone[0], batch[i]), (i, styles[i], characters[i])
    reordered = render(attrs.flip(0), styles[::-1], characters[::-1])
    assert torch.equal(reordered.flip(0), batch)


# ------------------------------------------------------------------------------------------- domains differ in structure


def _colour_shift_residual(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """RMSE left after the best per-image affine colour map (3x3 matrix + offset) from source to target."""
    n = source.shape[0]
    pixels = source.reshape(n, 3, -1).transpose(1, 2).double()
    design = torch.cat([pixels, torch.ones_like(pixels[..., :1])], dim=2)
    wanted = target.reshape(n, 3, -1).transpose(1, 2).double()
    fit = torch.linalg.lstsq(design, wanted).solution
    return ((design @ fit - wanted) ** 2).mean(dim=(1, 2)).sqrt()


def _edges(images: torch.Tensor) -> torch.Tensor:
    grey = images.mean(1)
    gx = grey[:, 1:, 1:] - grey[:, 1:, :-1]
    gy = grey[:, 1:, 1:] - grey[:, :-1, 1:]
    return (gx * gx + gy * gy).sqrt()


def _correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a.flatten(1) - a.flatten(1).mean(1, keepdim=True)
    b = b.flatten(1) - b.flatten(1).mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def test_no_domain_is_a_colour_shift_of_another(domain_images):
    photo = domain_images[("photo", "human")]
    tinted = (photo * torch.tensor([0.5, 0.9, 0.2]).view(1, 3, 1, 1) + 0.1).clamp(-1, 1)
    assert _colour_shift_residual(photo, tinted).max() < 1e-3  # the measure sees through a plain colour shift
    for first, second in itertools.permutations(DOMAINS, 2):
        residual = _colour_shift_residual(domain_images[first], domain_images[second])
        assert residual.min() > 0.04, f"{second} is nearly a colour remap of {first} ({residual.min():.3f})"


def test_line_styles_have_different_edge_structure_from_photo(domain_images):
    photo_edges = _edges(domain_images[("photo", "human")])
    for style in ("sketch", "comic", "neon", "pixel art", "watercolor"):
        corr = _correlation(photo_edges, _edges(domain_images[(style, "human")]))
        assert corr.max() < 0.6, f"{style} edges look like photo edges (correlation {corr.max():.2f})"
    sketch = domain_images[("sketch", "human")]
    assert torch.equal(sketch[:, 0], sketch[:, 1]) and torch.equal(sketch[:, 1], sketch[:, 2]), "sketch has colour"
    neon = domain_images[("neon", "human")]
    assert (neon.mean(1) < -0.6).float().mean() > 0.5, "neon should be mostly dark"


def test_characters_change_structure_in_every_style(domain_images):
    for style in STYLES:
        human = _edges(domain_images[(style, "human")])[:, 8:-8, 8:-8]
        for character in CHARACTERS[1:]:
            other = _edges(domain_images[(style, character)])[:, 8:-8, 8:-8]
            corr = _correlation(human, other)
            assert corr.mean() < 0.9, f"{style} {character} edges are too close to human ({corr.mean():.2f})"


# -------------------------------------------------------------------------------------------------- attributes act


def _centred(n: int = 1) -> torch.Tensor:
    return _set(default_attributes(n), rotation=0.5, face_x=0.5, face_y=0.5, face_scale=0.5)


def _face_box_px(lo: float, hi: float, half_width: float, margin: float, size: int = 64):
    """Pixel rows/cols of the centred default face between head-unit heights lo..hi, |u| < half_width."""
    head_px = 0.5 * (0.90 + 0.30 * 0.5) * size / 2
    centre = size / 2
    return (int(centre + lo * head_px - margin), int(centre + hi * head_px + margin) + 1,
            int(centre - half_width * head_px - margin), int(centre + half_width * head_px + margin) + 1)


# Blurring styles spread a local change by their blur radius.
_STYLE_MARGIN_PX = {"photo": 1, "sketch": 2, "pixel art": 3, "comic": 2, "watercolor": 7, "neon": 6}


@pytest.mark.parametrize("style", STYLES)
def test_smile_changes_only_the_mouth_region(style):
    base = _set(_centred(2), hair_length=0.2)
    frown, grin = _set(base, smile=0.05), _set(base, smile=0.95)
    for character in CHARACTERS:
        diff = (render(frown, style, character) - render(grin, style, character)).abs().amax(1)[0]
        changed = diff > 1e-4
        assert changed.sum() > 15, f"{style} {character}: smile had no visible effect"
        top, bottom, left, right = _face_box_px(0.15, 1.0, 0.75, _STYLE_MARGIN_PX[style])
        outside = changed.clone()
        outside[top:bottom, left:right] = False
        assert outside.sum() == 0, f"{style} {character}: smile changed {int(outside.sum())} pixels off the mouth"


@pytest.mark.parametrize("style", STYLES)
def test_glasses_add_pixels_around_the_eyes(style):
    base = _centred(1)
    bare, wearing = _set(base, glasses=0.1), _set(base, glasses=0.9)
    for character in CHARACTERS:
        diff = (render(bare, style, character) - render(wearing, style, character)).abs().amax(1)[0]
        changed = diff > 0.05
        top, bottom, left, right = _face_box_px(-0.55, 0.35, 1.0, _STYLE_MARGIN_PX[style])
        inside = changed[top:bottom, left:right].sum()
        assert inside > 30, f"{style} {character}: glasses barely visible ({int(inside)} px)"
        assert changed.sum() - inside <= 0.02 * changed.sum(), f"{style} {character}: glasses changed far pixels"


def test_glasses_are_continuous_around_the_threshold():
    base = _centred(1)
    levels = [render(_set(base, glasses=g), "photo", "human") for g in (0.30, 0.44, 0.50, 0.56)]
    steps = [(b - a).abs().sum() for a, b in zip(levels, levels[1:])]
    assert steps[0] == 0 and steps[1] > 0 and steps[2] > 0  # off below 0.45, ramping in between


def _coarse_edges(images: torch.Tensor) -> torch.Tensor:
    """Edges of 4x4 block means away from the border: blind to what sits still on the canvas (fine grain, halftone
    dots, hatching, the watercolour's paper margin)."""
    return _edges(torch.nn.functional.avg_pool2d(images[..., 8:-8, 8:-8], 4))


def _best_horizontal_shift(before: torch.Tensor, after: torch.Tensor, max_shift: int = 14) -> torch.Tensor:
    """Per image, the shift in px (0..max_shift) that best aligns `before` moved right with `after`."""
    errors = []
    for dx in range(max_shift + 1):
        moved = before[..., 8:56, 16 - dx:48 - dx]
        errors.append((moved - after[..., 8:56, 16:48]).abs().mean(dim=(1, 2, 3)))
    return torch.stack(errors, dim=1).argmin(dim=1).double()


def test_face_x_moves_the_picture_in_every_domain():
    base = _set(_attrs(3, seed=21), face_scale=0.4)  # a head that stays inside the frame at both positions
    left, right = _set(base, face_x=0.1), _set(base, face_x=0.9)
    expected_px = 0.8 * 0.30 * 32  # attribute span x image units per unit x pixels per image unit
    for style, character in DOMAINS:
        shift = _best_horizontal_shift(render(left, style, character), render(right, style, character))
        assert ((shift - expected_px).abs() <= 2.5).all(), f"{style} {character}: moved {shift.tolist()} px"


def test_face_scale_grows_the_drawing():
    base = _centred(1)
    for style in STYLES:
        small = _coarse_edges(render(_set(base, face_scale=0.0), style, "human"))
        large = _coarse_edges(render(_set(base, face_scale=1.0), style, "human"))
        spread = []
        for edges in (small, large):
            weight = edges[0, :6].double()  # rows of hair and face, above the shoulders
            cols = torch.arange(weight.shape[-1], dtype=torch.float64)
            mean = (weight * cols).sum() / weight.sum()
            spread.append(((weight * (cols - mean) ** 2).sum() / weight.sum()).sqrt())
        assert spread[1] > spread[0] * 1.05, f"{style}: face_scale did not enlarge the drawing"


# ------------------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("bad_style, bad_character", [("cartoon", "human"), ("photo", "vampire")])
def test_unknown_domain_names_raise_one_line_errors_listing_valid_names(bad_style, bad_character):
    valid = STYLES if bad_style == "cartoon" else CHARACTERS
    for call in (lambda: render(_attrs(1), bad_style, bad_character),
                 lambda: captions(_attrs(1), bad_style, bad_character, torch.Generator().manual_seed(0)),
                 lambda: caption(_attrs(1)[0], bad_style, bad_character)):
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and all(name in message for name in valid)


def test_bad_attributes_and_sizes_raise_value_errors():
    with pytest.raises(ValueError, match="shape"):
        render(torch.zeros(2, NUM_ATTRIBUTES - 1), "photo", "human")
    with pytest.raises(ValueError, match="inside"):
        render(torch.full((1, NUM_ATTRIBUTES), 1.5), "photo", "human")
    with pytest.raises(ValueError, match="size"):
        render(_attrs(1), "photo", "human", size=8)
    with pytest.raises(ValueError, match="one per row"):
        render(_attrs(3), ["photo", "neon"], "human")


# ------------------------------------------------------------------------------------------------------------------ CLI


def test_grid_cli_writes_a_labelled_png_and_never_corrupts_on_error(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "grid.png"
    assert render_cli(["--out", str(out), "--size", "32"]) == 0
    with Image.open(out) as png:
        assert png.height == 30 * 32 and png.width > 6 * 32
    before = out.read_bytes()
    assert render_cli(["--out", str(out), "--size", "4"]) == 2
    assert capsys.readouterr().err.startswith("error: size must be")
    assert out.read_bytes() == before
    grid = render_grid(size=32)
    assert grid.shape == (3, 30 * 32, 6 * 32)


# ------------------------------------------------------------------------------------------------------------- captions


def _token_counts(texts: list[str]) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import clip

    return (clip.tokenize(texts, context_length=77) != 0).sum(1)


def test_captions_name_domain_and_attributes_and_fit_the_mini_clip_context():
    attrs = _attrs(1200, seed=4)
    styles = [STYLES[i % len(STYLES)] for i in range(1200)]
    characters = [CHARACTERS[(i // len(STYLES)) % len(CHARACTERS)] for i in range(1200)]
    texts = captions(attrs, styles, characters, torch.Generator().manual_seed(0))
    texts += [caption(attrs[i], styles[i], characters[i]) for i in range(1200)]
    assert _token_counts(texts).max() < 30
    for i, text in enumerate(texts):
        row = attrs[i % 1200]
        assert styles[i % 1200] in text and characters[i % 1200] in text, text
        other_styles = [s for s in STYLES if s != styles[i % 1200]]
        assert not any(s in text for s in other_styles), text
        if "smiling" in text:
            assert row[ATTRIBUTE_INDEX["smile"]] > 0.65
        if "with glasses" in text or "and glasses" in text:
            assert row[ATTRIBUTE_INDEX["glasses"]] > 0.5
        if "no glasses" in text:
            assert row[ATTRIBUTE_INDEX["glasses"]] <= 0.5
    assert len(set(texts)) > 600, "templates should vary"


def test_captions_are_reproducible_and_the_plain_caption_is_complete():
    attrs = _attrs(20, seed=9)
    first = captions(attrs, "sketch", "zombie", torch.Generator().manual_seed(1))
    assert first == captions(attrs, "sketch", "zombie", torch.Generator().manual_seed(1))
    row = _set(_attrs(1), smile=0.9, glasses=0.9, hair_length=0.9)[0]
    assert caption(row, "sketch", "zombie").startswith("a sketch of a smiling zombie with glasses and long")
    assert caption(row, "pixel art", "elf").startswith("a pixel art picture of a smiling elf")
    assert caption(_set(_attrs(1), smile=0.5, glasses=0.0)[0], "photo", "elf").startswith("a photo of an elf")


def test_palette_swaps_recolour_a_face_without_changing_its_shapes():
    attrs = sample_attributes(6, torch.Generator().manual_seed(11))
    human = render(attrs, "photo", "human")
    # a character's own palette is the default, byte for byte
    for character in CHARACTERS:
        assert torch.equal(render(attrs, "photo", character, palette=character), render(attrs, "photo", character))
    swapped = render(attrs, "photo", "human", palette="zombie")
    zombie = render(attrs, "photo", "zombie")
    assert not torch.equal(swapped, human)
    # the zombie's skin colour arrives, its scars, sockets and stitches do not: the edges stay the human's
    skin = (swapped - human).abs().amax(1) > 0.05
    assert float(skin.float().mean()) > 0.1
    assert _correlation(_edges(swapped)[:, 8:-8, 8:-8], _edges(human)[:, 8:-8, 8:-8]).mean() > \
        _correlation(_edges(zombie)[:, 8:-8, 8:-8], _edges(human)[:, 8:-8, 8:-8]).mean() + 0.1
    # one palette per row, checked like character names
    mixed = render(attrs[:2], "photo", "human", palette=["zombie", "human"])
    assert torch.equal(mixed[:1], swapped[:1]) and torch.equal(mixed[1:], human[1:2])
    with pytest.raises(ValueError, match="palette"):
        render(attrs, "photo", "human", palette=["zombie"])
    with pytest.raises(ValueError, match="vampire"):
        render(attrs, "photo", "human", palette="vampire")
