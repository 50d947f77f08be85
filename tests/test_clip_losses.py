"""CLIP loading, preprocessing and NADA's CLIP losses match the original's golden values; guards and errors hold."""
from pathlib import Path

import pytest
import torch

from replication.clip_models import (
    ClipEncoder,
    ClipModelError,
    ImageInputError,
    PromptError,
    known_clip_names,
    load_clip,
)
from replication.losses import (
    ClipGuidance,
    DirectionError,
    GuidanceConfig,
    GuidanceError,
    ImageFolderError,
    directional_loss,
    embedding_norm_loss,
    global_logits,
    global_loss,
    image_direction,
    manifold_angle_loss,
    mean_text_feature,
    part_directions,
    patch_directional_loss,
    random_patches,
    text_direction,
)
from replication.templates import IMAGENET_TEMPLATES, PART_TEMPLATES, TemplateError, fill_templates

torch.set_num_threads(1)
DATA = Path(__file__).parent / "data"
CLIP_PATH = DATA / "clip_tiny.pt"
PAIRS = {"photo->sketch": ("photo", "sketch"), "human->werewolf": ("human", "werewolf")}


@pytest.fixture(scope="module")
def golden():
    return torch.load(DATA / "clip_tiny_loss_golden.pt", weights_only=True)


@pytest.fixture(scope="module")
def enc():
    return load_clip(CLIP_PATH)


@pytest.fixture(scope="module")
def enc_legacy():
    return load_clip(CLIP_PATH, antialias=False)


def close(a, b, atol):
    diff = (a.detach().float() - b.float()).abs().max().item()
    assert diff <= atol, f"max abs diff {diff} > {atol}"


# ---------------------------------------------------------------------------------------------- templates, loading
def test_templates_are_nadas(golden):
    assert list(IMAGENET_TEMPLATES) == golden["imagenet_templates"]
    assert len(IMAGENET_TEMPLATES) == 79 and "a photo of many {}." not in IMAGENET_TEMPLATES
    assert len(PART_TEMPLATES) == 15 and PART_TEMPLATES[0] == "the paw of a {}."
    assert fill_templates("dog", ("a {} photo.",)) == ["a dog photo."]
    with pytest.raises(TemplateError, match="exactly one"):
        fill_templates("dog", ("no slot",))


def test_loaded_encoder_is_frozen_fp32_eval(enc):
    assert isinstance(enc, ClipEncoder) and enc.input_resolution == 32 and enc.embed_dim == 64
    assert all(not p.requires_grad for p in enc.model.parameters())
    assert not enc.model.training and enc.dtype == torch.float32
    assert enc.logit_scale == pytest.approx(148.4131622)  # exp(5), not a hard-coded 100
    state = torch.load(CLIP_PATH, weights_only=True)
    assert torch.equal(enc.model.state_dict()["visual.proj"], state["visual.proj"])


def test_half_precision_keeps_layernorms_fp32_and_float32_outputs(golden):
    enc16 = load_clip(CLIP_PATH, dtype=torch.float16)
    assert enc16.dtype == torch.float16 and enc16.model.ln_final.weight.dtype == torch.float32
    x_tgt = golden["images"]["tgt"].clone().requires_grad_(True)
    feat_tgt = enc16.image_features(x_tgt)
    assert feat_tgt.dtype == torch.float32
    loss = directional_loss(enc16.image_features(golden["images"]["src"]), feat_tgt,
                            text_direction(enc16, "photo", "sketch"))
    loss.backward()
    close(loss, golden["directional_photo_sketch"]["loss"], 5e-3)  # fp16 CLIP, as NADA on GPU
    assert x_tgt.grad.dtype == torch.float32 and torch.isfinite(x_tgt.grad).all()
    with pytest.raises(ClipModelError, match="dtype"):
        load_clip(CLIP_PATH, dtype=torch.float64)


def test_unknown_model_name_is_one_line_error_listing_known_names():
    with pytest.raises(ClipModelError) as info:
        load_clip("ViT-Z/99")
    message = str(info.value)
    assert "\n" not in message and "ViT-B/32" in message and "ViT-B/16" in message
    assert "ViT-B/32" in known_clip_names()


def test_missing_registry_weight_is_weight_error(tmp_path, monkeypatch):
    from replication.weights import WeightError

    monkeypatch.setenv("NADA_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightError, match="ViT-B-32.pt"):
        load_clip("ViT-B/32")


def test_unreadable_or_foreign_files_are_clip_model_errors(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ClipModelError, match="junk.pt"):
        load_clip(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(3)}, foreign)
    with pytest.raises(ClipModelError, match="not an OpenAI CLIP checkpoint"):
        load_clip(foreign)


# --------------------------------------------------------------------------------------------------- text side
@pytest.mark.parametrize("cls", ["photo", "sketch", "human", "werewolf"])
def test_tokens_and_text_embeddings_match_golden(enc, golden, cls):
    ref = golden["text"][cls]
    prompts = fill_templates(cls, IMAGENET_TEMPLATES)
    assert torch.equal(enc.tokenize(prompts), ref["tokens"])
    close(enc.encode_text(prompts), ref["encode_text"], 5e-5)
    close(enc.text_features(prompts), ref["features_normalized"], 1e-5)


@pytest.mark.parametrize("pair", list(PAIRS))
def test_text_directions_match_golden(enc, golden, pair):
    direction = text_direction(enc, *PAIRS[pair])
    assert direction.shape == (1, 64)
    close(direction, golden["text_direction"][pair], 1e-5)


def test_bad_prompts_are_one_line_prompt_errors(enc):
    for bad in ["", "   ", [], [""]]:
        with pytest.raises(PromptError):
            enc.tokenize(bad)
    long_prompt = "a very long prompt " * 30
    with pytest.raises(PromptError) as info:
        enc.text_features(long_prompt)
    message = str(info.value)
    assert "\n" not in message and "77" in message and "a very long prompt" in message
    with pytest.raises(DirectionError, match="identical"):
        text_direction(enc, "sketch", "sketch")


def test_text_features_are_cached_and_encoded_once(monkeypatch):
    enc = load_clip(CLIP_PATH)
    calls = []
    original = enc.model.encode_text

    def counting(tokens):
        calls.append(tokens.shape[0])
        return original(tokens)

    monkeypatch.setattr(enc.model, "encode_text", counting)
    first = enc.text_features(["photo", "sketch"])
    again = enc.text_features(["sketch", "photo", "zombie"])
    assert calls == [2, 1]  # only the new text is encoded
    assert torch.equal(first[0], again[1]) and not again.requires_grad


# -------------------------------------------------------------------------------------------------- image side
def test_preprocess_at_native_size_is_only_normalisation(enc):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    close(enc.preprocess(x), ((x + 1) / 2 - mean) / std, 1e-6)
    # a wide image keeps its smaller edge and is centre-cropped, like torchvision's Resize + CenterCrop
    wide = torch.rand(1, 3, 32, 48) * 2 - 1
    close(enc.preprocess(wide), enc.preprocess(wide[..., 8:40]), 0.0)
    with pytest.raises(ImageInputError, match=r"\[B, 3, H, W\]"):
        enc.preprocess(torch.zeros(3, 32, 32))


@pytest.mark.parametrize("case", ["in64", "in48", "in24"])
def test_resize_cases_match_golden_both_antialias_settings(enc, enc_legacy, golden, case):
    ref = golden["resize_cases"][case]
    close(enc.preprocess(ref["input"]), ref["preprocessed"], 5e-5)
    close(enc_legacy.preprocess(ref["input"]), ref["preprocessed_antialias_false"], 5e-5)


@pytest.mark.parametrize("case,pair,size", [
    ("directional_photo_sketch", "photo->sketch", ""),
    ("directional_human_werewolf", "human->werewolf", ""),
    ("directional_photo_sketch_64px", "photo->sketch", "64"),
])
def test_directional_loss_matches_golden(enc, golden, case, pair, size):
    ref = golden[case]
    x_src, x_tgt = golden["images"]["src" + size], golden["images"]["tgt" + size]
    close(enc.preprocess(x_src), ref["preprocessed_src"], 5e-5)
    close(enc.preprocess(x_tgt), ref["preprocessed_tgt"], 5e-5)
    close(enc.image_embeddings(x_src), ref["encode_image_src"], 5e-5)
    close(enc.image_embeddings(x_tgt), ref["encode_image_tgt"], 5e-5)
    feat_src, feat_tgt = enc.image_features(x_src), enc.image_features(x_tgt)
    close(feat_src, ref["feat_src_normalized"], 1e-5)
    close(feat_tgt, ref["feat_tgt_normalized"], 1e-5)
    edit = feat_tgt - feat_src
    close(edit / edit.norm(dim=-1, keepdim=True), ref["edit_direction"], 1e-5)
    direction = text_direction(enc, *PAIRS[pair])
    close(direction, ref["target_direction"], 1e-5)
    for mode in ("faithful", "fixed"):  # the fixed guard is inactive at these (non-tiny) differences
        close(directional_loss(feat_src, feat_tgt, direction, eps_mode=mode), ref["loss"], 1e-5)
        per_sample = directional_loss(feat_src, feat_tgt, direction, eps_mode=mode, reduction="none")
        close(per_sample, ref["per_sample_1_minus_cos"], 1e-5)


def test_directional_loss_without_antialias_matches_legacy_golden(enc_legacy, golden):
    ref = golden["directional_photo_sketch_64px_antialias_false"]
    x_src, x_tgt = golden["images"]["src64"], golden["images"]["tgt64"]
    close(enc_legacy.preprocess(x_src), ref["preprocessed_src"], 5e-5)
    close(enc_legacy.preprocess(x_tgt), ref["preprocessed_tgt"], 5e-5)
    loss = directional_loss(enc_legacy.image_features(x_src), enc_legacy.image_features(x_tgt),
                            text_direction(enc_legacy, "photo", "sketch"))
    close(loss, ref["loss"], 1e-5)


@pytest.mark.parametrize("case,image,text", [
    ("global_sketch", "tgt", "sketch"),
    ("global_a_sketch", "tgt", "a sketch"),
    ("global_sketch_64px", "tgt64", "sketch"),
])
def test_global_loss_matches_golden(enc, golden, case, image, text):
    ref = golden[case]
    x = golden["images"][image]
    assert torch.equal(enc.tokenize(text), ref["tokens"])
    close(global_logits(enc, x, text), ref["logits_per_image"], 1e-3)  # logits are ~150x the features
    close(global_loss(enc, x, text), ref["loss"], 1e-5)


# ------------------------------------------------------------------------------------ the zero-difference guard
def test_fixed_mode_gradient_is_finite_and_bounded_at_exact_equality(enc, golden):
    x = golden["images"]["src"]
    direction = text_direction(enc, "photo", "sketch")
    feat_src = enc.image_features(x).detach()
    x_tgt = x.clone().requires_grad_(True)
    loss = directional_loss(feat_src, enc.image_features(x_tgt), direction, eps_mode="fixed")
    loss.backward()
    assert loss.item() == pytest.approx(1.0)
    grad_norm = x_tgt.grad.norm().item()
    assert torch.isfinite(x_tgt.grad).all() and 0 < grad_norm < 1e3

    # w.r.t. the features the gradient is -d / tau: it pushes the edit along the text direction, norm 1 / tau
    feat_tgt = feat_src.clone().requires_grad_(True)
    directional_loss(feat_src, feat_tgt, direction, eps_mode="fixed", tau=1e-2).backward()
    close(feat_tgt.grad, -direction.expand_as(feat_tgt) / 1e-2 / 2, 1e-3)  # /2: mean over the batch of 2

    # the original: NaN without its guard, and with it (x + 1e-6) a huge gradient (1e8 with real CLIP on GPU)
    x_tgt.grad = None
    nan_loss = directional_loss(feat_src, enc.image_features(x_tgt), direction, eps_mode="faithful")
    assert torch.isnan(nan_loss)
    guarded = directional_loss(feat_src, enc.image_features(x_tgt), direction, eps_mode="faithful",
                               recompute_target=lambda: enc.image_features(x_tgt + 1e-6))
    guarded.backward()
    assert torch.isfinite(guarded) and x_tgt.grad.norm().item() > 10 * grad_norm


def test_fixed_mode_equals_reference_formula_unless_difference_is_tiny():
    gen = torch.Generator().manual_seed(0)
    unit = lambda t: t / t.norm(dim=-1, keepdim=True)  # noqa: E731
    feat_src = unit(torch.randn(4, 16, generator=gen))
    direction = unit(torch.randn(1, 16, generator=gen))
    for scale in (0.02, 0.05, 0.5):
        feat_tgt = unit(feat_src + scale * unit(torch.randn(4, 16, generator=gen)))
        assert ((feat_tgt - feat_src).norm(dim=-1) >= 1e-2).all()
        edit = unit(feat_tgt - feat_src)
        reference = (1 - (edit * direction).sum(-1)).mean()
        close(directional_loss(feat_src, feat_tgt, direction, eps_mode="fixed"), reference, 1e-6)
        close(directional_loss(feat_src, feat_tgt, direction, eps_mode="faithful"), reference, 1e-6)
    # continuous across the saturation norm tau
    step = unit(torch.randn(4, 16, generator=gen))
    below = directional_loss(feat_src, feat_src + 0.999e-2 * step, direction, eps_mode="fixed")
    above = directional_loss(feat_src, feat_src + 1.001e-2 * step, direction, eps_mode="fixed")
    close(below, above, 1e-3)


# ------------------------------------------------------------------------------------------------ other losses
def test_manifold_and_embedding_norm_losses():
    gen = torch.Generator().manual_seed(1)
    unit = lambda t: t / t.norm(dim=-1, keepdim=True)  # noqa: E731
    f_src, f_tgt = unit(torch.randn(3, 8, generator=gen)), unit(torch.randn(3, 8, generator=gen))
    t_src, t_tgt = unit(torch.randn(1, 8, generator=gen)), unit(torch.randn(1, 8, generator=gen))
    expected = ((f_src * f_tgt).sum(-1) - (t_src * t_tgt).sum()).abs().mean()
    close(manifold_angle_loss(f_src, f_tgt, t_src, t_tgt), expected, 1e-6)
    # identical images: the loss is how far the text pair is from identical
    close(manifold_angle_loss(f_src, f_src, t_src, t_src), torch.tensor(0.0), 1e-6)

    emb = torch.randn(3, 8, generator=gen)
    rotated = emb.flip(-1)  # same norms, different directions
    assert embedding_norm_loss(emb, rotated).item() == pytest.approx(0.0, abs=1e-6)
    close(embedding_norm_loss(emb, 2 * emb), (emb.norm(dim=-1) ** 2).mean(), 1e-5)


def test_patch_loss_works_at_small_resolutions_and_is_differentiable(enc, golden):
    x_src, x_tgt = golden["images"]["src"], golden["images"]["tgt"].clone().requires_grad_(True)
    crops_a, crops_b = random_patches(x_src, x_src, patch_fraction=0.5, num_patches=3,
                                      rng=torch.Generator().manual_seed(0))
    assert crops_a.shape == (6, 3, 16, 16) and torch.equal(crops_a, crops_b)  # same positions in both batches
    full, _ = random_patches(x_src, x_src, patch_fraction=1.0)  # the original crashed when the patch filled the image
    assert torch.equal(full, x_src)

    flat = part_directions(enc, "photo", "sketch")
    nested = part_directions(enc, "photo", "sketch", nested_templates=True)
    assert flat.shape == nested.shape == (15, 64)
    close(flat.norm(dim=-1), torch.ones(15), 1e-5)
    assert (flat - nested).abs().max() > 1e-3  # the nested-template quirk changes the directions
    loss = patch_directional_loss(enc, x_src, x_tgt, flat, rng=torch.Generator().manual_seed(0), eps_mode="fixed")
    loss.backward()
    assert torch.isfinite(loss) and 0 < loss.item() < 2 and x_tgt.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- image directions
def _write_images(folder: Path, n: int, seed: int, size=(40, 30)) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    paths = []
    for i in range(n):
        pixels = (torch.rand(size[1], size[0], 3, generator=gen) * 255).to(torch.uint8).numpy()
        path = folder / f"img{i}.{'png' if i % 2 == 0 else 'jpg'}"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_image_direction_from_folders_matches_clip_pil_pipeline(tmp_path, enc):
    import clip
    from PIL import Image

    targets = _write_images(tmp_path / "tgt", 3, seed=0)
    sources = _write_images(tmp_path / "src", 2, seed=1)
    (tmp_path / "tgt" / "notes.txt").write_text("ignored")
    _, clip_preprocess = clip.load(str(CLIP_PATH), device="cpu", jit=False)  # CLIP's own PIL transform

    def mean_unit(paths):
        with torch.no_grad():
            emb = enc.encode_image(torch.stack([clip_preprocess(Image.open(p)) for p in paths]))
        return (emb / emb.norm(dim=-1, keepdim=True)).mean(0, keepdim=True)

    expected = mean_unit(targets) - mean_unit(sources)
    direction = image_direction(enc, tmp_path / "tgt", tmp_path / "src")
    close(direction, expected / expected.norm(), 1e-5)


def test_image_direction_with_generator_source(tmp_path, enc):
    from replication.networks import Generator, GeneratorConfig

    G = Generator(GeneratorConfig(size=8, style_dim=8, n_mlp=1, channels=((4, 4), (8, 4))))
    _write_images(tmp_path / "tgt", 2, seed=2)
    direction = image_direction(enc, tmp_path / "tgt", G_src=G, n_source=5, batch=2,
                                rng=torch.Generator().manual_seed(0))
    assert direction.shape == (1, 64) and abs(direction.norm().item() - 1) < 1e-5
    with pytest.raises(DirectionError):
        image_direction(enc, tmp_path / "tgt")


def test_missing_or_empty_image_folder_is_one_line_error(tmp_path, enc):
    with pytest.raises(ImageFolderError, match="does not exist"):
        image_direction(enc, tmp_path / "nope", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(ImageFolderError, match="no .png/.jpg/.jpeg") as info:
        image_direction(enc, tmp_path / "empty", tmp_path / "empty")
    assert "\n" not in str(info.value)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"not a png")
    with pytest.raises(ImageFolderError, match="cannot read image"):
        image_direction(enc, tmp_path / "broken", tmp_path / "broken")


# ------------------------------------------------------------------------------------------------ ClipGuidance
class _Recorder:
    """Wraps an encoder and records which methods were called."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if callable(attr):
            def wrapped(*args, **kwargs):
                self.calls.append(name)
                return attr(*args, **kwargs)
            return wrapped
        return attr


def test_guidance_sums_weighted_models_and_skips_weight_zero(enc, golden):
    x_src = golden["images"]["src"].clone().requires_grad_(True)
    x_tgt = golden["images"]["tgt"].clone().requires_grad_(True)
    unused = _Recorder(enc)
    guidance = ClipGuidance([(enc, 1.0), (unused, 0.0), (enc, 0.5)], "photo", "sketch")
    loss, stats = guidance(x_src, x_tgt)
    expected = golden["directional_photo_sketch"]["loss"]
    close(loss, 1.5 * expected, 1e-5)
    assert set(stats) == {"direction/0", "direction/2"} and not stats["direction/0"].requires_grad
    assert unused.calls == []  # neither its text direction nor its image features were computed
    loss.backward()
    assert x_tgt.grad is not None and x_tgt.grad.abs().sum() > 0
    assert x_src.grad is None  # no graph through the frozen images
    assert all(p.grad is None for p in enc.model.parameters())


def test_guidance_with_all_losses_and_selection_loss(enc, golden):
    x_src, x_tgt = golden["images"]["src"], golden["images"]["tgt"].clone().requires_grad_(True)
    config = GuidanceConfig(lambda_direction=1.0, lambda_global=0.5, lambda_patch=0.3, lambda_manifold=0.2,
                            mode="fixed")
    guidance = ClipGuidance([(enc, 2.0)], "photo", "sketch", config, rng=torch.Generator().manual_seed(0))
    loss, stats = guidance(x_src, x_tgt)
    assert set(stats) == {"global/0", "patch/0", "direction/0", "manifold/0"}
    close(stats["global/0"], golden["global_a_sketch"]["loss"], 1e-5)  # training prompt is "a {target}"
    close(stats["direction/0"], golden["directional_photo_sketch"]["loss"], 1e-5)
    feats = enc.image_features(x_src), enc.image_features(x_tgt)
    manifold = manifold_angle_loss(*feats, mean_text_feature(enc, "photo"), mean_text_feature(enc, "sketch"))
    close(stats["manifold/0"], manifold, 1e-6)
    combined = sum(lam * stats[k] for k, lam in [("global/0", 0.5), ("patch/0", 0.3), ("direction/0", 1.0),
                                                 ("manifold/0", 0.2)])
    close(loss, 2.0 * combined, 1e-5)
    loss.backward()
    assert torch.isfinite(x_tgt.grad).all()
    # layer selection uses the bare target text
    close(guidance.selection_loss(x_tgt), 2.0 * golden["global_sketch"]["loss"], 1e-5)


def test_guidance_faithful_guard_and_fixed_mode_at_equal_images(enc, golden):
    x = golden["images"]["src"]
    for mode in ("faithful", "fixed"):
        x_tgt = x.clone().requires_grad_(True)
        loss, _ = ClipGuidance([(enc, 1.0)], "photo", "sketch", GuidanceConfig(mode=mode))(x, x_tgt)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x_tgt.grad).all()


def test_guidance_with_image_direction_and_config_errors(enc, golden):
    direction = torch.zeros(1, 64)
    direction[0, 0] = 3.0
    guidance = ClipGuidance([(enc, 1.0)], None, None, directions=[direction])
    close(guidance.directions[0], direction / 3.0, 0.0)
    guidance(golden["images"]["src"], golden["images"]["tgt"])
    with pytest.raises(GuidanceError, match="weight 0"):
        ClipGuidance([(enc, 0.0)], "photo", "sketch")
    with pytest.raises(GuidanceError, match="lambda"):
        ClipGuidance([(enc, 1.0)], "photo", "sketch", GuidanceConfig(lambda_direction=0.0))
    with pytest.raises(GuidanceError, match="texts are required"):
        ClipGuidance([(enc, 1.0)], None, "sketch")
    with pytest.raises(GuidanceError, match="mode"):
        ClipGuidance([(enc, 1.0)], "photo", "sketch", GuidanceConfig(mode="other"))
    with pytest.raises(GuidanceError, match="target text"):
        guidance.selection_loss(golden["images"]["tgt"])
