"""Render a TF StyleGAN2 pickle with NVIDIA's own TF graph (no pickle.load) to cross-check our TF-free conversion.

Runs in the legacy environment only (Python 3.7, tensorflow 1.15, numpy; NO torch; see env/legacy-requirements.txt)
and needs the user's clone of NVlabs/stylegan2 (or NVlabs/stylegan2-ada for its TF pickles). What it does:

1. reads the pickle with ``replication.safe_unpickle`` (the restricted reader: the pickled module source is never run);
2. rebuilds Gs (and D) from the *clone's* code, ``dnnlib.tflib.Network(name, func_name=<module>.<build_func_name>,
   **static_kwargs)``, with the custom CUDA ops forced to ``impl='ref'`` (no nvcc) and, on a CPU-only TF build,
   NCHW and grouped convolutions emulated with NHWC per-group calls (stock TF 1.15 CPU kernels support neither),
   ops soft-placed on the CPU, and an inert stand-in for ``requests`` if it is not installed (dnnlib imports it only
   to download URLs);
3. copies every variable from the pickled arrays into that graph (``tflib.set_vars``), checking names and shapes;
4. renders N images from z ~ ``np.random.RandomState(seed).randn(N, z_dim)`` at truncation psi (default 0.5) with
   ``randomize_noise=False`` (the fixed noise variables), scores them with D, and saves ``z``, ``images`` (NCHW, raw
   TF output), ``noise{i}``, ``truncation_psi``, ``d_scores`` and, with ``--check-unfused``, ``images_unfused``
   (the same render through NVIDIA's non-fused modulated conv, which needs no grouped convolution: it checks the
   CPU emulation of the fused path) to an ``.npz``.

Then, in the main (torch) environment, compare with our converted checkpoint::

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
import importlib
import os
import sys

import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from replication.safe_unpickle import TFNetworkState, UnsafePickleError, safe_load  # noqa: E402  (needs the path)

DEFAULT_N = {1024: 4, 512: 9, 256: 16}
_PATCHED = []  # non-empty once setup_nvidia_tf has patched TF and dnnlib in this process
D_CHUNK = 4  # images per D call: the minibatch-stddev group size of the official configs and of our Discriminator


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


def setup_nvidia_tf(nvidia_repo, networks_module):
    """Import TF and the clone's dnnlib / networks module with the CPU workarounds applied; returns (tf, tflib)."""
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


def render(gs, gs_state, n, seed, psi):
    """z, images (NCHW) and the fixed noise maps of a Gs render."""
    z_dim = gs.input_shape[1]
    z = np.random.RandomState(seed).randn(n, z_dim).astype(np.float32)
    images = gs.run(z, None, truncation_psi=psi, randomize_noise=False)
    synthesis = gs_state.components["synthesis"]
    noise = dict((name, value) for name, value in synthesis.variables if name.startswith("noise"))
    return z, np.asarray(images, dtype=np.float32), noise


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
    parser.add_argument("--out", required=True, help="output .npz")
    parser.add_argument("--n", type=int, default=None, help="number of images (default 4/9/16 at 1024/512/256)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--psi", type=float, default=0.5)
    parser.add_argument("--networks-module", default=None, help="override: module defining G_main")
    parser.add_argument("--no-discriminator", action="store_true", help="do not score the images with the pickle's D")
    parser.add_argument("--check-unfused", action="store_true",
                        help="also render through NVIDIA's non-fused modulated conv (images_unfused in the npz)")
    args = parser.parse_args(argv)
    try:
        if args.n is not None and args.n < 1:
            raise CrossCheckError("--n must be at least 1, got %d" % args.n)
        _, d_state, gs_state = read_tf_pickle(args.pickle)
        module = args.networks_module or guess_networks_module(gs_state)
        _, tflib = setup_nvidia_tf(args.nvidia_repo, module)
        gs = rebuild_and_load(gs_state, module, tflib)
        resolution = int(gs.output_shape[-1])
        n = args.n or DEFAULT_N.get(resolution, 4)
        z, images, noise = render(gs, gs_state, n, args.seed, args.psi)
        extra = {}
        if args.check_unfused:
            # Same variables, other graph: NVIDIA's non-fused path needs no grouped conv, so it checks our emulation.
            gs_unfused = gs.clone(gs.name + "_unfused", fused_modconv=False)
            _, extra["images_unfused"], _ = render(gs_unfused, gs_state, n, args.seed, args.psi)
        if not args.no_discriminator:
            d = rebuild_and_load(d_state, module, tflib)
            extra["d_scores"] = discriminator_scores(d, images)
            extra["d_chunk"] = np.int64(D_CHUNK)
        out_dir = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(out_dir):
            os.makedirs(out_dir)
        tmp = os.path.join(out_dir, ".tmp-" + os.path.basename(args.out))
        with open(tmp, "wb") as handle:
            np.savez(handle, z=z, images=images, truncation_psi=np.float32(args.psi), **dict(noise, **extra))
        os.replace(tmp, args.out)
        print("wrote %s: %d images at %dpx, psi %.2f, image range [%.3f, %.3f]%s"
              % (args.out, n, resolution, args.psi, images.min(), images.max(),
                 "" if args.no_discriminator else ", D scores"))
        return 0
    except (CrossCheckError, ValueError, ImportError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
