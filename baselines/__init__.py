"""Methods behind one interface, adapt(G_src, shift, seed, run_dir, **kw) -> G_tgt: NADA, its ablations, baselines."""
from __future__ import annotations

from typing import Callable

from replication.config import ConfigError, ShiftConfig

from baselines.nada_variants import nada_freeze, nada_global, nada_nofreeze
from baselines.oracle import CLIP_ORACLE_NAME, clip_oracle_adapt, oracle_config
from baselines.oracle import METHOD_NAME as ORACLE_NAME
from baselines.oracle import adapt as oracle_adapt
from baselines.source import adapt as source_adapt
from replication.nada import adapt as nada_adapt

METHODS: dict[str, Callable] = {
    "nada": nada_adapt,
    "nada-global": nada_global,
    "nada-nofreeze": nada_nofreeze,
    "nada-freeze": nada_freeze,
    "source": source_adapt,  # the unadapted generator: the floor every method is compared with
    ORACLE_NAME: oracle_adapt,  # mini world only: trained on the true targets, the ceiling of the same budget
    CLIP_ORACLE_NAME: clip_oracle_adapt,  # mini world only: each latent's true CLIP direction, CLIP guidance's ceiling
}

# Methods that cannot run on every shift: each check raises ConfigError naming why, before any weight is loaded
_SHIFT_CHECKS: dict[str, Callable[[ShiftConfig], object]] = {
    ORACLE_NAME: oracle_config, CLIP_ORACLE_NAME: lambda shift: oracle_config(shift, CLIP_ORACLE_NAME)}


def check_method(method: str, shift: ShiftConfig) -> None:
    """Raise ConfigError (one line) when `method` is unknown or cannot run on `shift`; CLIs call it before training."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; known methods: {', '.join(sorted(METHODS))}")
    if method in _SHIFT_CHECKS:
        _SHIFT_CHECKS[method](shift)
