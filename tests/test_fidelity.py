"""FID/KID through torch-fidelity: closed forms, the fidelity CLI, generator streaming, caching and bad input."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from torch_fidelity.metric_fid import fid_statistics_to_metric

import metrics.fidelity as fidelity
from metrics.fidelity import (FidelityBackbone, FidelityError, GeneratorSource, evaluator_backbone, fid_from_features,
                              fid_kid, inception_backbone)
from replication.miniworld.attributes import sample_attributes
from replication.miniworld.evaluator_fidelity import from_uint8, to_uint8
from replication.miniworld.evaluator_model import DEFAULT_WEIGHTS, load_evaluator
from replication.miniworld.render import render
from replication.networks import Generator, GeneratorConfig
from replication.sampling import sample_images
from standins import random_inception_weights


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def evaluator() -> FidelityBackbone:
    return evaluator_backbone(DEFAULT_WEIGHTS, _sha256(DEFAULT_WEIGHTS))


@pytest.fixture(scope="module")
def inception(tmp_path_factory) -> FidelityBackbone:
    path = random_inception_weights(tmp_path_factory.mktemp("inception") / "inception-standin.pth")
    return inception_backbone(path, _sha256(path))


def _renders(n: int, style: str, character: str = "human", seed: int = 0) -> torch.Tensor:
    return render(sample_attributes(n, torch.Generator().manual_seed(seed)), style, character)


def _write_pngs(folder: Path, images: torch.Tensor) -> Path:
    folder.mkdir(parents=True)
    for i, image in enumerate(to_uint8(images)):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:04d}.png")
    return folder


def test_identical_sets_give_zero_fid_and_the_unbiased_kid_of_a_set_with_itself(evaluator):
    images = _renders(200, "photo")
    scores = fid_kid(images, images, evaluator)
    assert set(scores) == {"fid_evaluator_n200", "kid_evaluator_n200", "kid_std_evaluator_n200"}
    assert abs(scores["fid_evaluator_n200"]) < 1e-3
    # torch-fidelity's KID is the unbiased MMD^2; a set against itself (subset = whole set, so every subset agrees)
    # gives 2 (mean K - mean diag K) / (m - 1), slightly below 0, not exactly 0. Recompute it from the evaluator's
    # own features with the poly kernel (x.y / d + 1)^3 written out here.
    with torch.no_grad():
        feats = load_evaluator(DEFAULT_WEIGHTS).features(from_uint8(to_uint8(images))).double().numpy()
    kernel = (feats @ feats.T / feats.shape[1] + 1.0) ** 3
    m = feats.shape[0]
    expected_kid = 2.0 * (kernel.mean() - np.diag(kernel).mean()) / (m - 1)
    assert scores["kid_evaluator_n200"] == pytest.approx(expected_kid, rel=1e-4)
    assert abs(scores["kid_std_evaluator_n200"]) < 1e-9
    # ... and it is ~0 on the scale of a real domain gap (photo -> sketch).
    gap = fid_kid(_renders(200, "sketch", seed=1), images, evaluator)
    assert abs(scores["kid_evaluator_n200"]) < 0.02 * gap["kid_evaluator_n200"]
    assert gap["fid_evaluator_n200"] > 1.0


def _closed_form_fid(mu1, s1, mu2, s2) -> float:
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2.0 * scipy.linalg.sqrtm(s1 @ s2).real))


def test_two_gaussians_give_the_closed_form_fid():
    rng = np.random.default_rng(0)
    d = 8
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T / d + 0.5 * np.eye(d), b @ b.T / d + 0.5 * np.eye(d)
    mu1 = rng.normal(size=d)
    mu2 = mu1 + 0.3 * rng.normal(size=d)
    expected = _closed_form_fid(mu1, s1, mu2, s2)
    # Exact statistics through the torch-fidelity function fid_kid and fid_from_features use.
    exact = fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, False)
    assert exact["frechet_inception_distance"] == pytest.approx(expected, rel=1e-9)
    # Diagonal covariances: the matrix square root is elementwise, so the closed form is a plain sum.
    v1, v2 = rng.uniform(0.2, 2.0, d), rng.uniform(0.2, 2.0, d)
    diagonal = fid_statistics_to_metric({"mu": mu1, "sigma": np.diag(v1)}, {"mu": mu2, "sigma": np.diag(v2)}, False)
    expected_diag = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert diagonal["frechet_inception_distance"] == pytest.approx(expected_diag, rel=1e-9)
    # Sampled features: over 20 seeds FID from 20,000 x 8 draws had sd 0.027 around 3.461; 0.15 is ~5.5 sd.
    sample = np.random.default_rng(100)
    x = sample.multivariate_normal(mu1, s1, size=20_000)
    y = sample.multivariate_normal(mu2, s2, size=20_000)
    assert fid_from_features(x, y) == pytest.approx(expected, abs=0.15)
    assert fid_from_features(torch.from_numpy(x), x) == pytest.approx(0.0, abs=1e-9)


def test_folder_fid_and_kid_match_the_fidelity_command_line(tmp_path, inception):
    n = 12
    fake = _renders(n, "photo", seed=2)
    fake_dir = _write_pngs(tmp_path / "fake", fake)
    real_dir = _write_pngs(tmp_path / "real", _renders(n, "sketch", "zombie", seed=3))
    cli = Path(sys.executable).parent / "fidelity"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [str(cli), "--fid", "--kid", "--kid-subset-size", str(n), "--input1", str(fake_dir), "--input2", str(real_dir),
         "--feature-extractor", "inception-v3-compat", "--feature-extractor-weights-path", str(inception.weights_path),
         "--cpu", "--save-cpu-ram", "--no-cache", "--silent", "--json"],
        capture_output=True, text=True, env=env, timeout=120, check=True)
    theirs = json.loads(done.stdout)
    # Ours reads the fake set as the float renders the PNGs were written from: also checks the uint8 conversion.
    ours = fid_kid(fake, real_dir, inception)
    assert ours["fid_inception_n12"] > 0
    assert ours["fid_inception_n12"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-4)
    assert ours["kid_inception_n12"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4)


def _tiny_generator() -> Generator:
    torch.manual_seed(0)
    return Generator(GeneratorConfig(size=16, style_dim=16, n_mlp=1, channels=((4, 16), (8, 16), (16, 16))))


def test_generator_source_streams_the_recorded_seed(evaluator):
    G = _tiny_generator()
    reference = _renders(40, "photo")
    first = fid_kid(GeneratorSource(G), reference, evaluator, n=40)
    assert np.isfinite(list(first.values())).all() and first["fid_evaluator_n40"] > 0
    assert fid_kid(GeneratorSource(G), reference, evaluator, n=40) == first
    # The same samples drawn here from the recorded seed, handed over as a tensor, score the same.
    z = torch.from_numpy(np.random.RandomState(fidelity.RNG_SEED).randn(40, G.style_dim)).float()
    drawn = sample_images(G, z, noise_mode="const")
    assert fid_kid(drawn, reference, evaluator) == pytest.approx(first, rel=1e-5)


def test_reference_statistics_are_cached_under_backbone_weights_and_key(tmp_path, evaluator, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    fake, reference = _renders(30, "sketch"), _renders(30, "photo", seed=1)
    plain = fid_kid(fake, reference, evaluator)
    assert not (tmp_path / "torch_home").exists()  # nothing cached without cache_dir
    cache = tmp_path / "cache"
    cached = fid_kid(fake, reference, evaluator, cache_dir=cache, reference_key="photo/human seed 1 n 30")
    assert cached == pytest.approx(plain, rel=1e-9)
    names = sorted(p.name for p in cache.iterdir())
    assert names and all(name.startswith(f"ref-evaluator-w{evaluator.weights_sha256[:16]}-") for name in names)
    # The key, not the images, names the entry: other images under the same key read the cached statistics.
    other = _renders(30, "neon", seed=5)
    reread = fid_kid(fake, other, evaluator, cache_dir=cache, reference_key="photo/human seed 1 n 30")
    assert reread == pytest.approx(plain, rel=1e-9)
    # A folder with no key is named by its content: same files, same entry.
    folder = _write_pngs(tmp_path / "ref", reference)
    fid_kid(fake, folder, evaluator, cache_dir=cache)
    count = len(list(cache.iterdir()))
    assert count > len(names)
    fid_kid(fake, folder, evaluator, cache_dir=cache)
    assert len(list(cache.iterdir())) == count


def _refuse_work(*args, **kwargs):
    raise AssertionError("torch-fidelity was called; the input should have been refused first")


@pytest.mark.parametrize("case, words", [
    ("missing folder", "pass an existing folder of images"),
    ("one image", "needs at least 2"),
    ("n below 2", "n must be an integer >= 2"),
    ("generator without n", "needs n"),
    ("inception without weights", "needs weights_path"),
])
def test_bad_input_is_refused_in_one_line_before_any_work(case, words, tmp_path, evaluator, monkeypatch):
    monkeypatch.setattr(fidelity.torch_fidelity, "calculate_metrics", _refuse_work)
    images = torch.zeros(4, 3, 64, 64)
    if case == "missing folder":
        call = lambda: fid_kid(images, tmp_path / "nowhere", evaluator)  # noqa: E731
    elif case == "one image":
        folder = _write_pngs(tmp_path / "one", images[:1])
        (folder / "notes.txt").write_text("not an image")
        call = lambda: fid_kid(images, folder, evaluator)  # noqa: E731
    elif case == "n below 2":
        call = lambda: fid_kid(images, images, evaluator, n=1)  # noqa: E731
    elif case == "generator without n":
        call = lambda: fid_kid(GeneratorSource(_tiny_generator()), images, evaluator)  # noqa: E731
    else:
        backbone = FidelityBackbone("inception", "inception-v3-compat", None, "0" * 64, "paper")
        call = lambda: fid_kid(images, images, backbone)  # noqa: E731
    with pytest.raises(FidelityError) as info:
        call()
    message = str(info.value)
    assert words in message and "\n" not in message
    if case == "missing folder":
        assert str(tmp_path / "nowhere") in message
