"""The mini world's oracles, upper bounds in NADA's loop and budget, not zero-shot methods: the paired oracle distils
each latent's true target render; the CLIP oracle follows, per latent, the CLIP direction between its true renders."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from replication.config import ConfigError, ShiftConfig
from replication.networks import Generator
from replication.training_loop import StepContext, run_nada

METHOD_NAME = "paired-oracle"
CLIP_ORACLE_NAME = "clip-oracle"


class PairedTruthLoss:
    """(x_src, x_tgt, z) -> (loss, stats): the mini generator recipe's distillation loss between G_tgt(z) and the
    renderer's drawing of z's attributes in the target domain. x_src is unused: the truth replaces the source."""

    def __init__(self, target_style: str, target_character: str, seed: int = 0,
                 device: torch.device | str = "cpu"):
        # imported here, not at the top: `import baselines` must not pull in lpips and the renderer
        from replication.miniworld.render import render
        from replication.miniworld.generator_losses import distillation_loss, make_perceptual_net
        from replication.miniworld.generator_recipe import LossWeights
        from replication.miniworld.truth import latent_to_attributes

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


class PairedClipDirectionLoss:
    """(x_src, x_tgt, z) -> (loss, stats): NADA's directional loss, sum over the run's CLIP models, with the text
    direction replaced for each latent by the unit CLIP direction from the renderer's drawing of its attributes in the
    source domain to their drawing in the target domain. As the true images are known, this is the most a CLIP
    direction can tell the generator about each sample: where it still misses a bar, CLIP-direction guidance through
    these CLIP models cannot reach it, whatever the text."""

    def __init__(self, encoders, source: tuple[str, str], target: tuple[str, str], *, mode: str = "fixed",
                 tau: float | None = None):
        from replication.losses import DEFAULT_TAU
        from replication.miniworld.render import render
        from replication.miniworld.truth import latent_to_attributes

        self._render, self._attributes = render, latent_to_attributes
        self.encoders = [(encoder, float(weight)) for encoder, weight in encoders if weight > 0]
        self.source, self.target = source, target
        self.mode, self.tau = mode, DEFAULT_TAU if tau is None else tau

    def directions(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Per CLIP model, the unit truth directions [B, D] of the latents z."""
        attrs = self._attributes(z.detach().float().cpu())
        truth_src, truth_tgt = self._render(attrs, *self.source), self._render(attrs, *self.target)
        with torch.no_grad():
            out = []
            for encoder, _ in self.encoders:
                edit = encoder.image_features(truth_tgt) - encoder.image_features(truth_src)
                out.append(edit / edit.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        return out

    def __call__(self, x_src: torch.Tensor, x_tgt: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, dict]:
        from replication.losses import directional_loss

        total = torch.zeros((), dtype=torch.float32, device=x_tgt.device)
        stats = {}
        for index, ((encoder, weight), direction) in enumerate(zip(self.encoders, self.directions(z))):
            with torch.no_grad():
                feat_src = encoder.image_features(x_src)
            # NADA's faithful guard for an exactly zero edit, as in ClipGuidance (the fixed mode needs none)
            recompute = (lambda enc=encoder: enc.image_features(x_tgt + 1e-6)) if self.mode == "faithful" else None
            loss = directional_loss(feat_src, encoder.image_features(x_tgt), direction.to(x_tgt.device),
                                    eps_mode=self.mode, tau=self.tau, recompute_target=recompute)
            total = total + weight * loss
            stats[f"truth_direction/{index}"] = loss.detach()
        return total, stats


def oracle_config(shift: ShiftConfig, method: str = METHOD_NAME) -> ShiftConfig:
    """The shift with what an oracle cannot use switched off: style mixing (a mixed latent has no true render) and
    CLIP-driven layer selection (the oracle trains the shift's fixed set). A shift without a true target (paper world,
    or texts that are not mini domain names) is a ConfigError."""
    from replication.miniworld.truth import ShiftKindError, mini_shift

    if shift.task.world != "mini":
        raise ConfigError(f"{method} needs the mini world's renderer for its true targets; {shift.task.name} is "
                          f"a {shift.task.world}-world shift (use it with mini--* shifts)")
    try:
        mini_shift(shift.task.source_text, shift.task.target_text)
    except ShiftKindError as exc:
        raise ConfigError(f"{method}: {shift.task.name}: {exc}") from None
    return dataclasses.replace(shift, nada=dataclasses.replace(shift.nada, mixing=0.0, auto_layer_iters=0))


def _train_oracle(method: str, make_loss, G_src: Generator, shift: ShiftConfig, seed: int, run_dir: Path,
                  **run_kw) -> Generator:
    """NADA's loop on `shift` (mini only, oracle_config applied) with the guidance make_loss(shift, mini kind) builds;
    it is called with the batch's latents."""
    from replication.miniworld.truth import mini_shift

    shift = oracle_config(shift, method)
    loss = make_loss(shift, mini_shift(shift.task.source_text, shift.task.target_text))
    ctx = StepContext(guidance=loss, select=None, cfg=shift.nada, guidance_takes_latents=True)
    return run_nada(G_src, shift, ctx, seed, run_dir, method=method, **run_kw)


def adapt(G_src: Generator, shift: ShiftConfig, seed: int, run_dir: Path, *, weights_sha256=None, progress=True,
          stop_at: int | None = None, latent_avg: torch.Tensor | None = None, **_) -> Generator:
    device = next(G_src.parameters()).device
    return _train_oracle(METHOD_NAME,
                         lambda _, kind: PairedTruthLoss(kind.target_style, kind.target_character, seed, device=device),
                         G_src, shift, seed, run_dir, weights_sha256=weights_sha256, progress=progress,
                         stop_at=stop_at, latent_avg=latent_avg)


def clip_oracle_adapt(G_src: Generator, shift: ShiftConfig, seed: int, run_dir: Path, *, encoders=None,
                      weights_sha256=None, progress=True, stop_at: int | None = None,
                      latent_avg: torch.Tensor | None = None, **_) -> Generator:
    """The CLIP oracle: the shift's CLIP models, loss mode, lr, layers and budget, guided per latent by its truth
    direction (PairedClipDirectionLoss) instead of the text direction."""
    from replication.miniworld.attributes import SOURCE_CHARACTER, SOURCE_STYLE
    from replication.nada import load_encoders

    def make_loss(shift: ShiftConfig, kind) -> PairedClipDirectionLoss:
        models = encoders if encoders is not None else load_encoders(shift.nada, next(G_src.parameters()).device)
        return PairedClipDirectionLoss(models, (SOURCE_STYLE, SOURCE_CHARACTER),
                                       (kind.target_style, kind.target_character), mode=shift.nada.mode)

    return _train_oracle(CLIP_ORACLE_NAME, make_loss, G_src, shift, seed, run_dir, weights_sha256=weights_sha256,
                         progress=progress, stop_at=stop_at, latent_avg=latent_avg)
