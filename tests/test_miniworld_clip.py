"""Tests of the mini-world augmentation, data batches, the mini-CLIP recipe and the shipped mini CLIPs."""
from __future__ import annotations

import re
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from replication import weights
from replication.clip_models import load_clip
from replication.miniworld.attributes import ATTRIBUTE_NAMES, CHARACTERS, STYLES, sample_attributes
from replication.miniworld.augment import (
    HARD_NEGATIVE_KINDS,
    AugmentInputError,
    augment,
    hard_negatives,
)
from replication.miniworld.data import (
    HELDOUT_SEED_BASE,
    MAX_RUN_SEED,
    TRAIN_SEED_STRIDE,
    BatchSpecError,
    heldout_set,
    sample_batch,
    train_batch_seed,
)
from replication.miniworld.render import render
from replication.miniworld import clip_losses, clip_measure, clip_recipe, clip_training, train_clip
from replication.miniworld.clip_losses import soft_contrastive_loss
from replication.miniworld.clip_measure import style_text_features
from replication.miniworld.clip_recipe import PRESETS, ClipArchitecture, ClipTrainConfig, build_clip, tokenize
from replication.miniworld.clip_training import export_state_dict, make_optimizer, train, train_step
from replication.runio import REPO_ROOT, repo_path

torch.set_num_threads(1)
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "replication" / "miniworld" / "weights"
TINY = ClipArchitecture(embed_dim=16, vision_layers=1, vision_width=64, vision_patch_size=16,
                        transformer_width=64, transformer_layers=1)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    return render(sample_attributes(10, _gen(0)), "photo", "human")


# ------------------------------------------------------------------------------------------------------ augment
def test_augment_keeps_shape_range_and_is_reproducible(photos):
    first = augment(photos, _gen(5))
    again = augment(photos, _gen(5))
    other = augment(photos, _gen(6))
    assert first.shape == photos.shape and first.dtype == photos.dtype
    assert first.min() >= -1.0 and first.max() <= 1.0
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert (first - photos).abs().mean() > 1e-3  # it does change the images


def test_augment_strength_zero_is_identity_and_mild_at_one(photos):
    assert torch.allclose(augment(photos, _gen(1), strength=0.0), photos, atol=1e-5)
    # domain-preserving: at full strength colours move only a little on average (a photo keeps its colours)
    assert (augment(photos, _gen(1)) - photos).abs().mean() < 0.25


def test_augment_rejects_bad_input():
    with pytest.raises(AugmentInputError, match=r"\[N, 3, H, W\]"):
        augment(torch.zeros(3, 64, 64), _gen(0))
    with pytest.raises(AugmentInputError, match="strength"):
        augment(torch.zeros(1, 3, 8, 8), _gen(0), strength=-1.0)


def test_hard_negatives_are_labelled_source_and_change_colour(photos):
    batch = hard_negatives(photos, _gen(3))
    assert batch.images.shape == photos.shape
    assert batch.images.min() >= -1.0 and batch.images.max() <= 1.0
    assert (batch.style_idx == STYLES.index("photo")).all()
    assert (batch.character_idx == CHARACTERS.index("human")).all()
    assert batch.kind.min() >= 0 and batch.kind.max() < len(HARD_NEGATIVE_KINDS)
    assert torch.equal(batch.images, hard_negatives(photos, _gen(3)).images)
    per_image_change = (batch.images - photos).abs().mean(dim=(1, 2, 3))
    assert (per_image_change > 0.02).all()  # each one is a strong change, unlike augment


def test_hard_negatives_cover_every_kind():
    kinds = hard_negatives(torch.zeros(200, 3, 8, 8), _gen(0)).kind
    assert set(kinds.tolist()) == set(range(len(HARD_NEGATIVE_KINDS)))


# --------------------------------------------------------------------------------------------------------- data
def test_sample_batch_is_deterministic_and_labelled():
    first = sample_batch(12, _gen(7), hard_negative_fraction=0.25, template_caption_fraction=0.5)
    again = sample_batch(12, _gen(7), hard_negative_fraction=0.25, template_caption_fraction=0.5)
    assert torch.equal(first["images"], again["images"]) and first["captions"] == again["captions"]
    assert first["images"].shape == (12, 3, 64, 64) and first["attrs"].shape == (12, 13)
    assert len(first["captions"]) == 12 and all(isinstance(c, str) and c for c in first["captions"])
    hard = first["is_hard_negative"]
    assert int(hard.sum()) == 3
    assert (first["style_idx"][hard] == STYLES.index("photo")).all()
    assert (first["character_idx"][hard] == CHARACTERS.index("human")).all()
    assert tokenize(first["captions"]).shape == (12, 32)  # every caption fits CLIP's 32-token context


def test_sample_batch_respects_domains_and_labels_match_captions():
    batch = sample_batch(8, _gen(1), domains=[("sketch", "zombie")])
    assert (batch["style_idx"] == STYLES.index("sketch")).all()
    assert (batch["character_idx"] == CHARACTERS.index("zombie")).all()
    assert all("sketch" in c and "zombie" in c for c in batch["captions"])
    with pytest.raises(ValueError, match="unknown style"):
        sample_batch(2, _gen(1), domains=[("oil", "human")])
    with pytest.raises(BatchSpecError, match="hard_negative_fraction"):
        sample_batch(2, _gen(1), hard_negative_fraction=1.5)


def test_heldout_seeds_never_meet_training_seeds():
    assert train_batch_seed(MAX_RUN_SEED - 1, TRAIN_SEED_STRIDE - 1) < HELDOUT_SEED_BASE
    assert train_batch_seed(1, 5) != train_batch_seed(2, 5)
    with pytest.raises(BatchSpecError):
        train_batch_seed(0, TRAIN_SEED_STRIDE)  # would spill into the next run's seeds
    with pytest.raises(BatchSpecError, match="held-out"):
        heldout_set(4, seed=123)
    held = heldout_set(6, chunk=4)
    assert torch.equal(held["attrs"], heldout_set(6, chunk=4)["attrs"])
    assert held["images"].shape[0] == 6 and len(held["captions"]) == 6
    train_attrs = sample_batch(6, _gen(train_batch_seed(PRESETS["clip_a"].seed, 0)))["attrs"]
    assert not torch.equal(held["attrs"], train_attrs)


# ------------------------------------------------------------------------------------------------------ training
def test_soft_targets_treat_identical_captions_as_positives():
    feats = torch.nn.functional.normalize(torch.randn(4, 8, generator=_gen(0)), dim=-1)
    scale = torch.tensor(2.0)
    texts = ["a", "a", "b", "c"]
    base = soft_contrastive_loss(feats, feats, scale, texts)
    # swapping the text features of two rows with the same caption changes nothing; with distinct captions it does
    swapped_same = soft_contrastive_loss(feats, feats[[1, 0, 2, 3]], scale, texts)
    swapped_diff = soft_contrastive_loss(feats, feats[[0, 1, 3, 2]], scale, texts)
    assert torch.allclose(base, swapped_same, atol=1e-6)
    assert swapped_diff > base


def test_three_steps_lower_the_loss_on_a_fixed_batch():
    config = ClipTrainConfig(name="tiny", architecture=TINY, seed=0, steps=3, batch_size=8, lr=2e-3, warmup_steps=1)
    model = build_clip(TINY, 0)
    optimizer = make_optimizer(model, config)
    batch = sample_batch(8, _gen(11), domains=[("photo", "human"), ("sketch", "zombie"), ("neon", "clown")])

    def loss_now() -> float:
        with torch.no_grad():
            model.eval()
            img = model.encode_image(batch["images"])
            txt = model.encode_text(tokenize(batch["captions"]))
            return float(soft_contrastive_loss(img, txt, model.logit_scale, batch["captions"]))

    before = loss_now()
    for _ in range(3):
        train_step(model, optimizer, batch, lr=2e-3)
    assert loss_now() < before - 0.01


@pytest.mark.parametrize("invariance", [0.0, 5.0])
def test_training_resumes_to_the_same_weights(tmp_path, monkeypatch, invariance):
    # with the invariance and direction terms, the crash falls between two refreshes of their text directions
    config = ClipTrainConfig(name="tiny", architecture=TINY, seed=3, steps=3, batch_size=4, warmup_steps=1,
                             checkpoint_every_s=0.0, pixels="clip" if invariance else "raw",
                             invariance_weight=invariance, invariance_pairs=6, directions_every=5,
                             direction_weight=invariance, direction_pairs=4)
    train(config, tmp_path / "straight", tmp_path / "straight.pt", progress=False)

    real_step = clip_training.train_step
    calls = {"n": 0}

    def crash_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # a kill after two steps were checkpointed
        return real_step(*args, **kwargs)

    monkeypatch.setattr(clip_training, "train_step", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed", tmp_path / "resumed.pt", progress=False)
    assert not (tmp_path / "resumed.pt").exists()
    monkeypatch.setattr(clip_training, "train_step", real_step)
    train(config, tmp_path / "resumed", tmp_path / "resumed.pt", progress=False)
    straight = torch.load(tmp_path / "straight.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)

    with pytest.raises(ValueError, match="different config"):
        train(replace(config, lr=1e-2), tmp_path / "resumed", tmp_path / "x.pt", progress=False)


def test_anchored_stage_warm_starts_trains_the_attribute_head_and_exports_without_it(tmp_path):
    stage1 = tmp_path / "stage1.pt"
    export_state_dict(build_clip(TINY, 5).eval(), stage1)
    config = ClipTrainConfig(name="tiny_anchored", architecture=TINY, seed=5, steps=2, batch_size=8, warmup_steps=1,
                             attribute_weight=10.0, init_weights=str(stage1))
    # the warm start is exact: after zero steps the exported weights are the stage-1 file's
    train(replace(config, steps=0), tmp_path / "zero", tmp_path / "zero.pt", progress=False)
    start, again = torch.load(stage1, weights_only=True), torch.load(tmp_path / "zero.pt", weights_only=True)
    assert start.keys() == again.keys() and all(torch.equal(start[k], again[k]) for k in start)
    train(config, tmp_path / "run", tmp_path / "out.pt", progress=False)
    exported = torch.load(tmp_path / "out.pt", weights_only=True)
    assert exported.keys() == start.keys()  # the training-only head is never shipped
    assert any(not torch.equal(start[k], exported[k]) for k in start)
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert state["model"]["attribute_head.weight"].shape == (len(clip_losses.GEOMETRY_ATTRIBUTES), TINY.embed_dim)
    with pytest.raises(ValueError, match="sha256"):
        train(replace(config, init_sha256="0" * 64), tmp_path / "bad", tmp_path / "bad.pt", progress=False)
    with pytest.raises(ValueError, match="missing"):
        train(replace(config, init_weights=str(tmp_path / "nope.pt")), tmp_path / "bad2", tmp_path / "b.pt",
              progress=False)


def test_stage_two_feeds_the_image_tower_what_clip_encoder_feeds_it(tmp_path):
    """Training and use must agree on pixels: every user (NADA, metrics) goes through ClipEncoder.preprocess."""
    model = build_clip(TINY, 6).eval()
    path = tmp_path / "tiny.pt"
    export_state_dict(model, path)
    encoder = load_clip(path)
    images = render(sample_attributes(3, _gen(2)), ["photo", "sketch", "neon"], "human")
    assert torch.allclose(clip_recipe.model_pixels(images, "clip"), encoder.preprocess(images), atol=1e-6)
    assert torch.equal(clip_recipe.model_pixels(images, "raw"), images)
    assert all(PRESETS[f"{n}_anchored"].pixels == "clip" for n in clip_recipe.SHIPPED_STAGES)
    with pytest.raises(ValueError, match="pixels must be"):
        clip_recipe.model_pixels(images, "srgb")


def test_invariance_pairs_are_colour_edits_and_leave_the_contrastive_batch_alone():
    base = ClipTrainConfig(name="tiny", architecture=TINY, seed=4, batch_size=8, hard_negative_fraction=0.25)
    with_term = replace(base, invariance_weight=5.0, invariance_pairs=20)
    plain, paired = clip_training.training_batch(base, 7), clip_training.training_batch(with_term, 7)
    assert torch.equal(plain["images"], paired["images"]) and plain["captions"] == paired["captions"]
    clean, edited = paired["invariance_pairs"]
    assert 0 < len(clean) == len(edited) <= 20
    # colour-only edits: greyscale / hue / tint keep the layout, so the edge maps still agree closely
    def edges(x):
        g = x.mean(1)
        return (g[:, 1:, :] - g[:, :-1, :]).abs().flatten(1)
    corr = torch.nn.functional.cosine_similarity(edges(clean), edges(edited), dim=1)
    assert float(corr.min()) > 0.5


def test_invariance_loss_is_zero_for_identical_pairs_and_trains_the_image_tower():
    model = build_clip(TINY, 8)
    directions = clip_losses.training_text_directions(model)
    assert directions.shape == (len(clip_recipe.target_domains()), TINY.embed_dim)
    assert torch.allclose(directions.norm(dim=1), torch.ones(len(directions)), atol=1e-5)
    clean = render(sample_attributes(6, _gen(5)), "photo", "human")
    grey = clean.mean(1, keepdim=True).expand_as(clean).contiguous()
    assert float(clip_losses.invariance_loss(model, clean, clean, directions, "clip")) == 0.0
    loss = clip_losses.invariance_loss(model, clean, grey, directions, "clip")
    assert 0.0 < float(loss) <= 1.0
    loss.backward()
    assert model.visual.conv1.weight.grad.abs().sum() > 0


def test_direction_pairs_share_attributes_and_leave_the_contrastive_batch_alone():
    base = ClipTrainConfig(name="tiny", architecture=TINY, seed=4, batch_size=8, hard_negative_fraction=0.25)
    with_term = replace(base, direction_weight=2.0, direction_pairs=12)
    plain, paired = clip_training.training_batch(base, 7), clip_training.training_batch(with_term, 7)
    assert torch.equal(plain["images"], paired["images"]) and plain["captions"] == paired["captions"]
    source, target, shift = paired["direction_pairs"]
    assert source.shape == target.shape == (12, 3, 64, 64) and shift.shape == (12,)
    domains = clip_recipe.target_domains()
    assert int(shift.min()) >= 0 and int(shift.max()) < len(domains)
    # each target is the render of its source's attributes in the shift's target domain
    attrs = sample_attributes(12, torch.Generator().manual_seed(train_batch_seed(4, 7) + 2))
    i = 5
    _, _, _, style, character = domains[int(shift[i])]
    assert torch.equal(target[i:i + 1], render(attrs[i:i + 1], style, character))
    assert torch.equal(source[i:i + 1], render(attrs[i:i + 1], "photo", "human"))


def test_direction_loss_is_low_when_image_differences_follow_the_text_direction():
    model = build_clip(TINY, 8)
    directions = clip_losses.training_text_directions(model)
    source = render(sample_attributes(4, _gen(6)), "photo", "human")
    target = render(sample_attributes(4, _gen(6)), "sketch", "human")
    shift = torch.zeros(4, dtype=torch.long)
    loss = clip_losses.direction_loss(model, source, target, shift, directions, "clip")
    assert 0.0 <= float(loss) <= 2.0
    loss.backward()
    assert model.visual.conv1.weight.grad.abs().sum() > 0
    # a few steps on the term alone raise the paired differences' cosine with their text direction
    optimizer = torch.optim.Adam(model.visual.parameters(), lr=1e-3)
    before = loss.item()
    for _ in range(15):
        optimizer.zero_grad()
        clip_losses.direction_loss(model, source, target, shift, directions, "clip").backward()
        optimizer.step()
    assert float(clip_losses.direction_loss(model, source, target, shift, directions, "clip")) < before - 0.05


def test_training_text_directions_are_nada_text_directions(tmp_path):
    model = build_clip(TINY, 9).eval()
    path = tmp_path / "tiny.pt"
    export_state_dict(model, path)
    encoder = load_clip(path)
    from replication.losses import text_direction

    reference = torch.cat([text_direction(encoder, src, tgt) for _, src, tgt, _, _ in clip_recipe.target_domains()])
    # the exported file is fp16, so the reloaded encoder differs from the fp32 model by rounding only
    assert torch.allclose(clip_losses.training_text_directions(model), reference, atol=2e-2)


def test_attribute_loss_falls_when_the_embedding_carries_the_attributes():
    batch = sample_batch(16, _gen(3), hard_negative_fraction=0.25)
    targets = clip_losses.attribute_targets(batch["attrs"])
    # an "embedding" that holds the attributes exactly, scaled down by the readout gain, is read back exactly
    exact = targets / clip_losses.ATTRIBUTE_READOUT_GAIN
    exact = torch.cat([exact, (1 - exact.pow(2).sum(1, keepdim=True)).clamp_min(0).sqrt()], 1)
    head_wide = torch.nn.Linear(exact.shape[1], targets.shape[1])
    with torch.no_grad():
        head_wide.weight.copy_(torch.eye(targets.shape[1], exact.shape[1]))
        head_wide.bias.zero_()
    assert float(clip_losses.attribute_loss(head_wide, exact, batch)) < 1e-10
    # a tiny attribute component cannot be amplified: the head's rows are unit vectors times the fixed gain
    faint = torch.cat([1e-3 * targets, torch.ones(len(targets), 1)], 1)
    head_wide.weight.data.mul_(1000.0)
    assert float(clip_losses.attribute_loss(head_wide, faint, batch)) > 0.5 * float(targets.pow(2).mean())


def test_exported_weights_load_through_load_clip_and_clip_load(tmp_path):
    model = build_clip(TINY, 4).eval()
    path = tmp_path / "tiny.pt"
    export_state_dict(model, path)
    assert all(v.dtype == torch.float16 for v in torch.load(path, weights_only=True).values())
    encoder = load_clip(path)
    images = render(sample_attributes(2, _gen(0)), "photo", "human")
    with torch.no_grad():
        reference = torch.nn.functional.normalize(model.encode_image(encoder.preprocess(images)), dim=-1)
    assert torch.allclose(encoder.image_features(images), reference, atol=1e-2)
    assert encoder.embed_dim == TINY.embed_dim and encoder.input_resolution == 64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import clip
    loaded, _ = clip.load(str(path), device="cpu", jit=False)
    assert loaded.visual.conv1.weight.shape == model.visual.conv1.weight.shape


def test_cli_reports_bad_requests_in_one_line(capsys, tmp_path):
    assert train_clip.main(["--name", "clip_z"]) == 2
    assert "error: unknown CLIP preset 'clip_z'" in capsys.readouterr().err
    assert train_clip.main(["--name", "clip_a", "--measure", "--out", str(tmp_path / "none.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no weights at") and err.count("\n") == 1


# ------------------------------------------------------------------------------------------------- shipped CLIPs
@pytest.mark.parametrize("name, preset", [("clip_a", "clip_a_directed"), ("clip_b", "clip_b_smiling")])
def test_shipped_clip_loads_and_reads_styles(name, preset):
    path = WEIGHTS_DIR / f"{name}.pt"
    if not path.is_file():
        pytest.skip(f"{path} not trained yet (python -m replication.miniworld.train_clip --name {preset})")
    arch = PRESETS[preset].architecture
    encoder = load_clip(path)
    visual = encoder.model.visual
    assert encoder.embed_dim == arch.embed_dim
    if isinstance(arch.vision_layers, int):  # a ViT tower
        assert visual.conv1.weight.shape == (arch.vision_width, 3, arch.vision_patch_size, arch.vision_patch_size)
        assert len(visual.transformer.resblocks) == arch.vision_layers
    else:  # clip's ModifiedResNet: a three-convolution stem (the first at half the width), then four stages
        assert type(visual).__name__ == "ModifiedResNet"
        assert visual.conv1.weight.shape[:2] == (arch.vision_width // 2, 3)
        assert [len(visual.layer1), len(visual.layer2), len(visual.layer3), len(visual.layer4)] == \
            list(arch.vision_layers)
    assert len(encoder.model.transformer.resblocks) == arch.transformer_layers
    assert encoder.model.token_embedding.weight.shape == (arch.vocab_size, arch.transformer_width)
    assert encoder.context_length == arch.context_length and encoder.input_resolution == arch.image_resolution
    attrs = sample_attributes(2, _gen(HELDOUT_SEED_BASE + 77)).repeat(len(STYLES), 1)
    styles = [s for s in STYLES for _ in range(2)]
    with torch.no_grad():
        image_features = encoder.image_features(render(attrs, styles, "human"))
        predicted = (image_features @ style_text_features(encoder).t()).argmax(1)
    assert [STYLES[i] for i in predicted.tolist()] == styles


def test_collapse_blindness_is_one_for_a_single_pair_and_lower_for_the_shipped_anchored_clip():
    encoder = load_clip(WEIGHTS_DIR / "clip_a.pt")
    # with one pair the "collapsed" generator is the faithful one: the loss cannot tell them apart by definition
    assert clip_measure.direction_scores(encoder, n_pairs=1)["collapse_blindness"] == pytest.approx(1.0, abs=1e-5)
    # measured 0.83 on 200 pairs for the shipped (anchored) CLIP A, 0.89 for its contrastive-only stage 1
    scores = clip_measure.direction_scores(encoder, n_pairs=16)
    assert scores["collapse_blindness"] < 0.88
    assert all(0.0 < v["within_target_mean_pairwise_cosine"] < 1.0 for v in scores["per_target"].values())
    # the colour half of human -> zombie stays off the zombie direction that the whole change follows
    assert scores["palette_swap_mean_cosine"]["zombie"] < 0.3 < 0.9 < scores["per_target"]["zombie"]["mean_cosine"]
    assert set(scores["palette_swap_mean_cosine"]) == {c for c in CHARACTERS if c != "human"}
    assert set(scores["attribute_mismatch_cosine_drop"]) == set(ATTRIBUTE_NAMES)
    assert set(scores["darker_skin_cosine_drop"]) == set(scores["palette_swap_mean_cosine"])
    assert scores["darker_skin_cosine_drop"]["zombie"] > 0  # the colour anchor: darker zombies align less
    assert set(scores["attribute_edit_max_mean_abs_cosine"]) == set(ATTRIBUTE_NAMES)
    # a zombie's shapes in human colours are only part of the change the zombie direction asks for
    zombie = scores["per_target"]["zombie"]
    assert zombie["in_source_colours_mean_cosine"] < zombie["mean_cosine"] - 0.2


def test_in_source_colours_keeps_the_targets_luminance_and_the_sources_chroma():
    attrs = sample_attributes(4, _gen(5))
    source, target = render(attrs, "photo", "human"), render(attrs, "sketch", "human")
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    mixed = clip_losses.in_source_colours(target, source)
    inside = ((mixed > -1) & (mixed < 1)).all(1)  # pixels away from clamping, [N, H, W]
    assert inside.float().mean() > 0.2  # white paper under a saturated backdrop clips
    assert torch.allclose((mixed * luma).sum(1)[inside], (target * luma).sum(1)[inside], atol=1e-5)
    chroma = source - (source * luma).sum(1, keepdim=True)
    mixed_chroma = mixed - (mixed * luma).sum(1, keepdim=True)
    assert torch.allclose(mixed_chroma.permute(0, 2, 3, 1)[inside], chroma.permute(0, 2, 3, 1)[inside], atol=1e-5)
    assert torch.allclose(clip_losses.in_source_colours(source, source), source.clamp(-1, 1), atol=1e-5)
    assert torch.allclose(clip_losses.in_source_colours(target, target), target, atol=1e-5)  # a grey source: no colour


def test_attribute_probe_reads_an_embedding_that_carries_the_attributes():
    """The probe must find attributes that are linearly present and report about 0 for ones that are not."""
    data = heldout_set(600)  # 450 to fit 12 coefficients, 150 to score
    targets = clip_losses.attribute_targets(data["attrs"])

    class Fake:
        seen = 0

        def image_features(self, images):  # a stand-in encoder: the first five attributes plus noise dimensions
            rows = torch.arange(self.seen, self.seen + len(images))
            self.seen += len(images)
            noise = 0.1 * torch.randn(len(images), 6, generator=_gen(int(rows[0])))
            constant = torch.full((len(images), 1), 10.0)  # keeps the norm nearly fixed: normalising stays linear
            return torch.nn.functional.normalize(torch.cat([targets[rows, :5], noise, constant], 1), dim=-1)

    r2 = clip_measure.attribute_probe_r2(Fake(), data)
    names = clip_losses.GEOMETRY_ATTRIBUTES
    assert all(r2[n] > 0.8 for n in names[:5]), r2
    assert all(r2[n] < 0.2 for n in names[5:]), r2


def test_each_stage_starts_from_the_file_the_stage_before_writes():
    """The recipe chain: every stage but the last writes where the next one's init_weights reads; the last ships."""
    assert set(clip_recipe.SHIPPED_STAGES) == {"clip_a", "clip_b"}
    for family, stages in clip_recipe.SHIPPED_STAGES.items():
        assert stages[0] == family and len(stages) >= 2
        for before, after in zip(stages, stages[1:]):
            written = clip_recipe.default_weights_path(before, measuring=False)
            assert written.parent == clip_recipe.RUNS_DIR
            assert repo_path(PRESETS[after].init_weights) == written
        assert clip_recipe.default_weights_path(stages[-1], measuring=False) == clip_recipe.WEIGHTS_DIR / f"{family}.pt"
        assert clip_recipe.default_weights_path(stages[0], measuring=True) == clip_recipe.WEIGHTS_DIR / f"{family}.pt"
        assert clip_recipe.recipe_command(family).split(" && ") == [
            f"python -m replication.miniworld.train_clip --name {s}" for s in stages]
    # the guidance CLIP's paired-direction term is on in the joined and the last stage only, so the smiling stage
    # between them cannot leave the shipped file off the directions
    assert [PRESETS[s].direction_weight > 0 for s in clip_recipe.SHIPPED_STAGES["clip_a"]] == [False, False, True,
                                                                                               False, True]
    # both shipped CLIPs are trained with the smile term and (A from its anchored stage) frozen BatchNorm
    assert all(PRESETS[s].smile_weight > 0 for stages in clip_recipe.SHIPPED_STAGES.values() for s in stages)
    assert [PRESETS[s].freeze_batchnorm for s in clip_recipe.SHIPPED_STAGES["clip_a"]] == [False] + [True] * 4


def test_make_and_the_registry_retrain_the_shipped_clips_with_the_same_stages():
    makefile = (REPO_ROOT / "Makefile").read_text()
    for family, stages in clip_recipe.SHIPPED_STAGES.items():
        listed = re.search(rf"^{family.upper()}_STAGES := (.*)$", makefile, re.M)
        assert listed and tuple(listed.group(1).split()) == stages
        assert weights.get_entry(f"mini-{family.replace('_', '-')}").recipe == clip_recipe.recipe_command(family)


def test_a_missing_start_file_names_the_stage_that_writes_it(tmp_path):
    config = replace(PRESETS["clip_a_directed"], init_weights=str(tmp_path / "absent.pt"))
    with pytest.raises(clip_recipe.ClipTrainingError, match="--name clip_a_smiling"):
        train(config, tmp_path / "run", tmp_path / "out.pt", progress=False)


def test_palette_pairs_join_the_invariance_term_as_recoloured_human_faces():
    base = ClipTrainConfig(name="tiny", architecture=TINY, seed=4, batch_size=8, hard_negative_fraction=0.25,
                           invariance_weight=5.0, invariance_pairs=10)
    with_swaps = replace(base, palette_pairs=6)
    plain, swapped = clip_training.training_batch(base, 7), clip_training.training_batch(with_swaps, 7)
    assert torch.equal(plain["images"], swapped["images"]) and plain["captions"] == swapped["captions"]
    n_colour = len(plain["invariance_pairs"][0])
    clean, edited = swapped["invariance_pairs"]
    assert len(clean) == len(edited) == n_colour + 6
    assert torch.equal(clean[:n_colour], plain["invariance_pairs"][0])
    # the added rows are the same human faces in another character's colours
    attrs = sample_attributes(6, torch.Generator().manual_seed(train_batch_seed(4, 7) + 3))
    assert torch.equal(clean[n_colour:], render(attrs, "photo", "human"))
    others = [c for c in CHARACTERS if c != "human"]
    for i in range(6):
        assert any(torch.equal(edited[n_colour + i], render(attrs[i:i + 1], "photo", "human", palette=c)[0])
                   for c in others)
    # the swaps are weighted by the invariance term, so they cannot be asked for without it
    with pytest.raises(clip_recipe.ClipTrainingError, match="invariance_weight"):
        replace(with_swaps, invariance_weight=0.0)



def test_colour_anchor_reads_skin_and_hair_only_where_the_domain_draws_them():
    mask = clip_losses.colour_anchor_mask(["photo", "sketch", "photo", "photo", "neon", "comic"],
                                          ["human", "human", "zombie", "werewolf", "elf", "clown"])
    # columns: skin tone, hair colour. Zombies keep a quarter of the skin under the green; fur and face paint hide it;
    # sketch and neon draw no palette from light to dark; a clown's tufts use hair colour as a hue
    assert mask.tolist() == [[1, 1], [0, 0], [1, 1], [0, 1], [0, 0], [0, 0]]
    assert clip_losses.COLOUR_ANCHOR_ATTRIBUTES == ("skin_tone", "hair_color")


def test_colour_anchor_loss_ignores_targets_that_hide_the_colours_and_trains_the_tower():
    config = ClipTrainConfig(name="tiny", architecture=TINY, seed=4, batch_size=4, direction_weight=2.0,
                             direction_pairs=6, colour_anchor_weight=5.0)
    batch = clip_training.training_batch(config, 3)
    source, target, shift = batch["direction_pairs"]
    attrs = sample_attributes(6, torch.Generator().manual_seed(train_batch_seed(4, 3) + 2))
    assert torch.equal(batch["direction_attrs"], attrs)  # the attributes the paired renders were drawn from
    model = build_clip(TINY, 2)
    head = torch.nn.Linear(TINY.embed_dim, 2)
    loss = clip_losses.colour_anchor_loss(model, head, batch, "clip")
    loss.backward()
    assert float(loss.detach()) > 0 and model.visual.conv1.weight.grad.abs().sum() > 0
    # with every pair's shift set to photo -> sketch (no skin or hair palette) the targets drop out of the loss
    to_sketch = torch.full_like(shift, [d[3] for d in clip_recipe.target_domains()].index("sketch"))
    with torch.no_grad():
        masked = clip_losses.colour_anchor_loss(model, head, dict(batch, direction_pairs=(source, target, to_sketch)),
                                                "clip")
        sources_only = clip_losses.colour_anchor_loss(model, head,
                                                      dict(batch, direction_pairs=(source, source, to_sketch)), "clip")
    assert torch.allclose(masked, sources_only, atol=1e-6)
    # the anchor reads the paired-direction renders, so it cannot be asked for without that term
    with pytest.raises(clip_recipe.ClipTrainingError, match="direction_weight"):
        replace(config, direction_weight=0.0)


def test_colour_anchor_head_is_trained_and_never_exported(tmp_path):
    config = ClipTrainConfig(name="tiny", architecture=TINY, seed=5, steps=2, batch_size=4, warmup_steps=1,
                             pixels="clip", invariance_weight=1.0, invariance_pairs=4, direction_weight=1.0,
                             direction_pairs=4, colour_anchor_weight=5.0)
    train(config, tmp_path / "run", tmp_path / "out.pt", progress=False)
    exported = torch.load(tmp_path / "out.pt", weights_only=True)
    assert not any(k.startswith("colour_head.") for k in exported)
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert state["model"]["colour_head.weight"].shape == (2, TINY.embed_dim)


def test_smile_triplets_differ_only_in_the_mouth_and_the_smile_word():
    images, texts = clip_training.smile_triplets(6, _gen(11), augment_strength=0.0)
    assert images.shape == (18, 3, 64, 64) and len(texts) == 18
    faces = images.unflatten(0, (6, 3))
    for i in range(6):
        smiling, plain, frowning = texts[3 * i:3 * i + 3]
        assert " smiling " in smiling and " frowning " in frowning
        assert "smiling" not in plain and "frowning" not in plain
        assert smiling.replace("a smiling ", "").replace(" smiling ", " ") == frowning.replace(
            "a frowning ", "").replace(" frowning ", " ")
        for a, b in ((0, 1), (1, 2), (0, 2)):
            changed = (faces[i, a] - faces[i, b]).abs().amax(0) > 0.05
            # the mouth moves (up to a tenth of the image for the largest faces), nothing else does
            assert 0 < int(changed.sum()) < 600
    # the faces cover more than one domain, and the same generator state gives the same triplets
    assert len({t.split(" of ")[0] for t in texts}) > 1
    again, again_texts = clip_training.smile_triplets(6, _gen(11), augment_strength=0.0)
    assert torch.equal(images, again) and texts == again_texts


def test_smile_loss_trains_the_image_tower_to_tell_the_three_mouths_apart():
    model = build_clip(TINY, 9)
    images, texts = clip_training.smile_triplets(4, _gen(12), augment_strength=0.0)
    loss = clip_losses.smile_loss(model, images, texts, "clip")
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert model.visual.conv1.weight.grad.abs().sum() > 0
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = loss.item()
    for _ in range(20):
        optimizer.zero_grad()
        clip_losses.smile_loss(model, images, texts, "clip").backward()
        optimizer.step()
    assert float(clip_losses.smile_loss(model, images, texts, "clip")) < before - 0.1


def test_smile_triplets_join_the_batch_without_changing_the_contrastive_part():
    base = ClipTrainConfig(name="tiny", architecture=TINY, seed=4, batch_size=8)
    plain, with_smiles = clip_training.training_batch(base, 3), clip_training.training_batch(
        replace(base, smile_weight=1.0, smile_triplets=5), 3)
    assert torch.equal(plain["images"], with_smiles["images"]) and plain["captions"] == with_smiles["captions"]
    assert "smile_triplets" not in plain and with_smiles["smile_triplets"][0].shape == (15, 3, 64, 64)


def test_smiling_by_decile_counts_each_tenth_of_the_smile_value():
    smile = torch.tensor([0.05, 0.08, 0.66, 0.95, 1.0])
    called = torch.tensor([False, True, False, True, True])
    right = called == (smile > 0.65)
    table = clip_measure.smiling_by_decile(smile, called, right)
    assert set(table) == {"0.0-0.1", "0.6-0.7", "0.9-1.0"}  # 1.0 joins the top tenth
    assert table["0.0-0.1"] == {"n": 2, "accuracy": 0.5, "called_smiling": 0.5}
    assert table["0.6-0.7"]["accuracy"] == 0.0 and table["0.9-1.0"] == {"n": 2, "accuracy": 1.0, "called_smiling": 1.0}


def test_frozen_batchnorm_keeps_running_statistics_and_still_trains_the_resnet_tower():
    """freeze_batchnorm: a training step normalises with the running statistics the eval-mode model (ClipEncoder,
    NADA, the measurement) uses, leaves them as they were, and still updates every weight, BatchNorm gains included."""
    arch = ClipArchitecture(embed_dim=16, vision_layers=(1, 1, 1, 1), vision_width=8, vision_patch_size=8,
                            transformer_width=64, transformer_layers=1)
    config = ClipTrainConfig(name="tiny_rn", architecture=arch, seed=3, batch_size=8, smile_weight=1.0,
                             smile_triplets=2)
    batch = clip_training.training_batch(config, 0)

    def bn_state(model):
        return {k: v.clone() for k, v in model.visual.state_dict().items() if "running_" in k or "bn" in k}

    for frozen in (False, True):
        model = build_clip(arch, 3)
        before = bn_state(model)
        train_step(model, make_optimizer(model, config), batch, 1e-3, pixels="clip", smile_weight=1.0,
                   freeze_batchnorm=frozen)
        after = bn_state(model)
        stats = [k for k in before if "running_mean" in k]
        # the stem's gains: clip zero-initialises each block's last gain, so the blocks' others get no gradient on
        # step one
        gains = ["bn1.weight", "bn2.weight", "bn3.weight"]
        assert stats
        moved = [not torch.equal(before[k], after[k]) for k in stats]
        assert (not any(moved)) if frozen else all(moved)
        assert all(not torch.equal(before[k], after[k]) for k in gains)  # the affine part trains either way


def test_colour_kept_pairs_are_sketches_and_the_hinge_is_zero_only_past_the_margin():
    config = ClipTrainConfig(name="tiny", architecture=TINY, seed=4, batch_size=8, direction_weight=1.0,
                             colour_kept_weight=1.0, colour_kept_pairs=5)
    source, target, kept, shift = clip_training.training_batch(config, 3)["colour_kept"]
    domains = clip_recipe.target_domains()
    assert len(source) == 5 and all(domains[int(t)][3] == "sketch" for t in shift)
    assert torch.equal(kept, clip_losses.in_source_colours(target, source))
    model = build_clip(TINY, 0).eval()
    directions = clip_losses.training_text_directions(model)
    with torch.no_grad():
        loss = clip_losses.colour_kept_loss(model, source, target, kept, shift, directions, "clip", 0.3)
        # the "recoloured" target equal to the true one aligns exactly as much: the full margin is the loss
        same = clip_losses.colour_kept_loss(model, source, target, target, shift, directions, "clip", 0.3)
        none = clip_losses.colour_kept_loss(model, source, target, target, shift, directions, "clip", 0.0)
    assert 0.0 <= float(loss) and float(same) == pytest.approx(0.3, abs=1e-5) and float(none) == 0.0
    with pytest.raises(clip_recipe.ClipTrainingError, match="direction_weight"):
        replace(config, direction_weight=0.0)
