"""NADA training loop (paper section 4): a frozen and a trainable StyleGAN2, CLIP guidance, adaptive layer freezing."""
from __future__ import annotations

import copy
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torchvision.utils import make_grid, save_image
from tqdm.auto import tqdm

from replication.config import NadaConfig, ShiftConfig, to_dict
from replication.networks import Generator
from replication.runio import (NonFiniteState, StatsLog, atomic_write_bytes, environment_record, is_done, mark_done,
                               remove_temp_files, run_lock, save_checked, write_json)

RESUME_NAME = "resume.pt"
PREVIOUS_NAME = "resume.prev.pt"  # the resume state before the latest, kept until the run is done
FINAL_NAME = "G_tgt.pt"
GRID_MAX_PX = 256  # sample grids are downscaled to this size per image so results/ stays small
# Images live in [-1, 1] (healthy mini runs stay under pixel rms 1); at 10 times that nearly every pixel clamps to a
# flat colour, which is weights running away, not adaptation. Relative to the source for generators that render larger.
IMAGE_RMS_LIMIT = 10.0


class TrainingDiverged(RuntimeError):
    """The loss or a gradient became NaN/inf or the images ran away; only states that passed the checks were saved."""


class ImagesRanAway(TrainingDiverged):
    """G_tgt's images left the image range: the weights of this step are bad and are not saved."""


class RunConflictError(ValueError):
    """The run directory already holds a run with a different configuration."""


class RunBusyError(RunConflictError):
    """Another process holds the run directory's lock: it is training that run now."""


def _what_trains(resolved: dict) -> dict:
    """A resolved run config without the evaluation latents: scoring more of them changes no trained weight."""
    task = {k: v for k, v in resolved.get("task", {}).items() if k != "eval_seeds"}
    return {**resolved, "task": task}


@dataclass
class StepContext:
    """What one training step needs besides the two generators; built once per run."""

    guidance: Callable  # (x_src, x_tgt) -> (loss, stats); see replication.losses.ClipGuidance
    select: Callable | None  # (G_tgt, rng) -> list of module names to train this step, or None for a fixed set
    cfg: NadaConfig
    # True: guidance is called (x_src, x_tgt, z) with the batch's latents; the mini world's paired oracle renders
    # each latent's true target from them (baselines/oracle.py). No text-guided method sees z.
    guidance_takes_latents: bool = False
    # Which tensors of G_tgt train, (G_tgt) -> parameters, in place of the phase's modules; for a method that trains
    # part of a module (baselines/stylespace.py: the style offsets). Needs select None.
    trainable: Callable | None = None
    # A method's own settings, recorded in config.json beside the shift's and checked on resume like them.
    extra_config: dict | None = None


def latents_from_seeds(seeds, style_dim: int, device: torch.device) -> torch.Tensor:
    """One z per seed, independent of how many seeds are drawn together, so every method sees the same latents."""
    return torch.cat([torch.randn(1, style_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds]).to(device)


def draw_noise(G: Generator, batch: int, rng: torch.Generator) -> list[torch.Tensor]:
    """Fresh N(0, 1) noise maps on rng's device, shaped like G's registered buffers, one per noise layer."""
    shapes = [getattr(G.noises, f"noise_{i}").shape[-2:] for i in range(G.num_layers)]
    return [torch.randn(batch, 1, *hw, generator=rng, device=rng.device) for hw in shapes]


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.detach().float().pow(2).mean().sqrt()


def image_runaway(rms_tgt: float, rms_src: float) -> str | None:
    """Why images of pixel rms rms_tgt count as diverged beside the source's rms_src, or None when they don't."""
    limit = IMAGE_RMS_LIMIT * max(1.0, rms_src)
    if rms_tgt <= limit:
        return None
    return f"the images ran away (pixel rms {rms_tgt:.3g} > {limit:.3g})"


def synthesis_params(G: Generator) -> list[torch.nn.Parameter]:
    return [p for name, p in G.named_parameters() if not name.startswith("style.")]


def render_pair(G_src: Generator, G_tgt: Generator, z: torch.Tensor, cfg: NadaConfig, rng: torch.Generator,
                mix_z: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """x_src without grad, x_tgt with grad, from the same w of the frozen mapping (paper section 4)."""
    with torch.no_grad():
        styles = [G_src.mapping(z)] + ([G_src.mapping(mix_z)] if mix_z is not None else [])
    faithful = cfg.mode == "faithful"
    inject_src = inject_tgt = None
    if mix_z is not None:
        # The original lets each generator draw its own crossover (bug B3); the fixed mode shares one.
        def draw_index() -> int:
            return int(torch.randint(1, G_src.n_latent, (1,), generator=rng, device=rng.device))

        inject_src = draw_index()
        inject_tgt = draw_index() if faithful else inject_src
    w_src = G_src.make_wplus(styles, input_is_latent=True, inject_index=inject_src)
    w_tgt = G_tgt.make_wplus(styles, input_is_latent=True, inject_index=inject_tgt)
    if cfg.noise_mode == "random":
        noise_src = draw_noise(G_src, z.shape[0], rng)
        # Independent noise per generator as in the original; the fixed mode renders both with the same noise so the
        # image difference measures the change of weights only.
        noise_tgt = draw_noise(G_src, z.shape[0], rng) if faithful else noise_src
        kw_src, kw_tgt = dict(noise_mode="given", noise=noise_src), dict(noise_mode="given", noise=noise_tgt)
    else:
        kw_src = kw_tgt = dict(noise_mode=cfg.noise_mode)
    with torch.no_grad():
        x_src = G_src.synthesis(w_src, **kw_src)
    x_tgt = G_tgt.synthesis(w_tgt, **kw_tgt)
    return x_src, x_tgt


def train_step(G_src: Generator, G_tgt: Generator, optimizer: torch.optim.Optimizer, ctx: StepContext,
               rng: torch.Generator, step: int) -> dict:
    """One NADA iteration. Returns its statistics; raises TrainingDiverged before touching the weights on NaN/inf."""
    cfg = ctx.cfg
    chosen = ctx.select(G_tgt, rng) if ctx.select is not None else None
    z = torch.randn(cfg.batch, G_src.style_dim, generator=rng, device=rng.device)
    mix = cfg.mixing > 0 and float(torch.rand((), generator=rng, device=rng.device)) < cfg.mixing
    mix_z = torch.randn(cfg.batch, G_src.style_dim, generator=rng, device=rng.device) if mix else None
    x_src, x_tgt = render_pair(G_src, G_tgt, z, cfg, rng, mix_z)
    loss, stats = ctx.guidance(x_src, x_tgt, z) if ctx.guidance_takes_latents else ctx.guidance(x_src, x_tgt)
    faithful_grads = cfg.mode == "faithful" and ctx.select is not None
    optimizer.zero_grad(set_to_none=not faithful_grads)
    # one device sync for the loss and both images' scale
    loss_value, rms_tgt, rms_src = torch.stack([loss.detach().float(), _rms(x_tgt), _rms(x_src)]).tolist()
    runaway = image_runaway(rms_tgt, rms_src)
    if runaway:
        raise ImagesRanAway(f"{runaway} at step {step}")
    if not math.isfinite(loss_value):
        raise TrainingDiverged(f"loss is {loss_value} at step {step}")
    loss.backward()
    if faithful_grads:
        # The original's selection pass back-propagated into every synthesis weight and torch 1.7's zero_grad kept
        # zero tensors, so Adam stepped every synthesis parameter (zero update, decaying second moment) from then on.
        for p in synthesis_params(G_tgt):
            if p.grad is None:
                p.grad = torch.zeros_like(p)
    named_grads = [(n, p.grad) for n, p in G_tgt.named_parameters() if p.grad is not None]
    # one device sync for all gradients; names are only looked up on failure
    if named_grads and not bool(torch.stack([torch.isfinite(g).all() for _, g in named_grads]).all()):
        bad = next(n for n, g in named_grads if not torch.isfinite(g).all())
        raise TrainingDiverged(f"non-finite gradient in {bad} at step {step}")
    optimizer.step()
    row = {"step": step, "loss": loss_value, **{k: float(v) for k, v in stats.items()}}
    if chosen is not None:
        row["layers"] = list(chosen)
    return row


def save_grid(path: Path, G_src: Generator, G_tgt: Generator, z_grid: torch.Tensor, truncation: float,
              w_avg: torch.Tensor) -> None:
    """Source row above adapted row, at the sampling truncation and the generators' fixed noise."""
    with torch.no_grad():
        rows = []
        for G in (G_src, G_tgt):
            was_training = G.training
            G.eval()
            w = G_src.mapping(z_grid)
            wplus = G.make_wplus([w], input_is_latent=True, truncation=truncation, truncation_latent=w_avg)
            rows.append(G.synthesis(wplus, noise_mode="const"))
            G.train(was_training)
        images = torch.cat(rows).clamp(-1, 1).add(1).div(2).float().cpu()
        if images.shape[-1] > GRID_MAX_PX:
            images = torch.nn.functional.interpolate(images, size=GRID_MAX_PX, mode="area")
        buffer = io.BytesIO()
        save_image(make_grid(images, nrow=z_grid.shape[0], padding=2), buffer, format="png")
        atomic_write_bytes(path, buffer.getvalue())


def _grid_rms(G_src: Generator, G: Generator, z: torch.Tensor) -> float:
    """Pixel rms of G's images of z (source mapping, no truncation, fixed noise): the divergence check of a state."""
    with torch.no_grad():
        was_training = G.training
        G.eval()
        x = G.synthesis(G.make_wplus([G_src.mapping(z)], input_is_latent=True), noise_mode="const")
        G.train(was_training)
    return float(_rms(x))


def _rng_states(generators: list[torch.Generator]) -> dict:
    """Every random state a run draws from: its own generator, the guidance's (patch crops) and torch's global one."""
    return {"rng": generators[0].get_state(), "guidance_rngs": [g.get_state() for g in generators[1:]],
            "torch_rng": torch.get_rng_state()}


def _resume_state(run_dir: Path, G_tgt: Generator, optimizer, generators: list[torch.Generator]) -> int:
    path = run_dir / "checkpoints" / RESUME_NAME
    if not path.exists():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    G_tgt.load_state_dict(state["G_tgt"])
    optimizer.load_state_dict(state["optimizer"])
    generators[0].set_state(state["rng"])
    for generator, saved in zip(generators[1:], state.get("guidance_rngs", [])):
        generator.set_state(saved)
    if "torch_rng" in state:
        torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


def _save_resume(run_dir: Path, step: int, G_tgt: Generator, optimizer, rng_states: dict) -> None:
    """Written beside the last one, which is kept as resume.prev.pt once the new one is read back finite."""
    checkpoints = run_dir / "checkpoints"
    save_checked({"step": step, "G_tgt": G_tgt.state_dict(), "optimizer": optimizer.state_dict(), **rng_states},
                 checkpoints / RESUME_NAME, previous=checkpoints / PREVIOUS_NAME)


def _roll_back(run_dir: Path) -> int | None:
    """resume.pt holds weights that just ran away: put resume.prev.pt in its place (or drop it when there is none).

    Returns the step resume.pt now holds, or None."""
    checkpoints = run_dir / "checkpoints"
    previous = checkpoints / PREVIOUS_NAME
    if not previous.exists():
        (checkpoints / RESUME_NAME).unlink(missing_ok=True)
        return None
    step = int(torch.load(previous, map_location="cpu", weights_only=True)["step"])
    os.replace(previous, checkpoints / RESUME_NAME)
    return step


def _check_config(run_dir: Path, resolved: dict) -> None:
    config_path = run_dir / "config.json"
    if config_path.exists():
        if _what_trains(json.loads(config_path.read_text())) != _what_trains(json.loads(json.dumps(resolved))):
            raise RunConflictError(f"{run_dir} holds a run with a different configuration; "
                                   "choose another --outdir or delete that folder")


def run_nada(G_src: Generator, shift: ShiftConfig, ctx: StepContext, seed: int, run_dir: Path, *,
             weights_sha256: dict[str, str] | None = None, progress: bool = True,
             stop_at: int | None = None, latent_avg: torch.Tensor | None = None, method: str = "nada") -> Generator:
    """Train G_tgt from G_src for one shift and seed into run_dir; skips a finished run, resumes an interrupted one.

    `stop_at` ends the run early after that many steps (without the DONE marker), which tests use to simulate a kill.
    One process at a time trains a run folder; another gets RunBusyError.
    """
    run_dir = Path(run_dir)
    device = next(G_src.parameters()).device
    resolved = {"method": method, "mode": ctx.cfg.mode, "seed": seed, **to_dict(shift), **(ctx.extra_config or {})}
    _check_config(run_dir, resolved)
    if not is_done(run_dir):
        with run_lock(run_dir) as held:
            if not held:
                raise RunBusyError(f"another process is training {run_dir}; wait for it to finish or choose another "
                                   "--outdir")
            _check_config(run_dir, resolved)  # as it is now that no other process can write it
            if not is_done(run_dir):
                remove_temp_files(run_dir)  # left by a killed process; no other writer runs here now
                return _train(G_src, shift, ctx, seed, run_dir, resolved, weights_sha256=weights_sha256,
                              progress=progress, stop_at=stop_at, latent_avg=latent_avg, method=method)
    from replication.checkpoint import load_generator

    return load_generator(run_dir / "checkpoints" / FINAL_NAME, device=device)[0]


def _train(G_src: Generator, shift: ShiftConfig, ctx: StepContext, seed: int, run_dir: Path, resolved: dict, *,
           weights_sha256: dict[str, str] | None, progress: bool, stop_at: int | None,
           latent_avg: torch.Tensor | None, method: str) -> Generator:
    """run_nada's training, under the run folder's lock."""
    from replication.checkpoint import save_checkpoint

    cfg, task = ctx.cfg, shift.task
    device = next(G_src.parameters()).device
    G_tgt = copy.deepcopy(G_src)
    write_json(run_dir / "config.json", resolved)
    write_json(run_dir / "env.json", environment_record(device, weights_sha256 or {}))

    G_src.eval().requires_grad_(False)
    G_tgt.train().requires_grad_(False)
    if ctx.trainable is not None:
        for p in ctx.trainable(G_tgt):
            p.requires_grad_(True)
    elif ctx.select is None:
        from replication.layer_select import phase_modules, set_trainable

        set_trainable(G_tgt, phase_modules(G_tgt, cfg.phase))
    torch.manual_seed(seed)  # after model construction, as the original; all run randomness comes from `rng`
    # all per-step randomness is drawn on the training device: no host-to-device copies of noise in the hot path
    rng = torch.Generator(device=device).manual_seed(seed)
    generators = [rng, *getattr(ctx.guidance, "generators", ())]
    optimizer = torch.optim.Adam(G_tgt.parameters(), lr=cfg.lr, betas=cfg.betas, eps=1e-8)
    z_grid = latents_from_seeds(task.grid_seeds, G_src.style_dim, device)
    if latent_avg is None:
        latent_avg = G_src.mean_latent(4096, generator=torch.Generator().manual_seed(12345))
    latent_avg = latent_avg.reshape(1, -1).to(device)
    src_rms = _grid_rms(G_src, G_src, z_grid)

    stats = StatsLog(run_dir / "stats.jsonl")
    start = _resume_state(run_dir, G_tgt, optimizer, generators)
    stats.truncate_to(start)
    resume_path = run_dir / "checkpoints" / RESUME_NAME
    last_good = start if start > 0 else None

    def checkpoint(at_step: int, rng_states: dict) -> str | None:
        """Save the current state unless its images ran away or a tensor is not finite; returns what was wrong."""
        nonlocal last_good
        problem = image_runaway(_grid_rms(G_src, G_tgt, z_grid), src_rms)
        if problem is None:
            try:
                _save_resume(run_dir, at_step, G_tgt, optimizer, rng_states)
            except NonFiniteState as exc:
                return str(exc)
            last_good = at_step
        return problem

    def diverged(message: str, runaway: bool = True) -> TrainingDiverged:
        kept = (f"the last good state (step {last_good}) is in {resume_path}" if last_good is not None else
                "no good state was saved")
        hint = "; lower the learning rate (nada.lr)" if runaway else ""
        return TrainingDiverged(f"{message}; stopped, {kept}{hint}")

    end = cfg.iterations if stop_at is None else min(stop_at, cfg.iterations)
    bar = tqdm(range(start, end), initial=start, total=cfg.iterations, disable=not progress,
               desc=f"{task.name} seed{seed}", unit="it")
    for step in bar:
        t0 = time.perf_counter()
        before = _rng_states(generators)
        if step % cfg.output_interval == 0:
            save_grid(run_dir / "samples" / f"step{step:06d}.png", G_src, G_tgt, z_grid, cfg.sample_truncation, latent_avg)
        try:
            row = train_step(G_src, G_tgt, optimizer, ctx, rng, step)
        except TrainingDiverged as exc:
            # a bad loss or gradient leaves this step's weights as they were: keep them if they pass the checks
            if not isinstance(exc, ImagesRanAway):
                checkpoint(step, before)
            elif last_good == step:  # saved just before: its grid passed, but these weights ran away here
                last_good = _roll_back(run_dir)
            raise diverged(str(exc), isinstance(exc, ImagesRanAway)) from None
        row["seconds"] = time.perf_counter() - t0
        stats.append(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}")
        done_steps = step + 1
        if cfg.save_interval and done_steps % cfg.save_interval == 0 and done_steps < cfg.iterations:
            problem = checkpoint(done_steps, _rng_states(generators))
            if problem:
                raise diverged(f"{problem} at step {done_steps}")
    if end < cfg.iterations:
        problem = checkpoint(end, _rng_states(generators))
        if problem:
            raise diverged(f"{problem} at step {end}")
        return G_tgt
    # the last update is in no training step's images: a diverged run must not be marked done
    problem = image_runaway(_grid_rms(G_src, G_tgt, z_grid), src_rms)
    if problem:
        raise diverged(f"{problem} after the last step")
    save_grid(run_dir / "samples" / "final.png", G_src, G_tgt, z_grid, cfg.sample_truncation, latent_avg)
    save_checkpoint(run_dir / "checkpoints" / FINAL_NAME, generator_config=G_tgt.cfg.to_dict(),
                    g_ema=G_tgt.state_dict(), latent_avg=latent_avg.reshape(-1).cpu(),
                    provenance={"method": method, "mode": cfg.mode, "shift": task.name, "seed": seed,
                                "source_generator": task.generator})
    rows = stats.rows()
    mark_done(run_dir, {"steps": cfg.iterations, "final_loss": rows[-1]["loss"] if rows else math.nan,
                        "seconds": sum(r.get("seconds", 0.0) for r in rows)})
    # A finished run resumes nothing: its final generator is kept, the resume states (optimizer moments too) are not.
    for name in (RESUME_NAME, PREVIOUS_NAME):
        (run_dir / "checkpoints" / name).unlink(missing_ok=True)
    return G_tgt
