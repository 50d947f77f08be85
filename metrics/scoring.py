"""Score an adapted mini-world generator with the models it is handed: ground truth, evaluator FID, CLIP scores."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from metrics.miniworld import score_shift
from replication.config import ShiftConfig
from replication.losses import text_direction
from replication.miniworld.attributes import sample_attributes
from replication.miniworld.imagestats import frechet_distance
from replication.miniworld.render import render
from replication.miniworld.truth import latent_to_attributes, mini_shift
from replication.sampling import sample_images
from replication.training_loop import latents_from_seeds

EVAL_CLIP_MINI = "mini-clip-b"  # the evaluation CLIP differs from the guidance one (mini-clip-a)
MINI_REFERENCE_SEED = 424242  # attribute seed of the true target renders FID compares against (held out)


class ScoringError(ValueError):
    """A scorer lacks a model a run's scores need; the message names it and how to provide it."""


@dataclass(frozen=True)
class MiniScorer:
    """The models that score mini runs, loaded once per world by the pipeline and handed to every scoring call.

    `clips` maps a CLIP name to its encoder: the evaluation CLIP and every guidance CLIP a run may name.
    `weights_sha256` (model name -> sha256 of the evaluator and evaluation CLIP files) is stored in every row, so scores
    made with other scorer weights are found stale.
    """

    evaluator: Any
    clips: Mapping[str, Any]
    eval_clip: str = EVAL_CLIP_MINI
    weights_sha256: Mapping[str, str] = field(default_factory=dict)

    def clip(self, name: str):
        if name not in self.clips:
            raise ScoringError(f"the mini scorer has no CLIP {name!r} (it holds {sorted(self.clips)}); build it with "
                               f"that CLIP among its guidance CLIPs")
        return self.clips[name]


def metric_prefix(metric: str) -> str:
    """A stored metric's name without its sample-count suffix: "mini_target_accuracy_n500" -> "mini_target_accuracy"."""
    return re.sub(r"_n\d+$", "", metric)


def clip_tag(name: str) -> str:
    """Metric-name form of a CLIP name: "mini-clip-a" -> "miniclipa", "ViT-B/32" -> "vitb32"."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def eval_latents(shift: ShiftConfig, style_dim: int, n: int | None = None) -> torch.Tensor:
    """Per-image seeded latents, identical for every method and seed of a shift."""
    start, stop = shift.task.eval_seeds
    stop = stop if n is None else min(stop, start + n)
    return latents_from_seeds(range(start, stop), style_dim, torch.device("cpu"))


@torch.no_grad()
def clip_scores(encoder, x_src: torch.Tensor, x_tgt: torch.Tensor, source_text: str, target_text: str,
                x_true: torch.Tensor | None = None) -> dict[str, float]:
    """Directional CLIP similarity (image-pair direction vs 79-template text direction) and target-text similarity.

    With `x_true` (the true target image of each latent, mini world) also `truth_clip_dir`: the same directional
    similarity had G_tgt drawn exactly the truth. Where clip_dir exceeds it, this CLIP's directional loss prefers the
    adapted images to the true target domain, so no amount of training toward it reaches the truth.
    """
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


def score_mini_run(scorer: MiniScorer, G_src, G_tgt, shift: ShiftConfig, n: int = 500) -> list[dict]:
    """Rows (metric, value, n_samples, protocol, scorers) for a mini-world run on the shift's first n eval latents."""
    task = shift.task
    kind = mini_shift(task.source_text, task.target_text)
    z = eval_latents(shift, G_src.style_dim, n)
    # Drawn once and shared by every score: synthesis is most of the scoring time on a CPU.
    x_src, x_tgt = sample_images(G_src, z), sample_images(G_tgt, z)
    true_attrs = latent_to_attributes(z)
    truth = score_shift(G_src, G_tgt, scorer.evaluator, kind, z, true_attrs=true_attrs, images=(x_src, x_tgt))
    rows = [dict(metric=f"mini_{k}_n{n}", value=v, n_samples=n, protocol="evaluator-v1 const-noise psi1")
            for k, v in truth.items() if k != "n_samples"]
    # FID in the evaluator's feature space against true renders of the target domain (held-out attribute seed)
    real = render(sample_attributes(n, torch.Generator().manual_seed(MINI_REFERENCE_SEED)), kind.target_style,
                  kind.target_character)
    fid = frechet_distance(scorer.evaluator.features(x_tgt).cpu().numpy(),
                           scorer.evaluator.features(real).cpu().numpy())
    rows.append(dict(metric=f"mini_fid_evaluator_n{n}", value=fid, n_samples=n, protocol="evaluator-v1 penultimate"))
    x_true = render(true_attrs, kind.target_style, kind.target_character)
    scores = clip_scores(scorer.clip(scorer.eval_clip), x_src, x_tgt, task.source_text, task.target_text, x_true)
    for k, v in scores.items():
        rows.append(dict(metric=f"{k}_{clip_tag(scorer.eval_clip)}_n{n}", value=v, n_samples=n,
                         protocol=f"eval CLIP {scorer.eval_clip}"))
    # The guidance CLIPs' own view: does the loss the run descended prefer its result to the true target?
    for name in shift.nada.clip_models:
        if name == scorer.eval_clip:
            continue
        scores = clip_scores(scorer.clip(name), x_src, x_tgt, task.source_text, task.target_text, x_true)
        for k in ("clip_dir", "truth_clip_dir"):
            rows.append(dict(metric=f"train_{k}_{clip_tag(name)}_n{n}", value=scores[k], n_samples=n,
                             protocol=f"guidance CLIP {name}"))
    return [dict(row, scorers=dict(scorer.weights_sha256)) for row in rows]
