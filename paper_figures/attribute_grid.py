"""CLI: how one attribute comes through mini-world adaptations: latents ordered by it, drawn by G_src, G_tgt, truth.

    python -m paper_figures.attribute_grid results/sweeps/mini-seeds/mini/mini--sketch/nada/seed0 --attribute eye_size
    python -m paper_figures.attribute_grid <run_dir> <run_dir> ... --out methods.png   # several runs of one shift

Rows, top to bottom: the unadapted generator, each run's adapted one, the true target render and the true source
render of the same latents; columns go from the smallest to the largest value of the attribute. It reads each run's
final checkpoint (git-ignored: train the run first), so it is not part of `make figures`.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Sequence

import torch


class AttributeGridError(ValueError):
    """A run folder or attribute this figure cannot use."""


def attribute_grid(run_dirs: Path | Sequence[Path], attribute: str, columns: int = 8, pool: int = 400,
                   seed: int = 11) -> torch.Tensor:
    """[(3 + runs) * columns, 3, H, W] images in [-1, 1]: rows G_src, each run's G_tgt, true target, true source, over
    latents whose `attribute` spans its range evenly (picked from `pool` latents drawn with `seed`). Every run must be
    a finished mini-world run of one shift and generator."""
    from replication.miniworld.truth import mini_shift
    from replication.sampling import sample_images
    from replication.checkpoint import load_generator
    from replication.miniworld.attributes import ATTRIBUTE_INDEX, SOURCE_CHARACTER, SOURCE_STYLE
    from replication.miniworld.render import render
    from replication.miniworld.truth import latent_to_attributes
    from replication.nada import resolve_generator_path
    from replication.training_loop import FINAL_NAME

    if attribute not in ATTRIBUTE_INDEX:
        raise AttributeGridError(f"unknown attribute {attribute!r}; choose from {', '.join(ATTRIBUTE_INDEX)}")
    if columns < 2 or pool < columns:
        raise AttributeGridError(f"need 2 <= columns <= pool, got columns {columns} and pool {pool}")
    run_dirs = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(r) for r in run_dirs]
    if not run_dirs:
        raise AttributeGridError("give at least one run folder")
    tasks = []
    for run_dir in run_dirs:
        config_path, final = run_dir / "config.json", run_dir / "checkpoints" / FINAL_NAME
        if not config_path.is_file() or not final.is_file():
            raise AttributeGridError(f"{run_dir} is not a finished run with its final checkpoint ({final}); train it "
                                     f"first (its sweep or make replicate)")
        task = json.loads(config_path.read_text())["task"]
        if task.get("world") != "mini":
            raise AttributeGridError(f"{run_dir} is a {task.get('world')}-world run; only the mini world has a truth")
        tasks.append(task)
    task = tasks[0]
    if any((t["source_text"], t["target_text"], t["generator"]) != (task["source_text"], task["target_text"],
                                                                   task["generator"]) for t in tasks):
        raise AttributeGridError("the runs adapt different shifts or generators; give runs of one shift")
    kind = mini_shift(task["source_text"], task["target_text"])
    G_src, _ = load_generator(resolve_generator_path(task["generator"]))
    z = torch.randn(pool, G_src.style_dim, generator=torch.Generator().manual_seed(seed))
    values = latent_to_attributes(z)[:, ATTRIBUTE_INDEX[attribute]]
    picked = values.argsort()[torch.linspace(0, pool - 1, columns).round().long()]
    z = z[picked]
    attrs = latent_to_attributes(z)
    adapted = [sample_images(load_generator(run_dir / "checkpoints" / FINAL_NAME)[0].eval(), z)
               for run_dir in run_dirs]
    return torch.cat([sample_images(G_src, z), *adapted, render(attrs, kind.target_style, kind.target_character),
                      render(attrs, SOURCE_STYLE, SOURCE_CHARACTER)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paper_figures.attribute_grid", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", type=Path, nargs="+", help="finished mini-world run folders of one shift")
    parser.add_argument("--attribute", default="eye_size")
    parser.add_argument("--columns", type=int, default=8)
    parser.add_argument("--out", type=Path, help="PNG (default paper_figures/out/attribute_<attribute>_<run>.png)")
    args = parser.parse_args(argv)
    from torchvision.utils import save_image

    from replication.runio import REPO_ROOT, atomic_write_bytes

    torch.set_num_threads(1)
    try:
        grid = attribute_grid(args.run_dirs, args.attribute, args.columns)
    except AttributeGridError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    parts = [Path(r).resolve().parts for r in args.run_dirs]
    tag = "_".join(parts[0][-3:]) if len(parts) == 1 else parts[0][-3] + "_" + "+".join(p[-2] for p in parts)
    out = args.out or REPO_ROOT / "paper_figures" / "out" / f"attribute_{args.attribute}_{tag}.png"
    big = torch.nn.functional.interpolate(grid, scale_factor=2, mode="nearest")
    buffer = io.BytesIO()
    save_image(big * 0.5 + 0.5, buffer, format="png", nrow=args.columns, padding=2)
    atomic_write_bytes(out, buffer.getvalue())
    print(f"figure: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
