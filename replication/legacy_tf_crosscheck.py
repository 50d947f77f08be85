"""Render a TF StyleGAN2 pickle with NVIDIA's own TF graph (no pickle.load) to cross-check our TF-free conversion.

Runs in the legacy environment only (Python 3.7, tensorflow 1.15, numpy; NO torch; see env/legacy-requirements.txt)
and needs the user's clone of NVlabs/stylegan2 (or NVlabs/stylegan2-ada for its TF pickles). What it does:

1. reads the pickle with ``replication.safe_unpickle`` (the restricted reader: the pickled module source is never run);
2. rebuilds Gs from the *clone's* code, ``dnnlib.tflib.Network(name, func_name=<module>.<build_func_name>,
   **static_kwargs)``, with the custom CUDA ops forced to ``impl='ref'`` (no nvcc) and, on a CPU-only TF build, NCHW
   convolutions routed through NHWC (stock TF 1.15 CPU kernels only support NHWC);
3. copies every variable from the pickled arrays into that graph (``tflib.set_vars``), checking names and shapes;
4. renders N images from z ~ ``np.random.RandomState(seed).randn(N, z_dim)`` at truncation psi (default 0.5) with
   ``randomize_noise=False`` (the fixed noise variables), and saves ``z``, ``images`` (NCHW, raw TF output),
   ``noise{i}`` and ``truncation_psi`` to an ``.npz``.

Then, in the main (torch) environment, compare with our converted checkpoint::

    .venv-legacy/bin/python replication/legacy_tf_crosscheck.py --nvidia-repo ~/src/stylegan2 \\
        --pickle cache/weights/stylegan2-church-config-f.pkl --out cache/crosscheck/church_tf.npz
    .venv/bin/python -m replication.convert --compare-npz cache/crosscheck/church_tf.npz \\
        cache/converted/stylegan2-church-config-f.pt cache/crosscheck/church_grid.png

The second command (``replication.convert.compare_with_tf_render``) prints the max |TF - ours| and writes a
TF / ours / |diff| grid PNG, as the original convert_weight.py did. Expect differences around 1e-4..1e-3 (different
op order and fp32 accumulation), not 0.
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

from replication.safe_unpickle import TFNetworkState, safe_load  # noqa: E402  (after the sys.path fix above)

DEFAULT_N = {1024: 4, 512: 9, 256: 16}


class CrossCheckError(ValueError):
    """The legacy cross-check cannot run; the message says what is wrong and how to fix it."""


def read_tf_pickle(path):
    """(G, D, Gs) as TFNetworkState records, read with the restricted unpickler."""
    data = safe_load(path)
    if not (isinstance(data, tuple) and len(data) == 3 and all(isinstance(n, TFNetworkState) for n in data)):
        raise CrossCheckError("%s is not a TF StyleGAN2 pickle (G, D, Gs)" % path)
    return data


def guess_networks_module(state):
    """NVIDIA module that defines the build functions: stylegan2 or stylegan2-ada (TF)."""
    src = state.build_module_src
    if "def G_synthesis_stylegan2" in src:
        return "training.networks_stylegan2"
    return "training.networks"


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
    """Stock TF 1.15 CPU kernels reject NCHW conv2d / conv2d_transpose; transpose around them instead."""
    conv2d, conv2d_transpose = tf.nn.conv2d, tf.nn.conv2d_transpose

    def to_nhwc(x):
        return tf.transpose(x, [0, 2, 3, 1])

    def to_nchw(x):
        return tf.transpose(x, [0, 3, 1, 2])

    def perm4(values):
        values = list(values)
        return [values[0], values[2], values[3], values[1]]

    def conv2d_cpu(input, filter=None, strides=None, padding=None, data_format="NHWC", **kwargs):  # noqa: A002
        if data_format != "NCHW":
            return conv2d(input, filter, strides=strides, padding=padding, data_format=data_format, **kwargs)
        out = conv2d(to_nhwc(input), filter, strides=perm4(strides), padding=padding, data_format="NHWC", **kwargs)
        return to_nchw(out)

    def conv2d_transpose_cpu(value, filter=None, output_shape=None, strides=None, padding="SAME",  # noqa: A002
                             data_format="NHWC", **kwargs):
        if data_format != "NCHW":
            return conv2d_transpose(value, filter, output_shape, strides, padding=padding, data_format=data_format,
                                    **kwargs)
        out = conv2d_transpose(to_nhwc(value), filter, perm4(output_shape), perm4(strides), padding=padding,
                               data_format="NHWC", **kwargs)
        return to_nchw(out)

    tf.nn.conv2d = conv2d_cpu
    tf.nn.conv2d_transpose = conv2d_transpose_cpu


def rebuild_and_load(gs_state, networks_module, tflib):
    """Build Gs from the NVIDIA clone's code and copy every pickled variable into it (names and shapes checked)."""
    net = tflib.Network(gs_state.name, func_name=networks_module + "." + gs_state.build_func_name,
                        **gs_state.static_kwargs)
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

    collect(gs_state, net, gs_state.name)
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


def main(argv=None):
    parser = argparse.ArgumentParser(description="Render a TF StyleGAN2 pickle with NVIDIA's TF code (legacy env).")
    parser.add_argument("--nvidia-repo", required=True, help="clone of NVlabs/stylegan2 or NVlabs/stylegan2-ada")
    parser.add_argument("--pickle", required=True, help="the TF pickle (G, D, Gs)")
    parser.add_argument("--out", required=True, help="output .npz")
    parser.add_argument("--n", type=int, default=None, help="number of images (default 4/9/16 at 1024/512/256)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--psi", type=float, default=0.5)
    parser.add_argument("--networks-module", default=None, help="override: module defining G_main")
    args = parser.parse_args(argv)
    try:
        if not os.path.isdir(os.path.join(args.nvidia_repo, "dnnlib", "tflib")):
            raise CrossCheckError("%s is not a clone of NVlabs/stylegan2(-ada): no dnnlib/tflib" % args.nvidia_repo)
        _, _, gs_state = read_tf_pickle(args.pickle)
        sys.path.insert(0, os.path.abspath(args.nvidia_repo))
        import tensorflow as tf  # legacy env only

        import dnnlib.tflib as tflib

        _force_ref_ops()
        if not tf.test.is_gpu_available():
            _route_nchw_through_nhwc(tf)
        module = args.networks_module or guess_networks_module(gs_state)
        importlib.import_module(module)
        tflib.init_tf()
        gs = rebuild_and_load(gs_state, module, tflib)
        resolution = int(gs.output_shape[-1])
        n = args.n or DEFAULT_N.get(resolution, 4)
        z, images, noise = render(gs, gs_state, n, args.seed, args.psi)
        out_dir = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(out_dir):
            os.makedirs(out_dir)
        tmp = os.path.join(out_dir, ".tmp-" + os.path.basename(args.out))
        with open(tmp, "wb") as handle:
            np.savez(handle, z=z, images=images, truncation_psi=np.float32(args.psi), **noise)
        os.replace(tmp, args.out)
        print("wrote %s: %d images at %dpx, psi %.2f" % (args.out, n, resolution, args.psi))
        return 0
    except (CrossCheckError, ValueError, ImportError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
