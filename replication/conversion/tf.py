"""Reader of NVIDIA's TF StyleGAN2 / StyleGAN2-ADA (TF) network pickles (G, D, Gs)."""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

import numpy as np
import torch

from replication.checkpoint import expected_discriminator_shapes, expected_generator_shapes
from replication.conversion.common import (
    ConversionError,
    ConvertedNetworks,
    SourceArrays,
    check_resolution,
    discriminator_or_raise,
    finish,
    kernel_buffers,
    make_config,
)
from replication.networks import DiscriminatorConfig, GeneratorConfig
from replication.safe_unpickle import TFNetworkState


def read_tf(obj: tuple[TFNetworkState, TFNetworkState, TFNetworkState], name: str, *, which: str, include_d: bool,
            expected_resolution: int | None) -> ConvertedNetworks:
    """Networks of a TF (G, D, Gs) pickle; which="G_ema" makes Gs the g_ema and G the g, "G" the other way round."""
    tf_g, tf_d, tf_gs = obj
    main, other = (tf_gs, tf_g) if which == "G_ema" else (tf_g, tf_gs)
    cfg, state, latent_avg, extra = tf_generator(main, f"{name} {'Gs' if which == 'G_ema' else 'G'}")
    check_resolution(cfg, expected_resolution, name)
    other_cfg, g_state, _, _ = tf_generator(other, f"{name} {'G' if which == 'G_ema' else 'Gs'}")
    if other_cfg != cfg:
        raise ConversionError(f"{name}: G and Gs have different architectures")
    d_cfg = d_state = None
    if include_d:
        d_cfg, d_state, d_notes = discriminator_or_raise(tf_discriminator, tf_d, f"{name} D")
        extra.update(d_notes)
    return ConvertedNetworks(cfg, state, latent_avg, g=g_state, discriminator_config=d_cfg, d=d_state, extra=extra)


def _oihw_from_tf(kernel: torch.Tensor) -> torch.Tensor:
    return kernel.permute(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)


def tf_generator(net: TFNetworkState, what: str) -> tuple[GeneratorConfig, dict[str, torch.Tensor], torch.Tensor,
                                                          dict[str, Any]]:
    """(config, state dict, dlatent_avg, notes) of a TF generator, mapped to rosinality's names and layout.

    As in rosinality's convert_weight.py and NVIDIA's legacy.py: mapping ``Dense{i}`` -> ``style.{i+1}`` (transposed);
    ``4x4/Const`` -> ``input.input``; ``4x4/Conv`` -> ``conv1``; ``{r}x{r}/Conv0_up`` / ``Conv1`` -> ``convs.{2k}`` /
    ``convs.{2k+1}``; ``ToRGB`` -> ``to_rgb1`` / ``to_rgbs.{k}``; kernels (kh, kw, in, out) -> (1, out, in, kh, kw);
    TF stores the modulation bias minus 1; ``noise{i}`` -> ``noises.noise_{i}``; ``dlatent_avg`` -> ``latent_avg``.
    TF's up-sampling conv correlates with the kernel after zero-insertion while rosinality's transposed conv
    convolves, so ``Conv0_up`` kernels are spatially flipped.
    """
    if net.version < 4:
        raise ConversionError(f"{what}: TF network pickle version {net.version} is too old (need 4)")
    kwargs = net.static_kwargs
    _check_tf_kwargs(kwargs, what)
    src = SourceArrays(net.all_variables(), what)
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
    cfg = make_config(GeneratorConfig, what, size=size, style_dim=style_dim, n_mlp=n_mlp,
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
    kernel_buffers(target, expected, cfg.blur_kernel, 4.0)
    state = finish(src, target, expected, what)
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
    # rosinality's mapping network has one width (style_dim) for z, its hidden layers and w
    widths = {k: kwargs[k] for k in ("latent_size", "mapping_fmaps", "dlatent_size") if k in kwargs}
    if len(set(widths.values())) > 1:
        problems.append("mapping widths that differ (" + ", ".join(f"{k} {v}" for k, v in widths.items())
                        + "; only one width for z, the mapping layers and w is supported)")
    if problems:
        raise ConversionError(f"{what}: unsupported network: " + "; ".join(problems))


def tf_discriminator(net: TFNetworkState, what: str) -> tuple[DiscriminatorConfig, dict[str, torch.Tensor],
                                                              dict[str, Any]]:
    """(config, state dict, notes) of a TF resnet discriminator, mapped to rosinality's names and layout."""
    if net.version < 4:
        raise ConversionError(f"{what}: TF network pickle version {net.version} is too old (need 4)")
    kwargs = net.static_kwargs
    if kwargs.get("architecture", "resnet") != "resnet" or kwargs.get("label_size", 0):
        raise ConversionError(f"{what}: only unconditional 'resnet' discriminators match rosinality's")
    # rosinality's minibatch-stddev layer is fixed at groups of 4 and one feature
    if kwargs.get("mbstd_group_size", 4) != 4 or kwargs.get("mbstd_num_features", 1) != 1:
        raise ConversionError(f"{what}: unsupported discriminator: minibatch-stddev group size "
                              f"{kwargs.get('mbstd_group_size', 4)} and {kwargs.get('mbstd_num_features', 1)} "
                              f"feature(s) (only group size 4 with 1 feature matches rosinality's)")
    src = SourceArrays(net.all_variables(), what)
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
    cfg = make_config(DiscriminatorConfig, what, size=size, channels=tuple(channels))
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
    kernel_buffers(target, expected, cfg.blur_kernel, 1.0)
    state = finish(src, target, expected, what)
    return cfg, state, {"tf_mbstd_group_size": kwargs.get("mbstd_group_size", 4)}
