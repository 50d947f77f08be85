"""StyleGAN-NADA as a method: adapt(G_src, shift, seed, run_dir) builds CLIP guidance and layer selection, then trains."""
from __future__ import annotations

from pathlib import Path

import torch

from replication.checkpoint import load_generator
from replication.clip_models import ClipEncoder, load_weighted_encoders
from replication.config import NadaConfig, ShiftConfig, TaskConfig
from replication.layer_select import apply_selection, select_layers
from replication.losses import ClipGuidance, GuidanceConfig, ImageFolderError, image_direction
from replication.networks import Generator
from replication.training_loop import StepContext, run_nada

class GeneratorNotFound(ValueError):
    """The source generator named by a shift is neither a file nor a converted registry weight."""


def resolve_generator_path(name: str) -> Path:
    """A file path is used as is; a registry name resolves to its converted checkpoint (from `make convert`), or, for
    weights already in our format (the mini world's), to the registry file itself."""
    path = Path(name)
    if path.suffix in (".pt", ".pth", ".pkl") and path.is_file():
        return path
    from replication import weights

    registry = weights.registry()
    if name not in registry:
        if path.is_file():
            return path
        generators = ", ".join(sorted(n for n, e in registry.items() if e.kind == "generator"))
        if path.is_dir():
            problem = f"{path} is a folder, not a checkpoint file"
        elif path.suffix or len(path.parts) > 1:  # meant as a file, so the registry's names would mislead
            problem = f"no file {path}"
        else:
            problem = f"{name!r} is neither a file nor a weight-registry name"
        raise GeneratorNotFound(f"source generator: {problem}; set [task] generator to a checkpoint file or one of "
                                f"{generators}")
    entry = registry[name]
    if entry.kind != "generator":
        raise GeneratorNotFound(f"source generator {name!r} is a {entry.kind} weight, not a generator; set [task] "
                                f"generator to a checkpoint file or a generator of env/weights.toml")
    if entry.format == "nada-replication-checkpoint":
        return weights.resolve(name)
    converted = weights.converted_dir() / f"{name}.pt"
    if not converted.is_file():
        raise GeneratorNotFound(f"source generator {name!r} has no converted checkpoint {converted}; put "
                                f"{entry.filename} in {weights.weights_dir()} (from {entry.url}) and run `make convert`")
    return converted


def resolve_guidance_images(value: str | None, key: str = "target_images") -> str | list[Path] | None:
    """[task] target_images / source_images: a folder of images, or the name of an image set in env/weights.toml
    (its hash-checked file; a missing one is a one-line WeightError saying where to get it)."""
    if value is None or Path(value).is_dir():
        return value
    from replication import weights

    registry = weights.registry()
    entry = registry.get(value)
    if entry is None or entry.kind != "image-set":
        sets = ", ".join(sorted(n for n, e in registry.items() if e.kind == "image-set")) or "none"
        raise ImageFolderError(f"[task] {key} {value!r} is neither an existing folder of images nor an image set of "
                               f"env/weights.toml (image sets: {sets})")
    return [weights.resolve(value)]


def load_encoders(cfg: NadaConfig, device: torch.device) -> list[tuple[ClipEncoder, float]]:
    """Load the run's CLIP models; a zero-weight model is not even loaded (the original evaluated it every step)."""
    return load_weighted_encoders(cfg.clip_models, cfg.clip_model_weights, device, antialias=cfg.antialias,
                                  skip_zero_weight=True)


def build_guidance(task: TaskConfig, cfg: NadaConfig, encoders: list[tuple[ClipEncoder, float]],
                   G_src: Generator, rng: torch.Generator) -> ClipGuidance:
    """Text-guided by default; with target_images, the direction comes from image embeddings (paper section 5.2)."""
    gcfg = GuidanceConfig(lambda_direction=cfg.lambda_direction, lambda_global=cfg.lambda_global,
                          lambda_patch=cfg.lambda_patch, lambda_manifold=cfg.lambda_manifold, mode=cfg.mode)
    directions = None
    if task.target_images is not None:
        target, source = (resolve_guidance_images(task.target_images),
                          resolve_guidance_images(task.source_images, "source_images"))
        directions = [image_direction(enc, target, source, G_src=G_src,
                                      rng=torch.Generator().manual_seed(rng.initial_seed()))
                      for enc, _ in encoders]
    return ClipGuidance(encoders, task.source_text or None, task.target_text or None, gcfg, directions=directions,
                        rng=rng)


def build_context(task: TaskConfig, cfg: NadaConfig, guidance: ClipGuidance, G_src: Generator) -> StepContext:
    select = None
    if cfg.auto_layer_iters > 0:
        # The original always selects toward --target_class, even for image targets (bug B4); the fixed mode has no
        # better text there either, so image-guided runs use the target text when given.
        k = min(cfg.auto_layer_k, G_src.n_latent)

        def select(G_tgt: Generator, rng: torch.Generator) -> list[str]:
            _, names, _ = select_layers(G_tgt, G_src.mapping, guidance.selection_loss, k=k, iters=cfg.auto_layer_iters,
                                        batch=cfg.auto_layer_batch, rng=rng, mode=cfg.mode,
                                        noise_mode="random" if cfg.noise_mode == "random" else cfg.noise_mode)
            return apply_selection(G_tgt, names)

    return StepContext(guidance=guidance, select=select, cfg=cfg)


def adapt(G_src: Generator, shift: ShiftConfig, seed: int, run_dir: Path, *, encoders=None,
          weights_sha256: dict[str, str] | None = None, progress: bool = True, stop_at: int | None = None,
          latent_avg: torch.Tensor | None = None, method: str = "nada") -> Generator:
    """The method interface shared with the baselines: returns the adapted generator G_tgt."""
    device = next(G_src.parameters()).device
    cfg = shift.nada
    if encoders is None:
        encoders = load_encoders(cfg, device)
    rng = torch.Generator().manual_seed(seed + 1_000_003)  # patch-crop positions only
    guidance = build_guidance(shift.task, cfg, encoders, G_src, rng)
    ctx = build_context(shift.task, cfg, guidance, G_src)
    return run_nada(G_src, shift, ctx, seed, run_dir, weights_sha256=weights_sha256, progress=progress,
                    stop_at=stop_at, latent_avg=latent_avg, method=method)


def run_weight_sha256(shift: ShiftConfig) -> dict[str, str]:
    """sha256 of every weight file a run of `shift` reads: its generator and each guidance CLIP (a file path, or a
    registry name whose file is present), keyed "generator:NAME" / "clip:NAME" as in each run's env.json."""
    from replication import weights

    shas = {f"generator:{shift.task.generator}": weights.file_sha256(resolve_generator_path(shift.task.generator))}
    registered = weights.registry()
    for name in shift.nada.clip_models:
        if Path(name).is_file():
            shas[f"clip:{name}"] = weights.file_sha256(Path(name))
        elif name in registered and registered[name].path.is_file():
            shas[f"clip:{name}"] = weights.verify(name)
    return shas


def load_source(shift: ShiftConfig, device: torch.device) -> tuple[Generator, torch.Tensor | None, dict[str, str]]:
    """Source generator of a shift, its latent average and the sha256 of every weight file the run will read."""
    path = resolve_generator_path(shift.task.generator)
    G_src, ckpt = load_generator(path, device=device, expected_resolution=shift.task.resolution)
    return G_src, ckpt.latent_avg, run_weight_sha256(shift)
