"""StyleGAN2 generator and discriminator in native PyTorch, with rosinality's module layout and state_dict key names."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from replication.config import ConfigError

__all__ = [
    "ConfigError",
    "NetworkInputError",
    "NOISE_MODES",
    "GeneratorConfig",
    "DiscriminatorConfig",
    "Generator",
    "Discriminator",
    "upfirdn2d",
    "blur2d",
    "upsample2d",
    "make_blur_kernel",
]

NOISE_MODES = ("random", "const", "given", "none")
_SQRT2 = math.sqrt(2.0)
_MIN_SIZE, _MAX_SIZE = 8, 1024


class NetworkInputError(ValueError):
    """A tensor or option passed to a network is malformed; the message says what was expected."""


# ----------------------------------------------------------------------------------------------------------------------
# Configs


def _default_channels(channel_multiplier: int) -> dict[int, int]:
    # StyleGAN2's table: 512 up to 32 px, then halving per octave scaled by the multiplier (2 = config-f).
    cm = channel_multiplier
    return {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm, 1024: 16 * cm}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _normalise_taps(name: str, taps: Any) -> tuple:
    try:
        return tuple(taps)
    except TypeError:
        raise ConfigError(
            f"{name}.blur_kernel must be a sequence of numbers such as (1, 3, 3, 1), got {taps!r}"
        ) from None


def _normalise_channels(name: str, channels: Any) -> tuple[tuple[int, int], ...] | None:
    if channels is None:
        return None
    items = channels.items() if isinstance(channels, Mapping) else channels
    pairs: dict[int, int] = {}
    try:
        for res, ch in items:
            res_i = int(res) if isinstance(res, str) and res.isdigit() else res
            if not (_is_int(res_i) and _is_int(ch)):
                raise TypeError
            if res_i in pairs:
                raise ConfigError(f"{name}.channels lists resolution {res_i} twice; give each resolution once")
            pairs[res_i] = ch
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(
            f"{name}.channels must be {{resolution: channels}} or [(resolution, channels), ...] of ints, "
            f"got {channels!r}"
        ) from None
    return tuple(sorted(pairs.items()))


def _validate_common(name: str, size: Any, channel_multiplier: Any, blur_kernel: Any,
                     channels: tuple[tuple[int, int], ...] | None) -> None:
    if not _is_int(size) or size < _MIN_SIZE or size > _MAX_SIZE or size & (size - 1):
        raise ConfigError(
            f"{name}.size must be a power of two in [{_MIN_SIZE}, {_MAX_SIZE}] (8, 16, ..., 1024), got {size!r}"
        )
    if not _is_int(channel_multiplier) or channel_multiplier < 1:
        raise ConfigError(f"{name}.channel_multiplier must be an int >= 1 (2 is config-f), got {channel_multiplier!r}")
    if (len(blur_kernel) == 0 or not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in blur_kernel)
            or not all(math.isfinite(t) for t in blur_kernel) or sum(blur_kernel) == 0):
        raise ConfigError(
            f"{name}.blur_kernel must be a non-empty sequence of finite numbers with a non-zero sum, "
            f"e.g. (1, 3, 3, 1); got {blur_kernel!r}"
        )
    if channels is not None:
        table = dict(channels)
        for res, ch in channels:
            if res < 4 or res & (res - 1) or ch < 1:
                raise ConfigError(
                    f"{name}.channels entry ({res}, {ch}) is invalid: resolutions are powers of two >= 4 and "
                    "channel counts are >= 1"
                )
        missing = [2 ** i for i in range(2, int(math.log2(size)) + 1) if 2 ** i not in table]
        if missing:
            raise ConfigError(f"{name}.channels has no entry for resolution(s) {missing}; list every power of two "
                              f"from 4 to size={size}")


def _channel_table(size: int, channel_multiplier: int, channels: tuple[tuple[int, int], ...] | None) -> dict[int, int]:
    table = dict(channels) if channels is not None else _default_channels(channel_multiplier)
    return {res: table[res] for res in sorted(table) if res <= size}


def _from_dict(cls: type, name: str, data: Mapping[str, Any]) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{name}.from_dict expects a dict, got {type(data).__name__}")
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{name}: unknown key(s) {unknown}; valid keys: {sorted(known)}")
    if "size" not in data:
        raise ConfigError(f"{name}: missing required key 'size'")
    values = dict(data)
    if "blur_kernel" in values and isinstance(values["blur_kernel"], list):
        values["blur_kernel"] = tuple(values["blur_kernel"])
    return cls(**values)


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of a StyleGAN2 generator; defaults are config-f (rosinality's Generator(size, 512, 8))."""

    size: int  # output resolution, a power of two in [8, 1024]
    style_dim: int = 512  # width of z and w
    n_mlp: int = 8  # mapping-network depth
    channel_multiplier: int = 2  # scales the channel table above 32 px (2 = config-f)
    lr_mlp: float = 0.01  # equalized-lr multiplier of the mapping network
    blur_kernel: tuple[int, ...] = (1, 3, 3, 1)  # 1-D taps of the separable resampling filter
    channels: tuple[tuple[int, int], ...] | None = None  # explicit ((resolution, channels), ...) table; wins over cm

    def __post_init__(self) -> None:
        # Accept lists/dicts from callers and JSON, but store hashable tuples so the config stays a frozen value.
        object.__setattr__(self, "blur_kernel", _normalise_taps("GeneratorConfig", self.blur_kernel))
        object.__setattr__(self, "channels", _normalise_channels("GeneratorConfig", self.channels))
        _validate_common("GeneratorConfig", self.size, self.channel_multiplier, self.blur_kernel, self.channels)
        if not _is_int(self.style_dim) or self.style_dim < 1:
            raise ConfigError(f"GeneratorConfig.style_dim must be an int >= 1, got {self.style_dim!r}")
        if not _is_int(self.n_mlp) or self.n_mlp < 0:
            raise ConfigError(f"GeneratorConfig.n_mlp must be an int >= 0, got {self.n_mlp!r}")
        if isinstance(self.lr_mlp, bool) or not isinstance(self.lr_mlp, (int, float)) or not (
                math.isfinite(self.lr_mlp) and self.lr_mlp > 0):
            raise ConfigError(f"GeneratorConfig.lr_mlp must be a finite number > 0, got {self.lr_mlp!r}")

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def n_latent(self) -> int:
        return 2 * self.log_size - 2

    def channel_table(self) -> dict[int, int]:
        """{resolution: channels} for every resolution 4..size the generator uses."""
        return _channel_table(self.size, self.channel_multiplier, self.channels)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (lists instead of tuples) that from_dict turns back into an equal config."""
        return {
            "size": self.size, "style_dim": self.style_dim, "n_mlp": self.n_mlp,
            "channel_multiplier": self.channel_multiplier, "lr_mlp": self.lr_mlp,
            "blur_kernel": list(self.blur_kernel),
            "channels": None if self.channels is None else [list(p) for p in self.channels],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GeneratorConfig:
        """Inverse of to_dict; also accepts channels as a {resolution: channels} dict (str or int keys)."""
        return _from_dict(cls, "GeneratorConfig", data)


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Architecture of a StyleGAN2 residual discriminator (rosinality's Discriminator(size, channel_multiplier))."""

    size: int  # input resolution, a power of two in [8, 1024]
    channel_multiplier: int = 2
    blur_kernel: tuple[int, ...] = (1, 3, 3, 1)
    channels: tuple[tuple[int, int], ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "blur_kernel", _normalise_taps("DiscriminatorConfig", self.blur_kernel))
        object.__setattr__(self, "channels", _normalise_channels("DiscriminatorConfig", self.channels))
        _validate_common("DiscriminatorConfig", self.size, self.channel_multiplier, self.blur_kernel, self.channels)

    def channel_table(self) -> dict[int, int]:
        """{resolution: channels} for every resolution 4..size the discriminator uses."""
        return _channel_table(self.size, self.channel_multiplier, self.channels)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict that from_dict turns back into an equal config."""
        return {
            "size": self.size, "channel_multiplier": self.channel_multiplier, "blur_kernel": list(self.blur_kernel),
            "channels": None if self.channels is None else [list(p) for p in self.channels],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DiscriminatorConfig:
        """Inverse of to_dict."""
        return _from_dict(cls, "DiscriminatorConfig", data)


# ----------------------------------------------------------------------------------------------------------------------
# Resampling ops


def make_blur_kernel(taps: Sequence[float], scale: float = 1.0) -> torch.Tensor:
    """2-D FIR kernel outer(taps, taps), normalised to sum 1, times scale (factor**2 to keep gain after upsampling)."""
    k = torch.tensor(taps, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    k = k / k.sum()
    return k * scale if scale != 1.0 else k


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Reference resampler (both axes): zero-stuff by up, pad (p0, p1), true-convolve, keep every down-th sample."""
    n, c, h, w = x.shape
    if up > 1:
        spread = x.new_zeros(n, c, h * up, w * up)
        spread[:, :, ::up, ::up] = x
        x = spread
    p0, p1 = pad
    x = F.pad(x, [p0, p1, p0, p1])  # negative entries crop
    kh, kw = kernel.shape
    weight = kernel.flip([0, 1]).to(x.dtype).reshape(1, 1, kh, kw)  # conv2d correlates; flip for a true convolution
    out = F.conv2d(x.reshape(n * c, 1, x.shape[2], x.shape[3]), weight)
    out = out.reshape(n, c, out.shape[2], out.shape[3])
    return out[:, :, ::down, ::down]


def blur2d(x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
    """Fast upfirdn2d(x, kernel, up=1, down=1, pad) as one depthwise conv2d."""
    c = x.shape[1]
    kh, kw = kernel.shape
    # A dense (repeated, not expanded) weight is ~20% faster in oneDNN's depthwise kernel on CPU.
    weight = kernel.flip([0, 1]).to(x.dtype).reshape(1, 1, kh, kw).repeat(c, 1, 1, 1)
    p0, p1 = pad
    if p0 == p1 and p0 >= 0:
        return F.conv2d(x, weight, padding=p0, groups=c)
    return F.conv2d(F.pad(x, [p0, p1, p0, p1]), weight, groups=c)


def upsample2d(x: torch.Tensor, kernel: torch.Tensor, factor: int, pad: tuple[int, int]) -> torch.Tensor:
    """Fast upfirdn2d(x, kernel, up=factor, down=1, pad) as one depthwise strided conv_transpose2d."""
    c = x.shape[1]
    kh, kw = kernel.shape
    # A stride-`factor` transposed conv is the full true convolution of the zero-stuffed signal; upfirdn's output is
    # that signal shifted by (k - 1 - p0) at the start and cut (k - factor - p1) short at the end.
    weight = kernel.to(x.dtype).reshape(1, 1, kh, kw).repeat(c, 1, 1, 1)
    p0, p1 = pad
    cy0, cy1, cx0, cx1 = kh - 1 - p0, kh - factor - p1, kw - 1 - p0, kw - factor - p1
    if cy0 == cy1 and cx0 == cx1 and cy0 >= 0 and cx0 >= 0:
        return F.conv_transpose2d(x, weight, stride=factor, padding=(cy0, cx0), groups=c)
    out = F.conv_transpose2d(x, weight, stride=factor, groups=c)
    return F.pad(out, [-cx0, -cx1, -cy0, -cy1])


# ----------------------------------------------------------------------------------------------------------------------
# Layers (names and parameter layout follow rosinality/stylegan2-pytorch so its checkpoints load strictly)


class PixelNorm(nn.Module):
    """Normalise each latent vector to unit root-mean-square over channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x ** 2, dim=1, keepdim=True) + 1e-8)


class Blur(nn.Module):
    """FIR blur with fixed padding; the kernel is a buffer so checkpoints carry it."""

    def __init__(self, taps: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        self.register_buffer("kernel", make_blur_kernel(taps, upsample_factor ** 2))
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return blur2d(x, self.kernel, self.pad)


class Upsample(nn.Module):
    """x`factor` upsampling by zero insertion and FIR filtering (the ToRGB skip path)."""

    def __init__(self, taps: Sequence[float], factor: int = 2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_blur_kernel(taps, factor ** 2))
        p = len(taps) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample2d(x, self.kernel, self.factor, self.pad)


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate (runtime weight scale) and optional fused bias + leaky ReLU."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: str | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.activation = activation
        self.scale = (1 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias * self.lr_mul if self.bias is not None else None
        if self.activation:
            out = F.linear(x, self.weight * self.scale)
            return fused_leaky_relu(out, bias)
        return F.linear(x, self.weight * self.scale, bias=bias)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, lr_mul={self.lr_mul}, activation={self.activation}"


class EqualConv2d(nn.Module):
    """Conv2d with equalized learning rate."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
        self.stride = stride
        self.padding = padding
        self.bias = nn.Parameter(torch.zeros(out_channel)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, bias=self.bias, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"{i}, {o}, {k}, stride={self.stride}, padding={self.padding}"


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor | None = None, negative_slope: float = 0.2,
                     scale: float = _SQRT2) -> torch.Tensor:
    """leaky_relu(x + bias, 0.2) * sqrt(2), bias broadcast over dim 1 (StyleGAN2's gain-preserving activation)."""
    if bias is not None:
        x = x + bias.view(1, bias.shape[0], *([1] * (x.ndim - 2)))
    return F.leaky_relu(x, negative_slope=negative_slope) * scale


class FusedLeakyReLU(nn.Module):
    """Per-channel bias followed by the scaled leaky ReLU."""

    def __init__(self, channel: int, bias: bool = True):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias)


class ModulatedConv2d(nn.Module):
    """Style-modulated (and optionally demodulated) conv, run as one grouped conv over the batch."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int, demodulate: bool = True,
                 upsample: bool = False, blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.in_channel = in_channel
        self.out_channel = out_channel
        self.kernel_size = kernel_size
        self.upsample = upsample
        self.demodulate = demodulate
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)

    def extra_repr(self) -> str:
        return (f"{self.in_channel}, {self.out_channel}, {self.kernel_size}, upsample={self.upsample}, "
                f"demodulate={self.demodulate}")

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        batch, in_channel, height, width = x.shape
        k, out_channel = self.kernel_size, self.out_channel
        style = self.modulation(style).view(batch, 1, in_channel, 1, 1)
        weight = self.scale * self.weight * style
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)
            weight = weight * demod.view(batch, out_channel, 1, 1, 1)
        x = x.reshape(1, batch * in_channel, height, width)
        if self.upsample:
            # conv_transpose2d wants [in, out/groups, k, k] per group, so swap the channel axes of each sample's kernel.
            weight = weight.transpose(1, 2).reshape(batch * in_channel, out_channel, k, k)
            out = F.conv_transpose2d(x, weight, padding=0, stride=2, groups=batch)
            out = out.view(batch, out_channel, out.shape[2], out.shape[3])
            return self.blur(out)
        weight = weight.view(batch * out_channel, in_channel, k, k)
        out = F.conv2d(x, weight, padding=self.padding, groups=batch)
        return out.view(batch, out_channel, out.shape[2], out.shape[3])


class NoiseInjection(nn.Module):
    """Adds a learned scalar times a [B|1, 1, H, W] noise map; no noise (None) leaves the input unchanged."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            return x
        return x + self.weight * noise


class ConstantInput(nn.Module):
    """The learned 4x4 constant the synthesis network starts from."""

    def __init__(self, channel: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.input.repeat(latent.shape[0], 1, 1, 1)


class StyledConv(nn.Module):
    """Modulated conv -> noise -> bias + scaled leaky ReLU. Unlike rosinality, noise=None means no noise, not random."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int, upsample: bool = False,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1), demodulate: bool = True):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim, demodulate=demodulate,
                                    upsample=upsample, blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, style), noise=noise))


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB plus bias, added to the upsampled RGB skip from the previous resolution."""

    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        if upsample:  # registered before conv so the state_dict key order matches rosinality's
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


# ----------------------------------------------------------------------------------------------------------------------
# Generator


def _as_style_list(styles: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(styles, torch.Tensor):
        return [styles]
    styles = list(styles)
    if not 1 <= len(styles) <= 2 or not all(isinstance(s, torch.Tensor) for s in styles):
        raise NetworkInputError(
            f"styles must be a tensor or a list of one or two tensors (two = style mixing), got {len(styles)} item(s)"
        )
    return styles


def _draw_normal(shape: Sequence[int], like: torch.Tensor, rng: torch.Generator | None) -> torch.Tensor:
    if rng is None:
        return torch.randn(*shape, device=like.device, dtype=like.dtype)
    # Draw on the generator's own device (torch requires it) and move, so a CPU rng reproduces on any device.
    return torch.randn(*shape, generator=rng, device=rng.device, dtype=like.dtype).to(like.device)


class Generator(nn.Module):
    """StyleGAN2 generator (config-f by default): mapping `style`, synthesis from a constant, skip-connected ToRGBs.

    Children, in order: style, input, conv1, to_rgb1, convs, upsamples (empty), to_rgbs, noises; NADA's layer
    freezing indexes them by position. W+ index i feeds conv1 (0), to_rgb1 (1), convs[j] (j+1), to_rgbs[m] (2m+3).
    """

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        if not isinstance(cfg, GeneratorConfig):
            raise ConfigError(f"Generator expects a GeneratorConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.size = cfg.size
        self.style_dim = cfg.style_dim
        self.log_size = cfg.log_size
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.n_latent = cfg.n_latent
        self.channels = cfg.channel_table()
        bk = cfg.blur_kernel

        self.style = nn.Sequential(PixelNorm(), *[
            EqualLinear(cfg.style_dim, cfg.style_dim, lr_mul=cfg.lr_mlp, activation="fused_lrelu")
            for _ in range(cfg.n_mlp)
        ])
        ch4 = self.channels[4]
        self.input = ConstantInput(ch4)
        self.conv1 = StyledConv(ch4, ch4, 3, cfg.style_dim, blur_kernel=bk)
        self.to_rgb1 = ToRGB(ch4, cfg.style_dim, upsample=False)
        self.convs = nn.ModuleList()
        self.upsamples = nn.ModuleList()  # always empty; kept because NADA indexes children() by position
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for layer_idx in range(self.num_layers):
            res = 2 ** ((layer_idx + 5) // 2)
            self.noises.register_buffer(f"noise_{layer_idx}", torch.randn(1, 1, res, res))
        in_channel = ch4
        for i in range(3, self.log_size + 1):
            out_channel = self.channels[2 ** i]
            self.convs.append(StyledConv(in_channel, out_channel, 3, cfg.style_dim, upsample=True, blur_kernel=bk))
            self.convs.append(StyledConv(out_channel, out_channel, 3, cfg.style_dim, blur_kernel=bk))
            self.to_rgbs.append(ToRGB(out_channel, cfg.style_dim, blur_kernel=bk))
            in_channel = out_channel

    # -- latents -----------------------------------------------------------------------------------------------------

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, style_dim] -> w [B, style_dim] through PixelNorm and the n_mlp equalized-lr MLP."""
        if z.ndim != 2 or z.shape[1] != self.style_dim:
            raise NetworkInputError(f"mapping expects z of shape [B, {self.style_dim}], got {list(z.shape)}")
        return self.style(z)

    @torch.no_grad()
    def mean_latent(self, n: int = 4096, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean of the mapping output over n N(0, 1) draws of z, shape [1, style_dim]; the truncation centre."""
        if not _is_int(n) or n < 1:
            raise NetworkInputError(f"mean_latent needs n >= 1 samples, got {n!r}")
        like = self.input.input
        z = _draw_normal((n, self.style_dim), like, generator)
        return self.style(z).mean(0, keepdim=True)

    def draw_inject_index(self, rng: torch.Generator | None = None) -> int:
        """A style-mixing crossover index drawn uniformly from [1, n_latent - 1]; pass it to every generator call."""
        device = rng.device if rng is not None else torch.device("cpu")
        return int(torch.randint(1, self.n_latent, (), generator=rng, device=device).item())

    def _broadcast_wplus(self, w: torch.Tensor) -> torch.Tensor:
        if w.ndim == 2 and w.shape[1] == self.style_dim:
            return w.unsqueeze(1).repeat(1, self.n_latent, 1)
        if w.ndim == 3 and w.shape[1:] == (self.n_latent, self.style_dim):
            return w
        raise NetworkInputError(
            f"a latent must be w [B, {self.style_dim}] or W+ [B, {self.n_latent}, {self.style_dim}], "
            f"got {list(w.shape)}"
        )

    def _truncate(self, style: torch.Tensor, psi: float, avg: torch.Tensor, cutoff: int | None) -> torch.Tensor:
        """avg + psi (style - avg) on every W+ layer, or on layers < cutoff only (the others left as they are)."""
        if cutoff is None:
            return avg + psi * (style - avg)
        wplus = self._broadcast_wplus(style)
        layer = torch.arange(self.n_latent, device=wplus.device).reshape(1, -1, 1)
        return torch.where(layer < cutoff, avg + psi * (wplus - avg), wplus)

    def make_wplus(self, styles: torch.Tensor | Sequence[torch.Tensor], *, input_is_latent: bool = False,
                   truncation: float = 1.0, truncation_latent: torch.Tensor | None = None,
                   inject_index: int | None = None, rng: torch.Generator | None = None,
                   truncation_cutoff: int | None = None) -> torch.Tensor:
        """z or w style(s) -> W+ [B, n_latent, style_dim]: map, truncate, broadcast, and cross over two styles.

        truncation_cutoff: NVIDIA's semantics: only W+ layers with index < cutoff are truncated (None: all layers).
        """
        styles = _as_style_list(styles)
        if not input_is_latent:
            styles = [self.mapping(s) for s in styles]
        if truncation_cutoff is not None and (not _is_int(truncation_cutoff) or truncation_cutoff < 0):
            raise NetworkInputError(f"truncation_cutoff must be None or an int >= 0, got {truncation_cutoff!r}")
        if truncation != 1.0:
            if truncation_latent is None:
                raise NetworkInputError("truncation != 1 needs truncation_latent (e.g. G.mean_latent())")
            styles = [self._truncate(s, truncation, truncation_latent, truncation_cutoff) for s in styles]
        if len(styles) == 1:
            return self._broadcast_wplus(styles[0])
        first, second = (self._broadcast_wplus(s) for s in styles)
        if first.shape[0] != second.shape[0]:
            raise NetworkInputError(f"the two mixed styles have batch sizes {first.shape[0]} and {second.shape[0]}")
        if inject_index is None:
            inject_index = self.draw_inject_index(rng)
        if not _is_int(inject_index) or not 0 <= inject_index <= self.n_latent:
            raise NetworkInputError(f"inject_index must be an int in [0, {self.n_latent}], got {inject_index!r}")
        return torch.cat([first[:, :inject_index], second[:, inject_index:]], dim=1)

    # -- noise -------------------------------------------------------------------------------------------------------

    def make_noise(self, batch: int = 1, rng: torch.Generator | None = None) -> list[torch.Tensor]:
        """Fresh N(0, 1) noise maps [batch, 1, H, W], one per StyledConv, for noise_mode="given"."""
        like = self.input.input
        return [_draw_normal((batch, *getattr(self.noises, f"noise_{i}").shape[1:]), like, rng)
                for i in range(self.num_layers)]

    def _layer_noise(self, noise_mode: str, noise: Sequence[torch.Tensor | None] | None, batch: int,
                     like: torch.Tensor, rng: torch.Generator | None) -> list[torch.Tensor | None]:
        buffers = [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        if noise_mode == "none":
            return [None] * self.num_layers
        if noise_mode == "const":
            return buffers
        if noise_mode == "random":
            return [_draw_normal((batch, 1, *b.shape[2:]), like, rng) for b in buffers]
        if noise is None or isinstance(noise, torch.Tensor) or len(noise) != self.num_layers:
            raise NetworkInputError(
                f'noise_mode="given" needs noise as a list of {self.num_layers} tensors [B|1, 1, H, W] '
                "(see Generator.make_noise)"
            )
        out: list[torch.Tensor | None] = []
        for i, (given, buf) in enumerate(zip(noise, buffers)):
            if given is None:  # rosinality's convention: a missing entry is fresh random noise
                out.append(_draw_normal((batch, 1, *buf.shape[2:]), like, rng))
                continue
            if given.ndim != 4 or given.shape[1] != 1 or given.shape[2:] != buf.shape[2:] \
                    or given.shape[0] not in (1, batch):
                raise NetworkInputError(f"noise[{i}] must have shape [{batch} or 1, 1, {buf.shape[2]}, {buf.shape[3]}],"
                                        f" got {list(given.shape)}")
            out.append(given)
        return out

    # -- synthesis ---------------------------------------------------------------------------------------------------

    def synthesis(self, wplus: torch.Tensor, *, noise_mode: str = "random",
                  noise: Sequence[torch.Tensor | None] | None = None,
                  rng: torch.Generator | None = None) -> torch.Tensor:
        """W+ [B, n_latent, style_dim] -> image [B, 3, size, size] (unbounded, about [-1, 1]).

        noise_mode: "random" (fresh N(0,1) per call and layer, from rng if given), "const" (the stored buffers),
        "given" (`noise`, a list of num_layers tensors), "none" (no noise).
        """
        if noise_mode not in NOISE_MODES:
            raise NetworkInputError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if wplus.ndim != 3 or wplus.shape[1:] != (self.n_latent, self.style_dim):
            raise NetworkInputError(
                f"synthesis expects W+ of shape [B, {self.n_latent}, {self.style_dim}], got {list(wplus.shape)}"
            )
        noises = self._layer_noise(noise_mode, noise, wplus.shape[0], wplus, rng)
        x = self.input(wplus)
        x = self.conv1(x, wplus[:, 0], noise=noises[0])
        skip = self.to_rgb1(x, wplus[:, 1])
        for j, to_rgb in enumerate(self.to_rgbs):
            i = 2 * j + 1
            x = self.convs[2 * j](x, wplus[:, i], noise=noises[i])
            x = self.convs[2 * j + 1](x, wplus[:, i + 1], noise=noises[i + 1])
            skip = to_rgb(x, wplus[:, i + 2], skip)
        return skip

    def forward(self, styles: torch.Tensor | Sequence[torch.Tensor], *, input_is_latent: bool = False,
                noise_mode: str = "random", noise: Sequence[torch.Tensor | None] | None = None,
                truncation: float = 1.0, truncation_latent: torch.Tensor | None = None,
                inject_index: int | None = None, return_latents: bool = False,
                rng: torch.Generator | None = None, randomize_noise: bool | None = None,
                truncation_cutoff: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """make_wplus then synthesis; returns (image, W+ if return_latents else None), like rosinality's Generator.

        `randomize_noise` is rosinality's spelling (True -> "random", False -> "const"); passing a `noise` list
        implies noise_mode="given", as in rosinality.
        """
        if randomize_noise is not None:
            noise_mode = "random" if randomize_noise else "const"
        if noise is not None:
            if noise_mode not in ("random", "given"):
                raise NetworkInputError(f'a noise list was passed with noise_mode="{noise_mode}"; use "given"')
            noise_mode = "given"
        wplus = self.make_wplus(styles, input_is_latent=input_is_latent, truncation=truncation,
                                truncation_latent=truncation_latent, inject_index=inject_index, rng=rng,
                                truncation_cutoff=truncation_cutoff)
        image = self.synthesis(wplus, noise_mode=noise_mode, noise=noise, rng=rng)
        return image, (wplus if return_latents else None)


# ----------------------------------------------------------------------------------------------------------------------
# Discriminator


class ConvLayer(nn.Sequential):
    """[Blur] -> EqualConv2d (stride 2 when downsampling) -> [bias + scaled leaky ReLU], as rosinality's ConvLayer."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, downsample: bool = False,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1), bias: bool = True, activate: bool = True):
        layers: list[nn.Module] = []
        if downsample:
            factor = 2
            p = (len(blur_kernel) - factor) + (kernel_size - 1)
            layers.append(Blur(blur_kernel, pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_channel, out_channel, kernel_size, padding=padding, stride=stride,
                                  bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_channel, bias=bias))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Two 3x3 convs (the second downsamples) plus a 1x1 downsampling skip, summed and scaled by 1/sqrt(2)."""

    def __init__(self, in_channel: int, out_channel: int, blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.conv1 = ConvLayer(in_channel, in_channel, 3, blur_kernel=blur_kernel)
        self.conv2 = ConvLayer(in_channel, out_channel, 3, downsample=True, blur_kernel=blur_kernel)
        self.skip = ConvLayer(in_channel, out_channel, 1, downsample=True, activate=False, bias=False,
                              blur_kernel=blur_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / _SQRT2


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator: 1x1 fromRGB, ResBlocks down to 4x4, minibatch stddev, conv, two linears."""

    def __init__(self, cfg: DiscriminatorConfig):
        super().__init__()
        if not isinstance(cfg, DiscriminatorConfig):
            raise ConfigError(f"Discriminator expects a DiscriminatorConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.size = cfg.size
        channels = cfg.channel_table()
        bk = cfg.blur_kernel
        convs: list[nn.Module] = [ConvLayer(3, channels[cfg.size], 1)]
        in_channel = channels[cfg.size]
        for i in range(int(math.log2(cfg.size)), 2, -1):
            out_channel = channels[2 ** (i - 1)]
            convs.append(ResBlock(in_channel, out_channel, bk))
            in_channel = out_channel
        self.convs = nn.Sequential(*convs)
        self.stddev_group = 4
        self.stddev_feat = 1
        self.final_conv = ConvLayer(in_channel + 1, channels[4], 3)
        self.final_linear = nn.Sequential(
            EqualLinear(channels[4] * 4 * 4, channels[4], activation="fused_lrelu"),
            EqualLinear(channels[4], 1),
        )

    def minibatch_stddev(self, x: torch.Tensor) -> torch.Tensor:
        """Append one channel: the mean std over groups of samples (sample b is grouped with b +- batch/group)."""
        batch, channel, height, width = x.shape
        # rosinality needs batch % min(batch, 4) == 0; the largest divisor <= 4 gives the same result there and
        # also handles e.g. a final odd-sized batch.
        group = next(g for g in range(min(batch, self.stddev_group), 0, -1) if batch % g == 0)
        feat = self.stddev_feat
        y = x.view(group, -1, feat, channel // feat, height, width)
        y = torch.sqrt(y.var(0, unbiased=False) + 1e-8)
        y = y.mean([2, 3, 4], keepdim=True).squeeze(2)
        y = y.repeat(group, 1, height, width)
        return torch.cat([x, y], 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image [B, 3, size, size] -> realness logits [B, 1]."""
        if image.ndim != 4 or image.shape[1:] != (3, self.size, self.size):
            raise NetworkInputError(
                f"Discriminator expects images of shape [B, 3, {self.size}, {self.size}], got {list(image.shape)}"
            )
        out = self.minibatch_stddev(self.convs(image))
        out = self.final_conv(out)
        return self.final_linear(out.view(out.shape[0], -1))
