"""Shared pieces of the weight readers: format names, errors, and the every-variable-consumed bookkeeping."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch

from replication.networks import DiscriminatorConfig, GeneratorConfig, make_blur_kernel

FORMAT_TF = "tf-stylegan2"
FORMAT_ADA = "ada-pytorch"
FORMAT_ROSINALITY = "rosinality"
FORMAT_TF_ARRAYS = "tf-arrays"  # a TF pickle exported as plain arrays by NVIDIA's code (CONVERTER=tf)
_DEFAULT_BLUR = (1, 3, 3, 1)


class ConversionError(ValueError):
    """A source file cannot be converted faithfully; the message names what is wrong in one line."""


class DiscriminatorConversionError(ConversionError):
    """Only the (optional) discriminator could not be converted; the generator may still be converted without it."""


@dataclass
class ConvertedNetworks:
    """What a reader got out of a source file, in our checkpoint's layout (rosinality state-dict keys)."""

    generator_config: GeneratorConfig
    g_ema: dict[str, torch.Tensor]
    latent_avg: torch.Tensor | None
    g: dict[str, torch.Tensor] | None = None
    discriminator_config: DiscriminatorConfig | None = None
    d: dict[str, torch.Tensor] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class SourceArrays:
    """Named source arrays; ``take`` marks a name consumed, missing names are collected, not raised one by one.

    Every source variable must be consumed and every target key filled with the right shape (see :func:`finish`),
    otherwise the conversion fails listing the unconsumed / missing names, and nothing is written.
    """

    def __init__(self, arrays: Mapping[str, Any], what: str):
        self.arrays = OrderedDict((k, v) for k, v in arrays.items())
        self.what = what
        self.used: set[str] = set()
        self.missing: list[str] = []

    def has(self, name: str) -> bool:
        return name in self.arrays

    def take(self, name: str) -> torch.Tensor | None:
        if name not in self.arrays:
            self.missing.append(name)
            return None
        self.used.add(name)
        value = self.arrays[name]
        if isinstance(value, torch.Tensor):
            return value.detach().to("cpu", torch.float32).clone()
        return torch.from_numpy(np.array(value, dtype=np.float32, copy=True))

    def unconsumed(self) -> list[str]:
        return [k for k in self.arrays if k not in self.used]


def finish(src: SourceArrays, target: dict[str, torch.Tensor | None], expected: Mapping[str, tuple[int, ...]],
           what: str) -> dict[str, torch.Tensor]:
    """The filled target state dict in ``expected``'s order, or ConversionError listing every coverage problem."""
    problems = []
    if src.missing:
        problems.append(f"source lacks {_names(src.missing)}")
    unconsumed = src.unconsumed()
    if unconsumed:
        problems.append(f"unconsumed source variables {_names(unconsumed)}")
    unfilled = [k for k in expected if target.get(k) is None]
    if unfilled:
        problems.append(f"target keys not filled {_names(unfilled)}")
    extra = [k for k in target if k not in expected]
    if extra:
        problems.append(f"target keys unknown to the architecture {_names(extra)}")
    wrong = [f"{k} {tuple(v.shape)}!={expected[k]}" for k, v in target.items()
             if v is not None and k in expected and tuple(v.shape) != expected[k]]
    if wrong:
        problems.append(f"wrong shapes {_names(wrong)}")
    if problems:
        raise ConversionError(f"{what}: " + "; ".join(problems))
    return {k: target[k].contiguous() for k in expected}  # type: ignore[union-attr]


def _names(items: list[str], limit: int = 8) -> str:
    return "[" + ", ".join(items[:limit]) + (", ..." if len(items) > limit else "") + f"] ({len(items)})"


def check_filter(value: torch.Tensor | None, name: str, problems: list[str]) -> None:
    # Resampling filters are constants of the architecture; a different one would need a different network.
    if value is None:
        return
    expected = make_blur_kernel(_DEFAULT_BLUR)
    if tuple(value.shape) != tuple(expected.shape) or not torch.allclose(value, expected, atol=1e-7):
        problems.append(f"{name} is not the [1,3,3,1] filter")


def kernel_buffers(target: dict[str, Any], expected: Mapping[str, tuple[int, ...]], blur: tuple[int, ...],
                   upsample_scale: float) -> None:
    for key in expected:
        if key.endswith(".kernel"):
            target[key] = make_blur_kernel(blur, upsample_scale)


def make_config(cls: type, what: str, **kwargs: Any) -> Any:
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ConversionError(f"{what}: the weights describe an unsupported architecture ({exc})") from None


def check_resolution(cfg: GeneratorConfig, expected: int | None, name: str) -> None:
    if expected is not None and cfg.size != int(expected):
        raise ConversionError(f"{name} holds a {cfg.size}px generator but {expected}px was expected; check the "
                              f"file or the registry entry's resolution")


def discriminator_or_raise(func: Callable[[Any, str], Any], net: Any, what: str) -> Any:
    try:
        return func(net, what)
    except ConversionError as exc:
        raise DiscriminatorConversionError(f"{exc} (pass --no-discriminator to convert the generator alone)") \
            from None
