"""The mini world's ground truth: which attributes a latent draws, how a shift reads in domain names, attribute R^2."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from replication.miniworld.attributes import (
    ATTRIBUTE_INDEX,
    ATTRIBUTE_NAMES,
    CHARACTERS,
    GLASSES_PROBABILITY,
    NUM_ATTRIBUTES,
    SOURCE_CHARACTER,
    SOURCE_STYLE,
    STYLES,
)

LATENT_MAPPING_NAME = "pixelnorm-student-t-v1"
CIRCULAR_ATTRIBUTES = ("background_hue", "light_direction")  # wrap at 1: an error of 0.98 is really 0.02


class TruthError(ValueError):
    """Input the mini world's truth cannot read (a latent of the wrong shape, a shift outside the mini world)."""


class ShiftKindError(TruthError):
    """The shift's texts are not mini-world domain names."""


def _normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def latent_to_attributes(z: Tensor) -> Tensor:
    """Attributes [N, 13] in [0, 1] of latents z [N, D] (D >= 14), distributed exactly like sample_attributes'.

    The generator's first op is PixelNorm, which discards |z|, so the map reads only z's direction: coordinate i gives
    t_i = z_i * sqrt(D - 1) / sqrt(|z|^2 - z_i^2), which is Student-t with D - 1 degrees of freedom for z ~ N(0, I).
    t_i is turned into a standard normal with the Wallace/Cornish-Fisher transform (error < 1e-4 for D >= 32) and then
    into a uniform u_i with the normal CDF. Glasses reproduce sample_attributes' mixture deterministically: u < 0.6
    (60%, no glasses) maps linearly onto [0, 0.4), u >= 0.6 keeps u in [0.6, 1) (40%, glasses). Dimensions from 13
    on carry no attribute.
    """
    if not isinstance(z, Tensor) or z.ndim != 2 or z.shape[1] <= NUM_ATTRIBUTES:
        shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise TruthError(f"latent_to_attributes needs z of shape [N, D] with D > {NUM_ATTRIBUTES}, got {shape}")
    z = z.float()
    dof = z.shape[1] - 1
    head = z[:, :NUM_ATTRIBUTES]
    rest = (z.pow(2).sum(1, keepdim=True) - head.pow(2)).clamp_min(1e-12)
    t = head * math.sqrt(dof) / rest.sqrt()
    gauss = t * (1.0 - 1.0 / (4.0 * dof)) / torch.sqrt(1.0 + t.pow(2) / (2.0 * dof))
    uniform = _normal_cdf(gauss).clamp(0.0, 1.0)
    attrs = uniform.clone()
    g = ATTRIBUTE_INDEX["glasses"]
    no_glasses = 1.0 - GLASSES_PROBABILITY
    u = uniform[:, g]
    # sample_attributes draws U[0, 0.4) without glasses and 0.6 + U[0, 0.4) with them.
    attrs[:, g] = torch.where(u < no_glasses, u * (0.4 / no_glasses),
                              0.6 + (u - no_glasses) * (0.4 / GLASSES_PROBABILITY))
    return attrs.clamp(0.0, 1.0)


def latent_mapping_record(style_dim: int) -> dict[str, Any]:
    """Plain-data description of latent_to_attributes, stored in the generator checkpoint's `extra`."""
    return {
        "name": LATENT_MAPPING_NAME,
        "function": "replication.miniworld.truth.latent_to_attributes",
        "style_dim": int(style_dim),
        "attribute_names": list(ATTRIBUTE_NAMES),
        "latent_dims_used": list(range(NUM_ATTRIBUTES)),
        "definition": (
            "z ~ N(0, I_D); for i < 13: t_i = z_i sqrt(D-1) / sqrt(|z|^2 - z_i^2) (Student-t, D-1 dof); "
            "g_i = t_i (1 - 1/(4(D-1))) / sqrt(1 + t_i^2 / (2(D-1))); u_i = Phi(g_i); attribute i = u_i except "
            "glasses = u (2/3) if u < 0.6 else u (40% wear glasses, as sample_attributes)"
        ),
        "style": SOURCE_STYLE,
        "character": SOURCE_CHARACTER,
    }


def attribute_r2(pred: Tensor, true: Tensor) -> list[float]:
    """R^2 per attribute column of pred against true (both [N, 13]); circular attributes use wrapped residuals."""
    residual = pred.double() - true.double()
    for name in CIRCULAR_ATTRIBUTES:
        i = ATTRIBUTE_INDEX[name]
        residual[:, i] = torch.remainder(residual[:, i] + 0.5, 1.0) - 0.5
    ss_res = residual.pow(2).sum(0)
    ss_tot = (true.double() - true.double().mean(0)).pow(2).sum(0).clamp_min(1e-12)
    return (1.0 - ss_res / ss_tot).tolist()


@dataclass(frozen=True)
class MiniShift:
    """A mini-world domain shift in domain names: which axis changes, and the target domain."""

    axis: str  # "style" or "character"
    target: str  # target style or character name

    @property
    def target_style(self) -> str:
        return self.target if self.axis == "style" else SOURCE_STYLE

    @property
    def target_character(self) -> str:
        return self.target if self.axis == "character" else SOURCE_CHARACTER


def mini_shift(source_text: str, target_text: str) -> MiniShift:
    """Read a shift such as photo -> sketch or human -> zombie as an axis and a target domain."""
    if source_text == SOURCE_STYLE and target_text in STYLES and target_text != SOURCE_STYLE:
        return MiniShift("style", target_text)
    if source_text == SOURCE_CHARACTER and target_text in CHARACTERS and target_text != SOURCE_CHARACTER:
        return MiniShift("character", target_text)
    raise ShiftKindError(f"mini-world shifts go from {SOURCE_STYLE!r} to one of {STYLES[1:]} or from "
                         f"{SOURCE_CHARACTER!r} to one of {CHARACTERS[1:]}; got {source_text!r} -> {target_text!r}")
