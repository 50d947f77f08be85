"""Converter vs NVIDIA's real TF StyleGAN2 graph: build a tiny official (G, D, Gs), convert it, render both, compare.

The end-to-end test is opt-in (marker ``legacy``): it runs only when ``NADA_NVIDIA_TF_REPO`` points at a clone of NVlabs/stylegan2 and the legacy
TF 1.15 environment exists at ``.venv-legacy/bin/python``; skipped otherwise (CI). NVIDIA's code is only imported at
runtime from the user's clone; nothing of it lives in this repo. With ``NADA_CROSSCHECK_OUT=DIR`` the measured result
is also written to ``DIR/tf_crosscheck_tiny.json`` and the TF / ours / |diff| grid to ``DIR/tf_crosscheck_tiny.png``
(``make crosscheck`` writes them to results/convert/). The torch side's extra checks (D scores, fused vs non-fused TF
renders) are also tested here on synthetic npz files, without TF, in CI.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from replication import convert as conv
from replication.checkpoint import load_checkpoint, load_generator, save_checkpoint
from replication.networks import Discriminator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_nvidia import random_discriminator, random_generator, write_tf_pickle  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
LEGACY_PYTHON = REPO / ".venv-legacy" / "bin" / "python"
CROSSCHECK_SCRIPT = REPO / "replication" / "legacy_tf_crosscheck.py"
NVIDIA_REPO_ENV = "NADA_NVIDIA_TF_REPO"
OUT_DIR_ENV = "NADA_CROSSCHECK_OUT"
TOLERANCE = 1e-3  # float32 TF vs torch, images of range about [-2, 2]
N_IMAGES = 4
SEED = 0
PSI = 0.5

# The tiny official network: 32px, channels 32/32/16/8 (fmap_base 128 capped at 32), 2 mapping layers of width 64.
TINY_KWARGS = dict(num_channels=3, resolution=32, label_size=0, fmap_base=128, fmap_max=32)
TINY_G_KWARGS = dict(latent_size=64, dlatent_size=64, mapping_layers=2, mapping_fmaps=64)

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


def _skip_reason() -> str | None:
    nvidia_repo = os.environ.get(NVIDIA_REPO_ENV)
    if not nvidia_repo:
        return f"set {NVIDIA_REPO_ENV}=/path/to/a/clone/of/NVlabs/stylegan2 to run the TF cross-check"
    if not (Path(nvidia_repo) / "dnnlib" / "tflib").is_dir():
        return f"{NVIDIA_REPO_ENV}={nvidia_repo} is not a clone of NVlabs/stylegan2 (no dnnlib/tflib)"
    if not (Path(nvidia_repo) / "training" / "networks_stylegan2.py").is_file():
        return f"{NVIDIA_REPO_ENV}={nvidia_repo} has no training/networks_stylegan2.py (NVlabs/stylegan2 needed)"
    if not LEGACY_PYTHON.is_file():
        return f"no legacy TF 1.15 environment at {LEGACY_PYTHON.relative_to(REPO)}; run `make env-legacy`"
    return None


def _run_legacy(args: list[str], what: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)  # the main venv's paths must not leak into Python 3.7
    proc = subprocess.run([str(LEGACY_PYTHON), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-25:])
        raise AssertionError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def _git_commit(path: Path) -> str:
    try:
        proc = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"
    return proc.stdout.strip() if proc.returncode == 0 else "unknown (not a git checkout)"


def _with_edit(ckpt, dst: Path, edit) -> Path:
    """A copy of the converted checkpoint with one mapping rule deliberately broken (``edit`` changes g_ema / d)."""
    g_ema = {k: v.clone() for k, v in ckpt.g_ema.items()}
    d = {k: v.clone() for k, v in ckpt.d.items()}
    edit(g_ema, d)
    return save_checkpoint(dst, generator_config=ckpt.generator_config, g_ema=g_ema, latent_avg=ckpt.latent_avg,
                           provenance=ckpt.provenance, d=d, discriminator_config=ckpt.discriminator_config)


def _unflip_up_convs(g_ema: dict, d: dict) -> None:
    for key in [k for k in g_ema if k.startswith("convs.") and k.endswith(".conv.weight")]:
        if int(key.split(".")[1]) % 2 == 0:  # convs.{2k} are the up-sampling Conv0_up layers
            g_ema[key] = g_ema[key].flip([3, 4])


def _drop_modulation_plus_one(g_ema: dict, d: dict) -> None:
    for key in [k for k in g_ema if k.endswith("modulation.bias")]:
        g_ema[key] = g_ema[key] - 1


def _untranspose_mapping(g_ema: dict, d: dict) -> None:
    g_ema["style.2.weight"] = g_ema["style.2.weight"].t().contiguous()


def _flip_discriminator_conv(g_ema: dict, d: dict) -> None:
    d["convs.1.conv1.0.weight"] = d["convs.1.conv1.0.weight"].flip([2, 3])


BROKEN_RULES = {
    "Conv0_up kernels not flipped": ("max_abs_diff", _unflip_up_convs),
    "modulation bias without the +1": ("max_abs_diff", _drop_modulation_plus_one),
    "mapping weight not transposed": ("max_abs_diff", _untranspose_mapping),
    "discriminator conv kernel flipped": ("d_max_abs_diff", _flip_discriminator_conv),
}


def _write_results(out_dir: Path, record: dict, grid: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, write in (("tf_crosscheck_tiny.png", lambda tmp: shutil.copyfile(grid, tmp)),
                        ("tf_crosscheck_tiny.json",
                         lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8"))):
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.")
        os.close(fd)
        try:
            write(tmp)
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are committed results
            os.replace(tmp, out_dir / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@pytest.mark.legacy
def test_converter_matches_nvidia_tf_graph(tmp_path):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    nvidia_repo = Path(os.environ[NVIDIA_REPO_ENV]).resolve()
    pkl, pt, npz, grid = (tmp_path / "tiny_tf.pkl", tmp_path / "tiny.pt", tmp_path / "tiny_tf.npz",
                          tmp_path / "grid.png")

    # 1. A tiny official network from NVIDIA's code, every variable random, pickled by NVIDIA's Network.
    builder = tmp_path / "build_tiny_tf.py"
    builder.write_text(BUILDER_SOURCE, encoding="utf-8")
    built = json.loads(_run_legacy([str(builder), str(REPO), str(nvidia_repo), str(pkl), str(SEED),
                                    json.dumps(TINY_KWARGS), json.dumps(TINY_G_KWARGS)],
                                   "building the tiny TF network").strip().splitlines()[-1])
    assert built["variables"]["Gs"] == built["variables"]["G"] > 0 and built["variables"]["D"] > 0

    # 2. Our TF-free conversion (restricted unpickler, no TensorFlow), D included.
    conv.convert(pkl, pt)
    ckpt = load_checkpoint(pt)
    assert ckpt.resolution == 32 and ckpt.d is not None and ckpt.g is not None

    # 3. NVIDIA's graph rebuilt from the pickle and rendered (fused and non-fused modconv), D scores of its images.
    _run_legacy([str(CROSSCHECK_SCRIPT), "--nvidia-repo", str(nvidia_repo), "--pickle", str(pkl), "--out", str(npz),
                 "--n", str(N_IMAGES), "--seed", str(SEED), "--psi", str(PSI), "--check-unfused"],
                "legacy_tf_crosscheck.py")

    # 4. Our generator and discriminator on the same z, noise and images.
    result = conv.compare_with_tf_render(pt, npz, grid)
    with np.load(npz) as data:
        tf_images = data["images"]
    spread = float(tf_images.std(axis=0).mean())
    # A render that ignores z or saturates would hide mapping errors; the tiny net is tuned to avoid both.
    assert spread > 0.05, f"TF images barely depend on z (std across samples {spread})"
    assert -5 < result["image_min"] < -0.5 and 0.5 < result["image_max"] < 5, result
    assert result["tf_fused_vs_unfused_max_abs_diff"] <= 1e-4, result  # our CPU emulation of grouped conv
    assert result["max_abs_diff"] <= TOLERANCE, result
    assert result["d_max_abs_diff"] <= TOLERANCE, result

    # The comparison is sharp enough to catch each plausible converter bug.
    broken = {}
    for label, (metric, edit) in BROKEN_RULES.items():
        bad_pt = _with_edit(ckpt, tmp_path / "broken.pt", edit)
        broken[label] = conv.compare_with_tf_render(bad_pt, npz, tmp_path / "broken.png")[metric]
        assert broken[label] > 20 * TOLERANCE, f"{label}: the cross-check did not notice ({broken[label]})"

    out_dir = os.environ.get(OUT_DIR_ENV)
    if out_dir:
        repo_rel = "/path/to/NVlabs-stylegan2"
        record = {
            "what": "TF-free converter vs NVIDIA's TF StyleGAN2 graph on a tiny random official network",
            "max_abs_diff": result["max_abs_diff"], "mean_abs_diff": result["mean_abs_diff"],
            "tolerance": TOLERANCE, "image_range": [result["image_min"], result["image_max"]],
            "image_std_across_samples": spread,
            "d_max_abs_diff": result["d_max_abs_diff"],
            "d_score_range": [result["d_score_min"], result["d_score_max"]],
            "tf_fused_vs_unfused_max_abs_diff": result["tf_fused_vs_unfused_max_abs_diff"],
            "broken_rule_max_abs_diff": broken,
            "n_images": result["n_images"], "seed": SEED, "truncation_psi": PSI,
            "network": {"G": dict(TINY_KWARGS, **TINY_G_KWARGS), "D": dict(TINY_KWARGS),
                        "variables": built["variables"]},
            "nvidia_repo": "NVlabs/stylegan2", "nvidia_repo_commit": _git_commit(nvidia_repo),
            "legacy_env": {"python": "3.7", "tensorflow": built["tensorflow"], "numpy": built["numpy"],
                           "device": "CPU (impl='ref' ops, NCHW and grouped convs emulated in NHWC)"},
            "torch": torch.__version__,
            "commands": [
                f"make crosscheck NVIDIA_TF_REPO={repo_rel}",
                f"{NVIDIA_REPO_ENV}={repo_rel} {OUT_DIR_ENV}=results/convert OMP_NUM_THREADS=1 "
                ".venv/bin/python -m pytest -m legacy tests/test_legacy_crosscheck.py",
                "# the test runs these steps:",
                f".venv-legacy/bin/python build_tiny_tf.py . {repo_rel} tiny_tf.pkl {SEED} '<TINY_KWARGS>' "
                "'<TINY_G_KWARGS>'   # BUILDER_SOURCE in tests/test_legacy_crosscheck.py",
                "python -m replication.convert tiny_tf.pkl tiny.pt",
                f".venv-legacy/bin/python replication/legacy_tf_crosscheck.py --nvidia-repo {repo_rel} "
                f"--pickle tiny_tf.pkl --out tiny_tf.npz --n {N_IMAGES} --seed {SEED} --psi {PSI} --check-unfused",
                "python -m replication.convert --compare-npz tiny_tf.npz tiny.pt tf_crosscheck_tiny.png",
            ],
        }
        _write_results(Path(out_dir), record, grid)


# ---------------------------------------------------------------------------------------------------------------------
# Torch side of the D-score and fused/non-fused checks, on a synthetic "TF" npz (no TensorFlow needed).


def _synthetic_tf_npz(tmp_path: Path, n: int, include_d: bool = True) -> tuple[Path, dict]:
    """Convert a tiny TF-layout pickle and write the npz a perfect TF render of it would give (plus its D scores)."""
    G, D = random_generator(16, seed=0), random_discriminator(16, seed=1)
    write_tf_pickle(tmp_path / "tiny.pkl", G, D, latent_avg=np.random.RandomState(3).randn(G.style_dim) * 0.1)
    conv.convert(tmp_path / "tiny.pkl", tmp_path / "ours.pt", include_d=include_d)
    generator, ckpt = load_generator(tmp_path / "ours.pt")
    z = np.random.RandomState(0).randn(n, generator.style_dim).astype(np.float32)
    noise = [torch.randn(1, 1, 4 * 2 ** ((i + 1) // 2), 4 * 2 ** ((i + 1) // 2), generator=torch.Generator()
                         .manual_seed(i)) for i in range(generator.num_layers)]
    with torch.no_grad():
        images, _ = generator([torch.from_numpy(z)], noise_mode="given", noise=noise, truncation=0.5,
                              truncation_latent=ckpt.latent_avg.reshape(1, -1))
        scores = torch.cat([D(chunk) for chunk in images.split(4)])  # the original D, chunks of 4 as TF runs it
    arrays = {"z": z, "images": images.numpy(), "truncation_psi": np.float32(0.5), "d_scores": scores.numpy(),
              "d_chunk": np.int64(4), "images_unfused": images.numpy().copy(),
              **{f"noise{i}": t.numpy() for i, t in enumerate(noise)}}
    return tmp_path / "ours.pt", arrays


def test_compare_reports_discriminator_and_unfused_differences(tmp_path):
    # 6 images: chunks of 4 and 2, so a chunking that differed from TF's would change the minibatch-stddev groups.
    pt, arrays = _synthetic_tf_npz(tmp_path, n=6)
    np.savez(tmp_path / "exact.npz", **arrays)
    exact = conv.compare_with_tf_render(pt, tmp_path / "exact.npz", tmp_path / "exact.png")
    assert exact["max_abs_diff"] < 1e-5 and exact["d_max_abs_diff"] < 1e-5
    assert exact["tf_fused_vs_unfused_max_abs_diff"] == 0.0

    arrays["d_scores"] = arrays["d_scores"].copy()
    arrays["d_scores"][5, 0] += 0.125  # a known disagreement in the last, smaller chunk
    arrays["images_unfused"][1, 2, 3, 4] -= 0.5
    np.savez(tmp_path / "off.npz", **arrays)
    off = conv.compare_with_tf_render(pt, tmp_path / "off.npz", tmp_path / "off.png")
    assert abs(off["d_max_abs_diff"] - 0.125) < 1e-5
    assert abs(off["tf_fused_vs_unfused_max_abs_diff"] - 0.5) < 1e-6
    assert off["max_abs_diff"] == exact["max_abs_diff"]


def test_compare_scores_with_the_whole_batch_when_the_npz_gives_no_chunk(tmp_path):
    pt, arrays = _synthetic_tf_npz(tmp_path, n=8)
    ckpt = load_checkpoint(pt)
    discriminator = Discriminator(ckpt.discriminator_config).eval()
    discriminator.load_state_dict(ckpt.d)
    with torch.no_grad():
        whole = discriminator(torch.from_numpy(arrays["images"])).numpy()
    assert np.abs(whole - arrays["d_scores"]).max() > 1e-4  # grouping matters: 8 at once is not 4 + 4
    arrays["d_scores"] = whole
    del arrays["d_chunk"]
    np.savez(tmp_path / "tf.npz", **arrays)
    assert conv.compare_with_tf_render(pt, tmp_path / "tf.npz", tmp_path / "g.png")["d_max_abs_diff"] < 1e-6


def test_compare_refuses_d_scores_without_a_converted_discriminator(tmp_path):
    pt, arrays = _synthetic_tf_npz(tmp_path, n=2, include_d=False)
    np.savez(tmp_path / "tf.npz", **arrays)
    with pytest.raises(conv.ConversionError, match="no discriminator; convert without --no-discriminator"):
        conv.compare_with_tf_render(pt, tmp_path / "tf.npz", tmp_path / "g.png")
