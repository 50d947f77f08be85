"""The smile probe: a CLIP image tower trained on smile triplets alone, scored on held-out faces."""
import json

import pytest
import torch

from replication.miniworld import smile_probe
from replication.miniworld.smile_probe import SmileProbeConfig, SmileProbeError, heldout_scores, run_probe


def test_both_towers_build_as_openai_clip_models_with_clip_a_text_tower():
    vit = smile_probe.build_tower(SmileProbeConfig(tower="vit"))
    resnet = smile_probe.build_tower(SmileProbeConfig(tower="resnet", resnet_width=8))
    assert type(vit.visual).__name__ == "VisionTransformer" and type(resnet.visual).__name__ == "ModifiedResNet"
    assert vit.text_projection.shape == resnet.text_projection.shape
    images = torch.zeros(2, 3, 64, 64)
    assert resnet.encode_image(images).shape == vit.encode_image(images).shape


def test_the_fresh_vit_tower_is_the_one_the_committed_probe_measured():
    measured = json.loads((smile_probe.RESULTS_DIR / "smile_probe_vit.json").read_text())
    vit = smile_probe.build_tower(SmileProbeConfig(tower="vit"))
    assert sum(p.numel() for p in vit.visual.parameters()) == measured["image_tower_parameters"]


def test_a_resnet_mini_clip_saved_as_a_state_dict_loads_like_the_shipped_ones(tmp_path):
    """A CLIP retrained with the convolutional tower must load through clip.load's build_model path, as NADA does."""
    from dataclasses import replace

    from replication.clip_models import load_clip
    from replication.miniworld.train_clip import PRESETS, build_clip

    arch = replace(PRESETS["clip_a"].architecture, vision_layers=(1, 1, 1, 1), vision_width=8)
    model = build_clip(arch, seed=0).eval()
    torch.save(model.state_dict(), tmp_path / "clip_resnet.pt")
    loaded = load_clip(tmp_path / "clip_resnet.pt", dtype=torch.float32)
    assert loaded.input_resolution == 64 and type(loaded.model.visual).__name__ == "ModifiedResNet"
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.model.encode_image(images), model.encode_image(images), atol=1e-5)


def test_a_tower_that_cannot_tell_the_mouths_apart_scores_chance():
    model = smile_probe.build_tower(SmileProbeConfig(tower="resnet", resnet_width=8))
    # a constant image embedding: every image of a face picks the same caption, one in three is right
    model.encode_image = lambda images: torch.ones(len(images), model.text_projection.shape[1])
    scores = heldout_scores(model, 6)
    assert scores["heldout_accuracy"] == pytest.approx(1 / 3)
    # the caption-to-image half is exactly ln 3, the image-to-caption half at least that
    assert scores["heldout_loss"] >= scores["chance_loss"] - 1e-5


def test_a_short_probe_trains_the_tower_and_is_deterministic():
    config = SmileProbeConfig(tower="resnet", resnet_width=8, steps=3, triplets_per_step=2, heldout_faces=4)
    first, second = run_probe(config, progress=False), run_probe(config, progress=False)
    assert [s for s, _ in first["train_loss_curve"]] == [3]
    assert first["after"] == second["after"] and first["before"] == second["before"]
    assert first["after"]["heldout_loss"] != first["before"]["heldout_loss"]
    assert 0.0 <= first["after"]["heldout_accuracy"] <= 1.0


def test_cli_writes_its_command_and_refuses_bad_requests_in_one_line(tmp_path, capsys):
    out = tmp_path / "probe.json"
    assert smile_probe.main(["--tower", "resnet", "--resnet-width", "8", "--steps", "1", "--heldout-faces", "2",
                             "--out", str(out), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert report["command"].startswith("python -m replication.miniworld.smile_probe --tower resnet")
    assert smile_probe.main(["--tower", "cnn", "--out", str(tmp_path / "x.json")]) == 2
    assert smile_probe.main(["--init", str(tmp_path / "absent.pt"), "--out", str(tmp_path / "y.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "unknown tower 'cnn'" in err[0] and "no CLIP file" in err[1]
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "y.json").exists()
    with pytest.raises(SmileProbeError):
        SmileProbeConfig(steps=0)
