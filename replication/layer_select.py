"""Adaptive layer freezing (NADA's determine_opt_layers), fixed phase sets, and requires_grad bookkeeping."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

SELECT_MODES = ("faithful", "fixed")
PHASES = (None, "texture", "shape", "shape_expanded", "no_fine", "all")


class LayerSelectionError(ValueError):
    """Bad layer-selection input: k out of range, unknown phase or mode, or a module name G does not have."""


def _n_convs(G: nn.Module) -> int:
    return len(G.convs)


def nada_layer_list(G: nn.Module) -> list[str]:
    """The module list NADA indexes with a W+ index: [conv1, to_rgb1, convs.0, ..., convs.last] (length n_latent).

    Faithful mode only: from index 2 on it is off by one (index i names convs.(i-2) but convs.(i-1) reads W+[i]).
    """
    return ["conv1", "to_rgb1"] + [f"convs.{j}" for j in range(_n_convs(G))]


def true_wplus_consumers(G: nn.Module) -> list[list[str]]:
    """For each W+ index, the modules whose modulation reads it in the forward pass (fixed mode's mapping).

    0 -> conv1; 1 -> to_rgb1, convs.0; j+1 -> convs.j; and 2m+3 -> to_rgbs.m as well (listed first, as measured).
    """
    consumers: list[list[str]] = [[] for _ in range(G.n_latent)]
    consumers[0].append("conv1")
    consumers[1].append("to_rgb1")
    for m in range(len(G.to_rgbs)):
        consumers[2 * m + 3].append(f"to_rgbs.{m}")
    for j in range(_n_convs(G)):
        consumers[j + 1].append(f"convs.{j}")
    return consumers


def _check_mode(mode: str) -> None:
    if mode not in SELECT_MODES:
        raise LayerSelectionError(f"mode must be one of {SELECT_MODES}, got {mode!r}")


def indices_to_modules(G: nn.Module, indices: Sequence[int], mode: str = "faithful") -> list[str]:
    """Module names to train for the chosen W+ indices: NADA's list (faithful) or the true readers (fixed)."""
    _check_mode(mode)
    if mode == "faithful":
        table = nada_layer_list(G)
        return [table[i] for i in indices]
    readers = true_wplus_consumers(G)
    names: list[str] = []
    for i in indices:
        names += [name for name in readers[i] if name not in names]
    return names


def layer_scores(G_tgt: nn.Module, w0: torch.Tensor, guidance_global_fn: Callable[[torch.Tensor], torch.Tensor], *,
                 iters: int = 1, lr: float = 0.01, noise_mode: str = "random", rng: torch.Generator | None = None,
                 trace: dict | None = None) -> torch.Tensor:
    """Per-W+-index scores [n_latent]: mean over batch and dims of |w - w0| after ``iters`` SGD steps on w.

    w0 [B, n_latent, style_dim] is not modified: w is an independent copy (NADA's CPU path aliased the two, making
    every score 0). Gradients are taken with autograd.grad w.r.t. w only, so nothing accumulates in G_tgt's .grad.
    ``trace`` (optional dict) receives "images", "losses", "grads" (one entry per iteration) and "w" for inspection.
    """
    w = w0.detach().clone().requires_grad_(True)
    for _ in range(iters):
        images = G_tgt.synthesis(w, noise_mode=noise_mode, rng=rng)
        loss = guidance_global_fn(images)
        (grad,) = torch.autograd.grad(loss, w)
        with torch.no_grad():
            # plain SGD without momentum, the same float op as torch.optim.SGD's update
            w.add_(grad, alpha=-lr)
        if trace is not None:
            trace.setdefault("images", []).append(images.detach())
            trace.setdefault("losses", []).append(loss.detach())
            trace.setdefault("grads", []).append(grad.detach())
    if trace is not None:
        trace["w"] = w.detach()
    # NADA averages over the style dims first, then over the batch; kept for bit-level agreement
    return (w.detach() - w0).abs().mean(dim=-1).mean(dim=0)


def select_layers(G_tgt: nn.Module, mapping_fn: Callable[[torch.Tensor], torch.Tensor],
                  guidance_global_fn: Callable[[torch.Tensor], torch.Tensor], *, k: int, iters: int = 1,
                  batch: int = 8, lr: float = 0.01, z: torch.Tensor | None = None,
                  rng: torch.Generator | None = None, mode: str = "faithful", noise_mode: str = "random",
                  trace: dict | None = None) -> tuple[list[int], list[str], torch.Tensor]:
    """NADA's adaptive layer selection: which k W+ entries the global CLIP loss most wants to move.

    G_tgt: the trainable generator in its current state. mapping_fn: z [B, style_dim] -> w [B, style_dim] (NADA uses
    the frozen generator's mapping). guidance_global_fn: images [B, 3, H, W] in [-1, 1] -> scalar loss (e.g.
    ``ClipGuidance.selection_loss``). z: [batch, style_dim] latents, drawn N(0, I) from ``rng`` when None.
    Returns (chosen W+ indices, top-k descending; module names to train, by ``mode``; scores [n_latent]).
    Does not change any requires_grad flag; pass the names to ``apply_selection``.
    """
    _check_mode(mode)
    n_latent = G_tgt.n_latent
    if not (isinstance(k, int) and 1 <= k <= n_latent):
        raise LayerSelectionError(f"k (auto_layer_k) must be an int in [1, {n_latent}] for this generator, got {k!r}")
    if not (isinstance(iters, int) and iters >= 1):
        raise LayerSelectionError(f"iters (auto_layer_iters) must be an int >= 1 to select layers, got {iters!r}")
    device = G_tgt.input.input.device
    if z is None:
        if not (isinstance(batch, int) and batch >= 1):
            raise LayerSelectionError(f"batch (auto_layer_batch) must be an int >= 1, got {batch!r}")
        z = torch.randn(batch, G_tgt.style_dim, generator=rng, device=rng.device if rng is not None else None)
    z = z.to(device)
    with torch.no_grad():
        w = mapping_fn(z)
        w0 = w.unsqueeze(1).repeat(1, n_latent, 1) if w.ndim == 2 else w
    if trace is not None:
        trace["w0"] = w0
    scores = layer_scores(G_tgt, w0, guidance_global_fn, iters=iters, lr=lr, noise_mode=noise_mode, rng=rng,
                          trace=trace)
    chosen = [int(i) for i in torch.topk(scores, k).indices]
    return chosen, indices_to_modules(G_tgt, chosen, mode), scores


def phase_modules(G: nn.Module, phase: str | None) -> list[str]:
    """Modules trained without adaptive selection, by NADA's ``--phase`` (spec 3.4).

    None: input + conv1 + all convs; texture: convs[2:10]; shape: convs[0:2]; shape_expanded: convs[0:3];
    no_fine: convs[0:10] (each with input + conv1); all: every child with parameters (mapping and ToRGBs too).
    """
    n = _n_convs(G)
    if phase == "all":
        return (["style", "input", "conv1", "to_rgb1"] + [f"convs.{j}" for j in range(n)]
                + [f"to_rgbs.{m}" for m in range(len(G.to_rgbs))])
    spans = {None: (0, n), "texture": (2, 10), "shape": (0, 2), "shape_expanded": (0, 3), "no_fine": (0, 10)}
    if phase not in spans:
        raise LayerSelectionError(f"unknown phase {phase!r}; use one of {PHASES}")
    start, stop = spans[phase]
    return ["input", "conv1"] + [f"convs.{j}" for j in range(n)[start:stop]]


def set_trainable(G: nn.Module, names: Sequence[str]) -> None:
    """requires_grad True for exactly the parameters of the named modules (dotted names), False for all others."""
    modules = []
    for name in names:
        try:
            modules.append(G.get_submodule(name))
        except AttributeError:
            raise LayerSelectionError(f"generator has no module {name!r}; names look like 'conv1', 'convs.3', "
                                      "'to_rgbs.0'") from None
    G.requires_grad_(False)
    for module in modules:
        module.requires_grad_(True)


def apply_selection(G_tgt: nn.Module, chosen_module_names: Sequence[str]) -> list[str]:
    """Make only the selected modules trainable (NADA: freeze everything, unfreeze the chosen); returns the names."""
    set_trainable(G_tgt, chosen_module_names)
    return list(chosen_module_names)
