"""Recipe and measurement of the mini world's source generator: a small StyleGAN2 distilled from the photo+human renderer.

The renderer is known, so the generator is trained by distillation rather than adversarially: a fixed, documented map
`latent_to_attributes(z)` turns a latent into renderer attributes, and G(z) is regressed onto
render(latent_to_attributes(z), "photo", "human") with pixel, multi-scale, gradient and perceptual terms. That map is
then the ground truth of every sample: G_src(z) shows the face whose attributes are latent_to_attributes(z).

    python -m replication.miniworld.train_generator train     # stage 1: resumable, ~20-25 min on one CPU thread
    make mini-world-generator                                 # all four stages of the shipped generator
    python -m replication.miniworld.train_generator measure   # -> results/mini_world/generator.json + sample grid
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from replication.checkpoint import CheckpointError, load_generator, save_checkpoint
from replication.miniworld.attributes import (
    ATTRIBUTE_INDEX,
    ATTRIBUTE_NAMES,
    GLASSES_PROBABILITY,
    NUM_ATTRIBUTES,
    sample_attributes,
)
from replication.miniworld.readout import ridge_readout_r2
from replication.miniworld.render import render
from replication.networks import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig
from replication.runio import (REPO_ROOT, atomic_torch_save, atomic_write_bytes, command_line, repo_path, repo_relative,
                               write_json)
from replication.weights import file_sha256

DEFAULT_WEIGHTS = REPO_ROOT / "replication" / "miniworld" / "weights" / "generator.pt"
DEFAULT_RUN_DIR = REPO_ROOT / "artifacts" / "mini_world" / "generator"
DEFAULT_RESULTS = REPO_ROOT / "results" / "mini_world" / "generator.json"
DEFAULT_GRID = REPO_ROOT / "results" / "mini_world" / "generator_samples.png"
DEFAULT_EVALUATOR = REPO_ROOT / "replication" / "miniworld" / "weights" / "evaluator.pt"
DEFAULT_EVALUATOR_RESULTS = REPO_ROOT / "results" / "mini_world" / "evaluator.json"
LATENT_MAPPING_NAME = "pixelnorm-student-t-v1"
SOURCE_STYLE, SOURCE_CHARACTER = "photo", "human"
STATE_NAME = "train_state.pt"


class GeneratorRecipeError(ValueError):
    """A bad option or file for the mini generator recipe; the message says what is wrong and how to fix it."""


# ----------------------------------------------------------------------------------------------------------------------
# The latent -> attribute map (the ground truth of the shipped generator)


def _normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def latent_to_attributes(z: Tensor) -> Tensor:
    """Attributes [N, 13] in [0, 1] of latents z [N, D] (D >= 14), distributed exactly like sample_attributes'.

    The generator's first op is PixelNorm, which discards |z|, so the map reads only z's direction: coordinate i gives
    t_i = z_i * sqrt(D - 1) / sqrt(|z|^2 - z_i^2), which is Student-t with D - 1 degrees of freedom for z ~ N(0, I).
    t_i is turned into a standard normal with the Wallace/Cornish-Fisher transform (error < 1e-4 for D >= 32) and then
    into a uniform u_i with the normal CDF. Glasses reproduce sample_attributes' mixture deterministically: u < 0.6
    (60%, no glasses) maps linearly onto [0, 0.4), u >= 0.6 keeps u in [0.6, 1) (40%, glasses). Dimensions from 13
    on carry no attribute.
    """
    if not isinstance(z, Tensor) or z.ndim != 2 or z.shape[1] <= NUM_ATTRIBUTES:
        shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise GeneratorRecipeError(f"latent_to_attributes needs z of shape [N, D] with D > {NUM_ATTRIBUTES}, got {shape}")
    z = z.float()
    dof = z.shape[1] - 1
    head = z[:, :NUM_ATTRIBUTES]
    rest = (z.pow(2).sum(1, keepdim=True) - head.pow(2)).clamp_min(1e-12)
    t = head * math.sqrt(dof) / rest.sqrt()
    gauss = t * (1.0 - 1.0 / (4.0 * dof)) / torch.sqrt(1.0 + t.pow(2) / (2.0 * dof))
    uniform = _normal_cdf(gauss).clamp(0.0, 1.0)
    attrs = uniform.clone()
    g = ATTRIBUTE_INDEX["glasses"]
    no_glasses = 1.0 - GLASSES_PROBABILITY
    u = uniform[:, g]
    # sample_attributes draws U[0, 0.4) without glasses and 0.6 + U[0, 0.4) with them.
    attrs[:, g] = torch.where(u < no_glasses, u * (0.4 / no_glasses),
                              0.6 + (u - no_glasses) * (0.4 / GLASSES_PROBABILITY))
    return attrs.clamp(0.0, 1.0)


def latent_mapping_record(style_dim: int) -> dict[str, Any]:
    """Plain-data description of latent_to_attributes, stored in the checkpoint's `extra`."""
    return {
        "name": LATENT_MAPPING_NAME,
        "function": "replication.miniworld.train_generator.latent_to_attributes",
        "style_dim": int(style_dim),
        "attribute_names": list(ATTRIBUTE_NAMES),
        "latent_dims_used": list(range(NUM_ATTRIBUTES)),
        "definition": (
            "z ~ N(0, I_D); for i < 13: t_i = z_i sqrt(D-1) / sqrt(|z|^2 - z_i^2) (Student-t, D-1 dof); "
            "g_i = t_i (1 - 1/(4(D-1))) / sqrt(1 + t_i^2 / (2(D-1))); u_i = Phi(g_i); attribute i = u_i except "
            "glasses = u (2/3) if u < 0.6 else u (40% wear glasses, as sample_attributes)"
        ),
        "style": SOURCE_STYLE,
        "character": SOURCE_CHARACTER,
    }


def draw_latents(n: int, style_dim: int, seed: int) -> Tensor:
    """n latents [n, style_dim] ~ N(0, I), reproducible from `seed` on any machine."""
    return torch.randn(n, style_dim, generator=torch.Generator().manual_seed(int(seed)))


def target_images(z: Tensor) -> Tensor:
    """The renderer's photo+human image of every latent, [N, 3, 64, 64] in [-1, 1]: what G(z) should draw."""
    return render(latent_to_attributes(z), SOURCE_STYLE, SOURCE_CHARACTER, size=64)


def sample_generator(G: Generator, z: Tensor, batch: int = 64) -> Tensor:
    """G(z) in eval mode without noise (the shipped generator is deterministic for a latent), in chunks."""
    outs = []
    with torch.no_grad():
        for start in range(0, z.shape[0], batch):
            img, _ = G(z[start:start + batch], noise_mode="none")
            outs.append(img)
    return torch.cat(outs) if outs else torch.empty(0, 3, G.size, G.size)


# ----------------------------------------------------------------------------------------------------------------------
# Losses


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


@dataclass(frozen=True)
class LossWeights:
    """Weights of the distillation terms; pixel L1 alone draws faces without eyes or mouths (prototype lesson)."""

    pixel: float = 1.0
    multiscale: float = 1.0  # L1 at 1/2 and 1/4 resolution: colours and layout
    gradient: float = 2.0  # L1 of finite differences: edges of eyes, mouth and glasses frames
    perceptual: float = 0.5  # random-feature LPIPS: texture and structure
    # L1 on the pixels the smile moves (see mouth_mask): the mouth is ~2% of the image, and 18,400 steps of the four
    # terms above left the generator drawing one flat mouth for every smile (latent sensitivity 0.16, 2026-12-01).
    mouth: float = 0.0


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


# ----------------------------------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class TrainGeneratorConfig:
    """Everything that decides the trained weights; stored in the checkpoint so a run can be repeated."""

    steps: int = 2400
    batch: int = 16
    lr: float = 8e-3  # measured: 2e-3 barely leaves the mean face in 200 steps, 5e-3 and 1e-2 do
    final_lr_fraction: float = 0.05  # cosine decay to this fraction of lr, for sharper final weights
    ema_beta: float = 0.998
    adam_beta1: float = 0.9  # momentum: plain regression, not a GAN game, so StyleGAN's beta1 = 0 only adds noise
    seed: int = 0
    checkpoint_every: int = 100
    style_dim: int = 64
    n_mlp: int = 4
    lr_mlp: float = 1.0  # StyleGAN's 0.01 slows the mapping 100x; distillation has a fixed, short budget
    channels: tuple[tuple[int, int], ...] = ((4, 128), (8, 128), (16, 128), (32, 64), (64, 32))
    loss: LossWeights = LossWeights()
    # Warm start: a checkpoint of this recipe (repo-relative path) whose g_ema initialises G and G_ema, and its sha256.
    # The shipped generator is stage 1 (these defaults, from scratch) continued by a long stage 2 from it (distillation
    # only, 16,000 steps at lr 5e-3), then stages 3 and 4 that teach it the smile (below); `make mini-world-generator`
    # runs all four.
    init_weights: str = ""
    init_sha256: str = ""
    # Attributes whose input column of the first mapping layer a warm start redraws (random direction, the mean norm
    # of the other attribute columns) before training. The shipped generator's smile column has norm 0.67 against
    # 3.4-14.9 for the other attributes (0.16 for the unused dims): it learned to ignore the smile while mouths were
    # blurred, and a linear read-out of w finds no smile (R^2 0.005, every other attribute 0.78-0.99; `w_readout_r2`
    # in generator.json). 4,000 steps of the mouth term did not change that; after reseeding, 2,000 of them put the
    # smile back into w (R^2 0.83), and 3,000 more at mouth weight 5 into the drawn mouth (smile span 0.90: stages 3
    # and 4 of the shipped generator, issue 4 note of 2026-12-03).
    reseed_inputs: tuple[str, ...] = ()
    # Adversarial term (pix2pix-style: the paired distillation keeps G(z) on its render, a small StyleGAN2
    # discriminator judging single images removes the blur that the regression leaves on eyes, mouths and glasses).
    # 0 turns it off. Not used by the shipped generator: 800 steps at 0.1 from stage 1 drew striped artefacts where
    # the eyes are (measured 2026-12-01, see the issue note).
    adversarial: float = 0.0
    d_lr: float = 2e-3
    r1_gamma: float = 0.05
    r1_every: int = 16  # lazy: an R1 pass costs about five D passes on the CPU
    d_channels: tuple[tuple[int, int], ...] = ((4, 64), (8, 64), (16, 64), (32, 32), (64, 32))

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "checkpoint_every", "style_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise GeneratorRecipeError(f"{name} must be a positive integer, got {value!r}")
        if self.style_dim <= NUM_ATTRIBUTES:
            raise GeneratorRecipeError(f"style_dim must exceed {NUM_ATTRIBUTES} (one latent dim per attribute)")
        if not (self.lr > 0 and 0 <= self.final_lr_fraction <= 1 and 0 <= self.ema_beta < 1):
            raise GeneratorRecipeError("need lr > 0, final_lr_fraction in [0, 1] and ema_beta in [0, 1)")
        unknown = [a for a in self.reseed_inputs if a not in ATTRIBUTE_INDEX]
        if unknown:
            raise GeneratorRecipeError(f"cannot reseed unknown attribute(s) {', '.join(unknown)}; "
                                       f"choose from {', '.join(ATTRIBUTE_NAMES)}")
        if self.reseed_inputs and not self.init_weights:
            raise GeneratorRecipeError("reseeding mapping inputs needs a warm start (--init); a fresh G has none to fix")

    def generator_config(self) -> GeneratorConfig:
        return GeneratorConfig(size=64, style_dim=self.style_dim, n_mlp=self.n_mlp, lr_mlp=self.lr_mlp,
                               channels=self.channels)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["channels"] = [list(p) for p in self.channels]
        out["d_channels"] = [list(p) for p in self.d_channels]
        out["reseed_inputs"] = list(self.reseed_inputs)
        return out

    def discriminator_config(self) -> DiscriminatorConfig:
        return DiscriminatorConfig(size=64, channels=self.d_channels)


def learning_rate(cfg: TrainGeneratorConfig, step: int) -> float:
    """Cosine decay from cfg.lr to cfg.lr * final_lr_fraction over the run."""
    progress = min(1.0, step / max(1, cfg.steps - 1))
    low = cfg.lr * cfg.final_lr_fraction
    return low + (cfg.lr - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _batch_latents(cfg: TrainGeneratorConfig, step: int) -> Tensor:
    # Each step's batch depends only on (seed, step), so a resumed run sees exactly the batches a straight run sees.
    return draw_latents(cfg.batch, cfg.style_dim, seed=cfg.seed * 1_000_003 + step + 1)


def build_models(cfg: TrainGeneratorConfig) -> tuple[Generator, Generator]:
    """(G, G_ema) for cfg: freshly initialised from cfg.seed, or warm-started from cfg.init_weights."""
    state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)
    try:
        G = Generator(cfg.generator_config())
    finally:
        torch.random.set_rng_state(state)
    if cfg.init_weights:
        path = repo_path(cfg.init_weights)
        if not path.is_file():
            raise GeneratorRecipeError(f"--init {path} does not exist; train stage 1 first (see `make mini-world`)")
        digest = file_sha256(path)
        if cfg.init_sha256 and digest != cfg.init_sha256:
            raise GeneratorRecipeError(f"--init {path} has sha256 {digest}, the run was started from "
                                       f"{cfg.init_sha256}; use a new --run-dir")
        start, _ = load_generator(path)
        try:
            G.load_state_dict(start.state_dict(), strict=True)
        except RuntimeError:
            raise GeneratorRecipeError(f"--init {path} is not a generator of this recipe's architecture") from None
        reseed_mapping_inputs(G, cfg.reseed_inputs, cfg.seed)
    elif cfg.n_mlp >= 1:
        # Latent dims from 13 on carry no attribute; starting the mapping blind to them removes most of the input
        # variance the synthesis would otherwise first have to learn to ignore (the distillation then converges
        # several times faster). They stay trainable.
        with torch.no_grad():
            G.style[1].weight[:, NUM_ATTRIBUTES:] = 0.0
    G_ema = Generator(cfg.generator_config())
    G_ema.load_state_dict(G.state_dict())
    G_ema.eval().requires_grad_(False)
    return G, G_ema


def reseed_mapping_inputs(G: Generator, attributes: Sequence[str], seed: int) -> None:
    """Redraw the first mapping layer's input column of each named attribute: a seeded random direction scaled to the
    mean norm of the other attribute columns (see TrainGeneratorConfig.reseed_inputs)."""
    if not attributes:
        return
    weight = G.style[1].weight
    chosen = [ATTRIBUTE_INDEX[a] for a in attributes]
    kept = [i for i in range(NUM_ATTRIBUTES) if i not in chosen]
    target_norm = weight[:, kept].norm(dim=0).mean()
    rng = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for i in chosen:
            direction = torch.randn(weight.shape[0], generator=rng)
            weight[:, i] = (direction * (target_norm / direction.norm())).to(weight)


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


def train_step(G: Generator, optimizer: torch.optim.Optimizer, z: Tensor, real: Tensor, weights: LossWeights,
               perceptual_net: torch.nn.Module | None, adversary: Adversary | None = None,
               step: int = 0, mouth: Tensor | None = None) -> dict[str, float]:
    """One Adam step of distillation on (z, render), after one D step when adversarial; returns the loss terms."""
    fake, _ = G(z, noise_mode="none")
    total, terms = distillation_loss(fake, real, weights, perceptual_net, mouth)
    if adversary is not None:
        terms.update(discriminator_step(adversary, fake, real, step))
        g_adv = F.softplus(-adversary.D(fake)).mean()
        total = total + adversary.weight * g_adv
        terms["g_adv"] = float(g_adv.detach())
    if not torch.isfinite(total):
        raise FloatingPointError(f"non-finite distillation loss {float(total)}; the last checkpoint is kept")
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    terms["total"] = float(total.detach())
    return terms


@torch.no_grad()
def _ema_update(G_ema: Generator, G: Generator, beta: float) -> None:
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.lerp_(p, 1.0 - beta)


def _make_optimizer(G: Generator, cfg: TrainGeneratorConfig) -> torch.optim.Adam:
    return torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, 0.99))


def _load_state(path: Path, cfg: TrainGeneratorConfig) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable or unsafe file is the same user error
        raise GeneratorRecipeError(f"{path} is not a readable training state ({type(exc).__name__}); delete it to "
                                   f"restart the run") from None
    # How often state is saved does not change the weights, so a resume may change it.
    ignored = ("checkpoint_every",)
    saved_cfg = {k: v for k, v in dict(state.get("config") or {}).items() if k not in ignored}
    if isinstance(saved_cfg.get("loss"), dict):  # states written before a loss term existed ran it at its default
        saved_cfg["loss"] = {**dataclasses.asdict(LossWeights()), **saved_cfg["loss"]}
    saved_cfg.setdefault("reseed_inputs", [])  # states from before reseeding existed reseeded nothing
    if saved_cfg != {k: v for k, v in cfg.to_dict().items() if k not in ignored}:
        raise GeneratorRecipeError(f"{path} was written by a run with a different config; use a new --run-dir or "
                                   f"delete {path}")
    return state


def train_generator(cfg: TrainGeneratorConfig, run_dir: Path, out_path: Path, *, command: str = "",
                    progress: bool = True) -> Path:
    """Train (or resume) the distillation in run_dir and write the final checkpoint to out_path."""
    from tqdm import tqdm

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / STATE_NAME
    G, G_ema = build_models(cfg)
    optimizer = _make_optimizer(G, cfg)
    perceptual_net = make_perceptual_net(cfg.seed)
    adversary = None
    if cfg.adversarial > 0:
        rng_state = torch.random.get_rng_state()
        torch.manual_seed(cfg.seed + 31)
        try:
            D = Discriminator(cfg.discriminator_config())
        finally:
            torch.random.set_rng_state(rng_state)
        D.requires_grad_(False)
        adversary = Adversary(D, torch.optim.Adam(D.parameters(), lr=cfg.d_lr, betas=(0.0, 0.99)), cfg.adversarial,
                              cfg.r1_gamma, cfg.r1_every)
    start = 0
    log: list[dict[str, float]] = []
    saved = _load_state(state_path, cfg)
    if saved is not None:
        G.load_state_dict(saved["G"])
        G_ema.load_state_dict(saved["G_ema"])
        optimizer.load_state_dict(saved["optimizer"])
        if adversary is not None:
            adversary.D.load_state_dict(saved["D"])
            adversary.optimizer.load_state_dict(saved["D_optimizer"])
        start = int(saved["step"])
        log = list(saved["log"])
    G.train()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not progress, desc="distil G",
               dynamic_ncols=True)
    began = time.time()
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        z = _batch_latents(cfg, step)
        attrs = latent_to_attributes(z)  # once per step: the render and the mouth mask both need it
        real = render(attrs, SOURCE_STYLE, SOURCE_CHARACTER, size=64)
        mouth = mouth_mask(attrs) if cfg.loss.mouth > 0 else None
        terms = train_step(G, optimizer, z, real, cfg.loss, perceptual_net, adversary, step, mouth)
        # Ramp the EMA in so the early average is not dominated by the random initialisation.
        _ema_update(G_ema, G, min(cfg.ema_beta, (1.0 + step) / (10.0 + step)))
        if step % 50 == 0 or step == cfg.steps - 1:
            log.append({"step": step, **terms})
        bar.set_postfix(loss=f"{terms['total']:.4f}", l1=f"{terms['pixel']:.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            state = {"config": cfg.to_dict(), "step": step + 1, "G": G.state_dict(), "G_ema": G_ema.state_dict(),
                     "optimizer": optimizer.state_dict(), "log": log}
            if adversary is not None:
                state.update(D=adversary.D.state_dict(), D_optimizer=adversary.optimizer.state_dict())
            atomic_torch_save(state, state_path)
    bar.close()
    latent_avg = G_ema.mean_latent(4096, generator=torch.Generator().manual_seed(cfg.seed + 7))
    extra = {
        "latent_mapping": latent_mapping_record(cfg.style_dim),
        "train_config": cfg.to_dict(),
        "train_command": command,
        "noise": "trained with noise_mode='none'; noise weights stay 0, so every noise mode draws the same image",
        "final_loss": log[-1] if log else {},
        "train_seconds_this_session": round(time.time() - began, 1),
    }
    provenance = {"source_format": "trained", "recipe": "replication.miniworld.train_generator",
                  "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return save_checkpoint(out_path, generator_config=cfg.generator_config(), g_ema=G_ema.state_dict(),
                           latent_avg=latent_avg, provenance=provenance, extra=extra)


# ----------------------------------------------------------------------------------------------------------------------
# Measurement

CIRCULAR_ATTRIBUTES = ("background_hue", "light_direction")  # wrap at 1: an error of 0.98 is really 0.02


def attribute_r2(pred: Tensor, true: Tensor) -> list[float]:
    """R^2 per attribute column of pred against true (both [N, 13]); circular attributes use wrapped residuals."""
    residual = pred.double() - true.double()
    for name in CIRCULAR_ATTRIBUTES:
        i = ATTRIBUTE_INDEX[name]
        residual[:, i] = torch.remainder(residual[:, i] + 0.5, 1.0) - 0.5
    ss_res = residual.pow(2).sum(0)
    ss_tot = (true.double() - true.double().mean(0)).pow(2).sum(0).clamp_min(1e-12)
    return (1.0 - ss_res / ss_tot).tolist()


def _gradient_energy(x: Tensor) -> float:
    return float((x[..., :, 1:] - x[..., :, :-1]).abs().mean() + (x[..., 1:, :] - x[..., :-1, :]).abs().mean())


def save_sample_grid(path: Path, G: Generator, z: Tensor, columns: int = 8, scale: int = 2) -> None:
    """PNG of G(z) rows, each followed by the renderer's truth for the same latents; written atomically."""
    from PIL import Image

    fake = sample_generator(G, z)
    real = target_images(z)
    rows = []
    for start in range(0, z.shape[0], columns):
        rows.append(torch.cat(list(fake[start:start + columns]), dim=2))
        rows.append(torch.cat(list(real[start:start + columns]), dim=2))
    grid = torch.cat(rows, dim=1)
    grid = F.interpolate(grid[None], scale_factor=scale, mode="nearest")[0]
    pixels = ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    atomic_write_bytes(Path(path), buffer.getvalue())


def _find_min_domain_fid(record: Any) -> float | None:
    # The evaluator's JSON layout belongs to another module; look for the one number whose key names the smallest FID
    # between domains rather than hard-wiring a path into it.
    if isinstance(record, dict):
        for key, value in record.items():
            low = str(key).lower()
            if "fid" in low and ("min" in low or "smallest" in low):
                if isinstance(value, dict) and isinstance(value.get("fid"), (int, float)):
                    return float(value["fid"])  # evaluator.json: {"pair": ..., "fid": ...}
                if isinstance(value, (int, float)):
                    return float(value)
        for value in record.values():
            found = _find_min_domain_fid(value)
            if found is not None:
                return found
    return None


def redraw_attribute(z: Tensor, index: int) -> Tensor:
    """z with attribute `index` alone redrawn: z_index swapped with z_13, the first coordinate that carries no attribute.

    |z| and every other coordinate stay put, so latent_to_attributes changes attribute `index` and nothing else.
    """
    moved = z.clone()
    moved[:, [index, NUM_ATTRIBUTES]] = z[:, [NUM_ATTRIBUTES, index]]
    return moved


def latent_sensitivity(G: Generator, z: Tensor) -> dict[str, float]:
    """Per attribute: how much G's image moves when only that attribute changes, as a fraction of how much the render
    moves (mean absolute pixel change; 1 = G follows the attribute as the renderer does, 0 = G ignores it).

    Each attribute is changed alone (`redraw_attribute`). Tells which attributes the distillation has not learned yet,
    without any evaluator.
    """
    before, target_before = sample_generator(G, z), target_images(z)
    out = {}
    for i, name in enumerate(ATTRIBUTE_NAMES):
        moved = redraw_attribute(z, i)
        g_change = (sample_generator(G, moved) - before).abs().mean()
        r_change = (target_images(moved) - target_before).abs().mean().clamp_min(1e-12)
        out[name] = float(g_change / r_change)
    return out


@torch.no_grad()
def smile_change_by_region(G: Generator, z: Tensor) -> dict[str, float]:
    """Where G's pixels move when only the smile changes: mean absolute change inside the mouth (the union of both
    mouths' masks) and outside it, for G and for the render (which moves nothing outside the mouth). Splits a large
    smile `latent_sensitivity` into a mouth drawn too strongly and a change leaking onto the rest of the face."""
    smile = ATTRIBUTE_INDEX["smile"]
    moved = redraw_attribute(z, smile)
    mask = torch.maximum(mouth_mask(latent_to_attributes(z)), mouth_mask(latent_to_attributes(moved)))
    out = {}
    for name, before, after in (("generator", sample_generator(G, z), sample_generator(G, moved)),
                                ("render", target_images(z), target_images(moved))):
        change = (after - before).abs().mean(1, keepdim=True)
        out[f"{name}_in_mouth"] = float((change * mask).sum() / mask.sum().clamp_min(1e-12))
        out[f"{name}_outside_mouth"] = float((change * (1 - mask)).sum() / (1 - mask).sum().clamp_min(1e-12))
    return out


@torch.no_grad()
def mapping_readout(G: Generator, z: Tensor, train_fraction: float = 0.75, ridge: float = 1e-2) -> dict[str, Any]:
    """What the mapping network passes on, per attribute: the norm of its input column in the first mapping layer and
    the held-out R^2 of a ridge linear read-out of the attribute from w = mapping(z). An attribute missing from w
    cannot be drawn, whatever the synthesis layers learn."""
    r2 = ridge_readout_r2(G.style(z), latent_to_attributes(z), train_fraction, ridge)
    norms = G.style[1].weight.norm(dim=0)
    return {"w_readout_r2": {n: float(v) for n, v in zip(ATTRIBUTE_NAMES, r2)},
            "mapping_input_column_norm": {n: float(norms[i]) for i, n in enumerate(ATTRIBUTE_NAMES)},
            "mapping_input_column_norm_unused_mean": float(norms[NUM_ATTRIBUTES:].mean())}


def _evaluator_scores(evaluator_path: Path, evaluator_results: Path, fake: Tensor, paired_real: Tensor,
                      reference_real: Tensor, true_attrs: Tensor) -> dict[str, Any]:
    from replication.miniworld.attributes import CHARACTERS, STYLES
    from replication.miniworld.evaluator import frechet_distance, load_evaluator

    evaluator = load_evaluator(evaluator_path)

    def read(images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        styles, chars, attrs, feats = [], [], [], []
        with torch.no_grad():
            for start in range(0, images.shape[0], 250):
                chunk = images[start:start + 250]
                pred = evaluator.predict(chunk)
                styles.append(pred["style_logits"].argmax(1))
                chars.append(pred["character_logits"].argmax(1))
                attrs.append(pred["attrs"].float())
                feats.append((pred["features"] if "features" in pred else evaluator.features(chunk)).double())
        return torch.cat(styles), torch.cat(chars), torch.cat(attrs), torch.cat(feats)

    f_style, f_char, f_attrs, f_feats = read(fake)
    r_style, r_char, r_attrs, _ = read(paired_real)
    _, _, _, ref_feats = read(reference_real)
    half = reference_real.shape[0] // 2
    photo, human = STYLES.index(SOURCE_STYLE), CHARACTERS.index(SOURCE_CHARACTER)
    r2_fake = attribute_r2(f_attrs, true_attrs)
    r2_real = attribute_r2(r_attrs, true_attrs)
    span_ratio = {}
    for i, name in enumerate(ATTRIBUTE_NAMES):
        q_f = torch.quantile(f_attrs[:, i], torch.tensor([0.05, 0.95]))
        q_r = torch.quantile(r_attrs[:, i], torch.tensor([0.05, 0.95]))
        span_ratio[name] = float((q_f[1] - q_f[0]) / (q_r[1] - q_r[0]).clamp_min(1e-6))
    fid = float(frechet_distance(f_feats.numpy(), ref_feats.numpy()))
    # Two independent halves of the renders give the FID a perfect generator would get at that sample size.
    fid_floor = float(frechet_distance(ref_feats[:half].numpy(), ref_feats[half:].numpy()))
    min_domain_fid = None
    if evaluator_results.exists():
        import json

        min_domain_fid = _find_min_domain_fid(json.loads(evaluator_results.read_text()))
    mean_r2_fake = sum(r2_fake) / len(r2_fake)
    mean_r2_real = sum(r2_real) / len(r2_real)
    photo_human = float(((f_style == photo) & (f_char == human)).float().mean())
    bars = {
        "photo_human_rate>=0.95": photo_human >= 0.95,
        "attribute_r2_ratio>=0.8": mean_r2_fake >= 0.8 * mean_r2_real,
        "span_ratio>=0.8_every_attribute": all(v >= 0.8 for v in span_ratio.values()),
        "fid<half_min_domain_fid": None if min_domain_fid is None else fid < 0.5 * min_domain_fid,
    }
    return {
        "evaluator": repo_relative(evaluator_path),
        "photo_human_rate": photo_human,
        "photo_human_rate_true_renders": float(((r_style == photo) & (r_char == human)).float().mean()),
        "attribute_r2_generator": dict(zip(ATTRIBUTE_NAMES, r2_fake)),
        "attribute_r2_true_renders": dict(zip(ATTRIBUTE_NAMES, r2_real)),
        "attribute_r2_mean_generator": mean_r2_fake,
        "attribute_r2_mean_true_renders": mean_r2_real,
        "attribute_r2_ratio": mean_r2_fake / mean_r2_real if mean_r2_real > 0 else None,
        "attribute_r2_ratio_per_attribute": {name: (f / r if r > 0 else None)
                                             for name, f, r in zip(ATTRIBUTE_NAMES, r2_fake, r2_real)},
        "span_ratio_p5_p95": span_ratio,
        "fid_evaluator_features": fid,
        "fid_floor_two_render_halves": fid_floor,
        "fid_samples": [int(fake.shape[0]), int(reference_real.shape[0])],
        "min_inter_domain_fid": min_domain_fid,
        "bars": bars,
    }


def measure_generator(weights: Path, *, evaluator_path: Path | None = DEFAULT_EVALUATOR,
                      evaluator_results: Path = DEFAULT_EVALUATOR_RESULTS, n_samples: int = 5000, seed: int = 2024,
                      grid_path: Path | None = DEFAULT_GRID) -> dict[str, Any]:
    """Score a generator checkpoint against the renderer (paired L1, LPIPS, edges) and, if present, the evaluator."""
    if n_samples < 16:
        raise GeneratorRecipeError(f"--n-samples must be at least 16, got {n_samples}")
    G, ckpt = load_generator(weights)
    mapping = ckpt.extra.get("latent_mapping", {})
    if mapping.get("name") != LATENT_MAPPING_NAME:
        raise GeneratorRecipeError(f"{weights} has no '{LATENT_MAPPING_NAME}' latent mapping in its extra; it was not "
                                   f"made by this recipe (retrain with `python -m {__spec__.name} train`)")
    from metrics.miniworld import edge_correlation  # metrics imports this module, so not at the top

    z = draw_latents(n_samples, G.style_dim, seed)
    fake = sample_generator(G, z)
    true_attrs = latent_to_attributes(z)
    paired_real = render(true_attrs, SOURCE_STYLE, SOURCE_CHARACTER)
    perceptual = make_perceptual_net(0)
    n_lp = min(500, n_samples)
    with torch.no_grad():
        lp = float(torch.cat([perceptual(fake[s:s + 100], paired_real[s:s + 100]).flatten()
                              for s in range(0, n_lp, 100)]).mean())
    report: dict[str, Any] = {
        "weights": repo_relative(weights),
        "weights_bytes": Path(weights).stat().st_size,
        "n_samples": n_samples,
        "latent_seed": seed,
        "paired_l1": float((fake - paired_real).abs().mean()),
        "paired_lpips_random_alex": lp,
        # the operator the NADA scores use (metrics.miniworld), so a shift's edge correlation reads against this one
        "paired_edge_correlation": float(edge_correlation(fake, paired_real).mean()),
        "gradient_energy_ratio": _gradient_energy(fake) / _gradient_energy(paired_real),
        "latent_sensitivity_ratio": latent_sensitivity(G, z[:64]),
        "smile_change_by_region": smile_change_by_region(G, z[:64]),
        **mapping_readout(G, z[:4000]),
    }
    if grid_path is not None:
        save_sample_grid(grid_path, G, z[:16])
        report["grid"] = "rows alternate G(z) and render(latent_to_attributes(z), photo, human); 16 latents"
    if evaluator_path is not None and Path(evaluator_path).exists():
        reference = render(sample_attributes(n_samples, torch.Generator().manual_seed(seed + 1)), SOURCE_STYLE,
                           SOURCE_CHARACTER)
        report.update(_evaluator_scores(Path(evaluator_path), Path(evaluator_results), fake, paired_real, reference,
                                        true_attrs))
    else:
        report["evaluator"] = f"not measured: {evaluator_path} does not exist yet"
    return report


def memorise_probe(*, n_images: int = 8, steps: int = 300, lr: float = 5e-3, init: Path | None = None, seed: int = 5,
                   grid_path: Path | None = None) -> dict[str, Any]:
    """How fast can this recipe's generator draw detail? Fit it to n_images fixed renders (no EMA, batch <= 8).

    A capacity / optimisation probe, not a recipe: if even a handful of fixed faces stay blurred after a few hundred
    steps, more distillation data cannot be what the shipped generator lacks. Reports the loss terms over the run and
    the gradient energy of G's images relative to the renders (1 = as much edge detail as the targets).
    """
    if n_images < 1 or steps < 1 or not lr > 0:
        raise GeneratorRecipeError("memorise needs --images >= 1, --steps >= 1 and --lr > 0")
    cfg = TrainGeneratorConfig()
    if init is not None:
        if not Path(init).is_file():
            raise GeneratorRecipeError(f"--init {init} does not exist")
        G, _ = load_generator(init)
    else:
        G, _ = build_models(cfg)
    G.train()
    optimizer = torch.optim.Adam(G.parameters(), lr=lr, betas=(cfg.adam_beta1, 0.99))
    perceptual_net = make_perceptual_net(cfg.seed)
    z = draw_latents(n_images, cfg.style_dim, seed)
    real = target_images(z)
    batch = min(8, n_images)
    log = []
    from tqdm import tqdm

    for step in tqdm(range(steps), desc="memorise", dynamic_ncols=True):
        index = torch.arange(step * batch, (step + 1) * batch) % n_images
        fake, _ = G(z[index], noise_mode="none")
        total, terms = distillation_loss(fake, real[index], cfg.loss, perceptual_net)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            log.append({"step": step, **{k: round(v, 5) for k, v in terms.items()}})
    G.eval()
    fitted = sample_generator(G, z)
    if grid_path is not None:
        save_sample_grid(grid_path, G, z[:8], columns=min(8, n_images))
    return {"n_images": n_images, "steps": steps, "lr": lr, "init": "" if init is None else repo_relative(init),
            "latent_seed": seed, "log": log, "final_paired_l1": float((fitted - real).abs().mean()),
            "gradient_energy_ratio": _gradient_energy(fitted) / _gradient_energy(real)}


# ----------------------------------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m replication.miniworld.train_generator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="distil the renderer into the mini StyleGAN2 (resumable)")
    defaults = TrainGeneratorConfig()
    train.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help="resumable training state lives here")
    train.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS, help="final checkpoint (our format)")
    train.add_argument("--steps", type=int, default=defaults.steps)
    train.add_argument("--batch", type=int, default=defaults.batch)
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate (cosine decay)")
    train.add_argument("--adversarial", type=float, default=defaults.adversarial,
                       help="weight of the discriminator term (0 = distillation only, as the shipped generator)")
    train.add_argument("--mouth", type=float, default=defaults.loss.mouth,
                       help="weight of the L1 term on the pixels the smile moves (0 = off)")
    train.add_argument("--init", type=Path, default=None,
                       help="warm-start from this checkpoint of the recipe (stage 2 of the shipped generator)")
    train.add_argument("--reseed-inputs", nargs="*", default=[], metavar="ATTRIBUTE",
                       help="with --init: redraw these attributes' input columns of the first mapping layer")
    train.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    train.add_argument("--threads", type=int, default=1, help="torch threads (the recipe is timed on 1)")
    train.add_argument("--no-progress", action="store_true", help="hide the tqdm bar")
    measure = sub.add_parser("measure", help="score the shipped generator against the renderer (and evaluator)")
    measure.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    measure.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    measure.add_argument("--grid", type=Path, default=DEFAULT_GRID)
    measure.add_argument("--evaluator", type=Path, default=DEFAULT_EVALUATOR,
                         help="evaluator weights; skipped (and said so in the JSON) when the file does not exist")
    measure.add_argument("--evaluator-results", type=Path, default=DEFAULT_EVALUATOR_RESULTS)
    measure.add_argument("--n-samples", type=int, default=5000, help="samples for FID, accuracy and spans")
    measure.add_argument("--seed", type=int, default=2024)
    measure.add_argument("--threads", type=int, default=1)
    probe = sub.add_parser("memorise", help="probe: fit the generator to a few fixed renders (does detail appear?)")
    probe.add_argument("--images", type=int, default=8)
    probe.add_argument("--steps", type=int, default=300)
    probe.add_argument("--lr", type=float, default=5e-3)
    probe.add_argument("--init", type=Path, default=None, help="start from this checkpoint (default: fresh init)")
    probe.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "mini_world" / "generator_memorise.json")
    probe.add_argument("--grid", type=Path, default=REPO_ROOT / "results" / "mini_world" / "generator_memorise.png")
    probe.add_argument("--threads", type=int, default=1)
    return parser


def train_config(args: argparse.Namespace) -> TrainGeneratorConfig:
    """The recipe config of parsed `train` arguments; a warm start (`--init`, an existing file) is recorded by repo
    path and sha256."""
    init, init_sha = "", ""
    if args.init is not None:
        init, init_sha = repo_relative(args.init), file_sha256(args.init.resolve())
    return TrainGeneratorConfig(steps=args.steps, batch=args.batch, seed=args.seed, lr=args.lr,
                                adversarial=args.adversarial, loss=LossWeights(mouth=args.mouth),
                                checkpoint_every=args.checkpoint_every, init_weights=init, init_sha256=init_sha,
                                reseed_inputs=tuple(args.reseed_inputs))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    try:
        if args.command == "train":
            if args.init is not None and not args.init.is_file():
                raise GeneratorRecipeError(f"--init {args.init} does not exist; train stage 1 first")
            cfg = train_config(args)
            path = train_generator(cfg, args.run_dir, args.out, progress=not args.no_progress,
                                   command=command_line("replication.miniworld.train_generator", argv))
            print(f"wrote {path}")
        elif args.command == "memorise":
            report = memorise_probe(n_images=args.images, steps=args.steps, lr=args.lr, init=args.init,
                                    grid_path=args.grid)
            report["command"] = command_line("replication.miniworld.train_generator", argv)
            report["grid"] = "top row G(z) after fitting, bottom row the renders it was fitted to"
            write_json(args.out, report)
            print(f"wrote {args.out} and {args.grid}")
        else:
            report = measure_generator(args.weights, evaluator_path=args.evaluator,
                                       evaluator_results=args.evaluator_results, n_samples=args.n_samples,
                                       seed=args.seed, grid_path=args.grid)
            report["command"] = command_line("replication.miniworld.train_generator", argv)
            write_json(args.out, report)
            print(f"wrote {args.out} and {args.grid}")
    except (GeneratorRecipeError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
