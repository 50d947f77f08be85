"""StyleSpace domain adaptation (Alanov et al., StyleDomain, ICCV 2023; HyperDomainNet, NeurIPS 2022): NADA's
directional loss, but only one offset vector per modulated convolution's style is trained; every generator weight
stays as it was.

The parametrisation, from the StyleDomain code (AIRI-Institute/StyleDomain, SimilarDomains/):
- core/stylegan_patches.py, patch "s_delta" (StyleDelta): s' = s + d, the offset d added to the style vector
  s = modulation(w) of a modulated convolution, before modulation and demodulation; d starts at zero
  (core/parametrizations.py, ChannelInStyle: zeros(1, c_in)).
- core/uda_models.py, _patch_modconv_key: the patched layers are conv1 and every synthesis conv, not the ToRGBs:
  one d per conv, of its input-channel count. For FFHQ 1024 that is 512 + 8 * 512 + 512 + 256 + 256 + 128 + 128 + 64
  + 64 + 32 = 6,048 numbers: the "StyleSpace, 6.0K" row of StyleDomain's Table 1.
- configs/td_nada_ffhq_sdelta.yaml: Adam lr 0.05, betas (0.9, 0.999), weight decay 0, the NADA directional loss.
  (HyperDomainNet's "cin_mult" multiplies the conv kernel by 1 + d per input channel instead, at lr 0.1 in its
  configs/td_single_ffhq.yaml; StyleDomain's StyleSpace row, which this baseline reproduces, is the additive one.)

How it is done here: s = W w * scale + b * lr_mul in the modulation layer (replication.networks.EqualLinear, whose
lr_mul is 1 there), so s + d is the same layer with bias b + d. Training exactly those bias vectors, from the source's
values, with Adam (whose update does not depend on where a parameter starts) is training d from zero: NADA's own loop
trains them through StepContext.trainable, and the adapted generator is an ordinary Generator whose only change is d,
folded into those biases (`style_offsets` reads it back out).

The budget is the shift's [nada] one, as for NADA: iterations, batch, CLIP models and weights, mode, noise, mixing.
Only the optimiser follows StyleDomain (lr, betas), and layer selection is off (every offset trains every step).
StyleDomain's example config also sets mixing 0.9, no_coarse (the first six offsets frozen) and an "indomain" loss
of weight 0.25; its Table 1 compares parametrisations under the NADA loss alone, which is what runs here.
Cost: NADA's step (mini--zombie, 300 steps: 65 s at one CPU thread), with 928 trained numbers in the mini generator.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from replication.config import ConfigError, ShiftConfig
from replication.networks import Generator
from replication.training_loop import StepContext, run_nada

METHOD_NAME = "stylespace"


@dataclass(frozen=True)
class StyleSpaceConfig:
    """StyleDomain's StyleSpace ("s_delta") settings; the rest of the budget is the shift's [nada]."""

    lr: float = 0.05  # Adam lr of the offsets (StyleDomain configs/td_nada_ffhq_sdelta.yaml)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam betas (same file)

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"{METHOD_NAME}: lr must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"{METHOD_NAME}: betas are Adam's two decay rates in [0, 1), got {list(self.betas)}")


def styled_convs(G: Generator) -> list[tuple[str, torch.nn.Module]]:
    """(name, modulation layer) of every convolution whose style carries an offset: conv1 and the synthesis convs."""
    return [("conv1", G.conv1.conv.modulation)] + [(f"convs.{i}", c.conv.modulation) for i, c in enumerate(G.convs)]


def offset_parameters(G: Generator) -> list[torch.nn.Parameter]:
    """The tensors that train: the bias of each styled conv's modulation (its style offset folded in)."""
    layers = styled_convs(G)
    for name, layer in layers:
        if layer.lr_mul != 1.0:  # s = ... + b * lr_mul: an Adam step on b would move s by lr_mul times another lr
            raise ConfigError(f"{METHOD_NAME}: {name}'s modulation has lr_mul {layer.lr_mul}, not 1; the offset "
                              f"cannot be trained as its bias")
    return [layer.bias for _, layer in layers]


def offset_count(G: Generator) -> int:
    """Numbers trained: the sum of the styled convs' input-channel counts (6,048 for FFHQ 1024)."""
    return sum(p.numel() for p in offset_parameters(G))


@torch.no_grad()
def style_offsets(G_src: Generator, G_tgt: Generator) -> dict[str, torch.Tensor]:
    """The trained offsets d = s_tgt - s_src per styled conv (lr_mul is 1), e.g. to store a domain in 24 KB."""
    return {name: (tgt.bias - src.bias).detach().clone()
            for (name, src), (_, tgt) in zip(styled_convs(G_src), styled_convs(G_tgt))}


class _CountedGuidance:
    """The guidance, with the trained-parameter count added to every stats row (so stats.jsonl records it)."""

    def __init__(self, guidance, count: int):
        self.guidance, self.count = guidance, count

    @property
    def generators(self) -> tuple[torch.Generator, ...]:
        return getattr(self.guidance, "generators", ())

    def __call__(self, x_src: torch.Tensor, x_tgt: torch.Tensor):
        loss, stats = self.guidance(x_src, x_tgt)
        return loss, {**stats, "trained_params": self.count}


def stylespace_shift(shift: ShiftConfig, config: StyleSpaceConfig) -> ShiftConfig:
    """The shift as this method trains it: StyleDomain's optimiser, no layer selection (every offset trains)."""
    nada = dataclasses.replace(shift.nada, lr=config.lr, betas=tuple(config.betas), auto_layer_iters=0, phase=None)
    return dataclasses.replace(shift, nada=nada)


def adapt(G_src: Generator, shift: ShiftConfig, seed: int, run_dir: Path, *, encoders=None, weights_sha256=None,
          progress: bool = True, stop_at: int | None = None, latent_avg: torch.Tensor | None = None,
          config: StyleSpaceConfig | None = None, **_) -> Generator:
    """NADA's loop on the shift, training only the style offsets; resumable like NADA (same checkpoints)."""
    from replication.nada import build_guidance, load_encoders

    config = config or StyleSpaceConfig()
    shift = stylespace_shift(shift, config)
    device = next(G_src.parameters()).device
    if encoders is None:
        encoders = load_encoders(shift.nada, device)
    rng = torch.Generator().manual_seed(seed + 1_000_003)  # patch-crop positions only, as NADA's
    count = offset_count(G_src)
    guidance = _CountedGuidance(build_guidance(shift.task, shift.nada, encoders, G_src, rng), count)
    ctx = StepContext(guidance=guidance, select=None, cfg=shift.nada, trainable=offset_parameters,
                      extra_config={METHOD_NAME: {**dataclasses.asdict(config), "parametrisation": "s_delta",
                                                  "trained_params": count}})
    return run_nada(G_src, shift, ctx, seed, run_dir, weights_sha256=weights_sha256, progress=progress,
                    stop_at=stop_at, latent_avg=latent_avg, method=METHOD_NAME)
