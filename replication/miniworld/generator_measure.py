"""Measuring the mini generator against the renderer (and the evaluator): scores, sensitivities and a sample grid."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from replication.checkpoint import load_generator
from replication.miniworld.attributes import (
    ATTRIBUTE_INDEX,
    ATTRIBUTE_NAMES,
    CHARACTERS,
    NUM_ATTRIBUTES,
    SOURCE_CHARACTER,
    SOURCE_STYLE,
    STYLES,
    sample_attributes,
)
from replication.miniworld.evaluator import load_evaluator
from replication.miniworld.generator_losses import make_perceptual_net, mouth_mask
from replication.miniworld.generator_recipe import RECIPE_MODULE, GeneratorRecipeError, draw_latents, target_images
from replication.miniworld.imagestats import edge_correlation, frechet_distance
from replication.miniworld.readout import ridge_readout_r2
from replication.miniworld.render import render
from replication.miniworld.truth import LATENT_MAPPING_NAME, attribute_r2, latent_to_attributes
from replication.networks import Generator
from replication.runio import REPO_ROOT, atomic_write_bytes, repo_relative
from replication.sampling import sample_images

DEFAULT_RESULTS = REPO_ROOT / "results" / "mini_world" / "generator.json"
DEFAULT_GRID = REPO_ROOT / "results" / "mini_world" / "generator_samples.png"
DEFAULT_EVALUATOR = REPO_ROOT / "replication" / "miniworld" / "weights" / "evaluator.pt"
DEFAULT_EVALUATOR_RESULTS = REPO_ROOT / "results" / "mini_world" / "evaluator.json"


def _gradient_energy(x: Tensor) -> float:
    return float((x[..., :, 1:] - x[..., :, :-1]).abs().mean() + (x[..., 1:, :] - x[..., :-1, :]).abs().mean())


def save_sample_grid(path: Path, G: Generator, z: Tensor, columns: int = 8, scale: int = 2) -> None:
    """PNG of G(z) rows, each followed by the renderer's truth for the same latents; written atomically."""
    from PIL import Image

    fake = sample_images(G, z, noise_mode="none", batch=64)
    real = target_images(z)
    rows = []
    for start in range(0, z.shape[0], columns):
        rows.append(torch.cat(list(fake[start:start + columns]), dim=2))
        rows.append(torch.cat(list(real[start:start + columns]), dim=2))
    grid = torch.cat(rows, dim=1)
    grid = F.interpolate(grid[None], scale_factor=scale, mode="nearest")[0]
    pixels = ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    atomic_write_bytes(Path(path), buffer.getvalue())


def _find_min_domain_fid(record: Any) -> float | None:
    # The evaluator's JSON layout belongs to another module; look for the one number whose key names the smallest FID
    # between domains rather than hard-wiring a path into it.
    if isinstance(record, dict):
        for key, value in record.items():
            low = str(key).lower()
            if "fid" in low and ("min" in low or "smallest" in low):
                if isinstance(value, dict) and isinstance(value.get("fid"), (int, float)):
                    return float(value["fid"])  # evaluator.json: {"pair": ..., "fid": ...}
                if isinstance(value, (int, float)):
                    return float(value)
        for value in record.values():
            found = _find_min_domain_fid(value)
            if found is not None:
                return found
    return None


def redraw_attribute(z: Tensor, index: int) -> Tensor:
    """z with attribute `index` alone redrawn: z_index swapped with z_13, the first coordinate that carries no attribute.

    |z| and every other coordinate stay put, so latent_to_attributes changes attribute `index` and nothing else.
    """
    moved = z.clone()
    moved[:, [index, NUM_ATTRIBUTES]] = z[:, [NUM_ATTRIBUTES, index]]
    return moved


def latent_sensitivity(G: Generator, z: Tensor) -> dict[str, float]:
    """Per attribute: how much G's image moves when only that attribute changes, as a fraction of how much the render
    moves (mean absolute pixel change; 1 = G follows the attribute as the renderer does, 0 = G ignores it).

    Each attribute is changed alone (`redraw_attribute`). Tells which attributes the distillation has not learned yet,
    without any evaluator.
    """
    before, target_before = sample_images(G, z, noise_mode="none", batch=64), target_images(z)
    out = {}
    for i, name in enumerate(ATTRIBUTE_NAMES):
        moved = redraw_attribute(z, i)
        g_change = (sample_images(G, moved, noise_mode="none", batch=64) - before).abs().mean()
        r_change = (target_images(moved) - target_before).abs().mean().clamp_min(1e-12)
        out[name] = float(g_change / r_change)
    return out


@torch.no_grad()
def smile_change_by_region(G: Generator, z: Tensor) -> dict[str, float]:
    """Where G's pixels move when only the smile changes: mean absolute change inside the mouth (the union of both
    mouths' masks) and outside it, for G and for the render (which moves nothing outside the mouth). Splits a large
    smile `latent_sensitivity` into a mouth drawn too strongly and a change leaking onto the rest of the face."""
    smile = ATTRIBUTE_INDEX["smile"]
    moved = redraw_attribute(z, smile)
    mask = torch.maximum(mouth_mask(latent_to_attributes(z)), mouth_mask(latent_to_attributes(moved)))
    out = {}
    drawn = [sample_images(G, latents, noise_mode="none", batch=64) for latents in (z, moved)]
    for name, before, after in (("generator", *drawn), ("render", target_images(z), target_images(moved))):
        change = (after - before).abs().mean(1, keepdim=True)
        out[f"{name}_in_mouth"] = float((change * mask).sum() / mask.sum().clamp_min(1e-12))
        out[f"{name}_outside_mouth"] = float((change * (1 - mask)).sum() / (1 - mask).sum().clamp_min(1e-12))
    return out


@torch.no_grad()
def mapping_readout(G: Generator, z: Tensor, train_fraction: float = 0.75, ridge: float = 1e-2) -> dict[str, Any]:
    """What the mapping network passes on, per attribute: the norm of its input column in the first mapping layer and
    the held-out R^2 of a ridge linear read-out of the attribute from w = mapping(z). An attribute missing from w
    cannot be drawn, whatever the synthesis layers learn."""
    r2 = ridge_readout_r2(G.style(z), latent_to_attributes(z), train_fraction, ridge)
    norms = G.style[1].weight.norm(dim=0)
    return {"w_readout_r2": {n: float(v) for n, v in zip(ATTRIBUTE_NAMES, r2)},
            "mapping_input_column_norm": {n: float(norms[i]) for i, n in enumerate(ATTRIBUTE_NAMES)},
            "mapping_input_column_norm_unused_mean": float(norms[NUM_ATTRIBUTES:].mean())}


def _evaluator_scores(evaluator_path: Path, evaluator_results: Path, fake: Tensor, paired_real: Tensor,
                      reference_real: Tensor, true_attrs: Tensor) -> dict[str, Any]:
    evaluator = load_evaluator(evaluator_path)

    def read(images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        styles, chars, attrs, feats = [], [], [], []
        with torch.no_grad():
            for start in range(0, images.shape[0], 250):
                chunk = images[start:start + 250]
                pred = evaluator.predict(chunk)
                styles.append(pred["style_logits"].argmax(1))
                chars.append(pred["character_logits"].argmax(1))
                attrs.append(pred["attrs"].float())
                feats.append((pred["features"] if "features" in pred else evaluator.features(chunk)).double())
        return torch.cat(styles), torch.cat(chars), torch.cat(attrs), torch.cat(feats)

    f_style, f_char, f_attrs, f_feats = read(fake)
    r_style, r_char, r_attrs, _ = read(paired_real)
    _, _, _, ref_feats = read(reference_real)
    half = reference_real.shape[0] // 2
    photo, human = STYLES.index(SOURCE_STYLE), CHARACTERS.index(SOURCE_CHARACTER)
    r2_fake = attribute_r2(f_attrs, true_attrs)
    r2_real = attribute_r2(r_attrs, true_attrs)
    span_ratio = {}
    for i, name in enumerate(ATTRIBUTE_NAMES):
        q_f = torch.quantile(f_attrs[:, i], torch.tensor([0.05, 0.95]))
        q_r = torch.quantile(r_attrs[:, i], torch.tensor([0.05, 0.95]))
        span_ratio[name] = float((q_f[1] - q_f[0]) / (q_r[1] - q_r[0]).clamp_min(1e-6))
    fid = float(frechet_distance(f_feats.numpy(), ref_feats.numpy()))
    # Two independent halves of the renders give the FID a perfect generator would get at that sample size.
    fid_floor = float(frechet_distance(ref_feats[:half].numpy(), ref_feats[half:].numpy()))
    min_domain_fid = None
    if evaluator_results.exists():
        min_domain_fid = _find_min_domain_fid(json.loads(evaluator_results.read_text()))
    mean_r2_fake = sum(r2_fake) / len(r2_fake)
    mean_r2_real = sum(r2_real) / len(r2_real)
    photo_human = float(((f_style == photo) & (f_char == human)).float().mean())
    bars = {
        "photo_human_rate>=0.95": photo_human >= 0.95,
        "attribute_r2_ratio>=0.8": mean_r2_fake >= 0.8 * mean_r2_real,
        "span_ratio>=0.8_every_attribute": all(v >= 0.8 for v in span_ratio.values()),
        "fid<half_min_domain_fid": None if min_domain_fid is None else fid < 0.5 * min_domain_fid,
    }
    return {
        "evaluator": repo_relative(evaluator_path),
        "photo_human_rate": photo_human,
        "photo_human_rate_true_renders": float(((r_style == photo) & (r_char == human)).float().mean()),
        "attribute_r2_generator": dict(zip(ATTRIBUTE_NAMES, r2_fake)),
        "attribute_r2_true_renders": dict(zip(ATTRIBUTE_NAMES, r2_real)),
        "attribute_r2_mean_generator": mean_r2_fake,
        "attribute_r2_mean_true_renders": mean_r2_real,
        "attribute_r2_ratio": mean_r2_fake / mean_r2_real if mean_r2_real > 0 else None,
        "attribute_r2_ratio_per_attribute": {name: (f / r if r > 0 else None)
                                             for name, f, r in zip(ATTRIBUTE_NAMES, r2_fake, r2_real)},
        "span_ratio_p5_p95": span_ratio,
        "fid_evaluator_features": fid,
        "fid_floor_two_render_halves": fid_floor,
        "fid_samples": [int(fake.shape[0]), int(reference_real.shape[0])],
        "min_inter_domain_fid": min_domain_fid,
        "bars": bars,
    }


def measure_generator(weights: Path, *, evaluator_path: Path | None = DEFAULT_EVALUATOR,
                      evaluator_results: Path = DEFAULT_EVALUATOR_RESULTS, n_samples: int = 5000, seed: int = 2024,
                      grid_path: Path | None = DEFAULT_GRID) -> dict[str, Any]:
    """Score a generator checkpoint against the renderer (paired L1, LPIPS, edges) and, if present, the evaluator."""
    if n_samples < 16:
        raise GeneratorRecipeError(f"--n-samples must be at least 16, got {n_samples}")
    G, ckpt = load_generator(weights)
    mapping = ckpt.extra.get("latent_mapping", {})
    if mapping.get("name") != LATENT_MAPPING_NAME:
        raise GeneratorRecipeError(f"{weights} has no '{LATENT_MAPPING_NAME}' latent mapping in its extra; it was not "
                                   f"made by this recipe (retrain with `python -m {RECIPE_MODULE} train`)")

    z = draw_latents(n_samples, G.style_dim, seed)
    # the recipe trains without noise, so its deterministic map is what is measured
    fake = sample_images(G, z, noise_mode="none", batch=64)
    true_attrs = latent_to_attributes(z)
    paired_real = render(true_attrs, SOURCE_STYLE, SOURCE_CHARACTER)
    perceptual = make_perceptual_net(0)
    n_lp = min(500, n_samples)
    with torch.no_grad():
        lp = float(torch.cat([perceptual(fake[s:s + 100], paired_real[s:s + 100]).flatten()
                              for s in range(0, n_lp, 100)]).mean())
    report: dict[str, Any] = {
        "weights": repo_relative(weights),
        "weights_bytes": Path(weights).stat().st_size,
        "n_samples": n_samples,
        "latent_seed": seed,
        "paired_l1": float((fake - paired_real).abs().mean()),
        "paired_lpips_random_alex": lp,
        # the operator the NADA scores use, so a shift's edge correlation reads against this one
        "paired_edge_correlation": float(edge_correlation(fake, paired_real).mean()),
        "gradient_energy_ratio": _gradient_energy(fake) / _gradient_energy(paired_real),
        "latent_sensitivity_ratio": latent_sensitivity(G, z[:64]),
        "smile_change_by_region": smile_change_by_region(G, z[:64]),
        **mapping_readout(G, z[:4000]),
    }
    if grid_path is not None:
        save_sample_grid(grid_path, G, z[:16])
        report["grid"] = "rows alternate G(z) and render(latent_to_attributes(z), photo, human); 16 latents"
    if evaluator_path is not None and Path(evaluator_path).exists():
        reference = render(sample_attributes(n_samples, torch.Generator().manual_seed(seed + 1)), SOURCE_STYLE,
                           SOURCE_CHARACTER)
        report.update(_evaluator_scores(Path(evaluator_path), Path(evaluator_results), fake, paired_real, reference,
                                        true_attrs))
    else:
        report["evaluator"] = f"not measured: {evaluator_path} does not exist yet"
    return report
