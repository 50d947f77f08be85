"""Tests of the mini generator recipe: the latent->attribute map, distillation training, resume, and shipped weights."""
from __future__ import annotations

import pytest
import torch
from scipy.stats import ks_2samp

from replication.checkpoint import load_generator
from replication.miniworld.attributes import ATTRIBUTE_INDEX, ATTRIBUTE_NAMES, NUM_ATTRIBUTES, sample_attributes
from replication.miniworld import generator_losses as gen_losses
from replication.miniworld import generator_measure as measure
from replication.miniworld import generator_recipe as recipe
from replication.miniworld import generator_training as training
from replication.miniworld import train_generator as cli
from replication.miniworld import truth as world_truth
from replication.miniworld.render import render
from replication.sampling import sample_images

torch.set_num_threads(1)

TINY_CHANNELS = ((4, 16), (8, 16), (16, 8), (32, 8), (64, 8))
# Measured: mean |G(z) - render| over the 8 test latents is 0.036 for the shipped generator, 0.073 for its stage 1
# alone (blurred, no eyes), 0.83 untrained and about 0.30 for the mean face; 0.055 leaves margin for platforms while
# catching a fall back to stage-1 quality or a wrong latent map.
SHIPPED_MAX_MEAN_ABS_ERROR = 0.055


def _tiny_config(**overrides) -> recipe.TrainGeneratorConfig:
    values = dict(steps=4, batch=2, style_dim=16, n_mlp=1, channels=TINY_CHANNELS, checkpoint_every=2, seed=3)
    values.update(overrides)
    return recipe.TrainGeneratorConfig(**values)


@pytest.mark.parametrize("style_dim", [64, 32])
def test_latent_to_attributes_matches_sampler_marginals(style_dim):
    z = recipe.draw_latents(10_000, style_dim, seed=11)
    attrs = world_truth.latent_to_attributes(z)
    assert torch.equal(attrs, world_truth.latent_to_attributes(z.clone()))  # deterministic
    assert attrs.shape == (10_000, NUM_ATTRIBUTES) and attrs.min() >= 0 and attrs.max() <= 1
    reference = sample_attributes(10_000, torch.Generator().manual_seed(5))
    for i, name in enumerate(ATTRIBUTE_NAMES):
        # Two-sample KS statistic; 0.03 is above the alpha = 0.001 critical value (0.0276) for 10k vs 10k.
        stat = ks_2samp(attrs[:, i].numpy(), reference[:, i].numpy()).statistic
        assert stat < 0.03, f"{name}: KS statistic {stat:.4f}"
    glasses = attrs[:, ATTRIBUTE_INDEX["glasses"]]
    assert abs(float((glasses > 0.5).float().mean()) - 0.4) < 0.02
    assert not ((glasses >= 0.4) & (glasses < 0.6)).any()  # the sampler's gap between wearers and non-wearers


def test_latent_to_attributes_ignores_latent_norm_and_unused_dims():
    z = recipe.draw_latents(64, 64, seed=1)
    # PixelNorm removes |z| before the generator sees it, so the attributes must not depend on it either.
    assert torch.allclose(world_truth.latent_to_attributes(z), world_truth.latent_to_attributes(3.0 * z), atol=1e-6)
    moved = z.clone()
    moved[:, NUM_ATTRIBUTES:] = torch.roll(moved[:, NUM_ATTRIBUTES:], 1, dims=1)  # same norm, other unused dims
    assert torch.allclose(world_truth.latent_to_attributes(z), world_truth.latent_to_attributes(moved), atol=1e-6)
    changed = z.clone()
    changed[:, ATTRIBUTE_INDEX["smile"]] += 1.0
    delta = world_truth.latent_to_attributes(changed) - world_truth.latent_to_attributes(z)
    assert (delta[:, ATTRIBUTE_INDEX["smile"]] > 0).all()


def test_latent_to_attributes_rejects_bad_shape():
    with pytest.raises(world_truth.TruthError, match="shape"):
        world_truth.latent_to_attributes(torch.randn(4, NUM_ATTRIBUTES))
    with pytest.raises(ValueError):
        world_truth.latent_to_attributes(torch.randn(NUM_ATTRIBUTES + 5))


def test_distillation_loss_is_zero_only_for_identical_images():
    real = recipe.target_images(recipe.draw_latents(2, 16, seed=0))
    weights = recipe.LossWeights()
    zero, terms = gen_losses.distillation_loss(real, real, weights, None)
    assert float(zero) == 0.0 and set(terms) == {"pixel", "multiscale", "gradient"}
    blurred = torch.nn.functional.avg_pool2d(real, 3, stride=1, padding=1)
    loss, terms = gen_losses.distillation_loss(blurred, real, weights, None)
    assert float(loss) > 0 and terms["gradient"] > 0


def test_mouth_mask_marks_exactly_where_the_smile_changes_the_render():
    attrs = world_truth.latent_to_attributes(recipe.draw_latents(6, 16, seed=3))
    mask = gen_losses.mouth_mask(attrs)
    assert mask.shape == (6, 1, 64, 64) and set(mask.unique().tolist()) <= {0.0, 1.0}
    # every pixel a smile change moves is inside the mask; the mask is a small part of the face, not the image
    other = attrs.clone()
    other[:, ATTRIBUTE_INDEX["smile"]] = 1.0 - other[:, ATTRIBUTE_INDEX["smile"]]
    moved = (render(attrs, "photo", "human") - render(other, "photo", "human")).abs().amax(1, keepdim=True) > 0.1
    assert bool((mask[moved] == 1).all()) and moved.any()
    assert 0.005 < float(mask.mean()) < 0.15
    # the term sees only masked pixels: damage outside the mouth leaves it at zero
    real = render(attrs, "photo", "human")
    damaged = real + (1 - mask) * 0.5
    weights = recipe.LossWeights(mouth=1.0)
    _, terms = gen_losses.distillation_loss(damaged, real, weights, None, mask)
    assert terms["mouth"] == 0.0 and terms["pixel"] > 0
    _, terms = gen_losses.distillation_loss(real + mask * 0.5, real, weights, None, mask)
    assert abs(terms["mouth"] - 0.5) < 1e-5
    with pytest.raises(recipe.GeneratorRecipeError, match="mouth mask"):
        gen_losses.distillation_loss(real, real, weights, None)


def test_three_training_steps_lower_the_loss_on_a_fixed_batch():
    cfg = _tiny_config()
    G, _ = recipe.build_models(cfg)
    optimizer = torch.optim.Adam(G.parameters(), lr=5e-3, betas=(0.0, 0.99))
    perceptual = gen_losses.make_perceptual_net(0)
    z = recipe.draw_latents(4, cfg.style_dim, seed=9)
    real = recipe.target_images(z)
    losses = [training.train_step(G, optimizer, z, real, cfg.loss, perceptual)["total"] for _ in range(4)]
    assert losses[3] < losses[0], losses


def test_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    cfg = _tiny_config()
    straight = training.train_generator(cfg, tmp_path / "a", tmp_path / "a.pt", progress=False)

    calls = {"n": 0}
    real_step = training.train_step

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:  # killed after step 3; the last checkpoint holds step 2
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(training, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        training.train_generator(cfg, tmp_path / "b", tmp_path / "b.pt", progress=False)
    assert not (tmp_path / "b.pt").exists()
    monkeypatch.setattr(training, "train_step", real_step)
    resumed = training.train_generator(cfg, tmp_path / "b", tmp_path / "b.pt", progress=False)

    G_a, ckpt_a = load_generator(straight)
    G_b, _ = load_generator(resumed)
    for (name, a), b in zip(G_a.state_dict().items(), G_b.state_dict().values()):
        assert torch.equal(a, b), name
    assert ckpt_a.extra["latent_mapping"]["name"] == world_truth.LATENT_MAPPING_NAME
    assert ckpt_a.latent_avg is not None and ckpt_a.latent_avg.shape == (cfg.style_dim,)

    with pytest.raises(recipe.GeneratorRecipeError, match="different config"):
        training.train_generator(_tiny_config(seed=4), tmp_path / "b", tmp_path / "c.pt", progress=False)


def test_a_state_saved_before_the_mouth_term_existed_still_resumes(tmp_path):
    import dataclasses

    cfg = _tiny_config()
    training.train_generator(cfg, tmp_path / "a", tmp_path / "a.pt", progress=False)
    state_path = tmp_path / "a" / training.STATE_NAME
    state = torch.load(state_path, weights_only=True)
    del state["config"]["loss"]["mouth"]  # what the stage-2 run of 2026-12-01 wrote
    torch.save(state, state_path)
    assert training._load_state(state_path, cfg)["step"] == cfg.steps
    with pytest.raises(recipe.GeneratorRecipeError, match="different config"):
        training._load_state(state_path, dataclasses.replace(cfg, loss=recipe.LossWeights(mouth=1.0)))


TINY_D_CHANNELS = ((4, 8), (8, 8), (16, 8), (32, 8), (64, 8))


def test_adversarial_stage_warm_starts_from_stage_one_and_resumes_to_the_same_weights(tmp_path, monkeypatch):
    stage1 = training.train_generator(_tiny_config(), tmp_path / "s1", tmp_path / "s1.pt", progress=False)
    import hashlib

    cfg = _tiny_config(seed=5, adversarial=0.1, d_channels=TINY_D_CHANNELS, r1_every=2, init_weights=str(stage1),
                       init_sha256=hashlib.sha256(stage1.read_bytes()).hexdigest())
    G, G_ema = recipe.build_models(cfg)
    G_stage1, _ = load_generator(stage1)
    for (name, a), b in zip(G_stage1.state_dict().items(), G_ema.state_dict().values()):
        assert torch.equal(a, b), name  # stage 2 starts exactly where stage 1 ended
    straight = training.train_generator(cfg, tmp_path / "a", tmp_path / "a.pt", progress=False)

    calls = {"n": 0}
    real_step = training.train_step

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(training, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        training.train_generator(cfg, tmp_path / "b", tmp_path / "b.pt", progress=False)
    monkeypatch.setattr(training, "train_step", real_step)
    resumed = training.train_generator(cfg, tmp_path / "b", tmp_path / "b.pt", progress=False)
    G_a, ckpt_a = load_generator(straight)
    G_b, _ = load_generator(resumed)
    for (name, a), b in zip(G_a.state_dict().items(), G_b.state_dict().values()):
        assert torch.equal(a, b), name  # the discriminator and its optimiser are part of the resumable state
    assert not all(torch.equal(a, b) for a, b in zip(G_a.state_dict().values(), G_stage1.state_dict().values()))
    log = ckpt_a.extra["final_loss"]
    assert {"d_loss", "g_adv"} <= set(log) and all(torch.isfinite(torch.tensor(v)) for v in log.values())


def test_warm_start_refuses_a_changed_or_missing_stage_one_file(tmp_path):
    stage1 = training.train_generator(_tiny_config(steps=1), tmp_path / "s1", tmp_path / "s1.pt", progress=False)
    with pytest.raises(recipe.GeneratorRecipeError, match="sha256"):
        recipe.build_models(_tiny_config(init_weights=str(stage1), init_sha256="0" * 64))
    with pytest.raises(recipe.GeneratorRecipeError, match="does not exist"):
        recipe.build_models(_tiny_config(init_weights=str(tmp_path / "nope.pt")))
    wrong_arch = _tiny_config(channels=((4, 8), (8, 8), (16, 8), (32, 8), (64, 8)), init_weights=str(stage1))
    with pytest.raises(recipe.GeneratorRecipeError, match="architecture"):
        recipe.build_models(wrong_arch)


def test_reseeding_redraws_only_the_named_input_columns_of_a_warm_start(tmp_path):
    stage1 = training.train_generator(_tiny_config(steps=1), tmp_path / "s1", tmp_path / "s1.pt", progress=False)
    G_start, _ = load_generator(stage1)
    before = G_start.style[1].weight.detach().clone()
    G, G_ema = recipe.build_models(_tiny_config(init_weights=str(stage1), reseed_inputs=("smile",)))
    after = G.style[1].weight.detach()
    smile = ATTRIBUTE_INDEX["smile"]
    others = [i for i in range(before.shape[1]) if i != smile]
    assert torch.equal(after[:, others], before[:, others])
    assert not torch.allclose(after[:, smile], before[:, smile])
    attribute_columns = [i for i in range(NUM_ATTRIBUTES) if i != smile]
    assert float(after[:, smile].norm()) == pytest.approx(float(before[:, attribute_columns].norm(dim=0).mean()),
                                                          rel=1e-5)
    assert torch.equal(G_ema.style[1].weight, after)  # the EMA starts from the reseeded G
    G_again, _ = recipe.build_models(_tiny_config(init_weights=str(stage1), reseed_inputs=("smile",)))
    assert torch.equal(G_again.style[1].weight, after)  # seeded
    with pytest.raises(recipe.GeneratorRecipeError, match="unknown attribute"):
        _tiny_config(init_weights=str(stage1), reseed_inputs=("grin",))
    with pytest.raises(recipe.GeneratorRecipeError, match="warm start"):
        _tiny_config(reseed_inputs=("smile",))


def test_mapping_readout_finds_an_attribute_whose_input_column_is_cut():
    G, _ = recipe.build_models(_tiny_config(style_dim=16))
    z = recipe.draw_latents(600, 16, 1)
    smile = ATTRIBUTE_INDEX["smile"]
    with torch.no_grad():  # a random mapping that passes every attribute on
        G.style[1].weight.copy_(torch.randn(G.style[1].weight.shape, generator=torch.Generator().manual_seed(0)))
    seen = measure.mapping_readout(G, z)
    with torch.no_grad():
        G.style[1].weight[:, smile] = 0.0
    cut = measure.mapping_readout(G, z)
    assert cut["mapping_input_column_norm"]["smile"] == 0.0
    assert seen["w_readout_r2"]["smile"] > 0.5 and cut["w_readout_r2"]["smile"] < 0.05
    # the other attributes still reach w
    assert min(v for k, v in cut["w_readout_r2"].items() if k != "smile") > 0.3


def test_cli_reports_missing_weights_with_exit_code_2(tmp_path, capsys):
    code = cli.main(["measure", "--weights", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "r.json"),
                    "--grid", str(tmp_path / "g.png"), "--n-samples", "16"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "missing.pt" in err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.skipif(not recipe.DEFAULT_WEIGHTS.exists(),
                    reason="shipped generator not trained yet: python -m replication.miniworld.train_generator train")
def test_shipped_generator_draws_the_renders_of_its_latents():
    G, ckpt = load_generator(recipe.DEFAULT_WEIGHTS)
    assert ckpt.extra["latent_mapping"]["name"] == world_truth.LATENT_MAPPING_NAME
    assert ckpt.latent_avg is not None
    assert recipe.DEFAULT_WEIGHTS.stat().st_size <= 8 * 1024 * 1024
    z = recipe.draw_latents(8, G.style_dim, seed=77)
    fake = sample_images(G, z, noise_mode="none", batch=64)
    real = recipe.target_images(z)
    error = float((fake - real).abs().mean())
    assert error < SHIPPED_MAX_MEAN_ABS_ERROR, error
    # Every noise mode draws the same image: the recipe trains without noise, so NADA's frozen copy matches.
    random_noise = sample_images(G, z, noise_mode="random", batch=64)
    assert torch.allclose(random_noise, fake, atol=1e-5)


def test_attribute_r2_wraps_circular_attributes():
    true = sample_attributes(500, torch.Generator().manual_seed(0))
    r2 = world_truth.attribute_r2(true.clone(), true)
    assert all(abs(v - 1.0) < 1e-9 for v in r2)
    shifted = true.clone()
    light = ATTRIBUTE_INDEX["light_direction"]
    shifted[:, light] = (shifted[:, light] + 0.999).remainder(1.0)  # 0.001 turn off, across the wrap for some rows
    assert world_truth.attribute_r2(shifted, true)[light] > 0.99
    assert world_truth.attribute_r2(true.flip(0), true)[ATTRIBUTE_INDEX["smile"]] < 0.2


def test_min_domain_fid_is_read_from_the_evaluator_results_layout():
    assert measure._find_min_domain_fid({"fid_smallest_inter_domain": {"pair": "a | b", "fid": 12.5}}) == 12.5
    assert measure._find_min_domain_fid({"nested": {"min_fid": 3.0}}) == 3.0
    assert measure._find_min_domain_fid({"fid_inter_domain": {"a | b": 1.0}}) is None


def test_measure_writes_scores_and_grid_with_an_evaluator(tmp_path):
    import json

    from replication.miniworld.evaluator_model import Evaluator, save_evaluator

    weights = training.train_generator(_tiny_config(steps=1), tmp_path / "run", tmp_path / "g.pt", progress=False)
    torch.manual_seed(0)
    save_evaluator(Evaluator(), tmp_path / "ev.pt")
    (tmp_path / "ev.json").write_text(json.dumps({"fid_smallest_inter_domain": {"pair": "x | y", "fid": 1e6}}))
    code = cli.main(["measure", "--weights", str(weights), "--out", str(tmp_path / "r.json"), "--grid",
                    str(tmp_path / "grid.png"), "--n-samples", "16", "--evaluator", str(tmp_path / "ev.pt"),
                    "--evaluator-results", str(tmp_path / "ev.json")])
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n_samples"] == 16 and report["min_inter_domain_fid"] == 1e6
    assert set(report["attribute_r2_generator"]) == set(ATTRIBUTE_NAMES)
    assert report["bars"]["fid<half_min_domain_fid"] is True  # any FID is below half of 1e6
    assert 0 <= report["photo_human_rate"] <= 1 and report["paired_l1"] > 0
    assert report["command"].startswith("python -m replication.miniworld.train_generator measure")
    from PIL import Image

    assert Image.open(tmp_path / "grid.png").size == (8 * 128, 4 * 128)


def test_latent_sensitivity_is_zero_for_an_attribute_the_generator_ignores():
    cfg = _tiny_config(style_dim=16)
    G, _ = recipe.build_models(cfg)
    smile = ATTRIBUTE_INDEX["smile"]
    with torch.no_grad():
        # The mapping's first layer no longer reads the smile coordinate, nor the unused one it is swapped with.
        G.style[1].weight[:, [smile, NUM_ATTRIBUTES]] = 0.0
    G.eval()
    ratios = measure.latent_sensitivity(G, recipe.draw_latents(6, cfg.style_dim, seed=2))
    assert set(ratios) == set(ATTRIBUTE_NAMES)
    assert ratios["smile"] == 0.0
    assert ratios["face_x"] > 0.0  # a latent the mapping reads moves the image
    z = recipe.draw_latents(6, cfg.style_dim, seed=2)
    moved = measure.redraw_attribute(z, smile)
    change = (world_truth.latent_to_attributes(moved) - world_truth.latent_to_attributes(z)).abs().amax(0)
    assert change[smile] > 0 and torch.all(change[torch.arange(NUM_ATTRIBUTES) != smile] < 1e-6)
    # The renderer draws a smile only inside the mouth mask; a G that ignores the smile moves nowhere.
    split = measure.smile_change_by_region(G, z)
    assert split["render_in_mouth"] > 0.0 and split["render_outside_mouth"] < 1e-6
    assert split["generator_in_mouth"] == 0.0 and split["generator_outside_mouth"] == 0.0


def test_shipped_generator_draws_the_smile_its_latent_asks_for():
    """The shipped generator's mouths follow the smile coordinate (stage-2 weights drew one flat mouth: R^2 -0.06)."""
    from replication.miniworld.evaluator import load_evaluator

    evaluator = load_evaluator()
    smile = ATTRIBUTE_INDEX["smile"]
    z = recipe.draw_latents(200, 64, seed=78)
    truth = world_truth.latent_to_attributes(z)[:, smile]
    G, _ = load_generator(recipe.DEFAULT_WEIGHTS)
    read = evaluator.predict(sample_images(G, z, noise_mode="none", batch=64))["attrs"][:, smile]
    assert float(1 - (read - truth).pow(2).sum() / (truth - truth.mean()).pow(2).sum()) > 0.7
    assert measure.mapping_readout(G, recipe.draw_latents(1000, 64, seed=79))["w_readout_r2"]["smile"] > 0.8
