"""`make bench`: seconds per NADA training step and peak memory, paper architecture (random weights) and mini world.

Each configuration runs in its own subprocess so that its peak memory is its own. Results go to
results/bench/<config>-<device>.json. Examples:
    python -m replication.pipeline.bench                      # CPU-sized set: paper-256, mini
    python -m replication.pipeline.bench --configs paper-1024 --steps 5   # the README configuration (GPU)
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from replication.runio import REPO_ROOT, cpu_name, git_state, write_json

BENCH_DIR = REPO_ROOT / "results" / "bench"

# OpenAI CLIP ViT hyper-parameters (clip.model.CLIP constructor), used with random weights for timing only.
VIT_ARCH = {
    "ViT-B/32": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                     context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                     transformer_layers=12),
    "ViT-B/16": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
                     context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                     transformer_layers=12),
    # the mini world's CLIP size (DESIGN section 3 prototype)
    "mini": dict(embed_dim=64, image_resolution=64, vision_layers=4, vision_width=128, vision_patch_size=8,
                 context_length=32, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=3),
}


@dataclass(frozen=True)
class BenchConfig:
    name: str
    size: int  # generator resolution
    style_dim: int
    n_mlp: int
    channels: tuple[tuple[int, int], ...] | None  # None: config-f table (channel multiplier 2)
    clips: tuple[str, ...]
    batch: int
    freeze: bool  # adaptive layer freezing on (k, selection batch below)
    k: int
    select_batch: int


CONFIGS = {
    # The README configuration: FFHQ 1024 config-f, batch 2, ViT-B/32 + ViT-B/16, k = 18 (every layer), batch 8.
    "paper-1024": BenchConfig("paper-1024", 1024, 512, 8, None, ("ViT-B/32", "ViT-B/16"), 2, True, 18, 8),
    "paper-1024-nofreeze": BenchConfig("paper-1024-nofreeze", 1024, 512, 8, None, ("ViT-B/32", "ViT-B/16"), 2, False,
                                       18, 8),
    # The reduced CPU configuration the original was measured at (DESIGN section 8): 256 px config-f, ViT-B/32, batch 2.
    "paper-256": BenchConfig("paper-256", 256, 512, 8, None, ("ViT-B/32",), 2, True, 9, 8),
    "paper-256-nofreeze": BenchConfig("paper-256-nofreeze", 256, 512, 8, None, ("ViT-B/32",), 2, False, 9, 8),
    # A mini-world shift: 64 px generator, one mini CLIP, batch 4, no freezing (its default recipe).
    "mini": BenchConfig("mini", 64, 128, 4, ((4, 128), (8, 128), (16, 128), (32, 64), (64, 32)), ("mini",), 4, False,
                        6, 8),
}
CPU_DEFAULT = ("paper-256-nofreeze", "paper-256", "mini")
GPU_DEFAULT = ("paper-1024", "paper-1024-nofreeze", "paper-256", "mini")


def _random_clip(arch: str, device: torch.device, seed: int):
    import clip.model

    from replication.clip_models import ClipEncoder

    torch.manual_seed(seed)
    model = clip.model.CLIP(**VIT_ARCH[arch]).eval().requires_grad_(False)
    if device.type == "cuda":
        clip.model.convert_weights(model)  # fp16 like OpenAI's checkpoints on GPU
    return ClipEncoder(model.to(device), antialias=True, name=f"random-{arch}")


def run_one(cfg: BenchConfig, device: torch.device, steps: int, warmup: int) -> dict:
    """Time `steps` NADA training steps (after `warmup`) of the real training step code."""
    from replication.config import parse_shift
    from replication.nada import build_context, build_guidance
    from replication.networks import Generator, GeneratorConfig
    from replication.training_loop import train_step

    torch.manual_seed(0)
    G_src = Generator(GeneratorConfig(size=cfg.size, style_dim=cfg.style_dim, n_mlp=cfg.n_mlp,
                                      channels=cfg.channels)).to(device).eval().requires_grad_(False)
    G_tgt = Generator(G_src.cfg).to(device)
    G_tgt.load_state_dict(G_src.state_dict())
    G_tgt.train().requires_grad_(False)
    encoders = [(_random_clip(name, device, i), 1.0) for i, name in enumerate(cfg.clips)]
    shift = parse_shift({"task": {"world": "paper", "generator": "random", "source_text": "photo",
                                  "target_text": "sketch"},
                         "nada": {"batch": cfg.batch, "auto_layer_iters": 1 if cfg.freeze else 0, "auto_layer_k": cfg.k,
                                  "auto_layer_batch": cfg.select_batch, "clip_models": list(cfg.clips),
                                  "clip_model_weights": [1.0] * len(cfg.clips)}}, cfg.name)
    rng = torch.Generator(device=device).manual_seed(0)
    guidance = build_guidance(shift.task, shift.nada, encoders, G_src, rng)
    ctx = build_context(shift.task, shift.nada, guidance, G_src)
    if not cfg.freeze:
        from replication.layer_select import phase_modules, set_trainable

        set_trainable(G_tgt, phase_modules(G_tgt, None))
    optimizer = torch.optim.Adam(G_tgt.parameters(), lr=shift.nada.lr, betas=shift.nada.betas)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    for i in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        train_step(G_src, G_tgt, optimizer, ctx, rng, i)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    result = {
        "config": cfg.name, "resolution": cfg.size, "batch": cfg.batch, "clip_models": list(cfg.clips),
        "layer_freezing": cfg.freeze, "auto_layer_k": cfg.k if cfg.freeze else None,
        "auto_layer_batch": cfg.select_batch if cfg.freeze else None,
        "steps_timed": steps, "warmup_steps": warmup,
        "seconds_per_step_median": times[len(times) // 2], "seconds_per_step_mean": sum(times) / len(times),
        "seconds_per_step_min": times[0],
        "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__, **git_state(),
    }
    if device.type == "cuda":
        result["device_name"] = torch.cuda.get_device_name(device)
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        result["device_name"] = cpu_name()
        result["peak_memory_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m replication.pipeline.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="*", help=f"subset of {sorted(CONFIGS)}")
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--outdir", type=Path, default=BENCH_DIR)
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration in this process
    args = p.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(run_one(CONFIGS[args.one], device, args.steps, args.warmup)))
        return 0
    names = args.configs or (GPU_DEFAULT if device.type == "cuda" else CPU_DEFAULT)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        print(f"error: unknown bench config(s) {unknown}; choose from {sorted(CONFIGS)}", file=sys.stderr)
        return 2
    tag = "cuda" if device.type == "cuda" else "cpu"
    for name in names:
        cmd = [sys.executable, "-m", "replication.pipeline.bench", "--one", name, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--device", str(device)] + (["--threads", str(args.threads)] if args.threads else [])
        print(f"bench {name} on {device} ...", flush=True)
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
        if out.returncode != 0:
            print(f"error: bench {name} failed: {out.stderr.strip().splitlines()[-1] if out.stderr else out.returncode}",
                  file=sys.stderr)
            return 1
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["command"] = "python -m replication.pipeline.bench " + " ".join(
            argv if argv is not None else sys.argv[1:])
        write_json(args.outdir / f"{name}-{tag}.json", result)
        print(f"  {result['seconds_per_step_median']:.3f} s/step (median of {args.steps}), "
              f"peak {result['peak_memory_gib']:.2f} GiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
