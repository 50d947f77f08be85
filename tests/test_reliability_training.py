"""Training reliability: a diverging run stops unrecorded, good states survive, resume is exact, one process per run."""
import copy
import json
import re
import subprocess
import sys
import time

import pytest
import torch

from replication.checkpoint import save_checkpoint
from replication.clip_models import load_clip
from replication.config import load_shift
from replication.nada import adapt, load_encoders, load_source
from replication.training_loop import FINAL_NAME, RESUME_NAME, TrainingDiverged
from test_training import CLIP_TINY, REPO, shift, tiny_G

PREVIOUS_NAME = "resume.prev.pt"


@pytest.fixture(scope="module")
def tiny_clip():
    return load_clip(CLIP_TINY)


@pytest.fixture(scope="module")
def mini():
    """The mini world's source generator, latent average and CLIP, loaded once."""
    base = load_shift("mini--zombie")
    G_src, latent_avg, _ = load_source(base, torch.device("cpu"))
    return G_src, latent_avg, load_encoders(base.nada, torch.device("cpu"))


def train_mini(mini, run_dir, **nada):
    G_src, latent_avg, encoders = mini
    return adapt(G_src, load_shift("mini--zombie", {"nada": nada}), 0, run_dir, encoders=encoders, progress=False,
                 latent_avg=latent_avg)


def grid_rms(G, state_dict):
    """Pixel rms of G with these weights on fixed latents (constant noise)."""
    G = copy.deepcopy(G)
    G.load_state_dict(state_dict)
    with torch.no_grad():
        z = torch.randn(8, G.style_dim, generator=torch.Generator().manual_seed(0))
        return G([z], noise_mode="const")[0].pow(2).mean().sqrt().item()


def test_runaway_learning_rate_stops_before_anything_is_recorded(tmp_path, mini):
    """lr 1e6 blows the images up after one step (pixel rms ~1e18 on the mini world): no DONE, no final or resume
    checkpoint, and the stats end before the runaway step."""
    with pytest.raises(TrainingDiverged, match=r"images ran away .* at step 1; stopped, no good state was saved"):
        train_mini(mini, tmp_path, lr=1e6)
    assert not (tmp_path / "DONE").exists()
    assert not any((tmp_path / "checkpoints" / name).exists() for name in (FINAL_NAME, RESUME_NAME, PREVIOUS_NAME))
    assert [json.loads(line)["step"] for line in (tmp_path / "stats.jsonl").read_text().splitlines()] == [0]


def test_healthy_mini_run_finishes(tmp_path, mini):
    """The guard does not fire on the shift's own settings (checkpoints checked at every save, the end checked)."""
    train_mini(mini, tmp_path, iterations=30, save_interval=10)
    assert (tmp_path / "DONE").is_file() and (tmp_path / "checkpoints" / FINAL_NAME).is_file()
    left = {p.name for p in (tmp_path / "checkpoints").iterdir()}
    assert left == {FINAL_NAME} and not (tmp_path / ".lock").exists()


def test_divergence_keeps_the_last_good_state(tmp_path, mini):
    """lr 0.05 trains for tens of steps, then runs away: resume.pt keeps finite weights of a checkpoint before the
    divergence, whose images are in range."""
    with pytest.raises(TrainingDiverged, match="images ran away") as info:
        train_mini(mini, tmp_path, lr=0.05, save_interval=10)
    diverged_at = int(re.search(r"at step (\d+)", str(info.value)).group(1))
    state = torch.load(tmp_path / "checkpoints" / RESUME_NAME, weights_only=True)
    assert 10 <= state["step"] < diverged_at and f"(step {state['step']})" in str(info.value)
    assert all(torch.isfinite(v).all() for v in state["G_tgt"].values())
    assert grid_rms(mini[0], state["G_tgt"]) < 10
    assert not (tmp_path / "DONE").exists() and not (tmp_path / "checkpoints" / FINAL_NAME).exists()


def test_weights_that_run_away_right_after_their_checkpoint_are_rolled_back(tmp_path, tiny_clip, monkeypatch):
    """The checkpoint of step 6 passed its own check, then step 6's batch ran away with those weights: resume.pt goes
    back to step 3, from which a rerun (here without the fault) resumes."""
    from replication import training_loop

    render, calls = training_loop.render_pair, {"n": 0}

    def render_pair(*args, **kwargs):
        calls["n"] += 1
        x_src, x_tgt = render(*args, **kwargs)
        return x_src, (x_tgt * 1e6 if calls["n"] == 7 else x_tgt)

    monkeypatch.setattr(training_loop, "render_pair", render_pair)
    cfg = shift(iterations=10, save_interval=3)
    with pytest.raises(TrainingDiverged, match=r"ran away .* at step 6; stopped, the last good state \(step 3\)"):
        adapt(tiny_G(), cfg, 0, tmp_path, encoders=[(tiny_clip, 1.0)], progress=False)
    assert torch.load(tmp_path / "checkpoints" / RESUME_NAME, weights_only=True)["step"] == 3
    assert not (tmp_path / "checkpoints" / PREVIOUS_NAME).exists() and not (tmp_path / "DONE").exists()
    assert [json.loads(r)["step"] for r in (tmp_path / "stats.jsonl").read_text().splitlines()] == list(range(6))
    monkeypatch.undo()
    adapt(tiny_G(), cfg, 0, tmp_path, encoders=[(tiny_clip, 1.0)], progress=False)
    assert [json.loads(r)["step"] for r in (tmp_path / "stats.jsonl").read_text().splitlines()] == list(range(10))
    assert (tmp_path / "DONE").is_file()


def test_non_finite_state_never_replaces_a_checkpoint(tmp_path):
    from replication.runio import NonFiniteState, save_checked

    path, previous = tmp_path / "resume.pt", tmp_path / PREVIOUS_NAME
    save_checked({"w": torch.ones(3)}, path, previous)
    save_checked({"w": torch.full((3,), 2.0)}, path, previous)
    with pytest.raises(NonFiniteState, match="^w is not finite$"):
        save_checked({"w": torch.tensor([1.0, float("nan"), 1e30])}, path, previous)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.full((3,), 2.0))
    assert torch.equal(torch.load(previous, weights_only=True)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == [PREVIOUS_NAME, "resume.pt"]


def test_resume_with_patch_loss_is_bit_identical(tmp_path, tiny_clip):
    """The patch loss draws its crops from the guidance's own generator; its state is part of the resume state."""
    cfg = shift(iterations=8, save_interval=3, lambda_patch=1.0)
    G_full = adapt(tiny_G(), cfg, 7, tmp_path / "full", encoders=[(tiny_clip, 1.0)], progress=False)
    adapt(tiny_G(), cfg, 7, tmp_path / "killed", encoders=[(tiny_clip, 1.0)], progress=False, stop_at=5)
    G_resumed = adapt(tiny_G(), cfg, 7, tmp_path / "killed", encoders=[(tiny_clip, 1.0)], progress=False)
    a, b = G_full.state_dict(), G_resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda run: [{k: v for k, v in json.loads(r).items() if k != "seconds"}
                         for r in (tmp_path / run / "stats.jsonl").read_text().splitlines()]
    assert strip("full") == strip("killed")


def test_a_new_checkpoint_keeps_the_one_before(tmp_path, tiny_clip):
    adapt(tiny_G(), shift(iterations=10, save_interval=3), 0, tmp_path, encoders=[(tiny_clip, 1.0)], progress=False,
          stop_at=7)
    ckpt = tmp_path / "checkpoints"
    assert torch.load(ckpt / RESUME_NAME, weights_only=True)["step"] == 7
    assert torch.load(ckpt / PREVIOUS_NAME, weights_only=True)["step"] == 6


def test_orphan_temp_files_are_removed_on_the_next_start(tmp_path, tiny_clip):
    """A kill leaves temp files of the atomic writers; the next start removes them (only those) and finishes, leaving
    neither resume state nor lock file."""
    cfg = shift(iterations=10, save_interval=3)
    adapt(tiny_G(), cfg, 0, tmp_path, encoders=[(tiny_clip, 1.0)], progress=False, stop_at=5)
    orphans = [tmp_path / "checkpoints" / ".resume.pt.k2j4h6g8.tmp", tmp_path / ".stats.jsonl.a1b2c3d4.tmp",
               tmp_path / "samples" / ".step000000.png.tmp.png"]
    for orphan in orphans:
        orphan.parent.mkdir(parents=True, exist_ok=True)
        orphan.write_bytes(b"half a file")
    (tmp_path / "notes.tmp").write_text("not ours")
    adapt(tiny_G(), cfg, 0, tmp_path, encoders=[(tiny_clip, 1.0)], progress=False)
    assert [orphan for orphan in orphans if orphan.exists()] == [] and (tmp_path / "notes.tmp").exists()
    assert (tmp_path / "DONE").is_file() and {p.name for p in (tmp_path / "checkpoints").iterdir()} == {FINAL_NAME}
    assert not (tmp_path / ".lock").exists()


def test_held_lock_stops_a_second_trainer_before_it_writes(tmp_path, tiny_clip):
    from replication.runio import run_lock
    from replication.training_loop import RunBusyError

    with run_lock(tmp_path) as held:
        assert held
        with pytest.raises(RunBusyError, match="another process is training"):
            adapt(tiny_G(), shift(iterations=2), 0, tmp_path, encoders=[(tiny_clip, 1.0)], progress=False)
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]
    assert not (tmp_path / ".lock").exists()
    adapt(tiny_G(), shift(iterations=2), 0, tmp_path, encoders=[(tiny_clip, 1.0)], progress=False)
    assert (tmp_path / "DONE").is_file()


def _train_cli(toml, outdir, **kw):
    return subprocess.Popen([sys.executable, "-m", "replication.pipeline.train", "--shift", str(toml), "--outdir",
                             str(outdir), "--no-progress", "--device", "cpu"], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin"}, **kw)


def _tiny_toml(tmp_path, **nada):
    ckpt = tmp_path / "tiny.pt"
    G = tiny_G()
    save_checkpoint(ckpt, generator_config=G.cfg, g_ema=G.state_dict())
    extra = "".join(f"{k} = {v}\n" for k, v in nada.items())
    toml = tmp_path / "s.toml"
    toml.write_text(f'[task]\nworld = "mini"\ngenerator = "{ckpt}"\nsource_text = "photo"\ntarget_text = "sketch"\n'
                    f'[nada]\nclip_models = ["{CLIP_TINY}"]\nclip_model_weights = [1.0]\nauto_layer_k = 2\n{extra}')
    return toml, tmp_path / "runs" / "mini" / "s" / "nada" / "seed0"


def test_second_process_gets_one_line_error_and_stats_stay_whole(tmp_path):
    toml, run_dir = _tiny_toml(tmp_path, iterations=100000, save_interval=0)
    first = _train_cli(toml, tmp_path / "runs")
    try:
        stats = run_dir / "stats.jsonl"
        deadline = time.monotonic() + 120
        while not (stats.exists() and stats.read_text().count("\n") >= 2):
            if first.poll() is not None:
                pytest.fail(f"the first run ended: {first.communicate()[1]}")
            assert time.monotonic() < deadline, "the first run did not start training within 120 s"
            time.sleep(0.2)
        second = _train_cli(toml, tmp_path / "runs")
        try:
            _, err = second.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            second.kill()
            second.communicate()
            pytest.fail("a second process trains the same run at the same time")
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert second.returncode == 2 and len(lines) == 1 and "another process is training" in lines[0], err
        assert "Traceback" not in err
        assert first.poll() is None  # the first run is untouched and still training
    finally:
        first.kill()
        first.communicate()
    rows = [json.loads(line) for line in stats.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(len(rows)))
    from replication.runio import run_lock

    with run_lock(run_dir) as held:  # a killed holder's lock is gone with it
        assert held


def test_cli_divergence_exits_3_with_one_line_and_no_done(tmp_path):
    toml, run_dir = _tiny_toml(tmp_path, iterations=20, lr=1e6)
    run = _train_cli(toml, tmp_path / "runs")
    _, err = run.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert run.returncode == 3 and len(lines) == 1 and "training diverged: the images ran away" in lines[0], err
    assert not (run_dir / "DONE").exists()


def test_the_source_baseline_respects_the_run_lock(tmp_path):
    from baselines.source import adapt as source_adapt
    from replication.config import load_shift
    from replication.runio import run_lock
    from replication.training_loop import RunBusyError

    G = tiny_G()
    shift_cfg = load_shift("mini--sketch")
    with run_lock(tmp_path) as held:
        assert held
        with pytest.raises(RunBusyError, match="another process"):
            source_adapt(G, shift_cfg, 0, tmp_path)
        assert not (tmp_path / "DONE").exists() and not (tmp_path / "config.json").exists()
    source_adapt(G, shift_cfg, 0, tmp_path)
    assert (tmp_path / "DONE").exists() and not (tmp_path / ".lock").exists()
