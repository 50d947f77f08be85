"""Weight registry tests: the official entries, offline resolution, sha256 checks, the lock file and the CLI."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from replication import weights

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tests must never download")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def _fake_registry(tmp_path: Path, monkeypatch, entries: dict[str, dict]) -> Path:
    lines = []
    for name, fields in entries.items():
        lines.append(f'[weights."{name}"]')
        for key, value in fields.items():
            lines.append(f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}")
        lines.append("")
    toml = tmp_path / "weights.toml"
    toml.write_text("\n".join(lines))
    wdir = tmp_path / "wdir"
    wdir.mkdir(exist_ok=True)
    monkeypatch.setenv("NADA_WEIGHTS_TOML", str(toml))
    monkeypatch.setenv("NADA_WEIGHTS_DIR", str(wdir))
    return wdir


def _entry(**overrides) -> dict:
    base = {"kind": "generator", "format": "rosinality", "url": "https://example.invalid/tiny.pt",
            "filename": "tiny.pt", "source": "test", "resolution": 16}
    base.update(overrides)
    return base


# ---------------------------------------------------------------------------------------------------------------------
# The real registry.


def test_registry_lists_every_paper_weight():
    reg = weights.registry()
    generators = {name: e for name, e in reg.items() if e.kind == "generator" and e.repo_path is None}
    resolutions = {e.filename: e.resolution for e in generators.values()}
    assert resolutions == {"stylegan2-ffhq-config-f.pt": 1024, "stylegan2-ffhq-config-f.pkl": 1024,
                           "afhqcat.pkl": 512, "afhqdog.pkl": 512, "stylegan2-church-config-f.pkl": 256,
                           "stylegan2-car-config-f.pkl": 512, "stylegan2-horse-config-f.pkl": 256}
    for stem in ("church", "car", "horse", "ffhq"):
        url = f"https://nvlabs-fi-cdn.nvidia.com/stylegan2/networks/stylegan2-{stem}-config-f.pkl"
        assert any(e.url == url and e.format == "tf-stylegan2" for e in generators.values()), stem
    assert "1EM87UquaoQmk17Q8d5kYIAHqu0dkYqdT" in reg["stylegan2-ffhq-config-f"].url


def test_clip_entries_match_the_installed_clip_package():
    from clip.clip import _MODELS

    reg = weights.registry()
    for name, url in _MODELS.items():
        entry = reg[name]
        assert entry.kind == "clip" and entry.url == url
        assert entry.sha256 == url.split("/")[-2]  # openai/CLIP puts the file's sha256 in its URL
        assert entry.filename == os.path.basename(url)


def test_metric_network_entries_match_installed_packages():
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
    from torchvision.models import AlexNet_Weights

    reg = weights.registry()
    by_kind = {e.kind: e for e in reg.values() if e.kind in ("inception", "alexnet")}
    assert by_kind["inception"].url == URL_INCEPTION_V3
    assert by_kind["alexnet"].url == AlexNet_Weights.IMAGENET1K_V1.url
    for entry in by_kind.values():
        assert entry.sha256 is None and entry.filename.split("-")[-1].startswith(entry.sha256_prefix)


def test_missing_weight_is_one_line_with_url_hash_and_destination(tmp_path, monkeypatch):
    monkeypatch.setenv("NADA_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(weights.WeightError) as info:
        weights.resolve("ViT-B/32")
    text = str(info.value)
    assert "\n" not in text
    entry = weights.get_entry("ViT-B/32")
    assert entry.filename in text and entry.url in text and entry.sha256 in text
    assert str(tmp_path / "ViT-B-32.pt") in text
    with pytest.raises(weights.WeightError, match="unknown, recorded on first download"):
        weights.resolve("stylegan2-church-config-f")


def test_unknown_name_lists_known_names():
    with pytest.raises(weights.WeightError, match=r"unknown weight 'ViT-Z/99'; known: .*ViT-B/16"):
        weights.resolve("ViT-Z/99")


# ---------------------------------------------------------------------------------------------------------------------
# Hash checks on a fake registry.


@pytest.fixture(autouse=True)
def _fresh_hash_cache(monkeypatch):
    monkeypatch.setattr(weights, "_HASHES", {})


def _flip_first_byte_keeping_mtime(path: Path) -> None:
    before = path.stat()
    with open(path, "r+b") as handle:
        first = handle.read(1)
        handle.seek(0)
        handle.write(bytes([first[0] ^ 0xFF]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def test_present_file_with_right_hash_resolves_and_is_hashed_once_per_process(tmp_path, monkeypatch):
    content = b"tiny weights"
    wdir = _fake_registry(tmp_path, monkeypatch, {"tiny": _entry(sha256=hashlib.sha256(content).hexdigest())})
    (wdir / "tiny.pt").write_bytes(content)
    monkeypatch.setattr(weights, "_RECENT_NS", 0)  # the file was just written; let the memory cache take it
    reads = []
    real = weights.sha256_file
    monkeypatch.setattr(weights, "sha256_file", lambda path: reads.append(path) or real(path))
    assert weights.resolve("tiny") == wdir / "tiny.pt"
    assert weights.resolve("tiny") == wdir / "tiny.pt"
    assert weights.verify("tiny") == weights.file_sha256(wdir / "tiny.pt") == hashlib.sha256(content).hexdigest()
    assert reads == [wdir / "tiny.pt"]
    assert [p.name for p in wdir.iterdir()] == ["tiny.pt"], "no hash may be stored beside the weight"


def test_byte_flipped_in_place_with_mtime_kept_fails_the_check_in_a_new_process(tmp_path, monkeypatch):
    good = b"the real weights, byte for byte"
    expected = hashlib.sha256(good).hexdigest()
    wdir = _fake_registry(tmp_path, monkeypatch, {"tiny": _entry(sha256=expected)})
    path = wdir / "tiny.pt"
    path.write_bytes(good)
    assert weights.verify("tiny") == expected
    _flip_first_byte_keeping_mtime(path)
    flipped = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(weights.WeightError, match=f"has sha256 {flipped} but {expected} is expected"):
        weights.check_file(weights.get_entry("tiny"))
    with pytest.raises(weights.WeightError, match=f"has sha256 {flipped} but {expected}"):
        weights.verify("tiny")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "replication.weights", "verify", "tiny"], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 2 and f"has sha256 {flipped} but {expected}" in proc.stderr


def test_memory_cache_sees_an_in_place_change_with_mtime_kept(tmp_path, monkeypatch):
    good = b"the real weights, byte for byte"
    expected = hashlib.sha256(good).hexdigest()
    wdir = _fake_registry(tmp_path, monkeypatch, {"tiny": _entry(sha256=expected)})
    path = wdir / "tiny.pt"
    path.write_bytes(good)
    monkeypatch.setattr(weights, "_RECENT_NS", 0)  # serve from memory whatever the file's age
    assert weights.verify("tiny") == expected and len(weights._HASHES) == 1
    time.sleep(0.05)  # past any coarse timestamp tick, so the write below gets a new ctime
    _flip_first_byte_keeping_mtime(path)
    with pytest.raises(weights.WeightError, match=f"but {expected} is expected"):
        weights.check_file(weights.get_entry("tiny"))


def test_wrong_hash_names_both_hashes_even_after_caching(tmp_path, monkeypatch):
    good, bad = b"the real file", b"a corrupted file"
    wdir = _fake_registry(tmp_path, monkeypatch, {"tiny": _entry(sha256=hashlib.sha256(good).hexdigest())})
    (wdir / "tiny.pt").write_bytes(good)
    weights.resolve("tiny")
    (wdir / "tiny.pt").write_bytes(bad)  # a different size invalidates the cached hash
    with pytest.raises(weights.WeightError) as info:
        weights.resolve("tiny")
    text = str(info.value)
    assert hashlib.sha256(good).hexdigest() in text and hashlib.sha256(bad).hexdigest() in text and "\n" not in text


def test_unpublished_hash_is_recorded_on_first_use_then_enforced(tmp_path, monkeypatch, capsys):
    wdir = _fake_registry(tmp_path, monkeypatch, {"tiny": _entry()})
    (wdir / "tiny.pt").write_bytes(b"first copy")
    weights.resolve("tiny")
    assert "warning: no published sha256" in capsys.readouterr().err
    lock = (tmp_path / "weights.lock.toml").read_text()
    assert hashlib.sha256(b"first copy").hexdigest() in lock
    assert weights.expected_sha256(weights.get_entry("tiny"))[0] == hashlib.sha256(b"first copy").hexdigest()
    (wdir / "tiny.pt").write_bytes(b"another copy!!")
    with pytest.raises(weights.WeightError, match="recorded in weights.lock.toml"):
        weights.resolve("tiny")


def test_published_hash_prefix_is_checked(tmp_path, monkeypatch):
    wdir = _fake_registry(tmp_path, monkeypatch, {"net": _entry(kind="alexnet", format="torch-state-dict",
                                                                filename="net.pth", sha256_prefix="00000000")})
    (wdir / "net.pth").write_bytes(b"not matching the prefix")
    with pytest.raises(weights.WeightError, match="published prefix is 00000000"):
        weights.resolve("net")
    assert not (tmp_path / "weights.lock.toml").exists()


def test_bad_registry_field_is_an_error(tmp_path, monkeypatch):
    _fake_registry(tmp_path, monkeypatch, {"tiny": _entry(colour="blue")})
    with pytest.raises(weights.WeightError, match=r"unknown field\(s\) \['colour'\]"):
        weights.registry()


# ---------------------------------------------------------------------------------------------------------------------
# CLI.


def test_cli_list_and_path(tmp_path, monkeypatch, capsys):
    content = b"tiny weights"
    wdir = _fake_registry(tmp_path, monkeypatch, {"tiny": _entry(sha256=hashlib.sha256(content).hexdigest()),
                                                  "other": _entry(filename="other.pt")})
    (wdir / "tiny.pt").write_bytes(content)
    assert weights.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "present" in out and "missing" in out
    assert weights.main(["path", "tiny"]) == 0
    assert capsys.readouterr().out.strip() == str(wdir / "tiny.pt")
    assert weights.main(["path", "other"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: weight 'other' is missing")


def test_cli_verify_wrong_hash_exits_2_with_one_line(tmp_path, monkeypatch):
    wdir = _fake_registry(tmp_path, monkeypatch, {"tiny": _entry(sha256="0" * 64)})
    (wdir / "tiny.pt").write_bytes(b"whatever")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "replication.weights", "verify", "tiny"], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "0" * 64 in lines[0]
    assert hashlib.sha256(b"whatever").hexdigest() in lines[0]


WEIGHT_SUFFIXES = (".pt", ".pth", ".pkl", ".ckpt", ".npz", ".safetensors", ".bin")


def test_every_weight_in_the_tree_has_a_registry_sha256():
    """Keep git small and honest: a weight file in the repository is a registry entry whose sha256 it matches."""
    from replication.runio import REPO_ROOT

    listed = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    tracked = sorted(p for p in listed.stdout.splitlines() if p.endswith(WEIGHT_SUFFIXES))
    registered = {e.repo_path: e for e in weights.registry().values() if e.repo_path}
    assert tracked, "the shipped mini-world weights should be tracked"
    unregistered = [p for p in tracked if p not in registered or not registered[p].sha256]
    assert not unregistered, f"weights without a registry sha256 in env/weights.toml: {unregistered}"
    for path in tracked:
        assert weights.file_sha256(REPO_ROOT / path) == registered[path].sha256, path
