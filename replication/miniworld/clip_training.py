"""Training of a mini CLIP: seeded batches, the optimiser step, resumable training and the fp16 export."""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from replication.miniworld.attributes import (
    ATTRIBUTE_INDEX,
    CHARACTERS,
    FROWNING_THRESHOLD,
    SMILING_THRESHOLD,
    SOURCE_CHARACTER,
    SOURCE_STYLE,
    STYLES,
    sample_attributes,
)
from replication.miniworld.augment import HARD_NEGATIVE_KINDS, augment, hard_negatives
from replication.miniworld.captions import STYLE_FORMS, caption_subject
from replication.miniworld.clip_losses import (
    COLOUR_ANCHOR_ATTRIBUTES,
    GEOMETRY_ATTRIBUTES,
    attribute_loss,
    colour_anchor_loss,
    colour_kept_loss,
    direction_loss,
    in_source_colours,
    invariance_loss,
    smile_loss,
    soft_contrastive_loss,
    training_text_directions,
)
from replication.miniworld.clip_recipe import (
    SHIPPED_STAGES,
    ClipTrainConfig,
    ClipTrainingError,
    build_clip,
    model_pixels,
    stage_of,
    target_domains,
    tokenize,
)
from replication.miniworld.data import sample_batch, train_batch_seed
from replication.miniworld.render import render
from replication.runio import atomic_torch_save, repo_path
from replication.weights import file_sha256

if TYPE_CHECKING:
    import clip.model as clip_model

COLOUR_EDIT_KINDS = ("colour_shift", "greyscale", "tint")
# Smile bands of the captions: "frowning" below FROWNING_THRESHOLD, no word between, "smiling" above SMILING_THRESHOLD.
SMILE_BANDS: tuple[tuple[str, float, float], ...] = (("smiling", SMILING_THRESHOLD, 1.0),
                                                     ("", FROWNING_THRESHOLD, SMILING_THRESHOLD),
                                                     ("frowning", 0.0, FROWNING_THRESHOLD))


def training_batch(config: ClipTrainConfig, step: int) -> dict[str, Any]:
    """Batch `step` of a run: renders, hard negatives, captions and augmentation, all from the step's own seed.

    With the invariance term, also `invariance_pairs` (clean photo+human renders, colour-only edits of them, then
    `palette_pairs` faces and the same faces in other characters' colours), drawn from their own streams of the
    step's seed so the contrastive batch is the same as without the term.
    """
    rng = torch.Generator().manual_seed(train_batch_seed(config.seed, step))
    batch = sample_batch(config.batch_size, rng, hard_negative_fraction=config.hard_negative_fraction,
                         template_caption_fraction=config.template_caption_fraction)
    batch["images"] = augment(batch["images"], rng, strength=config.augment_strength)
    if config.invariance_weight > 0:
        pair_rng = torch.Generator().manual_seed(train_batch_seed(config.seed, step) + 1)
        clean = render(sample_attributes(config.invariance_pairs, pair_rng), SOURCE_STYLE, SOURCE_CHARACTER)
        edits = hard_negatives(clean, pair_rng)
        colour = torch.isin(edits.kind, torch.tensor([HARD_NEGATIVE_KINDS.index(k) for k in COLOUR_EDIT_KINDS]))
        batch["invariance_pairs"] = (clean[colour], edits.images[colour])
    if config.palette_pairs > 0:
        pair_rng = torch.Generator().manual_seed(train_batch_seed(config.seed, step) + 3)
        attrs = sample_attributes(config.palette_pairs, pair_rng)
        others = [c for c in CHARACTERS if c != SOURCE_CHARACTER]
        pick = torch.randint(len(others), (config.palette_pairs,), generator=pair_rng)
        clean = render(attrs, SOURCE_STYLE, SOURCE_CHARACTER)
        swapped = render(attrs, SOURCE_STYLE, SOURCE_CHARACTER, palette=[others[int(i)] for i in pick])
        before, after = batch["invariance_pairs"]
        batch["invariance_pairs"] = (torch.cat([before, clean]), torch.cat([after, swapped]))
    if config.direction_weight > 0:
        pair_rng = torch.Generator().manual_seed(train_batch_seed(config.seed, step) + 2)
        attrs = sample_attributes(config.direction_pairs, pair_rng)
        domains = target_domains()
        shift = torch.randint(len(domains), (config.direction_pairs,), generator=pair_rng)
        source = render(attrs, SOURCE_STYLE, SOURCE_CHARACTER)
        target = render(attrs, [domains[int(i)][3] for i in shift], [domains[int(i)][4] for i in shift])
        batch["direction_pairs"] = (source, target, shift)
        batch["direction_attrs"] = attrs
    if config.colour_kept_weight > 0:
        pair_rng = torch.Generator().manual_seed(train_batch_seed(config.seed, step) + 5)
        attrs = sample_attributes(config.colour_kept_pairs, pair_rng)
        domains = target_domains()
        allowed = torch.tensor([t for t, d in enumerate(domains) if d[3] in config.colour_kept_styles])
        shift = allowed[torch.randint(len(allowed), (config.colour_kept_pairs,), generator=pair_rng)]
        source = render(attrs, SOURCE_STYLE, SOURCE_CHARACTER)
        target = render(attrs, [domains[int(i)][3] for i in shift], [domains[int(i)][4] for i in shift])
        batch["colour_kept"] = (source, target, in_source_colours(target, source), shift)
    if config.smile_weight > 0:
        batch["smile_triplets"] = smile_triplets(config.smile_triplets,
                                                 torch.Generator().manual_seed(train_batch_seed(config.seed, step) + 4),
                                                 config.augment_strength)
    return batch


def smile_triplets(n: int, rng: torch.Generator, augment_strength: float) -> tuple[torch.Tensor, list[str]]:
    """n faces, each in a random one of the 30 domains and drawn once per SMILE_BANDS band: augmented images [3n, 3,
    64, 64] (face-major: face i is rows 3i..3i+2) and their captions, one random caption form per face."""
    attrs = sample_attributes(n, rng)
    domain = torch.randint(len(STYLES) * len(CHARACTERS), (n,), generator=rng)
    form = torch.randint(4, (n,), generator=rng)
    band_draw = torch.rand(n, len(SMILE_BANDS), generator=rng)
    rows, styles, characters, texts = [], [], [], []
    for i in range(n):
        style, character = STYLES[int(domain[i]) // len(CHARACTERS)], CHARACTERS[int(domain[i]) % len(CHARACTERS)]
        forms = STYLE_FORMS[style]
        for b, (adjective, low, high) in enumerate(SMILE_BANDS):
            row = attrs[i].clone()
            row[ATTRIBUTE_INDEX["smile"]] = low + (high - low) * band_draw[i, b]
            rows.append(row)
            styles.append(style)
            characters.append(character)
            texts.append(forms[int(form[i]) % len(forms)].format(caption_subject(character, adjective)))
    images = augment(render(torch.stack(rows), styles, characters), rng, strength=augment_strength)
    return images, texts


def lr_at(step: int, config: ClipTrainConfig) -> float:
    """Linear warm-up, then cosine decay from lr to min_lr over the remaining steps."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: torch.nn.Module, config: ClipTrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (gains, biases, embeddings of positions and logit scale are free)."""
    decay, free = [], []
    for name, param in model.named_parameters():
        (decay if param.ndim >= 2 and "positional_embedding" not in name else free).append(param)
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": free, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.98), eps=1e-6)


def train_step(model: clip_model.CLIP, optimizer: torch.optim.Optimizer, batch: dict[str, Any],
               lr: float, head: torch.nn.Linear | None = None, attribute_weight: float = 0.0, *,
               pixels: str = "raw", directions: torch.Tensor | None = None, invariance_weight: float = 0.0,
               direction_weight: float = 0.0, colour_head: torch.nn.Linear | None = None,
               colour_anchor_weight: float = 0.0, smile_weight: float = 0.0, freeze_batchnorm: bool = False,
               colour_kept_weight: float = 0.0, colour_kept_margin: float = 0.3) -> float:
    """One contrastive update on a batch (plus the attribute, invariance, direction, colour and smile terms when
    enabled); returns the loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    if freeze_batchnorm:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
    image_features = model.encode_image(model_pixels(batch["images"], pixels))
    text_features = model.encode_text(tokenize(batch["captions"], model.context_length))
    loss = soft_contrastive_loss(image_features, text_features, model.logit_scale, batch["captions"])
    if head is not None and attribute_weight > 0:
        loss = loss + attribute_weight * attribute_loss(head, image_features, batch)
    if invariance_weight > 0 and directions is not None and len(batch["invariance_pairs"][0]):
        loss = loss + invariance_weight * invariance_loss(model, *batch["invariance_pairs"], directions, pixels)
    if direction_weight > 0 and directions is not None:
        loss = loss + direction_weight * direction_loss(model, *batch["direction_pairs"], directions, pixels)
    if colour_head is not None and colour_anchor_weight > 0:
        loss = loss + colour_anchor_weight * colour_anchor_loss(model, colour_head, batch, pixels)
    if smile_weight > 0:
        loss = loss + smile_weight * smile_loss(model, *batch["smile_triplets"], pixels)
    if colour_kept_weight > 0 and directions is not None:
        loss = loss + colour_kept_weight * colour_kept_loss(model, *batch["colour_kept"], directions, pixels,
                                                            colour_kept_margin)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0.0, math.log(100.0))  # CLIP's cap on the temperature
    return float(loss.detach())


def export_state_dict(model: clip_model.CLIP, path: Path) -> None:
    """Write a plain fp16 state dict that clip.model.build_model / clip.load(path, jit=False) / load_clip read."""
    state = {k: v.detach().to(torch.float16).contiguous().clone() for k, v in model.state_dict().items()
             if not k.startswith(("attribute_head.", "colour_head."))}
    atomic_torch_save(state, path)


def train(config: ClipTrainConfig, run_dir: Path, out_path: Path, *, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) a mini CLIP; writes run_dir/state.pt periodically and the fp16 weights to out_path.

    Resuming from run_dir/state.pt (written atomically) reaches the same weights as an uninterrupted run.
    """
    run_dir = Path(run_dir)
    state_path = run_dir / "state.pt"
    model = build_clip(config.architecture, config.seed)
    init_sha256 = None  # of the file actually loaded, hashed before training in case it is replaced meanwhile
    if config.init_weights:
        init = repo_path(config.init_weights)
        if not init.is_file():
            family, index = stage_of(config.name)
            before = SHIPPED_STAGES[family][index - 1] if index > 0 else "<the preset that writes it>"
            raise ClipTrainingError(f"start weights {init} are missing; train them first with python -m "
                                    f"replication.miniworld.train_clip --name {before} --out {init}")
        init_sha256 = file_sha256(init)
        if config.init_sha256 and init_sha256 != config.init_sha256:
            raise ClipTrainingError(f"{init} has sha256 {init_sha256}, the preset expects {config.init_sha256}")
        start_weights = torch.load(init, map_location="cpu", weights_only=True)
        model.load_state_dict({k: v.float() for k, v in start_weights.items()}, strict=True)
    run_dir.mkdir(parents=True, exist_ok=True)  # after the start-weights checks: a failed start writes nothing
    head = None
    if config.attribute_weight > 0:
        torch.manual_seed(config.seed + 101)
        head = torch.nn.Linear(config.architecture.embed_dim, len(GEOMETRY_ATTRIBUTES))
        model.add_module("attribute_head", head)  # optimised and checkpointed with the model; dropped on export
    colour_head = None
    if config.colour_anchor_weight > 0:
        torch.manual_seed(config.seed + 103)
        colour_head = torch.nn.Linear(config.architecture.embed_dim, len(COLOUR_ANCHOR_ATTRIBUTES))
        model.add_module("colour_head", colour_head)
    optimizer = make_optimizer(model, config)
    start, losses = 0, []
    # the invariance term's text directions, refreshed every directions_every steps; kept in the state so a resumed
    # run uses the directions a straight run would
    held: dict[str, torch.Tensor | None] = {"directions": None}
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state["config"] != json.loads(json.dumps(asdict(config))):
            raise ClipTrainingError(f"{state_path} was written with a different config; use a new --run-dir or "
                                    "delete the old one")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, losses = int(state["step"]), list(state["losses"])
        held["directions"] = state.get("directions")

    def save_state(step: int) -> None:
        atomic_torch_save({"config": json.loads(json.dumps(asdict(config))), "model": model.state_dict(),
                           "optimizer": optimizer.state_dict(), "step": step, "losses": losses,
                           "directions": held["directions"]}, state_path)

    last_save = time.monotonic()
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc=config.name, disable=not progress)
    for step in bar:
        uses_directions = config.invariance_weight > 0 or config.direction_weight > 0
        if uses_directions and (held["directions"] is None or step % config.directions_every == 0):
            held["directions"] = training_text_directions(model)
        loss = train_step(model, optimizer, training_batch(config, step), lr_at(step, config), head,
                          config.attribute_weight, pixels=config.pixels, directions=held["directions"],
                          invariance_weight=config.invariance_weight, direction_weight=config.direction_weight,
                          colour_head=colour_head, colour_anchor_weight=config.colour_anchor_weight,
                          smile_weight=config.smile_weight, freeze_batchnorm=config.freeze_batchnorm,
                          colour_kept_weight=config.colour_kept_weight, colour_kept_margin=config.colour_kept_margin)
        losses.append(loss)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
        if time.monotonic() - last_save > config.checkpoint_every_s:
            save_state(step + 1)
            last_save = time.monotonic()
    save_state(config.steps)
    export_state_dict(model, out_path)
    return {"steps": config.steps, "final_loss_mean_last_50": sum(losses[-50:]) / max(1, len(losses[-50:])),
            "init_sha256": init_sha256}
