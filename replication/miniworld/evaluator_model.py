"""The mini world's evaluator model: a small CNN reading style, character and attributes, and its weights file."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from replication.miniworld.attributes import ATTRIBUTE_INDEX, ATTRIBUTE_NAMES, CHARACTERS, NUM_ATTRIBUTES, STYLES
from replication.miniworld.truth import CIRCULAR_ATTRIBUTES
from replication.runio import atomic_torch_save

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "evaluator.pt"
FORMAT_NAME = "mini-evaluator"
FORMAT_VERSION = 1

# On a colour wheel (CIRCULAR_ATTRIBUTES) 0 and 1 are the same value, so the head predicts a point on the unit circle
# (cos, sin) for those instead of a number whose error would be huge across the wrap; the others are read directly.
LINEAR_ATTRIBUTES: tuple[str, ...] = tuple(name for name in ATTRIBUTE_NAMES if name not in CIRCULAR_ATTRIBUTES)


class EvaluatorError(ValueError):
    """An evaluator file, config or input that cannot be used (missing file, wrong format, wrong image shape)."""


# ---------------------------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class EvaluatorConfig:
    """Architecture of the evaluator CNN."""

    resolution: int = 64
    # (out_channels, stride) per conv block; a stride-2 block halves the resolution. The stem already strides: a
    # full-resolution block cost 40% of a training step on one CPU thread, and 3x3 stride-2 still sees every pixel.
    blocks: tuple[tuple[int, int], ...] = ((32, 2), (48, 1), (96, 2), (96, 1), (160, 2), (160, 1), (256, 2))
    feature_dim: int = 192

    def __post_init__(self) -> None:
        if self.resolution < 16 or any(len(block) != 2 for block in self.blocks) or self.feature_dim < 1:
            raise EvaluatorError(f"invalid evaluator config {self}; use the defaults of EvaluatorConfig")
        for channels, stride in self.blocks:
            if channels < 1 or stride not in (1, 2):
                raise EvaluatorError(f"block ({channels}, {stride}) needs a positive channel count and stride 1 or 2")

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "EvaluatorConfig":
        known = {f.name for f in fields(EvaluatorConfig)}
        unknown = set(data) - known
        if unknown:
            raise EvaluatorError(f"unknown evaluator config keys {sorted(unknown)}; known keys are {sorted(known)}")
        values = dict(data)
        if "blocks" in values:
            values["blocks"] = tuple(tuple(int(v) for v in block) for block in values["blocks"])
        return EvaluatorConfig(**values)


NUM_ATTRIBUTE_OUTPUTS = len(LINEAR_ATTRIBUTES) + 2 * len(CIRCULAR_ATTRIBUTES)
_LINEAR_INDEX = torch.tensor([ATTRIBUTE_INDEX[name] for name in LINEAR_ATTRIBUTES])
_CIRCULAR_INDEX = torch.tensor([ATTRIBUTE_INDEX[name] for name in CIRCULAR_ATTRIBUTES])


class Evaluator(nn.Module):
    """Conv blocks with BatchNorm, global average pooling, a penultimate feature and three heads.

    BatchNorm, not GroupNorm: with GroupNorm the same recipe was still at chance on most attributes after 300 steps,
    with BatchNorm it was learning them after 100. In eval mode (always, outside training) a sample's features do
    not depend on the rest of its batch.

    Two coordinate channels are appended to the image because global pooling otherwise has to rediscover where the
    face is from padding effects, and face_x / face_y are regression targets.
    """

    def __init__(self, config: EvaluatorConfig = EvaluatorConfig()):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        in_channels = 3 + 2
        for out_channels, stride in config.blocks:
            layers += [
                nn.Conv2d(in_channels, out_channels, 3, stride, 1),
                nn.BatchNorm2d(out_channels),
                nn.SiLU(),
            ]
            in_channels = out_channels
        self.trunk = nn.Sequential(*layers)
        self.embed = nn.Linear(in_channels, config.feature_dim)
        self.style_head = nn.Linear(config.feature_dim, len(STYLES))
        self.character_head = nn.Linear(config.feature_dim, len(CHARACTERS))
        self.attribute_head = nn.Linear(config.feature_dim, NUM_ATTRIBUTE_OUTPUTS)
        ramp = torch.linspace(-1.0, 1.0, config.resolution)
        size = config.resolution
        coords = torch.stack([ramp.view(1, -1).expand(size, -1), ramp.view(-1, 1).expand(-1, size)])
        self.register_buffer("coords", coords.unsqueeze(0), persistent=False)

    def _check(self, x: Tensor) -> Tensor:
        size = self.config.resolution
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x)
            raise EvaluatorError(f"evaluator input must be a float tensor [N, 3, H, W] in [-1, 1], got {shape}")
        if not x.is_floating_point():
            raise EvaluatorError(f"evaluator input must be float in [-1, 1], not {x.dtype}; convert with from_uint8")
        if x.shape[-2:] != (size, size):
            # Generators of other sizes are read at the evaluator's resolution; antialiasing keeps edges comparable.
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return x

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features [N, feature_dim] of images [N, 3, H, W] in [-1, 1] (the mini world's FID space)."""
        x = self._check(x)
        coords = self.coords.to(dtype=x.dtype).expand(x.shape[0], -1, -1, -1)
        h = self.trunk(torch.cat([x, coords], dim=1))
        return F.silu(self.embed(h.mean(dim=(2, 3))))

    def heads(self, feats: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Head outputs from features: style logits, character logits, raw attribute outputs [N, 15]."""
        return self.style_head(feats), self.character_head(feats), self.attribute_head(feats)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        feats = self.features(x)
        return (feats, *self.heads(feats))

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int = 256) -> dict[str, Tensor]:
        """Read images [N,3,H,W] in [-1,1]: style_logits [N,6], character_logits [N,5], attrs [N,13], features."""
        was_training = self.training
        self.eval()
        out: dict[str, list[Tensor]] = {"style_logits": [], "character_logits": [], "attrs": [], "features": []}
        device = next(self.parameters()).device
        for start in range(0, x.shape[0], batch_size):
            feats, style_logits, character_logits, raw = self(x[start:start + batch_size].to(device))
            out["features"].append(feats)
            out["style_logits"].append(style_logits)
            out["character_logits"].append(character_logits)
            out["attrs"].append(attributes_from_outputs(raw))
        self.train(was_training)
        return {key: torch.cat(values) if values else torch.empty(0) for key, values in out.items()}


def attributes_from_outputs(raw: Tensor) -> Tensor:
    """Attribute values [N, 13] in [0, 1] from the attribute head's outputs (circular ones via atan2)."""
    attrs = raw.new_empty(raw.shape[0], NUM_ATTRIBUTES)
    n_linear = len(LINEAR_ATTRIBUTES)
    attrs[:, _LINEAR_INDEX] = raw[:, :n_linear].clamp(0.0, 1.0)
    circle = raw[:, n_linear:].view(raw.shape[0], len(CIRCULAR_ATTRIBUTES), 2)
    angle = torch.atan2(circle[..., 1], circle[..., 0])
    attrs[:, _CIRCULAR_INDEX] = (angle / (2 * math.pi)).remainder(1.0)
    return attrs


def attribute_targets(attrs: Tensor) -> Tensor:
    """Regression targets [N, NUM_ATTRIBUTE_OUTPUTS] for stored attributes [N, 13]: linear values, then (cos, sin)."""
    angle = attrs[:, _CIRCULAR_INDEX] * (2 * math.pi)
    circle = torch.stack([angle.cos(), angle.sin()], dim=-1).flatten(1)
    return torch.cat([attrs[:, _LINEAR_INDEX], circle], dim=1)


def output_mask(attribute_mask: Tensor) -> Tensor:
    """Expand a per-attribute mask [N, 13] to the attribute head's outputs [N, NUM_ATTRIBUTE_OUTPUTS]."""
    circular = attribute_mask[:, _CIRCULAR_INDEX].repeat_interleave(2, dim=1)
    return torch.cat([attribute_mask[:, _LINEAR_INDEX], circular], dim=1)


# ------------------------------------------------------------------------------------------------------ saving, loading


def evaluator_state(model: Evaluator, training: dict[str, Any] | None = None) -> dict[str, Any]:
    """The shipped file's plain dict: fp16 weights (half the size, the budget is 4 MB), config and label names."""
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": asdict(model.config),
        "state_dict": {
            k: v.detach().to("cpu", torch.float16 if v.is_floating_point() else v.dtype).clone()
            for k, v in model.state_dict().items()
        },
        "attribute_names": list(ATTRIBUTE_NAMES),
        "circular_attributes": list(CIRCULAR_ATTRIBUTES),
        "styles": list(STYLES),
        "characters": list(CHARACTERS),
        "training": dict(training or {}),
    }


def save_evaluator(model: Evaluator, path: str | Path, training: dict[str, Any] | None = None) -> None:
    """Write the evaluator atomically as a weights_only-loadable dict."""
    atomic_torch_save(evaluator_state(model, training), Path(path))


def load_evaluator(path: str | Path | None = None, device: str | torch.device = "cpu") -> Evaluator:
    """Load an evaluator file (default: the shipped weights) in eval mode, fp32, on `device`."""
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        raise EvaluatorError(
            f"evaluator weights not found at {path}; train them with "
            f"`python -m replication.miniworld.evaluator train --out {path}`"
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable or unsafe pickle is the same user error: not an evaluator file
        raise EvaluatorError(f"{path} is not a readable evaluator file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT_NAME:
        raise EvaluatorError(f"{path} is not a {FORMAT_NAME} file (missing or wrong 'format' key)")
    if blob.get("format_version") != FORMAT_VERSION:
        raise EvaluatorError(f"{path} has format version {blob.get('format_version')}; this code reads {FORMAT_VERSION}"
                             ", retrain it")
    if tuple(blob.get("attribute_names", ())) != ATTRIBUTE_NAMES or tuple(blob.get("styles", ())) != STYLES \
            or tuple(blob.get("characters", ())) != CHARACTERS:
        raise EvaluatorError(f"{path} was trained on different attribute, style or character names; retrain it")
    model = Evaluator(EvaluatorConfig.from_dict(blob["config"]))
    state = {k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise EvaluatorError(f"{path} does not fit the evaluator architecture: {exc}") from exc
    return model.to(device).eval().requires_grad_(False)
