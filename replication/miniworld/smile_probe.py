"""Can a CLIP image tower learn the mini world's smile? Trains one on smile triplets alone and scores held-out faces.

    python -m replication.miniworld.smile_probe --tower vit      # CLIP A's patch-8 ViT tower, from scratch
    python -m replication.miniworld.smile_probe --tower resnet   # clip's ModifiedResNet tower, same text tower
    python -m replication.miniworld.smile_probe --init replication/miniworld/weights/clip_a.pt   # the shipped CLIP A

Each step draws fresh triplets (train_clip.smile_triplets: one face in a random domain drawn smiling, plain and
frowning, captions that differ only in that word) and minimises train_clip.smile_loss; nothing else is trained, so
the held-out triplet accuracy (chance 1/3) says whether the tower can see the mouth at all. Writes
results/mini_world/smile_probe_<tower>.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from replication.clip_models import load_clip
from replication.miniworld.data import HELDOUT_SEED_BASE
from replication.miniworld.train_clip import (RESULTS_DIR, ClipArchitecture, build_clip, clip_model, smile_logits,
                                              smile_loss, smile_triplets)
from replication.runio import command_line, repo_relative, write_json

TOWERS = ("vit", "resnet")
# the sizes of the first shipped CLIP A (patch-8 ViT image tower, 4 layers of width 128; text and embedding width 64),
# pinned so the probe's towers stay what results/mini_world/smile_probe_*.json measured whatever CLIP A ships next
PROBE_ARCH = ClipArchitecture(embed_dim=64, vision_layers=4, vision_width=128, vision_patch_size=8,
                              transformer_width=64, transformer_layers=3)
PROBE_SEED_BASE = 1_000_000  # training triplets; the held-out ones come from the held-out seed range
HELDOUT_TRIPLET_SEED = HELDOUT_SEED_BASE + 20_000


class SmileProbeError(ValueError):
    """A probe request that cannot be carried out."""


@dataclass(frozen=True)
class SmileProbeConfig:
    """Everything that determines a probe's result (with the code)."""

    tower: str = "vit"
    init: str | None = None  # a CLIP file to start from instead of a fresh tower (tower then reads "init")
    resnet_width: int = 32  # ModifiedResNet stem width; layers (1, 1, 1, 1)
    steps: int = 1000
    lr: float = 5e-4
    triplets_per_step: int = 16
    augment_strength: float = 0.0
    heldout_faces: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        if self.init is None and self.tower not in TOWERS:
            raise SmileProbeError(f"unknown tower {self.tower!r}; choose one of {', '.join(TOWERS)}")
        if min(self.steps, self.triplets_per_step, self.heldout_faces, self.resnet_width) < 1 or self.lr <= 0:
            raise SmileProbeError("steps, triplets per step, held-out faces, ResNet width and lr must be positive")


def build_tower(config: SmileProbeConfig) -> clip_model.CLIP:
    """The CLIP the probe trains: CLIP A's sizes with the chosen image tower, or the file config.init."""
    if config.init is not None:
        if not Path(config.init).is_file():
            raise SmileProbeError(f"no CLIP file at {config.init}; pass a path such as "
                                  "replication/miniworld/weights/clip_a.pt")
        return load_clip(config.init, dtype=torch.float32).model.requires_grad_(True)
    arch = PROBE_ARCH
    if config.tower == "resnet":
        arch = replace(arch, vision_layers=(1, 1, 1, 1), vision_width=config.resnet_width)
    return build_clip(arch, config.seed)


@torch.no_grad()
def heldout_scores(model: clip_model.CLIP, n_faces: int, chunk: int = 50) -> dict[str, float]:
    """Triplet loss and accuracy (each image's best caption among its face's three is its own) on held-out faces."""
    model.eval()
    losses, correct = [], []
    for start in range(0, n_faces, chunk):
        n = min(chunk, n_faces - start)
        images, texts = smile_triplets(n, torch.Generator().manual_seed(HELDOUT_TRIPLET_SEED + start), 0.0)
        logits = smile_logits(model, images, texts, "clip")
        losses.append(float(smile_loss(model, images, texts, "clip", logits)) * n)
        picked = logits.argmax(-1)
        correct.append((picked == torch.arange(3)).float().flatten())
    return {"heldout_loss": sum(losses) / n_faces, "heldout_accuracy": float(torch.cat(correct).mean()),
            "chance_loss": float(torch.log(torch.tensor(3.0))), "chance_accuracy": 1 / 3}


def run_probe(config: SmileProbeConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train the tower on fresh triplets for config.steps steps; the loss curve and held-out scores before and after."""
    model = build_tower(config)
    before = heldout_scores(model, config.heldout_faces)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    curve: list[tuple[int, float]] = []
    window: list[float] = []
    bar = tqdm(range(config.steps), desc=f"smile probe ({config.init or config.tower})", disable=not progress)
    for step in bar:
        model.train()
        images, texts = smile_triplets(config.triplets_per_step,
                                       torch.Generator().manual_seed(PROBE_SEED_BASE + config.seed * 100_000 + step),
                                       config.augment_strength)
        loss = smile_loss(model, images, texts, "clip")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == config.steps:
            curve.append((step + 1, sum(window) / len(window)))
            bar.set_postfix(loss=f"{curve[-1][1]:.3f}")
            window = []
    after = heldout_scores(model, config.heldout_faces)
    return {"config": asdict(config), "image_tower_parameters": sum(p.numel() for p in model.visual.parameters()),
            "train_loss_curve": curve, "before": before, "after": after,
            "learned": after["heldout_accuracy"] > 0.5}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tower", default="vit", help=f"fresh image tower: {', '.join(TOWERS)} (default vit)")
    parser.add_argument("--init", help="start from this CLIP file instead (all of it is trained)")
    parser.add_argument("--steps", type=int, default=SmileProbeConfig.steps)
    parser.add_argument("--lr", type=float, default=SmileProbeConfig.lr)
    parser.add_argument("--resnet-width", type=int, default=SmileProbeConfig.resnet_width)
    parser.add_argument("--augment", type=float, default=0.0, help="augmentation strength of training triplets")
    parser.add_argument("--heldout-faces", type=int, default=SmileProbeConfig.heldout_faces)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="JSON (default results/mini_world/smile_probe_<tower>.json)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.threads < 1:
            raise SmileProbeError("--threads must be a positive integer")
        torch.set_num_threads(args.threads)
        config = SmileProbeConfig(tower="init" if args.init else args.tower, init=args.init, steps=args.steps,
                                  lr=args.lr, resnet_width=args.resnet_width, augment_strength=args.augment,
                                  heldout_faces=args.heldout_faces)
        started = time.time()
        report = run_probe(config, progress=not args.no_progress)
        label = Path(args.init).stem if args.init else args.tower
        out = args.out or RESULTS_DIR / f"smile_probe_{label}.json"
        report.update({"command": command_line("replication.miniworld.smile_probe", argv), "threads": args.threads,
                       "seconds": round(time.time() - started, 1)})
        if args.init:
            report["config"]["init"] = repo_relative(Path(args.init))
        write_json(out, report)
        print(f"{label}: held-out triplet accuracy {report['before']['heldout_accuracy']:.3f} -> "
              f"{report['after']['heldout_accuracy']:.3f} (chance 0.333); wrote {out}")
        return 0
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
