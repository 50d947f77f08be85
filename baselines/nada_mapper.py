"""NADA then a latent mapper ("adapt, then mine", the paper's section 6): a mapper trained on the adapted generator
steers each latent further toward the target text where NADA's samples only partly reach it."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from replication.clip_models import load_weighted_encoders
from replication.config import ShiftConfig, to_dict
from replication.mapper.checkpoint import load_mapper
from replication.mapper.config import MapperConfig
from replication.mapper.mapped import MappedGenerator
from replication.mapper.train import train_mapper
from replication.nada import adapt as nada_adapt
from replication.networks import Generator
from replication.runio import environment_record, is_done, mark_done, run_lock, write_json
from replication.training_loop import RunBusyError, latents_from_seeds, save_grid

METHOD_NAME = "nada-mapper"
WAIT_SECONDS = 4 * 3600  # how long to wait for another worker training the same NADA run


def mapper_config(shift: ShiftConfig) -> MapperConfig:
    """The mapper's settings for a shift: NADA's mapper defaults (spec section 7.1) on the paper world; on the mini world
    the same losses at the mini world's budget (a NADA run's 300 steps) with the shift's guidance CLIPs, Adam and the
    latents of the scores (no truncation), since the mini generator is tiny and trains in seconds."""
    clips = tuple(name for name, w in zip(shift.nada.clip_models, shift.nada.clip_model_weights) if w > 0)
    weights = tuple(w for w in shift.nada.clip_model_weights if w > 0)
    if shift.task.world == "mini":
        return MapperConfig(description=shift.task.target_text, clip_models=clips, clip_model_weights=weights,
                            steps=300, batch=4, n_train_latents=1024, truncation=1.0, truncation_mean_samples=1024,
                            optimizer="adam", lr=0.01, mode="fixed")
    return MapperConfig(description=shift.task.target_text, clip_models=clips, clip_model_weights=weights,
                        mode="fixed")


def _nada_generator(G_src: Generator, shift: ShiftConfig, seed: int, nada_dir: Path, **kw) -> Generator:
    """The NADA run of the same shift and seed (trained here if it is not finished yet), shared with `nada` itself; a
    worker training it at the same moment is waited for, not duplicated."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            return nada_adapt(G_src, shift, seed, nada_dir, **kw)
        except RunBusyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2.0)


def adapt(G_src: Generator, shift: ShiftConfig, seed: int, run_dir: Path, *, weights_sha256=None, progress=True,
          latent_avg: torch.Tensor | None = None, **_) -> MappedGenerator:
    run_dir = Path(run_dir)
    nada_dir = run_dir.parent.parent / "nada" / run_dir.name  # <shift>/nada/seed<k>: the plain NADA run
    G_nada = _nada_generator(G_src, shift, seed, nada_dir, weights_sha256=weights_sha256, progress=progress,
                             latent_avg=latent_avg).eval()
    cfg = mapper_config(shift)
    device = next(G_src.parameters()).device
    if not is_done(run_dir):
        with run_lock(run_dir) as held:
            if not held:
                raise RunBusyError(f"another process is writing {run_dir}; wait for it to finish or choose another "
                                   f"--outdir")
            if not is_done(run_dir):
                write_json(run_dir / "config.json", {"method": METHOD_NAME, "seed": seed, "nada_run": str(nada_dir),
                                                     "mapper": cfg.to_dict(), **to_dict(shift)})
                write_json(run_dir / "env.json", environment_record(device, weights_sha256 or {}))
                encoders = load_weighted_encoders(cfg.clip_models, cfg.clip_model_weights, device)
                mapper, stats = train_mapper(G_nada, encoders, cfg, seed=seed, run_dir=run_dir, progress=progress)
                G_mapped = MappedGenerator(G_nada, mapper, cfg.step_scale).eval()
                z_grid = latents_from_seeds(shift.task.grid_seeds, G_src.style_dim, device)
                # the same mean latent as NADA's own grid, so the two final.png rows compare like for like
                w_avg = latent_avg if latent_avg is not None else G_src.mean_latent(
                    4096, generator=torch.Generator().manual_seed(12345))
                save_grid(run_dir / "samples" / "final.png", G_src, G_mapped, z_grid, shift.nada.sample_truncation,
                          w_avg)
                mark_done(run_dir, {"steps": cfg.steps, "seconds": stats["seconds"]})
                return G_mapped
    mapper, _ = load_mapper(run_dir / "mapper.pt", map_location=device)
    return MappedGenerator(G_nada, mapper.eval(), cfg.step_scale).eval()
