"""Reader of stylegan2-ada-pytorch network pickles (a dict holding G, D and G_ema)."""
from __future__ import annotations

import math
import re
from collections import OrderedDict
from typing import Any

import torch

from replication.checkpoint import expected_discriminator_shapes, expected_generator_shapes
from replication.conversion.common import (
    ConversionError,
    ConvertedNetworks,
    SourceArrays,
    check_filter,
    check_resolution,
    discriminator_or_raise,
    finish,
    kernel_buffers,
    make_config,
)
from replication.networks import DiscriminatorConfig, GeneratorConfig
from replication.safe_unpickle import PersistentObjectState, TorchModuleState


def read_ada(obj: dict[str, Any], name: str, *, which: str, include_d: bool,
             expected_resolution: int | None) -> ConvertedNetworks:
    """Networks of a stylegan2-ada-pytorch pickle: obj[which] becomes g_ema and the other generator, if any, g."""
    if not isinstance(obj.get(which), (PersistentObjectState, TorchModuleState)):
        raise ConversionError(f"{name}: the pickle has no {which!r} network (keys: {sorted(map(str, obj))})")
    cfg, state, latent_avg, extra = ada_generator(obj[which], f"{name} {which}")
    check_resolution(cfg, expected_resolution, name)
    g_state = d_cfg = d_state = None
    other_key = "G" if which == "G_ema" else "G_ema"
    if isinstance(obj.get(other_key), (PersistentObjectState, TorchModuleState)):
        other_cfg, g_state, _, _ = ada_generator(obj[other_key], f"{name} {other_key}")
        if other_cfg != cfg:
            raise ConversionError(f"{name}: G and G_ema have different architectures")
    if include_d and isinstance(obj.get("D"), (PersistentObjectState, TorchModuleState)):
        d_cfg, d_state, d_notes = discriminator_or_raise(ada_discriminator, obj["D"], f"{name} D")
        extra.update(d_notes)
    return ConvertedNetworks(cfg, state, latent_avg, g=g_state, discriminator_config=d_cfg, d=d_state, extra=extra)


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


def ada_generator(obj: Any, what: str) -> tuple[GeneratorConfig, dict[str, torch.Tensor], torch.Tensor | None,
                                                dict[str, Any]]:
    """(config, state dict, w_avg, notes) of a stylegan2-ada-pytorch generator, mapped to rosinality's layout.

    ``mapping.fc{i}`` -> ``style.{i+1}``; ``synthesis.b{r}.{conv0,conv1,torgb}`` -> ``convs`` / ``to_rgbs``; weights
    [out, in, k, k] -> [1, out, in, k, k]; the affine bias is stored with its +1 already; the up-sampling conv is a
    transposed conv of the unflipped kernel (flip_weight=False), i.e. the same orientation as rosinality.
    """
    init = _init_kwargs(obj) if isinstance(obj, PersistentObjectState) else {}
    if init.get("c_dim", 0):
        raise ConversionError(f"{what}: conditional generators (c_dim={init.get('c_dim')}) are not supported")
    synthesis_kwargs = dict(init.get("synthesis_kwargs") or {})
    mapping_kwargs = dict(init.get("mapping_kwargs") or {})
    if synthesis_kwargs.get("architecture", "skip") != "skip":
        raise ConversionError(f"{what}: architecture {synthesis_kwargs.get('architecture')!r}; only 'skip' matches "
                              f"rosinality's generator")
    src = SourceArrays(module_tensors(obj), what)
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
    cfg = make_config(GeneratorConfig, what, size=size, style_dim=style_dim, n_mlp=n_mlp,
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
            check_filter(src.take(f"{prefix}.resample_filter"), f"{prefix}.resample_filter", problems)

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
            check_filter(src.take(f"synthesis.b{res}.resample_filter"), f"synthesis.b{res}.resample_filter",
                          problems)
    latent_avg = src.take("mapping.w_avg") if src.has("mapping.w_avg") else None
    if problems:
        raise ConversionError(f"{what}: " + "; ".join(problems))
    kernel_buffers(target, expected, cfg.blur_kernel, 4.0)
    state = finish(src, target, expected, what)
    notes = {"ada_conv_clamp": synthesis_kwargs.get("conv_clamp"),
             "ada_num_fp16_res": synthesis_kwargs.get("num_fp16_res", 0)}
    return cfg, state, latent_avg, notes


def ada_discriminator(obj: Any, what: str) -> tuple[DiscriminatorConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """(config, state dict, notes) of a stylegan2-ada-pytorch resnet discriminator, in rosinality's layout."""
    init = _init_kwargs(obj) if isinstance(obj, PersistentObjectState) else {}
    if init.get("c_dim", 0) or init.get("architecture", "resnet") != "resnet":
        raise ConversionError(f"{what}: only unconditional 'resnet' discriminators match rosinality's")
    src = SourceArrays(module_tensors(obj), what)
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
    cfg = make_config(DiscriminatorConfig, what, size=size, channels=tuple(channels))
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
        check_filter(src.take(name), name, problems)
    if problems:
        raise ConversionError(f"{what}: " + "; ".join(problems))
    kernel_buffers(target, expected, cfg.blur_kernel, 1.0)
    state = finish(src, target, expected, what)
    epilogue = dict(init.get("epilogue_kwargs") or {})
    return cfg, state, {"ada_mbstd_group_size": epilogue.get("mbstd_group_size", 4)}
