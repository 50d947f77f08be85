"""Every shift file in replication/shifts/ loads and dry-runs without weights; paper shifts name their source; the
HyperDomainNet text domains, the seed write-up's FFHQ shifts, SVL's protocol and an image-guided shift are all there."""
from __future__ import annotations

import re
import shutil
import urllib.request
from pathlib import Path

import pytest

from replication import weights
from replication.config import SHIFTS_DIR, available_shifts, load_shift, to_dict
from replication.losses import ImageFolderError
from replication.nada import resolve_guidance_images
from replication.pipeline.train import main as train_main

SHIFTS = available_shifts()
PAPER_SHIFTS = [name for name in SHIFTS if load_shift(name).task.world == "paper"]

# HyperDomainNet text_domains/domain_list_20.txt ("target - source"), the de-facto list of NADA text domains, mapped
# to the file that trains it from FFHQ. Texts compare case-insensitively: CLIP's tokenizer lowercases.
HYPERDOMAINNET = {
    "Anime Painting": ("Photo", "ffhq--anime-painting"),
    "Impressionism Painting": ("Photo", "ffhq--impressionism-painting"),
    "Mona Lisa Painting": ("Photo", "ffhq--mona-lisa-painting"),
    "3D Render in the Style of Pixar": ("Photo", "ffhq--pixar"),
    "Painting in the Style of Edvard Munch": ("Photo", "ffhq--munch"),
    "Cubism Painting": ("Photo", "ffhq--cubism-painting"),
    "Sketch": ("Photo", "ffhq--sketch"),
    "Dali Painting": ("Photo", "ffhq--dali-painting"),
    "Fernando Botero Painting": ("Photo", "ffhq--botero"),
    "A painting in Ukiyo-e style": ("Photo", "ffhq--ukiyo-e"),
    "Tolkien Elf": ("Human", "ffhq--tolkien-elf"),
    "Neanderthal": ("Human", "ffhq--neanderthal"),
    "The Shrek": ("Human", "ffhq--shrek"),
    "Zombie": ("Human", "ffhq--zombie"),
    "The Hulk": ("Human", "ffhq--hulk"),
    "The Thanos": ("Human", "ffhq--thanos"),
    "Werewolf": ("Human", "ffhq--werewolf"),
    "Nicolas Cage": ("Human", "ffhq--nicolas-cage"),
    "The Joker": ("Human", "ffhq--joker"),
    "Mark Zuckerberg": ("Human", "ffhq--zuckerberg"),
}

# The seed write-up's FFHQ shifts (project issue 30): the word each target text must hold, and its file.
SEED_SHIFTS = {"zombie": "ffhq--zombie", "joker": "ffhq--joker", "comic": "ffhq--comic-book",
               "disney": "ffhq--disney"}

# What a source comment names: the paper, the original README / notebook / code, a GitHub issue, a peer paper or the
# reference notes.
SOURCE = re.compile(r"paper|README|notebook|train\.py|issue #?\d+|Fig\.|Table \d|section \d|reference spec|"
                    r"HyperDomainNet|SVL|IPL|casualganpapers", re.IGNORECASE)


@pytest.fixture(autouse=True)
def _no_weights(tmp_path, monkeypatch):
    """An empty weights folder and no network: nothing here may need a weight file or download one."""
    empty = tmp_path / "no-weights"
    empty.mkdir()
    monkeypatch.setenv("NADA_WEIGHTS_DIR", str(empty))

    def refuse(*args, **kwargs):
        raise AssertionError("tests must never download")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def _comments(name: str) -> str:
    return "\n".join(line for line in (SHIFTS_DIR / f"{name}.toml").read_text().splitlines()
                     if line.lstrip().startswith("#"))


@pytest.mark.parametrize("name", SHIFTS)
def test_shift_loads_and_dry_runs(name, tmp_path, capsys):
    cfg = load_shift(name)
    assert cfg.task.name == name
    out = tmp_path / "runs"
    assert train_main(["--shift", name, "--seed", "0", "--dry-run", "--outdir", str(out)]) == 0
    assert f'"name": "{name}"' in capsys.readouterr().out
    assert not out.exists() or not any(out.rglob("*.pt"))  # a dry run writes no checkpoint


@pytest.mark.parametrize("name", PAPER_SHIFTS)
def test_paper_shift_names_registry_weights_and_a_source(name):
    cfg = load_shift(name)
    registry = weights.registry()
    assert registry[cfg.task.generator].kind == "generator", cfg.task.generator
    assert cfg.task.resolution == registry[cfg.task.generator].resolution
    assert all(registry[clip].kind == "clip" for clip in cfg.nada.clip_models), cfg.nada.clip_models
    for images in (cfg.task.target_images, cfg.task.source_images):
        assert images is None or registry[images].kind == "image-set", images  # shipped shifts name no local folder
    assert SOURCE.search(_comments(name)), f"{name}.toml has no comment naming its source"


def test_no_two_files_are_the_same_shift():
    seen: dict[str, str] = {}
    for name in SHIFTS:
        d = to_dict(load_shift(name))
        d["task"].pop("name")
        for section in ("task",):
            for key in ("source_text", "target_text"):
                d[section][key] = d[section][key].lower()
        key = repr(d)
        assert key not in seen, f"{name} and {seen.get(key)} are the same shift"
        seen[key] = name


@pytest.mark.parametrize("domain", HYPERDOMAINNET)
def test_hyperdomainnet_domain_has_its_file(domain):
    source, name = HYPERDOMAINNET[domain]
    assert name in SHIFTS, f"no file for HyperDomainNet's {domain!r}"
    task = load_shift(name).task
    assert (task.generator, task.world) == ("stylegan2-ffhq-config-f", "paper")
    assert (task.source_text.lower(), task.target_text.lower()) == (source.lower(), domain.lower())
    assert task.target_images is None


def test_seed_write_up_shifts_are_present():
    for word, name in SEED_SHIFTS.items():
        task = load_shift(name).task
        assert task.generator == "stylegan2-ffhq-config-f" and word in task.target_text.lower(), name


def test_svl_protocol_file():
    cfg = load_shift("dog--cat-svl")
    t, n = cfg.task, cfg.nada
    assert (t.generator, t.source_text, t.target_text) == ("stylegan2-ada-afhqdog", "dog", "cat")
    assert n.clip_models == ("ViT-B/32",) and n.batch == 4 and n.iterations == 2000
    assert n.lr == pytest.approx(0.002) and n.betas == pytest.approx((0.0, 0.99))
    assert t.eval_seeds == (0, 1000)  # SVL scores 1,000 samples
    readme = load_shift("dog--cat").nada
    assert (readme.batch, readme.clip_models) == (2, ("ViT-B/32", "ViT-B/16"))  # the README recipe beside it


def test_an_image_guided_shift_names_a_registered_image_set():
    guided = [name for name in PAPER_SHIFTS if load_shift(name).task.target_images is not None]
    assert guided
    for name in guided:
        entry = weights.get_entry(load_shift(name).task.target_images)
        assert entry.kind == "image-set" and entry.url.startswith("https://") and entry.source


def test_image_set_resolution(tmp_path, monkeypatch):
    registry = tmp_path / "weights.toml"  # a copy, so the lock file of the first use lands in tmp_path
    shutil.copy(weights.registry_path(), registry)
    monkeypatch.setenv("NADA_WEIGHTS_TOML", str(registry))
    wdir = tmp_path / "wdir"
    wdir.mkdir()
    monkeypatch.setenv("NADA_WEIGHTS_DIR", str(wdir))
    name = load_shift("ffhq--disney-princess-image").task.target_images

    with pytest.raises(weights.WeightError) as missing:  # absent: one line naming the url, the path and the command
        resolve_guidance_images(name)
    message = str(missing.value)
    assert "\n" not in message and str(wdir) in message and f"weights download {name}" in message

    image = wdir / weights.get_entry(name).filename
    image.write_bytes(b"\xff\xd8\xff\xe0 stand-in jpeg")
    assert resolve_guidance_images(name) == [image]

    folder = tmp_path / "style"
    folder.mkdir()
    assert resolve_guidance_images(str(folder)) == str(folder)  # a folder path is used as it is
    for bad in ("no-such-image-set", str(tmp_path / "missing-folder"), "ViT-B/32"):
        with pytest.raises(ImageFolderError, match=f"neither an existing folder.*{name}"):
            resolve_guidance_images(bad)
