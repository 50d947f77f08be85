"""Training recipe of the mini world's evaluator: batches, loss, schedule and the resumable training loop."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from replication.miniworld.attributes import (
    ATTRIBUTE_INDEX,
    CHARACTERS,
    NUM_ATTRIBUTES,
    STYLES,
    sample_attributes,
)
from replication.miniworld.augment import augment, hard_negatives
from replication.miniworld.data import ALL_DOMAINS, train_batch_seed
from replication.miniworld.evaluator_model import (
    LINEAR_ATTRIBUTES,
    Evaluator,
    EvaluatorConfig,
    EvaluatorError,
    attribute_targets,
    output_mask,
    save_evaluator,
)
from replication.miniworld.render import render
from replication.miniworld.truth import CIRCULAR_ATTRIBUTES
from replication.runio import atomic_torch_save

# Labels that a colour change or a translation of the image makes false: not supervised on augmented samples.
COLOUR_ATTRIBUTES: tuple[str, ...] = ("skin_tone", "hair_color", "background_hue")
POSITION_ATTRIBUTES: tuple[str, ...] = ("face_x", "face_y")

# Variance of each head output's target under sample_attributes (uniform in [0, 1]: 1/12; cos or sin of a uniform
# angle: 1/2). Dividing by it makes the attribute loss 1.0 for a head that only predicts the mean, whatever the target.
_TARGET_VARIANCE = torch.tensor([1.0 / 12.0] * len(LINEAR_ATTRIBUTES) + [0.5] * (2 * len(CIRCULAR_ATTRIBUTES)))


@dataclass(frozen=True)
class TrainConfig:
    """Recipe of the shipped evaluator."""

    steps: int = 6000  # at 2,000, R^2 of face width, hair length and eye size stayed under their bars (0.82/0.81/0.67)
    batch_size: int = 64
    hard_negative_fraction: float = 0.125  # of each batch: recoloured or blurred photo+human renders, same labels
    augment_fraction: float = 0.3  # of the remaining renders: passed through the domain-preserving augmentation
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    # On the variance-normalised MSE (1.0 = predicting the mean). Classification is easy (100% by step 900 at weight
    # 2) while the attributes were still far from their bars, so the attributes get most of the gradient.
    attribute_weight: float = 6.0
    checkpoint_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2 or self.checkpoint_every < 1:
            raise EvaluatorError("steps, batch_size (>= 2) and checkpoint_every must be positive")
        if not (0.0 <= self.hard_negative_fraction < 1.0 and 0.0 <= self.augment_fraction <= 1.0):
            raise EvaluatorError("hard_negative_fraction must be in [0, 1) and augment_fraction in [0, 1]")


def training_batch(step: int, cfg: TrainConfig) -> dict[str, Tensor]:
    """The batch of training step `step`: a pure function of (step, cfg), which is what makes resuming exact."""
    rng = torch.Generator().manual_seed(train_batch_seed(cfg.seed, step))
    n_hard = int(round(cfg.batch_size * cfg.hard_negative_fraction))
    n_domain = cfg.batch_size - n_hard
    attrs = sample_attributes(cfg.batch_size, rng)
    domain_idx = torch.randint(len(ALL_DOMAINS), (n_domain,), generator=rng)
    styles = [ALL_DOMAINS[i][0] for i in domain_idx.tolist()] + ["photo"] * n_hard
    characters = [ALL_DOMAINS[i][1] for i in domain_idx.tolist()] + ["human"] * n_hard
    images = render(attrs, styles, characters)
    augmented = torch.rand(n_domain, generator=rng) < cfg.augment_fraction
    if augmented.any():
        images[:n_domain][augmented] = augment(images[:n_domain][augmented], rng).clamp(-1, 1)
    if n_hard:
        images[n_domain:] = hard_negatives(images[n_domain:], rng).images
    # Which attribute labels stay true: none on hard negatives (blobs have no eyes, tints no skin tone); on augmented
    # renders everything but colour and position.
    attribute_mask = torch.ones(cfg.batch_size, NUM_ATTRIBUTES)
    attribute_mask[n_domain:] = 0.0
    changed = [ATTRIBUTE_INDEX[name] for name in COLOUR_ATTRIBUTES + POSITION_ATTRIBUTES]
    rows = torch.nonzero(augmented).flatten()
    attribute_mask[rows.unsqueeze(1), torch.tensor(changed).unsqueeze(0)] = 0.0
    return {
        "images": images,
        "attrs": attrs,
        "style_idx": torch.tensor([STYLES.index(s) for s in styles]),
        "character_idx": torch.tensor([CHARACTERS.index(c) for c in characters]),
        "attribute_mask": attribute_mask,
    }


def evaluator_loss(model: Evaluator, batch: dict[str, Tensor],
                   attribute_weight: float = TrainConfig.attribute_weight) -> tuple[Tensor, dict[str, float]]:
    """Cross-entropy on style and character plus masked, variance-normalised attribute MSE; returns (loss, parts)."""
    _, style_logits, character_logits, raw = model(batch["images"])
    style_loss = F.cross_entropy(style_logits, batch["style_idx"])
    character_loss = F.cross_entropy(character_logits, batch["character_idx"])
    mask = output_mask(batch["attribute_mask"])
    squared = (raw - attribute_targets(batch["attrs"])) ** 2 / _TARGET_VARIANCE * mask
    attribute_loss = squared.sum() / mask.sum().clamp_min(1.0)
    loss = style_loss + character_loss + attribute_weight * attribute_loss
    return loss, {"style": style_loss.item(), "character": character_loss.item(), "attributes": attribute_loss.item()}


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to zero."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: Evaluator, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on conv and linear weights only (norm gains and biases are left alone)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )


def train_step(model: Evaluator, optimizer: torch.optim.Optimizer, batch: dict[str, Tensor], lr: float,
               attribute_weight: float) -> dict[str, float]:
    """One optimisation step; raises FloatingPointError on a non-finite loss so the last good checkpoint survives."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    loss, parts = evaluator_loss(model, batch, attribute_weight)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite evaluator loss {loss.item()} ({parts}); the last checkpoint is kept")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss": loss.item(), **parts}


def resume_path(out: Path) -> Path:
    """Where an interrupted run keeps its full state (model, optimiser, step) beside the final file."""
    return out.with_name(out.name + ".resume.pt")


def train(out: Path, cfg: TrainConfig = TrainConfig(), model_config: EvaluatorConfig = EvaluatorConfig(), *,
          progress: bool = True, command: str = "") -> Evaluator:
    """Train (or resume) the evaluator and write it to `out`; the resume file is removed once `out` is written."""
    from tqdm.auto import tqdm

    out = Path(out)
    torch.manual_seed(cfg.seed)
    model = Evaluator(model_config)
    optimizer = make_optimizer(model, cfg)
    start = 0
    state_path = resume_path(out)
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("train_config") != asdict(cfg) or state.get("model_config") != asdict(model_config):
            raise EvaluatorError(
                f"{state_path} was written by a run with a different recipe; delete it to start over"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
    model = model.to(memory_format=torch.channels_last)
    log: list[dict[str, float]] = []
    began = time.time()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="evaluator", disable=not progress,
               dynamic_ncols=True)
    for step in bar:
        batch = training_batch(step, cfg)
        batch["images"] = batch["images"].contiguous(memory_format=torch.channels_last)
        parts = train_step(model, optimizer, batch, learning_rate(step, cfg), cfg.attribute_weight)
        bar.set_postfix(loss=f"{parts['loss']:.3f}", attr=f"{parts['attributes']:.4f}")
        if (step + 1) % 50 == 0:
            log.append({"step": step + 1, **{k: round(v, 5) for k, v in parts.items()}})
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            atomic_torch_save(
                {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step + 1,
                 "train_config": asdict(cfg), "model_config": asdict(model_config)},
                state_path,
            )
    model = model.to(memory_format=torch.contiguous_format).eval()
    training = {"command": command, **asdict(cfg), "seconds_this_session": round(time.time() - began, 1),
                "resumed_from_step": start, "last_losses": log[-5:]}
    save_evaluator(model, out, training)
    state_path.unlink(missing_ok=True)
    return model
