"""Score one finished run: mini-world ground truth, evaluator FID and evaluation-CLIP scores -> run_dir/metrics.jsonl."""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from replication.config import ShiftConfig
from replication.runio import atomic_write_text

EVAL_CLIP_MINI = "mini-clip-b"  # the evaluation CLIP differs from the training one (mini-clip-a)
MINI_SCORERS = ("mini-evaluator", EVAL_CLIP_MINI)  # the models a mini run's scores depend on, besides the run itself


def metric_prefix(metric: str) -> str:
    """A stored metric's name without its sample-count suffix: "mini_target_accuracy_n500" -> "mini_target_accuracy"."""
    return re.sub(r"_n\d+$", "", metric)


def scorer_sha256() -> dict[str, str]:
    """sha256 of every registry model that scores mini runs; stored in each metrics row so stale scores are found."""
    from replication import weights

    return {name: weights.verify(name) for name in MINI_SCORERS}


def scores_are_current(run_dir: Path, current: dict[str, str]) -> bool:
    """True when run_dir/metrics.jsonl exists and every row was scored by exactly the `current` scorer models."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return False
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return bool(rows) and all(row.get("scorers") == current for row in rows)


def eval_latents(shift: ShiftConfig, style_dim: int, n: int | None = None) -> torch.Tensor:
    """Per-image seeded latents, identical for every method and seed of a shift."""
    from replication.training_loop import latents_from_seeds

    start, stop = shift.task.eval_seeds
    stop = stop if n is None else min(stop, start + n)
    return latents_from_seeds(range(start, stop), style_dim, torch.device("cpu"))


def _clip_tag(name: str) -> str:
    """Metric-name form of a CLIP name: "mini-clip-a" -> "miniclipa", "ViT-B/32" -> "vitb32"."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


@torch.no_grad()
def clip_scores(G_src, G_tgt, z: torch.Tensor, encoder, source_text: str, target_text: str,
                x_true: torch.Tensor | None = None, *,
                images: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, float]:
    """Directional CLIP similarity (image-pair direction vs 79-template text direction) and target-text similarity.

    With `x_true` (the true target image of each latent, mini world) also `truth_clip_dir`: the same directional
    similarity had G_tgt drawn exactly the truth. Where clip_dir exceeds it, this CLIP's directional loss prefers the
    adapted images to the true target domain, so no amount of training toward it reaches the truth. `images`:
    (G_src(z), G_tgt(z)) already drawn by `metrics.miniworld.sample`, so several scorers share one synthesis.
    """
    from metrics.miniworld import sample
    from replication.losses import text_direction

    x_src, x_tgt = images if images is not None else (sample(G_src, z), sample(G_tgt, z))
    direction = text_direction(encoder, source_text, target_text)
    f_src, f_tgt = encoder.image_features(x_src), encoder.image_features(x_tgt)

    def directional(f_to: torch.Tensor) -> float:
        edit = torch.nn.functional.normalize(f_to - f_src, dim=-1, eps=1e-12)
        return torch.nn.functional.cosine_similarity(edit, direction).mean().item()

    text = encoder.text_features([f"a {target_text}"])
    out = {"clip_dir": directional(f_tgt), "clip_target_sim": (f_tgt @ text.T).mean().item()}
    if x_true is not None:
        out["truth_clip_dir"] = directional(encoder.image_features(x_true))
    return out


def score_mini_run(G_src, G_tgt, shift: ShiftConfig, n: int = 500) -> list[dict]:
    """Rows (metric, value, n_samples, protocol) for a mini-world run."""
    from metrics.miniworld import mini_shift, sample, score_shift
    from replication.clip_models import load_clip
    from replication.miniworld.attributes import sample_attributes
    from replication.miniworld.evaluator import frechet_distance, load_evaluator
    from replication.miniworld.render import render
    from replication.miniworld.train_generator import latent_to_attributes

    task = shift.task
    kind = mini_shift(shift.task.source_text, shift.task.target_text)
    z = eval_latents(shift, G_src.style_dim, n)
    from replication import weights

    evaluator = load_evaluator(weights.resolve("mini-evaluator"))
    # Drawn once: synthesis is most of the scoring time on a CPU (seven draws of 500 images before).
    images = (sample(G_src, z), sample(G_tgt, z))
    truth = score_shift(G_src, G_tgt, evaluator, kind, z, true_attrs=latent_to_attributes(z), images=images)
    rows = [dict(metric=f"mini_{k}_n{n}", value=v, n_samples=n, protocol="evaluator-v1 const-noise psi1")
            for k, v in truth.items() if k != "n_samples"]
    # FID in the evaluator's feature space against true renders of the target domain (held-out attribute seed)
    real = render(sample_attributes(n, torch.Generator().manual_seed(424242)), kind.target_style,
                  kind.target_character)
    fake = images[1]
    fid = frechet_distance(evaluator.features(fake).cpu().numpy(), evaluator.features(real).cpu().numpy())
    rows.append(dict(metric=f"mini_fid_evaluator_n{n}", value=fid, n_samples=n, protocol="evaluator-v1 penultimate"))
    x_true = render(latent_to_attributes(z), kind.target_style, kind.target_character)
    encoder = load_clip(EVAL_CLIP_MINI)
    for k, v in clip_scores(G_src, G_tgt, z, encoder, task.source_text, task.target_text, x_true,
                                  images=images).items():
        rows.append(dict(metric=f"{k}_{_clip_tag(EVAL_CLIP_MINI)}_n{n}", value=v, n_samples=n,
                         protocol=f"eval CLIP {EVAL_CLIP_MINI}"))
    # The guidance CLIPs' own view: does the loss the run descended prefer its result to the true target?
    for name in shift.nada.clip_models:
        if name == EVAL_CLIP_MINI:
            continue
        scores = clip_scores(G_src, G_tgt, z, load_clip(name), task.source_text, task.target_text, x_true,
                             images=images)
        for k in ("clip_dir", "truth_clip_dir"):
            rows.append(dict(metric=f"train_{k}_{_clip_tag(name)}_n{n}", value=scores[k], n_samples=n,
                             protocol=f"guidance CLIP {name}"))
    scorers = scorer_sha256()
    return [dict(row, scorers=scorers) for row in rows]


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    atomic_write_text(Path(run_dir) / "metrics.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
