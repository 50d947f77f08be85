"""Training the mini generator: the distillation step, the EMA, and the resumable run that writes the checkpoint."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from replication.checkpoint import save_checkpoint
from replication.miniworld.attributes import SOURCE_CHARACTER, SOURCE_STYLE
from replication.miniworld.generator_losses import (Adversary, discriminator_step, distillation_loss,
                                                    make_perceptual_net, mouth_mask)
from replication.miniworld.generator_recipe import (RECIPE_MODULE, GeneratorRecipeError, LossWeights,
                                                    TrainGeneratorConfig, build_models, draw_latents, learning_rate)
from replication.miniworld.render import render
from replication.miniworld.truth import latent_mapping_record, latent_to_attributes
from replication.networks import Discriminator, Generator
from replication.runio import REPO_ROOT, atomic_torch_save

DEFAULT_RUN_DIR = REPO_ROOT / "artifacts" / "mini_world" / "generator"
STATE_NAME = "train_state.pt"


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


def _batch_latents(cfg: TrainGeneratorConfig, step: int) -> Tensor:
    # Each step's batch depends only on (seed, step), so a resumed run sees exactly the batches a straight run sees.
    return draw_latents(cfg.batch, cfg.style_dim, seed=cfg.seed * 1_000_003 + step + 1)


@torch.no_grad()
def _ema_update(G_ema: Generator, G: Generator, beta: float) -> None:
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.lerp_(p, 1.0 - beta)


def _make_optimizer(G: Generator, cfg: TrainGeneratorConfig) -> torch.optim.Adam:
    return torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, 0.99))


def _make_adversary(cfg: TrainGeneratorConfig) -> Adversary:
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed + 31)
    try:
        D = Discriminator(cfg.discriminator_config())
    finally:
        torch.random.set_rng_state(rng_state)
    D.requires_grad_(False)
    return Adversary(D, torch.optim.Adam(D.parameters(), lr=cfg.d_lr, betas=(0.0, 0.99)), cfg.adversarial,
                     cfg.r1_gamma, cfg.r1_every)


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
    adversary = _make_adversary(cfg) if cfg.adversarial > 0 else None
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
    provenance = {"source_format": "trained", "recipe": RECIPE_MODULE,
                  "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return save_checkpoint(out_path, generator_config=cfg.generator_config(), g_ema=G_ema.state_dict(),
                           latent_avg=latent_avg, provenance=provenance, extra=extra)
