"""Score one finished run: mini-world ground truth, evaluator FID and evaluation-CLIP scores -> run_dir/metrics.jsonl."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from replication.config import ShiftConfig
from replication.runio import atomic_write_text

EVAL_CLIP_MINI = "mini-clip-b"  # the evaluation CLIP differs from the training one (mini-clip-a)
MINI_SCORERS = ("mini-evaluator", EVAL_CLIP_MINI)  # the models a mini run's scores depend on, besides the run itself


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


@torch.no_grad()
def clip_scores(G_src, G_tgt, z: torch.Tensor, encoder, source_text: str, target_text: str) -> dict[str, float]:
    """Directional CLIP similarity (image-pair direction vs 79-template text direction) and target-text similarity."""
    from metrics.miniworld import sample
    from replication.losses import text_direction

    x_src, x_tgt = sample(G_src, z), sample(G_tgt, z)
    direction = text_direction(encoder, source_text, target_text)
    f_src, f_tgt = encoder.image_features(x_src), encoder.image_features(x_tgt)
    edit = torch.nn.functional.normalize(f_tgt - f_src, dim=-1, eps=1e-12)
    text = encoder.text_features([f"a {target_text}"])
    return {"clip_dir": torch.nn.functional.cosine_similarity(edit, direction).mean().item(),
            "clip_target_sim": (f_tgt @ text.T).mean().item()}


def score_mini_run(G_src, G_tgt, shift: ShiftConfig, n: int = 500) -> list[dict]:
    """Rows (metric, value, n_samples, protocol) for a mini-world run."""
    from metrics.miniworld import mini_shift, sample, score_shift
    from replication.clip_models import load_clip
    from replication.miniworld.attributes import sample_attributes
    from replication.miniworld.evaluator import frechet_distance, load_evaluator
    from replication.miniworld.render import render
    from replication.miniworld.train_generator import latent_to_attributes

    kind = mini_shift(shift.task.source_text, shift.task.target_text)
    z = eval_latents(shift, G_src.style_dim, n)
    from replication import weights

    evaluator = load_evaluator(weights.resolve("mini-evaluator"))
    truth = score_shift(G_src, G_tgt, evaluator, kind, z, true_attrs=latent_to_attributes(z))
    rows = [dict(metric=f"mini_{k}_n{n}", value=v, n_samples=n, protocol="evaluator-v1 const-noise psi1")
            for k, v in truth.items() if k != "n_samples"]
    # FID in the evaluator's feature space against true renders of the target domain (held-out attribute seed)
    real = render(sample_attributes(n, torch.Generator().manual_seed(424242)), kind.target_style,
                  kind.target_character)
    fake = sample(G_tgt, z)
    fid = frechet_distance(evaluator.features(fake).cpu().numpy(), evaluator.features(real).cpu().numpy())
    rows.append(dict(metric=f"mini_fid_evaluator_n{n}", value=fid, n_samples=n, protocol="evaluator-v1 penultimate"))
    encoder = load_clip(EVAL_CLIP_MINI)
    for k, v in clip_scores(G_src, G_tgt, z, encoder, shift.task.source_text, shift.task.target_text).items():
        rows.append(dict(metric=f"{k}_miniclipb_n{n}", value=v, n_samples=n, protocol="eval CLIP mini-clip-b"))
    scorers = scorer_sha256()
    return [dict(row, scorers=scorers) for row in rows]


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    atomic_write_text(Path(run_dir) / "metrics.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
