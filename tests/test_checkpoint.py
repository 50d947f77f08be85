"""Checkpoint format tests: round trip, rosinality files with inferred configs, and one-line errors for bad files."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pytest
import torch

from replication.checkpoint import (
    FORMAT_NAME,
    CheckpointError,
    infer_generator_config,
    load_checkpoint,
    load_generator,
    make_provenance,
    save_checkpoint,
    sha256_file,
)
from replication.networks import GeneratorConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_nvidia import random_discriminator, random_generator  # noqa: E402

torch.set_num_threads(1)
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def G():
    return random_generator(16, seed=11)


def _render(model):
    z = torch.randn(2, model.style_dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model([z], noise_mode="const")[0]


def test_round_trip_keeps_everything(tmp_path, G):
    D = random_discriminator(16, seed=4)
    src = tmp_path / "source.bin"
    src.write_bytes(b"pretend source weights")
    prov = make_provenance(src, source_format="test", converter_version="9.9")
    latent_avg = torch.randn(G.style_dim)
    path = save_checkpoint(tmp_path / "ckpt.pt", generator_config=G.cfg, g_ema=G.state_dict(), latent_avg=latent_avg,
                           provenance=prov, g=G.state_dict(), d=D.state_dict(), discriminator_config=D.cfg,
                           extra={"note": "hello", "numbers": [1, 2.5]})
    raw = torch.load(path, weights_only=True)  # readable by the strictest loader, no custom classes inside
    assert raw["format"] == FORMAT_NAME and raw["format_version"] == 1

    ckpt = load_checkpoint(path)
    assert ckpt.generator_config == G.cfg and ckpt.discriminator_config == D.cfg
    assert ckpt.resolution == 16
    for key, value in G.state_dict().items():
        assert torch.equal(ckpt.g_ema[key], value) and torch.equal(ckpt.g[key], value)
    for key, value in D.state_dict().items():
        assert torch.equal(ckpt.d[key], value)
    assert torch.equal(ckpt.latent_avg, latent_avg)
    assert ckpt.provenance == prov and prov["source_path"] == "source.bin"
    assert prov["source_sha256"] == sha256_file(src) and prov["created_utc"].endswith("Z")
    assert ckpt.extra == {"note": "hello", "numbers": [1, 2.5]}

    G_loaded, _ = load_generator(path)
    assert not G_loaded.training
    assert all(p.requires_grad for p in G_loaded.parameters())  # freezing is the caller's decision
    assert torch.equal(_render(G_loaded), _render(G))


def test_plain_rosinality_dict_loads_with_inferred_config(tmp_path):
    golden = torch.load(DATA / "sg2_tiny.pt", weights_only=True)
    state = golden["state_dict"]
    # rosinality's train.py also stores optimiser state and its argparse Namespace.
    torch.save({"g_ema": state, "latent_avg": torch.zeros(64), "g_optim": {"state": {}, "param_groups": []},
                "args": argparse.Namespace(size=32, iter=10)}, tmp_path / "ros.pt")
    G_loaded, ckpt = load_generator(tmp_path / "ros.pt")
    arch = golden["arch"]
    assert ckpt.source_format == "rosinality"
    assert ckpt.generator_config == GeneratorConfig(size=arch["size"], style_dim=arch["style_dim"],
                                                    n_mlp=arch["n_mlp"], channels={4: 32, 8: 32, 16: 32, 32: 32})
    case = golden["case_a"]
    with torch.no_grad():
        image, _ = G_loaded([golden["inputs"]["z"]], noise_mode="const")
    assert (image - case["image"]).abs().max().item() < 5e-5


def test_infer_config_reads_channel_table_from_shapes(G):
    cfg = infer_generator_config(G.state_dict())
    assert cfg.channel_table() == G.cfg.channel_table()
    assert (cfg.size, cfg.style_dim, cfg.n_mlp) == (16, G.style_dim, G.cfg.n_mlp)


# ---------------------------------------------------------------------------------------------------------------------
# Errors: one clear line, nothing half-written.


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found") as info:
        load_checkpoint(tmp_path / "absent.pt")
    assert "absent.pt" in _one_line(info)


def test_not_a_torch_file(tmp_path):
    (tmp_path / "junk.pt").write_bytes(os.urandom(256))
    with pytest.raises(CheckpointError, match="junk.pt") as info:
        load_checkpoint(tmp_path / "junk.pt")
    _one_line(info)


@pytest.mark.parametrize("junk", [
    b"Q" + bytes(range(64)),  # BINPERSID on an empty stack: IndexError inside torch's weights_only unpickler
    b"\x80\x02" + b"Q" * 8,
    b"\x80\x02}q\x00(X\x01\x00\x00\x00a",  # truncated dict
    b"\x80\x02cos\nsystem\n",  # a global outside the allow-list
    bytes(256),
])
def test_corrupt_bytes_of_every_kind_are_one_checkpoint_error(tmp_path, junk):
    (tmp_path / "junk.pt").write_bytes(junk)
    with pytest.raises(CheckpointError, match="junk.pt") as info:
        load_checkpoint(tmp_path / "junk.pt")
    _one_line(info)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"g_ema": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights_only") as info:
        load_checkpoint(tmp_path / "evil.pt")
    _one_line(info)
    assert not marker.exists()


def test_unknown_format(tmp_path):
    torch.save({"format": "someone-elses-format", "weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="unknown checkpoint format 'someone-elses-format'"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other2.pt")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_checkpoint(tmp_path / "other2.pt")


def test_missing_key_and_wrong_shape_are_named(tmp_path, G):
    state = dict(G.state_dict())
    del state["conv1.noise.weight"]
    state["to_rgb1.bias"] = torch.zeros(1, 4, 1, 1)
    torch.save({"g_ema": state}, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "broken.pt")
    text = _one_line(info)
    assert "missing [conv1.noise.weight]" in text and "to_rgb1.bias (1, 4, 1, 1) != (1, 3, 1, 1)" in text


def test_requested_resolution_must_match(tmp_path, G):
    save_checkpoint(tmp_path / "c.pt", generator_config=G.cfg, g_ema=G.state_dict())
    with pytest.raises(CheckpointError, match="16px generator but 256px was requested"):
        load_generator(tmp_path / "c.pt", expected_resolution=256)
    assert load_checkpoint(tmp_path / "c.pt", expected_resolution=16).resolution == 16


def test_newer_format_version_is_refused(tmp_path, G):
    save_checkpoint(tmp_path / "c.pt", generator_config=G.cfg, g_ema=G.state_dict())
    raw = torch.load(tmp_path / "c.pt", weights_only=True)
    raw["format_version"] = 2
    torch.save(raw, tmp_path / "c2.pt")
    with pytest.raises(CheckpointError, match="format_version 2 is not supported"):
        load_checkpoint(tmp_path / "c2.pt")


def test_failed_save_leaves_existing_file_intact(tmp_path, G):
    dst = tmp_path / "c.pt"
    save_checkpoint(dst, generator_config=G.cfg, g_ema=G.state_dict())
    before = dst.read_bytes()
    bad = dict(G.state_dict())
    bad["input.input"] = torch.zeros(1, 2, 4, 4)
    with pytest.raises(CheckpointError, match="input.input"):
        save_checkpoint(dst, generator_config=G.cfg, g_ema=bad)
    with pytest.raises(CheckpointError, match="extra.*object"):
        save_checkpoint(dst, generator_config=G.cfg, g_ema=G.state_dict(), extra={"x": object()})
    assert dst.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp files left behind


def test_saved_tensors_are_dense_copies(tmp_path, G):
    # A strided view must be stored as itself, not as its whole underlying storage.
    state = dict(G.state_dict())
    big = torch.zeros(1000, G.style_dim)
    state["style.1.bias"] = big[0]
    save_checkpoint(tmp_path / "c.pt", generator_config=G.cfg, g_ema=state)
    assert (tmp_path / "c.pt").stat().st_size < 1000 * G.style_dim * 4
