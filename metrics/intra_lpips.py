"""Intra-cluster LPIPS diversity (SVL/AIR zero-shot protocol): N x N LPIPS, k-medoids k = 10, distance to medoid.

As in AIR's evaluation/IntraLPIPS_kmedoids.py, every sample, each medoid included with its own zero distance, counts in
its cluster's mean and in the "all" mean, and both stds are population stds (np.std, ddof=0); AIR clusters with
sklearn_extra's KMedoids default (method "alternate", init "heuristic"), here FasterPAM (kmedoids.fasterpam from a
BUILD start) minimises the same loss (sum of distances to the medoids) and ended 1-18% lower than alternate/heuristic on
the matrices tried, so "all" (= loss / N) comes out lower than AIR's script would report for the same matrix.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

ALGORITHM = "kmedoids.fasterpam"
KMEDOIDS_INIT = "build"
LPIPS_VGG_SIZE = 256  # AIR resizes every sample to 256 x 256 before lpips.LPIPS(net="vgg")
FEATURE_BUDGET_BYTES = 8 << 30  # features of the row and column blocks held at once when max_block is None
_NET_BATCH = 32  # images per network call inside a block: bounds the activations' memory, not the result
_GRAM_BYTES = 256 << 20  # float64 copies of one Gram chunk
_UNIT_EPS = 1e-10  # lpips.normalize_tensor adds this to the channel norm

# lpips.pretrained_networks.vgg16 puts torchvision's features[i] into slice s for i in these ranges.
_VGG_SLICES = ((1, range(0, 4)), (2, range(4, 9)), (3, range(9, 16)), (4, range(16, 23)), (5, range(23, 30)))


class IntraLpipsError(ValueError):
    """Input the intra-cluster LPIPS protocol cannot use; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class PerceptualBackbone:
    """A perceptual distance given as per-layer features: d(x, y) = sum_l mean_pixels sum_c (f_l(x) - f_l(y))^2.

    `features(images in [-1, 1]) -> [n, C, H, W] per layer`, already unit-normalised over channels and scaled by the
    square root of each channel's weight. `name` goes into metric names; `size` is the side images are resized to
    (None: as given).
    """

    name: str
    size: int | None
    features: Callable[[Tensor], list[Tensor]]

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9]+", self.name or ""):
            raise IntraLpipsError(f"backbone name {self.name!r} goes into metric names: use lowercase letters and "
                                  f"digits only, e.g. 'lpipsvgg'")
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1):
            raise IntraLpipsError(f"backbone size must be a positive int or None, got {self.size!r}")
        if not callable(self.features):
            raise IntraLpipsError("backbone features must be a callable images -> list of [n, C, H, W] tensors")


# ------------------------------------------------------------------------------------------------------------ backbones


def _unit(h: Tensor) -> Tensor:
    # the formula of lpips.normalize_tensor: eps added to the norm, not under the root
    return h / (h.square().sum(dim=1, keepdim=True).sqrt() + _UNIT_EPS)


def lpips_vgg_backbone(model: nn.Module, *, name: str = "lpipsvgg", size: int | None = LPIPS_VGG_SIZE
                       ) -> PerceptualBackbone:
    """LPIPS-VGG v0.1 as features: the model's scaling layer, VGG slices, unit norm and sqrt of its `lins` weights.

    The distance these features give is lpips.LPIPS.forward's (eval mode, spatial=False) exactly in exact arithmetic.
    """
    import lpips  # imported here: importing metrics must not pull in torchvision

    if not isinstance(model, lpips.LPIPS) or model.pnet_type not in ("vgg", "vgg16") or not model.lpips \
            or model.version != "0.1":
        raise IntraLpipsError("lpips_vgg_backbone needs lpips.LPIPS(net='vgg', version='0.1', lpips=True); build it "
                              "with lpips_vgg_model")
    if model.training:
        raise IntraLpipsError("the LPIPS model is in training mode (dropout on); call .eval() on it first")
    weights = [lin.model[-1].weight for lin in model.lins]
    if any(bool((w < 0).any()) for w in weights):
        # a negative channel weight would make the distance no sum of squares; the calibrated heads are all >= 0
        raise IntraLpipsError("the LPIPS linear heads hold negative weights; use the calibrated heads "
                              "(lpips.LPIPS(pretrained=True), as lpips_vgg_model builds)")

    @torch.no_grad()
    def features(images: Tensor) -> list[Tensor]:
        shift = model.scaling_layer.shift
        outs = model.net(model.scaling_layer(images.to(shift.device, torch.float32)))
        return [lpips.normalize_tensor(out) * lin.model[-1].weight.to(out.dtype).sqrt()
                for out, lin in zip(outs, model.lins)]

    return PerceptualBackbone(name, size, features)


def lpips_vgg_model(vgg16_weights_path: Path | None) -> nn.Module:
    """lpips.LPIPS(net="vgg") built offline in eval mode: the package's linear heads and, given a torchvision vgg16
    state dict (vgg16-397923af.pth), its `features.*` weights in lpips' slices; without a path the trunk stays random.
    """
    import lpips

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # lpips still passes torchvision's deprecated `pretrained`; the random trunk init must not move the global RNG
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    if vgg16_weights_path is not None:
        path = Path(vgg16_weights_path)
        model.net.load_state_dict(_vgg_slice_state(path, model.net.state_dict()), strict=True)
    return model.eval().requires_grad_(False)


def _vgg_slice_state(path: Path, expected: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision vgg16 `features.<i>.<param>` keys renamed to lpips' `slice<s>.<i>.<param>`, checked strictly."""
    fix = "pass torchvision's vgg16 state dict (vgg16-397923af.pth)"
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # missing, unreadable or unsafe: the same user error
        raise IntraLpipsError(f"{path} is not a readable state dict ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}); {fix}") from exc
    if not isinstance(blob, dict):
        raise IntraLpipsError(f"{path} holds a {type(blob).__name__}, not a state dict; {fix}")
    slice_of = {i: s for s, indices in _VGG_SLICES for i in indices}
    state, unexpected = {}, []
    for key, value in blob.items():
        match = re.fullmatch(r"features\.(\d+)\.(\w+)", str(key))
        if match is None:
            continue  # the classifier is not part of LPIPS
        index = int(match.group(1))
        if index not in slice_of:
            unexpected.append(key)
            continue
        state[f"slice{slice_of[index]}.{index}.{match.group(2)}"] = value
    missing = sorted(f"features.{k.split('.', 1)[1]}" for k in expected.keys() - state.keys())
    unexpected += sorted(f"features.{k.split('.', 1)[1]}" for k in state.keys() - expected.keys())
    wrong = [f"features.{k.split('.', 1)[1]} {tuple(state[k].shape)} != {tuple(v.shape)}"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise IntraLpipsError(f"{path} does not fit lpips' VGG16: missing {missing}, unexpected {unexpected}, "
                              f"wrong shapes {wrong}; {fix}")
    return state


def evaluator_backbone(evaluator: nn.Module, *, name: str = "evaluatorperceptual") -> PerceptualBackbone:
    """The mini evaluator's seven conv stages (Conv-BN-SiLU outputs), unit-normalised, channel weight 1, at 64 px.

    Weight 1 per channel is lpips' own unweighted variant (LPIPS(lpips=False)): each layer adds at most 4.
    """
    trunk, coords, config = (getattr(evaluator, attr, None) for attr in ("trunk", "coords", "config"))
    if not isinstance(trunk, nn.Sequential) or not isinstance(coords, Tensor) or config is None \
            or not any(isinstance(m, nn.SiLU) for m in trunk):
        raise IntraLpipsError("evaluator_backbone needs the mini world's Evaluator (trunk of Conv-BN-SiLU blocks); "
                              "load it with replication.miniworld.evaluator_model.load_evaluator")
    if evaluator.training:
        raise IntraLpipsError("the evaluator is in training mode (BatchNorm would use batch statistics); call .eval()")

    @torch.no_grad()
    def features(images: Tensor) -> list[Tensor]:
        x = images.to(evaluator.coords.device, torch.float32)
        # the same input Evaluator.features builds: image plus two coordinate channels
        h = torch.cat([x, evaluator.coords.to(x.dtype).expand(x.shape[0], -1, -1, -1)], dim=1)
        out = []
        for module in evaluator.trunk:
            h = module(h)
            if isinstance(module, nn.SiLU):
                out.append(_unit(h))
        return out

    return PerceptualBackbone(name, int(config.resolution), features)


# --------------------------------------------------------------------------------------------------------------- matrix


def _check_images(images: Any) -> int:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        got = f"{tuple(images.shape)} {images.dtype}" if isinstance(images, Tensor) else type(images).__name__
        raise IntraLpipsError(f"images must be a float tensor [N, 3, H, W] in [-1, 1], got {got}")
    if images.shape[0] == 0 or min(images.shape[-2:]) < 1:
        raise IntraLpipsError(f"images must hold at least one non-empty image, got {tuple(images.shape)}")
    if not bool(torch.isfinite(images).all()) or float(images.abs().max()) > 1.0 + 1e-6:
        raise IntraLpipsError("images must be finite and in [-1, 1]; clamp generator output (sample_images does)")
    return int(images.shape[0])


def _check_block(max_block: Any) -> None:
    if max_block is not None and (isinstance(max_block, bool) or not isinstance(max_block, int) or max_block < 1):
        raise IntraLpipsError(f"max_block must be a positive int or None (fit the feature budget), got {max_block!r}")


def _resize(images: Tensor, size: int | None) -> Tensor:
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    # bilinear with antialiasing: what PIL's Resize, which AIR applies to the saved samples, does
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _block_features(images: Tensor, backbone: PerceptualBackbone) -> list[tuple[Tensor, Tensor, int]]:
    """Per layer: flattened features [n, C*H*W], their squared norms (float64) and H*W."""
    chunks = [backbone.features(_resize(images[s:s + _NET_BATCH], backbone.size))
              for s in range(0, images.shape[0], _NET_BATCH)]
    layers = []
    for parts in zip(*chunks, strict=True):
        feats = torch.cat(list(parts))
        if feats.ndim != 4 or feats.shape[0] != images.shape[0]:
            raise IntraLpipsError(f"backbone {backbone.name!r} returned a layer of shape {tuple(feats.shape)} for "
                                  f"{images.shape[0]} images; features must be [n, C, H, W] per layer")
        flat = feats.reshape(feats.shape[0], -1)
        layers.append((flat, _gram(flat, None), feats.shape[2] * feats.shape[3]))
    if not layers:
        raise IntraLpipsError(f"backbone {backbone.name!r} returned no feature layers")
    return layers


def _gram(a: Tensor, b: Tensor | None) -> Tensor:
    """a @ b.T in float64 (b None: the squared row norms of a), over column chunks to bound the float64 copies."""
    rows = a.shape[0] + (0 if b is None else b.shape[0])
    step = max(1, _GRAM_BYTES // (8 * rows))
    out = None
    for s in range(0, a.shape[1], step):
        x = a[:, s:s + step].double()
        part = x.square().sum(dim=1) if b is None else x @ b[:, s:s + step].double().T
        out = part if out is None else out + part
    return out


def _block_distances(rows: list[tuple[Tensor, Tensor, int]], cols: list[tuple[Tensor, Tensor, int]]) -> np.ndarray:
    total = None
    for (a, norm_a, hw), (b, norm_b, _) in zip(rows, cols, strict=True):
        # |f_i - f_j|^2 = n_i + n_j - 2 <f_i, f_j>, a difference of large numbers: float64 throughout
        layer = (norm_a[:, None] + norm_b[None, :] - 2.0 * _gram(a, b)) / hw
        total = layer if total is None else total + layer
    return total.cpu().numpy()


def _auto_block(images: Tensor, backbone: PerceptualBackbone) -> int:
    probe = backbone.features(_resize(images[:1], backbone.size))
    per_image = sum(f[:1].numel() * f.element_size() for f in probe)
    return max(1, min(images.shape[0], FEATURE_BUDGET_BYTES // (2 * max(per_image, 1))))


@torch.no_grad()
def lpips_matrix(images: Tensor, backbone: PerceptualBackbone, *, max_block: int | None = None,
                 progress: bool = True) -> np.ndarray:
    """The N x N distance matrix (float64, symmetric, zero diagonal) of images [N, 3, H, W] in [-1, 1].

    Features are computed per block of at most `max_block` images (None: as many as fit FEATURE_BUDGET_BYTES for a
    row and a column block, found from one probe image). With B = ceil(N / max_block) blocks, row block i is computed
    once and every column block j > i again for it: B (B + 1) / 2 block passes, about N (B + 1) / 2 images through the
    network (N = 1000, max_block = 128: B = 8, 36 block passes); max_block >= N is one pass.
    """
    n = _check_images(images)
    _check_block(max_block)
    block = _auto_block(images, backbone) if max_block is None else max_block
    bounds = [(s, min(s + block, n)) for s in range(0, n, block)]
    out = np.zeros((n, n), dtype=np.float64)
    total = len(bounds) * (len(bounds) + 1) // 2
    with tqdm(total=total, desc=f"intra-LPIPS {backbone.name} blocks", disable=not progress, leave=False) as bar:
        for i, (r0, r1) in enumerate(bounds):
            rows = _block_features(images[r0:r1], backbone)
            for c0, c1 in bounds[i:]:
                cols = rows if c0 == r0 else _block_features(images[c0:c1], backbone)
                part = _block_distances(rows, cols)
                out[r0:r1, c0:c1] = part
                out[c0:c1, r0:r1] = part.T
                bar.update()
    out = 0.5 * (out + out.T)  # exact off the diagonal blocks; evens out rounding inside them
    np.maximum(out, 0.0, out=out)  # rounding can leave -1e-17 where two images are (nearly) identical
    np.fill_diagonal(out, 0.0)
    return out


# ------------------------------------------------------------------------------------------------------------ k-medoids


def _check_k(k: Any, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise IntraLpipsError(f"k must be a positive int (the protocol uses 10), got {k!r}")
    if n < k:
        raise IntraLpipsError(f"too few samples for k = {k}: got {n}; draw at least {k} (the protocol draws 1,000)")
    return int(k)


def _check_matrix(distances: Any) -> np.ndarray:
    d = np.asarray(distances, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1] or d.shape[0] == 0:
        raise IntraLpipsError(f"distances must be a square N x N matrix, got shape {d.shape}; use lpips_matrix")
    if not np.isfinite(d).all():
        raise IntraLpipsError("distances hold NaN or inf; recompute them with lpips_matrix")
    scale = max(float(np.abs(d).max()), 1e-300)
    if not np.allclose(d, d.T, rtol=0.0, atol=1e-9 * scale):
        raise IntraLpipsError("distances are not symmetric; pass the full matrix lpips_matrix returns")
    if float(d.min()) < 0.0 or float(np.abs(np.diag(d)).max()) > 0.0:
        raise IntraLpipsError("distances must be non-negative with a zero diagonal; use lpips_matrix")
    return d


def intra_cluster_lpips(distances: Any, k: int = 10, seed: int = 0) -> dict[str, Any]:
    """k-medoids on a precomputed N x N matrix, then each sample's distance to its medoid.

    "avg": mean over clusters of the cluster's mean distance ("avg_std": their std over clusters); "all": mean over
    samples ("all_std": std over samples); medoids count with their zero distance (AIR's definition).
    """
    import kmedoids

    d = _check_matrix(distances)
    k = _check_k(k, d.shape[0])
    # one thread: kmedoids' parallel variant, which it picks by itself from N = 1000, depends on the core count
    result = kmedoids.fasterpam(d, k, init=KMEDOIDS_INIT, random_state=int(seed), n_cpu=1)
    medoids = np.asarray(result.medoids, dtype=np.int64)
    labels = np.asarray(result.labels, dtype=np.int64).copy()
    # a duplicate of a medoid ties at distance 0; each medoid keeps its own cluster so that none is empty
    labels[medoids] = np.arange(k)
    per_sample = d[np.arange(d.shape[0]), medoids[labels]]
    cluster_means = np.array([per_sample[labels == c].mean() for c in range(k)])
    return {
        "avg": float(cluster_means.mean()),
        "avg_std": float(cluster_means.std()),
        "all": float(per_sample.mean()),
        "all_std": float(per_sample.std()),
        "medoids": medoids,
        "labels": labels,
        "loss": float(per_sample.sum()),
        "algorithm": ALGORITHM,
        "init": KMEDOIDS_INIT,
        "k": k,
    }


def intra_lpips_scores(images: Tensor, backbone: PerceptualBackbone, k: int = 10, *, seed: int = 0,
                       max_block: int | None = None, progress: bool = True) -> dict[str, float]:
    """Metric values of N samples: intra_lpips_<name>_{avg, avg_std, all, all_std}_n<N>."""
    n = _check_images(images)
    k = _check_k(k, n)  # before any feature is computed
    _check_block(max_block)
    scores = intra_cluster_lpips(lpips_matrix(images, backbone, max_block=max_block, progress=progress), k, seed)
    tag = f"intra_lpips_{backbone.name}"
    return {f"{tag}_{key}_n{n}": scores[key] for key in ("avg", "avg_std", "all", "all_std")}
