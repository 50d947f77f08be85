"""The mini world's paired oracle: NADA's loop and budget, with CLIP guidance replaced by distillation to each latent's
true target render; an upper bound on what the generator can become, not a zero-shot method."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from replication.config import ConfigError, ShiftConfig
from replication.networks import Generator
from replication.training_loop import StepContext, run_nada

METHOD_NAME = "paired-oracle"


class PairedTruthLoss:
    """(x_src, x_tgt, z) -> (loss, stats): the mini generator recipe's distillation loss between G_tgt(z) and the
    renderer's drawing of z's attributes in the target domain. x_src is unused: the truth replaces the source."""

    def __init__(self, target_style: str, target_character: str, seed: int = 0,
                 device: torch.device | str = "cpu"):
        # imported here, not at the top: `import baselines` must not pull in lpips and the renderer
        from replication.miniworld.render import render
        from replication.miniworld.train_generator import (LossWeights, distillation_loss, latent_to_attributes,
                                                           make_perceptual_net)

        self._render, self._distill, self._attributes = render, distillation_loss, latent_to_attributes
        self.target_style, self.target_character = target_style, target_character
        self.weights = LossWeights()
        self.perceptual_net = make_perceptual_net(seed).to(device)

    def __call__(self, x_src: torch.Tensor, x_tgt: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, dict]:
        # the renderer is CPU code: the truth is drawn there and moved once to the training device
        truth = self._render(self._attributes(z.detach().float().cpu()), self.target_style, self.target_character,
                             size=x_tgt.shape[-1]).to(x_tgt.device, x_tgt.dtype)
        loss, terms = self._distill(x_tgt, truth, self.weights, self.perceptual_net)
        return loss, {f"truth_{name}": value for name, value in terms.items()}


def oracle_config(shift: ShiftConfig) -> ShiftConfig:
    """The shift with what the oracle cannot use switched off: style mixing (a mixed latent has no true render) and
    CLIP-driven layer selection (the oracle trains the shift's fixed set). A shift without a true target (paper world,
    or texts that are not mini domain names) is a ConfigError."""
    from metrics.miniworld import ShiftKindError, mini_shift

    if shift.task.world != "mini":
        raise ConfigError(f"{METHOD_NAME} needs the mini world's renderer for its true targets; {shift.task.name} is "
                          f"a {shift.task.world}-world shift (use it with mini--* shifts)")
    try:
        mini_shift(shift.task.source_text, shift.task.target_text)
    except ShiftKindError as exc:
        raise ConfigError(f"{METHOD_NAME}: {shift.task.name}: {exc}") from None
    return dataclasses.replace(shift, nada=dataclasses.replace(shift.nada, mixing=0.0, auto_layer_iters=0))


def adapt(G_src: Generator, shift: ShiftConfig, seed: int, run_dir: Path, *, weights_sha256=None, progress=True,
          stop_at: int | None = None, latent_avg: torch.Tensor | None = None, **_) -> Generator:
    from metrics.miniworld import mini_shift

    shift = oracle_config(shift)
    kind = mini_shift(shift.task.source_text, shift.task.target_text)
    loss = PairedTruthLoss(kind.target_style, kind.target_character, seed, device=next(G_src.parameters()).device)
    ctx = StepContext(guidance=loss, select=None, cfg=shift.nada, guidance_takes_latents=True)
    return run_nada(G_src, shift, ctx, seed, run_dir, weights_sha256=weights_sha256, progress=progress,
                    stop_at=stop_at, latent_avg=latent_avg, method=METHOD_NAME)
