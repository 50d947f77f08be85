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
from replication.conversion.crosscheck import LEGACY_PYTHON, TOLERANCE, LegacyTF, run_legacy
from replication.conversion.crosscheck import LEGACY_SCRIPT as CROSSCHECK_SCRIPT
from replication.checkpoint import load_checkpoint, load_generator, save_checkpoint
from replication.networks import Discriminator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_nvidia import (  # noqa: E402
    OFFICIAL_TINY_G_KWARGS,
    OFFICIAL_TINY_KWARGS,
    build_official_tf_pickle,
    official_tf_skip_reason,
    random_discriminator,
    random_generator,
    write_tf_pickle,
)

torch.set_num_threads(1)

NVIDIA_REPO_ENV = "NADA_NVIDIA_TF_REPO"
OUT_DIR_ENV = "NADA_CROSSCHECK_OUT"
N_IMAGES = 4
SEED = 0
PSI = 0.5


def _skip_reason() -> str | None:
    return official_tf_skip_reason(os.environ.get(NVIDIA_REPO_ENV), NVIDIA_REPO_ENV)


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
    legacy = LegacyTF(LEGACY_PYTHON, nvidia_repo)
    built = build_official_tf_pickle(legacy, pkl, SEED, tmp_path)
    assert built["variables"]["Gs"] == built["variables"]["G"] > 0 and built["variables"]["D"] > 0

    # 2. Our TF-free conversion (restricted unpickler, no TensorFlow), D included.
    conv.convert(pkl, pt)
    ckpt = load_checkpoint(pt)
    assert ckpt.resolution == 32 and ckpt.d is not None and ckpt.g is not None

    # 3. NVIDIA's graph rebuilt from the pickle and rendered (fused and non-fused modconv), D scores of its images.
    run_legacy(legacy, [str(CROSSCHECK_SCRIPT), "--nvidia-repo", str(nvidia_repo), "--pickle", str(pkl), "--out",
                        str(npz), "--n", str(N_IMAGES), "--seed", str(SEED), "--psi", str(PSI), "--check-unfused"],
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
            "network": {"G": dict(OFFICIAL_TINY_KWARGS, **OFFICIAL_TINY_G_KWARGS), "D": dict(OFFICIAL_TINY_KWARGS),
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
                f".venv-legacy/bin/python build_tiny_tf.py . {repo_rel} tiny_tf.pkl {SEED} "
                "'<OFFICIAL_TINY_KWARGS>' '<OFFICIAL_TINY_G_KWARGS>'   # BUILDER_SOURCE in tests/fixtures_nvidia.py",
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
