"""Editing transfer (NADA section 7.2): does a W-space edit found on the source generator still edit the adapted one?

NADA adapts the synthesis network and keeps the mapping, so a latent direction found on G_src (an InterFaceGAN
boundary) can be applied to G_tgt unchanged; the paper shows such edits by eye. Here it is measured. A direction is a
linear boundary on w = G_src.mapping(z) against one attribute, fitted InterFaceGAN-style: in the mini world a
least-squares fit between w and the evaluator's reading of G_src's images over FIT_LATENTS seeded latents,
unit-normalised (fit_direction says which way round, and why).
Each evaluation latent is then moved EDIT_ALPHA standard deviations (of the fit latents' projection on the direction)
along it, towards the other side of the mean so that no edit leaves the source's range, and the evaluator reads how
much the attribute changed on G_src and on G_tgt under the same edit. transfer = adapted change / source change: 1
when the adapted generator follows the edit as the source does, 0 when the edit no longer does anything.

Paper-world boundaries come as files (InterFaceGAN's .npy of shape [1, style_dim]) and are applied as NADA's
`generate_videos.py` applies them, w + alpha * n with no normalisation (Direction.from_boundary).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Mapping, MutableMapping

import numpy as np
import torch
from torch import Tensor

from replication.miniworld.attributes import ATTRIBUTE_INDEX
from replication.training_loop import latents_from_seeds

# Attributes every mini shift keeps and the evaluator reads in every target domain (its R^2 on true renders of each
# style and character is >= 0.76): skin tone and hair colour are not among them (werewolf fur, clown paint, sketch).
EDIT_ATTRIBUTES: tuple[str, ...] = ("smile", "hair_length", "rotation", "face_scale")
FIT_LATENTS = 2000  # latents of the least-squares fit
FIT_SEED_START = 1_000_000  # their per-image seeds start here: disjoint from every shift's eval_seeds and grid_seeds
EDIT_LATENTS = 200  # evaluation latents edited per run, split evenly over the attributes (latent i edits attribute
#                     i mod len(attributes)), so each attribute's row averages EDIT_LATENTS / 4 latents
EDIT_ALPHA = 2.0  # edit length in standard deviations of the source latents' projection on the direction
CHUNK = 50  # images drawn per generator call (the mini generator is fastest on one CPU thread at about this size)
PROTOCOL = ("InterFaceGAN-style W boundary: least-squares slope of w on the evaluator's reading over {n_fit} source "
            "latents (seeds {start}+); each latent moved {alpha:g} sd toward the centre; evaluator-v1 const-noise psi1")


class EditingError(ValueError):
    """A boundary or attribute the editing metric cannot use; the message says what and how to fix it."""


@dataclass(frozen=True)
class Direction:
    """A latent direction and the unit its edits are measured in: edit(w, alpha) = w + alpha * scale * normal.

    normal: [style_dim] (a W direction; it broadcasts over W+ [B, n_latent, style_dim]) or [n_latent, style_dim]
    (a W+ direction, like InterFaceGAN's pose). scale: the standard deviation of the source latents' projection on
    the normal for a fitted direction (alpha is then in standard deviations), 1 for a boundary file (alpha in latent
    units, as NADA's distances). centre: the mean projection. r2: the squared correlation of the attribute reading
    with the projection over the fit latents (nan for a file).
    """

    attribute: str
    normal: Tensor
    scale: float = 1.0
    centre: float = 0.0
    r2: float = math.nan

    def edit(self, w: Tensor, alpha: float | Tensor) -> Tensor:
        """w (or W+) moved alpha units along the normal; alpha a number or a per-latent tensor [B]."""
        alpha = torch.as_tensor(alpha, dtype=w.dtype, device=w.device)
        alpha = alpha.reshape(-1, *([1] * (w.ndim - 1))) if alpha.ndim else alpha
        return w + alpha * self.scale * self.normal.to(w)

    @classmethod
    def from_boundary(cls, boundary: Any, attribute: str, style_dim: int, n_latent: int) -> Direction:
        """A direction from an InterFaceGAN boundary array: [style_dim] or [1, style_dim] (W), or [n_latent,
        style_dim] or [1, n_latent, style_dim] (W+); applied as given, with no normalisation."""
        array = np.asarray(boundary, dtype=np.float32)
        if array.ndim >= 2 and array.shape[0] == 1:
            array = array[0]
        if array.shape not in ((style_dim,), (n_latent, style_dim)) or not np.isfinite(array).all():
            raise EditingError(f"a boundary for {attribute!r} must be finite, of shape [{style_dim}] or "
                               f"[1, {style_dim}] (W) or [{n_latent}, {style_dim}] (W+) for this generator; got "
                               f"{list(np.shape(boundary))}")
        return cls(attribute, torch.from_numpy(array.copy()))


@dataclass(frozen=True)
class EditingScores:
    """Per attribute: the source change, the adapted change and their ratio, as {"<attr>_src": ...}; n_per_attribute:
    how many latents each attribute's three values average."""

    values: dict[str, float]
    n_per_attribute: dict[str, int]
    protocol: str


def edit_counts(n_available: int) -> tuple[int, int]:
    """(latents edited per run, latents of the fit) for a scorer drawing n_available evaluation latents: the defaults,
    shrunk with tiny test settings (ten fit latents per edited one)."""
    n_edit = max(1, min(EDIT_LATENTS, n_available))
    return n_edit, min(FIT_LATENTS, 10 * n_edit)


def can_edit(G) -> bool:
    """False for a method that optimises every image per latent (StyleCLIP's optimisation: an `optimise` method):
    each edited latent would run that optimisation again, so such runs get no editing rows."""
    return not callable(getattr(G, "optimise", None))


@torch.no_grad()
def draw(G, w: Tensor, chunk: int = CHUNK) -> Tensor:
    """G's images of w [B, style_dim] or W+ [B, n_latent, style_dim] at its fixed noise: float [-1, 1] on the CPU."""
    out = []
    for i in range(0, w.shape[0], chunk):
        part = w[i:i + chunk]
        wplus = part if part.ndim == 3 else G.make_wplus([part], input_is_latent=True)
        out.append(G.synthesis(wplus, noise_mode="const").float().clamp(-1, 1).cpu())
    return torch.cat(out)


def read(evaluator, images: Tensor, attributes: tuple[str, ...]) -> Tensor:
    """The evaluator's reading [N, len(attributes)] of images in [-1, 1]."""
    attrs = evaluator.predict(images)["attrs"].float().cpu()
    return attrs[:, [ATTRIBUTE_INDEX[name] for name in attributes]]


def fit_direction(w: Tensor, y: Tensor, attribute: str) -> Direction:
    """The linear boundary of a reading y [N] on latents w [N, D]: the least-squares slope of w on y (each coordinate
    of w fitted as a + b y), unit-normalised; r2 is the squared correlation of y with the projection on it.

    Not the slope of y on w: the mini generator's W is far from isotropic (covariance eigenvalues from 2e-5 to 6), so
    that regression's normal points mostly along directions the latents never vary in and the synthesis ignores
    (measured: a 2-sd edit along it moved the smile reading by 0.02, along this one by 0.40). This direction is the
    mean latent change per unit of the attribute, which stays on the latents' own manifold.
    """
    w, y = w.double(), y.double()
    wc, yc = w - w.mean(0), y - y.mean()
    slope = wc.T @ yc / (yc @ yc).clamp_min(1e-24)
    if not torch.isfinite(slope).all() or slope.norm() < 1e-12:
        raise EditingError(f"the reading of {attribute!r} does not vary with w on the fit latents; no direction can be "
                           f"fitted")
    normal = slope / slope.norm()
    projection = w @ normal
    r2 = torch.corrcoef(torch.stack([projection, y]))[0, 1].pow(2)
    return Direction(attribute, normal.float(), scale=float(projection.std()), centre=float(projection.mean()),
                     r2=float(r2))


def fit_directions(G_src, evaluator, attributes: tuple[str, ...] = EDIT_ATTRIBUTES, n: int = FIT_LATENTS,
                   seed_start: int = FIT_SEED_START) -> dict[str, Direction]:
    """One direction per attribute, fitted on the evaluator's reading of G_src's images of n seeded latents."""
    unknown = [name for name in attributes if name not in ATTRIBUTE_INDEX]
    if unknown:
        raise EditingError(f"unknown attribute {unknown[0]!r}; mini-world attributes are {', '.join(ATTRIBUTE_INDEX)}")
    device = next((p.device for p in G_src.parameters()), torch.device("cpu"))
    with torch.no_grad():
        w = G_src.mapping(latents_from_seeds(range(seed_start, seed_start + n), G_src.style_dim, device))
    readings = read(evaluator, draw(G_src, w), attributes)
    return {name: fit_direction(w.float().cpu(), readings[:, k], name) for k, name in enumerate(attributes)}


def fingerprint(*tensors_or_modules) -> str:
    """A short sha256 of tensors' and modules' values (parameters and buffers), to key what a scorer caches."""
    digest = hashlib.sha256()
    for item in tensors_or_modules:
        tensors = ([item] if isinstance(item, Tensor) else
                   [t for _, t in sorted(item.state_dict().items())])
        for t in tensors:
            digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def source_directions(G_src, evaluator, n_fit: int, cache: MutableMapping | None = None,
                      attributes: tuple[str, ...] = EDIT_ATTRIBUTES) -> dict[str, Direction]:
    """fit_directions, computed once per source generator and fit size when a cache (the scorer's) is given."""
    if cache is None:
        return fit_directions(G_src, evaluator, attributes, n_fit)
    key = ("edit-directions", fingerprint(G_src), n_fit, attributes)
    if key not in cache:
        cache[key] = fit_directions(G_src, evaluator, attributes, n_fit)
    return cache[key]


def _edits(directions: Mapping[str, Direction], w: Tensor, alpha: float) -> tuple[Tensor, Tensor, Tensor]:
    """(edited w [N, D], sign [N], attribute column [N]): latent i moves along attribute i mod A, toward the centre."""
    names = list(directions)
    if any(directions[name].normal.ndim != 1 for name in names):
        raise EditingError("editing transfer measures W directions ([style_dim]); a W+ boundary only draws grids")
    column = torch.arange(w.shape[0]) % len(names)
    normals = torch.stack([directions[name].normal.float() for name in names])[column]
    centres = torch.tensor([directions[name].centre for name in names])[column]
    scales = torch.tensor([directions[name].scale for name in names])[column]
    sign = torch.where((w * normals).sum(1) > centres, -1.0, 1.0)
    return w + (sign * alpha * scales).unsqueeze(1) * normals, sign, column


def _changes(G, evaluator, w_edit: Tensor, before: Tensor, sign: Tensor, column: Tensor,
             attributes: tuple[str, ...]) -> Tensor:
    """Per latent: the signed change of its edited attribute's reading, [N]."""
    after = read(evaluator, draw(G, w_edit), attributes)
    rows = torch.arange(w_edit.shape[0])
    return sign * (after[rows, column] - before[rows, column])


@torch.no_grad()
def editing_transfer(G_src, G_tgt, evaluator, z: Tensor, directions: Mapping[str, Direction], *,
                     alpha: float = EDIT_ALPHA, images: tuple[Tensor, Tensor] | None = None,
                     cache: MutableMapping | None = None, n_fit: int = FIT_LATENTS) -> EditingScores:
    """How much each direction's edit changes its attribute on G_src and on G_tgt, and the ratio.

    z [N, style_dim]: the evaluation latents; latent i is edited along attribute i mod len(directions). images:
    (G_src(z), G_tgt(z)) when the caller has drawn them (at the source mapping and fixed noise). cache: where the
    source side, identical for every run of a scorer, is kept (keyed by the source generator, the latents and the
    directions). n_fit: recorded in the protocol.
    """
    attributes = tuple(directions)
    w = G_src.mapping(z).float().cpu()
    w_edit, sign, column = _edits(directions, w, alpha)
    if images is None:
        images = (draw(G_src, w), draw(G_tgt, w))
    elif not torch.allclose(G_tgt.mapping(z).float().cpu(), w):
        images = (images[0], draw(G_tgt, w))  # a trained mapping: the given images are not of the source's w
    key = ("edit-source", fingerprint(G_src, z, *(d.normal for d in directions.values())), alpha, attributes)
    if cache is not None and key in cache:
        change_src = cache[key]
    else:
        change_src = _changes(G_src, evaluator, w_edit, read(evaluator, images[0], attributes), sign, column,
                              attributes)
        if cache is not None:
            cache[key] = change_src
    change_tgt = _changes(G_tgt, evaluator, w_edit, read(evaluator, images[1], attributes), sign, column, attributes)
    values, counts = {}, {}
    for k, name in enumerate(attributes):
        mine = column == k
        src, tgt = change_src[mine].mean().item(), change_tgt[mine].mean().item()
        values[f"{name}_src"], values[f"{name}_tgt"] = src, tgt
        if abs(src) > 1e-6:  # an edit that moves nothing on the source has no ratio (and rows are finite)
            values[f"{name}_transfer"] = tgt / src
        counts[name] = int(mine.sum())
    return EditingScores(values, counts, PROTOCOL.format(n_fit=n_fit, start=FIT_SEED_START, alpha=alpha))


def editing_rows(G_src, G_tgt, evaluator, z: Tensor, *, images: tuple[Tensor, Tensor] | None = None,
                 cache: MutableMapping | None = None) -> list[dict]:
    """The mini world's editing-transfer rows of one run: mini_edit_<attr>_{src,tgt,transfer}_n<N> (N: latents per
    attribute), from the first edit_counts(len(z)) latents; none for a method that optimises per latent."""
    if not can_edit(G_tgt):
        return []
    n_edit, n_fit = edit_counts(z.shape[0])
    directions = source_directions(G_src, evaluator, n_fit, cache)
    images = None if images is None else (images[0][:n_edit], images[1][:n_edit])
    scores = editing_transfer(G_src, G_tgt, evaluator, z[:n_edit], directions, images=images, cache=cache,
                              n_fit=n_fit)
    rows = []
    for name, n in scores.n_per_attribute.items():
        for kind in ("src", "tgt", "transfer"):
            if f"{name}_{kind}" in scores.values:
                rows.append(dict(metric=f"mini_edit_{name}_{kind}_n{n}", value=float(scores.values[f"{name}_{kind}"]),
                                 n_samples=n, protocol=scores.protocol))
    return rows
