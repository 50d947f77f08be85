"""Latent-mapper hyper-parameters (MapperConfig) and the mapper's errors."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

MAPPER_TYPES = ("levels", "single")
MODES = ("faithful", "fixed")
OPTIMIZERS = ("ranger", "adam")
NOISE_MODES = ("const", "none")


class MapperError(ValueError):
    """Bad mapper input (config value, latent shape, encoder list, checkpoint); the message says how to fix it."""


class MapperDiverged(RuntimeError):
    """The mapper's loss became NaN or inf during training."""


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
