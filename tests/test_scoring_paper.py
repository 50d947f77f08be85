"""Paper-world scoring end to end on CPU with stand-in weights of the real networks, and the score CLI's bad input."""
import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import replication.pipeline.score as score_cli
import replication.pipeline.scoring as pipeline_scoring
from metrics.scoring import clip_tag
from replication import weights
from replication.checkpoint import save_checkpoint
from replication.networks import Generator, GeneratorConfig
from replication.pipeline import train
from standins import random_inception_weights

DATA = Path(__file__).parent / "data"
CLIP_TINY = str(DATA / "clip_tiny.pt")
REGISTRY = Path(__file__).resolve().parent.parent / "env" / "weights.toml"
SIZE = 32  # the tiny generator's resolution; the reference images share it
N = 12


@dataclass(frozen=True)
class PaperWorld:
    root: Path  # holds runs/, scores.csv, the weights folder and the registry
    run_dir: Path
    eval_clip: str  # a file path: a tiny CLIP that did not guide the run
    reference: Path  # folder of N reference PNGs
    weights_dir: Path
    shas: dict  # registry name or eval CLIP path -> sha256
    score_rc: int  # exit code of the one successful scoring call


def _tiny_generator_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(size=SIZE, style_dim=64, n_mlp=2, channels=tuple((r, 32) for r in (4, 8, 16, 32))))
    save_checkpoint(path, generator_config=G.cfg, g_ema=G.state_dict())
    return path


def _registry_toml(path: Path, entries: dict[str, dict]) -> Path:
    """A registry holding `entries` (name -> fields); url/filename/source are copied from env/weights.toml's."""
    import tomllib

    real = tomllib.loads(REGISTRY.read_text(encoding="utf-8"))["weights"]
    lines = []
    for name, extra in entries.items():
        table = {key: real[name][key] for key in ("url", "filename", "source")} | extra
        lines.append(f'[weights."{name}"]')
        lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _perturbed_clip(path: Path) -> Path:
    """clip_tiny.pt with every float weight moved by ~2% of its mean magnitude (seeded): another CLIP, same shape."""
    state = torch.load(CLIP_TINY, map_location="cpu", weights_only=True)
    rng = torch.Generator().manual_seed(7)
    out = {}
    for key, value in state.items():
        if value.is_floating_point() and value.numel() > 1:
            value = value + 0.02 * value.abs().mean() * torch.randn(value.shape, generator=rng)
        out[key] = value
    torch.save(out, path)
    return path


def _reference_folder(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(N):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def _score_args(world: PaperWorld, run_dir=None, **override) -> list[str]:
    """The full, valid scoring command of the shared run, with `override` replacing single options."""
    options = {"--eval-clip": world.eval_clip, "--fid-reference": str(world.reference), "--n-clip": str(N),
               "--n-lpips": str(N), "--n-fid": str(N)} | {f"--{k.replace('_', '-')}": v for k, v in override.items()}
    runs = [str(world.run_dir)] if run_dir is None else [str(r) for r in run_dir]
    return [*runs, *(x for k, v in options.items() for x in (k, v)), "--no-progress"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One paper-world run trained with the train CLI and scored once with stand-in Inception and VGG16 weights."""
    root = tmp_path_factory.mktemp("paper")
    weights_dir = root / "weights"
    weights_dir.mkdir()
    inception = random_inception_weights(weights_dir / "weights-inception-2015-12-05-6726825d.pth")
    vgg = weights_dir / "vgg16-397923af.pth"
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), vgg)
    shas = {"inception-v3-fid": weights.file_sha256(inception), "vgg16-lpips": weights.file_sha256(vgg)}
    registry = _registry_toml(root / "weights.toml", {
        "inception-v3-fid": {"kind": "inception", "format": "torch-state-dict", "sha256": shas["inception-v3-fid"]},
        "vgg16-lpips": {"kind": "vgg", "format": "torch-state-dict", "sha256": shas["vgg16-lpips"]}})

    ckpt = _tiny_generator_checkpoint(root / "tiny_G.pt")
    shift = root / "tinypaper--sketch.toml"
    shift.write_text(f'[task]\nworld = "paper"\ngenerator = "{ckpt}"\nsource_text = "photo"\n'
                     f'target_text = "sketch"\neval_seeds = [0, 40]\n\n'
                     f'[nada]\niterations = 2\nbatch = 2\nclip_models = ["{CLIP_TINY}"]\nclip_model_weights = [1.0]\n'
                     f'auto_layer_iters = 0\nauto_layer_k = 2\noutput_interval = 1\nsave_interval = 0\n'
                     f'noise_mode = "const"\n', encoding="utf-8")
    eval_clip = str(_perturbed_clip(root / "clip_eval.pt"))
    reference = _reference_folder(root / "reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NADA_WEIGHTS_TOML", str(registry))
        mp.setenv("NADA_WEIGHTS_DIR", str(weights_dir))
        # reference statistics are cached in the repository otherwise
        mp.setattr(pipeline_scoring, "CACHE_DIR", root / "fidelity-cache")
        assert train.main(["--shift", str(shift), "--method", "nada", "--seed", "0", "--outdir", str(root / "runs"),
                           "--device", "cpu", "--no-progress"]) == 0
        w = PaperWorld(root=root, run_dir=root / "runs" / "paper" / "tinypaper--sketch" / "nada" / "seed0",
                       eval_clip=eval_clip, reference=reference, weights_dir=weights_dir,
                       shas={**shas, eval_clip: weights.file_sha256(Path(eval_clip))}, score_rc=0)
        rc = score_cli.main(_score_args(w))
        yield PaperWorld(**{**w.__dict__, "score_rc": rc})


def _rows(run_dir: Path) -> dict[str, dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return {row["metric"]: row for row in map(json.loads, lines)}


def test_paper_run_is_scored_and_collected(world):
    assert world.score_rc == 0
    tag = clip_tag(world.eval_clip)
    expected = {f"fid_inception_n{N}", f"kid_inception_n{N}", f"clip_quality_{tag}_n{N}",
                f"clip_diversity_{tag}_n{N}", f"clip_dir_{tag}_n{N}", f"intra_lpips_lpipsvgg_avg_n{N}",
                f"intra_lpips_lpipsvgg_all_n{N}"}
    rows = _rows(world.run_dir)
    assert expected <= rows.keys(), sorted(rows)
    for name, row in rows.items():
        assert math.isfinite(row["value"]), (name, row["value"])
        assert row["n_samples"] == N
        # each row names the exact files that judged it: the registry's two networks and the evaluation CLIP
        assert row["scorers"] == world.shas, row["scorers"]
    assert rows[f"fid_inception_n{N}"]["value"] > 0  # random images are far from a generator's samples
    assert 0 <= rows[f"intra_lpips_lpipsvgg_avg_n{N}"]["value"]
    assert str(world.reference) in rows[f"fid_inception_n{N}"]["protocol"]

    with open(world.root / "scores.csv", newline="", encoding="utf-8") as f:
        collected = [r for r in csv.DictReader(f)]
    assert {r["metric"] for r in collected} == rows.keys()
    for r in collected:
        assert (r["world"], r["shift"], r["method"], r["seed"]) == ("paper", "tinypaper--sketch", "nada", "0")
        assert float(r["value"]) == pytest.approx(rows[r["metric"]]["value"], rel=1e-12)


@pytest.fixture
def no_sampling(monkeypatch):
    """Any sample drawn (or any run scored) fails the test: bad input must be refused before that."""
    def refuse(*args, **kwargs):
        raise AssertionError("a run was scored although the input was bad")

    monkeypatch.setattr(score_cli, "score_one", refuse)
    monkeypatch.setattr(pipeline_scoring, "score_run", refuse)


def _refused(capsys, world: PaperWorld, argv: list[str]) -> str:
    """Run the CLI on bad input: exit code 2, one `error:` line on stderr, and nothing already written changed."""
    metrics_before = (world.run_dir / "metrics.jsonl").read_bytes()
    scores_before = (world.root / "scores.csv").read_bytes()
    capsys.readouterr()
    rc = score_cli.main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(err) == 1 and err[0].startswith("error:"), err
    assert (world.run_dir / "metrics.jsonl").read_bytes() == metrics_before
    assert (world.root / "scores.csv").read_bytes() == scores_before
    return err[0]


def test_missing_fid_reference_folder(world, capsys, no_sampling, tmp_path):
    missing = tmp_path / "no-such-folder"
    line = _refused(capsys, world, _score_args(world, fid_reference=str(missing)))
    assert str(missing) in line and "--fid-reference" in line


def test_too_few_samples_for_k_clusters(world, capsys, no_sampling):
    line = _refused(capsys, world, _score_args(world, n_lpips="5"))
    assert "k = 10" in line and "5" in line


def test_eval_clip_that_guided_the_run_is_refused(world, capsys, no_sampling):
    line = _refused(capsys, world, _score_args(world, eval_clip=CLIP_TINY))
    assert CLIP_TINY in line and "held out" in line


def test_missing_inception_weight_names_the_file(world, capsys, no_sampling, monkeypatch, tmp_path):
    # the same registry, but a weights folder holding only the VGG16 file
    os.link(world.weights_dir / "vgg16-397923af.pth", tmp_path / "vgg16-397923af.pth")
    monkeypatch.setenv("NADA_WEIGHTS_DIR", str(tmp_path))
    line = _refused(capsys, world, _score_args(world))
    assert "weights-inception-2015-12-05-6726825d.pth" in line and "inception-v3-fid" in line
    assert str(tmp_path / "weights-inception-2015-12-05-6726825d.pth") in line


def test_folder_that_is_not_a_finished_run(world, capsys, no_sampling, tmp_path):
    not_a_run = tmp_path / "paper" / "x" / "nada" / "seed0"
    not_a_run.mkdir(parents=True)
    # listed after a good run: nothing of the batch is scored
    line = _refused(capsys, world, _score_args(world, run_dir=[world.run_dir, not_a_run]))
    assert str(not_a_run) in line and "not a finished run" in line


def test_eval_clip_that_guided_the_run_is_refused_whatever_its_spelling(world, capsys, no_sampling):
    same_file = os.path.relpath(CLIP_TINY)  # the guidance CLIP, relative to the working directory
    assert Path(same_file).resolve() == Path(CLIP_TINY).resolve()
    line = _refused(capsys, world, _score_args(world, eval_clip=same_file))
    assert "held out" in line
