"""Adaptive layer freezing reproduces NADA's determine_opt_layers; fixed mode, phases and freezing are exact."""
from pathlib import Path

import pytest
import torch

from replication.clip_models import load_clip
from replication.layer_select import (
    LayerSelectionError,
    apply_selection,
    indices_to_modules,
    nada_layer_list,
    phase_modules,
    select_layers,
    set_trainable,
    true_wplus_consumers,
)
from replication.losses import ClipGuidance, global_loss
from replication.networks import Generator, GeneratorConfig

torch.set_num_threads(1)
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def sg2():
    return torch.load(DATA / "sg2_tiny.pt", weights_only=True)


@pytest.fixture(scope="module")
def golden():
    return torch.load(DATA / "layer_select_tiny.pt", weights_only=True)


@pytest.fixture(scope="module")
def enc():
    return load_clip(DATA / "clip_tiny.pt")


def tiny_generator(sg2) -> Generator:
    arch = sg2["arch"]
    cfg = GeneratorConfig(size=arch["size"], style_dim=arch["style_dim"], n_mlp=arch["n_mlp"], lr_mlp=arch["lr_mlp"],
                          blur_kernel=tuple(arch["blur_kernel"]), channels=tuple(arch["channels"].items()))
    G = Generator(cfg)
    G.load_state_dict(sg2["state_dict"])
    return G


def close(a, b, atol):
    diff = (a.detach().float() - b.float()).abs().max().item()
    assert diff <= atol, f"max abs diff {diff} > {atol}"


def test_selection_matches_nada_golden(sg2, golden, enc):
    G = tiny_generator(sg2)
    settings = golden["settings"]
    trace = {}
    chosen, names, scores = select_layers(
        G, G.mapping, lambda images: settings["clip_model_weight"] * global_loss(enc, images, settings["target_class"]),
        k=settings["auto_layer_k"], iters=settings["auto_layer_iters"], batch=settings["auto_layer_batch"],
        lr=settings["sgd_lr"], z=golden["sample_z"], mode="faithful", noise_mode="const", trace=trace)
    close(trace["w0"], golden["initial_w_codes"], 1e-5)
    close(trace["images"][0], golden["generated"], 5e-5)
    close(trace["losses"][0], golden["w_loss"], 1e-5)
    close(trace["grads"][0], golden["w_grad"], 1e-7)
    close(scores, golden["layer_weights"], 2e-8)
    assert chosen == golden["chosen_layer_idx"].tolist() == [3, 1, 4]
    assert names == golden["chosen_layer_names"] == ["convs.1", "to_rgb1", "convs.2"]


def test_selection_leaves_initial_codes_and_generator_grads_untouched(sg2, golden, enc):
    G = tiny_generator(sg2)
    G.requires_grad_(True)  # as NADA had it during selection: every weight trainable
    guidance = ClipGuidance([(enc, 1.0)], "photo", "sketch")
    trace = {}
    _, _, scores = select_layers(G, G.mapping, guidance.selection_loss, k=3, z=golden["sample_z"],
                                 noise_mode="const", trace=trace)
    close(trace["w0"], golden["initial_w_codes"], 1e-5)  # not moved by the SGD step (NADA's CPU aliasing bug)
    assert (scores > 0).all()  # the aliasing bug made every score exactly 0
    assert all(p.grad is None for p in G.parameters())  # gradients went to the W+ codes only
    close(scores, golden["layer_weights"], 2e-8)  # ClipGuidance.selection_loss uses the bare target text


def test_random_latents_come_from_rng_and_several_iterations_work(sg2, enc):
    G = tiny_generator(sg2)
    loss_fn = lambda images: global_loss(enc, images, "sketch")  # noqa: E731
    runs = [select_layers(G, G.mapping, loss_fn, k=2, batch=2, iters=2, rng=torch.Generator().manual_seed(7),
                          noise_mode="random") for _ in range(2)]
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][2], runs[1][2])
    other = select_layers(G, G.mapping, loss_fn, k=2, batch=2, rng=torch.Generator().manual_seed(8))
    assert not torch.equal(other[2], runs[0][2])


def test_index_to_module_tables(sg2):
    G = tiny_generator(sg2)
    assert nada_layer_list(G) == sg2["nada_wplus_index_to_layer"]
    measured = sg2["forward_wplus_index_consumers"]
    assert true_wplus_consumers(G) == [measured[i] for i in range(G.n_latent)]
    assert indices_to_modules(G, [3], "fixed") == ["to_rgbs.0", "convs.2"]
    assert indices_to_modules(G, [3], "faithful") == ["convs.1"]
    assert indices_to_modules(G, [3, 1, 4], "fixed") == ["to_rgbs.0", "convs.2", "to_rgb1", "convs.0", "convs.3"]


def test_fixed_mode_selects_the_modules_that_read_the_chosen_codes(sg2, golden, enc):
    G = tiny_generator(sg2)
    chosen, names, _ = select_layers(G, G.mapping, lambda images: global_loss(enc, images, "sketch"), k=3,
                                     z=golden["sample_z"], mode="fixed", noise_mode="const")
    assert chosen == [3, 1, 4]
    assert names == ["to_rgbs.0", "convs.2", "to_rgb1", "convs.0", "convs.3"]


def test_bad_selection_arguments(sg2, enc):
    G = tiny_generator(sg2)
    loss_fn = lambda images: global_loss(enc, images, "sketch")  # noqa: E731
    for k in (0, G.n_latent + 1):
        with pytest.raises(LayerSelectionError, match="auto_layer_k"):
            select_layers(G, G.mapping, loss_fn, k=k)
    with pytest.raises(LayerSelectionError, match="auto_layer_iters"):
        select_layers(G, G.mapping, loss_fn, k=1, iters=0)
    with pytest.raises(LayerSelectionError, match="mode"):
        select_layers(G, G.mapping, loss_fn, k=1, mode="other")


@pytest.fixture(scope="module")
def G256():
    channels = tuple((2 ** i, 2) for i in range(2, 9))
    return Generator(GeneratorConfig(size=256, style_dim=4, n_mlp=1, channels=channels))


def test_phase_sets_at_256px(G256):
    assert len(G256.convs) == 12 and G256.n_latent == 14
    convs = lambda *idx: [f"convs.{j}" for j in idx]  # noqa: E731
    base = ["input", "conv1"]
    assert phase_modules(G256, None) == base + convs(*range(12))
    assert phase_modules(G256, "texture") == base + convs(*range(2, 10))
    assert phase_modules(G256, "shape") == base + convs(0, 1)
    assert phase_modules(G256, "shape_expanded") == base + convs(0, 1, 2)
    assert phase_modules(G256, "no_fine") == base + convs(*range(10))
    everything = phase_modules(G256, "all")
    assert {"style", "to_rgb1", "to_rgbs.5", "convs.11"} <= set(everything)
    with pytest.raises(LayerSelectionError, match="unknown phase"):
        phase_modules(G256, "coarse")


def test_set_trainable_and_apply_selection_freeze_everything_else(G256):
    set_trainable(G256, phase_modules(G256, "all"))
    assert all(p.requires_grad for p in G256.parameters())
    set_trainable(G256, phase_modules(G256, "shape"))
    trainable = {n for n, p in G256.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in G256.named_parameters()
                         if n.split(".")[0] in ("input", "conv1") or n.startswith(("convs.0.", "convs.1."))}
    names = apply_selection(G256, ["to_rgb1", "convs.7"])
    assert names == ["to_rgb1", "convs.7"]
    trainable = {n for n, p in G256.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("to_rgb1.", "convs.7.")) for n in trainable)
    assert {"convs.7.conv.modulation.weight", "convs.7.noise.weight", "convs.7.activate.bias"} <= trainable
    with pytest.raises(LayerSelectionError, match="no module 'convs.99'"):
        set_trainable(G256, ["convs.99"])
    assert trainable == {n for n, p in G256.named_parameters() if p.requires_grad}  # a bad name changes nothing
