"""Build each world's scorer once from the weight registry, score finished runs with it, tell stale scores."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from metrics.editing import can_edit, edit_counts, source_directions
from metrics.fidelity import evaluator_backbone as fidelity_evaluator_backbone
from metrics.fidelity import inception_backbone
from metrics.intra_lpips import evaluator_backbone as perceptual_evaluator_backbone
from metrics.intra_lpips import lpips_vgg_backbone, lpips_vgg_model
from metrics.scoring import Scorer, ScoringError, ScoringSettings, score_run
from replication import weights
from replication.clip_models import load_clip
from replication.config import ShiftConfig
from replication.miniworld.evaluator import load_evaluator
from replication.pipeline.edit import write_edit_samples
from replication.runio import REPO_ROOT, atomic_write_text
from results.collect import CollectError, metric_rows

EVALUATOR = "mini-evaluator"
EVAL_CLIP = {"mini": "mini-clip-b", "paper": "ViT-L/14"}  # the default held-out judge of CLIP scores
MINI_CLIPS = ("mini-clip-a", "mini-clip-b")  # every CLIP a mini run may be guided by, and the evaluation CLIP
INCEPTION, VGG16 = "inception-v3-fid", "vgg16-lpips"
SETTINGS = {"mini": ScoringSettings(n_clip=500, n_lpips=1000, n_fid=1000),
            "paper": ScoringSettings(n_clip=500, n_lpips=1000, n_fid=5000)}
CACHE_DIR = REPO_ROOT / "cache" / "fidelity"


def file_sha(name_or_path: str) -> str:
    """sha256 of a registry weight (hash-checked) or of a weight file given by path."""
    path = Path(name_or_path)
    return weights.file_sha256(path) if path.is_file() else weights.verify(name_or_path)


def scorer_sha256(world: str = "mini", eval_clip: str | None = None) -> dict[str, str]:
    """sha256 of the weights that judge a world's runs; stored in each metrics row so stale scores are found."""
    eval_clip = eval_clip or EVAL_CLIP[world]
    names = (EVALUATOR, eval_clip) if world == "mini" else (INCEPTION, VGG16, eval_clip)
    return {name: file_sha(name) for name in names}


def settings_for(world: str, *, fid_reference: str | None = None, n_lpips: int | None = None,
                 n_fid: int | None = None, n_clip: int | None = None) -> ScoringSettings:
    """A world's default sample counts with the caller's overrides; a missing FID reference folder is an error."""
    if fid_reference is not None and not Path(fid_reference).is_dir():
        raise ScoringError(f"FID reference folder {fid_reference} does not exist; pass a folder of real target-domain "
                           f"images with --fid-reference")
    base = SETTINGS[world]
    return replace(base, n_lpips=n_lpips or base.n_lpips, n_fid=n_fid or base.n_fid, n_clip=n_clip or base.n_clip,
                   fid_reference=None if fid_reference is None else str(fid_reference), cache_dir=str(CACHE_DIR))


def build_scorer(world: str, settings: ScoringSettings | None = None, eval_clip: str | None = None) -> Scorer:
    """Load a world's scoring models from the registry (sha256 checked; never a download) into one Scorer."""
    settings = settings or settings_for(world)
    eval_clip = eval_clip or EVAL_CLIP[world]
    shas = scorer_sha256(world, eval_clip)
    if world == "mini":
        evaluator_path = weights.resolve(EVALUATOR)
        evaluator = load_evaluator(evaluator_path)
        return Scorer(world="mini", eval_clip=eval_clip, clips={name: load_clip(name) for name in
                                                                 dict.fromkeys((*MINI_CLIPS, eval_clip))},
                      fidelity=fidelity_evaluator_backbone(evaluator_path, shas[EVALUATOR]),
                      perceptual=perceptual_evaluator_backbone(evaluator), settings=settings, evaluator=evaluator,
                      weights_sha256=shas)
    return Scorer(world="paper", eval_clip=eval_clip, clips={eval_clip: load_clip(eval_clip)},
                  fidelity=inception_backbone(weights.resolve(INCEPTION), shas[INCEPTION]),
                  perceptual=lpips_vgg_backbone(lpips_vgg_model(weights.resolve(VGG16))), settings=settings,
                  weights_sha256=shas)


def clip_identity(name_or_path: str) -> str:
    """What a CLIP is, whatever its spelling: the sha256 of its file (a path, or a registry name whose file is
    present), else the name itself."""
    path = Path(name_or_path)
    if path.is_file():
        return weights.file_sha256(path)
    entry = weights.registry().get(name_or_path)
    return weights.file_sha256(entry.path) if entry is not None and entry.path.is_file() else name_or_path


def check_eval_clip(eval_clip: str | None, shifts: list[ShiftConfig]) -> None:
    """An evaluation CLIP named by the user must not have guided any run it is asked to judge (a copy, a link or
    another spelling of the same file included)."""
    if eval_clip is None:
        return
    judge = clip_identity(eval_clip)
    for shift in shifts:
        guided = [n for n, w in zip(shift.nada.clip_models, shift.nada.clip_model_weights) if w > 0]
        if judge in {clip_identity(name) for name in guided}:
            raise ScoringError(f"evaluation CLIP {eval_clip!r} guides {shift.task.name} ({guided}); a judge must be "
                               f"held out: choose another --eval-clip")


class LazyScorers:
    """One scorer per world, built at its first use and then reused by every run of a replicate or sweep call.

    `fid_references`: a folder holding one folder of real target-domain images per paper shift (<dir>/<shift>/);
    a paper shift without one is scored without FID/KID.
    """

    def __init__(self, settings: dict[str, ScoringSettings] | None = None, eval_clip: str | None = None,
                 fid_references: Path | None = None) -> None:
        if fid_references is not None and not Path(fid_references).is_dir():
            raise ScoringError(f"FID reference folder {fid_references} does not exist; pass a folder holding one "
                               f"folder of real images per paper shift")
        self._settings = {world: (settings or {}).get(world) or settings_for(world) for world in SETTINGS}
        self._eval_clip, self._fid_references = eval_clip, fid_references
        self._scorers: dict[str, Scorer] = {}

    def settings(self, world: str) -> ScoringSettings:
        return self._settings[world]

    def for_shift(self, shift: ShiftConfig) -> Scorer:
        world = shift.task.world
        if world not in self._scorers:
            self._scorers[world] = build_scorer(world, self._settings[world], self._eval_clip)
        scorer = self._scorers[world]
        folder = None if self._fid_references is None else Path(self._fid_references) / shift.task.name
        if world == "paper" and folder is not None and folder.is_dir():
            scorer = replace(scorer, settings=replace(scorer.settings, fid_reference=str(folder)))
        return scorer


def scores_are_current(run_dir: Path, current: dict[str, str]) -> bool:
    """True when run_dir/metrics.jsonl exists, every row is well formed and was scored by exactly the `current` scorer
    models; a broken file is stale, so --rerun-stale repairs it."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return False
    try:
        rows = metric_rows(path)
    except CollectError:
        return False
    return bool(rows) and all(row.get("scorers") == current for row in rows)


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    atomic_write_text(Path(run_dir) / "metrics.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def score_and_write(run_dir: Path, shift: ShiftConfig, G_src, G_tgt, scorer: Scorer, progress: bool = True) -> None:
    """Score a finished run on the CPU (where the scorer models and the evaluation latents live); a mini run also gets
    its interpolation and edit grids (samples/interpolation.png, samples/edit_<attr>.png), with the directions the
    editing-transfer metric fitted."""
    G_src, G_tgt = G_src.cpu(), G_tgt.eval().cpu()
    write_metrics(run_dir, score_run(scorer, G_src, G_tgt, shift, progress=progress))
    if shift.task.world == "mini":
        directions = (source_directions(G_src, scorer.evaluator, edit_counts(scorer.settings.n_clip)[1], scorer.cache)
                      if can_edit(G_tgt) else {})
        write_edit_samples(run_dir, shift, G_src, G_tgt, directions)
