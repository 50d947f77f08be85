"""The legacy-environment half of `make convert`: NVIDIA's own TF graph renders a TF StyleGAN2 pickle (cross-check) and,
for ``CONVERTER=tf``, NVIDIA's own unpickler exports its variables as plain arrays.

Runs in the legacy environment only (Python 3.7, tensorflow 1.15, numpy; NO torch; see env/legacy-requirements.txt)
and needs the user's clone of NVlabs/stylegan2 (or NVlabs/stylegan2-ada for its TF pickles). The trainer-side driver
is ``replication/conversion/crosscheck.py``. What it does:

1. reads the pickle with ``replication.safe_unpickle`` (the restricted reader: the pickled module source is never run),
   or, with ``--export-arrays``, with NVIDIA's own ``pickle.load`` as the original workflow did (this *runs the module
   source stored in the pickle*: only for files whose sha256 was checked, which ``make convert`` does first);
2. builds Gs (and D) with the custom CUDA ops forced to ``impl='ref'`` (no nvcc) and, on a CPU-only TF build,
   NCHW and grouped convolutions emulated with NHWC per-group calls (stock TF 1.15 CPU kernels support neither),
   ops soft-placed on the CPU, and an inert stand-in for ``requests`` if it is not installed (dnnlib imports it only
   to download URLs): the restricted route rebuilds them from the *clone's* code,
   ``dnnlib.tflib.Network(name, func_name=<module>.<build_func_name>, **static_kwargs)``, and
3. (restricted route) copies every variable from the pickled arrays into that graph (``tflib.set_vars``), checking
   names and shapes;
4. renders N images from z ~ ``np.random.RandomState(seed).randn(N, z_dim)`` at truncation psi (default 0.5) and
   optional ``truncation_cutoff`` with ``randomize_noise=False`` (the fixed noise variables), scores them with D, and
   saves ``z``, ``images`` (NCHW, raw TF output), ``noise{i}``, ``truncation_psi``, ``truncation_cutoff`` (when set),
   ``seed``, ``d_scores`` and, with ``--check-unfused``, ``images_unfused`` (the same render through NVIDIA's
   non-fused modulated conv, which needs no grouped convolution: it checks the CPU emulation of the fused path) to an
   ``.npz``; with ``--case SEED:PSI[:CUTOFF]`` (repeatable) ``--out`` is a folder and case k goes to ``case{k}.npz``;
5. with ``--export-arrays OUT.npz``: writes every variable of G, D and Gs (``Network.__getstate__``, NVIDIA's own
   pickle export) as plain arrays plus a JSON description (:func:`write_network_arrays`); the trainer environment
   builds the checkpoint from it with ``np.load(allow_pickle=False)`` (``replication/conversion/tf_arrays.py``).

`make convert NVIDIA_TF_REPO=...` runs all of it for every official file. By hand, in the main (torch) environment,
compare with our converted checkpoint::

    .venv-legacy/bin/python replication/legacy_tf_crosscheck.py --nvidia-repo ~/src/stylegan2 \\
        --pickle cache/weights/stylegan2-church-config-f.pkl --out cache/crosscheck/church_tf.npz
    .venv/bin/python -m replication.convert --compare-npz cache/crosscheck/church_tf.npz \\
        cache/converted/stylegan2-church-config-f.pt cache/crosscheck/church_grid.png

The second command (``replication.convert.compare_with_tf_render``) prints the max |TF - ours| (images and D scores)
and writes a TF / ours / |diff| grid PNG, as the original convert_weight.py did. Expect differences around
1e-6..1e-3 (different op order and fp32 accumulation), not 0; a tiny random 32px network measured 2e-6.
"""
from __future__ import absolute_import, annotations, division, print_function

import argparse
import hashlib
import importlib
import json
import os
import pickle
import sys
from collections import OrderedDict

import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from replication.safe_unpickle import TFNetworkState, UnsafePickleError, safe_load  # noqa: E402  (needs the path)

DEFAULT_N = {1024: 4, 512: 9, 256: 16}
_PATCHED = []  # non-empty once setup_nvidia_tf has patched TF and dnnlib in this process
D_CHUNK = 4  # images per D call: the minibatch-stddev group size of the official configs and of our Discriminator
ARRAYS_FORMAT = "nada-tf-network-arrays"  # the --export-arrays file; read by replication/conversion/tf_arrays.py
ARRAYS_FORMAT_VERSION = 1
NETWORK_ORDER = ("G", "D", "Gs")  # the order of NVIDIA's snapshot tuple


class CrossCheckError(ValueError):
    """The legacy cross-check cannot run; the message says what is wrong and how to fix it."""


def read_tf_pickle(path):
    """(G, D, Gs) as TFNetworkState records, read with the restricted unpickler."""
    if not os.path.isfile(path):
        raise CrossCheckError("pickle not found: %s; pass --pickle pointing at a TF StyleGAN2 .pkl" % path)
    try:
        data = safe_load(path)
    except UnsafePickleError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure of an untrusted file becomes one clear line
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CrossCheckError("%s is not a readable pickle (%s: %s)" % (path, type(exc).__name__, first))
    if not (isinstance(data, tuple) and len(data) == 3 and all(isinstance(n, TFNetworkState) for n in data)):
        raise CrossCheckError("%s is not a TF StyleGAN2 pickle (G, D, Gs)" % path)
    return data


def guess_networks_module(state):
    """NVIDIA module that defines the build functions: stylegan2 or stylegan2-ada (TF)."""
    src = state.build_module_src
    if "def G_synthesis_stylegan2" in src:
        return "training.networks_stylegan2"
    return "training.networks"


def _install_requests_stand_in():
    """Let ``dnnlib.util`` import without the ``requests`` package (it needs it only to download URLs)."""
    try:
        importlib.import_module("requests")
        return
    except ImportError:
        pass
    import types
    from urllib.parse import urljoin, urlparse

    def no_downloads(*args, **kwargs):
        raise CrossCheckError("the legacy cross-check never downloads; pass local files (requests is not installed)")

    stand_in = types.ModuleType("requests")
    stand_in.compat = types.SimpleNamespace(urlparse=urlparse, urljoin=urljoin)
    stand_in.Session = no_downloads
    sys.modules["requests"] = stand_in


def _force_ref_ops():
    # The networks module binds these names at import, so patch before importing it; inner calls go through the
    # module attribute and are covered too.
    from dnnlib.tflib.ops import fused_bias_act as fba
    from dnnlib.tflib.ops import upfirdn_2d as ufd

    original_upfirdn, original_fba = ufd.upfirdn_2d, fba.fused_bias_act

    def upfirdn_ref(*args, **kwargs):
        kwargs["impl"] = "ref"
        return original_upfirdn(*args, **kwargs)

    def fused_bias_act_ref(*args, **kwargs):
        kwargs["impl"] = "ref"
        return original_fba(*args, **kwargs)

    ufd.upfirdn_2d = upfirdn_ref
    fba.fused_bias_act = fused_bias_act_ref


def _route_nchw_through_nhwc(tf):
    """Make NVIDIA's NCHW and grouped convolutions run on stock TF 1.15 CPU kernels (NHWC, no groups).

    The CPU kernels reject data_format='NCHW', so activations are transposed around each call. They also reject
    grouped convolutions, which NVIDIA's fused modulated conv uses (the minibatch folded into channel groups, one
    group per sample, cuDNN on GPU): those run one group at a time with ``tf.map_fn``; the group count is a runtime
    value (the batch size), so the split is dynamic and the static spatial shapes are restored afterwards.
    """
    conv2d, conv2d_transpose = tf.nn.conv2d, tf.nn.conv2d_transpose

    def to_nhwc(x):
        return tf.transpose(x, [0, 2, 3, 1])

    def to_nchw(x):
        return tf.transpose(x, [0, 3, 1, 2])

    def perm4(values):
        values = list(values)
        return [values[0], values[2], values[3], values[1]]

    def dim(x, i):
        static = x.shape[i].value
        return static if static is not None else tf.shape(x)[i]

    def static_int(value):
        return value if isinstance(value, int) else None

    def run_groups(x, filters, groups, x_group_channels, conv_one, out_channels):
        # x [N, H, W, groups * x_group_channels] -> [groups, N, H, W, x_group_channels]; channel c = g * Cg + i.
        n, h, w = dim(x, 0), dim(x, 1), dim(x, 2)
        xs = tf.transpose(tf.reshape(x, [n, h, w, groups, x_group_channels]), [3, 0, 1, 2, 4])
        ys = tf.map_fn(lambda pair: conv_one(pair[0], pair[1]), (xs, filters), dtype=x.dtype)
        out_h, out_w = dim(ys, 2), dim(ys, 3)
        out = tf.reshape(tf.transpose(ys, [1, 2, 3, 0, 4]), [n, out_h, out_w, groups * out_channels])
        out.set_shape([x.shape[0].value, static_int(out_h), static_int(out_w), None])
        return out

    def conv2d_nhwc(x, filt, strides, padding, **kwargs):
        filter_in = filt.shape[2].value
        if filter_in is not None and x.shape[3].value == filter_in:
            return conv2d(x, filt, strides=strides, padding=padding, data_format="NHWC", **kwargs)
        # Grouped: filter [k, k, Cg, groups * Og]; output channels of group g are g * Og .. (g + 1) * Og - 1.
        filter_in = dim(filt, 2)
        groups = dim(x, 3) // filter_in
        group_out = dim(filt, 3) // groups
        kh, kw = dim(filt, 0), dim(filt, 1)
        filters = tf.transpose(tf.reshape(filt, [kh, kw, filter_in, groups, group_out]), [3, 0, 1, 2, 4])
        return run_groups(x, filters, groups, filter_in,
                          lambda xg, fg: conv2d(xg, fg, strides=strides, padding=padding, data_format="NHWC", **kwargs),
                          group_out)

    def conv2d_transpose_nhwc(x, filt, output_shape, strides, padding, **kwargs):
        output_shape = list(output_shape)
        group_out = filt.shape[2].value
        if group_out is not None and static_int(output_shape[3]) == group_out:
            return conv2d_transpose(x, filt, output_shape, strides, padding=padding, data_format="NHWC", **kwargs)
        # Grouped: filter [k, k, Og, groups * Cg] maps input channels of group g (g * Cg ..) to outputs g * Og ...
        group_out = dim(filt, 2)
        groups = output_shape[3] // group_out
        group_in = dim(filt, 3) // groups
        kh, kw = dim(filt, 0), dim(filt, 1)
        filters = tf.transpose(tf.reshape(filt, [kh, kw, group_out, groups, group_in]), [3, 0, 1, 2, 4])
        group_shape = [output_shape[0], output_shape[1], output_shape[2], group_out]
        return run_groups(x, filters, groups, group_in,
                          lambda xg, fg: conv2d_transpose(xg, fg, group_shape, strides, padding=padding,
                                                          data_format="NHWC", **kwargs),
                          group_out)

    def conv2d_cpu(input, filter=None, strides=None, padding=None, data_format="NHWC", **kwargs):  # noqa: A002
        if data_format != "NCHW":
            return conv2d_nhwc(input, filter, strides, padding, **kwargs)
        return to_nchw(conv2d_nhwc(to_nhwc(input), filter, perm4(strides), padding, **kwargs))

    def conv2d_transpose_cpu(value, filter=None, output_shape=None, strides=None, padding="SAME",  # noqa: A002
                             data_format="NHWC", **kwargs):
        if data_format != "NCHW":
            return conv2d_transpose_nhwc(value, filter, output_shape, strides, padding, **kwargs)
        return to_nchw(conv2d_transpose_nhwc(to_nhwc(value), filter, perm4(output_shape), perm4(strides), padding,
                                             **kwargs))

    tf.nn.conv2d = conv2d_cpu
    tf.nn.conv2d_transpose = conv2d_transpose_cpu


def setup_nvidia_tf(nvidia_repo, networks_module=None):
    """Import TF and the clone's dnnlib (and networks module) with the CPU workarounds applied; returns (tf, tflib).

    The patches are in place before any network code is imported or unpickled, so a network built from a pickle's
    own module source (NVIDIA's pickle.load) binds the patched ops too.
    """
    if not os.path.isdir(os.path.join(nvidia_repo, "dnnlib", "tflib")):
        raise CrossCheckError("%s is not a clone of NVlabs/stylegan2(-ada): no dnnlib/tflib; pass --nvidia-repo "
                              "pointing at one" % nvidia_repo)
    repo = os.path.abspath(nvidia_repo)
    if repo not in sys.path:
        sys.path.insert(0, repo)
    import tensorflow as tf  # legacy env only

    _install_requests_stand_in()
    import dnnlib.tflib as tflib

    if not _PATCHED:  # patching twice would wrap the wrappers
        _force_ref_ops()
        if not tf.test.is_gpu_available():
            _route_nchw_through_nhwc(tf)
        _PATCHED.append(True)
    if networks_module:
        importlib.import_module(networks_module)
    # Network.run pins its graph to /gpu:0; soft placement lets a CPU-only TF run it.
    tflib.init_tf({"allow_soft_placement": True})
    return tf, tflib


def rebuild_and_load(state, networks_module, tflib):
    """Build a network from the NVIDIA clone's code and copy every pickled variable into it (names, shapes checked)."""
    net = tflib.Network(state.name, func_name=networks_module + "." + state.build_func_name, **state.static_kwargs)
    assignments = {}

    def collect(state, network, where):
        own = dict(state.variables)
        for name, value in own.items():
            if name not in network.own_vars:
                raise CrossCheckError("%s: pickled variable %r has no counterpart in the rebuilt graph" % (where, name))
            var = network.own_vars[name]
            if tuple(var.shape.as_list()) != tuple(np.shape(value)):
                raise CrossCheckError("%s: %s has shape %s in the pickle, %s in the graph"
                                      % (where, name, np.shape(value), var.shape.as_list()))
            assignments[var] = value
        missing = [n for n in network.own_vars if n not in own]
        if missing:
            raise CrossCheckError("%s: graph variables missing from the pickle: %s" % (where, missing[:8]))
        for key, comp in state.components.items():
            if key not in network.components:
                raise CrossCheckError("%s: component %r missing in the rebuilt graph" % (where, key))
            collect(comp, network.components[key], where + "/" + key)

    collect(state, net, state.name)
    tflib.set_vars(assignments)
    return net


def load_with_nvidia_code(path):
    """(G, D, Gs) unpickled by NVIDIA's own code, as its loaders do (runs the module source stored in the pickle).

    Call :func:`setup_nvidia_tf` first (it initialises TF and patches the ops the pickled source imports).
    """
    if not os.path.isfile(path):
        raise CrossCheckError("pickle not found: %s; pass --pickle pointing at a TF StyleGAN2 .pkl" % path)
    with open(path, "rb") as handle:
        nets = pickle.load(handle, encoding="latin1")
    if not (isinstance(nets, tuple) and len(nets) == 3):
        raise CrossCheckError("%s is not a TF StyleGAN2 pickle (G, D, Gs)" % path)
    return nets


def _plain_kwargs(kwargs, where):
    def plain(key, value):
        if isinstance(value, np.generic):
            return value.item()
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, (list, tuple)):
            return [plain(key, v) for v in value]
        if isinstance(value, dict):
            return OrderedDict((str(k), plain(key, v)) for k, v in value.items())
        raise CrossCheckError("%s: static kwarg %r is a %s, which the array export cannot carry"
                              % (where, key, type(value).__name__))

    return OrderedDict((str(k), plain(k, v)) for k, v in dict(kwargs).items())


def _network_record(net, state_of, arrays, where):
    state = state_of(net)
    variables = []
    for name, value in state["variables"]:
        value = np.asarray(value)
        if value.dtype.kind not in "fiub":
            raise CrossCheckError("%s: variable %s has dtype %s, not a number" % (where, name, value.dtype))
        key = "v%d" % len(arrays)
        arrays[key] = value
        variables.append([str(name), key])
    components = OrderedDict()
    for comp_key, comp in dict(state.get("components") or {}).items():
        components[str(comp_key)] = _network_record(comp, state_of, arrays, where + "/" + str(comp_key))
    return OrderedDict([("name", str(state["name"])), ("version", int(state["version"])),
                        ("build_func_name", str(state["build_func_name"])),
                        ("static_kwargs", _plain_kwargs(state.get("static_kwargs") or {}, where)),
                        ("variables", variables), ("components", components)])


def write_network_arrays(nets, out_path, source_path, state_of=None):
    """Write (G, D, Gs) as plain arrays ``v0, v1, ...`` plus ``meta``, a JSON string describing each network.

    ``state_of(net)`` gives the dict NVIDIA's ``Network.__getstate__`` returns (the default: call it, i.e. NVIDIA's
    own pickle export); its ``components`` are networks again. ``meta`` names the source file and its sha256. Nothing
    in the file needs unpickling.
    """
    state_of = state_of or (lambda net: net.__getstate__())
    arrays = OrderedDict()
    records = OrderedDict((key, _network_record(net, state_of, arrays, key)) for key, net in zip(NETWORK_ORDER, nets))
    digest = hashlib.sha256()
    with open(source_path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    meta = OrderedDict([("format", ARRAYS_FORMAT), ("format_version", ARRAYS_FORMAT_VERSION),
                        ("source", OrderedDict([("filename", os.path.basename(source_path)),
                                                ("sha256", digest.hexdigest())])),
                        ("networks", records)])
    _atomic_savez(out_path, dict(arrays, meta=np.array(json.dumps(meta))))


def _atomic_savez(path, arrays):
    out_dir = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(out_dir):
        os.makedirs(out_dir)
    tmp = os.path.join(out_dir, ".tmp-" + os.path.basename(path))
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(tmp, path)


def noise_maps(gs, tflib):
    """The synthesis network's fixed noise variables by name (noise0, noise1, ...), read from the graph."""
    own = gs.components["synthesis"].own_vars
    names = [name for name in own if name.startswith("noise")]
    return dict(zip(names, tflib.run([own[name] for name in names])))


def render(gs, n, seed, psi, cutoff=None):
    """z and images (NCHW) of a Gs render at truncation psi (layers < cutoff only, when given) with the fixed noise."""
    z_dim = gs.input_shape[1]
    z = np.random.RandomState(seed).randn(n, z_dim).astype(np.float32)
    images = gs.run(z, None, truncation_psi=psi, truncation_cutoff=cutoff, randomize_noise=False)
    return z, np.asarray(images, dtype=np.float32)


def parse_case(text):
    """'SEED:PSI' or 'SEED:PSI:CUTOFF' -> (seed, psi, cutoff or None)."""
    parts = text.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError(text)
        seed, psi = int(parts[0]), float(parts[1])
        cutoff = int(parts[2]) if len(parts) == 3 and parts[2] not in ("", "none", "None") else None
    except ValueError:
        raise CrossCheckError("--case must be SEED:PSI or SEED:PSI:CUTOFF (e.g. 0:1 or 2:0.7:4), got %r" % text)
    if cutoff is not None and cutoff < 0:
        raise CrossCheckError("--case %r: the cutoff must be >= 0" % text)
    return seed, psi, cutoff


def discriminator_scores(d, images, chunk=D_CHUNK):
    """D's raw scores [N, 1] for NCHW images, run in chunks of ``chunk`` images.

    The minibatch-stddev layer mixes the images of a chunk, and TF's reshape needs the chunk to divide by
    min(group size, chunk); chunks of 4 (the last one smaller) work for any N and are easy to repeat on the torch side.
    """
    labels = np.zeros([len(images), 0], dtype=np.float32)
    return np.asarray(d.run(images, labels, minibatch_size=chunk), dtype=np.float32)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Render a TF StyleGAN2 pickle with NVIDIA's TF code (legacy env).")
    parser.add_argument("--nvidia-repo", required=True, help="clone of NVlabs/stylegan2 or NVlabs/stylegan2-ada")
    parser.add_argument("--pickle", required=True, help="the TF pickle (G, D, Gs)")
    parser.add_argument("--out", default=None, help="output .npz (a folder of case{k}.npz with --case)")
    parser.add_argument("--n", type=int, default=None, help="number of images (default 4/9/16 at 1024/512/256)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--psi", type=float, default=0.5)
    parser.add_argument("--truncation-cutoff", type=int, default=None,
                        help="truncate only W+ layers with index < this (NVIDIA's truncation_cutoff)")
    parser.add_argument("--case", action="append", default=[], metavar="SEED:PSI[:CUTOFF]",
                        help="render this case (repeatable; replaces --seed/--psi/--truncation-cutoff)")
    parser.add_argument("--networks-module", default=None, help="override: module defining G_main")
    parser.add_argument("--no-discriminator", action="store_true", help="do not score the images with the pickle's D")
    parser.add_argument("--check-unfused", action="store_true",
                        help="also render through NVIDIA's non-fused modulated conv (images_unfused in the npz)")
    parser.add_argument("--export-arrays", default=None, metavar="NPZ",
                        help="unpickle with NVIDIA's own code (runs the pickle's module source: trusted files only) "
                             "and write every variable of G, D, Gs as plain arrays; renders then use that network")
    args = parser.parse_args(argv)
    try:
        if args.n is not None and args.n < 1:
            raise CrossCheckError("--n must be at least 1, got %d" % args.n)
        if args.out is None and args.export_arrays is None:
            raise CrossCheckError("pass --out (renders) and/or --export-arrays")
        cases = [parse_case(c) for c in args.case] or [(args.seed, args.psi, args.truncation_cutoff)]
        if args.export_arrays:
            _, tflib = setup_nvidia_tf(args.nvidia_repo, args.networks_module)
            _, d, gs = nets = load_with_nvidia_code(args.pickle)
            write_network_arrays(nets, args.export_arrays, args.pickle)
            print("wrote %s: G, D, Gs unpickled by NVIDIA's code, exported as plain arrays" % args.export_arrays)
        else:
            _, d_state, gs_state = read_tf_pickle(args.pickle)
            module = args.networks_module or guess_networks_module(gs_state)
            _, tflib = setup_nvidia_tf(args.nvidia_repo, module)
            gs = rebuild_and_load(gs_state, module, tflib)
            d = None if args.no_discriminator or args.out is None else rebuild_and_load(d_state, module, tflib)
        if args.out is None:
            return 0
        resolution = int(gs.output_shape[-1])
        n = args.n or DEFAULT_N.get(resolution, 4)
        noise = noise_maps(gs, tflib)
        gs_unfused = gs.clone(gs.name + "_unfused", fused_modconv=False) if args.check_unfused else None
        for k, (seed, psi, cutoff) in enumerate(cases):
            z, images = render(gs, n, seed, psi, cutoff)
            extra = {}
            if gs_unfused is not None:
                # Same variables, other graph: NVIDIA's non-fused path needs no grouped conv: it checks our emulation.
                extra["images_unfused"] = render(gs_unfused, n, seed, psi, cutoff)[1]
            if not args.no_discriminator:
                extra["d_scores"] = discriminator_scores(d, images)
                extra["d_chunk"] = np.int64(D_CHUNK)
            if cutoff is not None:
                extra["truncation_cutoff"] = np.int64(cutoff)
            out = os.path.join(args.out, "case%d.npz" % k) if args.case else args.out
            _atomic_savez(out, dict(noise, z=z, images=images, truncation_psi=np.float32(psi), seed=np.int64(seed),
                                    **extra))
            print("wrote %s: %d images at %dpx, psi %.2f, cutoff %s, image range [%.3f, %.3f]%s"
                  % (out, n, resolution, psi, cutoff, images.min(), images.max(),
                     "" if args.no_discriminator else ", D scores"))
        return 0
    except (CrossCheckError, ValueError, ImportError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print("error: %s" % first, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
