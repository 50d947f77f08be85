"""Loss terms of the mini-CLIP recipe: contrastive, attribute, invariance, direction, colour and smile."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from replication.miniworld.attributes import ATTRIBUTE_INDEX, SOURCE_CHARACTER, SOURCE_STYLE
from replication.miniworld.clip_recipe import model_pixels, target_domains, tokenize
from replication.miniworld.evaluator import WHERE_RENDERED
from replication.templates import fill_templates

if TYPE_CHECKING:
    import clip.model as clip_model

# Attributes that domain-preserving colour augmentation leaves intact, so they are valid targets on augmented images.
GEOMETRY_ATTRIBUTES: tuple[str, ...] = ("face_x", "face_y", "face_scale", "rotation", "face_width", "hair_length",
                                        "eye_size", "smile", "glasses")
# The head's rows are unit vectors times this gain, so it cannot read attributes off a vanishing component: each
# attribute must move the unit embedding by about std(attribute) / gain (0.19 at 1.5) along its own direction.
ATTRIBUTE_READOUT_GAIN = 1.5

COLOUR_ANCHOR_ATTRIBUTES: tuple[str, ...] = ("skin_tone", "hair_color")
# Where the colour anchor reads each attribute: the evaluator's WHERE_RENDERED, plus zombies for skin tone, which keep a
# quarter of it under the green (the evaluator reads it there with R^2 0.52); that quarter is what NADA loses.
COLOUR_ANCHOR_DOMAINS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "skin_tone": (WHERE_RENDERED["skin_tone"][0], WHERE_RENDERED["skin_tone"][1] + ("zombie",)),
    "hair_color": WHERE_RENDERED["hair_color"],
}


def soft_contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                          texts: Sequence[str]) -> torch.Tensor:
    """Symmetric InfoNCE whose targets spread evenly over every row with the same caption (identical captions in a
    batch are positives, so a hard one-hot target would push apart images that the text cannot tell apart)."""
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    logits = logit_scale.exp() * image_features @ text_features.t()
    ids = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    caption_id = torch.tensor([ids[t] for t in texts])
    same = (caption_id[:, None] == caption_id[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    loss_images = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    loss_texts = -(targets * F.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
    return 0.5 * (loss_images + loss_texts)


def in_source_colours(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Each target image's luminance (Rec. 601) with its source image's chroma: the target's shapes, lines and tones
    in the source's colours, [-1, 1]."""
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return ((target * luma).sum(1, keepdim=True) + source - (source * luma).sum(1, keepdim=True)).clamp(-1.0, 1.0)


@torch.no_grad()
def training_text_directions(model: clip_model.CLIP) -> torch.Tensor:
    """NADA's template-averaged text direction [T, D] of every target_domains() shift, from the model in training."""
    was_training = model.training
    model.eval()
    cache: dict[str, torch.Tensor] = {}

    def mean_feature(text: str) -> torch.Tensor:
        if text not in cache:
            feats = model.encode_text(tokenize(fill_templates(text), model.context_length)).float()
            cache[text] = F.normalize(feats, dim=-1)
        return cache[text]

    rows = [F.normalize((mean_feature(tgt) - mean_feature(src)).mean(0), dim=-1) for _, src, tgt, _, _ in
            target_domains()]
    model.train(was_training)
    return torch.stack(rows)


def paired_differences(model: clip_model.CLIP, before: torch.Tensor, after: torch.Tensor, pixels: str) -> torch.Tensor:
    """unit(E(after) - E(before)) [N, D] of unit image embeddings, one forward pass for both halves."""
    feats = F.normalize(model.encode_image(model_pixels(torch.cat([before, after]), pixels)), dim=-1)
    return F.normalize(feats[len(before):] - feats[:len(before)], dim=-1, eps=1e-6)


def invariance_loss(model: clip_model.CLIP, clean: torch.Tensor, edited: torch.Tensor, directions: torch.Tensor,
                    pixels: str) -> torch.Tensor:
    """Mean squared cosine between unit(E(edited) - E(clean)) and every target text direction [T, D]."""
    return (paired_differences(model, clean, edited, pixels) @ directions.t()).pow(2).mean()


def direction_loss(model: clip_model.CLIP, source: torch.Tensor, target: torch.Tensor, shift: torch.Tensor,
                   directions: torch.Tensor, pixels: str) -> torch.Tensor:
    """Mean of 1 - cosine between unit(E(target) - E(source)) of paired renders and their shift's text direction."""
    return (1.0 - (paired_differences(model, source, target, pixels) * directions[shift]).sum(dim=-1)).mean()


def colour_kept_loss(model: clip_model.CLIP, source: torch.Tensor, target: torch.Tensor, kept: torch.Tensor,
                     shift: torch.Tensor, directions: torch.Tensor, pixels: str, margin: float) -> torch.Tensor:
    """Hinge on how much more the true target's paired difference aligns with its text direction than the target
    redrawn in the source's colours does: mean of relu(margin - (cos_true - cos_kept))."""
    feats = F.normalize(model.encode_image(model_pixels(torch.cat([source, target, kept]), pixels)), dim=-1)
    src, tgt, kept_feats = feats.chunk(3)
    direction = directions[shift]
    true_cos = (F.normalize(tgt - src, dim=-1, eps=1e-6) * direction).sum(-1)
    kept_cos = (F.normalize(kept_feats - src, dim=-1, eps=1e-6) * direction).sum(-1)
    return F.relu(margin - (true_cos - kept_cos)).mean()


def attribute_targets(attrs: torch.Tensor) -> torch.Tensor:
    """The colour-free attributes [N, len(GEOMETRY_ATTRIBUTES)] of attribute rows [N, 13], centred on 0."""
    return attrs[:, [ATTRIBUTE_INDEX[n] for n in GEOMETRY_ATTRIBUTES]] - 0.5


def attribute_loss(head: torch.nn.Linear, image_features: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """MSE of the shared linear head reading attributes from unit image embeddings (hard negatives excluded: their
    blob and blur kinds destroy the attributes they would be asked for)."""
    keep = ~batch["is_hard_negative"]
    weight = ATTRIBUTE_READOUT_GAIN * F.normalize(head.weight, dim=1)
    pred = F.linear(F.normalize(image_features[keep], dim=-1), weight, head.bias)
    return F.mse_loss(pred, attribute_targets(batch["attrs"][keep]))


def colour_anchor_mask(style: Sequence[str], character: Sequence[str]) -> torch.Tensor:
    """[N, len(COLOUR_ANCHOR_ATTRIBUTES)]: 1 where domain (style[i], character[i]) draws the attribute."""
    return torch.tensor([[float(s in COLOUR_ANCHOR_DOMAINS[name][0] and c in COLOUR_ANCHOR_DOMAINS[name][1])
                          for name in COLOUR_ANCHOR_ATTRIBUTES] for s, c in zip(style, character)])


def colour_anchor_loss(model: clip_model.CLIP, head: torch.nn.Linear, batch: dict[str, Any],
                       pixels: str) -> torch.Tensor:
    """Masked MSE of the colour head reading skin tone and hair colour from the unit embeddings of the
    paired-direction term's renders (every source, and each target where its domain draws the attribute)."""
    source, target, shift = batch["direction_pairs"]
    domains = target_domains()
    feats = F.normalize(model.encode_image(model_pixels(torch.cat([source, target]), pixels)), dim=-1)
    weight = ATTRIBUTE_READOUT_GAIN * F.normalize(head.weight, dim=1)
    pred = F.linear(feats, weight, head.bias)
    truth = (batch["direction_attrs"][:, [ATTRIBUTE_INDEX[n] for n in COLOUR_ANCHOR_ATTRIBUTES]] - 0.5).repeat(2, 1)
    mask = torch.cat([colour_anchor_mask([SOURCE_STYLE] * len(source), [SOURCE_CHARACTER] * len(source)),
                      colour_anchor_mask([domains[t][3] for t in shift.tolist()],
                                         [domains[t][4] for t in shift.tolist()])])
    return ((pred - truth).pow(2) * mask).sum() / mask.sum()


def smile_logits(model: clip_model.CLIP, images: torch.Tensor, texts: Sequence[str], pixels: str) -> torch.Tensor:
    """[n, image, caption] scaled cosines of each face's three smile renders against its three captions."""
    image_features = F.normalize(model.encode_image(model_pixels(images, pixels)), dim=-1).unflatten(0, (-1, 3))
    text_features = F.normalize(model.encode_text(tokenize(texts, model.context_length)), dim=-1).unflatten(0, (-1, 3))
    return model.logit_scale.exp() * image_features @ text_features.transpose(1, 2)


def smile_loss(model: clip_model.CLIP, images: torch.Tensor, texts: Sequence[str], pixels: str,
               logits: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy, both ways, of each face's three smile renders against its three captions (smile_triplets);
    `logits` (smile_logits of the same arguments) when the caller has them already."""
    if logits is None:
        logits = smile_logits(model, images, texts, pixels)
    target = torch.arange(3).repeat(len(logits))
    return 0.5 * (F.cross_entropy(logits.flatten(0, 1), target)
                  + F.cross_entropy(logits.transpose(1, 2).flatten(0, 1), target))
