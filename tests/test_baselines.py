"""The baselines behind the method interface (StyleCLIP optimisation, StyleSpace offsets, IPL), each a few steps on the
mini world and once on stand-in paper-world weights, and a new method added by following docs/adding_a_method.md."""
import csv
import dataclasses
import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch

from baselines import METHODS, check_method
from baselines.ipl import MAPPER_NAME, IplConfig, PromptMapper, ipl_shift
from baselines.styleclip_opt import CACHE_FOLDER, StyleClipOptConfig, lr_at
from baselines.stylespace import offset_count, offset_parameters, style_offsets
from replication.checkpoint import load_generator, save_checkpoint
from replication.clip_models import load_clip
from replication.config import ConfigError, load_shift, parse_shift
from replication.nada import resolve_generator_path
from replication.networks import Generator, GeneratorConfig
from replication.sampling import sample_images

ROOT = Path(__file__).resolve().parent.parent
CLIP_TINY = str(Path(__file__).parent / "data" / "clip_tiny.pt")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def G_src():
    return load_generator(resolve_generator_path("mini-stylegan2"))[0].eval()


@pytest.fixture(scope="module")
def clip_a():
    return load_clip("mini-clip-a")


def _shift(iterations: int = 4, name: str = "mini--zombie"):
    shift = load_shift(name)
    return dataclasses.replace(shift, nada=dataclasses.replace(shift.nada, iterations=iterations, output_interval=1000,
                                                               save_interval=0))


def _state(G) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in G.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _done(run_dir: Path) -> dict:
    assert (run_dir / "DONE").is_file() and (run_dir / "samples" / "final.png").is_file()
    assert (run_dir / "env.json").is_file() and (run_dir / "stats.jsonl").is_file()
    return json.loads((run_dir / "config.json").read_text())


def _zombie_similarity(encoder, images: torch.Tensor) -> float:
    return (encoder.image_features(images) @ encoder.text_features(["a zombie"]).T).mean().item()


# ------------------------------------------------------------------------------------------------------ stylespace
def test_stylespace_trains_only_the_style_offsets(tmp_path, G_src, clip_a):
    before = _state(G_src)
    kw = dict(encoders=[(clip_a, 1.0)], progress=False)
    G_tgt = METHODS["stylespace"](G_src, _shift(), 0, tmp_path / "a", **kw)
    config = _done(tmp_path / "a")
    assert _same(_state(G_src), before)  # the source is untouched
    offsets = {id(p) for p in offset_parameters(G_tgt)}
    names = {n for n, p in G_tgt.named_parameters() if id(p) in offsets}
    assert names == {"conv1.conv.modulation.bias"} | {f"convs.{i}.conv.modulation.bias" for i in range(8)}
    tgt = _state(G_tgt)
    for name, value in tgt.items():  # every generator weight bit-identical, the offsets (folded into biases) moved
        assert torch.equal(value, before[name]) != (name in names), name
    count = offset_count(G_src)
    assert count == 928 == sum(d.numel() for d in style_offsets(G_src, G_tgt).values())
    assert config["method"] == "stylespace" and config["stylespace"]["trained_params"] == count
    assert config["nada"]["lr"] == 0.05 and config["nada"]["betas"] == [0.9, 0.999]
    stats = [json.loads(line) for line in (tmp_path / "a" / "stats.jsonl").read_text().splitlines()]
    assert len(stats) == 4 and all(row["trained_params"] == count for row in stats)
    assert stats[-1]["loss"] < stats[0]["loss"]
    # deterministic per seed; another seed trains other offsets
    again = METHODS["stylespace"](G_src, _shift(), 0, tmp_path / "b", **kw)
    assert _same(_state(again), tgt)
    other = METHODS["stylespace"](G_src, _shift(), 1, tmp_path / "c", **kw)
    assert not _same(_state(other), tgt)
    # a finished run is read back, not trained again
    assert _same(_state(METHODS["stylespace"](G_src, _shift(), 0, tmp_path / "a", **kw)), tgt)


def test_stylespace_counts_six_thousand_offsets_for_ffhq_1024():
    with torch.device("meta"):  # shapes only: no 30M random weights drawn
        G = Generator(GeneratorConfig(size=1024))
    assert offset_count(G) == 6048  # StyleDomain Table 1: "StyleSpace, 6.0K"


# --------------------------------------------------------------------------------------------------- styleclip-opt
def test_styleclip_schedule_is_styleclips():
    cfg = StyleClipOptConfig(steps=300).resolved("paper")
    assert lr_at(0, cfg) == 0.0  # the ramp-up starts at zero
    assert lr_at(150, cfg) == pytest.approx(0.1)
    assert lr_at(299, cfg) < 0.001 and lr_at(15, cfg) == pytest.approx(0.1)
    assert StyleClipOptConfig().resolved("paper").steps == 300 and StyleClipOptConfig().resolved("mini").steps == 100
    with pytest.raises(ConfigError, match="styleclip-opt: steps"):
        StyleClipOptConfig(steps=0)


def test_styleclip_opt_moves_images_toward_the_target_and_leaves_the_generator(tmp_path, G_src, clip_a):
    before = _state(G_src)
    config = StyleClipOptConfig(steps=6, chunk=4)
    kw = dict(encoders=[(clip_a, 1.0)], progress=False, config=config)
    G_tgt = METHODS["styleclip-opt"](G_src, _shift(), 0, tmp_path / "a", **kw)
    recorded = _done(tmp_path / "a")
    assert recorded["method"] == "styleclip-opt" and recorded["styleclip-opt"]["steps"] == 6
    assert len((tmp_path / "a" / "stats.jsonl").read_text().splitlines()) == 2 * 6  # 8 grid latents, chunks of 4
    z = torch.randn(4, G_src.style_dim, generator=torch.Generator().manual_seed(7))
    G_tgt = G_tgt.eval().cpu()  # what the scorers do
    x_tgt, x_src = sample_images(G_tgt, z), sample_images(G_src, z)
    assert _same(_state(G_src), before) and _same(_state(G_tgt.G), before)  # the generator is unchanged
    assert (x_tgt - x_src).abs().mean() > 0.01
    assert _zombie_similarity(clip_a, x_tgt) > _zombie_similarity(clip_a, x_src) + 0.05
    # optimised codes are cached in the run folder: sampling again reads them, and gives the same images
    cached = sorted((tmp_path / "a" / "checkpoints" / CACHE_FOLDER).glob("*.pt"))
    assert len(cached) == 3  # two grid chunks and the one chunk of z
    assert torch.equal(sample_images(G_tgt, z), x_tgt)
    # deterministic: another run folder (no cache) optimises to the same images
    other = METHODS["styleclip-opt"](G_src, _shift(), 0, tmp_path / "b", **{**kw, "config": config})
    assert torch.allclose(sample_images(other.eval(), z), x_tgt, atol=1e-5)
    # the paper world's FID streams from G_tgt through torch-fidelity's generator interface
    from metrics.fidelity import GeneratorSource

    images = GeneratorSource(G_tgt)(z[:2])
    assert images.dtype == torch.uint8 and images.shape == (2, 3, G_src.size, G_src.size)


def test_text_methods_refuse_an_image_guided_shift(tmp_path):
    data = {"task": {"world": "mini", "generator": "mini-stylegan2", "source_text": "human", "target_text": "zombie",
                     "target_images": str(tmp_path)}, "nada": {"clip_models": ["mini-clip-a"],
                                                               "clip_model_weights": [1.0]}}
    shift = parse_shift(data, "mini--images")
    for method in ("styleclip-opt", "ipl"):
        with pytest.raises(ConfigError, match=method):
            check_method(method, shift)
    check_method("stylespace", shift)  # StyleDomain adapts to images as well


# ------------------------------------------------------------------------------------------------------------- ipl
def test_ipl_learns_image_specific_directions_and_trains_deterministically(tmp_path, G_src, clip_a):
    config = IplConfig(mapper_iterations=3, mapper_batch=4)
    kw = dict(encoders=[(clip_a, 1.0)], progress=False, config=config)
    shift = _shift(3)
    G_tgt = METHODS["ipl"](G_src, shift, 0, tmp_path / "a", **kw)
    recorded = _done(tmp_path / "a")
    assert recorded["method"] == "ipl" and recorded["ipl"]["n_ctx"] == 4 and recorded["ipl"]["mapper_iterations"] == 3
    assert len((tmp_path / "a" / "stats_mapper.jsonl").read_text().splitlines()) == 3
    assert not _same(_state(G_tgt), _state(G_src))
    # stage 1's mapper gives each latent its own prompt, so each image its own direction
    saved = torch.load(tmp_path / "a" / "checkpoints" / MAPPER_NAME, weights_only=True)
    mapper = PromptMapper(G_src.style_dim, clip_a.model.ln_final.weight.shape[0], 4)
    mapper.load_state_dict(saved["mapper"])
    from baselines.ipl import IplPrompts

    prompts = IplPrompts(clip_a, "human", "zombie", config, shift.nada.mode)
    with torch.no_grad():
        directions = prompts.directions(mapper(G_src.mapping(torch.randn(3, G_src.style_dim))))
    assert directions.shape == (3, clip_a.embed_dim) and (directions[0] - directions[1]).abs().max() > 1e-4
    again = METHODS["ipl"](G_src, shift, 0, tmp_path / "b", **kw)
    assert _same(_state(again), _state(G_tgt))


def test_ipl_uses_one_clip_and_its_own_layer_count():
    shift = load_shift("ffhq--sketch")  # ViT-B/32 + ViT-B/16, k = 18: IPL keeps ViT-B/32 alone and k = 12
    with torch.device("meta"):
        G = Generator(GeneratorConfig(size=1024))
    nada = ipl_shift(shift, G, IplConfig()).nada
    assert nada.clip_models == ("ViT-B/32",) and nada.auto_layer_k == 12


# --------------------------------------------------------------------------------------- paper world, stand-in weights
def test_every_baseline_runs_on_a_paper_world_shift_with_stand_in_weights(tmp_path):
    """Paper-world code path (faithful mode, random noise, layer selection) on a tiny generator and tiny CLIP."""
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(size=32, style_dim=64, n_mlp=2, channels=tuple((r, 32) for r in (4, 8, 16, 32))))
    path = tmp_path / "G.pt"
    save_checkpoint(path, generator_config=G.cfg, g_ema=G.state_dict())
    data = {"task": {"world": "paper", "generator": str(path), "source_text": "photo", "target_text": "sketch",
                     "grid_seeds": [0, 1]},
            "nada": {"iterations": 2, "batch": 2, "clip_models": [CLIP_TINY], "clip_model_weights": [1.0],
                     "auto_layer_k": 3, "auto_layer_batch": 2, "output_interval": 1000, "save_interval": 0}}
    shift = parse_shift(data, "tiny--sketch")
    assert shift.nada.mode == "faithful" and shift.nada.auto_layer_iters == 1
    G_src = load_generator(path)[0]
    z = torch.randn(2, 64, generator=torch.Generator().manual_seed(1))
    extra = {"styleclip-opt": {"config": StyleClipOptConfig(steps=2)},
             "ipl": {"config": IplConfig(mapper_iterations=2, mapper_batch=2)}}
    for method in ("styleclip-opt", "stylespace", "ipl"):
        check_method(method, shift)
        G_tgt = METHODS[method](G_src, shift, 0, tmp_path / method, progress=False, **extra.get(method, {}))
        assert _done(tmp_path / method)["method"] == method
        images = sample_images(G_tgt.eval().cpu(), z)
        assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()


# ------------------------------------------------------------------------------------------- docs/adding_a_method.md
def test_a_method_added_by_following_the_docs_reaches_the_table(tmp_path, monkeypatch):
    """The template of docs/adding_a_method.md, saved as its own file and registered, goes through replicate's
    train -> score -> collect on a shortened mini shift; its rows land in scores.csv."""
    page = (ROOT / "docs" / "adding_a_method.md").read_text(encoding="utf-8")
    template = re.search(r"```python\n(.*?)```", page, re.S).group(1)
    module_path = tmp_path / "nada_l1.py"
    module_path.write_text(template, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("nada_l1", module_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(METHODS, module.METHOD_NAME, module.adapt)  # the one line in baselines/__init__.py
    # a shortened copy of a mini shift, passed by path (section 5)
    toml = (ROOT / "replication" / "shifts" / "mini--zombie.toml").read_text(encoding="utf-8")
    toml = re.sub(r"(?m)^iterations = \d+", "iterations = 2", toml)
    shift_path = tmp_path / "mini--zombie-short.toml"
    shift_path.write_text(toml, encoding="utf-8")
    from replication.pipeline import replicate

    outdir = tmp_path / "runs"
    rc = replicate.main(["--shifts", str(shift_path), "--methods", module.METHOD_NAME, "--seeds", "0", "--outdir",
                         str(outdir), "--no-figures", "--no-progress", "--workers", "1", "--threads", "1",
                         "--n-eval", "8", "--n-lpips", "12", "--n-fid", "8"])
    assert rc == 0
    run_dir = outdir / "mini" / "mini--zombie-short" / module.METHOD_NAME / "seed0"
    config = _done(run_dir)
    assert config["nada-l1"] == {"lambda_l1": 1.0}
    assert "l1" in json.loads((run_dir / "stats.jsonl").read_text().splitlines()[0])
    with open(outdir / "scores.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["method"] == module.METHOD_NAME]
    assert rows and {r["world"] for r in rows} == {"mini"} and {r["shift"] for r in rows} == {"mini--zombie-short"}
    assert any(r["metric"].startswith("mini_target_accuracy") for r in rows)
