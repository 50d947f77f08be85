"""`make convert`'s two-environment pipeline: the cross-check against NVIDIA's TF graph, its skip line, its tolerance,
the CONVERTER=tf plain-array route, and the generator's truncation cutoff it renders with.

The CPU tests need neither TensorFlow nor NVIDIA's code: the legacy render is replaced by our own render of the same
network. The end-to-end test (marker ``legacy``) runs `make convert` on a tiny official network built and pickled by
NVIDIA's code; it needs ``NADA_NVIDIA_TF_REPO`` (a clone of NVlabs/stylegan2) and ``.venv-legacy`` (`make env-legacy`)
and is skipped, with the reason, otherwise.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from replication import convert as conv
from replication.checkpoint import load_checkpoint, load_generator
from replication.conversion import crosscheck as xcheck
from replication.conversion.common import ConversionError
from replication.conversion.sources import detect_format
from replication.legacy_tf_crosscheck import write_network_arrays
from replication.networks import NetworkInputError
from replication.safe_unpickle import safe_load

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_nvidia import (  # noqa: E402
    build_official_tf_pickle,
    official_tf_skip_reason,
    random_discriminator,
    random_generator,
    write_tf_pickle,
)

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parent.parent
SIZE = 16  # n_latent 6: a cutoff of 4 (the default case) truncates some layers and not others
NVIDIA_REPO_ENV = "NADA_NVIDIA_TF_REPO"


@pytest.fixture(scope="module")
def models():
    return random_generator(SIZE, seed=0), random_discriminator(SIZE, seed=1)


def _assert_same_state(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------------------------------------------------------------
# Truncation with a cutoff (NVIDIA's truncation_cutoff).


def test_truncation_cutoff_matches_hand_computation(models):
    G, _ = models
    z = torch.randn(3, G.style_dim, generator=torch.Generator().manual_seed(0))
    avg = G.mean_latent(64, generator=torch.Generator().manual_seed(1))
    psi, cutoff = 0.7, 4
    with torch.no_grad():
        w = G.mapping(z)
        wplus = G.make_wplus([z], truncation=psi, truncation_latent=avg, truncation_cutoff=cutoff)
        hand = w.unsqueeze(1).repeat(1, G.n_latent, 1)
        for layer in range(cutoff):  # NVIDIA: layer_psi = psi where layer_idx < cutoff, else 1
            hand[:, layer] = avg[0] + psi * (w - avg[0])
        assert torch.allclose(wplus, hand, atol=1e-6, rtol=0)
        assert torch.equal(wplus[:, cutoff:], w.unsqueeze(1).expand(-1, G.n_latent - cutoff, -1))
        # None truncates every layer; a cutoff at or past n_latent is the same; 0 truncates nothing.
        every = G.make_wplus([z], truncation=psi, truncation_latent=avg)
        assert torch.equal(G.make_wplus([z], truncation=psi, truncation_latent=avg, truncation_cutoff=G.n_latent),
                           every)
        assert torch.equal(wplus[:, :cutoff], every[:, :cutoff])
        assert torch.equal(G.make_wplus([z], truncation=psi, truncation_latent=avg, truncation_cutoff=0),
                           G.make_wplus([z]))
        # forward carries it to the synthesis; a W+ input is truncated layer by layer too.
        image, latents = G([z], truncation=psi, truncation_latent=avg, truncation_cutoff=cutoff, noise_mode="const",
                           return_latents=True)
        assert torch.equal(latents, wplus)
        assert torch.allclose(image, G.synthesis(hand, noise_mode="const"), atol=1e-5)
        w_in = G.make_wplus([w], input_is_latent=True)
        assert torch.allclose(G.make_wplus([w_in], input_is_latent=True, truncation=psi, truncation_latent=avg,
                                           truncation_cutoff=cutoff), hand, atol=1e-6, rtol=0)


@pytest.mark.parametrize("cutoff", [-1, 2.5, "4", True])
def test_truncation_cutoff_must_be_a_non_negative_int(models, cutoff):
    G, _ = models
    with pytest.raises(NetworkInputError, match="truncation_cutoff must be None or an int >= 0"):
        G.make_wplus([torch.zeros(1, G.style_dim)], truncation=0.5, truncation_latent=torch.zeros(1, G.style_dim),
                     truncation_cutoff=cutoff)


def test_compare_renders_with_the_npz_cutoff(tmp_path, models):
    G, D = models
    write_tf_pickle(tmp_path / "net.pkl", G, D, latent_avg=np.random.RandomState(3).randn(G.style_dim) * 0.5)
    conv.convert(tmp_path / "net.pkl", tmp_path / "net.pt")
    (npz,) = _fake_renders(tmp_path / "net.pkl", tmp_path / "r", [xcheck.Case(2, 0.7, 4)])
    same = conv.compare_with_tf_render(tmp_path / "net.pt", npz, tmp_path / "g.png")
    assert same["max_abs_diff"] < 1e-5 and same["truncation_cutoff"] == 4
    with np.load(npz) as data:
        arrays = {k: data[k] for k in data.files if k != "truncation_cutoff"}
    np.savez(tmp_path / "no_cutoff.npz", **arrays)  # same images, read as truncated on every layer
    assert conv.compare_with_tf_render(tmp_path / "net.pt", tmp_path / "no_cutoff.npz")["max_abs_diff"] > 1e-3


# ---------------------------------------------------------------------------------------------------------------------
# make convert without, and with a stand-in for, the legacy environment.


def _fake_renders(pickle_path: Path, out_dir: Path, cases, offset: float = 0.0) -> list[Path]:
    """What NVIDIA's render of ``pickle_path`` gives, computed with our converter (plus ``offset`` on one pixel)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    conv.convert(pickle_path, out_dir / "ref.pt", include_d=False)
    G, ckpt = load_generator(out_dir / "ref.pt")
    noise = [getattr(G.noises, f"noise_{i}") for i in range(G.num_layers)]
    paths = []
    for k, case in enumerate(cases):
        z = np.random.RandomState(case.seed).randn(2, G.style_dim).astype(np.float32)
        with torch.no_grad():
            images, _ = G([torch.from_numpy(z)], noise_mode="given", noise=noise, truncation=case.psi,
                          truncation_cutoff=case.cutoff, truncation_latent=ckpt.latent_avg.reshape(1, -1))
        images = images.numpy().copy()
        images[0, 0, 0, 0] += offset
        extra = {} if case.cutoff is None else {"truncation_cutoff": np.int64(case.cutoff)}
        paths.append(out_dir / f"case{k}.npz")
        np.savez(paths[-1], z=z, images=images, truncation_psi=np.float32(case.psi), seed=np.int64(case.seed),
                 **{f"noise{i}": n.numpy() for i, n in enumerate(noise)}, **extra)
    return paths


def _registry(tmp_path: Path, names: list[str]) -> Path:
    lines = []
    for name in names:
        lines += [f'[weights."{name}"]', 'kind = "generator"', 'format = "tf-stylegan2"', f"resolution = {SIZE}",
                  f'filename = "{name}.pkl"', 'url = "https://example.invalid/x"', 'source = "test"']
    path = tmp_path / "weights.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def weight_cache(tmp_path, models, monkeypatch):
    """Two tiny TF pickles in a temporary registry and weights dir; returns the output folder."""
    G, D = models
    wdir = tmp_path / "weights"
    wdir.mkdir()
    for k, name in enumerate(["alpha", "beta"]):
        write_tf_pickle(wdir / f"{name}.pkl", random_generator(SIZE, seed=10 + k), D,
                        latent_avg=np.random.RandomState(k).randn(G.style_dim).astype(np.float32))
    monkeypatch.setenv("NADA_WEIGHTS_TOML", str(_registry(tmp_path, ["alpha", "beta"])))
    monkeypatch.setenv("NADA_WEIGHTS_DIR", str(wdir))
    return tmp_path / "converted"


def test_without_legacy_env_convert_prints_one_skip_line(tmp_path, weight_cache, capsys):
    assert conv.main(["--all", "--out-dir", str(weight_cache)]) == 0
    out = capsys.readouterr()
    skipped = [line for line in (out.out + out.err).splitlines() if "skipped" in line]
    assert len(skipped) == 1, out
    assert "NVIDIA_TF_REPO is not set" in skipped[0]
    assert "make env-legacy" in skipped[0] and "NVIDIA_TF_REPO=" in skipped[0]
    assert (weight_cache / "alpha.pt").is_file() and (weight_cache / "beta.pt").is_file()
    assert not list(weight_cache.glob("*.crosscheck.*"))

    clone = tmp_path / "stylegan2"
    (clone / "dnnlib" / "tflib").mkdir(parents=True)
    assert conv.main(["--all", "--out-dir", str(weight_cache), "--nvidia-tf-repo", str(clone),
                      "--legacy-python", str(tmp_path / "no-such-python")]) == 0
    out = capsys.readouterr()
    skipped = [line for line in (out.out + out.err).splitlines() if "skipped" in line]
    assert len(skipped) == 1 and "no legacy TF 1.15 environment" in skipped[0], out


def test_converter_tf_without_legacy_env_is_one_line_error(weight_cache, capsys):
    assert conv.main(["--all", "--out-dir", str(weight_cache), "--converter", "tf"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: CONVERTER=tf needs the legacy TF 1.15 environment"), err
    assert "make env-legacy" in err[0] and not weight_cache.exists()


def test_crosscheck_above_tolerance_fails_and_keeps_what_was_written(tmp_path, weight_cache, monkeypatch, capsys):
    # First without the legacy env: both converted, nothing cross-checked.
    assert conv.main(["--all", "--out-dir", str(weight_cache)]) == 0
    before = {p.name: p.read_bytes() for p in weight_cache.iterdir()}
    capsys.readouterr()

    # Then with a stand-in for NVIDIA's render that agrees on alpha and is off by 0.25 on beta.
    calls = []

    def fake_render(legacy, pickle_path, out_dir, cases=xcheck.CASES, *, discriminator=True, export_arrays=None,
                    n=None):
        calls.append(Path(pickle_path).name)
        return _fake_renders(Path(pickle_path), Path(out_dir), cases, 0.25 if "beta" in str(pickle_path) else 0.0)

    legacy = xcheck.LegacyTF(Path(sys.executable), tmp_path)
    monkeypatch.setattr(xcheck, "find_legacy_tf", lambda repo, python=None: (legacy, ""))
    monkeypatch.setattr(xcheck, "render_with_nvidia", fake_render)
    assert conv.main(["--all", "--out-dir", str(weight_cache), "--nvidia-tf-repo", str(tmp_path)]) == 2
    out = capsys.readouterr()
    assert sorted(calls) == ["alpha.pkl", "beta.pkl"]
    errors = [line for line in out.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: beta: conversion rejected: max |TF - ours| 0.25"), out.err
    assert "beta.crosscheck.json" in errors[0] and "beta.crosscheck.png" in errors[0]
    assert "skipped" not in out.out + out.err

    good = json.loads((weight_cache / "alpha.crosscheck.json").read_text())
    assert good["passed"] and good["installed"] and good["max_abs_diff"] < 1e-5
    assert [(c["seed"], c["truncation_psi"], c["truncation_cutoff"]) for c in good["cases"]] == \
        [(c.seed, c.psi, c.cutoff) for c in xcheck.CASES]
    assert json.loads((weight_cache / "alpha.json").read_text())["crosschecked"] is True
    bad = json.loads((weight_cache / "beta.crosscheck.json").read_text())
    assert not bad["passed"] and not bad["installed"] and abs(bad["max_abs_diff"] - 0.25) < 1e-5
    assert (weight_cache / "beta.crosscheck.png").is_file()
    # Nothing already written is lost: beta's earlier checkpoint and manifest stay byte for byte; no staging left.
    assert (weight_cache / "beta.pt").read_bytes() == before["beta.pt"]
    assert (weight_cache / "beta.json").read_bytes() == before["beta.json"]
    assert not [p for p in weight_cache.iterdir() if p.name.startswith(".")]

    # A run that agrees installs beta; alpha, cross-checked already, is up to date.
    monkeypatch.setattr(xcheck, "render_with_nvidia",
                        lambda legacy, pickle_path, out_dir, cases=xcheck.CASES, **kw:
                        _fake_renders(Path(pickle_path), Path(out_dir), cases))
    assert conv.main(["--all", "--out-dir", str(weight_cache), "--nvidia-tf-repo", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "up to date" in out and "alpha" in out and "cross-checked against NVIDIA's TF graph" in out
    assert json.loads((weight_cache / "beta.crosscheck.json").read_text())["installed"]


# ---------------------------------------------------------------------------------------------------------------------
# CONVERTER=tf: the plain-array export and its reader.


def test_array_export_gives_the_identical_checkpoint(tmp_path, models):
    G, D = models
    G_raw = random_generator(SIZE, seed=5)
    write_tf_pickle(tmp_path / "net.pkl", G, D, g_model=G_raw, latent_avg=np.linspace(-1, 1, G.style_dim))
    # The legacy env's writer, fed the restricted reader's records instead of NVIDIA's networks (same dicts).
    write_network_arrays(safe_load(tmp_path / "net.pkl"), tmp_path / "arrays.npz", str(tmp_path / "net.pkl"),
                         state_of=lambda net: net.state)
    assert detect_format(tmp_path / "arrays.npz") == "tf-arrays"
    conv.convert(tmp_path / "net.pkl", tmp_path / "free.pt")
    conv.convert(tmp_path / "arrays.npz", tmp_path / "tf.pt")
    free, tf = load_checkpoint(tmp_path / "free.pt"), load_checkpoint(tmp_path / "tf.pt")
    for attr in ("g_ema", "g", "d"):
        _assert_same_state(getattr(free, attr), getattr(tf, attr))
    assert torch.equal(free.latent_avg, tf.latent_avg)
    assert free.generator_config == tf.generator_config and free.discriminator_config == tf.discriminator_config
    assert tf.provenance["source_path"] == "net.pkl" and tf.provenance["source_format"] == "tf-stylegan2"
    assert tf.provenance["source_sha256"] == free.provenance["source_sha256"]
    assert "NVIDIA" in tf.provenance["reader"] and "restricted" in free.provenance["reader"]
    with pytest.raises(ConversionError, match="exported from a file with sha256"):
        conv.convert(tmp_path / "arrays.npz", tmp_path / "x.pt", source_sha256="0" * 64)


class _Payload:
    """Unpickling this would leave a marker file: proof that a loader ran pickled code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "executed"))


def test_array_import_refuses_pickled_arrays(tmp_path, models):
    G, D = models
    write_tf_pickle(tmp_path / "net.pkl", G, D)
    write_network_arrays(safe_load(tmp_path / "net.pkl"), tmp_path / "ok.npz", str(tmp_path / "net.pkl"),
                         state_of=lambda net: net.state)
    marker = tmp_path / "executed.txt"
    with np.load(tmp_path / "ok.npz") as data:
        arrays = {k: data[k] for k in data.files}
    evil = np.empty(1, dtype=object)
    evil[0] = _Payload(marker)
    np.savez(tmp_path / "evil.npz", **dict(arrays, v0=evil))  # an object array: np.savez pickles it
    with pytest.raises(ConversionError, match="'v0' is a pickled object array; refusing to unpickle it"):
        conv.convert(tmp_path / "evil.npz", tmp_path / "out.pt", fmt="tf-arrays")
    assert not marker.exists() and not (tmp_path / "out.pt").exists()

    proc = subprocess.run([sys.executable, "-m", "replication.convert", "--format", "tf-arrays",
                           str(tmp_path / "evil.npz"), str(tmp_path / "out.pt")], capture_output=True, text=True,
                          cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "pickled object array" in lines[0], proc.stderr
    assert not marker.exists() and not (tmp_path / "out.pt").exists()

    np.savez(tmp_path / "extra.npz", **dict(arrays, stray=np.zeros(2, np.float32)))
    with pytest.raises(ConversionError, match="arrays no network names: \\['stray'\\]"):
        conv.convert(tmp_path / "extra.npz", tmp_path / "out.pt", fmt="tf-arrays")
    np.savez(tmp_path / "nometa.npz", **{k: v for k, v in arrays.items() if k != "meta"})
    with pytest.raises(ConversionError, match="no 'meta' string"):
        conv.convert(tmp_path / "nometa.npz", tmp_path / "out.pt", fmt="tf-arrays")


# ---------------------------------------------------------------------------------------------------------------------
# End to end with NVIDIA's code in the legacy environment.


def _make_convert(out: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    # -o: never rebuild the trainer env from a test; PY: this interpreter.
    return subprocess.run(["make", "--no-print-directory", "-o", ".venv/.stamp", "convert", f"PY={sys.executable}",
                           f"CONVERT_OUT={out}", *extra], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1800)


@pytest.mark.legacy
def test_make_convert_cross_checks_an_official_pickle_and_converter_tf_matches(tmp_path):
    reason = official_tf_skip_reason(os.environ.get(NVIDIA_REPO_ENV), NVIDIA_REPO_ENV)
    if reason:
        pytest.skip(reason)
    legacy, _ = xcheck.find_legacy_tf(os.environ[NVIDIA_REPO_ENV])
    wdir = tmp_path / "weights"
    wdir.mkdir()
    build_official_tf_pickle(legacy, wdir / "tiny.pkl", 0, tmp_path)
    toml = tmp_path / "weights.toml"
    toml.write_text('[weights."tiny-official"]\nkind = "generator"\nformat = "tf-stylegan2"\nresolution = 32\n'
                    'filename = "tiny.pkl"\nurl = "https://example.invalid/tiny.pkl"\nsource = "test"\n')
    env = dict(os.environ, NADA_WEIGHTS_DIR=str(wdir), NADA_WEIGHTS_TOML=str(toml), OMP_NUM_THREADS="1")
    env.pop("CONVERTER", None)
    repo_arg = f"NVIDIA_TF_REPO={legacy.nvidia_repo}"

    proc = _make_convert(tmp_path / "free", env, repo_arg)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cross-checked against NVIDIA's TF graph" in proc.stdout and "skipped" not in proc.stdout + proc.stderr
    record = json.loads((tmp_path / "free" / "tiny-official.crosscheck.json").read_text())
    assert record["passed"] and record["converter"] == "tf-free"
    assert (tmp_path / "free" / "tiny-official.crosscheck.png").is_file()
    assert len(record["cases"]) == len(xcheck.CASES)
    for case in record["cases"]:
        assert case["max_abs_diff"] <= xcheck.TOLERANCE, case  # float32 noise, psi 1, 0.5 and 0.7 with cutoff 4
        assert case["d_max_abs_diff"] <= xcheck.TOLERANCE * max(1.0, abs(case["d_score_min"]),
                                                                abs(case["d_score_max"])), case
    assert any(c["truncation_cutoff"] == 4 and c["truncation_psi"] == 0.7 for c in record["cases"])

    proc = _make_convert(tmp_path / "tf", env, repo_arg, "CONVERTER=tf")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((tmp_path / "tf" / "tiny-official.crosscheck.json").read_text())["passed"]
    free, tf = (load_checkpoint(tmp_path / d / "tiny-official.pt") for d in ("free", "tf"))
    for attr in ("g_ema", "g", "d"):
        _assert_same_state(getattr(free, attr), getattr(tf, attr))
    assert torch.equal(free.latent_avg, tf.latent_avg)
    assert "NVIDIA" in tf.provenance["reader"] and "restricted" in free.provenance["reader"]

    # The same files above an impossible tolerance: exit 2, one error line, the installed checkpoint kept.
    kept = (tmp_path / "free" / "tiny-official.pt").read_bytes()
    (tmp_path / "free" / "tiny-official.json").unlink()
    proc = _make_convert(tmp_path / "free", env, repo_arg, "CROSSCHECK_TOL=1e-30")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1 and "conversion rejected" in errors[0], proc.stderr
    assert (tmp_path / "free" / "tiny-official.pt").read_bytes() == kept
