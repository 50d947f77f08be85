"""The latent mapper network (StyleCLIP's LevelsMapper / SingleMapper): W+ -> delta W+."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from replication.mapper.config import MAPPER_TYPES, MapperConfig, MapperError

# StyleGAN's coarse styles drive 4^2-8^2 and the middle ones 16^2-32^2; in rosinality's W+ that is indices [0, 4) and
# [4, 8) at every resolution, which is the split StyleCLIP hard-codes for its 18-vector (1024 px) generator.
COARSE_END, MEDIUM_END = 4, 8
GROUP_NAMES = ("coarse", "medium", "fine")
# Module names of the three MLPs, kept identical to StyleCLIP's (including its "course" typo) so that a state dict of
# the original mapper loads without renaming.
GROUP_MODULES = {"coarse": "course_mapping", "medium": "medium_mapping", "fine": "fine_mapping"}
MLP_DEPTH, MLP_LR_MUL = 4, 0.01


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
