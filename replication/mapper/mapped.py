"""A generator whose latents pass through a trained latent mapper first: G(w + step_scale * M(w)), same interface."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from replication.mapper.model import LatentMapper
from replication.networks import Generator


class MappedGenerator(nn.Module):
    """Wraps a generator and a latent mapper; every sampler, score and grid that takes a Generator takes this.

    Only `synthesis` differs: the W+ it receives is edited by the mapper before the wrapped generator draws it, so
    `forward`, `make_wplus` (truncation included) and `mapping` behave exactly as the wrapped generator's.
    """

    def __init__(self, G: Generator, mapper: LatentMapper, step_scale: float):
        super().__init__()
        self.G, self.mapper, self.step_scale = G, mapper, float(step_scale)

    @property
    def size(self) -> int:
        return self.G.size

    @property
    def style_dim(self) -> int:
        return self.G.style_dim

    @property
    def n_latent(self) -> int:
        return self.G.n_latent

    @property
    def cfg(self):
        return self.G.cfg

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        return self.G.mapping(z)

    def make_wplus(self, styles, **kw) -> torch.Tensor:
        return self.G.make_wplus(styles, **kw)

    def synthesis(self, wplus: torch.Tensor, *, noise_mode: str = "random",
                  noise: Sequence[torch.Tensor | None] | None = None, rng: torch.Generator | None = None) -> torch.Tensor:
        edited = wplus + self.step_scale * self.mapper(wplus)
        return self.G.synthesis(edited, noise_mode=noise_mode, noise=noise, rng=rng)

    # Generator.forward only calls make_wplus then synthesis, so it is this class's forward too (one definition)
    forward = Generator.forward
