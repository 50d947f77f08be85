"""NADA's CLIP losses (directional, global, patch, manifold, embedding norm) and the multi-model ClipGuidance."""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from replication.clip_models import CLIP_MEAN, CLIP_STD, ClipEncoder
from replication.templates import BARE_TEMPLATE, IMAGENET_TEMPLATES, PART_TEMPLATES, fill_templates

EPS_MODES = ("faithful", "fixed")
# Prompt of the global loss. NADA's training loss says "a {target}"; its layer selection passes the bare target.
GLOBAL_TRAINING_TEMPLATE = "a {}"
GLOBAL_SELECTION_TEMPLATE = "{}"
# Below this norm the fixed-mode edit direction stops being normalised (see _unit_edit). Unit CLIP features that
# differ by 1e-2 have cosine 1 - 5e-5: far closer than any two images that differ visibly, so the reference formula
# holds wherever training has moved the images at all, and the gradient stays bounded by 1 / tau = 100.
DEFAULT_TAU = 1e-2
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DirectionError(ValueError):
    """A guidance direction cannot be formed (identical source and target, no source for an image direction)."""


class ImageFolderError(ValueError):
    """A folder of guidance images is missing, empty, or holds an unreadable image."""


class GuidanceError(ValueError):
    """A loss or ClipGuidance was configured inconsistently (no weighted model, all lambdas zero, unknown mode)."""


def _check_eps_mode(eps_mode: str) -> None:
    if eps_mode not in EPS_MODES:
        raise GuidanceError(f"mode must be one of {EPS_MODES}, got {eps_mode!r}")


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


# ------------------------------------------------------------------------------------------------ text directions
def text_direction(encoder: ClipEncoder, source: str, target: str,
                   templates: Sequence[str] = IMAGENET_TEMPLATES) -> torch.Tensor:
    """normalize(mean_t(T(target)_t - T(source)_t)) over the templates: the [1, D] CLIP text direction."""
    source_features = encoder.text_features(fill_templates(source, templates))
    target_features = encoder.text_features(fill_templates(target, templates))
    direction = (target_features - source_features).mean(dim=0, keepdim=True)
    norm = direction.norm(dim=-1, keepdim=True)
    if not bool(norm > 0):
        raise DirectionError(f"source {source!r} and target {target!r} have identical CLIP text features, so there "
                             "is no direction to follow; choose texts that differ")
    return direction / norm


def mean_text_feature(encoder: ClipEncoder, text: str, templates: Sequence[str] = IMAGENET_TEMPLATES) -> torch.Tensor:
    """normalize(mean_t T(text)_t): the template-averaged unit text feature [1, D] (manifold-angle loss)."""
    return _normalize(encoder.text_features(fill_templates(text, templates)).mean(dim=0, keepdim=True))


def part_directions(encoder: ClipEncoder, source: str, target: str, *, nested_templates: bool = False,
                    part_templates: Sequence[str] = PART_TEMPLATES,
                    templates: Sequence[str] = IMAGENET_TEMPLATES) -> torch.Tensor:
    """One text direction per part prompt, [P, D], for the patch loss.

    ``nested_templates=True`` is NADA's quirk: each part prompt ("the paw of a photo.") is itself wrapped in all
    ImageNet templates before averaging; False uses each part prompt as it reads.
    """
    pairs = zip(fill_templates(source, part_templates), fill_templates(target, part_templates))
    wrap = templates if nested_templates else BARE_TEMPLATE
    return torch.cat([text_direction(encoder, src, tgt, wrap) for src, tgt in pairs], dim=0)


# ------------------------------------------------------------------------------------------- directional losses
def _unit_edit(edit: torch.Tensor, eps_mode: str, tau: float) -> torch.Tensor:
    """Normalise per-row edit directions [N, D].

    faithful: e / ||e|| (NaN for an exactly zero row, as the original).
    fixed: e / max(||e||, tau). Identical to e / ||e|| for ||e|| >= tau; below tau the loss 1 - <e, d> / tau is linear
    in e, so at e = 0 (identical generators, fixed noise) the loss is 1 and its gradient -d / tau points straight
    along the text direction with norm 1 / tau, instead of the 1e8 that froze Adam's second moment in the original.
    The gradient norm is at most 1 / tau everywhere and continuous across ||e|| = tau.
    """
    norm = edit.norm(dim=-1, keepdim=True)
    if eps_mode == "faithful":
        return edit / norm
    return edit / norm.clamp_min(tau)


def _one_minus_cos(unit_edit: torch.Tensor, direction: torch.Tensor, eps_mode: str) -> torch.Tensor:
    if eps_mode == "faithful":
        # NADA's DirectionLoss('cosine'): 1 - CosineSimilarity(dim=1, eps=1e-8)
        return 1.0 - F.cosine_similarity(unit_edit, direction, dim=-1, eps=1e-8)
    # fixed: no re-normalisation of the edit, which would undo the tau guard (the edit row may be shorter than 1)
    return 1.0 - (unit_edit * _normalize(direction)).sum(dim=-1)


def directional_loss(feat_src: torch.Tensor, feat_tgt: torch.Tensor, direction: torch.Tensor, *,
                     eps_mode: str = "faithful", tau: float = DEFAULT_TAU,
                     recompute_target: Callable[[], torch.Tensor] | None = None,
                     reduction: str = "mean") -> torch.Tensor:
    """NADA's directional CLIP loss mean_b(1 - cos(normalize(f_tgt - f_src)_b, direction)).

    feat_src, feat_tgt: unit image features [B, D]; direction: unit text (or image) direction [1, D], or one per
    sample [B, D] (the mini world's CLIP oracle).
    eps_mode "faithful": the original, including its guard: if the whole difference sums to exactly 0 and
    ``recompute_target`` is given, the target features are recomputed (NADA passes the image + 1e-6).
    eps_mode "fixed": the edit is normalised by max(||e||, tau) (see ``_unit_edit``): finite, bounded gradient when
    f_tgt == f_src exactly, and the reference value whenever ||f_tgt - f_src|| >= tau.
    reduction "mean" gives a scalar; "none" the per-sample [B] terms.
    """
    _check_eps_mode(eps_mode)
    edit = feat_tgt - feat_src
    if eps_mode == "faithful" and recompute_target is not None and bool(edit.sum() == 0):
        edit = recompute_target() - feat_src
    per_sample = _one_minus_cos(_unit_edit(edit, eps_mode, tau), direction, eps_mode)
    if reduction == "none":
        return per_sample
    if reduction != "mean":
        raise GuidanceError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    return per_sample.mean()


def global_logits(encoder: ClipEncoder, images: torch.Tensor, texts: str | Sequence[str], *,
                  image_features: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's logits_per_image [B, T] = exp(logit_scale) * <I(x)_b, T(text)_t> for images in [-1, 1].

    ``image_features`` (unit, [B, D]) may be passed when already computed for ``images``, to skip re-encoding.
    """
    if image_features is None:
        image_features = encoder.image_features(images)
    return encoder.logit_scale * image_features @ encoder.text_features(texts).t()


def global_loss(encoder: ClipEncoder, images: torch.Tensor, text: str | Sequence[str], *,
                image_features: torch.Tensor | None = None) -> torch.Tensor:
    """NADA's global CLIP loss mean_b(1 - logits_per_image / 100); no templates (pass "a sketch" or "sketch").

    The 100 is NADA's constant, not the model's scale: for OpenAI's models exp(logit_scale) = 100 and this is
    mean(1 - cos); for other checkpoints the scale enters as it did in the original.
    """
    return (1.0 - global_logits(encoder, images, text, image_features=image_features) / 100.0).mean()


def random_patches(x_src: torch.Tensor, x_tgt: torch.Tensor, *, patch_fraction: float = 0.5, num_patches: int = 1,
                   rng: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random square crops from both batches: [B * num_patches, 3, s, s] each, s = fraction * min(H, W).

    Crops of image b are rows b * num_patches ... (b + 1) * num_patches - 1, as in NADA's generate_patches.
    """
    if not 0.0 < patch_fraction <= 1.0:
        raise GuidanceError(f"patch_fraction must be in (0, 1], got {patch_fraction}")
    if num_patches < 1:
        raise GuidanceError(f"num_patches must be at least 1, got {num_patches}")
    batch, _, height, width = x_tgt.shape
    size = max(1, int(round(patch_fraction * min(height, width))))
    # every placement is possible, the last one included (NADA's range excluded it and was empty at 256 px)
    top = torch.randint(0, height - size + 1, (batch * num_patches,), generator=rng)
    left = torch.randint(0, width - size + 1, (batch * num_patches,), generator=rng)
    crops_src, crops_tgt = [], []
    for i in range(batch * num_patches):
        b, t, l = i // num_patches, int(top[i]), int(left[i])
        crops_src.append(x_src[b:b + 1, :, t:t + size, l:l + size])
        crops_tgt.append(x_tgt[b:b + 1, :, t:t + size, l:l + size])
    return torch.cat(crops_src), torch.cat(crops_tgt)


def patch_directional_loss(encoder: ClipEncoder, x_src: torch.Tensor, x_tgt: torch.Tensor,
                           part_dirs: torch.Tensor, *, patch_fraction: float = 0.5, num_patches: int = 1,
                           rng: torch.Generator | None = None, eps_mode: str = "faithful",
                           tau: float = DEFAULT_TAU) -> torch.Tensor:
    """NADA's patch-directional loss on random crops, at any resolution.

    For each crop pair, e = normalize(I(crop_tgt) - I(crop_src)); the loss is the mean over (crop, part) of
    (1 - cos(e, P_j)) * softmax_j(<e, P_j>) with P = ``part_directions(...)`` [P, D]. The original used a fixed
    510-px crop (a crash at 256 px); here the crop is ``patch_fraction`` of the shorter side (0.5 ~ 510/1024).
    """
    _check_eps_mode(eps_mode)
    crops_src, crops_tgt = random_patches(x_src, x_tgt, patch_fraction=patch_fraction, num_patches=num_patches,
                                          rng=rng)
    with torch.no_grad():
        feat_src = encoder.image_features(crops_src)
    edit = _unit_edit(encoder.image_features(crops_tgt) - feat_src, eps_mode, tau)
    if eps_mode == "faithful":
        cos = F.cosine_similarity(edit.unsqueeze(1), part_dirs.unsqueeze(0), dim=2, eps=1e-8)
    else:
        cos = edit @ _normalize(part_dirs).t()
    weights = (edit @ part_dirs.t()).softmax(dim=-1)
    return ((1.0 - cos) * weights).mean()


def manifold_angle_loss(feat_src: torch.Tensor, feat_tgt: torch.Tensor, text_src_mean: torch.Tensor,
                        text_tgt_mean: torch.Tensor) -> torch.Tensor:
    """mean_b |clamp(<f_tgt,b, f_src,b>, -1, 1) - <t_tgt, t_src>|: image-pair cosine should equal the text-pair one.

    feat_*: unit image features [B, D]; text_*_mean: ``mean_text_feature`` outputs [1, D].
    """
    cos_images = (feat_tgt * feat_src).sum(dim=-1).clamp(-1.0, 1.0)
    cos_texts = (text_tgt_mean * text_src_mean).sum(dim=-1)
    return (cos_images - cos_texts).abs().mean()


def embedding_norm_loss(emb_before: torch.Tensor, emb_after: torch.Tensor) -> torch.Tensor:
    """MSE between ||E(x)|| and ||E(x_hat)|| of RAW (un-normalised) CLIP image embeddings [B, D] (the mapper's
    regulariser against adversarial CLIP artefacts; get them from ``ClipEncoder.image_embeddings``)."""
    return F.mse_loss(emb_before.norm(dim=-1), emb_after.norm(dim=-1))


# ------------------------------------------------------------------------------------------- image directions
def list_images(folder: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The .png/.jpg/.jpeg files of a folder (sorted), or the given list of files; ImageFolderError if none."""
    if isinstance(folder, (str, os.PathLike)):
        path = Path(folder)
        if not path.is_dir():
            raise ImageFolderError(f"image folder {path} does not exist; pass a folder of .png/.jpg/.jpeg images")
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ImageFolderError(f"image folder {path} holds no .png/.jpg/.jpeg files; add target images to it")
        return files
    files = [Path(p) for p in folder]
    if not files:
        raise ImageFolderError("empty list of guidance images; pass a folder or at least one image file")
    for p in files:
        if not p.is_file():
            raise ImageFolderError(f"guidance image {p} does not exist")
    return files


def _pil_pixels(encoder: ClipEncoder, files: Sequence[Path]) -> torch.Tensor:
    """CLIP's own PIL pipeline: bicubic resize of the smaller edge (PIL antialiases), centre crop, RGB, [0,1], norm."""
    from PIL import Image, UnidentifiedImageError
    from torchvision import transforms

    r = encoder.input_resolution
    transform = transforms.Compose([
        transforms.Resize(r, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(r),
        transforms.Lambda(lambda image: image.convert("RGB")),
        transforms.ToTensor(),
        transforms.Normalize(CLIP_MEAN, CLIP_STD),
    ])
    pixels = []
    for path in files:
        try:
            with Image.open(path) as image:
                pixels.append(transform(image))
        except (UnidentifiedImageError, OSError) as exc:
            raise ImageFolderError(f"cannot read image {path}: {exc}; remove or replace the file") from None
    return torch.stack(pixels)


def _mean_unit_embedding_of_files(encoder: ClipEncoder, files: Sequence[Path], chunk: int = 32) -> torch.Tensor:
    features = []
    for start in range(0, len(files), chunk):
        features.append(_normalize(encoder.encode_image(_pil_pixels(encoder, files[start:start + chunk]))))
    return torch.cat(features).mean(dim=0, keepdim=True)


@torch.no_grad()
def image_direction(encoder: ClipEncoder, target_images: str | os.PathLike | Sequence[str | os.PathLike],
                    source_images: str | os.PathLike | Sequence[str | os.PathLike] | None = None, *,
                    G_src: torch.nn.Module | None = None, n_source: int = 16, batch: int = 8,
                    rng: torch.Generator | None = None, noise_mode: str = "random") -> torch.Tensor:
    """Direction [1, D] = normalize(mu_tgt - mu_src) from images (NADA's --style_img_dir).

    mu_tgt: mean of the unit CLIP embeddings of the target files (CLIP's PIL preprocessing; not re-normalised).
    mu_src: the same over ``source_images`` if given, else over ``n_source`` samples of ``G_src`` (z ~ N(0, I) from
    ``rng``, no truncation, NADA's img2img_batch = 16), encoded with the generator-image preprocessing.
    """
    mu_tgt = _mean_unit_embedding_of_files(encoder, list_images(target_images))
    if source_images is not None:
        mu_src = _mean_unit_embedding_of_files(encoder, list_images(source_images))
    elif G_src is not None:
        device = next(G_src.parameters()).device
        features = []
        for start in range(0, n_source, batch):
            n = min(batch, n_source - start)
            z = torch.randn(n, G_src.style_dim, generator=rng).to(device)
            wplus = G_src.make_wplus([G_src.mapping(z)], input_is_latent=True)
            features.append(encoder.image_features(G_src.synthesis(wplus, noise_mode=noise_mode, rng=rng)))
        mu_src = torch.cat(features).mean(dim=0, keepdim=True)
    else:
        raise DirectionError("an image direction needs source images or a source generator (G_src) to sample")
    direction = mu_tgt - mu_src.to(mu_tgt.device)
    norm = direction.norm(dim=-1, keepdim=True)
    if not bool(norm > 0):
        raise DirectionError("target and source images have the same mean CLIP embedding; no direction to follow")
    return direction / norm


# ------------------------------------------------------------------------------------------------- ClipGuidance
@dataclass(frozen=True)
class GuidanceConfig:
    """Loss weights and behaviour of ClipGuidance; defaults are NADA's (directional loss only, faithful maths)."""

    lambda_direction: float = 1.0  # directional loss (the paper's)
    lambda_global: float = 0.0  # global loss toward global_template(target)
    lambda_patch: float = 0.0  # patch-directional loss
    lambda_manifold: float = 0.0  # manifold-angle loss
    mode: str = "faithful"  # "fixed": bounded directional gradient when the two images coincide; plain part prompts
    tau: float = DEFAULT_TAU  # fixed-mode saturation norm of the edit direction
    global_template: str = GLOBAL_TRAINING_TEMPLATE  # prompt of the global training loss ("a {}" in NADA)
    selection_template: str = GLOBAL_SELECTION_TEMPLATE  # prompt of the layer-selection loss ("{}" in NADA)
    patch_fraction: float = 0.5  # crop side / shorter image side for the patch loss (NADA: 510 px at 1024)
    patch_nested_templates: bool | None = None  # NADA's nested part templates; None = (mode == "faithful")
    templates: tuple[str, ...] = IMAGENET_TEMPLATES  # templates of text directions and the manifold loss

    @property
    def nested_part_templates(self) -> bool:
        return self.mode == "faithful" if self.patch_nested_templates is None else self.patch_nested_templates


class ClipGuidance:
    """Weighted sum over CLIP models of NADA's CLIP losses between frozen (x_src) and trainable (x_tgt) images.

    ``encoders``: (ClipEncoder, weight) pairs; the total is sum_m weight_m * L_m (a sum, as NADA). Models of weight 0
    are skipped entirely. Every text direction, part direction and text feature is computed once, here.
    ``directions``: optional per-model [1, D] directions (e.g. from ``image_direction``) replacing the text ones.
    Call with x_src, x_tgt [B, 3, H, W] in [-1, 1]: the gradient flows to x_tgt only; no graph is built for x_src
    or CLIP's parameters. Returns (loss 0-d float32 tensor, stats) with stats "<term>/<model index>" -> detached
    0-d tensors (nothing is synchronised with the device; call float() when logging).
    """

    def __init__(self, encoders: Sequence[tuple[ClipEncoder, float]], source_text: str | None,
                 target_text: str | None, config: GuidanceConfig = GuidanceConfig(), *,
                 directions: Sequence[torch.Tensor | None] | None = None,
                 rng: torch.Generator | None = None) -> None:
        _check_eps_mode(config.mode)
        if directions is not None and len(directions) != len(encoders):
            raise GuidanceError(f"got {len(directions)} directions for {len(encoders)} CLIP models; give one each")
        if not any((config.lambda_direction, config.lambda_global, config.lambda_patch, config.lambda_manifold)):
            raise GuidanceError("every loss weight (lambda) is 0; set lambda_direction = 1 for NADA's loss")
        self.config = config
        self.source_text = source_text
        self.target_text = target_text
        self.rng = rng  # patch-crop positions
        # the caller's index of each model is kept so that stats name models the same whatever is skipped
        self.models: list[tuple[int, ClipEncoder, float]] = []
        for index, (encoder, weight) in enumerate(encoders):
            if not weight >= 0:
                raise GuidanceError(f"CLIP model {index} has weight {weight}; weights must be >= 0 (0 disables it)")
            if weight > 0:
                self.models.append((index, encoder, float(weight)))
        if not self.models:
            raise GuidanceError("every CLIP model has weight 0; give at least one model a positive weight")

        text_dirs_needed = config.lambda_direction and (
            directions is None or any(directions[i] is None for i, _, _ in self.models))
        need_source = bool(text_dirs_needed or config.lambda_patch or config.lambda_manifold)
        if need_source and not (source_text and target_text):
            raise GuidanceError("source and target texts are required for text directions and the patch/manifold "
                                "losses; pass both (e.g. 'photo' and 'sketch')")
        if config.lambda_global and not target_text:
            raise GuidanceError("the global loss needs a target text; pass target_text or set lambda_global = 0")

        self.directions: dict[int, torch.Tensor] = {}
        self.part_dirs: dict[int, torch.Tensor] = {}
        self.text_means: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for index, encoder, _ in self.models:
            if config.lambda_direction:
                given = directions[index] if directions is not None else None
                if given is not None:
                    self.directions[index] = _normalize(given.detach().float().reshape(1, -1).to(encoder.device))
                else:
                    self.directions[index] = text_direction(encoder, source_text, target_text, config.templates)
            if config.lambda_patch:
                self.part_dirs[index] = part_directions(encoder, source_text, target_text,
                                                        nested_templates=config.nested_part_templates,
                                                        templates=config.templates)
            if config.lambda_manifold:
                self.text_means[index] = (mean_text_feature(encoder, source_text, config.templates),
                                          mean_text_feature(encoder, target_text, config.templates))
            if config.lambda_global:
                encoder.text_features(self.global_prompt)  # encode once now, not inside the first step

    @property
    def global_prompt(self) -> str:
        """The prompt of the global training loss, e.g. "a sketch"."""
        return self.config.global_template.replace("{}", self.target_text or "")

    @property
    def generators(self) -> tuple[torch.Generator, ...]:
        """The random generators the guidance draws from (patch crops): a resumable run saves their states."""
        return (self.rng,) if self.rng is not None else ()

    @property
    def encoders(self) -> list[tuple[ClipEncoder, float]]:
        """The (encoder, weight) pairs that are evaluated (weight > 0)."""
        return [(encoder, weight) for _, encoder, weight in self.models]

    def __call__(self, x_src: torch.Tensor, x_tgt: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.config
        total = torch.zeros((), dtype=torch.float32, device=x_tgt.device)
        stats: dict[str, torch.Tensor] = {}
        pair_terms = cfg.lambda_direction or cfg.lambda_manifold
        for index, encoder, weight in self.models:
            terms: list[tuple[str, float, torch.Tensor]] = []
            feat_tgt = encoder.image_features(x_tgt) if (pair_terms or cfg.lambda_global) else None
            if pair_terms:
                with torch.no_grad():
                    feat_src = encoder.image_features(x_src)
            if cfg.lambda_global:
                terms.append(("global", cfg.lambda_global,
                              global_loss(encoder, x_tgt, self.global_prompt, image_features=feat_tgt)))
            if cfg.lambda_patch:
                terms.append(("patch", cfg.lambda_patch,
                              patch_directional_loss(encoder, x_src, x_tgt, self.part_dirs[index],
                                                     patch_fraction=cfg.patch_fraction, rng=self.rng,
                                                     eps_mode=cfg.mode, tau=cfg.tau)))
            if cfg.lambda_direction:
                # NADA's guard for an exactly zero difference: re-encode the target shifted by 1e-6 (faithful only)
                recompute = (lambda enc=encoder: enc.image_features(x_tgt + 1e-6)) if cfg.mode == "faithful" else None
                terms.append(("direction", cfg.lambda_direction,
                              directional_loss(feat_src, feat_tgt, self.directions[index], eps_mode=cfg.mode,
                                               tau=cfg.tau, recompute_target=recompute)))
            if cfg.lambda_manifold:
                text_src, text_tgt = self.text_means[index]
                terms.append(("manifold", cfg.lambda_manifold,
                              manifold_angle_loss(feat_src, feat_tgt, text_src, text_tgt)))
            model_loss = 0.0
            for name, lam, value in terms:
                stats[f"{name}/{index}"] = value.detach()
                model_loss = model_loss + lam * value
            total = total + weight * model_loss.to(total.device)
        return total, stats

    def selection_loss(self, images: torch.Tensor, target_text: str | None = None) -> torch.Tensor:
        """sum_m weight_m * global loss of ``images`` [B, 3, H, W] toward selection_template(target): the objective
        of adaptive layer selection. ``target_text`` overrides the guidance's target (NADA: --target_class)."""
        text = target_text if target_text is not None else self.target_text
        if not text:
            raise GuidanceError("layer selection needs a target text; pass target_text (NADA used --target_class)")
        prompt = self.config.selection_template.replace("{}", text)
        total = torch.zeros((), dtype=torch.float32, device=images.device)
        for _, encoder, weight in self.models:
            total = total + weight * global_loss(encoder, images, prompt).to(total.device)
        return total
