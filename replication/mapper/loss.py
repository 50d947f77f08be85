"""The mapper's objective: StyleCLIP's CLIP input and text loss, NADA's embedding-norm term, latent L2, identity."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from replication.clip_models import ClipEncoder
from replication.losses import embedding_norm_loss, global_logits
from replication.mapper.config import MapperConfig

IdentityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def area_resample_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """[size_out, size_in] matrix equal to nearest upsampling by u then average pooling by k, u*size_in = k*size_out.

    u and k come from lcm(size_in, size_out); for 1024 -> 224 that is StyleCLIP's x7 upsample and AvgPool(32).
    """
    common = math.lcm(size_in, size_out)
    up, pool = common // size_in, common // size_out
    sub = torch.arange(common)
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    matrix.index_put_((sub // pool, sub // up), torch.full((common,), 1.0 / pool, dtype=torch.float64),
                      accumulate=True)
    return matrix


def styleclip_resize(images: torch.Tensor, size_out: int) -> torch.Tensor:
    """StyleCLIP's CLIP input: nearest xu upsampling then AvgPool(k) to size_out, done as two small matmuls.

    The result equals nn.Upsample(scale_factor=u) + nn.AvgPool2d(k) without building the u-times larger image (at
    1024 px that intermediate is 7168^2 per channel). Values stay in the generator's range; nothing is normalised.
    """
    height, width = images.shape[-2:]
    if height == size_out and width == size_out:
        return images
    rows = area_resample_matrix(height, size_out).to(images.device, images.dtype)
    cols = area_resample_matrix(width, size_out).to(images.device, images.dtype)
    return rows @ images @ cols.T


def prepare_for_clip(encoder: ClipEncoder, images: torch.Tensor, mode: str) -> torch.Tensor:
    """Generator images in [-1, 1] -> the tensor fed to encoder.encode_image.

    faithful: StyleCLIP's resize only, no (x+1)/2 and no CLIP mean/std (its quirk); fixed: the encoder's own preprocess.
    """
    if mode == "faithful":
        return styleclip_resize(images, encoder.input_resolution)
    return encoder.preprocess(images)


def clip_text_loss(encoder: ClipEncoder, images: torch.Tensor, image_embeddings: torch.Tensor,
                   text: str) -> torch.Tensor:
    """Per-sample 1 - logits_per_image/100 toward `text` (no templates), from raw embeddings [B, D] of `images`.

    The embeddings come in already computed because in faithful mode they are not the encoder's own preprocessing.
    """
    unit = image_embeddings / image_embeddings.norm(dim=-1, keepdim=True)
    return 1.0 - global_logits(encoder, images, text, image_features=unit)[:, 0] / 100.0


def mapper_loss(w: torch.Tensor, w_hat: torch.Tensor, x: torch.Tensor, x_hat: torch.Tensor,
                encoders_with_weights: Sequence[tuple[ClipEncoder, float]], cfg: MapperConfig, *,
                identity_fn: IdentityFn | None = None,
                embeddings_x: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """NADA's mapper objective on one batch; returns (total, terms) with terms loss_clip/l2/norm/id (detached).

    w, w_hat: [B, n_latent, D] original and edited W+; x, x_hat: their images in [-1, 1]. embeddings_x: raw embedding
    of x by the first encoder, if the caller already has it. CLIP loss = sum_m weight_m * mean_b(1 - logits/100)
    toward cfg.description; zero-weight models are skipped. The norm loss uses the first encoder whatever its weight.
    """
    device = w_hat.device
    zero = torch.zeros((), device=device)
    loss_clip, loss_norm, loss_id = zero, zero, zero
    first_embeddings_hat = None
    for index, (encoder, weight) in enumerate(encoders_with_weights):
        needs_clip = cfg.lambda_clip > 0 and weight > 0
        needs_norm = index == 0 and cfg.lambda_norm > 0
        if not (needs_clip or needs_norm):
            continue
        # One encoding of x_hat serves both terms; the original encoded it twice with the first model.
        embeddings_hat = encoder.encode_image(prepare_for_clip(encoder, x_hat, cfg.mode))
        if needs_clip:
            loss_clip = loss_clip + weight * clip_text_loss(encoder, x_hat, embeddings_hat, cfg.description).mean()
        if needs_norm:
            first_embeddings_hat = embeddings_hat
    if first_embeddings_hat is not None:
        if embeddings_x is None:
            encoder = encoders_with_weights[0][0]
            with torch.no_grad():
                embeddings_x = encoder.encode_image(prepare_for_clip(encoder, x, cfg.mode))
        loss_norm = embedding_norm_loss(embeddings_x, first_embeddings_hat)
    loss_l2 = F.mse_loss(w_hat, w)
    if identity_fn is not None and cfg.lambda_id > 0:
        loss_id = (1.0 - identity_fn(x_hat, x).float()).mean()
    total = (cfg.lambda_clip * loss_clip + cfg.lambda_l2 * loss_l2 + cfg.lambda_norm * loss_norm
             + cfg.lambda_id * loss_id)
    terms = {"loss_clip": loss_clip, "loss_l2": loss_l2, "loss_norm": loss_norm, "loss_id": loss_id}
    return total, {k: v.detach() for k, v in terms.items()}
