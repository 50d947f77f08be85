"""Reader of rosinality .pt files (and of our own checkpoint format, which shares its layout)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from replication.checkpoint import CheckpointError, checkpoint_from_object
from replication.conversion.common import ConversionError, ConvertedNetworks


def read_rosinality(obj: Any, src_path: Path, *, include_d: bool,
                    expected_resolution: int | None) -> ConvertedNetworks:
    """Networks of a loaded rosinality-layout object; its g_ema stays g_ema whatever the caller's ``which``."""
    try:
        ckpt = checkpoint_from_object(obj, src_path, expected_resolution=expected_resolution)
    except CheckpointError as exc:
        raise ConversionError(str(exc)) from None
    d_cfg = d_state = None
    if include_d and ckpt.d is not None and ckpt.discriminator_config is not None:
        d_cfg, d_state = ckpt.discriminator_config, ckpt.d
    return ConvertedNetworks(ckpt.generator_config, ckpt.g_ema, ckpt.latent_avg, g=ckpt.g,
                             discriminator_config=d_cfg, d=d_state, extra=dict(ckpt.extra))
