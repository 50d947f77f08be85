"""Score an adapted generator with the models it is handed: FID/KID, intra-cluster LPIPS, CLIP scores, the truth."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from metrics.clip_metrics import diversity, directional_similarity, image_features, quality
from metrics.editing import editing_rows
from metrics.fidelity import FidelityBackbone, GeneratorSource, fid_kid
from metrics.intra_lpips import PerceptualBackbone, intra_lpips_scores
from metrics.miniworld import score_shift
from replication.config import ShiftConfig
from replication.miniworld.attributes import sample_attributes
from replication.miniworld.render import render
from replication.miniworld.truth import latent_to_attributes, mini_shift
from replication.sampling import sample_images
from replication.training_loop import latents_from_seeds

MINI_REFERENCE_SEED = 424242  # attribute seed of the true target renders FID/KID compare against (held out)
KEEP_SIZE = 256  # shared samples larger than this are stored area-downsampled (LPIPS-VGG's own size)


class ScoringError(ValueError):
    """A run the scorer cannot score as configured; the message says what and how to fix it."""


@dataclass(frozen=True)
class ScoringSettings:
    """How many samples each metric uses, and the FID reference of a paper-world shift."""

    n_clip: int = 500  # CLIP scores and, in the mini world, the ground-truth scores
    n_lpips: int = 1000  # intra-cluster LPIPS samples
    lpips_k: int = 10  # k-medoids clusters
    n_fid: int = 1000  # generated samples of FID/KID (5,000 in the paper world, streamed)
    fid_reference: str | None = None  # paper world: folder of real target-domain images (no FID without one)
    cache_dir: str | None = None  # where torch-fidelity caches reference statistics


@dataclass(frozen=True)
class Scorer:
    """The models that score one world's runs, loaded once by the pipeline and handed to every scoring call.

    `clips` maps CLIP names to encoders: the evaluation CLIP and, in the mini world, the CLIPs runs may be guided by
    (their own view of a run is scored too). `evaluator` is the mini world's judge of the truth (None in the paper
    world). `weights_sha256` names every scoring weight file; each row stores it so stale scores are found.
    """

    world: str
    eval_clip: str
    clips: Mapping[str, Any]
    fidelity: FidelityBackbone
    perceptual: PerceptualBackbone
    settings: ScoringSettings = field(default_factory=ScoringSettings)
    evaluator: Any | None = None
    weights_sha256: Mapping[str, str] = field(default_factory=dict)
    # what the scorer computes once and reuses for every run it scores (the editing directions fitted on G_src)
    cache: dict = field(default_factory=dict, compare=False, repr=False)

    def clip(self, name: str):
        if name not in self.clips:
            raise ScoringError(f"the scorer holds no CLIP {name!r} (it holds {sorted(self.clips)}); build it with "
                               f"that CLIP")
        return self.clips[name]


def metric_prefix(metric: str) -> str:
    """A stored metric's name without its sample-count suffix: "mini_target_accuracy_n500" -> "mini_target_accuracy"."""
    return re.sub(r"_n\d+$", "", metric)


def clip_tag(name: str) -> str:
    """Metric-name form of a CLIP name: "mini-clip-a" -> "miniclipa", "ViT-B/32" -> "vitb32"."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def guidance_clips(shift: ShiftConfig) -> list[str]:
    """The CLIP models that guided a run (weight > 0)."""
    return [name for name, w in zip(shift.nada.clip_models, shift.nada.clip_model_weights) if w > 0]


def eval_clip_is_held_out(scorer: Scorer, shift: ShiftConfig) -> bool:
    return scorer.eval_clip not in guidance_clips(shift)


def eval_latents(shift: ShiftConfig, style_dim: int, n: int) -> torch.Tensor:
    """The first n per-image seeded latents of the shift's evaluation range, identical for every method and seed."""
    start, stop = shift.task.eval_seeds
    if n > stop - start:
        raise ScoringError(f"{shift.task.name}: {n} samples asked but [task] eval_seeds {list(shift.task.eval_seeds)} "
                           f"holds {stop - start}; widen eval_seeds")
    return latents_from_seeds(range(start, start + n), style_dim, torch.device("cpu"))


def check_settings(settings: ScoringSettings, shift: ShiftConfig) -> None:
    """The sample counts fit the shift's evaluation latents and k: raise ScoringError before any model loads."""
    s = settings
    if s.n_lpips < s.lpips_k:
        raise ScoringError(f"too few samples for k = {s.lpips_k} clusters: n_lpips is {s.n_lpips}; draw at least "
                           f"{s.lpips_k}")
    if min(s.n_clip, s.n_fid) < 2:
        raise ScoringError(f"n_clip ({s.n_clip}) and n_fid ({s.n_fid}) must be at least 2")
    needed = max(s.n_clip, s.n_lpips, s.n_fid if shift.task.world == "mini" else 0)
    start, stop = shift.task.eval_seeds
    if needed > stop - start:
        raise ScoringError(f"{shift.task.name}: scoring needs {needed} evaluation latents but [task] eval_seeds "
                           f"{list(shift.task.eval_seeds)} holds {stop - start}; widen eval_seeds")
    if shift.task.world == "mini":
        mini_shift(shift.task.source_text, shift.task.target_text)


def check_scorable(scorer: Scorer, shift: ShiftConfig) -> None:
    """Everything a scoring call needs is there: raise ScoringError before any sample is drawn."""
    if shift.task.world != scorer.world:
        raise ScoringError(f"{shift.task.name} is a {shift.task.world}-world shift; this scorer scores the "
                           f"{scorer.world} world")
    check_settings(scorer.settings, shift)
    scorer.clip(scorer.eval_clip)
    if scorer.world == "mini":
        for name in guidance_clips(shift):
            scorer.clip(name)


def _draw(G, z: torch.Tensor, keep_size: int = KEEP_SIZE) -> torch.Tensor:
    """G(z) drawn once in chunks and stored at most keep_size pixels wide (area-downsampled), float [-1, 1]."""
    out = []
    for i in range(0, z.shape[0], 100):  # chunks of 100, as every score was drawn before: the same floats
        x = sample_images(G, z[i:i + 100], batch=100)
        out.append(F.interpolate(x, size=(keep_size, keep_size), mode="area") if x.shape[-1] > keep_size else x)
    return torch.cat(out)


def _rows(values: Mapping[str, float], protocol: str, n: int) -> list[dict]:
    return [dict(metric=k, value=float(v), n_samples=n, protocol=protocol) for k, v in values.items()]


def _clip_rows(scorer: Scorer, shift: ShiftConfig, x_src: torch.Tensor, x_tgt: torch.Tensor,
               x_true: torch.Tensor | None) -> list[dict]:
    """The evaluation CLIP's scores (when it did not guide the run) and, in the mini world, each guidance CLIP's."""
    task, n = shift.task, x_tgt.shape[0]
    rows = []
    if eval_clip_is_held_out(scorer, shift):
        encoder, tag = scorer.clip(scorer.eval_clip), clip_tag(scorer.eval_clip)
        f_src, f_tgt = image_features(encoder, x_src), image_features(encoder, x_tgt)
        values = {
            f"clip_dir_{tag}_n{n}": directional_similarity(encoder, f_src, f_tgt, task.source_text, task.target_text),
            f"clip_target_sim_{tag}_n{n}": (f_tgt @ encoder.text_features([f"a {task.target_text}"]).float().cpu().T)
            .mean().item(),
            f"clip_quality_{tag}_n{n}": quality(encoder, f_tgt, task.target_text),
            f"clip_diversity_{tag}_n{n}": diversity(f_tgt),
        }
        if x_true is not None:
            # the same directional score had G_tgt drawn exactly the truth: the ceiling of this CLIP's view
            values[f"truth_clip_dir_{tag}_n{n}"] = directional_similarity(
                encoder, f_src, image_features(encoder, x_true), task.source_text, task.target_text)
        rows += _rows(values, f"eval CLIP {scorer.eval_clip}; quality over 80 ImageNet templates", n)
    if scorer.world == "mini":
        # The guidance CLIPs' own view: does the loss the run descended prefer its result to the true target?
        for name in guidance_clips(shift):
            if name == scorer.eval_clip:
                continue
            encoder, tag = scorer.clip(name), clip_tag(name)
            f_src = image_features(encoder, x_src)
            values = {f"train_clip_dir_{tag}_n{n}": directional_similarity(
                encoder, f_src, image_features(encoder, x_tgt), task.source_text, task.target_text)}
            if x_true is not None:
                values[f"train_truth_clip_dir_{tag}_n{n}"] = directional_similarity(
                    encoder, f_src, image_features(encoder, x_true), task.source_text, task.target_text)
            rows += _rows(values, f"guidance CLIP {name}", n)
    return rows


def score_run(scorer: Scorer, G_src, G_tgt, shift: ShiftConfig, *, progress: bool = True) -> list[dict]:
    """Every metric of one run as rows (metric, value, n_samples, protocol, scorers).

    The evaluation latents are drawn once (the most any metric needs) and every metric reads its first n; paper-world
    FID/KID streams its own n_fid samples from G_tgt into torch-fidelity.
    """
    check_scorable(scorer, shift)
    s, task = scorer.settings, shift.task
    n_shared = max(s.n_clip, s.n_lpips, s.n_fid if scorer.world == "mini" else 0)
    z = eval_latents(shift, G_src.style_dim, n_shared)
    x_src, x_tgt = _draw(G_src, z), _draw(G_tgt, z)
    rows: list[dict] = []
    x_true = None
    if scorer.world == "mini":
        kind = mini_shift(task.source_text, task.target_text)
        n = s.n_clip
        truth = score_shift(G_src, G_tgt, scorer.evaluator, kind, z[:n], true_attrs=latent_to_attributes(z[:n]),
                            images=(x_src[:n], x_tgt[:n]))
        rows += _rows({f"mini_{k}_n{n}": v for k, v in truth.items() if k != "n_samples"},
                      "evaluator-v1 const-noise psi1", n)
        x_true = render(latent_to_attributes(z[:n]), kind.target_style, kind.target_character)
        reference = render(sample_attributes(s.n_fid, torch.Generator().manual_seed(MINI_REFERENCE_SEED)),
                           kind.target_style, kind.target_character)
        reference_key = f"renderer-{kind.target_style}-{kind.target_character}-seed{MINI_REFERENCE_SEED}-n{s.n_fid}"
        rows += _rows(fid_kid(x_tgt[:s.n_fid], reference, scorer.fidelity, n=s.n_fid, cache_dir=s.cache_dir,
                              reference_key=reference_key, progress=progress),
                      f"{scorer.fidelity.protocol}; true target renders, attribute seed {MINI_REFERENCE_SEED}",
                      s.n_fid)
        rows += editing_rows(G_src, G_tgt, scorer.evaluator, z[:n], images=(x_src[:n], x_tgt[:n]),
                             cache=scorer.cache)
    elif s.fid_reference is not None:
        rows += _rows(fid_kid(GeneratorSource(G_tgt), s.fid_reference, scorer.fidelity, n=s.n_fid,
                              cache_dir=s.cache_dir, progress=progress),
                      f"{scorer.fidelity.protocol}; reference {s.fid_reference}", s.n_fid)
    rows += _clip_rows(scorer, shift, x_src[:s.n_clip], x_tgt[:s.n_clip], x_true)
    rows += _rows(intra_lpips_scores(x_tgt[:s.n_lpips], scorer.perceptual, k=s.lpips_k, progress=progress),
                  f"intra-cluster LPIPS ({scorer.perceptual.name}), k-medoids k={s.lpips_k}", s.n_lpips)
    return [dict(row, scorers=dict(scorer.weights_sha256)) for row in rows]
