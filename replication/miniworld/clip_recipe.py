"""The mini-world CLIPs' architecture, training config and shipped recipe stages, and the model's build and inputs."""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # clip imports the deprecated pkg_resources
    import clip
    import clip.model as clip_model

from replication.clip_models import clip_normalise
from replication.miniworld.attributes import CHARACTERS, SOURCE_CHARACTER, SOURCE_STYLE, STYLES
from replication.runio import REPO_ROOT

WEIGHTS_DIR = REPO_ROOT / "replication" / "miniworld" / "weights"
RUNS_DIR = REPO_ROOT / "artifacts" / "mini_clip"


class ClipTrainingError(ValueError):
    """A training or measurement request that cannot be carried out (unknown name, missing file, bad setting)."""


@dataclass(frozen=True)
class ClipArchitecture:
    """Sizes of an OpenAI `clip.model.CLIP`; heads are width // 64 because clip's build_model infers them that way.

    `vision_layers` an int: a ViT image tower of that depth; a tuple of four block counts: clip's ModifiedResNet (as
    in RN50), whose stem width is `vision_width` and which ignores the patch size. The shipped CLIPs use a
    (1, 1, 1, 1) ResNet tower because the small ViT towers never learn the smile.
    """

    embed_dim: int
    vision_layers: int | tuple[int, int, int, int]
    vision_width: int
    vision_patch_size: int
    transformer_width: int
    transformer_layers: int
    image_resolution: int = 64
    context_length: int = 32
    vocab_size: int = 49408

    @property
    def transformer_heads(self) -> int:
        return max(1, self.transformer_width // 64)


@dataclass(frozen=True)
class ClipTrainConfig:
    """Everything that determines a mini CLIP's weights (with the code)."""

    name: str
    architecture: ClipArchitecture
    seed: int
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 100
    weight_decay: float = 0.05
    hard_negative_fraction: float = 0.25
    template_caption_fraction: float = 0.25
    augment_strength: float = 1.0
    checkpoint_every_s: float = 180.0
    # Weight of an auxiliary loss: one linear head, shared by all 30 domains, reads the colour-free attributes
    # (GEOMETRY_ATTRIBUTES) from the unit image embedding. Without it every sketch embeds almost alike (mean pairwise
    # cosine 0.90), so a generator collapsed onto one sketch scores nearly as well under NADA's directional loss as a
    # faithful one (cosine 0.93 with the true paired differences). The head is training-only and never exported.
    attribute_weight: float = 0.0
    # Warm start: fp16 weights of the same architecture (repo-relative path) and their sha256.
    init_weights: str = ""
    init_sha256: str = ""
    # Pixels the image tower sees. "clip": CLIP's mean/std normalisation of [0, 1] images, exactly what ClipEncoder
    # (NADA's losses, the metrics) feeds the model. "raw": the [-1, 1] render itself. Every user sees the model
    # through ClipEncoder, where raw-trained CLIPs read characters and glasses worse than when fed raw pixels, so
    # every stage after the first trains on "clip".
    pixels: str = "raw"
    # Weight of a colour-invariance term: photo+human renders x and colour-only edits x' of them (strong hue shifts,
    # greyscale, tints: the negatives bar's kinds) give a difference unit(E(x') - E(x)) whose squared cosine with
    # every target's text direction is penalised. Captions alone left greyscale photos at cosine 0.21 (A) and 0.22 (B)
    # with human -> zombie, which NADA would follow as a shortcut.
    invariance_weight: float = 0.0
    invariance_pairs: int = 24
    # Palette swaps added to the invariance term: a photo+human render and the same face in a random other
    # character's colours (render(..., palette=)), its shapes unchanged. Without them CLIP A scored NADA's grey-green
    # human faces as high as true zombies: the colour half of a character change was worth as much as the whole, so
    # NADA had no reason to draw scars, sockets or stitches.
    palette_pairs: int = 0
    # Weight of a paired-direction term: renders of the same attributes in the source and in a random target domain
    # give unit(E(target) - E(source)), pulled toward that shift's text direction (1 - cosine). Without it the true
    # photo -> sketch change sits at cosine 0.74 (mean direction) from the text direction, so NADA's directional
    # loss is maximised by images that are not sketches of the same face.
    direction_weight: float = 0.0
    direction_pairs: int = 24
    # Weight of a colour anchor: a second training-only head reads skin tone and hair colour from the unit embeddings
    # of the paired-direction term's un-augmented renders (source and target), where the target draws them. Colour
    # augmentation hides both from the contrastive loss, so without it CLIP A scored a zombie drawn with darker skin
    # as high as the true one and NADA's zombies turned dark.
    colour_anchor_weight: float = 0.0
    # Weight of a smile term (NegCLIP-style hard negatives): one face in a random domain rendered three times, smiling,
    # plain and frowning (smile drawn in each caption band, nothing else changed), must match its own of the three
    # captions that differ only in that word. Captions alone left smile out of both embeddings (smiling zero-shot at
    # the base rate): a batch almost never holds two captions that only the mouth tells apart, so the contrastive
    # loss had no reason to look at it.
    smile_weight: float = 0.0
    smile_triplets: int = 16
    directions_every: int = 50  # steps between refreshes of the (no-grad) text directions the term uses
    # Weight of a colour-kept ranking term: renders of the same faces in the source and in a target style of
    # colour_kept_styles, and the target redrawn in the source's colours (in_source_colours); the true target's paired
    # difference must align with the shift's text direction by colour_kept_margin more than the recoloured one's
    # (hinge). Without it a CLIP can credit a sketch in photo colours as fully as the true, grey one, and NADA's
    # sketches keep the photo's colours.
    colour_kept_weight: float = 0.0
    colour_kept_pairs: int = 16
    colour_kept_margin: float = 0.3
    colour_kept_styles: tuple[str, ...] = ("sketch",)
    # Hold the image tower's BatchNorm layers (ModifiedResNet only; the ViT towers have none) at their running
    # statistics, as ClipEncoder, NADA and the measurement use them. In train mode every auxiliary batch (photo+human
    # invariance pairs, paired directions, smile triplets) is normalised by its own statistics, so what the terms teach
    # holds for batch statistics and not for the eval-mode model, and their forward passes drag the running statistics
    # toward photo+human renders.
    freeze_batchnorm: bool = False

    def __post_init__(self) -> None:
        if self.palette_pairs > 0 and self.invariance_weight <= 0:
            raise ClipTrainingError("palette_pairs joins the invariance term; give invariance_weight > 0 as well")
        if self.colour_kept_weight > 0 and self.direction_weight <= 0:
            raise ClipTrainingError("colour_kept_weight uses the paired-direction term's text directions; give "
                                    "direction_weight > 0 as well")
        if self.colour_anchor_weight > 0 and self.direction_weight <= 0:
            raise ClipTrainingError("colour_anchor_weight reads the paired-direction renders; give direction_weight > 0 "
                                    "as well")


# ------------------------------------------------------------------------------------------------ shipped stages
# Each CLIP trains in resumable stages: stage k + 1 starts from artifacts/mini_clip/<family>_stage<k>.pt, which
# stage k writes, and the last stage writes the shipped file. Start files are not pinned by sha256, since a retrain
# elsewhere need not reproduce them bit for bit; every run records the sha256 of its start file in its summary.
def _stage_file(family: str, k: int) -> str:
    return f"artifacts/mini_clip/{family}_stage{k}.pt"


_RESNET_A = ClipArchitecture(embed_dim=96, vision_layers=(1, 1, 1, 1), vision_width=24, vision_patch_size=8,
                             transformer_width=96, transformer_layers=3)
_RESNET_B = replace(_RESNET_A, vision_width=16)
# Stage 2: the attribute-anchoring and colour-invariance terms join, on the pixels ClipEncoder feeds.
_ANCHORED = {"steps": 1500, "lr": 1e-3, "warmup_steps": 50, "attribute_weight": 10.0, "pixels": "clip",
             "invariance_weight": 5.0}
# The smile term at weight 6 on twice the triplets, at a low lr: at weight 1 most smiles were still read as plain.
_SMILING = {"steps": 1200, "lr": 3e-4, "warmup_steps": 20, "smile_weight": 6.0, "smile_triplets": 32}
# CLIP A guides NADA, so it also learns the paired directions, with palette swaps and the colour anchor.
_DIRECTED = {"steps": 300, "lr": 3e-4, "warmup_steps": 20, "direction_weight": 5.0, "palette_pairs": 16,
             "colour_anchor_weight": 20.0}

_CLIP_A = ClipTrainConfig(name="clip_a", architecture=_RESNET_A, seed=1, steps=1400, smile_weight=1.0)
# From stage 2 on, CLIP A holds its BatchNorm statistics (freeze_batchnorm), so the auxiliary terms hold for the
# eval-mode model that NADA uses.
_CLIP_A_ANCHORED = replace(_CLIP_A, name="clip_a_anchored", init_weights=_stage_file("clip_a", 1),
                           freeze_batchnorm=True, **_ANCHORED)
_CLIP_A_SMILING = replace(_CLIP_A_ANCHORED, name="clip_a_smiling", init_weights=_stage_file("clip_a", 3),
                          **_SMILING)
# The smiling and directed terms together first; then a smiling stage to sharpen the smile and the directed stage
# again, which ends on the paired directions so the shipped file keeps them.
_CLIP_A_JOINED = replace(_CLIP_A_SMILING, name="clip_a_joined", init_weights=_stage_file("clip_a", 2),
                         **{**_DIRECTED, "steps": 600})
_CLIP_A_DIRECTED = replace(_CLIP_A_SMILING, name="clip_a_directed", init_weights=_stage_file("clip_a", 4),
                           **_DIRECTED)

_CLIP_B = ClipTrainConfig(name="clip_b", architecture=_RESNET_B, seed=2, steps=1200, hard_negative_fraction=0.15,
                          smile_weight=1.0)
_CLIP_B_ANCHORED = replace(_CLIP_B, name="clip_b_anchored", init_weights=_stage_file("clip_b", 1), **_ANCHORED)
_CLIP_B_SMILING = replace(_CLIP_B_ANCHORED, name="clip_b_smiling", init_weights=_stage_file("clip_b", 2), **_SMILING)

PRESETS: dict[str, ClipTrainConfig] = {config.name: config for config in (
    _CLIP_A, _CLIP_A_ANCHORED, _CLIP_A_JOINED, _CLIP_A_SMILING, _CLIP_A_DIRECTED,
    _CLIP_B, _CLIP_B_ANCHORED, _CLIP_B_SMILING)}
SHIPPED_STAGES: dict[str, tuple[str, ...]] = {
    "clip_a": ("clip_a", "clip_a_anchored", "clip_a_joined", "clip_a_smiling", "clip_a_directed"),
    "clip_b": ("clip_b", "clip_b_anchored", "clip_b_smiling"),
}


def stage_of(name: str) -> tuple[str, int]:
    """(family, index) of a preset in SHIPPED_STAGES, e.g. ("clip_a", 1) for clip_a_anchored; (name, 0) otherwise."""
    for family, stages in SHIPPED_STAGES.items():
        if name in stages:
            return family, stages.index(name)
    return name, 0


def default_weights_path(name: str, measuring: bool) -> Path:
    """Where a preset's weights go: a family's last stage (and --measure) is the shipped file, earlier stages stay in
    artifacts/mini_clip/<family>_stage<k>.pt, where the next stage's init_weights reads them."""
    family, index = stage_of(name)
    stages = SHIPPED_STAGES.get(family, (name,))
    if measuring or index == len(stages) - 1:
        return WEIGHTS_DIR / f"{family}.pt"
    return RUNS_DIR / f"{family}_stage{index + 1}.pt"


def recipe_command(name: str) -> str:
    """The commands that retrain a CLIP family from nothing (every stage of its chain, in order)."""
    return " && ".join(f"python -m replication.miniworld.train_clip --name {stage}" for stage in SHIPPED_STAGES[name])


# ------------------------------------------------------------------------------------------------ model and input
def build_clip(arch: ClipArchitecture, seed: int) -> clip_model.CLIP:
    """A freshly initialised fp32 CLIP of the given sizes (clip's own initialisation, seeded)."""
    torch.manual_seed(seed)
    return clip_model.CLIP(
        embed_dim=arch.embed_dim, image_resolution=arch.image_resolution, vision_layers=arch.vision_layers,
        vision_width=arch.vision_width, vision_patch_size=arch.vision_patch_size,
        context_length=arch.context_length, vocab_size=arch.vocab_size,
        transformer_width=arch.transformer_width, transformer_heads=arch.transformer_heads,
        transformer_layers=arch.transformer_layers,
    ).float()


def tokenize(texts: Sequence[str], context_length: int = 32) -> torch.Tensor:
    """The standard CLIP BPE tokens [N, context_length]; raises if a caption does not fit (captions are < 30)."""
    return clip.tokenize(list(texts), context_length=context_length)


def model_pixels(images: torch.Tensor, pixels: str) -> torch.Tensor:
    """What the image tower is fed for renders in [-1, 1]: CLIP-normalised ("clip", as ClipEncoder) or as is ("raw")."""
    if pixels == "clip":
        return clip_normalise((images.float() + 1.0) / 2.0)
    if pixels == "raw":
        return images
    raise ClipTrainingError(f"pixels must be 'clip' or 'raw', got {pixels!r}")


def target_domains() -> list[tuple[str, str, str, str, str]]:
    """(label, text source, text target, style, character) of every non-source style (as human) and character
    (as photo): the single-domain shifts NADA is asked to make in the mini world."""
    out = [(s, SOURCE_STYLE, s, s, SOURCE_CHARACTER) for s in STYLES if s != SOURCE_STYLE]
    out += [(c, SOURCE_CHARACTER, c, SOURCE_STYLE, c) for c in CHARACTERS if c != SOURCE_CHARACTER]
    return out
