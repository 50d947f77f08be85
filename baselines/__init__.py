"""Methods behind one interface, adapt(G_src, shift, seed, run_dir, **kw) -> G_tgt: NADA and the baselines."""
from __future__ import annotations

from typing import Callable

from baselines.source import adapt as source_adapt
from replication.nada import adapt as nada_adapt

METHODS: dict[str, Callable] = {
    "nada": nada_adapt,
    "source": source_adapt,  # the unadapted generator: the floor every method is compared with
}
