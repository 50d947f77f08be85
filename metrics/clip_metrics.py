"""CLIP scores of adapted images: HyperDomainNet's Quality and Diversity, and the directional CLIP similarity."""
from __future__ import annotations

from typing import Sequence

import torch

from replication.losses import text_direction
from replication.templates import IMAGENET_TEMPLATES, fill_templates


class ClipMetricError(ValueError):
    """Images or texts a CLIP score cannot use; the message says what and how to fix it."""


@torch.no_grad()
def image_features(encoder, images: torch.Tensor, batch: int = 100) -> torch.Tensor:
    """Unit CLIP image embeddings [N, D] of images in [-1, 1], in chunks (the encoder resizes as it was built to)."""
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise ClipMetricError(f"CLIP scores need images [N >= 1, 3, H, W], got shape {tuple(images.shape)}")
    return torch.cat([encoder.image_features(images[i:i + batch]).float().cpu()
                      for i in range(0, images.shape[0], batch)])


@torch.no_grad()
def quality(encoder, features: torch.Tensor, target_text: str,
            templates: Sequence[str] = IMAGENET_TEMPLATES) -> float:
    """Mean over images and templates of cos(image, template(target text)), HyperDomainNet's Quality.

    Equal to each image's dot product with the mean of the unit template embeddings (not renormalised), so this is
    the image set against the template-averaged target text.
    """
    text = encoder.text_features(fill_templates(target_text, templates)).float().cpu()
    return (features @ text.T).mean().item()


def diversity(features: torch.Tensor) -> float:
    """Mean over pairs i < j of 1 - cos(image i, image j), HyperDomainNet's Diversity."""
    n = features.shape[0]
    if n < 2:
        raise ClipMetricError(f"CLIP diversity needs at least 2 images, got {n}")
    cos = features.double() @ features.double().T
    upper = torch.triu_indices(n, n, offset=1)
    return (1.0 - cos[upper[0], upper[1]]).mean().item()


@torch.no_grad()
def directional_similarity(encoder, f_src: torch.Tensor, f_to: torch.Tensor, source_text: str,
                           target_text: str) -> float:
    """Mean cos(unit(E(x_to) - E(x_src)), text direction source -> target) over paired latents (NADA's loss)."""
    direction = text_direction(encoder, source_text, target_text).float().cpu()
    edit = torch.nn.functional.normalize(f_to - f_src, dim=-1, eps=1e-12)
    return torch.nn.functional.cosine_similarity(edit, direction).mean().item()
