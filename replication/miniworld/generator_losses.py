"""The mini generator's losses: distillation onto the renders, the mouth mask, and the optional discriminator."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from replication.miniworld.attributes import ATTRIBUTE_INDEX, SOURCE_CHARACTER, SOURCE_STYLE
from replication.miniworld.generator_recipe import GeneratorRecipeError, LossWeights
from replication.miniworld.render import render


def make_perceptual_net(seed: int) -> torch.nn.Module:
    """LPIPS with random AlexNet features (offline; lpips' shipped linear heads), frozen and reproducible from seed."""
    import lpips  # imported here: only training and measurement need it

    state = torch.random.get_rng_state()
    torch.manual_seed(int(seed))
    try:
        with warnings.catch_warnings():  # lpips still passes torchvision's deprecated `pretrained`; nothing to act on
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
            net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    finally:
        torch.random.set_rng_state(state)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def mouth_mask(attrs: Tensor, size: int = 64) -> Tensor:
    """[N, 1, H, W] 1 where the render changes between the flattest and the widest smile of these attributes (dilated
    by one pixel), else 0: the region a smile is drawn in, found from the renderer itself, not from any network."""
    low, high = attrs.clone(), attrs.clone()
    low[:, ATTRIBUTE_INDEX["smile"]] = 0.0
    high[:, ATTRIBUTE_INDEX["smile"]] = 1.0
    changed = (render(low, SOURCE_STYLE, SOURCE_CHARACTER, size=size)
               - render(high, SOURCE_STYLE, SOURCE_CHARACTER, size=size)).abs().amax(1, keepdim=True) > 0.05
    return F.max_pool2d(changed.float(), 3, stride=1, padding=1)


def distillation_loss(fake: Tensor, real: Tensor, weights: LossWeights,
                      perceptual_net: torch.nn.Module | None,
                      mouth: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """Weighted sum of the distillation terms between G's images and the renders, and each term's value; `mouth` is
    mouth_mask of the renders' attributes (needed when weights.mouth > 0)."""
    terms: dict[str, Tensor] = {"pixel": (fake - real).abs().mean()}
    if weights.mouth > 0:
        if mouth is None:
            raise GeneratorRecipeError("the mouth term needs the mouth mask of the batch (mouth_mask(attrs))")
        terms["mouth"] = ((fake - real).abs() * mouth).sum() / (3.0 * mouth.sum()).clamp_min(1.0)
    ms = fake.new_zeros(())
    f, r = fake, real
    for _ in range(2):
        f, r = F.avg_pool2d(f, 2), F.avg_pool2d(r, 2)
        ms = ms + (f - r).abs().mean()
    terms["multiscale"] = ms
    dx = (fake[..., :, 1:] - fake[..., :, :-1]) - (real[..., :, 1:] - real[..., :, :-1])
    dy = (fake[..., 1:, :] - fake[..., :-1, :]) - (real[..., 1:, :] - real[..., :-1, :])
    terms["gradient"] = dx.abs().mean() + dy.abs().mean()
    if perceptual_net is not None and weights.perceptual > 0:
        terms["perceptual"] = perceptual_net(fake, real).mean()
    total = sum(getattr(weights, name) * value for name, value in terms.items())
    return total, {name: float(value.detach()) for name, value in terms.items()}


@dataclass
class Adversary:
    """The discriminator, its optimiser and the settings of the optional adversarial term."""

    D: torch.nn.Module
    optimizer: torch.optim.Optimizer
    weight: float
    r1_gamma: float
    r1_every: int


def discriminator_step(adv: Adversary, fake: Tensor, real: Tensor, step: int) -> dict[str, float]:
    """One logistic-loss update of D on (detached fake, real), with lazy R1 on the reals every r1_every steps."""
    adv.D.requires_grad_(True)
    loss = F.softplus(adv.D(fake.detach())).mean() + F.softplus(-adv.D(real)).mean()
    out = {"d_loss": float(loss.detach())}
    if adv.r1_gamma > 0 and step % adv.r1_every == 0:
        real = real.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(adv.D(real).sum(), real, create_graph=True)
        r1 = grad.pow(2).flatten(1).sum(1).mean()
        loss = loss + 0.5 * adv.r1_gamma * adv.r1_every * r1
        out["r1"] = float(r1.detach())
    adv.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    adv.optimizer.step()
    adv.D.requires_grad_(False)
    return out
