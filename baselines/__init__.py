"""Methods behind one interface, adapt(G_src, shift, seed, run_dir, **kw) -> G_tgt: NADA, its ablations, baselines."""
from __future__ import annotations

from typing import Callable

from replication.config import ConfigError, ShiftConfig

from baselines.ipl import adapt as ipl_adapt
from baselines.ipl import check_shift as ipl_check
from baselines.nada_mapper import METHOD_NAME as MAPPER_NAME
from baselines.nada_mapper import adapt as nada_mapper_adapt
from baselines.nada_variants import nada_freeze, nada_global, nada_nofreeze
from baselines.oracle import CLIP_ORACLE_NAME, clip_oracle_adapt, oracle_config
from baselines.oracle import METHOD_NAME as ORACLE_NAME
from baselines.oracle import adapt as oracle_adapt
from baselines.source import adapt as source_adapt
from baselines.styleclip_opt import adapt as styleclip_opt_adapt
from baselines.styleclip_opt import check_shift as styleclip_opt_check
from baselines.stylespace import adapt as stylespace_adapt
from replication.nada import adapt as nada_adapt

METHODS: dict[str, Callable] = {
    "nada": nada_adapt,
    "nada-global": nada_global,
    "nada-nofreeze": nada_nofreeze,
    "nada-freeze": nada_freeze,
    MAPPER_NAME: nada_mapper_adapt,  # NADA, then a latent mapper trained on its generator (adapt, then mine)
    "source": source_adapt,  # the unadapted generator: the floor every method is compared with
    ORACLE_NAME: oracle_adapt,  # mini world only: trained on the true targets, the ceiling of the same budget
    CLIP_ORACLE_NAME: clip_oracle_adapt,  # mini world only: each latent's true CLIP direction, CLIP guidance's ceiling
    "styleclip-opt": styleclip_opt_adapt,  # StyleCLIP latent optimisation per sample; generator unchanged (lazy)
    "stylespace": stylespace_adapt,  # StyleDomain's StyleSpace: NADA's loss, only per-conv style offsets train
    "ipl": ipl_adapt,  # IPL (CVPR 2023): per-image prompt directions from a learned latent mapper, then NADA's loop
}

# Methods that cannot run on every shift: each check raises ConfigError naming why, before any weight is loaded
_SHIFT_CHECKS: dict[str, Callable[[ShiftConfig], object]] = {
    ORACLE_NAME: oracle_config, CLIP_ORACLE_NAME: lambda shift: oracle_config(shift, CLIP_ORACLE_NAME),
    "styleclip-opt": styleclip_opt_check, "ipl": ipl_check}  # text-guided methods: an image-guided shift fails


def check_method(method: str, shift: ShiftConfig) -> None:
    """Raise ConfigError (one line) when `method` is unknown or cannot run on `shift`; CLIs call it before training."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; known methods: {', '.join(sorted(METHODS))}")
    if method in _SHIFT_CHECKS:
        _SHIFT_CHECKS[method](shift)
