"""NADA training loop on tiny random models: it learns, survives identical start images, resumes exactly, stops on NaN."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from replication.checkpoint import load_generator, save_checkpoint
from replication.clip_models import load_clip
from replication.config import parse_shift
from replication.losses import text_direction
from replication.nada import adapt
from replication.networks import Generator, GeneratorConfig
from replication.training_loop import FINAL_NAME, RESUME_NAME, StepContext, TrainingDiverged, run_nada

DATA = Path(__file__).parent / "data"
CLIP_TINY = str(DATA / "clip_tiny.pt")
REPO = Path(__file__).resolve().parent.parent


def tiny_G(seed=0):
    torch.manual_seed(seed)
    return Generator(GeneratorConfig(size=32, style_dim=64, n_mlp=2, channels=tuple((r, 32) for r in (4, 8, 16, 32))))


def shift(**nada):
    base = {"clip_models": [CLIP_TINY], "clip_model_weights": [1.0], "iterations": 10, "auto_layer_iters": 0,
            "noise_mode": "const", "output_interval": 1000, "save_interval": 0, "mode": "fixed"}
    base.update(nada)
    return parse_shift({"task": {"world": "mini", "generator": "tiny", "source_text": "photo", "target_text": "sketch"},
                        "nada": base}, "tiny--sketch")


@pytest.fixture(scope="module")
def tiny_clip():
    return load_clip(CLIP_TINY)


def mean_cosine(G_src, G_tgt, clip, z):
    """Mean cosine between the CLIP image-pair directions and the text direction on fixed latents."""
    with torch.no_grad():
        d = text_direction(clip, "photo", "sketch")
        x_s, _ = G_src([z], noise_mode="const")
        x_t, _ = G_tgt([z], noise_mode="const")
        e = clip.image_features(x_t) - clip.image_features(x_s)
        return torch.nn.functional.cosine_similarity(e, d).mean().item()


def test_short_run_lowers_directional_loss(tmp_path, tiny_clip):
    G_src = tiny_G()
    z = torch.randn(16, 64, generator=torch.Generator().manual_seed(99))
    G_1 = adapt(G_src, shift(iterations=1, lr=0.005), 0, tmp_path / "one", encoders=[(tiny_clip, 1.0)], progress=False)
    G_n = adapt(G_src, shift(iterations=40, lr=0.005), 0, tmp_path / "many", encoders=[(tiny_clip, 1.0)],
                progress=False)
    cos_1, cos_n = mean_cosine(G_src, G_1, tiny_clip, z), mean_cosine(G_src, G_n, tiny_clip, z)
    assert cos_n > cos_1 + 0.05, (cos_1, cos_n)
    rows = [json.loads(line) for line in (tmp_path / "many" / "stats.jsonl").read_text().splitlines()]
    assert len(rows) == 40
    first, last = sum(r["loss"] for r in rows[1:11]) / 10, sum(r["loss"] for r in rows[-10:]) / 10
    assert last < first, (first, last)
    assert (tmp_path / "many" / "DONE").is_file() and (tmp_path / "many" / "samples" / "final.png").is_file()
    G_loaded, ckpt = load_generator(tmp_path / "many" / "checkpoints" / "G_tgt.pt")
    assert ckpt.provenance["method"] == "nada"
    assert all(torch.equal(a, b) for a, b in zip(G_loaded.state_dict().values(), G_n.state_dict().values()))


def test_identical_generators_with_fixed_noise_still_train(tmp_path, tiny_clip):
    """At step 0 the two images are identical (difference exactly 0); the fixed directional loss must still give a
    finite, bounded gradient so that training moves the output within 10 steps."""
    G_src = tiny_G()
    G_tgt = adapt(G_src, shift(iterations=10), 0, tmp_path, encoders=[(tiny_clip, 1.0)], progress=False)
    z = torch.randn(4, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        x_s, _ = G_src([z], noise_mode="const")
        x_t, _ = G_tgt([z], noise_mode="const")
    assert (x_t - x_s).abs().mean() > 1e-3
    assert all(torch.isfinite(p).all() for p in G_tgt.parameters())


def _weights(G):
    return {k: v.clone() for k, v in G.state_dict().items()}


@pytest.mark.parametrize("mode, extra", [("fixed", {}), ("faithful", {"auto_layer_iters": 1, "auto_layer_k": 3,
                                                                      "auto_layer_batch": 2, "mixing": 0.5,
                                                                      "noise_mode": "random"})])
def test_resume_after_kill_is_bit_identical(tmp_path, tiny_clip, mode, extra):
    cfg = shift(iterations=8, save_interval=3, mode=mode, **extra)
    G_full = adapt(tiny_G(), cfg, 7, tmp_path / "full", encoders=[(tiny_clip, 1.0)], progress=False)
    adapt(tiny_G(), cfg, 7, tmp_path / "killed", encoders=[(tiny_clip, 1.0)], progress=False, stop_at=5)
    assert not (tmp_path / "killed" / "DONE").exists()
    # a kill between checkpoints: the resume file is at step 5, stats beyond it get recomputed
    G_resumed = adapt(tiny_G(), cfg, 7, tmp_path / "killed", encoders=[(tiny_clip, 1.0)], progress=False)
    a, b = _weights(G_full), _weights(G_resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    full_rows = (tmp_path / "full" / "stats.jsonl").read_text().splitlines()
    resumed_rows = (tmp_path / "killed" / "stats.jsonl").read_text().splitlines()
    strip = lambda rows: [{k: v for k, v in json.loads(r).items() if k != "seconds"} for r in rows]
    assert strip(full_rows) == strip(resumed_rows)


def test_finished_run_is_skipped(tmp_path, tiny_clip):
    cfg = shift(iterations=2)
    adapt(tiny_G(), cfg, 0, tmp_path, encoders=[(tiny_clip, 1.0)], progress=False)
    # a finished run keeps its final generator, not its resume state
    assert (tmp_path / "checkpoints" / FINAL_NAME).is_file() and not (tmp_path / "checkpoints" / RESUME_NAME).exists()
    stamp = (tmp_path / "DONE").stat().st_mtime_ns
    adapt(tiny_G(), cfg, 0, tmp_path, encoders=[(tiny_clip, 1.0)], progress=False)
    assert (tmp_path / "DONE").stat().st_mtime_ns == stamp


def test_nan_stops_and_keeps_last_good_state(tmp_path, tiny_clip):
    calls = {"n": 0}

    def guidance(x_src, x_tgt):
        calls["n"] += 1
        loss = (x_tgt - x_src).pow(2).mean()
        return (loss * float("nan") if calls["n"] == 4 else loss), {}

    cfg = shift(iterations=10)
    G_src = tiny_G()
    with pytest.raises(TrainingDiverged, match="step 3"):
        run_nada(G_src, cfg, StepContext(guidance=guidance, select=None, cfg=cfg.nada), 0, tmp_path, progress=False)
    state = torch.load(tmp_path / "checkpoints" / RESUME_NAME, weights_only=True)
    assert state["step"] == 3 and all(torch.isfinite(v).all() for v in state["G_tgt"].values())
    assert not (tmp_path / "DONE").exists()


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    G = tiny_G()
    save_checkpoint(path, generator_config=G.cfg, g_ema=G.state_dict())
    return path


def _cli(tmp_path, ckpt, task_extra="", nada_extra=""):
    toml = tmp_path / "s.toml"
    toml.write_text(f'[task]\nworld = "mini"\ngenerator = "{ckpt}"\nsource_text = "photo"\ntarget_text = "sketch"\n'
                    f'{task_extra}\n[nada]\nclip_models = ["{CLIP_TINY}"]\nclip_model_weights = [1.0]\niterations = 2\n'
                    f'auto_layer_k = 2\n{nada_extra}\n')
    return subprocess.run([sys.executable, "-m", "replication.pipeline.train", "--shift", str(toml), "--outdir",
                           str(tmp_path / "runs"), "--no-progress", "--device", "cpu"],
                          capture_output=True, text=True, cwd=REPO, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin"})


def test_cli_trains_a_tiny_shift(tmp_path, tiny_ckpt):
    out = _cli(tmp_path, tiny_ckpt)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "runs" / "mini" / "s" / "nada" / "seed0" / "DONE").is_file()


@pytest.mark.parametrize("task_extra, nada_extra, fragment", [
    ('target_text_override = 1', "", "unknown key"),
    ("", 'clip_models = ["ViT-Q/99"]\nclip_model_weights = [1.0]', "unknown CLIP model"),
    ('target_images = "/nonexistent/folder"', "", "/nonexistent/folder"),
])
def test_cli_bad_input_is_one_line(tmp_path, tiny_ckpt, task_extra, nada_extra, fragment):
    text = _cli(tmp_path, tiny_ckpt, task_extra, "")
    if nada_extra:  # replace the clip list instead of duplicating keys
        toml = tmp_path / "s.toml"
        toml.write_text(toml.read_text().replace(f'clip_models = ["{CLIP_TINY}"]\nclip_model_weights = [1.0]', nada_extra))
        text = subprocess.run([sys.executable, "-m", "replication.pipeline.train", "--shift", str(toml), "--outdir",
                               str(tmp_path / "runs"), "--no-progress", "--device", "cpu"],
                              capture_output=True, text=True, cwd=REPO, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin"})
    lines = [line for line in text.stderr.splitlines() if line.startswith("error:")]
    assert text.returncode == 2 and len(lines) == 1 and fragment in lines[0], text.stderr


@pytest.mark.parametrize("target, fragment", [("", "target_text is empty"), (" ".join(["sketch"] * 80), "77")])
def test_cli_rejects_bad_prompts(tmp_path, tiny_ckpt, target, fragment):
    out = _cli(tmp_path, tiny_ckpt)
    toml = tmp_path / "s.toml"
    toml.write_text(toml.read_text().replace('target_text = "sketch"', f'target_text = "{target}"'))
    out = subprocess.run([sys.executable, "-m", "replication.pipeline.train", "--shift", str(toml), "--outdir",
                          str(tmp_path / "runs2"), "--no-progress", "--device", "cpu"],
                         capture_output=True, text=True, cwd=REPO, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin"})
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(lines) == 1 and fragment in lines[0], out.stderr


def test_non_finite_gradient_stops_before_the_weights_change(tmp_path):
    calls = {"n": 0}

    def guidance(x_src, x_tgt):
        calls["n"] += 1
        if calls["n"] == 3:  # a finite loss whose gradient is NaN
            x_tgt.register_hook(lambda g: g * float("nan"))
        return (x_tgt - x_src).pow(2).mean(), {}

    cfg = shift(iterations=10)
    with pytest.raises(TrainingDiverged, match="non-finite gradient in .* at step 2"):
        run_nada(tiny_G(), cfg, StepContext(guidance=guidance, select=None, cfg=cfg.nada), 0, tmp_path, progress=False)
    state = torch.load(tmp_path / "checkpoints" / RESUME_NAME, weights_only=True)
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["G_tgt"].values())
