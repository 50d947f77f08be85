"""StyleCLIP's Ranger optimiser (RAdam + Lookahead + gradient centralisation) for the mapper, or plain Adam."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from replication.mapper.config import MapperConfig, MapperError


@torch.no_grad()
def centralize_gradients(params: Sequence[torch.Tensor]) -> None:
    """Subtract from each gradient of a >=2-D parameter its mean over all but the first (output) axis, in place."""
    for p in params:
        if p.grad is not None and p.grad.dim() > 1:
            p.grad.sub_(p.grad.mean(dim=tuple(range(1, p.grad.dim())), keepdim=True))


class Lookahead:
    """Wraps an optimiser: every k inner steps the slow weights move alpha of the way to the fast ones, and the fast
    weights restart from them. Slow weights start at the parameters' values when the wrapper is built.

    One step counter serves all parameters; the reference Ranger counts per parameter, which differs only for a
    parameter that sometimes gets no gradient (never the case for the mapper).
    """

    def __init__(self, inner: torch.optim.Optimizer, alpha: float = 0.5, k: int = 6):
        if not 0 <= alpha <= 1 or k < 1:
            raise MapperError(f"Lookahead alpha ({alpha}) must be in [0, 1] and k ({k}) >= 1")
        self.inner, self.alpha, self.k = inner, alpha, k
        self.params = [p for group in inner.param_groups for p in group["params"]]
        self.slow = [p.detach().clone() for p in self.params]
        self.step_count = 0

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.inner.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        self.inner.step()
        self.step_count += 1
        if self.step_count % self.k == 0:
            for fast, slow in zip(self.params, self.slow):
                slow.add_(fast - slow, alpha=self.alpha)
                fast.copy_(slow)

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "slow": [s.clone() for s in self.slow], "step_count": self.step_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        for slow, saved in zip(self.slow, state["slow"], strict=True):
            slow.copy_(saved)
        self.step_count = int(state["step_count"])


class Ranger(Lookahead):
    """StyleCLIP's Ranger: gradient centralisation, then torch's RAdam (same rectification, threshold 5 and eps
    placement as the reference), then Lookahead."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.95, 0.999), eps: float = 1e-5,
                 alpha: float = 0.5, k: int = 6, gradient_centralization: bool = True):
        super().__init__(torch.optim.RAdam(params, lr=lr, betas=betas, eps=eps), alpha=alpha, k=k)
        self.gradient_centralization = gradient_centralization

    @torch.no_grad()
    def step(self) -> None:
        if self.gradient_centralization:
            centralize_gradients(self.params)
        super().step()


def make_optimizer(params, cfg: MapperConfig) -> Lookahead | torch.optim.Optimizer:
    """Ranger with cfg's settings, or Adam with torch's defaults but cfg.lr (as the original's --optim_name adam)."""
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    return Ranger(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, alpha=cfg.lookahead_alpha, k=cfg.lookahead_k,
                  gradient_centralization=cfg.gradient_centralization)
