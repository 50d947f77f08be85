"""Reproducible batches of mini-world renders with captions and labels, and the fixed held-out set.

Seeds. Every batch is a pure function of the torch.Generator handed to ``sample_batch``. Training recipes seed that
generator with ``train_batch_seed(run_seed, step)`` = run_seed * 10**7 + step, which stays below 2**40 for any run
seed < 10**5; the held-out set is drawn from ``HELDOUT_SEED`` = 2**40 + 1 (and its own derived seeds above 2**40), a
range no training batch can reach, so held-out attributes are never seen in training.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from replication.miniworld.attributes import CHARACTERS, STYLES, check_character, check_style, sample_attributes
from replication.miniworld.augment import hard_negatives
from replication.miniworld.captions import captions as make_captions
from replication.miniworld.render import render
from replication.templates import IMAGENET_TEMPLATES

TRAIN_SEED_STRIDE = 10**7  # steps per run seed; no recipe runs that many steps
MAX_RUN_SEED = 10**5
HELDOUT_SEED_BASE = 2**40  # every held-out seed is >= this; every training seed is < this
HELDOUT_SEED = HELDOUT_SEED_BASE + 1
ALL_DOMAINS: tuple[tuple[str, str], ...] = tuple((s, c) for s in STYLES for c in CHARACTERS)


class BatchSpecError(ValueError):
    """A batch request that cannot be served (bad size, unknown domain, fraction outside [0, 1], bad seed)."""


def train_batch_seed(run_seed: int, step: int) -> int:
    """Seed of training batch `step` of run `run_seed`; always below HELDOUT_SEED_BASE."""
    if not 0 <= run_seed < MAX_RUN_SEED:
        raise BatchSpecError(f"run seed must be in [0, {MAX_RUN_SEED}), got {run_seed}")
    if not 0 <= step < TRAIN_SEED_STRIDE:
        raise BatchSpecError(f"step must be in [0, {TRAIN_SEED_STRIDE}), got {step}")
    return run_seed * TRAIN_SEED_STRIDE + step


def resolve_domains(domains: str | Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """"all" -> the 30 (style, character) pairs; a list of pairs is checked against STYLES and CHARACTERS."""
    if isinstance(domains, str):
        if domains != "all":
            raise BatchSpecError(f"domains must be 'all' or a list of (style, character) pairs, got {domains!r}")
        return ALL_DOMAINS
    pairs = tuple((check_style(s), check_character(c)) for s, c in domains)
    if not pairs:
        raise BatchSpecError("domains list is empty; pass 'all' or at least one (style, character) pair")
    return pairs


def template_caption(style: str, character: str, rng: torch.Generator) -> str:
    """A NADA-style prompt ("a bad photo of a sketch.") naming the image's style OR its character, drawn from rng.

    NADA's text directions average these ImageNet templates filled with single domain words, a phrasing the
    descriptive captions never use; mixing it into training lets the text tower place "photo" -> "sketch" and
    "human" -> "zombie" along the image tower's differences.
    """
    template = IMAGENET_TEMPLATES[int(torch.randint(len(IMAGENET_TEMPLATES), (1,), generator=rng))]
    word = style if bool(torch.rand(1, generator=rng) < 0.5) else character
    return template.format(word)


def sample_batch(n: int, rng: torch.Generator, *, domains: str | Sequence[tuple[str, str]] = "all",
                 hard_negative_fraction: float = 0.0, template_caption_fraction: float = 0.0) -> dict[str, Any]:
    """Render n random faces in random domains with captions and labels, reproducibly from `rng`.

    The first round(n * hard_negative_fraction) rows are hard negatives (recoloured photo+human renders, see
    augment.hard_negatives) captioned as photos of humans; the remaining rows draw a domain uniformly from `domains`.
    A fraction `template_caption_fraction` of rows gets a NADA-style template caption instead of a descriptive one.
    Returns images [n,3,64,64] in [-1,1], attrs [n,13], style_idx [n], character_idx [n], captions (list of n str),
    is_hard_negative [n] bool.
    """
    if not isinstance(n, int) or n < 1:
        raise BatchSpecError(f"batch size must be a positive integer, got {n!r}")
    for name, value in (("hard_negative_fraction", hard_negative_fraction),
                        ("template_caption_fraction", template_caption_fraction)):
        if not 0.0 <= value <= 1.0:
            raise BatchSpecError(f"{name} must be in [0, 1], got {value}")
    pairs = resolve_domains(domains)
    n_hard = int(round(n * hard_negative_fraction))
    attrs = sample_attributes(n, rng)
    pick = torch.randint(len(pairs), (n,), generator=rng)
    style_names = [pairs[int(i)][0] for i in pick]
    character_names = [pairs[int(i)][1] for i in pick]
    style_names[:n_hard] = ["photo"] * n_hard
    character_names[:n_hard] = ["human"] * n_hard
    images = render(attrs, style_names, character_names)
    is_hard = torch.zeros(n, dtype=torch.bool)
    if n_hard:
        images[:n_hard] = hard_negatives(images[:n_hard], rng).images
        is_hard[:n_hard] = True
    texts = make_captions(attrs, style_names, character_names, rng)
    use_template = torch.rand(n, generator=rng) < template_caption_fraction
    for i in torch.nonzero(use_template).flatten().tolist():
        texts[i] = template_caption(style_names[i], character_names[i], rng)
    return {
        "images": images,
        "attrs": attrs,
        "style_idx": torch.tensor([STYLES.index(s) for s in style_names], dtype=torch.long),
        "character_idx": torch.tensor([CHARACTERS.index(c) for c in character_names], dtype=torch.long),
        "captions": texts,
        "is_hard_negative": is_hard,
    }


def heldout_set(n: int = 2000, *, seed: int = HELDOUT_SEED, chunk: int = 250) -> dict[str, Any]:
    """The fixed held-out set: n renders over all domains with descriptive captions, from a seed >= 2**40.

    Drawn in chunks with seeds seed, seed+1, ... so memory stays small; the same n and seed always give the same set.
    """
    if seed < HELDOUT_SEED_BASE:
        raise BatchSpecError(f"held-out seeds must be >= {HELDOUT_SEED_BASE} so they never meet training seeds")
    parts = []
    for k, start in enumerate(range(0, n, chunk)):
        rng = torch.Generator().manual_seed(seed + k)
        parts.append(sample_batch(min(chunk, n - start), rng))
    return {key: (sum((p[key] for p in parts), []) if key == "captions" else torch.cat([p[key] for p in parts]))
            for key in parts[0]}
