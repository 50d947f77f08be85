"""The mini source generator's recipe: its config, initial models, learning-rate schedule, latents and targets."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from replication.checkpoint import load_generator
from replication.miniworld.attributes import (
    ATTRIBUTE_INDEX,
    ATTRIBUTE_NAMES,
    NUM_ATTRIBUTES,
    SOURCE_CHARACTER,
    SOURCE_STYLE,
)
from replication.miniworld.render import render
from replication.miniworld.truth import latent_to_attributes
from replication.networks import DiscriminatorConfig, Generator, GeneratorConfig
from replication.runio import REPO_ROOT, repo_path
from replication.weights import file_sha256

RECIPE_MODULE = "replication.miniworld.train_generator"  # the CLI that trains and measures it
DEFAULT_WEIGHTS = REPO_ROOT / "replication" / "miniworld" / "weights" / "generator.pt"


class GeneratorRecipeError(ValueError):
    """A bad option or file for the mini generator recipe; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class LossWeights:
    """Weights of the distillation terms; pixel L1 alone draws faces without eyes or mouths."""

    pixel: float = 1.0
    multiscale: float = 1.0  # L1 at 1/2 and 1/4 resolution: colours and layout
    gradient: float = 2.0  # L1 of finite differences: edges of eyes, mouth and glasses frames
    perceptual: float = 0.5  # random-feature LPIPS: texture and structure
    # L1 on the pixels the smile moves (see mouth_mask): the mouth is ~2% of the image, so the four terms above
    # leave the generator drawing one flat mouth for every smile.
    mouth: float = 0.0


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
    # of the other attribute columns) before training. Stage 2 learned to ignore the smile while mouths were blurred
    # (its column norm 0.67 against 3.4-14.9 for the other attributes; a linear read-out of w finds no smile,
    # `w_readout_r2` in generator.json), and 4,000 steps of the mouth term did not change that; after reseeding,
    # 2,000 of them put the smile back into w (R^2 0.83), and 3,000 more at mouth weight 5 into the drawn mouth
    # (stages 3 and 4).
    reseed_inputs: tuple[str, ...] = ()
    # Adversarial term (pix2pix-style: the paired distillation keeps G(z) on its render, a small StyleGAN2
    # discriminator judging single images removes the blur that the regression leaves on eyes, mouths and glasses).
    # 0 turns it off. Not used by the shipped generator: from stage 1 it drew striped artefacts where the eyes are.
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

    def discriminator_config(self) -> DiscriminatorConfig:
        return DiscriminatorConfig(size=64, channels=self.d_channels)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["channels"] = [list(p) for p in self.channels]
        out["d_channels"] = [list(p) for p in self.d_channels]
        out["reseed_inputs"] = list(self.reseed_inputs)
        return out


def learning_rate(cfg: TrainGeneratorConfig, step: int) -> float:
    """Cosine decay from cfg.lr to cfg.lr * final_lr_fraction over the run."""
    progress = min(1.0, step / max(1, cfg.steps - 1))
    low = cfg.lr * cfg.final_lr_fraction
    return low + (cfg.lr - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


def draw_latents(n: int, style_dim: int, seed: int) -> Tensor:
    """n latents [n, style_dim] ~ N(0, I), reproducible from `seed` on any machine."""
    return torch.randn(n, style_dim, generator=torch.Generator().manual_seed(int(seed)))


def target_images(z: Tensor) -> Tensor:
    """The renderer's photo+human image of every latent, [N, 3, 64, 64] in [-1, 1]: what G(z) should draw.

    The renderer is known, so the generator is trained by distillation rather than adversarially: G(z) is regressed
    onto these renders of latent_to_attributes(z), which is then the ground truth of every sample of G.
    """
    return render(latent_to_attributes(z), SOURCE_STYLE, SOURCE_CHARACTER, size=64)


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
