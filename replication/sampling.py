"""Draw a generator's images for given latents in chunks, without gradients: the one sampler of scores and figures."""
from __future__ import annotations

import torch


@torch.no_grad()
def sample_images(G, z: torch.Tensor, *, noise_mode: str = "const", batch: int = 100) -> torch.Tensor:
    """G(z) at no truncation, clamped to [-1, 1], float32 on the CPU, [N, 3, H, W].

    noise_mode "const" (the per-layer fixed noise, what scores use) or "none" (no noise: the mini generator's recipe
    measures its deterministic map); "random" draws fresh noise per call.
    """
    out = []
    for start in range(0, z.shape[0], batch):
        img, _ = G([z[start:start + batch]], noise_mode=noise_mode)
        out.append(img.float().clamp(-1, 1).cpu())
    return torch.cat(out) if out else torch.empty(0, 3, G.size, G.size)
