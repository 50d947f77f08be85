"""Ablations of NADA as methods: global instead of directional loss, layer freezing switched on or off."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from replication.config import NadaConfig, ShiftConfig
from replication.nada import adapt as nada_adapt
from replication.networks import Generator


def _variant(name: str, change: Callable[[NadaConfig, Generator], dict]) -> Callable:
    def adapt(G_src: Generator, shift: ShiftConfig, seed: int, run_dir: Path, **kw) -> Generator:
        nada = dataclasses.replace(shift.nada, **change(shift.nada, G_src))
        return nada_adapt(G_src, dataclasses.replace(shift, nada=nada), seed, run_dir, method=name, **kw)

    adapt.__doc__ = f"NADA ablation {name!r}."
    return adapt


# The naive objective the paper argues against (section 4.1): maximise CLIP similarity to the target text.
nada_global = _variant("nada-global", lambda n, G: {"lambda_direction": 0.0, "lambda_global": 1.0})
# Layer freezing off: train the default set (const, conv1, all convs) every step.
nada_nofreeze = _variant("nada-nofreeze", lambda n, G: {"auto_layer_iters": 0})
# Layer freezing on with the notebook's "improve shape" k: two thirds of the W+ entries, one W+ step per iteration.
nada_freeze = _variant("nada-freeze", lambda n, G: {"auto_layer_iters": max(n.auto_layer_iters, 1),
                                                    "auto_layer_k": max(1, 2 * G.n_latent // 3)})
