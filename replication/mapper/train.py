"""Training a latent mapper on a frozen generator, and its CLI (`python -m replication.mapper`)."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from replication.checkpoint import CheckpointError, load_generator
from replication.clip_models import ClipEncoder, ClipModelError, PromptError, load_weighted_encoders
from replication.mapper.checkpoint import save_mapper
from replication.mapper.config import MapperConfig, MapperDiverged, MapperError
from replication.mapper.loss import IdentityFn, mapper_loss, prepare_for_clip
from replication.mapper.model import LatentMapper
from replication.mapper.optim import make_optimizer
from replication.networks import Generator
from replication.runio import write_json
from replication.weights import WeightError


@torch.no_grad()
def sample_wplus(G: Generator, n: int, *, truncation: float, mean_samples: int, generator: torch.Generator,
                 chunk: int = 1024) -> torch.Tensor:
    """n W+ latents [n, n_latent, style_dim] from z ~ N(0, I), truncated toward the mean w by psi = truncation.

    All random draws come from `generator` (CPU), so the pool is the same on every device for one seed. Unlike the
    original (StyleCLIP's batch slice used the batch index, so its 5000 latents overlapped heavily), every latent here
    comes from its own z.
    """
    device = next(G.parameters()).device

    def mapped(count: int) -> torch.Tensor:
        z = torch.randn(count, G.style_dim, generator=generator)
        return torch.cat([G.mapping(part.to(device)) for part in z.split(chunk)])

    w_mean = mapped(mean_samples).mean(dim=0, keepdim=True)
    w = w_mean + truncation * (mapped(n) - w_mean)
    return w[:, None, :].expand(-1, G.n_latent, -1).contiguous()


def _check_encoders(encoders_with_weights: Sequence[tuple[ClipEncoder, float]], cfg: MapperConfig) -> None:
    if len(encoders_with_weights) != len(cfg.clip_models):
        raise MapperError(f"got {len(encoders_with_weights)} CLIP encoders but the config names {len(cfg.clip_models)} "
                          f"({cfg.clip_models}); pass one (encoder, weight) pair per configured model")
    weights = tuple(float(w) for _, w in encoders_with_weights)
    if any(abs(a - b) > 1e-12 for a, b in zip(weights, cfg.clip_model_weights)):
        raise MapperError(f"encoder weights {weights} differ from cfg.clip_model_weights {cfg.clip_model_weights}; "
                          "build the pairs from the config (see load_encoders)")


def load_encoders(cfg: MapperConfig, device: str | torch.device = "cpu") -> list[tuple[ClipEncoder, float]]:
    """(encoder, weight) pairs for cfg.clip_models (no downloads).

    Zero-weight models are loaded too: train_mapper wants one pair per configured model, and the first model drives
    the norm loss whatever its weight.
    """
    return load_weighted_encoders(cfg.clip_models, cfg.clip_model_weights, device)


def train_mapper(G: Generator, encoders_with_weights: Sequence[tuple[ClipEncoder, float]], cfg: MapperConfig, *,
                 seed: int, run_dir: str | Path | None = None, identity_fn: IdentityFn | None = None,
                 progress: bool = True) -> tuple[LatentMapper, dict[str, Any]]:
    """Train a latent mapper on G (e.g. a NADA-adapted generator) toward cfg.description.

    G stays frozen (its requires_grad flags and train/eval mode are restored afterwards). The seed fixes the latent
    pool, the mapper's initial weights and the batch order, so a CPU run is repeatable. identity_fn(x_edit, x_orig)
    returns a per-sample similarity [B] (e.g. ArcFace cosine) and enables the identity loss. With run_dir, the config,
    per-step stats and the final mapper (mapper.pt) are written there atomically.
    Returns (mapper, stats): stats holds per-step lists loss, loss_clip, loss_l2, loss_norm, loss_id and seconds.
    """
    _check_encoders(encoders_with_weights, cfg)
    if cfg.noise_mode == "const" and not hasattr(G, "noises"):
        raise MapperError("noise_mode 'const' needs a generator with registered noise buffers; use noise_mode 'none'")
    device = next(G.parameters()).device
    rng = torch.Generator().manual_seed(int(seed))
    requires_grad = [p.requires_grad for p in G.parameters()]
    was_training = G.training
    G.requires_grad_(False)  # gradients must reach the mapper through G without being accumulated into G's weights
    G.eval()
    try:
        train_latents = sample_wplus(G, cfg.n_train_latents, truncation=cfg.truncation,
                                     mean_samples=cfg.truncation_mean_samples, generator=rng)
        mapper = LatentMapper.from_config(G.n_latent, G.style_dim, cfg, generator=rng).to(device)
        mapper.train()
        optimizer = make_optimizer(mapper.parameters(), cfg)
        first_encoder = encoders_with_weights[0][0]
        batches_per_epoch = cfg.n_train_latents // cfg.batch  # drop_last, as the original DataLoader
        order = torch.empty(0, dtype=torch.long)
        records: list[list[float]] = []
        start = time.perf_counter()
        bar = tqdm(range(cfg.steps), desc="mapper", disable=not progress, dynamic_ncols=True)
        for step in bar:
            position = step % batches_per_epoch
            if position == 0:
                order = torch.randperm(cfg.n_train_latents, generator=rng)
            w = train_latents[order[position * cfg.batch:(position + 1) * cfg.batch].to(device)]
            with torch.no_grad():
                x = G.synthesis(w, noise_mode=cfg.noise_mode)
                embeddings_x = (first_encoder.encode_image(prepare_for_clip(first_encoder, x, cfg.mode))
                                if cfg.lambda_norm > 0 else None)
            w_hat = w + cfg.step_scale * mapper(w)
            x_hat = G.synthesis(w_hat, noise_mode=cfg.noise_mode)
            loss, terms = mapper_loss(w, w_hat, x, x_hat, encoders_with_weights, cfg, identity_fn=identity_fn,
                                      embeddings_x=embeddings_x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            record = torch.stack([loss.detach(), *terms.values()]).tolist()  # one device sync per step
            if not math.isfinite(record[0]):
                raise MapperDiverged(f"mapper loss became {record[0]} at step {step} (terms "
                                     f"{dict(zip(terms, record[1:]))}); lower lr or check the generator and encoders")
            records.append(record)
            if progress:
                bar.set_postfix(loss=f"{record[0]:.4f}", clip=f"{record[1]:.4f}", l2=f"{record[2]:.4f}")
        bar.close()
        seconds = time.perf_counter() - start
    finally:
        for p, flag in zip(G.parameters(), requires_grad):
            p.requires_grad_(flag)
        G.train(was_training)
    mapper.eval()
    names = ("loss", "loss_clip", "loss_l2", "loss_norm", "loss_id")
    stats: dict[str, Any] = {name: [r[i] for r in records] for i, name in enumerate(names)}
    stats["seconds"] = seconds
    stats["seed"] = int(seed)
    if run_dir is not None:
        run_dir = Path(run_dir)
        write_json(run_dir / "mapper_config.json", cfg.to_dict())
        write_json(run_dir / "mapper_stats.json", stats)
        save_mapper(run_dir / "mapper.pt", mapper, cfg)
    return mapper, stats


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: train a latent mapper on an (adapted) generator checkpoint toward a description."""
    p = argparse.ArgumentParser(prog="python -m replication.mapper",
                                description="Train a latent mapper (the paper's 'mining' step) on a generator.",
                                epilog="Example: python -m replication.mapper --generator run/checkpoints/G_tgt.pt "
                                       "--description 'a photo of a cat' --run-dir runs/mapper --steps 2000")
    p.add_argument("--generator", required=True, help="checkpoint (ours or rosinality .pt), e.g. a NADA G_tgt.pt")
    p.add_argument("--description", required=True, help="driving text, used raw")
    p.add_argument("--clip-models", nargs="+", default=list(MapperConfig.clip_models))
    p.add_argument("--clip-model-weights", nargs="+", type=float, default=None)
    p.add_argument("--steps", type=int, default=MapperConfig.steps)
    p.add_argument("--mode", default="faithful", choices=("faithful", "fixed"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    try:
        weights = tuple(args.clip_model_weights or [1.0] * len(args.clip_models))
        cfg = MapperConfig(description=args.description, clip_models=tuple(args.clip_models),
                           clip_model_weights=weights, steps=args.steps, mode=args.mode)
        G, _ = load_generator(args.generator, device=args.device)
        _, stats = train_mapper(G, load_encoders(cfg, args.device), cfg, seed=args.seed, run_dir=args.run_dir)
    except (MapperError, CheckpointError, ClipModelError, PromptError, WeightError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"run_dir": str(args.run_dir), "final_loss": stats["loss"][-1]}))
    return 0
