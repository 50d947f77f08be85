"""IPL, image-specific prompt learning (Guo et al., "Zero-shot Generative Model Adaptation via Image-specific Prompt
Learning", CVPR 2023): NADA's directional loss, with one text direction per image instead of one for all.

Stage 1 trains a latent mapper w -> n_ctx prompt vectors (CoOp-style context tokens) so that the prompt
"[ctx] <source>" describes its own source image and "[ctx] <target>" stays the target class; stage 2 is NADA's loop
(frozen and trainable generator, directional loss, layer selection) whose direction for each image is the unit
difference of its two prompts' text features.

Facts from the IPL code (Picsart-AI-Research/IPL-Zero-Shot-Generative-Model-Adaptation, train.py,
criteria/clip_loss.py, mapper/latent_mappers.py, options/train_options.py, README):
- mapper: PixelNorm, then 3 EqualLinear(512, 512, lr_mul 0.01, fused leaky ReLU) and EqualLinear(512, width * n_ctx,
  lr_mul 0.01, fused leaky ReLU), width = the CLIP text transformer's; its output replaces the tokens of ctx_init in
  the tokenised prompt "<ctx_init> <class>" (prefix = start token, suffix = class, end token and padding);
- README recipe: ctx_init "a photo of a" (so n_ctx 4), stage 1 300 iterations (--iter_mapper), batch 32
  (--batch_mapper), Adam lr 0.05 (--lr_mapper, torch's default betas), lambda_l 1, lambda_src 0 (option default);
  stage 2 300 iterations, batch 2, lr 0.002 (scaled by 4/5 with betas (0, 0.99^(4/5)) as NADA), --auto_compute:
  layer selection with k = int(2 * n_latent / 3), CLIP ViT-B/32 alone (option default), EMA decay 0.99;
- stage-1 loss (global_clip_loss, is_contrastive=1): with t_src = unit(T(prompt_src) + T("<ctx_init> <source>."))
  and t_tgt likewise (raw text features), unit source-image features f: symmetric cross entropy of
  exp(logit_scale) f t_src^T against the diagonal, plus lambda_l * (mean(1 - cos(t_tgt, m_tgt)) + lambda_src *
  mean(1 - cos(t_src, m_src))), m = mean unit feature of the class over the ImageNet templates;
- stage-2 direction (clip_directional_loss): unit(t_tgt - t_src) per image, the same additive text features, then
  NADA's directional loss; the prompts come from clip_models[0]'s text encoder.

Choices here (each where the reference leaves it open or cannot be followed in NADA's loop):
- stage 2 runs on the shift's [nada] budget as NADA does (iterations, batch, lr, mode, noise, mixing), with IPL's
  k = 2/3 of W+ when the shift uses layer selection, and only the shift's first guidance CLIP (IPL learns prompts in
  one CLIP's text space; ViT-B/32 in the paper-world shifts, IPL's own default);
- in stage 2 the original formats the class into "a photo of a" with str.format, which has no slot: both prompts get
  the features of the bare ctx_init added. Faithful mode keeps that; fixed mode adds "<ctx_init> <class>." as stage 1;
- no EMA generator: NADA's loop keeps none, so the last weights are returned (IPL saves its EMA, decay 0.99);
- stage 1 draws one z per image (IPL's --mixing default 0) with the shift's noise mode.
The stage-1 mapper is saved in run_dir/checkpoints/ (git-ignored) so an interrupted stage 2 resumes with it.
Cost on mini--zombie at one CPU thread: stage 1 (300 steps of 32 latents) 206 s, stage 2 (300 steps) 71 s.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from replication.config import ConfigError, ShiftConfig, to_dict
from replication.losses import ClipGuidance, GuidanceConfig, directional_loss
from replication.networks import EqualLinear, Generator, PixelNorm
from replication.runio import StatsLog, atomic_torch_save, is_done, remove_temp_files, run_lock
from replication.templates import IMAGENET_TEMPLATES, fill_templates
from replication.training_loop import RunBusyError, StepContext, _check_config, run_nada

METHOD_NAME = "ipl"
MAPPER_NAME = "ipl_mapper.pt"  # stage 1's result, in run_dir/checkpoints/


@dataclass(frozen=True)
class IplConfig:
    """IPL's own settings (README recipe); stage 2's budget is the shift's [nada]."""

    ctx_init: str = "a photo of a"  # words whose token slots the mapper's prompt vectors fill (--ctx_init)
    mapper_iterations: int = 300  # stage-1 steps (--iter_mapper)
    mapper_batch: int = 32  # stage-1 latents per step (--batch_mapper)
    mapper_lr: float = 0.05  # stage-1 Adam lr (--lr_mapper)
    lambda_l: float = 1.0  # weight of the prompts' pull to their class's template mean (--lambda_l)
    lambda_src: float = 0.0  # share of that pull on the source prompt (--lambda_src)
    auto_layer_k: int | None = None  # stage-2 layers trained per step; None: int(2 n_latent / 3) (--auto_compute)

    def __post_init__(self) -> None:
        checks = [
            (bool(self.ctx_init.strip()), "ctx_init is empty; give the prompt's context words, e.g. 'a photo of a'"),
            (self.mapper_iterations >= 1 and self.mapper_batch >= 2,
             f"mapper_iterations must be >= 1 and mapper_batch >= 2 (a contrastive batch), got "
             f"{self.mapper_iterations}, {self.mapper_batch}"),
            (self.mapper_lr > 0 and math.isfinite(self.mapper_lr), f"mapper_lr must be > 0, got {self.mapper_lr}"),
            (self.lambda_l >= 0 and self.lambda_src >= 0, "lambda_l and lambda_src must be >= 0"),
            (self.auto_layer_k is None or self.auto_layer_k >= 1, f"auto_layer_k must be >= 1, got "
                                                                  f"{self.auto_layer_k}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"{METHOD_NAME}: {message}")

    @property
    def n_ctx(self) -> int:
        return len(self.ctx_init.split())  # train.py: n_ctx = number of words of ctx_init


# ----------------------------------------------------------------------------------------------- prompts and mapper
class PromptMapper(nn.Module):
    """w [B, style_dim] -> prompt vectors [B, n_ctx, width] (IPL's Mapper: 4 equalised-lr layers, lr_mul 0.01)."""

    def __init__(self, style_dim: int, width: int, n_ctx: int):
        super().__init__()
        self.n_ctx, self.width = n_ctx, width
        layers = [EqualLinear(style_dim, style_dim, lr_mul=0.01, activation="fused_lrelu") for _ in range(3)]
        layers.append(EqualLinear(style_dim, width * n_ctx, lr_mul=0.01, activation="fused_lrelu"))
        self.net = nn.Sequential(PixelNorm(), *layers)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.net(w).reshape(w.shape[0], self.n_ctx, self.width)


class PromptEncoder:
    """CLIP's text encoder on "<start> [ctx vectors] <class words> <end>": the prompt "<ctx_init> <class>" with the
    token embeddings of ctx_init replaced by given vectors (CoOp / IPL). Returns raw text features [B, D] float32."""

    def __init__(self, encoder, ctx_init: str, class_text: str, n_ctx: int):
        model = encoder.model
        tokens = encoder.tokenize(f"{ctx_init} {class_text}")
        if int((encoder.tokenize(ctx_init)[0] > 0).sum()) - 2 != n_ctx:  # minus start and end tokens
            raise ConfigError(f"{METHOD_NAME}: ctx_init {ctx_init!r} must be {n_ctx} CLIP tokens, one per word")
        with torch.no_grad():
            embedded = model.token_embedding(tokens).type(model.dtype)
        self.model, self.n_ctx = model, n_ctx
        self.prefix, self.suffix = embedded[:, :1], embedded[:, 1 + n_ctx:]
        self.end = int(tokens.argmax(dim=-1))  # the end token has the largest id

    def __call__(self, ctx: torch.Tensor) -> torch.Tensor:
        model, batch = self.model, ctx.shape[0]
        x = torch.cat([self.prefix.expand(batch, -1, -1), ctx.to(self.prefix.device, model.dtype),
                       self.suffix.expand(batch, -1, -1)], dim=1)
        x = x + model.positional_embedding[:x.shape[1]].type(model.dtype)
        x = model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)  # as clip.model.CLIP.encode_text: LND inside
        x = model.ln_final(x).type(model.dtype)
        return (x[:, self.end] @ model.text_projection).float()


class IplPrompts:
    """The two prompt encoders of a shift and the fixed text features IPL adds to and compares with them."""

    def __init__(self, encoder, source: str, target: str, cfg: IplConfig, mode: str):
        self.encoder, self.cfg = encoder, cfg
        self.source = PromptEncoder(encoder, cfg.ctx_init, source, cfg.n_ctx)
        self.target = PromptEncoder(encoder, cfg.ctx_init, target, cfg.n_ctx)
        # stage 1's additive features: get_text_features(class, templates=["<ctx_init> {}."], norm=False)
        self.base1 = tuple(encoder.encode_text(f"{cfg.ctx_init} {text}.") for text in (source, target))
        # stage 2's: "<ctx_init>".format(class) has no slot in the original, so both get the bare ctx_init's
        bare = encoder.encode_text(cfg.ctx_init)
        self.base2 = (bare, bare) if mode == "faithful" else self.base1
        # the class's template mean: mean_t unit T(template_t(class)), not renormalised (get_text_features().mean)
        self.means = tuple(encoder.text_features(fill_templates(text, IMAGENET_TEMPLATES)).mean(dim=0, keepdim=True)
                           for text in (source, target))

    def features(self, ctx: torch.Tensor, base: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Unit (source, target) prompt features [B, D] for prompt vectors ctx."""
        return (F.normalize(self.source(ctx) + base[0], dim=-1), F.normalize(self.target(ctx) + base[1], dim=-1))

    def stage1_loss(self, image_features: torch.Tensor, ctx: torch.Tensor) -> tuple[torch.Tensor, dict]:
        t_src, t_tgt = self.features(ctx, self.base1)
        logits = self.encoder.logit_scale * image_features @ t_src.T
        labels = torch.arange(logits.shape[0], device=logits.device)
        contrastive = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        target_pull = (1 - F.cosine_similarity(t_tgt, self.means[1].expand_as(t_tgt), dim=-1)).mean()
        source_pull = (1 - F.cosine_similarity(t_src, self.means[0].expand_as(t_src), dim=-1)).mean()
        loss = contrastive + self.cfg.lambda_l * (target_pull + self.cfg.lambda_src * source_pull)
        return loss, {"contrastive": float(contrastive.detach()), "target_pull": float(target_pull.detach()),
                      "source_pull": float(source_pull.detach())}

    def directions(self, ctx: torch.Tensor) -> torch.Tensor:
        t_src, t_tgt = self.features(ctx, self.base2)
        return F.normalize(t_tgt - t_src, dim=-1)


# ------------------------------------------------------------------------------------------------------- stage 1
def _new_mapper(G_src: Generator, prompts: IplPrompts, seed: int) -> PromptMapper:
    with torch.random.fork_rng(devices=[]):  # the initial weights come from the run's seed, not the global state
        torch.manual_seed(seed + 3)  # IPL seeds stage 1 with --seed1 3
        return PromptMapper(G_src.style_dim, int(prompts.encoder.model.ln_final.weight.shape[0]), prompts.cfg.n_ctx)


def train_mapper(G_src: Generator, prompts: IplPrompts, cfg: IplConfig, seed: int, noise_mode: str,
                 stats: StatsLog | None = None) -> PromptMapper:
    """Stage 1: the prompt mapper, trained on the frozen source generator's images (deterministic per seed)."""
    device = next(G_src.parameters()).device
    mapper = _new_mapper(G_src, prompts, seed).to(device).train()
    optimizer = torch.optim.Adam(mapper.parameters(), lr=cfg.mapper_lr)
    rng = torch.Generator(device=device).manual_seed(seed + 3)
    for step in range(cfg.mapper_iterations):
        t0 = time.perf_counter()
        z = torch.randn(cfg.mapper_batch, G_src.style_dim, generator=rng, device=device)
        with torch.no_grad():
            w = G_src.mapping(z)
            images = G_src.synthesis(G_src.make_wplus([w], input_is_latent=True), noise_mode=noise_mode, rng=rng)
            image_features = prompts.encoder.image_features(images)
        loss, terms = prompts.stage1_loss(image_features, mapper(w))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{METHOD_NAME}: stage-1 loss became {float(loss)} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if stats is not None:
            stats.append({"step": step, "loss": float(loss.detach()), **terms, "seconds": time.perf_counter() - t0})
    return mapper.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------------- stage 2
class IplGuidance:
    """(x_src, x_tgt, z) -> (loss, stats): NADA's directional loss with each image's own prompt direction."""

    def __init__(self, G_src: Generator, mapper: PromptMapper, prompts: IplPrompts, weight: float, mode: str):
        self.G_src, self.mapper, self.prompts, self.weight, self.mode = G_src, mapper, prompts, weight, mode

    def __call__(self, x_src: torch.Tensor, x_tgt: torch.Tensor, z: torch.Tensor):
        encoder = self.prompts.encoder
        with torch.no_grad():
            directions = self.prompts.directions(self.mapper(self.G_src.mapping(z)))
            feat_src = encoder.image_features(x_src)
        # NADA's faithful guard for an exactly zero edit, as ClipGuidance (the fixed mode bounds the gradient instead)
        recompute = (lambda: encoder.image_features(x_tgt + 1e-6)) if self.mode == "faithful" else None
        loss = directional_loss(feat_src, encoder.image_features(x_tgt), directions.to(x_tgt.device),
                                eps_mode=self.mode, recompute_target=recompute)
        return self.weight * loss, {"direction/0": loss.detach()}


def ipl_shift(shift: ShiftConfig, G_src: Generator, cfg: IplConfig) -> ShiftConfig:
    """Stage 2's settings: the shift's, guided by its first weighted CLIP alone, with IPL's k for layer selection."""
    nada = shift.nada
    first = next(i for i, w in enumerate(nada.clip_model_weights) if w > 0)
    k = cfg.auto_layer_k if cfg.auto_layer_k is not None else max(1, int(2 * G_src.n_latent / 3))
    nada = dataclasses.replace(nada, clip_models=(nada.clip_models[first],),
                               clip_model_weights=(nada.clip_model_weights[first],),
                               auto_layer_k=min(k, G_src.n_latent) if nada.auto_layer_iters > 0 else nada.auto_layer_k)
    return dataclasses.replace(shift, nada=nada)


def check_shift(shift: ShiftConfig) -> None:
    """A ConfigError unless the shift is text-guided: IPL learns prompts for a source and a target text."""
    if shift.task.target_images is not None or not (shift.task.source_text.strip() and shift.task.target_text.strip()):
        raise ConfigError(f"{METHOD_NAME} learns prompts for a source and a target text; {shift.task.name} is guided "
                          f"by images or lacks a text (use a text-guided shift)")


def _stage1(G_src: Generator, prompts: IplPrompts, cfg: IplConfig, seed: int, shift: ShiftConfig,
            run_dir: Path) -> PromptMapper:
    """The stage-1 mapper of this run: read back when saved with these settings, else trained and saved (under the
    run folder's lock)."""
    path = run_dir / "checkpoints" / MAPPER_NAME
    record = json.loads(json.dumps({"ipl": dataclasses.asdict(cfg), "seed": seed, "clip": shift.nada.clip_models[0],
                                    "noise_mode": shift.nada.noise_mode}))
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("record") == json.dumps(record, sort_keys=True):
            mapper = _new_mapper(G_src, prompts, seed)
            mapper.load_state_dict(saved["mapper"])
            return mapper.to(next(G_src.parameters()).device).eval().requires_grad_(False)
    with run_lock(run_dir) as held:
        if not held:
            raise RunBusyError(f"another process is training {run_dir}; wait for it to finish or choose another "
                               f"--outdir")
        remove_temp_files(run_dir)
        stats = StatsLog(run_dir / "stats_mapper.jsonl")
        stats.truncate_to(0)
        mapper = train_mapper(G_src, prompts, cfg, seed, shift.nada.noise_mode, stats)
        atomic_torch_save({"mapper": {k: v.cpu() for k, v in mapper.state_dict().items()},
                           "record": json.dumps(record, sort_keys=True)}, path)
    return mapper


def adapt(G_src: Generator, shift: ShiftConfig, seed: int, run_dir: Path, *, encoders=None, weights_sha256=None,
          progress: bool = True, stop_at: int | None = None, latent_avg: torch.Tensor | None = None,
          config: IplConfig | None = None, **_) -> Generator:
    """Stage 1 (the prompt mapper; skipped once saved), then stage 2 in NADA's loop (resumable as NADA)."""
    from replication.nada import build_context, load_encoders

    check_shift(shift)
    cfg = config or IplConfig()
    run_dir = Path(run_dir)
    shift = ipl_shift(shift, G_src, cfg)
    nada, device = shift.nada, next(G_src.parameters()).device
    if encoders is None:
        encoders = load_encoders(nada, device)
    encoder, weight = next((e, w) for e, w in encoders if w > 0)
    prompts = IplPrompts(encoder, shift.task.source_text, shift.task.target_text, cfg, nada.mode)
    extra = {METHOD_NAME: {**dataclasses.asdict(cfg), "n_ctx": cfg.n_ctx}}
    mapper = None
    if not is_done(run_dir):
        # a changed setting must meet the run's recorded config before stage 1 overwrites that run's mapper
        _check_config(run_dir, {"method": METHOD_NAME, "mode": nada.mode, "seed": seed, **to_dict(shift), **extra})
        mapper = _stage1(G_src, prompts, cfg, seed, shift, run_dir)
    guidance = IplGuidance(G_src, mapper, prompts, weight, nada.mode)
    # layer selection as NADA's: global loss toward the target text, through the same CLIP
    selection = ClipGuidance([(encoder, weight)], shift.task.source_text, shift.task.target_text,
                             GuidanceConfig(lambda_direction=0.0, lambda_global=1.0, mode=nada.mode))
    select = build_context(shift.task, nada, selection, G_src).select
    ctx = StepContext(guidance=guidance, select=select, cfg=nada, guidance_takes_latents=True, extra_config=extra)
    return run_nada(G_src, shift, ctx, seed, run_dir, weights_sha256=weights_sha256, progress=progress,
                    stop_at=stop_at, latent_avg=latent_avg, method=METHOD_NAME)
