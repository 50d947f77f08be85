"""Frozen configs for a domain shift (task) and for NADA, filled from one TOML file per shift; unknown keys are errors."""
from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

SHIFTS_DIR = Path(__file__).resolve().parent / "shifts"
WORLDS = ("paper", "mini")
MODES = ("faithful", "fixed")
PHASES = (None, "texture", "shape", "shape_expanded", "no_fine", "all")
NOISE_MODES = ("random", "const", "none")


class ConfigError(ValueError):
    """A shift file or config value is wrong; the message is one line saying what and how to fix it."""


@dataclass(frozen=True)
class TaskConfig:
    """What to adapt: the source generator and the domain shift, with the latents every method is scored on."""

    name: str  # shift name, the TOML file's stem, e.g. "ffhq--sketch"
    world: str  # "paper" (official weights) or "mini" (the embedded mini world)
    generator: str  # weight-registry name or path of the source generator checkpoint
    source_text: str  # text describing the source domain, e.g. "photo"
    target_text: str  # text describing the target domain, e.g. "sketch"
    target_images: str | None = None  # folder of target-domain images: image-guided direction instead of text
    source_images: str | None = None  # optional folder of source images for the image-guided direction
    resolution: int | None = None  # expected generator resolution (checked against the checkpoint when given)
    eval_seeds: tuple[int, int] = (0, 1000)  # [start, stop) of per-image seeds used by every metric
    grid_seeds: tuple[int, ...] = (0, 1, 2, 3)  # seeds of the latents drawn in progress and result grids


@dataclass(frozen=True)
class NadaConfig:
    """StyleGAN-NADA hyper-parameters; defaults are the original README recipe (FFHQ photo -> sketch)."""

    mode: str = "faithful"  # "faithful": the original's behaviour incl. its quirks; "fixed": bugs B2-B4 fixed
    iterations: int = 301  # training steps
    batch: int = 2  # latents per step
    lr: float = 0.002 * 4 / 5  # Adam lr; the original scales 0.002 by its unused lazy-regularisation ratio 4/5
    betas: tuple[float, float] = (0.0, 0.99 ** (4 / 5))  # Adam betas, scaled by the same ratio as the lr
    clip_models: tuple[str, ...] = ("ViT-B/32", "ViT-B/16")  # CLIP names (registry) or file paths
    clip_model_weights: tuple[float, ...] = (1.0, 1.0)  # per-model weight of the summed loss
    lambda_direction: float = 1.0  # directional CLIP loss (the paper's loss)
    lambda_global: float = 0.0  # global CLIP loss (ablation)
    lambda_patch: float = 0.0  # patch-directional loss
    lambda_manifold: float = 0.0  # manifold-angle loss
    auto_layer_k: int = 18  # layers unfrozen per step by adaptive selection
    auto_layer_iters: int = 1  # W+ optimisation steps per selection; 0 turns adaptive selection off
    auto_layer_batch: int = 8  # latents used by the selection step
    phase: str | None = None  # fixed trainable set when auto_layer_iters == 0
    mixing: float = 0.0  # style-mixing probability
    train_truncation: float = 1.0  # truncation psi during training (none in the original)
    sample_truncation: float = 0.7  # truncation psi of sample grids
    noise_mode: str = "random"  # generator noise during training: independent random draws per call in the original
    output_interval: int = 50  # steps between sample grids
    save_interval: int = 150  # steps between resumable checkpoints (0: only at the end)
    resize_antialias: bool | None = None  # CLIP resize antialiasing; None = False in faithful mode, True in fixed

    @property
    def antialias(self) -> bool:
        return (self.mode == "fixed") if self.resize_antialias is None else self.resize_antialias


@dataclass(frozen=True)
class ShiftConfig:
    """One domain shift as read from its TOML file: the task and NADA's settings."""

    task: TaskConfig
    nada: NadaConfig = field(default_factory=NadaConfig)


def _coerce(cls: type, section: str, raw: dict[str, Any], source: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown} in [{section}]; valid keys: {sorted(known)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    for key, value in values.items():
        default = known[key].default
        if default is dataclasses.MISSING or default is None:
            continue
        # TOML has no float/int distinction a user thinks about: 1 is a fine learning rate, True is not a batch size
        fits = (isinstance(value, (int, float)) and not isinstance(value, bool) if type(default) is float else
                isinstance(value, type(default)) and (type(default) is bool or not isinstance(value, bool)))
        if not fits:
            raise ConfigError(f"{source}: [{section}] {key} must be a {type(default).__name__} like {default!r}, "
                              f"got {value!r}")
    try:
        return cls(**values)
    except TypeError as exc:  # a required key is missing
        raise ConfigError(f"{source}: [{section}] {exc}") from None


def validate(cfg: ShiftConfig, source: str = "config") -> ShiftConfig:
    """Check value ranges and consistency; return cfg unchanged or raise ConfigError."""
    t, n = cfg.task, cfg.nada
    checks = [
        (t.world in WORLDS, f"[task] world must be one of {WORLDS}, got {t.world!r}"),
        (bool(t.source_text.strip()) or t.source_images is not None, "[task] source_text is empty"),
        (bool(t.target_text.strip()) or t.target_images is not None, "[task] target_text is empty"),
        (n.mode in MODES, f"[nada] mode must be one of {MODES}, got {n.mode!r}"),
        (n.iterations >= 1, "[nada] iterations must be >= 1"),
        (n.batch >= 1, "[nada] batch must be >= 1"),
        (len(n.clip_models) >= 1, "[nada] clip_models is empty"),
        (len(n.clip_models) == len(n.clip_model_weights),
         f"[nada] clip_models ({len(n.clip_models)}) and clip_model_weights ({len(n.clip_model_weights)}) differ in length"),
        (n.phase in PHASES, f"[nada] phase must be one of {PHASES}, got {n.phase!r}"),
        (0.0 <= n.mixing <= 1.0, "[nada] mixing is a probability in [0, 1]"),
        (n.noise_mode in NOISE_MODES, f"[nada] noise_mode must be one of {NOISE_MODES}, got {n.noise_mode!r}"),
        (n.auto_layer_iters >= 0 and n.auto_layer_k >= 0, "[nada] auto_layer_iters and auto_layer_k must be >= 0"),
        (len(t.eval_seeds) == 2 and t.eval_seeds[0] < t.eval_seeds[1], "[task] eval_seeds is [start, stop) with start < stop"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{source}: {message}")
    return cfg


def parse_shift(data: dict[str, Any], name: str, source: str = "config") -> ShiftConfig:
    """Build a ShiftConfig from a parsed TOML dict; unknown sections or keys are ConfigErrors."""
    unknown = sorted(set(data) - {"task", "nada"})
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {unknown}; valid: ['task', 'nada']")
    task = _coerce(TaskConfig, "task", {"name": name, **data.get("task", {})}, source)
    nada = _coerce(NadaConfig, "nada", data.get("nada", {}), source)
    return validate(ShiftConfig(task=task, nada=nada), source)


def shift_path(shift: str) -> Path:
    """A shift name ("ffhq--sketch") resolves in replication/shifts/; anything with a suffix is taken as a path."""
    path = Path(shift)
    if path.suffix != ".toml":
        path = SHIFTS_DIR / f"{shift}.toml"
    if not path.is_file():
        known = ", ".join(available_shifts())
        raise ConfigError(f"unknown shift {shift!r}: no file {path}; known shifts: {known}")
    return path


def load_shift(shift: str, overrides: dict[str, dict[str, Any]] | None = None) -> ShiftConfig:
    """Read one shift TOML (by name or path), apply optional {section: {key: value}} overrides, validate."""
    path = shift_path(shift)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(values)
    return parse_shift(data, path.stem, str(path))


def available_shifts() -> list[str]:
    return sorted(p.stem for p in SHIFTS_DIR.glob("*.toml"))


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-safe nested dict of a config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))
