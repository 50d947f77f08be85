"""StyleGAN2 G and D: golden equivalence with rosinality's model, key names, fast resampling ops, API behaviour."""
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from replication.networks import (
    ConfigError,
    Discriminator,
    DiscriminatorConfig,
    Generator,
    GeneratorConfig,
    NetworkInputError,
    blur2d,
    make_blur_kernel,
    upfirdn2d,
    upsample2d,
)

torch.set_num_threads(1)
GOLDEN = Path(__file__).parent / "data" / "sg2_tiny.pt"
IMAGE_ATOL, LATENT_ATOL = 5e-5, 1e-5


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


@pytest.fixture(scope="module")
def golden_G(golden):
    arch = golden["arch"]
    cfg = GeneratorConfig(size=arch["size"], style_dim=arch["style_dim"], n_mlp=arch["n_mlp"], lr_mlp=arch["lr_mlp"],
                          blur_kernel=tuple(arch["blur_kernel"]), channels=tuple(sorted(arch["channels"].items())))
    G = Generator(cfg)
    G.load_state_dict(golden["state_dict"], strict=True)
    return G.eval()


def small_G(size: int, ch: int = 8, style_dim: int = 16, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    table = tuple((2 ** i, ch) for i in range(2, int(math.log2(size)) + 1))
    G = Generator(GeneratorConfig(size=size, style_dim=style_dim, n_mlp=2, channels=table))
    with torch.no_grad():  # rosinality initialises noise strengths to 0; make noise visible in the output
        for conv in [G.conv1, *G.convs]:
            conv.noise.weight.fill_(0.3)
    return G


def small_D(size: int, ch: int = 8, seed: int = 0) -> Discriminator:
    torch.manual_seed(seed)
    table = {2 ** i: ch for i in range(2, int(math.log2(size)) + 1)}
    return Discriminator(DiscriminatorConfig(size=size, channels=table))


# ---------------------------------------------------------------------------------------------------------------------
# Golden equivalence (sg2_tiny.pt, produced by rosinality's / NADA's model.py)


def _run_case(G, inputs, case):
    if case == "a":
        return G([inputs["z"]], randomize_noise=False, truncation=1, return_latents=True)
    if case == "b":
        return G([inputs["z"]], randomize_noise=False, truncation=inputs["truncation_b"],
                 truncation_latent=inputs["truncation_latent"], return_latents=True)
    if case == "c":
        return G([inputs["wplus"]], input_is_latent=True, randomize_noise=False, return_latents=True)
    return G([inputs["z"], inputs["z2"]], randomize_noise=False, inject_index=inputs["inject_index_d"],
             return_latents=True)


@pytest.mark.parametrize("case", ["a", "b", "c", "d"])
def test_golden_cases(golden, golden_G, case):
    with torch.no_grad():
        image, latent = _run_case(golden_G, golden["inputs"], case)
    expected = golden[f"case_{case}"]
    assert image.shape == expected["image"].shape == (3, 3, 32, 32)
    torch.testing.assert_close(latent, expected["latent"], atol=LATENT_ATOL, rtol=0)
    torch.testing.assert_close(image, expected["image"], atol=IMAGE_ATOL, rtol=0)


def test_golden_mapping_and_intermediates(golden, golden_G):
    z = golden["inputs"]["z"]
    with torch.no_grad():
        w = golden_G.mapping(z)
    torch.testing.assert_close(w, golden["case_a"]["w"], atol=LATENT_ATOL, rtol=0)

    expected = golden["case_a_intermediates"]
    captured = {}
    modules = dict(golden_G.named_modules())
    handles = [modules[name].register_forward_hook(lambda m, i, o, name=name: captured.__setitem__(name, o))
               for name in expected]
    try:
        with torch.no_grad():
            golden_G([z], noise_mode="const")
    finally:
        for h in handles:
            h.remove()
    assert set(captured) == set(expected)
    for name, value in expected.items():
        assert captured[name].shape == value.shape, name
        torch.testing.assert_close(captured[name], value, atol=IMAGE_ATOL, rtol=0, msg=name)


def test_children_order_and_strict_load(golden, golden_G):
    names = [n for n, _ in golden_G.named_children()]
    assert names == golden["children_names"] == ["style", "input", "conv1", "to_rgb1", "convs", "upsamples",
                                                  "to_rgbs", "noises"]
    assert len(golden_G.upsamples) == 0
    assert (golden_G.n_latent, golden_G.num_layers) == (golden["n_latent"], golden["num_layers"])
    # Same keys in the same order: a rosinality g_ema loads strictly and saves back identically.
    assert list(golden_G.state_dict()) == list(golden["state_dict"])
    fresh = Generator(golden_G.cfg)
    fresh.load_state_dict(golden["state_dict"], strict=True)
    bad = dict(golden["state_dict"])
    bad.pop("convs.0.conv.blur.kernel")
    with pytest.raises(RuntimeError, match="convs.0.conv.blur.kernel"):
        fresh.load_state_dict(bad, strict=True)


# ---------------------------------------------------------------------------------------------------------------------
# Resampling ops


def _upfirdn_by_definition(x, k, up, down, pad):
    """1-channel float64 loops straight from the definition, to check the reference itself."""
    h, w = x.shape
    stuffed = torch.zeros(h * up, w * up, dtype=torch.float64)
    stuffed[::up, ::up] = x
    p0, p1 = pad
    n = h * up + p0 + p1
    padded = torch.zeros(n, n, dtype=torch.float64)
    padded[max(p0, 0):max(p0, 0) + h * up, max(p0, 0):max(p0, 0) + w * up] = stuffed
    kh = k.shape[0]
    out_n = n - kh + 1
    out = torch.zeros(out_n, out_n, dtype=torch.float64)
    for i in range(out_n):
        for j in range(out_n):
            for a in range(kh):
                for b in range(kh):  # true convolution: kernel index runs backwards against the signal
                    out[i, j] += padded[i + a, j + b] * k[kh - 1 - a, kh - 1 - b]
    return out[::down, ::down]


@pytest.mark.parametrize("up,down,pad", [(1, 1, (1, 1)), (2, 1, (2, 1)), (1, 1, (2, 2)), (1, 2, (2, 1))])
def test_reference_upfirdn_matches_definition(up, down, pad):
    torch.manual_seed(0)
    x = torch.randn(5, 5, dtype=torch.float64)
    k = torch.rand(4, 4, dtype=torch.float64)  # asymmetric, so a missing flip would show
    ref = upfirdn2d(x[None, None], k, up=up, down=down, pad=pad)[0, 0]
    torch.testing.assert_close(ref, _upfirdn_by_definition(x, k, up, down, pad), atol=1e-12, rtol=0)


# Every (up, pad) StyleGAN2 uses: G blur after the upsampling conv, G ToRGB skip upsample,
# D 3x3 and 1x1 downsampling blurs.
@pytest.mark.parametrize("up,pad,scale", [(1, (1, 1), 4), (2, (2, 1), 4), (1, (2, 2), 1), (1, (1, 1), 1)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_fast_resampling_equals_reference(up, pad, scale, symmetric):
    torch.manual_seed(1)
    x = torch.randn(2, 5, 9, 9)
    k = make_blur_kernel((1, 3, 3, 1), scale) if symmetric else torch.rand(4, 4)
    ref = upfirdn2d(x, k, up=up, down=1, pad=pad)
    fast = upsample2d(x, k, up, pad) if up > 1 else blur2d(x, k, pad)
    assert fast.shape == ref.shape
    torch.testing.assert_close(fast, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("pad", [(3, 0), (0, 2), (-1, 1)])
def test_fast_resampling_asymmetric_pads(pad):
    torch.manual_seed(2)
    x, k = torch.randn(1, 3, 6, 6), torch.rand(4, 4)
    torch.testing.assert_close(blur2d(x, k, pad), upfirdn2d(x, k, pad=pad), atol=1e-6, rtol=0)
    torch.testing.assert_close(upsample2d(x, k, 2, pad), upfirdn2d(x, k, up=2, pad=pad), atol=1e-6, rtol=0)


def test_blur_kernel_buffers_are_rosinality_values(golden_G):
    k = torch.tensor([1.0, 3, 3, 1])
    expected = torch.outer(k, k) / 64 * 4
    assert torch.equal(golden_G.convs[0].conv.blur.kernel, expected)
    assert torch.equal(golden_G.to_rgbs[0].upsample.kernel, expected)


# ---------------------------------------------------------------------------------------------------------------------
# Shapes and sizes


@pytest.mark.parametrize("size", [8, 16, 64])
def test_generator_sizes(size):
    G = small_G(size)
    log = int(math.log2(size))
    assert G.n_latent == 2 * log - 2 and G.num_layers == 2 * log - 3 and G.size == size and G.style_dim == 16
    assert len(G.convs) == 2 * (log - 2) and len(G.to_rgbs) == log - 2
    image, latent = G(torch.randn(2, 16), return_latents=True)
    assert image.shape == (2, 3, size, size) and latent.shape == (2, G.n_latent, 16)
    assert torch.isfinite(image).all()


def _config_f_param_count(size: int, style_dim: int = 512, n_mlp: int = 8) -> int:
    ch = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32}

    def styled(cin, cout, k):  # conv weight + modulation (weight, bias) + noise strength + activation bias
        return cout * cin * k * k + style_dim * cin + cin + 1 + cout

    def to_rgb(cin):  # 1x1 conv to 3 + modulation + rgb bias
        return 3 * cin + style_dim * cin + cin + 3

    total = n_mlp * (style_dim * style_dim + style_dim) + ch[4] * 16 + styled(ch[4], ch[4], 3) + to_rgb(ch[4])
    for i in range(3, int(math.log2(size)) + 1):
        cin, cout = ch[2 ** (i - 1)], ch[2 ** i]
        total += styled(cin, cout, 3) + styled(cout, cout, 3) + to_rgb(cout)
    return total


def test_config_f_1024_on_meta_device():
    with torch.device("meta"):
        G = Generator(GeneratorConfig(1024))
        image, latent = G(torch.zeros(1, 512), noise_mode="random", return_latents=True)
        D = Discriminator(DiscriminatorConfig(1024))
        logits = D(image)
    assert G.n_latent == 18 and G.num_layers == 17
    assert image.shape == (1, 3, 1024, 1024) and latent.shape == (1, 18, 512) and logits.shape == (1, 1)
    n_params = sum(p.numel() for p in G.parameters())
    assert n_params == _config_f_param_count(1024) == 30_370_060  # rosinality's FFHQ g_ema: 30.37M incl. mapping
    assert sum(p.numel() for p in G.style.parameters()) == 2_101_248
    assert 28.9e6 < sum(p.numel() for p in D.parameters()) < 29.1e6  # NVlabs lists D at 29.0M for config-f
    with torch.device("meta"):
        assert sum(p.numel() for p in Generator(GeneratorConfig(256)).parameters()) == _config_f_param_count(256)


# ---------------------------------------------------------------------------------------------------------------------
# Latents: mapping, truncation, style mixing


def test_style_mixing_with_explicit_index_equals_hand_built_wplus():
    G = small_G(16)
    z1, z2 = torch.randn(2, 16), torch.randn(2, 16)
    with torch.no_grad():
        w1, w2 = G.mapping(z1), G.mapping(z2)
        hand = torch.cat([w1[:, None].repeat(1, 3, 1), w2[:, None].repeat(1, G.n_latent - 3, 1)], 1)
        image, latent = G([z1, z2], inject_index=3, noise_mode="const", return_latents=True)
        torch.testing.assert_close(latent, hand, atol=0, rtol=0)
        torch.testing.assert_close(image, G.synthesis(hand, noise_mode="const"), atol=0, rtol=0)
        unmixed, _ = G([z1], noise_mode="const")
    assert (image - unmixed).abs().max() > 1e-3


def test_drawn_inject_index_is_reproducible_and_shared():
    G = small_G(16)
    draws = [G.draw_inject_index(torch.Generator().manual_seed(s)) for s in range(40)]
    assert set(draws) == set(range(1, G.n_latent))  # uniform over [1, n_latent - 1]: every value shows up
    assert G.draw_inject_index(torch.Generator().manual_seed(7)) == draws[7]
    w1, w2 = torch.randn(2, 16), torch.randn(2, 16)
    a = G.make_wplus([w1, w2], input_is_latent=True, rng=torch.Generator().manual_seed(3))
    b = G.make_wplus([w1, w2], input_is_latent=True, inject_index=draws[3])
    assert torch.equal(a, b)


def test_truncation_and_wplus_inputs():
    G = small_G(8)
    w = torch.randn(3, 16)
    t = torch.randn(1, 16)
    wplus = G.make_wplus(w, input_is_latent=True, truncation=0.5, truncation_latent=t)
    torch.testing.assert_close(wplus, (t + 0.5 * (w - t))[:, None].expand(3, G.n_latent, 16))
    given = torch.randn(3, G.n_latent, 16)
    assert torch.equal(G.make_wplus([given], input_is_latent=True), given)
    with pytest.raises(NetworkInputError, match="truncation_latent"):
        G.make_wplus(w, input_is_latent=True, truncation=0.7)
    with pytest.raises(NetworkInputError, match="W\\+"):
        G.make_wplus(torch.randn(3, 5, 16), input_is_latent=True)
    with pytest.raises(NetworkInputError, match="z of shape"):
        G.make_wplus(torch.randn(3, 15))
    with pytest.raises(NetworkInputError, match="one or two"):
        G.make_wplus([w, w, w], input_is_latent=True)
    with pytest.raises(NetworkInputError, match="inject_index"):
        G.make_wplus([w, w], input_is_latent=True, inject_index=G.n_latent + 1)


def test_mean_latent():
    G = small_G(8)
    a = G.mean_latent(256, generator=torch.Generator().manual_seed(0))
    b = G.mean_latent(256, generator=torch.Generator().manual_seed(0))
    assert a.shape == (1, 16) and torch.equal(a, b) and not a.requires_grad
    z = torch.randn(256, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, G.mapping(z).mean(0, keepdim=True).detach())


# ---------------------------------------------------------------------------------------------------------------------
# Noise


def test_noise_modes():
    G = small_G(16)
    w = torch.randn(2, 16)
    with torch.no_grad():
        def run(**kw):
            return G([w], input_is_latent=True, **kw)[0]

        const1, const2 = run(noise_mode="const"), run(noise_mode="const")
        assert torch.equal(const1, const2)
        assert torch.equal(run(randomize_noise=False), const1)

        rand1, rand2 = run(noise_mode="random"), run(noise_mode="random")
        assert (rand1 - rand2).abs().max() > 1e-3
        assert (run(randomize_noise=True) - rand1).abs().max() > 1e-3

        seeded1 = run(noise_mode="random", rng=torch.Generator().manual_seed(5))
        seeded2 = run(noise_mode="random", rng=torch.Generator().manual_seed(5))
        seeded3 = run(noise_mode="random", rng=torch.Generator().manual_seed(6))
        assert torch.equal(seeded1, seeded2) and (seeded1 - seeded3).abs().max() > 1e-3

        buffers = [getattr(G.noises, f"noise_{i}") for i in range(G.num_layers)]
        torch.testing.assert_close(run(noise_mode="given", noise=buffers), const1, atol=0, rtol=0)
        torch.testing.assert_close(run(noise=buffers), const1, atol=0, rtol=0)  # rosinality: a noise list wins
        zeros = [torch.zeros_like(b) for b in buffers]
        none = run(noise_mode="none")
        torch.testing.assert_close(run(noise_mode="given", noise=zeros), none, atol=0, rtol=0)
        assert (none - const1).abs().max() > 1e-3

        per_sample = G.make_noise(batch=2, rng=torch.Generator().manual_seed(5))
        torch.testing.assert_close(run(noise_mode="given", noise=per_sample), seeded1, atol=0, rtol=0)

    with pytest.raises(NetworkInputError, match="list of"):
        G([w], input_is_latent=True, noise_mode="given")
    with pytest.raises(NetworkInputError, match="noise\\[1\\]"):
        G([w], input_is_latent=True, noise=[buffers[0]] * G.num_layers)
    with pytest.raises(NetworkInputError, match="noise_mode"):
        G([w], input_is_latent=True, noise_mode="fixed")


# ---------------------------------------------------------------------------------------------------------------------
# Gradients


def test_gradients_reach_synthesis_not_mapping_when_input_is_latent():
    G = small_G(16)
    w = torch.randn(2, 16)
    image, _ = G([w], input_is_latent=True, noise_mode="random")
    image.square().mean().backward()
    for name, p in G.named_parameters():
        if name.startswith("style."):
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_frozen_layers_get_no_gradient_and_mapping_trains_from_z():
    G = small_G(8)
    G.conv1.requires_grad_(False)
    image, _ = G(torch.randn(2, 16))
    image.mean().backward()
    assert all(p.grad is None for p in G.conv1.parameters())
    assert all(p.grad is not None for p in G.style.parameters())


def test_autocast_bf16_close_to_fp32_and_trains():
    G = small_G(16)
    z = torch.randn(2, 16)
    with torch.no_grad():
        ref, _ = G(z, noise_mode="const")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        image, _ = G(z, noise_mode="const")
    assert image.shape == (2, 3, 16, 16)
    assert (image.float() - ref).abs().max() < 0.05 * ref.abs().max()  # bf16 keeps ~3 significant digits
    image.float().square().mean().backward()
    grad = G.convs[0].conv.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------------------
# Discriminator


@pytest.mark.parametrize("size", [8, 32, 64])
def test_discriminator_shapes_and_gradients(size):
    D = small_D(size)
    image = torch.randn(4, 3, size, size, requires_grad=True)
    logits = D(image)
    assert logits.shape == (4, 1) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert all(p.grad is not None for p in D.parameters())
    with pytest.raises(NetworkInputError, match="shape"):
        D(torch.randn(1, 3, size * 2, size * 2))


def test_discriminator_rosinality_key_names():
    D = small_D(8, ch=4)
    shapes = {k: tuple(v.shape) for k, v in D.state_dict().items()}
    assert shapes == {
        "convs.0.0.weight": (4, 3, 1, 1), "convs.0.1.bias": (4,),
        "convs.1.conv1.0.weight": (4, 4, 3, 3), "convs.1.conv1.1.bias": (4,),
        "convs.1.conv2.0.kernel": (4, 4), "convs.1.conv2.1.weight": (4, 4, 3, 3), "convs.1.conv2.2.bias": (4,),
        "convs.1.skip.0.kernel": (4, 4), "convs.1.skip.1.weight": (4, 4, 1, 1),
        "final_conv.0.weight": (4, 5, 3, 3), "final_conv.1.bias": (4,),
        "final_linear.0.weight": (4, 64), "final_linear.0.bias": (4,),
        "final_linear.1.weight": (1, 4), "final_linear.1.bias": (1,),
    }


@pytest.mark.parametrize("batch,group", [(8, 4), (4, 4), (2, 2), (6, 3)])
def test_minibatch_stddev(batch, group):
    D = small_D(8)
    x = torch.randn(batch, 5, 4, 4)
    out = D.minibatch_stddev(x)
    assert out.shape == (batch, 6, 4, 4) and torch.equal(out[:, :5], x)
    per_group = batch // group
    for b in range(batch):
        members = x[b % per_group::per_group]  # rosinality groups sample b with b +- batch/group
        expected = torch.sqrt(members.var(0, unbiased=False) + 1e-8).mean()
        torch.testing.assert_close(out[b, 5], expected.expand(4, 4))


# ---------------------------------------------------------------------------------------------------------------------
# Configs


@pytest.mark.parametrize("size", [48, 2048, 4, 0, 16.0, True])
def test_bad_sizes_raise_config_error(size):
    with pytest.raises(ConfigError, match="power of two"):
        GeneratorConfig(size=size)
    with pytest.raises(ConfigError, match="power of two"):
        DiscriminatorConfig(size=size)


def test_other_bad_config_values():
    with pytest.raises(ConfigError, match="resolution\\(s\\) \\[32\\]"):
        GeneratorConfig(size=32, channels={4: 8, 8: 8, 16: 8})
    with pytest.raises(ConfigError, match="blur_kernel"):
        GeneratorConfig(size=8, blur_kernel=(1, -1))
    with pytest.raises(ConfigError, match="style_dim"):
        GeneratorConfig(size=8, style_dim=0)
    with pytest.raises(ConfigError, match="unknown key"):
        GeneratorConfig.from_dict({"size": 8, "log_size": 3})
    with pytest.raises(ConfigError, match="GeneratorConfig"):
        Generator(DiscriminatorConfig(size=8))


def test_config_round_trip_and_channel_table():
    cfg = GeneratorConfig(size=32, style_dim=64, n_mlp=2, channels={"4": 32, 8: 32, 16: 16, 32: 8, 64: 4})
    assert cfg.channels == ((4, 32), (8, 32), (16, 16), (32, 8), (64, 4))
    assert cfg.channel_table() == {4: 32, 8: 32, 16: 16, 32: 8}
    assert GeneratorConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    hash(cfg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.size = 64
    f = GeneratorConfig(size=1024)
    assert f.channel_table() == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32}
    assert f.n_latent == 18 and GeneratorConfig.from_dict(f.to_dict()) == f
    d = DiscriminatorConfig(size=64, channel_multiplier=1)
    assert d.channel_table()[64] == 256 and DiscriminatorConfig.from_dict(json.loads(json.dumps(d.to_dict()))) == d
    assert Generator(GeneratorConfig(size=8, style_dim=8, n_mlp=1, channels={4: 4, 8: 4})).cfg.size == 8
