"""StyleCLIP latent optimisation (Patashnik et al., ICCV 2021, section 4) as a baseline: the generator is unchanged;
each latent's W+ code is optimised toward the target text, with CLIP's loss and an L2 pull to its start.

Facts from the StyleCLIP code (orpatashnik/StyleCLIP, optimization/run_optimization.py and criteria/clip_loss.py):
- loss = (1 - logits_per_image / 100) + l2_lambda * ||w - w_start||^2 (sum over W+), edit mode, id_lambda 0 by
  default; Adam on the W+ code (torch defaults, betas (0.9, 0.999)), lr 0.1, 300 steps, l2_lambda 0.008;
- the learning rate at step i is lr * ramp(t), t = i / steps: a cosine ramp-down over the last 25% of the steps
  times a linear ramp-up over the first 5% (get_lr, rampdown 0.25, --lr_rampup 0.05), so step 0 moves nothing;
- rendering with the generator's fixed noise (randomize_noise=False); an edit starts from a given latent
  (--latent_path) or from a random one truncated at 0.7.
Here the start is each evaluation latent's own W+ (the source image the metrics pair it with, no truncation), like
--latent_path; the sample grid starts from the grid latents at the shift's sample truncation, as NADA's grids.

As the brief of the method interface asks, prompts and CLIPs are NADA's: the loss is NADA's global CLIP loss
(replication.losses.global_loss, prompt "a {target}", each guidance CLIP of the shift weighted as in NADA), and
images reach CLIP through NADA's preprocessing (StyleCLIP upsamples x7 and average-pools to 224 instead).

The optimisation is lazy: adapt() writes the run folder (config, environment, per-step stats of the grid latents,
the grid, DONE) and returns a LatentOptimised module with the generator's sampling interface; each call optimises
the latents it is given, `chunk` at a time (their losses are summed and Adam is per element, so every latent follows
its own trajectory whatever else is in its chunk). Optimised W+ codes are kept in run_dir/checkpoints/ (git-ignored),
keyed by start latent, so scoring twice or resuming an interrupted scoring does not optimise again.

Cost: steps x (one generator forward and backward + one CLIP image pass per guidance CLIP) per scored latent.
Measured on mini--zombie at one CPU thread, 100 steps: 28 s for the 8 grid latents at adapt(), then 0.024 s per
latent and step in chunks of 8, so the 1,000 latents the mini world scores take about 40 minutes (100 of them: 4.5
minutes for the whole run, scoring included). The paper world scores 1,000 latents plus 5,000 streamed for FID, at
300 steps and 1024 px: 1.8 million generator forward-backward passes, hours on one GPU. Hence the mini default of
100 steps (300 would triple the 40 minutes).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from replication.config import ConfigError, ShiftConfig, to_dict
from replication.losses import ClipGuidance, GuidanceConfig
from replication.networks import Generator
from replication.runio import (StatsLog, atomic_torch_save, environment_record, is_done, mark_done, remove_temp_files,
                               run_lock, write_json)
from replication.training_loop import RunBusyError, _check_config, latents_from_seeds, save_grid

METHOD_NAME = "styleclip-opt"
# Per-latent steps when the config leaves them open: StyleCLIP's --step in the paper world; fewer in the mini world,
# whose 1,000 scored latents at 300 steps would take about 3 h on one CPU thread (module docstring).
STEPS = {"paper": 300, "mini": 100}
CACHE_FOLDER = "styleclip-opt"  # under run_dir/checkpoints/, git-ignored with the other checkpoints


@dataclass(frozen=True)
class StyleClipOptConfig:
    """StyleCLIP's optimisation settings (run_optimization.py defaults) and how the work is chunked."""

    steps: int | None = None  # Adam steps per latent (--step 300); None: STEPS[world]
    lr: float = 0.1  # peak Adam lr (--lr)
    l2_lambda: float = 0.008  # weight of ||w - w_start||^2 (--l2_lambda)
    lr_rampup: float = 0.05  # fraction of the steps of the linear lr warm-up (--lr_rampup)
    lr_rampdown: float = 0.25  # fraction of the steps of the cosine lr decay (get_lr's rampdown)
    chunk: int = 8  # latents optimised at once (independently); memory, not results, depends on it
    cache: bool = True  # keep optimised W+ codes in run_dir/checkpoints/styleclip-opt/

    def __post_init__(self) -> None:
        checks = [
            (self.steps is None or (isinstance(self.steps, int) and self.steps >= 1), f"steps must be >= 1, got "
                                                                                        f"{self.steps}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be > 0, got {self.lr}"),
            (self.l2_lambda >= 0 and math.isfinite(self.l2_lambda), f"l2_lambda must be >= 0, got {self.l2_lambda}"),
            (0 < self.lr_rampup <= 1 and 0 < self.lr_rampdown <= 1,
             f"lr_rampup and lr_rampdown are fractions of the steps in (0, 1], got {self.lr_rampup}, "
             f"{self.lr_rampdown}"),
            (isinstance(self.chunk, int) and self.chunk >= 1, f"chunk must be >= 1, got {self.chunk}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"{METHOD_NAME}: {message}")

    def resolved(self, world: str) -> StyleClipOptConfig:
        return self if self.steps is not None else dataclasses.replace(self, steps=STEPS[world])


def lr_at(step: int, cfg: StyleClipOptConfig) -> float:
    """StyleCLIP's get_lr: lr * cosine ramp-down over the last lr_rampdown of the steps * linear ramp-up over the
    first lr_rampup."""
    t = step / cfg.steps
    down = min(1.0, (1.0 - t) / cfg.lr_rampdown)
    return cfg.lr * (0.5 - 0.5 * math.cos(down * math.pi)) * min(1.0, t / cfg.lr_rampup)


class LatentOptimised(nn.Module):
    """The source generator behind the sampling interface of replication.networks.Generator, every image of it the
    StyleCLIP-optimised image of its latent. forward/synthesis optimise (with grad, whatever the caller's grad mode)
    on the device the run was built on; images come back on the device of the latents given (or of `anchor`)."""

    def __init__(self, G_src: Generator, guidance: ClipGuidance, cfg: StyleClipOptConfig, cache_dir: Path | None,
                 progress: bool = False):
        super().__init__()
        work = copy.deepcopy(G_src).eval().requires_grad_(False)
        self._work = [work]  # in a list, not a submodule: .cpu() (the scorers' call) must not move the optimisation
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)  # where callers' tensors live
        self.guidance, self.cfg, self.cache_dir, self.progress = guidance, cfg, cache_dir, progress
        self.size, self.style_dim, self.n_latent = work.size, work.style_dim, work.n_latent
        self.on_step = None  # optional (step, stats) callback of each optimisation step (the run's stats.jsonl)

    @property
    def G(self) -> Generator:
        return self._work[0]

    @property
    def work_device(self) -> torch.device:
        return self.G.input.input.device

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        return self.G.mapping(z.to(self.work_device)).to(z.device)

    def make_wplus(self, styles, **kw) -> torch.Tensor:
        """The start W+ codes, as the source generator makes them (its mapping, truncation and mixing)."""
        styles = [styles] if isinstance(styles, torch.Tensor) else list(styles)
        device = styles[0].device
        for key in ("truncation_latent",):
            if kw.get(key) is not None:
                kw[key] = kw[key].to(self.work_device)
        return self.G.make_wplus([s.to(self.work_device) for s in styles], **kw).to(device)

    def synthesis(self, wplus: torch.Tensor, *, noise_mode: str = "const", noise=None, rng=None) -> torch.Tensor:
        """Images [B, 3, H, W] of the optimised codes of the start codes `wplus`. The optimisation renders with the
        fixed noise (StyleCLIP's randomize_noise=False) unless asked for none; the final image uses noise_mode."""
        out_device = wplus.device
        start = wplus.detach().to(self.work_device, torch.float32)
        opt_noise = noise_mode if noise_mode in ("const", "none") else "const"
        optimised = self.optimise(start, opt_noise)
        with torch.no_grad():
            image = self.G.synthesis(optimised, noise_mode=noise_mode, noise=noise, rng=rng)
        return image.to(out_device)

    def forward(self, styles, *, input_is_latent: bool = False, noise_mode: str = "random", noise=None,
                truncation: float = 1.0, truncation_latent: torch.Tensor | None = None, inject_index: int | None = None,
                return_latents: bool = False, rng=None, randomize_noise: bool | None = None,
                truncation_cutoff: int | None = None):
        if randomize_noise is not None:
            noise_mode = "random" if randomize_noise else "const"
        if noise is not None:
            noise_mode = "given"
        wplus = self.make_wplus(styles, input_is_latent=input_is_latent, truncation=truncation,
                                truncation_latent=truncation_latent, inject_index=inject_index, rng=rng,
                                truncation_cutoff=truncation_cutoff)
        image = self.synthesis(wplus, noise_mode=noise_mode, noise=noise, rng=rng)
        return image, (self.optimise(wplus.detach().to(self.work_device, torch.float32), "const").to(wplus.device)
                       if return_latents else None)

    # -- the optimisation ------------------------------------------------------------------------------------------

    def _cache_path(self, start: torch.Tensor, noise_mode: str) -> Path | None:
        if self.cache_dir is None or not self.cfg.cache:
            return None
        digest = hashlib.sha256(json.dumps([dataclasses.asdict(self.cfg), noise_mode]).encode())
        digest.update(start.detach().float().cpu().contiguous().numpy().tobytes())
        return Path(self.cache_dir) / f"{digest.hexdigest()[:32]}.pt"

    def optimise(self, start: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        """Optimised W+ codes [B, n_latent, style_dim] of the start codes, `chunk` at a time (cached per chunk)."""
        chunks = list(torch.split(start, self.cfg.chunk))
        bar = tqdm(chunks, desc=METHOD_NAME, unit="chunk", leave=False, disable=not self.progress or len(chunks) < 2)
        return torch.cat([self._optimise_chunk(c, noise_mode) for c in bar]) if chunks else start

    def _optimise_chunk(self, start: torch.Tensor, noise_mode: str) -> torch.Tensor:
        path = self._cache_path(start, noise_mode)
        if path is not None and path.is_file():
            cached = torch.load(path, map_location=self.work_device, weights_only=True)
            if cached.shape == start.shape:
                return cached
        w = start.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([w], lr=self.cfg.lr)
        with torch.enable_grad():
            for step in range(self.cfg.steps):
                lr = lr_at(step, self.cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                image = self.G.synthesis(w, noise_mode=noise_mode)
                # NADA's global loss is a mean over the chunk: times its size, each latent's term enters alone
                clip_loss = self.guidance(image, image)[0] * w.shape[0]
                l2 = (w - start).pow(2).sum()
                loss = clip_loss + self.cfg.l2_lambda * l2
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{METHOD_NAME}: the loss became {float(loss)} at step {step}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if self.on_step is not None:
                    n = w.shape[0]
                    self.on_step(step, {"loss": float(loss.detach()) / n, "clip_global": float(clip_loss.detach()) / n,
                                        "l2": float(l2.detach()) / n, "lr": lr})
        w = w.detach()
        if path is not None:
            atomic_torch_save(w.cpu(), path)
        return w


def build_guidance(shift: ShiftConfig, device: torch.device, encoders=None) -> ClipGuidance:
    """NADA's global CLIP loss toward "a {target}" over the shift's weighted guidance CLIPs."""
    from replication.nada import load_encoders

    if encoders is None:
        encoders = load_encoders(shift.nada, device)
    gcfg = GuidanceConfig(lambda_direction=0.0, lambda_global=1.0, mode=shift.nada.mode)
    return ClipGuidance(encoders, shift.task.source_text or None, shift.task.target_text or None, gcfg)


def check_shift(shift: ShiftConfig) -> None:
    """A ConfigError unless the shift is text-guided: StyleCLIP follows a target text, not target images."""
    if shift.task.target_images is not None or not shift.task.target_text.strip():
        raise ConfigError(f"{METHOD_NAME} follows a target text; {shift.task.name} is guided by target images "
                          f"(use a text-guided shift)")


def adapt(G_src: Generator, shift: ShiftConfig, seed: int, run_dir: Path, *, encoders=None, weights_sha256=None,
          progress: bool = True, latent_avg: torch.Tensor | None = None, config: StyleClipOptConfig | None = None,
          **_) -> LatentOptimised:
    """Write the run folder (its grid optimised now) and return the lazily optimising generator. Deterministic: the
    seed enters nothing (no random draw; the latents are the caller's), so every seed gives the same images."""
    check_shift(shift)
    run_dir = Path(run_dir)
    cfg = (config or StyleClipOptConfig()).resolved(shift.task.world)
    device = next(G_src.parameters()).device
    resolved = {"method": METHOD_NAME, "mode": shift.nada.mode, "seed": seed, **to_dict(shift),
                METHOD_NAME: dataclasses.asdict(cfg)}
    _check_config(run_dir, resolved)
    G_tgt = LatentOptimised(G_src, build_guidance(shift, device, encoders), cfg,
                            run_dir / "checkpoints" / CACHE_FOLDER, progress=progress)
    if is_done(run_dir):
        return G_tgt
    with run_lock(run_dir) as held:
        if not held:
            raise RunBusyError(f"another process is writing {run_dir}; wait for it to finish or choose another "
                               f"--outdir")
        _check_config(run_dir, resolved)
        if is_done(run_dir):
            return G_tgt
        remove_temp_files(run_dir)
        write_json(run_dir / "config.json", resolved)
        write_json(run_dir / "env.json", environment_record(device, weights_sha256 or {}))
        stats = StatsLog(run_dir / "stats.jsonl")
        stats.truncate_to(0)  # the grid is optimised again from scratch (or read from the cache)
        G_tgt.on_step = lambda step, row: stats.append({"step": step, **row})
        t0 = time.perf_counter()
        if latent_avg is None:
            latent_avg = G_src.mean_latent(4096, generator=torch.Generator().manual_seed(12345))
        z_grid = latents_from_seeds(shift.task.grid_seeds, G_src.style_dim, device)
        save_grid(run_dir / "samples" / "final.png", G_src, G_tgt, z_grid, shift.nada.sample_truncation,
                  latent_avg.reshape(1, -1).to(device))
        G_tgt.on_step = None
        rows = stats.rows()
        mark_done(run_dir, {"steps": cfg.steps, "final_loss": rows[-1]["loss"] if rows else math.nan,
                            "seconds": time.perf_counter() - t0, "lazy": True})
    return G_tgt
