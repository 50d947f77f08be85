"""The identity baseline: the source generator itself, scored on the same latents as every method."""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from replication.config import ShiftConfig, to_dict
from replication.networks import Generator
from replication.runio import environment_record, is_done, mark_done, run_lock, write_json
from replication.training_loop import RunBusyError


def adapt(G_src: Generator, shift: ShiftConfig, seed: int, run_dir: Path, *, weights_sha256=None, progress=True,
          latent_avg: torch.Tensor | None = None, **_) -> Generator:
    run_dir = Path(run_dir)
    G_tgt = copy.deepcopy(G_src).eval().requires_grad_(False)
    if not is_done(run_dir):
        with run_lock(run_dir) as held:  # one process at a time writes a run folder, as for trained methods
            if not held:
                raise RunBusyError(f"another process is writing {run_dir}; wait for it to finish or choose another "
                                   f"--outdir")
            if not is_done(run_dir):
                write_json(run_dir / "config.json", {"method": "source", "seed": seed, **to_dict(shift)})
                write_json(run_dir / "env.json",
                           environment_record(next(G_src.parameters()).device, weights_sha256 or {}))
                mark_done(run_dir, {"steps": 0})
    return G_tgt
