"""Convert NVIDIA StyleGAN2 weights (TF pickles, stylegan2-ada-pytorch pickles) and rosinality .pt files to our checkpoint.

No TensorFlow and no foreign code: pickles are read with :mod:`replication.safe_unpickle`, which turns NVIDIA's network
objects into inert records of their variables. Every source variable must be consumed and every target key filled with
the right shape, otherwise :class:`ConversionError` lists the unconsumed / missing names and nothing is written.

Name and layout facts (TF -> rosinality, as in rosinality's convert_weight.py and NVIDIA's legacy.py):
mapping ``Dense{i}`` -> ``style.{i+1}`` (transposed); ``4x4/Const`` -> ``input.input``; ``4x4/Conv`` -> ``conv1``;
``{r}x{r}/Conv0_up`` / ``Conv1`` -> ``convs.{2k}`` / ``convs.{2k+1}``; ``ToRGB`` -> ``to_rgb1`` / ``to_rgbs.{k}``;
kernels (kh, kw, in, out) -> (1, out, in, kh, kw); TF stores the modulation bias minus 1; TF's up-sampling conv
correlates with the kernel after zero-insertion while rosinality's transposed conv convolves, so ``Conv0_up``
kernels are spatially flipped; ``noise{i}`` -> ``noises.noise_{i}``; ``dlatent_avg`` -> ``latent_avg``.
stylegan2-ada-pytorch -> rosinality: ``mapping.fc{i}`` -> ``style.{i+1}``; ``synthesis.b{r}.{conv0,conv1,torgb}``;
weights [out, in, k, k] -> [1, out, in, k, k]; affine bias stored with its +1 already; its up-sampling conv is a
transposed conv of the unflipped kernel (flip_weight=False), i.e. the same orientation as rosinality.

Cross-check against the original TF graph (needs the legacy TF 1.15 environment, see
``replication/legacy_tf_crosscheck.py``): render with TF there, then here::

    python -m replication.convert --compare-npz tf_render.npz converted.pt

CLI::

    python -m replication.convert SRC DST [--format auto|tf-stylegan2|ada-pytorch|rosinality] [--resolution N]
    python -m replication.convert --all [--require-all] [--out-dir DIR]      # what `make convert` runs
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from replication.checkpoint import (
    FORMAT_NAME,
    CheckpointError,
    checkpoint_from_object,
    expected_discriminator_shapes,
    expected_generator_shapes,
    make_provenance,
    read_torch_file,
    save_checkpoint,
)
from replication.networks import DiscriminatorConfig, GeneratorConfig, make_blur_kernel
from replication.safe_unpickle import (
    PersistentObjectState,
    TFNetworkState,
    TorchModuleState,
    UnsafePickleError,
    safe_load,
)
from replication.weights import WeightError

CONVERTER_VERSION = "1.0.0"
FORMAT_TF = "tf-stylegan2"
FORMAT_ADA = "ada-pytorch"
FORMAT_ROSINALITY = "rosinality"
CLI_FORMATS = ("auto", FORMAT_TF, FORMAT_ADA, FORMAT_ROSINALITY)
# Registry spellings of the same formats.
_REGISTRY_FORMATS = {"tf-stylegan2": FORMAT_TF, "stylegan2-ada-pytorch": FORMAT_ADA, "rosinality": FORMAT_ROSINALITY,
                     FORMAT_NAME: FORMAT_ROSINALITY}
_DEFAULT_BLUR = (1, 3, 3, 1)
REPO_ROOT = Path(__file__).resolve().parent.parent


class ConversionError(ValueError):
    """A source file cannot be converted faithfully; the message names what is wrong in one line."""


class DiscriminatorConversionError(ConversionError):
    """Only the (optional) discriminator could not be converted; the generator may still be converted without it."""


# ---------------------------------------------------------------------------------------------------------------------
# Reading sources.


def _is_torch_zip(path: Path) -> bool:
    return zipfile.is_zipfile(path)


def _load_source(path: Path) -> tuple[str, Any]:
    """(format, loaded object) of a source file; foreign pickles go through the restricted reader only."""
    if not path.exists():
        raise ConversionError(f"source not found: {path}")
    if not path.is_file():
        raise ConversionError(f"source is not a file: {path}")
    if _is_torch_zip(path):
        return FORMAT_ROSINALITY, _read_torch(path)
    try:
        obj = safe_load(path)
    except UnsafePickleError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure of an untrusted file becomes one clear line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"{path.name}: not a readable pickle or torch file ({first[:200]})") from None
    if isinstance(obj, int):  # torch's legacy (pre-1.6, non-zip) serialization starts with a magic-number pickle
        return FORMAT_ROSINALITY, _read_torch(path)
    if isinstance(obj, tuple) and len(obj) == 3 and all(isinstance(n, TFNetworkState) for n in obj):
        return FORMAT_TF, obj
    if isinstance(obj, dict) and any(isinstance(obj.get(k), PersistentObjectState) for k in ("G_ema", "G")):
        return FORMAT_ADA, obj
    what = type(obj).__name__ if not isinstance(obj, dict) else f"dict with keys {sorted(map(str, obj))[:8]}"
    raise ConversionError(f"{path.name}: unknown format ({what}); expected a TF pickle (G, D, Gs), an "
                          f"stylegan2-ada-pytorch pickle (dict with G_ema) or a rosinality .pt")


def _read_torch(path: Path) -> Any:
    try:
        return read_torch_file(path)
    except CheckpointError as exc:
        raise ConversionError(str(exc)) from None


def detect_format(path: str | os.PathLike) -> str:
    """'tf-stylegan2', 'ada-pytorch' or 'rosinality' (rosinality also covers our own checkpoint format)."""
    return _load_source(Path(path))[0]


# ---------------------------------------------------------------------------------------------------------------------
# Bookkeeping: every source variable consumed, every target key filled.


class _Source:
    """Named source arrays; ``take`` marks a name consumed, missing names are collected, not raised one by one."""

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


def _finish(src: _Source, target: dict[str, torch.Tensor | None], expected: Mapping[str, tuple[int, ...]],
            what: str) -> dict[str, torch.Tensor]:
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


def _check_filter(value: torch.Tensor | None, name: str, problems: list[str]) -> None:
    # Resampling filters are constants of the architecture; a different one would need a different network.
    if value is None:
        return
    expected = make_blur_kernel(_DEFAULT_BLUR)
    if tuple(value.shape) != tuple(expected.shape) or not torch.allclose(value, expected, atol=1e-7):
        problems.append(f"{name} is not the [1,3,3,1] filter")


def _kernel_buffers(target: dict[str, Any], expected: Mapping[str, tuple[int, ...]], blur: tuple[int, ...],
                    upsample_scale: float) -> None:
    for key in expected:
        if key.endswith(".kernel"):
            target[key] = make_blur_kernel(blur, upsample_scale)


# ---------------------------------------------------------------------------------------------------------------------
# TF StyleGAN2 / StyleGAN2-ADA pickles.


def _oihw_from_tf(kernel: torch.Tensor) -> torch.Tensor:
    return kernel.permute(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)


def _tf_generator(net: TFNetworkState, what: str) -> tuple[GeneratorConfig, dict[str, torch.Tensor], torch.Tensor,
                                                           dict[str, Any]]:
    if net.version < 4:
        raise ConversionError(f"{what}: TF network pickle version {net.version} is too old (need 4)")
    kwargs = net.static_kwargs
    _check_tf_kwargs(kwargs, what)
    src = _Source(net.all_variables(), what)
    n_mlp = 0
    while src.has(f"mapping/Dense{n_mlp}/weight"):
        n_mlp += 1
    resolutions = sorted(int(m.group(1)) for k in src.arrays
                         for m in [re.fullmatch(r"synthesis/(\d+)x\1/ToRGB/weight", k)] if m)
    if n_mlp == 0 or not resolutions or resolutions[0] != 4:
        raise ConversionError(f"{what}: not a StyleGAN2 (config E/F, skip) generator: no mapping/Dense0 or "
                              f"synthesis/4x4/ToRGB variables")
    size = resolutions[-1]
    if kwargs.get("resolution") not in (None, size):
        raise ConversionError(f"{what}: static resolution {kwargs.get('resolution')} but variables go up to {size}")
    style_dim = int(np.shape(src.arrays["mapping/Dense0/weight"])[0])
    channels = [(4, int(np.shape(src.arrays["synthesis/4x4/Const/const"])[1]))] \
        if src.has("synthesis/4x4/Const/const") else []
    for res in resolutions[1:]:
        name = f"synthesis/{res}x{res}/Conv0_up/weight"
        if src.has(name):
            channels.append((res, int(np.shape(src.arrays[name])[3])))
    cfg = _make_config(GeneratorConfig, what, size=size, style_dim=style_dim, n_mlp=n_mlp,
                       lr_mlp=float(kwargs.get("mapping_lrmul", 0.01)), channels=tuple(channels))
    expected = expected_generator_shapes(cfg)
    target: dict[str, Any] = {}

    for i in range(n_mlp):
        weight = src.take(f"mapping/Dense{i}/weight")
        target[f"style.{i + 1}.weight"] = None if weight is None else weight.t()
        target[f"style.{i + 1}.bias"] = src.take(f"mapping/Dense{i}/bias")
    const = src.take("synthesis/4x4/Const/const")
    target["input.input"] = const

    def modconv(prefix: str, dst: str, flip: bool) -> None:
        weight = src.take(f"{prefix}/weight")
        if weight is not None:
            weight = _oihw_from_tf(weight)
            # TF's Conv0_up correlates after zero-insertion; rosinality's transposed conv convolves: flip the taps.
            weight = weight.flip([2, 3]) if flip else weight
            target[f"{dst}.conv.weight"] = weight.unsqueeze(0)
        mod_w, mod_b = src.take(f"{prefix}/mod_weight"), src.take(f"{prefix}/mod_bias")
        target[f"{dst}.conv.modulation.weight"] = None if mod_w is None else mod_w.t()
        target[f"{dst}.conv.modulation.bias"] = None if mod_b is None else mod_b + 1  # TF adds the 1 at runtime
        strength = src.take(f"{prefix}/noise_strength")
        target[f"{dst}.noise.weight"] = None if strength is None else strength.reshape(1)
        target[f"{dst}.activate.bias"] = src.take(f"{prefix}/bias")

    def torgb(prefix: str, dst: str) -> None:
        weight = src.take(f"{prefix}/weight")
        target[f"{dst}.conv.weight"] = None if weight is None else _oihw_from_tf(weight).unsqueeze(0)
        mod_w, mod_b = src.take(f"{prefix}/mod_weight"), src.take(f"{prefix}/mod_bias")
        target[f"{dst}.conv.modulation.weight"] = None if mod_w is None else mod_w.t()
        target[f"{dst}.conv.modulation.bias"] = None if mod_b is None else mod_b + 1
        bias = src.take(f"{prefix}/bias")
        target[f"{dst}.bias"] = None if bias is None else bias.reshape(1, -1, 1, 1)

    modconv("synthesis/4x4/Conv", "conv1", flip=False)
    torgb("synthesis/4x4/ToRGB", "to_rgb1")
    for k, res in enumerate(resolutions[1:]):
        modconv(f"synthesis/{res}x{res}/Conv0_up", f"convs.{2 * k}", flip=True)
        modconv(f"synthesis/{res}x{res}/Conv1", f"convs.{2 * k + 1}", flip=False)
        torgb(f"synthesis/{res}x{res}/ToRGB", f"to_rgbs.{k}")
    for i in range(2 * len(resolutions) - 1):
        target[f"noises.noise_{i}"] = src.take(f"synthesis/noise{i}")
    latent_avg = src.take("dlatent_avg")
    lod = src.take("lod") if src.has("lod") else None
    if lod is not None and float(lod.reshape(-1)[0]) != 0.0:
        raise ConversionError(f"{what}: lod = {float(lod.reshape(-1)[0])} (a network in the middle of progressive "
                              f"growing); only final networks (lod 0) are supported")
    _kernel_buffers(target, expected, cfg.blur_kernel, 4.0)
    state = _finish(src, target, expected, what)
    notes = {"tf_static_kwargs": {k: v for k, v in kwargs.items() if isinstance(v, (int, float, str, bool))}}
    return cfg, state, latent_avg, notes


def _check_tf_kwargs(kwargs: Mapping[str, Any], what: str) -> None:
    problems = []
    if kwargs.get("architecture", "skip") != "skip":
        problems.append(f"architecture {kwargs.get('architecture')!r} (only 'skip' matches rosinality's generator)")
    if kwargs.get("label_size", 0):
        problems.append(f"label_size {kwargs.get('label_size')} (conditional networks are not supported)")
    if kwargs.get("num_channels", 3) != 3:
        problems.append(f"num_channels {kwargs.get('num_channels')} (RGB only)")
    if list(kwargs.get("resample_kernel", [1, 3, 3, 1])) != [1, 3, 3, 1]:
        problems.append(f"resample_kernel {kwargs.get('resample_kernel')} (only [1,3,3,1])")
    # stylegan2 names its synthesis G_synthesis_stylegan2, stylegan2-ada (TF) G_synthesis; both build the same graph.
    if kwargs.get("synthesis_func", "G_synthesis_stylegan2") not in ("G_synthesis_stylegan2", "G_synthesis"):
        problems.append(f"synthesis_func {kwargs.get('synthesis_func')!r} (only G_synthesis_stylegan2 / G_synthesis)")
    if kwargs.get("mapping_nonlinearity", "lrelu") != "lrelu" or kwargs.get("nonlinearity", "lrelu") != "lrelu":
        problems.append("a nonlinearity other than lrelu")
    if problems:
        raise ConversionError(f"{what}: unsupported network: " + "; ".join(problems))


def _tf_discriminator(net: TFNetworkState, what: str) -> tuple[DiscriminatorConfig, dict[str, torch.Tensor],
                                                               dict[str, Any]]:
    if net.version < 4:
        raise ConversionError(f"{what}: TF network pickle version {net.version} is too old (need 4)")
    kwargs = net.static_kwargs
    if kwargs.get("architecture", "resnet") != "resnet" or kwargs.get("label_size", 0):
        raise ConversionError(f"{what}: only unconditional 'resnet' discriminators match rosinality's")
    src = _Source(net.all_variables(), what)
    froms = sorted(int(m.group(1)) for k in src.arrays for m in [re.fullmatch(r"(\d+)x\1/FromRGB/weight", k)] if m)
    if len(froms) != 1:
        raise ConversionError(f"{what}: expected exactly one FromRGB (resnet discriminator), found {len(froms)}")
    size = froms[0]
    channels = [(size, int(np.shape(src.arrays[f"{size}x{size}/FromRGB/weight"])[3]))]
    res = size
    while res > 4:
        name = f"{res}x{res}/Conv1_down/weight"
        if src.has(name):
            channels.append((res // 2, int(np.shape(src.arrays[name])[3])))
        res //= 2
    cfg = _make_config(DiscriminatorConfig, what, size=size, channels=tuple(channels))
    expected = expected_discriminator_shapes(cfg)
    target: dict[str, Any] = {}

    def conv(name: str) -> torch.Tensor | None:
        value = src.take(name)
        return None if value is None else _oihw_from_tf(value)

    target["convs.0.0.weight"] = conv(f"{size}x{size}/FromRGB/weight")
    target["convs.0.1.bias"] = src.take(f"{size}x{size}/FromRGB/bias")
    for i in range(1, int(math.log2(size)) - 1):
        res = size // 2 ** (i - 1)
        target[f"convs.{i}.conv1.0.weight"] = conv(f"{res}x{res}/Conv0/weight")
        target[f"convs.{i}.conv1.1.bias"] = src.take(f"{res}x{res}/Conv0/bias")
        target[f"convs.{i}.conv2.1.weight"] = conv(f"{res}x{res}/Conv1_down/weight")
        target[f"convs.{i}.conv2.2.bias"] = src.take(f"{res}x{res}/Conv1_down/bias")
        target[f"convs.{i}.skip.1.weight"] = conv(f"{res}x{res}/Skip/weight")
    target["final_conv.0.weight"] = conv("4x4/Conv/weight")
    target["final_conv.1.bias"] = src.take("4x4/Conv/bias")
    for dst, name in (("final_linear.0", "4x4/Dense0"), ("final_linear.1", "Output")):
        weight = src.take(f"{name}/weight")
        target[f"{dst}.weight"] = None if weight is None else weight.t()
        target[f"{dst}.bias"] = src.take(f"{name}/bias")
    _kernel_buffers(target, expected, cfg.blur_kernel, 1.0)
    state = _finish(src, target, expected, what)
    return cfg, state, {"tf_mbstd_group_size": kwargs.get("mbstd_group_size", 4)}


# ---------------------------------------------------------------------------------------------------------------------
# stylegan2-ada-pytorch pickles.


def module_tensors(obj: Any, prefix: str = "") -> OrderedDict[str, torch.Tensor]:
    """Parameters and buffers of a pickled module stand-in, named like ``state_dict()`` keys."""
    if isinstance(obj, PersistentObjectState):
        state = obj.state
    elif isinstance(obj, TorchModuleState):
        state = obj.__dict__
    else:
        raise ConversionError(f"{prefix or 'object'} is a {type(obj).__name__}, not a pickled torch module")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is not None:
                if not isinstance(value, torch.Tensor):
                    raise ConversionError(f"{prefix}{name} is a {type(value).__name__}, not a tensor")
                out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            out.update(module_tensors(child, f"{prefix}{name}."))
    return out


def _init_kwargs(obj: PersistentObjectState) -> dict[str, Any]:
    return dict(obj.state.get("_init_kwargs") or {})


def _ada_generator(obj: Any, what: str) -> tuple[GeneratorConfig, dict[str, torch.Tensor], torch.Tensor | None,
                                                 dict[str, Any]]:
    init = _init_kwargs(obj) if isinstance(obj, PersistentObjectState) else {}
    if init.get("c_dim", 0):
        raise ConversionError(f"{what}: conditional generators (c_dim={init.get('c_dim')}) are not supported")
    synthesis_kwargs = dict(init.get("synthesis_kwargs") or {})
    mapping_kwargs = dict(init.get("mapping_kwargs") or {})
    if synthesis_kwargs.get("architecture", "skip") != "skip":
        raise ConversionError(f"{what}: architecture {synthesis_kwargs.get('architecture')!r}; only 'skip' matches "
                              f"rosinality's generator")
    src = _Source(module_tensors(obj), what)
    n_mlp = 0
    while src.has(f"mapping.fc{n_mlp}.weight"):
        n_mlp += 1
    resolutions = sorted(int(m.group(1)) for k in src.arrays
                         for m in [re.fullmatch(r"synthesis\.b(\d+)\.torgb\.weight", k)] if m)
    if n_mlp == 0 or not resolutions or resolutions[0] != 4 or not src.has("synthesis.b4.const"):
        raise ConversionError(f"{what}: not a stylegan2-ada-pytorch skip generator (no mapping.fc0 / synthesis.b4)")
    size = resolutions[-1]
    style_dim = int(src.arrays["mapping.fc0.weight"].shape[1])
    channels = [(4, int(src.arrays["synthesis.b4.const"].shape[0]))]
    for res in resolutions[1:]:
        name = f"synthesis.b{res}.conv0.weight"
        if src.has(name):
            channels.append((res, int(src.arrays[name].shape[0])))
    cfg = _make_config(GeneratorConfig, what, size=size, style_dim=style_dim, n_mlp=n_mlp,
                       lr_mlp=float(mapping_kwargs.get("lr_multiplier", 0.01)), channels=tuple(channels))
    expected = expected_generator_shapes(cfg)
    target: dict[str, Any] = {}
    problems: list[str] = []

    for i in range(n_mlp):
        target[f"style.{i + 1}.weight"] = src.take(f"mapping.fc{i}.weight")
        target[f"style.{i + 1}.bias"] = src.take(f"mapping.fc{i}.bias")
    const = src.take("synthesis.b4.const")
    target["input.input"] = None if const is None else const.unsqueeze(0)

    def layer(prefix: str, dst: str, noise_index: int) -> None:
        weight = src.take(f"{prefix}.weight")
        # The up-sampling conv0 runs as conv_transpose2d of the unflipped kernel (flip_weight=False), as rosinality.
        target[f"{dst}.conv.weight"] = None if weight is None else weight.unsqueeze(0)
        target[f"{dst}.conv.modulation.weight"] = src.take(f"{prefix}.affine.weight")
        target[f"{dst}.conv.modulation.bias"] = src.take(f"{prefix}.affine.bias")  # initialised to 1, stored as is
        strength = src.take(f"{prefix}.noise_strength")
        target[f"{dst}.noise.weight"] = None if strength is None else strength.reshape(1)
        target[f"{dst}.activate.bias"] = src.take(f"{prefix}.bias")
        noise = src.take(f"{prefix}.noise_const")
        target[f"noises.noise_{noise_index}"] = None if noise is None else noise.reshape(1, 1, *noise.shape)
        if src.has(f"{prefix}.resample_filter"):
            _check_filter(src.take(f"{prefix}.resample_filter"), f"{prefix}.resample_filter", problems)

    def torgb(prefix: str, dst: str) -> None:
        weight = src.take(f"{prefix}.weight")
        target[f"{dst}.conv.weight"] = None if weight is None else weight.unsqueeze(0)
        target[f"{dst}.conv.modulation.weight"] = src.take(f"{prefix}.affine.weight")
        target[f"{dst}.conv.modulation.bias"] = src.take(f"{prefix}.affine.bias")
        bias = src.take(f"{prefix}.bias")
        target[f"{dst}.bias"] = None if bias is None else bias.reshape(1, -1, 1, 1)

    layer("synthesis.b4.conv1", "conv1", 0)
    torgb("synthesis.b4.torgb", "to_rgb1")
    for k, res in enumerate(resolutions[1:]):
        layer(f"synthesis.b{res}.conv0", f"convs.{2 * k}", 2 * k + 1)
        layer(f"synthesis.b{res}.conv1", f"convs.{2 * k + 1}", 2 * k + 2)
        torgb(f"synthesis.b{res}.torgb", f"to_rgbs.{k}")
    for res in resolutions:
        if src.has(f"synthesis.b{res}.resample_filter"):
            _check_filter(src.take(f"synthesis.b{res}.resample_filter"), f"synthesis.b{res}.resample_filter",
                          problems)
    latent_avg = src.take("mapping.w_avg") if src.has("mapping.w_avg") else None
    if problems:
        raise ConversionError(f"{what}: " + "; ".join(problems))
    _kernel_buffers(target, expected, cfg.blur_kernel, 4.0)
    state = _finish(src, target, expected, what)
    notes = {"ada_conv_clamp": synthesis_kwargs.get("conv_clamp"),
             "ada_num_fp16_res": synthesis_kwargs.get("num_fp16_res", 0)}
    return cfg, state, latent_avg, notes


def _ada_discriminator(obj: Any, what: str) -> tuple[DiscriminatorConfig, dict[str, torch.Tensor], dict[str, Any]]:
    init = _init_kwargs(obj) if isinstance(obj, PersistentObjectState) else {}
    if init.get("c_dim", 0) or init.get("architecture", "resnet") != "resnet":
        raise ConversionError(f"{what}: only unconditional 'resnet' discriminators match rosinality's")
    src = _Source(module_tensors(obj), what)
    froms = sorted(int(m.group(1)) for k in src.arrays for m in [re.fullmatch(r"b(\d+)\.fromrgb\.weight", k)] if m)
    if len(froms) != 1:
        raise ConversionError(f"{what}: expected exactly one fromrgb (resnet discriminator), found {len(froms)}")
    size = froms[0]
    channels = [(size, int(src.arrays[f"b{size}.fromrgb.weight"].shape[0]))]
    res = size
    while res > 4:
        if src.has(f"b{res}.conv1.weight"):
            channels.append((res // 2, int(src.arrays[f"b{res}.conv1.weight"].shape[0])))
        res //= 2
    cfg = _make_config(DiscriminatorConfig, what, size=size, channels=tuple(channels))
    expected = expected_discriminator_shapes(cfg)
    target: dict[str, Any] = {}
    problems: list[str] = []
    target["convs.0.0.weight"] = src.take(f"b{size}.fromrgb.weight")
    target["convs.0.1.bias"] = src.take(f"b{size}.fromrgb.bias")
    for i in range(1, int(math.log2(size)) - 1):
        res = size // 2 ** (i - 1)
        target[f"convs.{i}.conv1.0.weight"] = src.take(f"b{res}.conv0.weight")
        target[f"convs.{i}.conv1.1.bias"] = src.take(f"b{res}.conv0.bias")
        target[f"convs.{i}.conv2.1.weight"] = src.take(f"b{res}.conv1.weight")
        target[f"convs.{i}.conv2.2.bias"] = src.take(f"b{res}.conv1.bias")
        target[f"convs.{i}.skip.1.weight"] = src.take(f"b{res}.skip.weight")
    target["final_conv.0.weight"] = src.take("b4.conv.weight")
    target["final_conv.1.bias"] = src.take("b4.conv.bias")
    for dst, name in (("final_linear.0", "b4.fc"), ("final_linear.1", "b4.out")):
        target[f"{dst}.weight"] = src.take(f"{name}.weight")
        target[f"{dst}.bias"] = src.take(f"{name}.bias")
    for name in [k for k in src.arrays if k.endswith("resample_filter")]:
        _check_filter(src.take(name), name, problems)
    if problems:
        raise ConversionError(f"{what}: " + "; ".join(problems))
    _kernel_buffers(target, expected, cfg.blur_kernel, 1.0)
    state = _finish(src, target, expected, what)
    epilogue = dict(init.get("epilogue_kwargs") or {})
    return cfg, state, {"ada_mbstd_group_size": epilogue.get("mbstd_group_size", 4)}


def _make_config(cls: type, what: str, **kwargs: Any) -> Any:
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ConversionError(f"{what}: the weights describe an unsupported architecture ({exc})") from None


# ---------------------------------------------------------------------------------------------------------------------
# Public API.


def convert(src_path: str | os.PathLike, dst_path: str | os.PathLike, *, fmt: str = "auto", which: str = "G_ema",
            include_d: bool = True, expected_resolution: int | None = None,
            source_sha256: str | None = None) -> Path:
    """Convert ``src_path`` into our checkpoint at ``dst_path``; nothing is written unless everything converts.

    fmt: auto | tf-stylegan2 | ada-pytorch | rosinality. which: "G_ema" (the EMA generator NADA uses) or "G" (the
    raw one); the other is stored as ``g`` when the source has it. include_d: also convert the discriminator.
    expected_resolution: fail (ConversionError) if the generator's resolution differs.
    """
    src_path, dst_path = Path(src_path), Path(dst_path)
    fmt = _REGISTRY_FORMATS.get(fmt, fmt)
    if fmt not in CLI_FORMATS:
        raise ConversionError(f"unknown format {fmt!r}; use one of {', '.join(CLI_FORMATS)}")
    if which not in ("G_ema", "G"):
        raise ConversionError(f"which must be 'G_ema' or 'G', got {which!r}")
    detected, obj = _load_source(src_path)
    if fmt != "auto" and fmt != detected:
        raise ConversionError(f"{src_path.name} is a {detected} file, not {fmt}; pass --format auto or {detected}")
    name = src_path.name
    g_state = d_state = d_cfg = None
    extra: dict[str, Any] = {}
    if detected == FORMAT_TF:
        tf_g, tf_d, tf_gs = obj
        main, other = (tf_gs, tf_g) if which == "G_ema" else (tf_g, tf_gs)
        cfg, state, latent_avg, extra = _tf_generator(main, f"{name} {'Gs' if which == 'G_ema' else 'G'}")
        _check_resolution(cfg, expected_resolution, name)
        other_cfg, g_state, _, _ = _tf_generator(other, f"{name} {'G' if which == 'G_ema' else 'Gs'}")
        if other_cfg != cfg:
            raise ConversionError(f"{name}: G and Gs have different architectures")
        if include_d:
            d_cfg, d_state, d_notes = _discriminator_or_raise(_tf_discriminator, tf_d, f"{name} D")
            extra.update(d_notes)
    elif detected == FORMAT_ADA:
        if not isinstance(obj.get(which), (PersistentObjectState, TorchModuleState)):
            raise ConversionError(f"{name}: the pickle has no {which!r} network (keys: {sorted(map(str, obj))})")
        cfg, state, latent_avg, extra = _ada_generator(obj[which], f"{name} {which}")
        _check_resolution(cfg, expected_resolution, name)
        other_key = "G" if which == "G_ema" else "G_ema"
        if isinstance(obj.get(other_key), (PersistentObjectState, TorchModuleState)):
            other_cfg, g_state, _, _ = _ada_generator(obj[other_key], f"{name} {other_key}")
            if other_cfg != cfg:
                raise ConversionError(f"{name}: G and G_ema have different architectures")
        if include_d and isinstance(obj.get("D"), (PersistentObjectState, TorchModuleState)):
            d_cfg, d_state, d_notes = _discriminator_or_raise(_ada_discriminator, obj["D"], f"{name} D")
            extra.update(d_notes)
    else:
        try:
            ckpt = checkpoint_from_object(obj, src_path, expected_resolution=expected_resolution)
        except CheckpointError as exc:
            raise ConversionError(str(exc)) from None
        cfg, state, latent_avg = ckpt.generator_config, ckpt.g_ema, ckpt.latent_avg
        g_state = ckpt.g
        if include_d and ckpt.d is not None and ckpt.discriminator_config is not None:
            d_cfg, d_state = ckpt.discriminator_config, ckpt.d
        extra = dict(ckpt.extra)
    if latent_avg is not None:
        latent_avg = latent_avg.reshape(-1)
    provenance = make_provenance(src_path, source_format=detected, converter_version=CONVERTER_VERSION,
                                 source_sha256=source_sha256)
    provenance["network"] = which
    try:
        return save_checkpoint(dst_path, generator_config=cfg, g_ema=state, latent_avg=latent_avg,
                               provenance=provenance, g=g_state, d=d_state, discriminator_config=d_cfg,
                               extra=_plain(extra))
    except CheckpointError as exc:
        raise ConversionError(str(exc)) from None


def _discriminator_or_raise(func: Callable[[Any, str], Any], net: Any, what: str) -> Any:
    try:
        return func(net, what)
    except ConversionError as exc:
        raise DiscriminatorConversionError(f"{exc} (pass --no-discriminator to convert the generator alone)") \
            from None


def _check_resolution(cfg: GeneratorConfig, expected: int | None, name: str) -> None:
    if expected is not None and cfg.size != int(expected):
        raise ConversionError(f"{name} holds a {cfg.size}px generator but {expected}px was expected; check the "
                              f"file or the registry entry's resolution")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


# ---------------------------------------------------------------------------------------------------------------------
# Cross-check with a TF render made in the legacy environment.


def compare_with_tf_render(converted_pt: str | os.PathLike, npz: str | os.PathLike,
                           grid_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Render the npz's z with our converted generator and compare with the TF images; writes a TF/ours/|diff| grid.

    The npz comes from ``replication/legacy_tf_crosscheck.py``: ``z`` [N, style_dim], ``images`` [N, 3, H, W]
    (NCHW, TF's raw output), ``noise{i}`` (the fixed noise maps TF used), ``truncation_psi``; optionally
    ``d_scores`` [N, 1] (TF's D on the TF images, in chunks of ``d_chunk``), compared with our converted D on the same
    images, and ``images_unfused`` (TF's non-fused render), whose distance to ``images`` is reported. Truncation uses
    the checkpoint's ``latent_avg`` (TF's ``dlatent_avg``), exactly as Gs.run(..., truncation_psi=psi) does.
    """
    from replication.checkpoint import load_generator  # local: keeps module import light for the CLI's other paths
    from replication.networks import Discriminator

    generator, ckpt = load_generator(converted_pt)
    with np.load(npz, allow_pickle=False) as data:
        z = torch.from_numpy(np.asarray(data["z"], dtype=np.float32))
        tf_images = torch.from_numpy(np.asarray(data["images"], dtype=np.float32))
        psi = float(data["truncation_psi"]) if "truncation_psi" in data else 0.5
        noise = [torch.from_numpy(np.asarray(data[f"noise{i}"], dtype=np.float32)) for i in range(generator.num_layers)
                 if f"noise{i}" in data]
        tf_scores = torch.from_numpy(np.asarray(data["d_scores"], dtype=np.float32)) if "d_scores" in data else None
        d_chunk = int(data["d_chunk"]) if "d_chunk" in data else len(z)
        unfused = (torch.from_numpy(np.asarray(data["images_unfused"], dtype=np.float32))
                   if "images_unfused" in data else None)
    if len(noise) != generator.num_layers:
        raise ConversionError(f"{Path(npz).name} has {len(noise)} noise maps, the generator needs "
                              f"{generator.num_layers}")
    if ckpt.latent_avg is None and psi != 1.0:
        raise ConversionError(f"{Path(converted_pt).name} has no latent_avg, needed for truncation psi={psi}")
    with torch.no_grad():
        ours, _ = generator([z], noise_mode="given", noise=noise, truncation=psi,
                            truncation_latent=None if ckpt.latent_avg is None else ckpt.latent_avg.reshape(1, -1))
    if ours.shape != tf_images.shape:
        raise ConversionError(f"TF images have shape {tuple(tf_images.shape)}, ours {tuple(ours.shape)}")
    diff = (ours - tf_images).abs()
    grid_path = Path(grid_path) if grid_path is not None else Path(npz).with_suffix(".png")
    _write_grid(torch.cat([tf_images, ours, diff * 2 - 1]), len(z), grid_path)
    result: dict[str, Any] = {
        "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()), "grid_path": str(grid_path),
        "n_images": int(len(z)), "image_min": float(tf_images.min()), "image_max": float(tf_images.max()),
        "truncation_psi": psi,
    }
    if unfused is not None:
        result["tf_fused_vs_unfused_max_abs_diff"] = float((unfused - tf_images).abs().max())
    if tf_scores is not None:
        if ckpt.d is None or ckpt.discriminator_config is None:
            raise ConversionError(f"{Path(npz).name} has TF discriminator scores but {Path(converted_pt).name} has "
                                  f"no discriminator; convert without --no-discriminator")
        if d_chunk < 1:
            raise ConversionError(f"{Path(npz).name}: d_chunk must be at least 1, got {d_chunk}")
        discriminator = Discriminator(ckpt.discriminator_config).eval()
        discriminator.load_state_dict(ckpt.d)
        with torch.no_grad():
            # Same chunks as TF, so that each minibatch-stddev group holds the same images.
            our_scores = torch.cat([discriminator(chunk) for chunk in tf_images.split(d_chunk)])
        if our_scores.shape != tf_scores.shape:
            raise ConversionError(f"TF D scores have shape {tuple(tf_scores.shape)}, ours {tuple(our_scores.shape)}")
        result["d_max_abs_diff"] = float((our_scores - tf_scores).abs().max())
        result["d_score_min"] = float(tf_scores.min())
        result["d_score_max"] = float(tf_scores.max())
    return result


def _write_grid(images: torch.Tensor, n_cols: int, path: Path) -> None:
    from PIL import Image
    from torchvision.utils import make_grid

    if images.shape[-1] < 128:
        # Tiny test networks: enlarge (nearest) so that a person can see the pixels.
        factor = 128 // images.shape[-1]
        images = images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    grid = make_grid(((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8), nrow=n_cols, padding=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a grid is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------------------------------
# `--all`: every registry generator present in the weights dir.


def converted_dir() -> Path:
    """<repo>/cache/converted, where `make convert` writes."""
    return REPO_ROOT / "cache" / "converted"


def convert_all(out_dir: str | os.PathLike | None = None, *, require_all: bool = False,
                log: Callable[[str], None] = print, warn: Callable[[str], None] | None = None) -> int:
    """Convert every present registry generator to ``out_dir/<name>.pt``; returns the CLI exit code (0 or 2)."""
    from replication.weights import check_file, file_sha256, missing_message, registry

    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    out_dir = Path(out_dir) if out_dir is not None else converted_dir()
    failed = missing = 0
    for name, entry in sorted(registry().items()):
        if entry.kind != "generator" or entry.format == "nada-replication-checkpoint":
            continue  # shipped in our format already (the mini world's): nothing to convert
        if not entry.path.is_file():
            missing += 1
            warn(f"{'error' if require_all else 'missing'}: {missing_message(entry)}")
            continue
        dst = out_dir / f"{name}.pt"
        manifest = out_dir / f"{name}.json"
        try:
            check_file(entry)
            source_sha = file_sha256(entry.path)
            if _up_to_date(dst, manifest, source_sha):
                log(f"up to date: {dst}")
                continue
            try:
                convert(entry.path, dst, fmt=entry.format, expected_resolution=entry.resolution,
                        source_sha256=source_sha)
            except DiscriminatorConversionError as exc:
                # NADA needs only the generator; an unusual discriminator must not block it.
                warn(f"warning: {name}: discriminator not converted ({exc})")
                convert(entry.path, dst, fmt=entry.format, expected_resolution=entry.resolution,
                        source_sha256=source_sha, include_d=False)
            _write_manifest(manifest, name, entry.filename, source_sha, dst)
            log(f"converted: {entry.path} -> {dst}")
        except ValueError as exc:  # WeightError, ConversionError, UnsafePickleError, CheckpointError
            failed += 1
            warn(f"error: {name}: {exc}")
    if failed or (require_all and missing):
        return 2
    return 0


def _up_to_date(dst: Path, manifest: Path, source_sha: str) -> bool:
    if not dst.is_file() or not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (data.get("source_sha256") == source_sha and data.get("converter_version") == CONVERTER_VERSION
            and data.get("output_size") == dst.stat().st_size and data.get("output_mtime_ns") == dst.stat().st_mtime_ns)


def _write_manifest(manifest: Path, name: str, filename: str, source_sha: str, dst: Path) -> None:
    stat = dst.stat()
    record = {"name": name, "source_filename": filename, "source_sha256": source_sha,
              "converter_version": CONVERTER_VERSION, "output": dst.name, "output_size": stat.st_size,
              "output_mtime_ns": stat.st_mtime_ns}
    fd, tmp = tempfile.mkstemp(dir=manifest.parent, prefix=f".{manifest.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1)
    os.replace(tmp, manifest)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; errors print one `error: ...` line to stderr and exit 2."""
    parser = argparse.ArgumentParser(prog="python -m replication.convert",
                                     description="Convert StyleGAN2 weights to the replication checkpoint format.")
    parser.add_argument("src", nargs="?", help="source file (TF pickle, stylegan2-ada-pytorch pickle, rosinality .pt)")
    parser.add_argument("dst", nargs="?", help="destination .pt")
    parser.add_argument("--format", default="auto", choices=CLI_FORMATS, dest="fmt")
    parser.add_argument("--which", default="G_ema", choices=("G_ema", "G"), help="which generator becomes g_ema")
    parser.add_argument("--no-discriminator", action="store_true", help="do not convert D")
    parser.add_argument("--resolution", type=int, default=None, help="fail unless the generator has this resolution")
    parser.add_argument("--all", action="store_true", help="convert every registry generator present in the "
                                                           "weights dir (make convert)")
    parser.add_argument("--require-all", action="store_true", help="with --all: a missing file is an error")
    parser.add_argument("--out-dir", default=None, help="with --all: output folder (default <repo>/cache/converted)")
    parser.add_argument("--compare-npz", default=None, metavar="NPZ",
                        help="instead of converting: compare SRC (a converted .pt) with a TF render from "
                             "legacy_tf_crosscheck.py and write a TF/ours/|diff| grid PNG to DST (default: next to "
                             "the npz)")
    args = parser.parse_args(argv)
    try:
        if args.all:
            if args.src or args.dst:
                raise ConversionError("--all takes no SRC/DST; use either `--all` or `SRC DST`")
            return convert_all(args.out_dir, require_all=args.require_all)
        if args.compare_npz:
            if not args.src:
                raise ConversionError("--compare-npz needs the converted .pt as SRC")
            result = compare_with_tf_render(args.src, args.compare_npz, args.dst)
            print(json.dumps(result))
            return 0
        if not args.src or not args.dst:
            raise ConversionError("give SRC and DST (or --all); see --help")
        out = convert(args.src, args.dst, fmt=args.fmt, which=args.which, include_d=not args.no_discriminator,
                      expected_resolution=args.resolution)
        print(f"converted: {args.src} -> {out}")
        return 0
    except (ConversionError, UnsafePickleError, CheckpointError, WeightError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
