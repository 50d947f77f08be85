"""Builders of tiny NVIDIA-format pickles (TF (G, D, Gs) and stylegan2-ada-pytorch dicts) from random rosinality models.

The foreign classes are imitated by throw-away modules put into ``sys.modules`` only while pickling, so the pickles
carry exactly the globals the official files carry (``dnnlib.tflib.network.Network``,
``torch_utils.persistence._reconstruct_persistent_obj``, ``dnnlib.util.EasyDict``) without any of NVIDIA's code.
The foreign weights are derived from our models by the inverse of the documented mapping, so a correct converter gives
back the original state dict bit for bit.
"""
from __future__ import annotations

import contextlib
import json
import math
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from replication.conversion.crosscheck import find_legacy_tf, run_legacy
from replication.networks import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig
from replication.runio import REPO_ROOT

# A module source that would leave a trace if anything ever executed it.
def module_src_with_payload(marker: Path) -> str:
    return f"import pathlib\npathlib.Path({str(marker)!r}).write_text('executed')\n"


def random_generator(size: int = 16, style_dim: int = 32, n_mlp: int = 2, channels: dict[int, int] | None = None,
                     seed: int = 0) -> Generator:
    """A tiny Generator whose every parameter and buffer is random and non-trivial (biases, strengths, noise)."""
    channels = channels or {4: 16, 8: 16, 16: 8, 32: 8}
    cfg = GeneratorConfig(size=size, style_dim=style_dim, n_mlp=n_mlp,
                          channels=tuple((r, c) for r, c in sorted(channels.items()) if r <= size))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Generator(cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("modulation.bias"):
                # Multiples of 2**-10 keep TF's "stored minus one" round trip exact in float32.
                noise = torch.round(torch.randn(param.shape, generator=gen) * 256) / 1024
                param.copy_(1 + noise)
            elif name.endswith("noise.weight"):
                param.copy_(torch.rand(param.shape, generator=gen) * 0.3 + 0.1)
            elif name.endswith("bias"):
                param.copy_(torch.randn(param.shape, generator=gen) * (10 if name.startswith("style.") else 0.2))
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * (1 / 0.01 if name.startswith("style.") else 1))
    return model.eval()


def random_discriminator(size: int = 16, channels: dict[int, int] | None = None, seed: int = 1) -> Discriminator:
    channels = channels or {4: 16, 8: 16, 16: 8, 32: 8}
    cfg = DiscriminatorConfig(size=size, channels=tuple((r, c) for r, c in sorted(channels.items()) if r <= size))
    torch.manual_seed(seed)
    model = Discriminator(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * (0.2 if name.endswith("bias") else 1))
    return model.eval()


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32).copy()


# ---------------------------------------------------------------------------------------------------------------------
# TF layout.


def tf_generator_variables(model: Generator) -> tuple[OrderedDict, OrderedDict, OrderedDict]:
    """(Gs own, G_mapping, G_synthesis) variables in TF's creation order, from a rosinality-layout Generator."""
    sd = model.state_dict()
    n_mlp = model.cfg.n_mlp
    mapping = OrderedDict()
    for i in range(n_mlp):
        mapping[f"Dense{i}/weight"] = _np(sd[f"style.{i + 1}.weight"].t())
        mapping[f"Dense{i}/bias"] = _np(sd[f"style.{i + 1}.bias"])
    synthesis = OrderedDict()
    for i in range(model.num_layers):
        synthesis[f"noise{i}"] = _np(sd[f"noises.noise_{i}"])

    def modconv(prefix: str, src: str, flip: bool) -> None:
        weight = sd[f"{src}.conv.weight"][0]
        weight = weight.flip([2, 3]) if flip else weight
        synthesis[f"{prefix}/weight"] = _np(weight.permute(2, 3, 1, 0))
        synthesis[f"{prefix}/mod_weight"] = _np(sd[f"{src}.conv.modulation.weight"].t())
        synthesis[f"{prefix}/mod_bias"] = _np(sd[f"{src}.conv.modulation.bias"] - 1)
        synthesis[f"{prefix}/noise_strength"] = _np(sd[f"{src}.noise.weight"].reshape(()))
        synthesis[f"{prefix}/bias"] = _np(sd[f"{src}.activate.bias"])

    def torgb(prefix: str, src: str) -> None:
        synthesis[f"{prefix}/weight"] = _np(sd[f"{src}.conv.weight"][0].permute(2, 3, 1, 0))
        synthesis[f"{prefix}/mod_weight"] = _np(sd[f"{src}.conv.modulation.weight"].t())
        synthesis[f"{prefix}/mod_bias"] = _np(sd[f"{src}.conv.modulation.bias"] - 1)
        synthesis[f"{prefix}/bias"] = _np(sd[f"{src}.bias"].reshape(-1))

    synthesis["4x4/Const/const"] = _np(sd["input.input"])
    modconv("4x4/Conv", "conv1", flip=False)
    torgb("4x4/ToRGB", "to_rgb1")
    for k in range(model.log_size - 2):
        res = 2 ** (k + 3)
        modconv(f"{res}x{res}/Conv0_up", f"convs.{2 * k}", flip=True)
        modconv(f"{res}x{res}/Conv1", f"convs.{2 * k + 1}", flip=False)
        torgb(f"{res}x{res}/ToRGB", f"to_rgbs.{k}")
    gs_own = OrderedDict([("lod", np.float32(0.0)), ("dlatent_avg", _np(torch.randn(model.style_dim)))])
    return gs_own, mapping, synthesis


def tf_discriminator_variables(model: Discriminator) -> OrderedDict:
    sd = model.state_dict()
    size = model.size
    out = OrderedDict()

    def conv(name: str, key: str, bias_key: str | None) -> None:
        out[f"{name}/weight"] = _np(sd[key].permute(2, 3, 1, 0))
        if bias_key is not None:
            out[f"{name}/bias"] = _np(sd[bias_key])

    conv(f"{size}x{size}/FromRGB", "convs.0.0.weight", "convs.0.1.bias")
    for i in range(1, int(math.log2(size)) - 1):
        res = size // 2 ** (i - 1)
        conv(f"{res}x{res}/Conv0", f"convs.{i}.conv1.0.weight", f"convs.{i}.conv1.1.bias")
        conv(f"{res}x{res}/Conv1_down", f"convs.{i}.conv2.1.weight", f"convs.{i}.conv2.2.bias")
        conv(f"{res}x{res}/Skip", f"convs.{i}.skip.1.weight", None)
    conv("4x4/Conv", "final_conv.0.weight", "final_conv.1.bias")
    out["4x4/Dense0/weight"] = _np(sd["final_linear.0.weight"].t())
    out["4x4/Dense0/bias"] = _np(sd["final_linear.0.bias"])
    out["Output/weight"] = _np(sd["final_linear.1.weight"].t())
    out["Output/bias"] = _np(sd["final_linear.1.bias"])
    return out


@contextlib.contextmanager
def fake_modules(*names: str) -> Iterator[dict[str, types.ModuleType]]:
    """Put empty modules (and their parents) into sys.modules for the duration, then restore what was there."""
    saved = {}
    created = {}
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            sub = ".".join(parts[:i])
            if sub not in created:
                saved[sub] = sys.modules.get(sub)
                created[sub] = types.ModuleType(sub)
                sys.modules[sub] = created[sub]
    try:
        yield created
    finally:
        for sub, old in saved.items():
            if old is None:
                sys.modules.pop(sub, None)
            else:
                sys.modules[sub] = old


def _tf_network_class(module: types.ModuleType) -> type:
    def __init__(self, state: dict) -> None:
        self._state = state

    def __getstate__(self) -> dict:
        return self._state

    cls = type("Network", (), {"__init__": __init__, "__getstate__": __getstate__, "__module__": module.__name__})
    module.Network = cls
    return cls


def tf_state(name: str, func: str, variables: OrderedDict, *, static_kwargs: dict | None = None,
             components: dict | None = None, module_src: str = "# build module\n") -> dict:
    """The dict dnnlib.tflib.Network.__getstate__ returns (version 4)."""
    return {"version": 4, "name": name, "static_kwargs": dict(static_kwargs or {}),
            "components": dict(components or {}), "build_module_src": module_src, "build_func_name": func,
            "variables": list(variables.items())}


def write_tf_pickle(path: Path, gs_model: Generator, d_model: Discriminator, *, g_model: Generator | None = None,
                    edit: Any = None, module_src: str = "# build module\n", latent_avg: np.ndarray | None = None) -> dict:
    """Pickle (G, D, Gs) like NVIDIA's TF training loop; ``edit(states)`` may tamper with the state dicts first.

    Returns the dict of states (for the test to compare against).
    """
    kwargs = {"resolution": gs_model.size, "num_channels": 3, "latent_size": gs_model.style_dim,
              "dlatent_size": gs_model.style_dim, "mapping_layers": gs_model.cfg.n_mlp, "fmap_base": 256,
              "truncation_psi": 0.5}
    states = {}
    for key, model in (("Gs", gs_model), ("G", g_model or gs_model)):
        own, mapping, synthesis = tf_generator_variables(model)
        if key == "Gs" and latent_avg is not None:
            own["dlatent_avg"] = latent_avg
        states[key] = {
            "own": tf_state(key, "training.networks_stylegan2.G_main", own, static_kwargs=kwargs, module_src=module_src),
            "mapping": tf_state("G_mapping", "G_mapping", mapping, module_src=module_src,
                                static_kwargs=dict(kwargs, dlatent_broadcast=gs_model.n_latent)),
            "synthesis": tf_state("G_synthesis", "G_synthesis_stylegan2", synthesis, static_kwargs=kwargs,
                                  module_src=module_src),
        }
    states["D"] = {"own": tf_state("D", "training.networks_stylegan2.D_stylegan2",
                                   tf_discriminator_variables(d_model), module_src=module_src,
                                   static_kwargs={"resolution": d_model.size, "num_channels": 3, "label_size": 0})}
    if edit is not None:
        edit(states)
    with fake_modules("dnnlib.tflib.network") as mods:
        network = _tf_network_class(mods["dnnlib.tflib.network"])
        nets = {}
        for key in ("G", "Gs"):
            st = states[key]
            comps = {"mapping": network(st["mapping"]), "synthesis": network(st["synthesis"])}
            nets[key] = network(dict(st["own"], components=comps))
        nets["D"] = network(states["D"]["own"])
        path.write_bytes(pickle.dumps((nets["G"], nets["D"], nets["Gs"]), protocol=3))
    return states


# ---------------------------------------------------------------------------------------------------------------------
# stylegan2-ada-pytorch layout.


class AdaModule:
    """Plain description of one persistent module: parameters, buffers, children, constructor kwargs."""

    def __init__(self, class_name: str, params: dict | None = None, buffers: dict | None = None,
                 children: dict | None = None, init_kwargs: dict | None = None, attrs: dict | None = None):
        self.class_name = class_name
        self.params = OrderedDict(params or {})
        self.buffers = OrderedDict(buffers or {})
        self.children = OrderedDict(children or {})
        self.init_kwargs = dict(init_kwargs or {})
        self.attrs = dict(attrs or {})


def _setup_filter() -> torch.Tensor:
    f = torch.tensor([1.0, 3.0, 3.0, 1.0])
    f = torch.outer(f, f)
    return f / f.sum()


def _fc(weight: torch.Tensor, bias: torch.Tensor | None, activation: str = "linear") -> AdaModule:
    params = {"weight": weight.clone()}
    params["bias"] = bias.clone() if bias is not None else None
    return AdaModule("FullyConnectedLayer", params, attrs={"activation": activation,
                                                           "weight_gain": np.float64(1 / math.sqrt(weight.shape[1]))})


def ada_generator_module(model: Generator, w_avg: torch.Tensor) -> AdaModule:
    sd = model.state_dict()
    mapping = AdaModule("MappingNetwork", buffers={"w_avg": w_avg.clone()}, children={
        f"fc{i}": _fc(sd[f"style.{i + 1}.weight"], sd[f"style.{i + 1}.bias"], "lrelu")
        for i in range(model.cfg.n_mlp)})

    def layer(src: str, noise_key: str) -> AdaModule:
        noise = sd[noise_key]
        return AdaModule(
            "SynthesisLayer",
            params={"weight": sd[f"{src}.conv.weight"][0].clone(), "noise_strength": sd[f"{src}.noise.weight"].reshape(()),
                    "bias": sd[f"{src}.activate.bias"].clone()},
            buffers={"resample_filter": _setup_filter(), "noise_const": noise.reshape(noise.shape[2:]).clone()},
            children={"affine": _fc(sd[f"{src}.conv.modulation.weight"], sd[f"{src}.conv.modulation.bias"])})

    def torgb(src: str) -> AdaModule:
        return AdaModule("ToRGBLayer", params={"weight": sd[f"{src}.conv.weight"][0].clone(),
                                               "bias": sd[f"{src}.bias"].reshape(-1).clone()},
                         children={"affine": _fc(sd[f"{src}.conv.modulation.weight"],
                                                 sd[f"{src}.conv.modulation.bias"])})

    blocks = OrderedDict()
    blocks["b4"] = AdaModule("SynthesisBlock", params={"const": sd["input.input"][0].clone()},
                             buffers={"resample_filter": _setup_filter()},
                             children={"conv1": layer("conv1", "noises.noise_0"), "torgb": torgb("to_rgb1")})
    for k in range(model.log_size - 2):
        res = 2 ** (k + 3)
        blocks[f"b{res}"] = AdaModule("SynthesisBlock", buffers={"resample_filter": _setup_filter()}, children={
            "conv0": layer(f"convs.{2 * k}", f"noises.noise_{2 * k + 1}"),
            "conv1": layer(f"convs.{2 * k + 1}", f"noises.noise_{2 * k + 2}"),
            "torgb": torgb(f"to_rgbs.{k}")})
    synthesis = AdaModule("SynthesisNetwork", children=blocks)
    return AdaModule("Generator", children={"synthesis": synthesis, "mapping": mapping}, init_kwargs={
        "z_dim": model.style_dim, "c_dim": 0, "w_dim": model.style_dim, "img_resolution": model.size,
        "img_channels": 3, "mapping_kwargs": {"num_layers": model.cfg.n_mlp},
        "synthesis_kwargs": {"channel_base": 256, "channel_max": 16, "num_fp16_res": 0, "conv_clamp": None}})


def ada_discriminator_module(model: Discriminator) -> AdaModule:
    sd = model.state_dict()
    size = model.size

    def conv(key: str, bias_key: str | None) -> AdaModule:
        return AdaModule("Conv2dLayer", params={"weight": sd[key].clone(),
                                                "bias": sd[bias_key].clone() if bias_key else None},
                         buffers={"resample_filter": _setup_filter()})

    blocks = OrderedDict()
    for i in range(1, int(math.log2(size)) - 1):
        res = size // 2 ** (i - 1)
        children = OrderedDict()
        if i == 1:
            children["fromrgb"] = conv("convs.0.0.weight", "convs.0.1.bias")
        children["conv0"] = conv(f"convs.{i}.conv1.0.weight", f"convs.{i}.conv1.1.bias")
        children["conv1"] = conv(f"convs.{i}.conv2.1.weight", f"convs.{i}.conv2.2.bias")
        children["skip"] = conv(f"convs.{i}.skip.1.weight", None)
        blocks[f"b{res}"] = AdaModule("DiscriminatorBlock", buffers={"resample_filter": _setup_filter()},
                                      children=children)
    blocks["b4"] = AdaModule("DiscriminatorEpilogue", children={
        "mbstd": AdaModule("MinibatchStdLayer"),
        "conv": conv("final_conv.0.weight", "final_conv.1.bias"),
        "fc": _fc(sd["final_linear.0.weight"], sd["final_linear.0.bias"], "lrelu"),
        "out": _fc(sd["final_linear.1.weight"], sd["final_linear.1.bias"])})
    return AdaModule("Discriminator", children=blocks, init_kwargs={"c_dim": 0, "img_resolution": size,
                                                                     "img_channels": 3, "architecture": "resnet"})


def write_ada_pickle(path: Path, g_ema: Generator, d_model: Discriminator, *, g_model: Generator | None = None,
                     w_avg: torch.Tensor | None = None, module_src: str = "# networks.py\n", edit: Any = None,
                     extra_modules: dict | None = None) -> None:
    """Pickle {'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs'} the way stylegan2-ada-pytorch saves it."""
    w_avg = w_avg if w_avg is not None else torch.randn(g_ema.style_dim)
    tree = {"G": ada_generator_module(g_model or g_ema, w_avg), "D": ada_discriminator_module(d_model),
            "G_ema": ada_generator_module(g_ema, w_avg)}
    if edit is not None:
        edit(tree)
    with fake_modules("torch_utils.persistence", "dnnlib.util") as mods:
        persistence = mods["torch_utils.persistence"]
        util = mods["dnnlib.util"]

        def _reconstruct_persistent_obj(meta):  # never called: the test reads the pickle with the restricted reader
            raise AssertionError("the fake persistence module must not be used to unpickle")

        _reconstruct_persistent_obj.__module__ = persistence.__name__
        _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
        persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
        easy = type("EasyDict", (dict,), {"__module__": util.__name__})
        util.EasyDict = easy

        class _Persistent:
            def __init__(self, meta: dict) -> None:
                self.meta = meta

            def __reduce__(self):
                return (_reconstruct_persistent_obj, (self.meta,))

        def build(mod: AdaModule) -> _Persistent:
            state = {"training": False,
                     "_parameters": OrderedDict((k, torch.nn.Parameter(v, requires_grad=False) if v is not None
                                                 else None) for k, v in mod.params.items()),
                     "_buffers": OrderedDict(mod.buffers), "_non_persistent_buffers_set": set(),
                     "_backward_hooks": OrderedDict(), "_forward_hooks": OrderedDict(),
                     "_forward_pre_hooks": OrderedDict(), "_state_dict_hooks": OrderedDict(),
                     "_load_state_dict_pre_hooks": OrderedDict(),
                     "_modules": OrderedDict((k, build(v)) for k, v in mod.children.items()),
                     "_init_args": (), "_init_kwargs": easy(mod.init_kwargs)}
            state.update(mod.attrs)
            return _Persistent({"type": "class", "version": 6, "module_src": module_src,
                                "class_name": mod.class_name, "state": state})

        data = {k: build(v) for k, v in tree.items()}
        data["augment_pipe"] = None
        data["training_set_kwargs"] = easy(path="afhq.zip", resolution=g_ema.size, use_labels=False)
        if extra_modules:
            data.update(extra_modules)
        path.write_bytes(pickle.dumps(data, protocol=4))


# ---------------------------------------------------------------------------------------------------------------------
# A real official TF network, built and pickled by NVIDIA's own code in the legacy environment.

# The tiny official network: 32px, channels 32/32/16/8 (fmap_base 128 capped at 32), 2 mapping layers of width 64.
OFFICIAL_TINY_KWARGS = dict(num_channels=3, resolution=32, label_size=0, fmap_base=128, fmap_max=32)
OFFICIAL_TINY_G_KWARGS = dict(latent_size=64, dlatent_size=64, mapping_layers=2, mapping_fmaps=64)

# Runs in the legacy environment (Python 3.7, TF 1.15, numpy; no torch). It builds G, D and Gs exactly as NVIDIA's
# training loop does (tflib.Network with func_name=training.networks_stylegan2.G_main / D_stylegan2, Gs = G.clone),
# sets every variable to random values and pickles (G, D, Gs) with NVIDIA's own training.misc.save_pkl.
BUILDER_SOURCE = r'''
import json
import sys

import numpy as np

repo, nvidia_repo, out_path, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
common_kwargs, g_kwargs = json.loads(sys.argv[5]), json.loads(sys.argv[6])
sys.path.insert(0, repo)
from replication.legacy_tf_crosscheck import setup_nvidia_tf

tf, tflib = setup_nvidia_tf(nvidia_repo, "training.networks_stylegan2")
G = tflib.Network("G", func_name="training.networks_stylegan2.G_main", **dict(common_kwargs, **g_kwargs))
D = tflib.Network("D", func_name="training.networks_stylegan2.D_stylegan2", **common_kwargs)
Gs = G.clone("Gs")


def random_value(name, shape, rng):
    leaf = name.split("/")[-1]
    mapping = name.startswith("G_mapping/")
    if leaf == "lod":
        return np.zeros(shape)  # anything else is a network in the middle of progressive growing
    if leaf == "mod_bias":
        return rng.randn(*shape) * 0.3  # TF adds the 1 at runtime: styles around 1, not around 0
    if leaf == "noise_strength":
        return rng.rand(*shape) * 0.3 + 0.1
    if leaf == "dlatent_avg":
        return rng.randn(*shape) * 0.5
    if leaf == "bias":
        # Mapping biases are multiplied by mapping_lrmul (0.01) at runtime; scale them up to matter.
        return rng.randn(*shape) * (30.0 if mapping else 0.2)
    if leaf == "weight" and mapping:
        return rng.randn(*shape) * 100.0  # stored as N(0, 1/lrmul), like NVIDIA's initialiser
    if leaf == "weight" and "ToRGB/" in name:
        return rng.randn(*shape) * 0.25  # keeps the summed skip outputs near [-1, 1]
    if leaf == "weight" and name.startswith("Output/"):
        return rng.randn(*shape) * 10.0  # D scores that differ clearly between images
    return rng.randn(*shape)  # conv / dense / mod weights, const, noise maps


rng = np.random.RandomState(seed)
counts = {}
for net in (G, D, Gs):
    values = {}
    for name, var in net.vars.items():
        values[var] = np.asarray(random_value(name, var.shape.as_list(), rng), dtype=np.float32)
    tflib.set_vars(values)
    counts[net.name] = len(values)
from training import misc  # NVIDIA's snapshot writer, as its training loop uses it

misc.save_pkl((G, D, Gs), out_path)
print(json.dumps({"variables": counts, "tensorflow": tf.__version__, "numpy": np.__version__}))
'''


def official_tf_skip_reason(nvidia_repo: str | None, env_name: str) -> str | None:
    """Why a test that builds an official TF network cannot run here (None: it can)."""
    if not nvidia_repo:
        return f"set {env_name}=/path/to/a/clone/of/NVlabs/stylegan2 to run the TF cross-check"
    legacy, reason = find_legacy_tf(nvidia_repo)
    if legacy is None:
        return reason + ("; run `make env-legacy`" if "legacy" in reason else "")
    if not (legacy.nvidia_repo / "training" / "networks_stylegan2.py").is_file():
        return f"{env_name}={nvidia_repo} has no training/networks_stylegan2.py (NVlabs/stylegan2 needed)"
    return None


def build_official_tf_pickle(legacy: Any, out_path: Path, seed: int, work_dir: Path) -> dict:
    """Build the tiny official (G, D, Gs) with NVIDIA's code, random variables, pickled by NVIDIA's save_pkl.

    ``legacy`` is a :class:`replication.conversion.crosscheck.LegacyTF`; returns the builder's JSON summary.
    """
    builder = work_dir / "build_tiny_tf.py"
    builder.write_text(BUILDER_SOURCE, encoding="utf-8")
    out = run_legacy(legacy, [builder, REPO_ROOT, legacy.nvidia_repo, out_path, seed,
                              json.dumps(OFFICIAL_TINY_KWARGS), json.dumps(OFFICIAL_TINY_G_KWARGS)],
                     "building the tiny official TF network", timeout=600)
    return json.loads(out.strip().splitlines()[-1])
