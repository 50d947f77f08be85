"""Latent mapper for the "mining" step (NADA's StyleCLIP-style W+ mapper): model, losses, Ranger, training, I/O."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from replication.clip_models import ClipEncoder, load_clip
from replication.losses import embedding_norm_loss, global_logits
from replication.networks import Generator
from replication.runio import atomic_torch_save, write_json

MAPPER_TYPES = ("levels", "single")
MODES = ("faithful", "fixed")
OPTIMIZERS = ("ranger", "adam")
NOISE_MODES = ("const", "none")
CHECKPOINT_FORMAT = "nada-replication/latent-mapper/v1"
# StyleGAN's coarse styles drive 4^2-8^2 and the middle ones 16^2-32^2; in rosinality's W+ that is indices [0, 4) and
# [4, 8) at every resolution, which is the split StyleCLIP hard-codes for its 18-vector (1024 px) generator.
COARSE_END, MEDIUM_END = 4, 8
GROUP_NAMES = ("coarse", "medium", "fine")
# Module names of the three MLPs, kept identical to StyleCLIP's (including its "course" typo) so that a state dict of
# the original mapper loads without renaming.
GROUP_MODULES = {"coarse": "course_mapping", "medium": "medium_mapping", "fine": "fine_mapping"}
MLP_DEPTH, MLP_LR_MUL = 4, 0.01
IdentityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class MapperError(ValueError):
    """Bad mapper input (config value, latent shape, encoder list, checkpoint); the message says how to fix it."""


class MapperDiverged(RuntimeError):
    """The mapper's loss became NaN or inf during training."""


# ----------------------------------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class MapperConfig:
    """Latent-mapper hyper-parameters; defaults are NADA's mapper options (ZSSGAN/mapper, spec section 7.1)."""

    description: str  # driving text, used raw (no templates), e.g. "a photo of a cat"
    clip_models: tuple[str, ...] = ("ViT-B/32", "ViT-B/16")  # CLIP names or paths; the first also drives the norm loss
    clip_model_weights: tuple[float, ...] = (1.0, 1.0)  # per-model weight of the summed CLIP loss
    mapper_type: str = "levels"  # "levels": three MLPs for coarse/medium/fine W+; "single": one MLP for all of W+
    no_coarse: bool = False  # zero the coarse group's delta (no MLP is built for it)
    no_medium: bool = False
    no_fine: bool = False
    level_bounds: tuple[int, int] | None = None  # (coarse_end, medium_end); None = (4, 8) clamped to n_latent
    step_scale: float = 0.1  # edit: w_hat = w + step_scale * M(w)
    lambda_clip: float = 1.0
    lambda_l2: float = 0.8  # MSE between edited and original W+
    lambda_norm: float = 0.5  # embedding-norm regulariser (NADA's addition to StyleCLIP)
    lambda_id: float = 0.1  # identity loss; only used when train_mapper gets an identity_fn
    lr: float = 0.5
    batch: int = 2
    steps: int = 50001  # optimiser steps (the original's max_steps)
    optimizer: str = "ranger"  # "ranger" (RAdam + Lookahead + gradient centralisation) or "adam" (torch defaults)
    betas: tuple[float, float] = (0.95, 0.999)  # Ranger's RAdam betas
    eps: float = 1e-5  # Ranger's RAdam eps
    lookahead_alpha: float = 0.5
    lookahead_k: int = 6
    gradient_centralization: bool = True
    truncation: float = 0.7  # psi of the training latents
    truncation_mean_samples: int = 4096  # z drawn to estimate the mean w that truncation pulls toward
    n_train_latents: int = 5000  # size of the fixed pool of training W+ latents
    noise_mode: str = "const"  # generator noise of the training renders: the original's randomize_noise=False
    mode: str = "faithful"  # "faithful": StyleCLIP's PixelNorm axis and CLIP input; "fixed": both corrected

    def __post_init__(self) -> None:
        def fail(message: str) -> None:
            raise MapperError(f"MapperConfig: {message}")

        if not isinstance(self.description, str) or not self.description.strip():
            fail("description is empty; pass the text the mapper should steer toward, e.g. description='a cat'")
        if not self.clip_models or len(self.clip_models) != len(self.clip_model_weights):
            fail(f"clip_models {self.clip_models} and clip_model_weights {self.clip_model_weights} must be non-empty "
                 "and of equal length")
        if any(w < 0 for w in self.clip_model_weights):
            fail(f"clip_model_weights {self.clip_model_weights} must be >= 0")
        if self.mapper_type not in MAPPER_TYPES:
            fail(f"mapper_type {self.mapper_type!r} is unknown; use one of {MAPPER_TYPES}")
        if self.mapper_type == "levels" and self.no_coarse and self.no_medium and self.no_fine:
            fail("no_coarse, no_medium and no_fine are all set, so there is nothing to train; clear at least one")
        if self.level_bounds is not None and not (len(self.level_bounds) == 2 and 0 <= self.level_bounds[0]
                                                  <= self.level_bounds[1]):
            fail(f"level_bounds {self.level_bounds} must be (coarse_end, medium_end), 0 <= coarse_end <= medium_end")
        for name in ("lambda_clip", "lambda_l2", "lambda_norm", "lambda_id"):
            if getattr(self, name) < 0:
                fail(f"{name} = {getattr(self, name)} must be >= 0")
        if not self.lr > 0 or not self.eps > 0:
            fail(f"lr ({self.lr}) and eps ({self.eps}) must be > 0")
        if self.batch < 1 or self.steps < 0:
            fail(f"batch ({self.batch}) must be >= 1 and steps ({self.steps}) >= 0")
        if self.optimizer not in OPTIMIZERS:
            fail(f"optimizer {self.optimizer!r} is unknown; use one of {OPTIMIZERS}")
        if not all(0 <= b < 1 for b in self.betas) or len(self.betas) != 2:
            fail(f"betas {self.betas} must be two numbers in [0, 1)")
        if not 0 <= self.lookahead_alpha <= 1 or self.lookahead_k < 1:
            fail(f"lookahead_alpha ({self.lookahead_alpha}) must be in [0, 1], lookahead_k ({self.lookahead_k}) >= 1")
        if self.truncation < 0 or self.truncation_mean_samples < 1:
            fail(f"truncation ({self.truncation}) must be >= 0 and truncation_mean_samples >= 1")
        if self.n_train_latents < self.batch:
            fail(f"n_train_latents ({self.n_train_latents}) must be at least batch ({self.batch})")
        if self.noise_mode not in NOISE_MODES:
            fail(f"noise_mode {self.noise_mode!r} is unknown; use one of {NOISE_MODES}")
        if self.mode not in MODES:
            fail(f"mode {self.mode!r} is unknown; use one of {MODES}")

    @property
    def pixelnorm_axis(self) -> str:
        # StyleCLIP's PixelNorm averages over dim 1, which for [B, n, D] is the layer axis: faithful keeps that quirk.
        return "layer" if self.mode == "faithful" else "feature"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists) that from_dict turns back into an equal config."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> MapperConfig:
        """Build from a dict such as to_dict()'s; unknown keys are errors."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise MapperError(f"MapperConfig: unknown keys {unknown}; known keys are {sorted(known)}")
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items()}
        try:
            return cls(**values)
        except TypeError as exc:  # a missing required key such as description
            raise MapperError(f"MapperConfig: {exc}") from None


# ----------------------------------------------------------------------------------------------------------------------
# Architecture


def level_slices(n_latent: int, level_bounds: tuple[int, int] | None = None) -> tuple[slice, slice, slice]:
    """W+ index ranges of the coarse, medium and fine groups.

    The default is StyleCLIP's [0, 4), [4, 8), [8, n) clamped to n_latent. Because the split follows resolution (4-8 px,
    16-32 px, 64 px and up), it is the original one for every paper generator (n_latent 14, 16, 18); a small generator
    simply has an empty group (16 px: fine is empty; 32 px: fine is empty; 64 px: fine is [8, 10)). Pass level_bounds to
    choose another split.
    """
    coarse_end, medium_end = level_bounds if level_bounds is not None else (COARSE_END, MEDIUM_END)
    coarse_end, medium_end = min(coarse_end, n_latent), min(medium_end, n_latent)
    return slice(0, coarse_end), slice(coarse_end, medium_end), slice(medium_end, n_latent)


class PixelNorm(nn.Module):
    """x / RMS(x) over one axis: "layer" (dim 1 of [B, n, D], StyleCLIP's quirk) or "feature" (the last dim)."""

    def __init__(self, axis: str = "layer"):
        super().__init__()
        if axis not in ("layer", "feature"):
            raise MapperError(f"PixelNorm axis {axis!r} is unknown; use 'layer' or 'feature'")
        self.axis = axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = 1 if self.axis == "layer" else -1
        return x * torch.rsqrt(x.pow(2).mean(dim=dim, keepdim=True) + 1e-8)

    def extra_repr(self) -> str:
        return f"axis={self.axis!r}"


class EqualLinearLReLU(nn.Module):
    """Equalised-lr linear layer with fused leaky ReLU (slope 0.2, gain sqrt 2), rosinality's EqualLinear layout."""

    def __init__(self, in_dim: int, out_dim: int, lr_mul: float = MLP_LR_MUL):
        super().__init__()
        # Stored weights are N(0, 1)/lr_mul and scaled at run time, so the optimiser's step is lr_mul times smaller in
        # effect (the equalised-learning-rate trick); the bias is stored unscaled and multiplied by lr_mul.
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            fresh = torch.randn(self.weight.shape, generator=generator) / self.lr_mul
            self.weight.copy_(fresh.to(self.weight.device))
            self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(F.linear(x, self.weight * self.scale, self.bias * self.lr_mul), 0.2) * math.sqrt(2)


class MapperMLP(nn.Module):
    """PixelNorm then four EqualLinear+lrelu layers; the inner Sequential is named `mapping` as in StyleCLIP."""

    def __init__(self, style_dim: int, pixelnorm_axis: str):
        super().__init__()
        self.mapping = nn.Sequential(PixelNorm(pixelnorm_axis),
                                     *[EqualLinearLReLU(style_dim, style_dim) for _ in range(MLP_DEPTH)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mapping(x)


class LatentMapper(nn.Module):
    """W+ -> delta W+; the edit is w + step_scale * M(w). "levels" (LevelsMapper) or "single" (SingleMapper).

    Parameter names equal StyleCLIP's mapper (`course_mapping.mapping.1.weight`, ... / `mapping.mapping.1.weight`).
    A disabled or empty group has no MLP and returns a zero delta.
    """

    def __init__(self, n_latent: int, style_dim: int, *, mapper_type: str = "levels", no_coarse: bool = False,
                 no_medium: bool = False, no_fine: bool = False, pixelnorm_axis: str = "layer",
                 level_bounds: tuple[int, int] | None = None, generator: torch.Generator | None = None):
        super().__init__()
        if mapper_type not in MAPPER_TYPES:
            raise MapperError(f"mapper_type {mapper_type!r} is unknown; use one of {MAPPER_TYPES}")
        if n_latent < 1 or style_dim < 1:
            raise MapperError(f"n_latent ({n_latent}) and style_dim ({style_dim}) must be >= 1")
        self.n_latent, self.style_dim, self.mapper_type = n_latent, style_dim, mapper_type
        self.slices = dict(zip(GROUP_NAMES, level_slices(n_latent, level_bounds)))
        disabled = {"coarse": no_coarse, "medium": no_medium, "fine": no_fine}
        self.active_groups: tuple[str, ...] = ()
        if mapper_type == "single":
            self.mapping = MapperMLP(style_dim, pixelnorm_axis)
        else:
            active = [g for g in GROUP_NAMES if not disabled[g] and self.slices[g].stop > self.slices[g].start]
            if not active:
                raise MapperError(f"every mapper group is disabled or empty for n_latent {n_latent} "
                                  f"(split {self.slices}); enable a group or change level_bounds")
            self.active_groups = tuple(active)
            for group in active:
                self.add_module(GROUP_MODULES[group], MapperMLP(style_dim, pixelnorm_axis))
        self.reset_parameters(generator)

    @classmethod
    def from_config(cls, n_latent: int, style_dim: int, cfg: MapperConfig,
                    generator: torch.Generator | None = None) -> LatentMapper:
        return cls(n_latent, style_dim, mapper_type=cfg.mapper_type, no_coarse=cfg.no_coarse, no_medium=cfg.no_medium,
                   no_fine=cfg.no_fine, pixelnorm_axis=cfg.pixelnorm_axis, level_bounds=cfg.level_bounds,
                   generator=generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Re-draw every weight from `generator` (CPU), so that a seed fixes the initial mapper."""
        for module in self.modules():
            if isinstance(module, EqualLinearLReLU):
                module.reset_parameters(generator)

    def forward(self, wplus: torch.Tensor) -> torch.Tensor:
        if wplus.dim() != 3 or wplus.shape[1:] != (self.n_latent, self.style_dim):
            raise MapperError(f"mapper input has shape {tuple(wplus.shape)}; expected [B, {self.n_latent}, "
                              f"{self.style_dim}] W+ latents of the generator the mapper was built for")
        if self.mapper_type == "single":
            return self.mapping(wplus)
        pieces = []
        for group in GROUP_NAMES:
            part = wplus[:, self.slices[group]]
            pieces.append(getattr(self, GROUP_MODULES[group])(part) if group in self.active_groups
                          else torch.zeros_like(part))
        return torch.cat(pieces, dim=1)

    def edit(self, wplus: torch.Tensor, step_scale: float = 0.1) -> torch.Tensor:
        """The edited latents w + step_scale * M(w)."""
        return wplus + step_scale * self(wplus)


# ----------------------------------------------------------------------------------------------------------------------
# CLIP input and losses


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


# ----------------------------------------------------------------------------------------------------------------------
# Optimiser: Ranger = RAdam + Lookahead + gradient centralisation


@torch.no_grad()
def centralize_gradients(params: Sequence[torch.Tensor]) -> None:
    """Subtract from each gradient of a >=2-D parameter its mean over all but the first (output) axis, in place."""
    for p in params:
        if p.grad is not None and p.grad.dim() > 1:
            p.grad.sub_(p.grad.mean(dim=tuple(range(1, p.grad.dim())), keepdim=True))


class Lookahead:
    """Wraps an optimiser: every k inner steps the slow weights move alpha of the way to the fast ones, and the fast
    weights restart from them. Slow weights start at the parameters' values when the wrapper is built.

    One step counter serves all parameters; the reference Ranger counts per parameter, which differs only for a
    parameter that sometimes gets no gradient (never the case for the mapper).
    """

    def __init__(self, inner: torch.optim.Optimizer, alpha: float = 0.5, k: int = 6):
        if not 0 <= alpha <= 1 or k < 1:
            raise MapperError(f"Lookahead alpha ({alpha}) must be in [0, 1] and k ({k}) >= 1")
        self.inner, self.alpha, self.k = inner, alpha, k
        self.params = [p for group in inner.param_groups for p in group["params"]]
        self.slow = [p.detach().clone() for p in self.params]
        self.step_count = 0

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.inner.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        self.inner.step()
        self.step_count += 1
        if self.step_count % self.k == 0:
            for fast, slow in zip(self.params, self.slow):
                slow.add_(fast - slow, alpha=self.alpha)
                fast.copy_(slow)

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "slow": [s.clone() for s in self.slow], "step_count": self.step_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        for slow, saved in zip(self.slow, state["slow"], strict=True):
            slow.copy_(saved)
        self.step_count = int(state["step_count"])


class Ranger(Lookahead):
    """StyleCLIP's Ranger: gradient centralisation, then torch's RAdam (same rectification, threshold 5 and eps
    placement as the reference), then Lookahead."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.95, 0.999), eps: float = 1e-5,
                 alpha: float = 0.5, k: int = 6, gradient_centralization: bool = True):
        super().__init__(torch.optim.RAdam(params, lr=lr, betas=betas, eps=eps), alpha=alpha, k=k)
        self.gradient_centralization = gradient_centralization

    @torch.no_grad()
    def step(self) -> None:
        if self.gradient_centralization:
            centralize_gradients(self.params)
        super().step()


def make_optimizer(params, cfg: MapperConfig) -> Lookahead | torch.optim.Optimizer:
    """Ranger with cfg's settings, or Adam with torch's defaults but cfg.lr (as the original's --optim_name adam)."""
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    return Ranger(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, alpha=cfg.lookahead_alpha, k=cfg.lookahead_k,
                  gradient_centralization=cfg.gradient_centralization)


# ----------------------------------------------------------------------------------------------------------------------
# Training


@torch.no_grad()
def sample_wplus(G: Generator, n: int, *, truncation: float, mean_samples: int, generator: torch.Generator,
                 chunk: int = 1024) -> torch.Tensor:
    """n W+ latents [n, n_latent, style_dim] from z ~ N(0, I), truncated toward the mean w by psi = truncation.

    All random draws come from `generator` (CPU), so the pool is the same on every device for one seed. Unlike the
    original (StyleCLIP's batch slice used the batch index, so its 5000 latents overlapped heavily), every latent here
    comes from its own z.
    """
    device = next(G.parameters()).device

    def mapped(count: int) -> torch.Tensor:
        z = torch.randn(count, G.style_dim, generator=generator)
        return torch.cat([G.mapping(part.to(device)) for part in z.split(chunk)])

    w_mean = mapped(mean_samples).mean(dim=0, keepdim=True)
    w = w_mean + truncation * (mapped(n) - w_mean)
    return w[:, None, :].expand(-1, G.n_latent, -1).contiguous()


def _check_encoders(encoders_with_weights: Sequence[tuple[ClipEncoder, float]], cfg: MapperConfig) -> None:
    if len(encoders_with_weights) != len(cfg.clip_models):
        raise MapperError(f"got {len(encoders_with_weights)} CLIP encoders but the config names {len(cfg.clip_models)} "
                          f"({cfg.clip_models}); pass one (encoder, weight) pair per configured model")
    weights = tuple(float(w) for _, w in encoders_with_weights)
    if any(abs(a - b) > 1e-12 for a, b in zip(weights, cfg.clip_model_weights)):
        raise MapperError(f"encoder weights {weights} differ from cfg.clip_model_weights {cfg.clip_model_weights}; "
                          "build the pairs from the config (see load_encoders)")


def load_encoders(cfg: MapperConfig, device: str | torch.device = "cpu") -> list[tuple[ClipEncoder, float]]:
    """(encoder, weight) pairs for cfg.clip_models through replication.clip_models.load_clip (no downloads)."""
    return [(load_clip(name, device=device), float(weight))
            for name, weight in zip(cfg.clip_models, cfg.clip_model_weights)]


def train_mapper(G: Generator, encoders_with_weights: Sequence[tuple[ClipEncoder, float]], cfg: MapperConfig, *,
                 seed: int, run_dir: str | Path | None = None, identity_fn: IdentityFn | None = None,
                 progress: bool = True) -> tuple[LatentMapper, dict[str, Any]]:
    """Train a latent mapper on G (e.g. a NADA-adapted generator) toward cfg.description.

    G stays frozen (its requires_grad flags and train/eval mode are restored afterwards). The seed fixes the latent
    pool, the mapper's initial weights and the batch order, so a CPU run is repeatable. identity_fn(x_edit, x_orig)
    returns a per-sample similarity [B] (e.g. ArcFace cosine) and enables the identity loss. With run_dir, the config,
    per-step stats and the final mapper (mapper.pt) are written there atomically.
    Returns (mapper, stats): stats holds per-step lists loss, loss_clip, loss_l2, loss_norm, loss_id and seconds.
    """
    _check_encoders(encoders_with_weights, cfg)
    if cfg.noise_mode == "const" and not hasattr(G, "noises"):
        raise MapperError("noise_mode 'const' needs a generator with registered noise buffers; use noise_mode 'none'")
    device = next(G.parameters()).device
    rng = torch.Generator().manual_seed(int(seed))
    requires_grad = [p.requires_grad for p in G.parameters()]
    was_training = G.training
    G.requires_grad_(False)  # gradients must reach the mapper through G without being accumulated into G's weights
    G.eval()
    try:
        train_latents = sample_wplus(G, cfg.n_train_latents, truncation=cfg.truncation,
                                     mean_samples=cfg.truncation_mean_samples, generator=rng)
        mapper = LatentMapper.from_config(G.n_latent, G.style_dim, cfg, generator=rng).to(device)
        mapper.train()
        optimizer = make_optimizer(mapper.parameters(), cfg)
        first_encoder = encoders_with_weights[0][0]
        batches_per_epoch = cfg.n_train_latents // cfg.batch  # drop_last, as the original DataLoader
        order = torch.empty(0, dtype=torch.long)
        records: list[list[float]] = []
        start = time.perf_counter()
        bar = tqdm(range(cfg.steps), desc="mapper", disable=not progress, dynamic_ncols=True)
        for step in bar:
            position = step % batches_per_epoch
            if position == 0:
                order = torch.randperm(cfg.n_train_latents, generator=rng)
            w = train_latents[order[position * cfg.batch:(position + 1) * cfg.batch].to(device)]
            with torch.no_grad():
                x = G.synthesis(w, noise_mode=cfg.noise_mode)
                embeddings_x = (first_encoder.encode_image(prepare_for_clip(first_encoder, x, cfg.mode))
                                if cfg.lambda_norm > 0 else None)
            w_hat = w + cfg.step_scale * mapper(w)
            x_hat = G.synthesis(w_hat, noise_mode=cfg.noise_mode)
            loss, terms = mapper_loss(w, w_hat, x, x_hat, encoders_with_weights, cfg, identity_fn=identity_fn,
                                      embeddings_x=embeddings_x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            record = torch.stack([loss.detach(), *terms.values()]).tolist()  # one device sync per step
            if not math.isfinite(record[0]):
                raise MapperDiverged(f"mapper loss became {record[0]} at step {step} (terms "
                                     f"{dict(zip(terms, record[1:]))}); lower lr or check the generator and encoders")
            records.append(record)
            if progress:
                bar.set_postfix(loss=f"{record[0]:.4f}", clip=f"{record[1]:.4f}", l2=f"{record[2]:.4f}")
        bar.close()
        seconds = time.perf_counter() - start
    finally:
        for p, flag in zip(G.parameters(), requires_grad):
            p.requires_grad_(flag)
        G.train(was_training)
    mapper.eval()
    names = ("loss", "loss_clip", "loss_l2", "loss_norm", "loss_id")
    stats: dict[str, Any] = {name: [r[i] for r in records] for i, name in enumerate(names)}
    stats["seconds"] = seconds
    stats["seed"] = int(seed)
    if run_dir is not None:
        run_dir = Path(run_dir)
        write_json(run_dir / "mapper_config.json", cfg.to_dict())
        write_json(run_dir / "mapper_stats.json", stats)
        save_mapper(run_dir / "mapper.pt", mapper, cfg)
    return mapper, stats


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints


def save_mapper(path: str | Path, mapper: LatentMapper, cfg: MapperConfig) -> None:
    """Write the mapper's weights, shape and config to `path` (temp file + rename: an existing file stays intact)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "n_latent": mapper.n_latent,
        "style_dim": mapper.style_dim,
        "config": cfg.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in mapper.state_dict().items()},
    }
    atomic_torch_save(payload, Path(path))


def _read_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MapperError(f"no mapper checkpoint at {path}; train one with train_mapper(..., run_dir=...) first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure, including a refused foreign object, means "not ours"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MapperError(f"{path} is not a loadable mapper checkpoint ({first_line}); "
                          "only save_mapper files and StyleCLIP/NADA mapper checkpoints are accepted") from None
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise MapperError(f"{path} holds no mapper state_dict; expected a file written by save_mapper")
    return payload


def _from_styleclip(payload: dict[str, Any], path: Path) -> tuple[LatentMapper, MapperConfig, dict[str, Any]]:
    """Config and state dict of an original StyleCLIP/NADA mapper checkpoint ({'state_dict', 'opts'})."""
    opts = payload["opts"]
    state = {k[len("mapper."):]: v for k, v in payload["state_dict"].items() if k.startswith("mapper.")}
    weight_keys = [k for k in state if k.endswith("mapping.1.weight")]
    if not weight_keys or "stylegan_size" not in opts:
        raise MapperError(f"{path} looks like a StyleCLIP checkpoint but has no mapper weights or stylegan_size")
    style_dim = int(state[weight_keys[0]].shape[1])
    n_latent = 2 * int(math.log2(int(opts["stylegan_size"]))) - 2
    types = {"LevelsMapper": "levels", "SingleMapper": "single"}
    if opts.get("mapper_type", "LevelsMapper") not in types:
        raise MapperError(f"{path}: mapper_type {opts.get('mapper_type')!r} is unknown; expected one of {list(types)}")
    cfg = MapperConfig(
        description=str(opts.get("description") or "unknown"),
        mapper_type=types[opts.get("mapper_type", "LevelsMapper")],
        no_coarse=bool(opts.get("no_coarse_mapper", False)), no_medium=bool(opts.get("no_medium_mapper", False)),
        no_fine=bool(opts.get("no_fine_mapper", False)), lambda_clip=float(opts.get("clip_lambda", 1.0)),
        lambda_l2=float(opts.get("latent_l2_lambda", 0.8)), lambda_norm=float(opts.get("norm_lambda", 0.0)),
        lambda_id=float(opts.get("id_lambda", 0.1)), lr=float(opts.get("learning_rate", 0.5)),
        batch=int(opts.get("batch_size", 2)), steps=int(opts.get("max_steps", 50001)),
        optimizer=str(opts.get("optim_name", "ranger")), mode="faithful")
    return LatentMapper.from_config(n_latent, style_dim, cfg), cfg, state


def load_mapper(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[LatentMapper, MapperConfig]:
    """Load a mapper written by save_mapper, or an original StyleCLIP/NADA mapper checkpoint, with weights_only=True."""
    path = Path(path)
    payload = _read_checkpoint(path)
    if "opts" in payload and payload.get("format") != CHECKPOINT_FORMAT:
        mapper, cfg, state = _from_styleclip(payload, path)
    elif payload.get("format") == CHECKPOINT_FORMAT:
        try:
            cfg = MapperConfig.from_dict(payload["config"])
            mapper = LatentMapper.from_config(int(payload["n_latent"]), int(payload["style_dim"]), cfg)
        except (KeyError, TypeError) as exc:
            raise MapperError(f"{path} is a damaged mapper checkpoint (missing or bad field {exc})") from None
        state = payload["state_dict"]
    else:
        raise MapperError(f"{path} has format {payload.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    try:
        mapper.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise MapperError(f"{path}: weights do not fit the mapper its config describes "
                          f"({str(exc).splitlines()[0]})") from None
    return mapper.to(map_location).eval(), cfg


def describe(mapper: LatentMapper) -> dict[str, Any]:
    """Shape facts of a mapper for run records: type, groups with their W+ ranges, parameter count."""
    return {
        "mapper_type": mapper.mapper_type,
        "n_latent": mapper.n_latent,
        "style_dim": mapper.style_dim,
        "groups": {g: [s.start, s.stop] for g, s in mapper.slices.items()} if mapper.mapper_type == "levels" else None,
        "active_groups": list(mapper.active_groups),
        "parameters": sum(p.numel() for p in mapper.parameters()),
    }


__all__ = [
    "MapperConfig", "MapperError", "MapperDiverged", "LatentMapper", "PixelNorm", "EqualLinearLReLU", "MapperMLP",
    "level_slices", "area_resample_matrix", "styleclip_resize", "prepare_for_clip", "clip_text_loss",
    "mapper_loss", "centralize_gradients", "Lookahead", "Ranger", "make_optimizer",
    "sample_wplus", "load_encoders", "train_mapper", "save_mapper", "load_mapper", "describe",
]


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: train a latent mapper on an (adapted) generator checkpoint toward a description."""
    import argparse
    import json as _json
    import sys

    p = argparse.ArgumentParser(prog="python -m replication.mapper",
                                description="Train a latent mapper (the paper's 'mining' step) on a generator.",
                                epilog="Example: python -m replication.mapper --generator run/checkpoints/G_tgt.pt "
                                       "--description 'a photo of a cat' --run-dir runs/mapper --steps 2000")
    p.add_argument("--generator", required=True, help="checkpoint (ours or rosinality .pt), e.g. a NADA G_tgt.pt")
    p.add_argument("--description", required=True, help="driving text, used raw")
    p.add_argument("--clip-models", nargs="+", default=list(MapperConfig.clip_models))
    p.add_argument("--clip-model-weights", nargs="+", type=float, default=None)
    p.add_argument("--steps", type=int, default=MapperConfig.steps)
    p.add_argument("--mode", default="faithful", choices=("faithful", "fixed"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    from replication.checkpoint import CheckpointError, load_generator
    from replication.clip_models import ClipModelError, PromptError
    from replication.weights import WeightError

    try:
        weights = tuple(args.clip_model_weights or [1.0] * len(args.clip_models))
        cfg = MapperConfig(description=args.description, clip_models=tuple(args.clip_models),
                           clip_model_weights=weights, steps=args.steps, mode=args.mode)
        G, _ = load_generator(args.generator, device=args.device)
        _, stats = train_mapper(G, load_encoders(cfg, args.device), cfg, seed=args.seed, run_dir=args.run_dir)
    except (MapperError, CheckpointError, ClipModelError, PromptError, WeightError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(_json.dumps({"run_dir": str(args.run_dir), "final_loss": stats["loss"][-1]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
