"""Tests of the latent mapper: level split, edits, losses, Ranger, training on a tiny G + tiny CLIP, checkpoints."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from replication.clip_models import load_clip
from replication.mapper.checkpoint import load_mapper, save_mapper
from replication.mapper.config import MapperConfig, MapperError
from replication.mapper.loss import (
    area_resample_matrix,
    clip_text_loss,
    mapper_loss,
    prepare_for_clip,
    styleclip_resize,
)
from replication.mapper.model import LatentMapper, PixelNorm, level_slices
from replication.mapper.optim import Lookahead, Ranger, centralize_gradients
from replication.mapper.train import sample_wplus, train_mapper
from replication.networks import Generator, GeneratorConfig

torch.set_num_threads(1)
DATA = Path(__file__).resolve().parent / "data"
CLIP_TINY = str(DATA / "clip_tiny.pt")
STYLE_DIM = 32


@pytest.fixture(scope="module")
def G() -> Generator:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return Generator(GeneratorConfig(size=16, style_dim=STYLE_DIM, n_mlp=2, channels=((4, 16), (8, 16), (16, 16))))


@pytest.fixture(scope="module")
def encoder():
    return load_clip(CLIP_TINY)


def tiny_cfg(**overrides) -> MapperConfig:
    values = dict(description="a sketch", clip_models=(CLIP_TINY,), clip_model_weights=(1.0,), steps=15,
                  n_train_latents=64, truncation_mean_samples=256)
    values.update(overrides)
    return MapperConfig(**values)


def held_out_scores(G, encoder, mapper, cfg, wplus) -> tuple[float, float]:
    """(mean CLIP loss toward the description, MSE between edited and original W+) on latents not used in training."""
    with torch.no_grad():
        w_hat = wplus if mapper is None else mapper.edit(wplus, cfg.step_scale)
        images = G.synthesis(w_hat, noise_mode="const")
        embeddings = encoder.encode_image(prepare_for_clip(encoder, images, cfg.mode))
        # written out here rather than through clip_text_loss, so a wrong sign there cannot hide in the measurement
        cosine = nn.functional.cosine_similarity(embeddings, encoder.text_features([cfg.description]), dim=-1)
        clip = (1.0 - encoder.logit_scale * cosine / 100.0).mean().item()
        return clip, (w_hat - wplus).pow(2).mean().item()


# ------------------------------------------------------------------------------------------------------- architecture


def test_level_split_matches_styleclip_and_clamps_for_small_generators():
    assert level_slices(18) == (slice(0, 4), slice(4, 8), slice(8, 18))
    assert level_slices(14) == (slice(0, 4), slice(4, 8), slice(8, 14))
    assert level_slices(10) == (slice(0, 4), slice(4, 8), slice(8, 10))
    assert level_slices(6) == (slice(0, 4), slice(4, 6), slice(6, 6))
    assert level_slices(10, (2, 5)) == (slice(0, 2), slice(2, 5), slice(5, 10))


def test_levels_mapper_shapes_names_and_group_independence():
    mapper = LatentMapper(10, STYLE_DIM, generator=torch.Generator().manual_seed(0))
    names = set(mapper.state_dict())
    for module in ("course_mapping", "medium_mapping", "fine_mapping"):  # StyleCLIP's names, typo included
        for layer in (1, 2, 3, 4):
            assert {f"{module}.mapping.{layer}.weight", f"{module}.mapping.{layer}.bias"} <= names
    assert len(names) == 3 * 4 * 2
    wplus = torch.randn(3, 10, STYLE_DIM)
    delta = mapper(wplus)
    assert delta.shape == wplus.shape
    # Changing only the fine latents changes only the fine delta: the three MLPs see disjoint W+ ranges.
    moved = wplus.clone()
    moved[:, 8:] += 1.0
    delta_moved = mapper(moved)
    torch.testing.assert_close(delta_moved[:, :8], delta[:, :8], rtol=0, atol=0)
    assert not torch.allclose(delta_moved[:, 8:], delta[:, 8:])
    torch.testing.assert_close(mapper.edit(wplus, 0.1), wplus + 0.1 * delta)


def test_small_generator_has_no_fine_group():
    mapper = LatentMapper(6, STYLE_DIM)
    assert mapper.active_groups == ("coarse", "medium")
    assert not any(k.startswith("fine_mapping") for k in mapper.state_dict())
    assert mapper(torch.randn(2, 6, STYLE_DIM)).shape == (2, 6, STYLE_DIM)


def test_no_fine_zeroes_the_fine_delta():
    mapper = LatentMapper(10, STYLE_DIM, no_fine=True)
    assert not any(k.startswith("fine_mapping") for k in mapper.state_dict())
    delta = mapper(torch.randn(2, 10, STYLE_DIM))
    assert torch.count_nonzero(delta[:, 8:]) == 0
    assert delta[:, :4].abs().sum() > 0 and delta[:, 4:8].abs().sum() > 0
    with pytest.raises(MapperError):
        LatentMapper(6, STYLE_DIM, no_coarse=True, no_medium=True)  # nothing left to train


def test_pixelnorm_axis_faithful_mixes_layers_fixed_does_not():
    x = torch.randn(2, 5, STYLE_DIM) * 3
    torch.testing.assert_close(PixelNorm("layer")(x).pow(2).mean(dim=1), torch.ones(2, STYLE_DIM), rtol=0, atol=1e-5)
    torch.testing.assert_close(PixelNorm("feature")(x).pow(2).mean(dim=-1), torch.ones(2, 5), rtol=0, atol=1e-5)
    wplus = torch.randn(2, 6, STYLE_DIM)
    moved = wplus.clone()
    moved[:, 0] *= 2.0
    faithful = LatentMapper.from_config(6, STYLE_DIM, tiny_cfg(mapper_type="single", mode="faithful"))
    fixed = LatentMapper.from_config(6, STYLE_DIM, tiny_cfg(mapper_type="single", mode="fixed"))
    # StyleCLIP's PixelNorm runs over the layer axis, so one layer's latent leaks into every other layer's delta.
    assert not torch.allclose(faithful(moved)[:, 1:], faithful(wplus)[:, 1:])
    torch.testing.assert_close(fixed(moved)[:, 1:], fixed(wplus)[:, 1:], rtol=0, atol=0)


def test_mapper_rejects_wrong_latent_shape():
    mapper = LatentMapper(6, STYLE_DIM)
    with pytest.raises(MapperError, match=r"\[B, 6, 32\]"):
        mapper(torch.randn(2, 8, STYLE_DIM))
    with pytest.raises(MapperError):
        mapper(torch.randn(2, STYLE_DIM))


def test_seeded_initialisation_is_reproducible():
    first = LatentMapper(10, STYLE_DIM, generator=torch.Generator().manual_seed(5)).state_dict()
    second = LatentMapper(10, STYLE_DIM, generator=torch.Generator().manual_seed(5)).state_dict()
    other = LatentMapper(10, STYLE_DIM, generator=torch.Generator().manual_seed(6)).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["course_mapping.mapping.1.weight"], other["course_mapping.mapping.1.weight"])


# ---------------------------------------------------------------------------------------------------------- CLIP input


@pytest.mark.parametrize("size_in,size_out", [(16, 32), (64, 224), (48, 32), (256, 224), (32, 32)])
def test_styleclip_resize_equals_upsample_then_avgpool(size_in, size_out):
    images = torch.randn(2, 3, size_in, size_in, dtype=torch.float64)
    common = math.lcm(size_in, size_out)
    reference = nn.AvgPool2d(common // size_out)(nn.Upsample(scale_factor=common // size_in)(images))
    torch.testing.assert_close(styleclip_resize(images, size_out), reference, rtol=0, atol=1e-12)
    assert area_resample_matrix(size_in, size_out).sum(dim=1).allclose(torch.ones(size_out, dtype=torch.float64))


def test_styleclip_resize_reproduces_the_1024_recipe():
    # StyleCLIP: nn.Upsample(scale_factor=7) then AvgPool2d(1024 // 32); checked on one row per axis to stay small.
    matrix = area_resample_matrix(1024, 224)
    row = torch.randn(1024, dtype=torch.float64)
    reference = row.repeat_interleave(7).view(224, 32).mean(dim=1)
    torch.testing.assert_close(matrix @ row, reference, rtol=0, atol=1e-12)


def test_faithful_clip_input_is_not_normalised_and_fixed_uses_the_encoder_preprocess(encoder):
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    faithful = prepare_for_clip(encoder, images, "faithful")
    assert faithful.shape == (2, 3, 32, 32)
    torch.testing.assert_close(faithful, images.repeat_interleave(2, 2).repeat_interleave(2, 3))
    torch.testing.assert_close(prepare_for_clip(encoder, images, "fixed"), encoder.preprocess(images))


# ---------------------------------------------------------------------------------------------------------- losses


def test_clip_text_loss_matches_golden_global_loss(encoder):
    golden = torch.load(DATA / "clip_tiny_loss_golden.pt", weights_only=True)
    for key, images, text in (("global_sketch", golden["images"]["tgt"], "sketch"),
                              ("global_a_sketch", golden["images"]["tgt"], "a sketch"),
                              ("global_sketch_64px", golden["images"]["tgt64"], "sketch")):
        # in fixed mode the mapper's CLIP input is the encoder's own preprocess, i.e. NADA's global loss exactly
        embeddings = encoder.encode_image(prepare_for_clip(encoder, images, "fixed"))
        loss = clip_text_loss(encoder, images, embeddings, text).mean()
        assert loss.item() == pytest.approx(float(golden[key]["loss"]), abs=1e-5), key


def test_embedding_norm_term_is_zero_for_identity_edit_and_positive_otherwise(G, encoder):
    cfg = tiny_cfg()
    w = sample_wplus(G, 2, truncation=0.7, mean_samples=64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = G.synthesis(w, noise_mode="const")
    _, terms = mapper_loss(w, w.clone(), x, x.clone(), [(encoder, 1.0)], cfg)
    assert terms["loss_norm"].item() == 0.0 and terms["loss_l2"].item() == 0.0
    w_hat = w + 0.3
    with torch.no_grad():
        x_hat = G.synthesis(w_hat, noise_mode="const")
    total, terms = mapper_loss(w, w_hat, x, x_hat, [(encoder, 1.0)], cfg)
    assert terms["loss_norm"].item() > 1e-6
    assert terms["loss_l2"].item() == pytest.approx(0.09, rel=1e-5)
    expected = terms["loss_clip"] + 0.8 * terms["loss_l2"] + 0.5 * terms["loss_norm"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)


def test_clip_term_is_weighted_sum_and_identity_term_uses_identity_fn(G, encoder):
    w = sample_wplus(G, 2, truncation=0.7, mean_samples=64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        x = G.synthesis(w, noise_mode="const")
        x_hat = G.synthesis(w + 0.2, noise_mode="const")
    one = tiny_cfg()
    two = tiny_cfg(clip_models=(CLIP_TINY, CLIP_TINY), clip_model_weights=(0.5, 0.0))
    _, terms_one = mapper_loss(w, w + 0.2, x, x_hat, [(encoder, 1.0)], one)
    _, terms_two = mapper_loss(w, w + 0.2, x, x_hat, [(encoder, 0.5), (encoder, 0.0)], two)
    assert terms_two["loss_clip"].item() == pytest.approx(0.5 * terms_one["loss_clip"].item(), rel=1e-6)
    assert terms_one["loss_id"].item() == 0.0  # no identity model given
    _, terms_id = mapper_loss(w, w + 0.2, x, x_hat, [(encoder, 1.0)], one,
                              identity_fn=lambda edited, original: torch.tensor([0.75, 0.25]))
    assert terms_id["loss_id"].item() == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------------------- optimiser


def test_lookahead_moves_slow_weights_alpha_toward_fast_every_k_steps():
    start = torch.tensor([1.0, -2.0])
    param = nn.Parameter(start.clone())
    grad = torch.tensor([0.5, 0.25])
    optimizer = Lookahead(torch.optim.SGD([param], lr=1.0), alpha=0.5, k=3)
    for step in range(1, 7):
        param.grad = grad.clone()
        optimizer.step()
        if step < 3:
            torch.testing.assert_close(param.detach(), start - step * grad)  # plain inner steps in between
    # sync at step 3: slow = start + 0.5 * ((start - 3g) - start) = start - 1.5g; the fast weights restart there;
    # sync at step 6: slow = (start - 1.5g) + 0.5 * (-3g) = start - 3g
    torch.testing.assert_close(param.detach(), start - 3.0 * grad)
    torch.testing.assert_close(optimizer.slow[0], start - 3.0 * grad)


def test_gradient_centralisation_makes_per_output_gradients_zero_mean():
    weight = nn.Parameter(torch.randn(4, 3))
    bias = nn.Parameter(torch.randn(4))
    weight.grad = torch.randn(4, 3) + 5.0
    bias.grad = torch.randn(4) + 5.0
    bias_grad = bias.grad.clone()
    centralize_gradients([weight, bias])
    torch.testing.assert_close(weight.grad.mean(dim=1), torch.zeros(4), rtol=0, atol=1e-6)
    torch.testing.assert_close(bias.grad, bias_grad, rtol=0, atol=0)  # 1-D parameters are left alone
    # ... and Ranger applies it before its step
    weight.grad = torch.randn(4, 3) + 5.0
    Ranger([weight], lr=0.1).step()
    torch.testing.assert_close(weight.grad.mean(dim=1), torch.zeros(4), rtol=0, atol=1e-6)


def test_ranger_state_dict_resumes_exactly():
    def run(optimizer, weight, steps):
        for _ in range(steps):
            optimizer.zero_grad()
            ((weight - 3.0) ** 2).sum().backward()
            optimizer.step()

    weight = nn.Parameter(torch.linspace(-1, 1, 12).view(3, 4))
    optimizer = Ranger([weight], lr=0.1, k=3)
    run(optimizer, weight, 4)
    state, snapshot = copy.deepcopy(optimizer.state_dict()), weight.detach().clone()  # as torch.save would freeze it
    run(optimizer, weight, 5)
    resumed_weight = nn.Parameter(snapshot)
    resumed = Ranger([resumed_weight], lr=0.1, k=3)
    resumed.load_state_dict(state)
    run(resumed, resumed_weight, 5)
    torch.testing.assert_close(resumed_weight.detach(), weight.detach(), rtol=0, atol=0)


def _reference_ranger(params, grad_fn, steps, lr, betas, eps, alpha, k):
    """StyleCLIP's Ranger update written out per tensor (float64): GC, RAdam with threshold 5, Lookahead."""
    beta1, beta2 = betas
    params = [p.clone() for p in params]
    slow = [p.clone() for p in params]
    exp_avg = [torch.zeros_like(p) for p in params]
    exp_avg_sq = [torch.zeros_like(p) for p in params]
    rho_inf = 2 / (1 - beta2) - 1
    for t in range(1, steps + 1):
        grads = grad_fn(params)
        for i, (p, g) in enumerate(zip(params, grads)):
            if g.dim() > 1:
                g = g - g.mean(dim=tuple(range(1, g.dim())), keepdim=True)
            exp_avg[i] = beta1 * exp_avg[i] + (1 - beta1) * g
            exp_avg_sq[i] = beta2 * exp_avg_sq[i] + (1 - beta2) * g * g
            rho_t = rho_inf - 2 * t * beta2 ** t / (1 - beta2 ** t)
            if rho_t > 5:
                rect = math.sqrt((1 - beta2 ** t) * (rho_t - 4) / (rho_inf - 4) * (rho_t - 2) / rho_t
                                 * rho_inf / (rho_inf - 2))
                params[i] = p - lr * rect / (1 - beta1 ** t) * exp_avg[i] / (exp_avg_sq[i].sqrt() + eps)
            else:
                params[i] = p - lr / (1 - beta1 ** t) * exp_avg[i]
            if t % k == 0:
                slow[i] = slow[i] + alpha * (params[i] - slow[i])
                params[i] = slow[i].clone()
    return params


def test_ranger_matches_the_reference_update():
    generator = torch.Generator().manual_seed(0)
    target = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    weight0 = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    bias0 = torch.randn(5, generator=generator, dtype=torch.float64)
    inputs = torch.randn(7, 4, generator=generator, dtype=torch.float64)

    def objective(weight, bias):
        return ((inputs @ weight.T + bias - inputs @ target.T) ** 2).sum() + (bias ** 4).sum()

    def grad_fn(params):
        leaves = [p.detach().requires_grad_(True) for p in params]
        return list(torch.autograd.grad(objective(*leaves), leaves))

    settings = dict(lr=0.05, betas=(0.95, 0.999), eps=1e-5, alpha=0.5, k=6)
    steps = 20  # covers the un-rectified early steps (rho_t <= 5) and three Lookahead syncs
    expected = _reference_ranger([weight0, bias0], grad_fn, steps, **settings)
    weight, bias = nn.Parameter(weight0.clone()), nn.Parameter(bias0.clone())
    optimizer = Ranger([weight, bias], **settings)
    for _ in range(steps):
        optimizer.zero_grad()
        objective(weight, bias).backward()
        optimizer.step()
    torch.testing.assert_close(weight.detach(), expected[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(bias.detach(), expected[1], rtol=0, atol=1e-12)
    assert not torch.allclose(weight.detach(), weight0)


# ---------------------------------------------------------------------------------------------------------- training


def test_short_training_lowers_clip_loss_and_keeps_edits_small(G, encoder):
    cfg = tiny_cfg(optimizer="adam", lr=10.0)  # the tiny G and CLIP need a large lr to move in 15 steps
    held_out = sample_wplus(G, 16, truncation=0.7, mean_samples=256, generator=torch.Generator().manual_seed(99))
    clip_before, _ = held_out_scores(G, encoder, None, cfg, held_out)
    untrained = LatentMapper.from_config(G.n_latent, G.style_dim, cfg, generator=torch.Generator().manual_seed(0))
    clip_untrained, _ = held_out_scores(G, encoder, untrained, cfg, held_out)
    mapper, stats = train_mapper(G, [(encoder, 1.0)], cfg, seed=0, progress=False)
    clip_after, l2_after = held_out_scores(G, encoder, mapper, cfg, held_out)
    assert clip_after < clip_before - 0.02, (clip_before, clip_after)
    assert clip_after < clip_untrained - 0.02, (clip_untrained, clip_after)
    assert 0 < l2_after < 0.1  # the latent L2 term keeps the edit a small fraction of |w|^2
    assert len(stats["loss"]) == 15 and all(math.isfinite(v) for v in stats["loss"])
    assert all(p.requires_grad for p in G.parameters()) and all(p.grad is None for p in G.parameters())


def test_ranger_training_in_fixed_mode_lowers_clip_loss(G, encoder):
    cfg = tiny_cfg(lr=50.0, steps=60, mode="fixed")  # RAdam's warm-up (beta2 0.999) needs a large lr in 60 steps
    held_out = sample_wplus(G, 16, truncation=0.7, mean_samples=256, generator=torch.Generator().manual_seed(99))
    clip_before, _ = held_out_scores(G, encoder, None, cfg, held_out)
    mapper, stats = train_mapper(G, [(encoder, 1.0)], cfg, seed=0, progress=False)
    clip_after, l2_after = held_out_scores(G, encoder, mapper, cfg, held_out)
    assert clip_after < clip_before - 0.005, (clip_before, clip_after)
    assert l2_after < 0.1


def test_training_is_deterministic_for_a_seed(G, encoder):
    cfg = tiny_cfg(steps=8)
    first, stats_first = train_mapper(G, [(encoder, 1.0)], cfg, seed=3, progress=False)
    second, stats_second = train_mapper(G, [(encoder, 1.0)], cfg, seed=3, progress=False)
    other, _ = train_mapper(G, [(encoder, 1.0)], cfg, seed=4, progress=False)
    state_first, state_second, state_other = first.state_dict(), second.state_dict(), other.state_dict()
    assert all(torch.equal(state_first[k], state_second[k]) for k in state_first)
    assert stats_first["loss"] == stats_second["loss"]
    assert not all(torch.equal(state_first[k], state_other[k]) for k in state_first)


def test_training_checks_encoders_against_config(G, encoder):
    with pytest.raises(MapperError, match="CLIP encoders"):
        train_mapper(G, [(encoder, 1.0), (encoder, 1.0)], tiny_cfg(), seed=0, progress=False)
    with pytest.raises(MapperError, match="weights"):
        train_mapper(G, [(encoder, 0.5)], tiny_cfg(), seed=0, progress=False)


def test_run_dir_outputs_and_progress_bar(G, encoder, tmp_path, capsys):
    cfg = tiny_cfg(steps=3)
    mapper, stats = train_mapper(G, [(encoder, 1.0)], cfg, seed=0, run_dir=tmp_path, progress=True)
    assert "loss=" in capsys.readouterr().err
    assert json.loads((tmp_path / "mapper_config.json").read_text()) == cfg.to_dict()
    assert json.loads((tmp_path / "mapper_stats.json").read_text())["loss"] == stats["loss"]
    loaded, loaded_cfg = load_mapper(tmp_path / "mapper.pt")
    assert loaded_cfg == cfg
    wplus = torch.randn(2, G.n_latent, G.style_dim)
    torch.testing.assert_close(loaded(wplus), mapper(wplus), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------- config, I/O


def test_config_round_trip_and_validation():
    cfg = tiny_cfg(level_bounds=(2, 5), no_fine=True)
    assert MapperConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(MapperError, match="unknown keys"):
        MapperConfig.from_dict({**cfg.to_dict(), "lamda_clip": 1.0})
    for bad in (dict(mapper_type="Levels"), dict(description=" "), dict(optimizer="sgd"), dict(mode="exact"),
                dict(clip_model_weights=(1.0, 1.0)), dict(lr=0.0), dict(no_coarse=True, no_medium=True, no_fine=True)):
        with pytest.raises(MapperError):
            tiny_cfg(**bad)
    defaults = MapperConfig(description="a cat")
    assert (defaults.step_scale, defaults.lambda_clip, defaults.lambda_l2, defaults.lambda_norm, defaults.lambda_id,
            defaults.lr, defaults.batch, defaults.truncation) == (0.1, 1.0, 0.8, 0.5, 0.1, 0.5, 2, 0.7)


def test_save_load_round_trip_and_atomic_overwrite(tmp_path):
    cfg = tiny_cfg(mapper_type="single", mode="fixed")
    mapper = LatentMapper.from_config(10, STYLE_DIM, cfg, generator=torch.Generator().manual_seed(1))
    path = tmp_path / "m.pt"
    save_mapper(path, LatentMapper.from_config(10, STYLE_DIM, cfg), cfg)
    save_mapper(path, mapper, cfg)  # overwrite goes through a temp file; nothing else is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
    loaded, loaded_cfg = load_mapper(path)
    assert loaded_cfg == cfg and loaded.mapper_type == "single"
    wplus = torch.randn(3, 10, STYLE_DIM)
    torch.testing.assert_close(loaded(wplus), mapper(wplus), rtol=0, atol=0)


class _Payload:  # a foreign object: a weights_only load must refuse to rebuild it
    pass


def test_load_refuses_bad_files(tmp_path):
    with pytest.raises(MapperError, match="no mapper checkpoint"):
        load_mapper(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(MapperError, match="not a loadable"):
        load_mapper(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}, "payload": _Payload()}, foreign)
    with pytest.raises(MapperError, match="not a loadable"):
        load_mapper(foreign)
    wrong = tmp_path / "wrong.pt"
    cfg = tiny_cfg()
    save_mapper(wrong, LatentMapper.from_config(10, STYLE_DIM, cfg), cfg)
    payload = torch.load(wrong, weights_only=True)
    payload["n_latent"] = 6  # weights of a 10-latent mapper cannot fit a 6-latent one (no fine group)
    torch.save(payload, wrong)
    with pytest.raises(MapperError, match="do not fit"):
        load_mapper(wrong)


def test_loads_styleclip_layout_checkpoint(tmp_path):
    mapper = LatentMapper(10, STYLE_DIM, no_medium=True, generator=torch.Generator().manual_seed(2))
    state = {f"mapper.{k}": v for k, v in mapper.state_dict().items()}
    state["decoder.style.1.weight"] = torch.zeros(STYLE_DIM, STYLE_DIM)  # the original also stores the decoder
    opts = {"mapper_type": "LevelsMapper", "no_coarse_mapper": False, "no_medium_mapper": True,
            "no_fine_mapper": False, "stylegan_size": 64, "description": "a cat", "norm_lambda": 0.5,
            "learning_rate": 0.5, "batch_size": 2, "max_steps": 50001, "optim_name": "ranger"}
    path = tmp_path / "best_model.pt"
    torch.save({"state_dict": state, "opts": opts}, path)
    loaded, cfg = load_mapper(path)
    assert cfg.description == "a cat" and cfg.no_medium and cfg.mode == "faithful"
    wplus = torch.randn(2, 10, STYLE_DIM)
    torch.testing.assert_close(loaded(wplus), mapper(wplus), rtol=0, atol=0)


def test_mapper_cli_trains_on_a_checkpoint_and_rejects_bad_input(tmp_path):
    import subprocess
    import sys

    from replication.checkpoint import save_checkpoint
    from replication.networks import Generator, GeneratorConfig

    torch.manual_seed(0)
    G = Generator(GeneratorConfig(size=16, style_dim=32, n_mlp=2, channels=((4, 16), (8, 16), (16, 16))))
    ckpt = save_checkpoint(tmp_path / "g.pt", generator_config=G.cfg, g_ema=G.state_dict())
    clip_tiny = str(Path(__file__).parent / "data" / "clip_tiny.pt")
    base = [sys.executable, "-m", "replication.mapper", "--generator", str(ckpt), "--clip-models", clip_tiny,
            "--steps", "2", "--run-dir", str(tmp_path / "run")]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin"}
    ok = subprocess.run(base + ["--description", "a sketch"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "run" / "mapper.pt").is_file()
    bad = subprocess.run(base + ["--description", " "], capture_output=True, text=True, env=env)
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert bad.returncode == 2 and len(errors) == 1 and "description is empty" in errors[0]
