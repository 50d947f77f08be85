"""Frozen configs for a domain shift (task) and for NADA, filled from one TOML file per shift; unknown keys are errors."""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

SHIFTS_DIR = Path(__file__).resolve().parent / "shifts"
WORLDS = ("paper", "mini")
MODES = ("faithful", "fixed")
PHASES = (None, "texture", "shape", "shape_expanded", "no_fine", "all")
NOISE_MODES = ("random", "const", "none")
SEED_LIMIT = 2 ** 32  # seeds are in [0, SEED_LIMIT): what every torch.Generator.manual_seed call here accepts


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


def _fits(value: Any, hint: Any) -> bool:
    """Whether a TOML value fits a field's annotation; TOML has no float/int distinction a user thinks about, so 1
    is a fine learning rate, but True is not a batch size."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


_NAMES = {str: ("a string", "strings"), int: ("an integer", "integers"), float: ("a number", "numbers"),
          bool: ("true or false", "booleans")}


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # None cannot be written in TOML: leaving the key out gives it
        return " or ".join(_describe(arg) for arg in args if arg is not type(None))
    if origin is tuple:
        count = "" if len(args) == 2 and args[1] is Ellipsis else f"{len(args)} "
        return f"a list of {count}{_NAMES[args[0]][1]}"
    return _NAMES[hint][0]


def _coerce(cls: type, section: str, raw: dict[str, Any], source: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown} in [{section}]; valid keys: {sorted(known)}")
    missing = [f.name for f in fields(cls) if f.name not in raw and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{source}: [{section}] lacks required key(s) {missing}; "
                          f"replication/shifts/ffhq--sketch.toml shows each")
    hints = typing.get_type_hints(cls)
    for key, value in raw.items():
        if not _fits(value, hints[key]):
            default = known[key].default
            example = "" if default is dataclasses.MISSING or default is None else f" like {_toml(default)}"
            raise ConfigError(f"{source}: [{section}] {key} must be {_describe(hints[key])}{example}, got {value!r}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def _toml(value: Any) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def _seeds_ok(seeds: tuple[int, ...]) -> bool:
    return all(0 <= seed < SEED_LIMIT for seed in seeds)


def _power_of_two(n: int) -> bool:
    return n >= 4 and n & (n - 1) == 0


def validate(cfg: ShiftConfig, source: str = "config") -> ShiftConfig:
    """Check value ranges and consistency; return cfg unchanged or raise ConfigError naming the key and the fix."""
    t, n = cfg.task, cfg.nada
    floats = {"lr": n.lr, "betas": n.betas, "clip_model_weights": n.clip_model_weights,
              "lambda_direction": n.lambda_direction, "lambda_global": n.lambda_global, "lambda_patch": n.lambda_patch,
              "lambda_manifold": n.lambda_manifold, "mixing": n.mixing, "train_truncation": n.train_truncation,
              "sample_truncation": n.sample_truncation}
    lambdas = {"lambda_direction": n.lambda_direction, "lambda_global": n.lambda_global,
               "lambda_patch": n.lambda_patch, "lambda_manifold": n.lambda_manifold}
    checks = [
        (t.world in WORLDS, f"[task] world must be one of {WORLDS}, got {t.world!r}"),
        (bool(t.generator.strip()), "[task] generator is empty; give a weight-registry name or a checkpoint path"),
        (bool(t.source_text.strip()) or t.source_images is not None, "[task] source_text is empty"),
        (bool(t.target_text.strip()) or t.target_images is not None, "[task] target_text is empty"),
        (t.resolution is None or _power_of_two(t.resolution),
         f"[task] resolution must be a power of two like 256 or 1024, got {t.resolution}"),
        (len(t.eval_seeds) == 2 and t.eval_seeds[0] < t.eval_seeds[1], "[task] eval_seeds is [start, stop) with start < stop"),
        (_seeds_ok(t.eval_seeds[:1]) and all(stop <= SEED_LIMIT for stop in t.eval_seeds[1:]),
         f"[task] eval_seeds must lie in [0, {SEED_LIMIT}], got {list(t.eval_seeds)}"),
        (len(t.grid_seeds) >= 1, "[task] grid_seeds is empty; list at least one seed, e.g. grid_seeds = [0, 1, 2, 3]"),
        (_seeds_ok(t.grid_seeds), f"[task] grid_seeds must be seeds in [0, {SEED_LIMIT}), got {list(t.grid_seeds)}"),
        (n.mode in MODES, f"[nada] mode must be one of {MODES}, got {n.mode!r}"),
        *[(all(math.isfinite(v) for v in (value if isinstance(value, tuple) else (value,))),
           f"[nada] {key} must be finite, got {value}") for key, value in floats.items()],
        (n.iterations >= 1, "[nada] iterations must be >= 1"),
        (n.batch >= 1, "[nada] batch must be >= 1"),
        (n.lr > 0, f"[nada] lr must be > 0, got {n.lr}"),
        (all(0.0 <= b < 1.0 for b in n.betas),
         f"[nada] betas are Adam's two decay rates in [0, 1), got {list(n.betas)}"),
        (len(n.clip_models) >= 1, "[nada] clip_models is empty"),
        (all(name.strip() for name in n.clip_models), "[nada] clip_models holds an empty name"),
        (len(n.clip_models) == len(n.clip_model_weights),
         f"[nada] clip_models ({len(n.clip_models)}) and clip_model_weights ({len(n.clip_model_weights)}) differ in length"),
        (all(w >= 0 for w in n.clip_model_weights) and any(w > 0 for w in n.clip_model_weights),
         f"[nada] clip_model_weights must be >= 0 with at least one > 0, got {list(n.clip_model_weights)}"),
        *[(value >= 0, f"[nada] {key} must be >= 0 (0 turns that loss off), got {value}")
          for key, value in lambdas.items()],
        (any(v > 0 for v in lambdas.values()), "[nada] every loss weight (lambda_*) is 0; set lambda_direction = 1 for "
                                               "NADA's loss"),
        (n.phase in PHASES, f"[nada] phase must be one of {PHASES}, got {n.phase!r}"),
        (0.0 <= n.mixing <= 1.0, "[nada] mixing is a probability in [0, 1]"),
        (0.0 <= n.train_truncation <= 1.0, f"[nada] train_truncation is a truncation psi in [0, 1] (1: none), got "
                                           f"{n.train_truncation}"),
        (0.0 <= n.sample_truncation <= 1.0, f"[nada] sample_truncation is a truncation psi in [0, 1] (1: none), got "
                                            f"{n.sample_truncation}"),
        (n.noise_mode in NOISE_MODES, f"[nada] noise_mode must be one of {NOISE_MODES}, got {n.noise_mode!r}"),
        (n.auto_layer_iters >= 0, "[nada] auto_layer_iters must be >= 0 (0 turns adaptive layer selection off)"),
        (n.auto_layer_k >= 1 or n.auto_layer_iters == 0,
         "[nada] auto_layer_k must be >= 1 while auto_layer_iters > 0 (auto_layer_iters = 0 trains a fixed phase)"),
        (n.auto_layer_k >= 0, "[nada] auto_layer_k must be >= 0"),
        (n.auto_layer_batch >= 1, "[nada] auto_layer_batch must be >= 1"),
        (n.output_interval >= 1, f"[nada] output_interval must be >= 1 (steps between sample grids; a value above "
                                 f"iterations draws only the first and final grids), got {n.output_interval}"),
        (n.save_interval >= 0, f"[nada] save_interval must be >= 0 (0: no resumable checkpoint before the end), got "
                               f"{n.save_interval}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{source}: {message}")
    return cfg


def parse_shift(data: dict[str, Any], name: str, source: str = "config") -> ShiftConfig:
    """Build a ShiftConfig from a parsed TOML dict; unknown sections or keys are ConfigErrors."""
    unknown = sorted(set(data) - {"task", "nada", "verify"})
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {unknown}; valid: ['task', 'nada', 'verify']")
    parse_tolerances(data.get("verify", {}), source)  # checked with the rest; it does not change what trains
    for section in ("task", "nada"):
        if not isinstance(data.get(section, {}), dict):
            raise ConfigError(f"{source}: {section} must be the [{section}] table, got {data[section]!r}")
    task = _coerce(TaskConfig, "task", {"name": name, **data.get("task", {})}, source)
    nada = _coerce(NadaConfig, "nada", data.get("nada", {}), source)
    return validate(ShiftConfig(task=task, nada=nada), source)


def parse_tolerances(table: Any, source: str = "config") -> dict[str, float]:
    """A shift's [verify] table: stored metric name without its sample suffix -> the largest |fresh - reference| of
    its mean over seeds that `make verify` accepts, e.g. mini_target_accuracy = 0.08."""
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: verify must be the [verify] table, got {table!r}")
    for metric, tolerance in table.items():
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
            raise ConfigError(f"{source}: [verify] {metric} must be a tolerance >= 0, like {metric} = 0.05; "
                              f"got {tolerance!r}")
    return {metric: float(tolerance) for metric, tolerance in table.items()}


def load_tolerances(shift: str) -> dict[str, float]:
    """The [verify] tolerances of a shift file (empty when it states none)."""
    path = shift_path(shift)
    return parse_tolerances(tomllib.loads(path.read_text()).get("verify", {}), str(path))


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
