"""Tests of the mini world's evaluator: model, file format, training, FID helpers and the torch-fidelity extractor."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from replication.miniworld import evaluator as ev
from replication.miniworld import evaluator_fidelity as evf
from replication.miniworld import evaluator_measure as evmeas
from replication.miniworld import evaluator_model as evm
from replication.miniworld import evaluator_training as evt
from replication.miniworld.attributes import (
    ATTRIBUTE_INDEX, ATTRIBUTE_NAMES, CHARACTERS, GLASSES_THRESHOLD, NUM_ATTRIBUTES, STYLES, sample_attributes,
)
from replication.miniworld.imagestats import FeatureShapeError, frechet_distance
from replication.miniworld.render import render, showcase_attributes

torch.set_num_threads(1)

TINY = evm.EvaluatorConfig(blocks=((8, 2), (16, 2), (16, 2)), feature_dim=16)
TINY_TRAIN = evt.TrainConfig(steps=4, batch_size=8, warmup_steps=1, checkpoint_every=2)


def _tiny_model(seed: int = 0) -> evm.Evaluator:
    torch.manual_seed(seed)
    return evm.Evaluator(TINY).eval()


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("evaluator") / "tiny.pt"
    evm.save_evaluator(_tiny_model(), path)
    return path


def test_model_shapes_and_ranges():
    model = _tiny_model()
    x = torch.rand(5, 3, 64, 64) * 2 - 1
    out = model.predict(x)
    assert out["style_logits"].shape == (5, len(STYLES))
    assert out["character_logits"].shape == (5, len(CHARACTERS))
    assert out["attrs"].shape == (5, NUM_ATTRIBUTES)
    assert out["attrs"].min() >= 0 and out["attrs"].max() <= 1
    assert model.features(x).shape == (5, TINY.feature_dim)
    # other resolutions are read at the evaluator's own, so a 128 px generator can be scored directly
    assert model.features(torch.zeros(2, 3, 128, 128)).shape == (2, TINY.feature_dim)


def test_default_architecture_fits_the_size_budget():
    model = evm.Evaluator()
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params * 2 < 4e6  # stored in fp16; the evaluator's budget is 4 MB
    assert model.features(torch.zeros(1, 3, 64, 64)).shape == (1, evm.EvaluatorConfig().feature_dim)


def test_bad_input_is_a_clear_error():
    model = _tiny_model()
    with pytest.raises(evm.EvaluatorError, match=r"\[N, 3, H, W\]"):
        model.features(torch.zeros(2, 1, 64, 64))
    with pytest.raises(evm.EvaluatorError, match="uint8"):
        model.features(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))


def test_circular_attributes_round_trip_through_the_head_encoding():
    attrs = sample_attributes(64, torch.Generator().manual_seed(3))
    attrs[0, ATTRIBUTE_INDEX["background_hue"]] = 0.999  # near the wrap: must come back near 1, not near 0.5
    decoded = evm.attributes_from_outputs(evm.attribute_targets(attrs))
    wrapped = (decoded - attrs + 0.5).remainder(1.0) - 0.5
    assert wrapped.abs().max() < 1e-5


def test_attribute_r2_of_circular_attribute_uses_the_wrapped_error():
    truth = torch.tensor([0.01, 0.25, 0.5, 0.75, 0.99]).unsqueeze(1).expand(-1, NUM_ATTRIBUTES)
    pred = torch.tensor([0.99, 0.25, 0.5, 0.75, 0.01]).unsqueeze(1).expand(-1, NUM_ATTRIBUTES)  # 0.02 across the wrap
    r2 = evmeas.attribute_r2(pred, truth)
    assert r2["background_hue"] > 0.99  # circular
    assert r2["face_x"] < 0.5  # linear: the same numbers are far apart


def test_save_load_round_trip_and_bad_files(tmp_path, tiny_file):
    loaded = evm.load_evaluator(tiny_file)
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    # weights are stored in fp16, so predictions agree to fp16 precision
    torch.testing.assert_close(loaded.features(x), _tiny_model().features(x), atol=2e-2, rtol=2e-2)
    blob = torch.load(tiny_file, weights_only=True)
    assert blob["attribute_names"] == list(ATTRIBUTE_NAMES) and blob["styles"] == list(STYLES)
    with pytest.raises(evm.EvaluatorError, match="not found"):
        evm.load_evaluator(tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(evm.EvaluatorError, match="format"):
        evm.load_evaluator(other)


def test_three_training_steps_reduce_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = evm.Evaluator(TINY)
    cfg = replace(TINY_TRAIN, batch_size=16, lr=3e-3)
    batch = evt.training_batch(0, cfg)
    optimizer = evt.make_optimizer(model, cfg)
    model.eval()
    with torch.no_grad():
        before = evt.evaluator_loss(model, batch)[0].item()
    for _ in range(3):
        evt.train_step(model, optimizer, batch, cfg.lr, cfg.attribute_weight)
    model.eval()
    with torch.no_grad():
        after = evt.evaluator_loss(model, batch)[0].item()
    assert after < before


def test_training_batch_labels_and_masks():
    cfg = replace(TINY_TRAIN, batch_size=16, hard_negative_fraction=0.25)
    batch = evt.training_batch(5, cfg)
    again = evt.training_batch(5, cfg)
    assert torch.equal(batch["images"], again["images"])  # a batch is a function of its step: resuming is exact
    assert batch["images"].shape == (16, 3, 64, 64) and batch["images"].abs().max() <= 1
    # the last quarter are hard negatives: labelled photo + human, no attribute supervision
    assert (batch["style_idx"][12:] == STYLES.index("photo")).all()
    assert (batch["character_idx"][12:] == CHARACTERS.index("human")).all()
    assert batch["attribute_mask"][12:].sum() == 0
    assert batch["attribute_mask"][:12].sum() > 0


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    straight = tmp_path / "straight.pt"
    evt.train(straight, TINY_TRAIN, TINY, progress=False)

    resumed = tmp_path / "resumed.pt"
    real_step = evt.train_step
    calls = {"n": 0}

    def dying_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # killed after the step-2 checkpoint
        return real_step(*args, **kwargs)

    monkeypatch.setattr(evt, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        evt.train(resumed, TINY_TRAIN, TINY, progress=False)
    assert not resumed.exists() and evt.resume_path(resumed).exists()
    monkeypatch.setattr(evt, "train_step", real_step)
    evt.train(resumed, TINY_TRAIN, TINY, progress=False)
    assert not evt.resume_path(resumed).exists()

    a = torch.load(straight, weights_only=True)["state_dict"]
    b = torch.load(resumed, weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_frechet_distance_is_zero_for_identical_sets_and_matches_torch_fidelity():
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    rng = np.random.default_rng(0)
    feats_a = rng.normal(size=(300, 12))
    feats_b = rng.normal(loc=0.3, scale=1.2, size=(250, 12))
    assert abs(frechet_distance(feats_a, feats_a)) < 1e-8
    ours = frechet_distance(feats_a, feats_b)
    theirs = fid_statistics_to_metric(
        fid_features_to_statistics(torch.from_numpy(feats_a)), fid_features_to_statistics(torch.from_numpy(feats_b)),
        verbose=False,
    )["frechet_inception_distance"]
    assert ours > 0.5
    assert math.isclose(ours, theirs, rel_tol=1e-3)
    with pytest.raises(FeatureShapeError):
        frechet_distance(feats_a, feats_b[:, :5])


def test_feature_extractor_registers_and_reads_uint8(tiny_file):
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    from torch_fidelity.utils import create_feature_extractor

    assert evf.FEATURE_EXTRACTOR_NAME in FEATURE_EXTRACTORS_REGISTRY
    evf.register_feature_extractor()  # idempotent: importing twice must not fail
    extractor = create_feature_extractor(
        evf.FEATURE_EXTRACTOR_NAME, [evf.PENULTIMATE], cuda=False, feature_extractor_weights_path=str(tiny_file)
    )
    images = evf.to_uint8(render(showcase_attributes(), "photo", "human"))
    (features,) = extractor(images)
    assert features.shape == (6, TINY.feature_dim)
    expected = evm.load_evaluator(tiny_file).features(evf.from_uint8(images))
    torch.testing.assert_close(features.float(), expected)


def test_torch_fidelity_fid_agrees_with_direct_frechet_distance(tiny_file):
    import torch_fidelity

    attrs = sample_attributes(80, torch.Generator().manual_seed(11))
    photos = evf.to_uint8(render(attrs, "photo", "human"))
    sketches = evf.to_uint8(render(attrs, "sketch", "human"))
    metrics = torch_fidelity.calculate_metrics(
        input1=evf.UInt8ImageDataset(photos), input2=evf.UInt8ImageDataset(sketches), fid=True, kid=True,
        kid_subset_size=40, kid_subsets=10, feature_extractor=evf.FEATURE_EXTRACTOR_NAME,
        feature_extractor_weights_path=str(tiny_file), cuda=False, save_cpu_ram=True, cache=False, verbose=False,
        batch_size=32,
    )
    model = evm.load_evaluator(tiny_file)
    direct = frechet_distance(model.features(evf.from_uint8(photos)), model.features(evf.from_uint8(sketches)))
    assert direct > 0
    assert math.isclose(metrics["frechet_inception_distance"], direct, rel_tol=1e-3)
    assert "kernel_inception_distance_mean" in metrics


def test_cli_reports_missing_weights_with_exit_2(tmp_path, capsys):
    code = ev.main(["measure", "--weights", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "r.json")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope.pt" in err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.skipif(not evm.DEFAULT_WEIGHTS.is_file(), reason="shipped evaluator.pt not trained yet")
def test_shipped_evaluator_reads_fixed_renders_and_hard_negatives():
    from replication.miniworld.augment import hard_negatives

    model = evm.load_evaluator()
    attrs = showcase_attributes()
    domains = [("photo", "human"), ("sketch", "zombie"), ("pixel art", "werewolf"), ("comic", "elf"),
               ("watercolor", "clown"), ("neon", "human"), ("photo", "zombie"), ("sketch", "human")]
    correct, total = 0, 0
    for style, character in domains:
        out = model.predict(render(attrs, style, character))
        ok = (out["style_logits"].argmax(1) == STYLES.index(style)) & (
            out["character_logits"].argmax(1) == CHARACTERS.index(character))
        correct += int(ok.sum())
        total += len(ok)
    assert correct / total >= 0.95, f"{correct}/{total} domain readings correct"

    photos = render(attrs.repeat(4, 1), "photo", "human")
    hard = hard_negatives(photos, torch.Generator().manual_seed(5)).images
    out = model.predict(hard)
    source = (out["style_logits"].argmax(1) == 0) & (out["character_logits"].argmax(1) == 0)
    assert source.float().mean() >= 0.9, "colour-shifted or blurred photos must still read as photo + human"

    clean = model.predict(render(attrs, "photo", "human"))["attrs"]
    for name in ("face_scale", "rotation"):  # coarse attributes whose measured R^2 passes its bar
        i = ATTRIBUTE_INDEX[name]
        assert (clean[:, i] - attrs[:, i]).abs().mean() < 0.1, name
    # glasses are read as worn / not worn (what captions and scores use), not as an exact frame opacity
    g = ATTRIBUTE_INDEX["glasses"]
    assert torch.equal(clean[:, g] > GLASSES_THRESHOLD, attrs[:, g] > GLASSES_THRESHOLD)
