"""FID and KID through torch-fidelity for both worlds: Inception-v3 (paper) or the mini evaluator (mini world)."""
from __future__ import annotations

import contextlib
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch_fidelity
from torch import Tensor
from torch_fidelity.defaults import DEFAULTS
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import glob_samples_paths

# Imported for its side effect: registers the evaluator with torch-fidelity as "mini-evaluator".
from replication.miniworld.evaluator_fidelity import FEATURE_EXTRACTOR_NAME as EVALUATOR_EXTRACTOR
from replication.miniworld.evaluator_fidelity import UInt8ImageDataset, to_uint8

INCEPTION_EXTRACTOR = "inception-v3-compat"
# torch-fidelity's own default seed, passed explicitly so it is on record: it draws a GeneratorSource's z (numpy
# RandomState(seed).randn, batch after batch) and picks the KID subsets.
RNG_SEED = 2020
KID_SUBSETS = 100  # torch-fidelity's default
MAX_KID_SUBSET = 1000  # torch-fidelity's default subset size; smaller sets use all their samples per subset
_SAMPLE_EXTENSIONS = DEFAULTS["samples_find_ext"]  # what torch-fidelity reads from a folder: png, jpg, jpeg


class FidelityError(ValueError):
    """Input that FID/KID cannot be computed on (missing folder, too few images, no weights path, bad n)."""


@dataclass(frozen=True)
class FidelityBackbone:
    """A feature space for FID/KID: torch-fidelity extractor, the weights handed to it, and how it is described."""

    name: str  # in metric names: fid_<name>_n<N> ("inception" or "evaluator")
    extractor: str  # torch-fidelity feature extractor name
    weights_path: Path | None  # passed through as feature_extractor_weights_path
    weights_sha256: str  # part of reference-statistics cache names, so new weights never read old statistics
    protocol: str  # stored with each row

    def __post_init__(self) -> None:
        # The name sits between underscores in metric names, so an underscore in it would make them ambiguous.
        if not isinstance(self.name, str) or not re.fullmatch(r"[a-z0-9]+", self.name):
            raise FidelityError(f"backbone name {self.name!r} must be lowercase letters/digits, e.g. 'inception'")
        if not isinstance(self.weights_sha256, str) or not re.fullmatch(r"[0-9a-f]{16,64}", self.weights_sha256):
            raise FidelityError(f"weights_sha256 {self.weights_sha256!r} must be a lowercase hex sha256 of the weights")
        if self.weights_path is not None:
            object.__setattr__(self, "weights_path", Path(self.weights_path))


def _protocol(extractor: str, features: str) -> str:
    return (f"torch-fidelity {torch_fidelity.__version__} {extractor} {features}; FID; KID poly3 unbiased, "
            f"{KID_SUBSETS} subsets of min({MAX_KID_SUBSET}, n, n_ref); rng_seed {RNG_SEED}")


def inception_backbone(weights_path: Path, weights_sha256: str) -> FidelityBackbone:
    """The paper world's backbone: torch-fidelity's TF-compatible Inception-v3 pool3 features (2048-d)."""
    return FidelityBackbone("inception", INCEPTION_EXTRACTOR, weights_path, weights_sha256,
                            _protocol(INCEPTION_EXTRACTOR, "pool3 2048-d, TF1 bilinear resize to 299"))


def evaluator_backbone(weights_path: Path | None, weights_sha256: str) -> FidelityBackbone:
    """The mini world's backbone: the evaluator's penultimate features (None: the shipped evaluator weights)."""
    return FidelityBackbone("evaluator", EVALUATOR_EXTRACTOR, weights_path, weights_sha256,
                            _protocol(EVALUATOR_EXTRACTOR, "penultimate features at 64 px"))


class GeneratorSource(torch_fidelity.GenerativeModelBase):
    """A StyleGAN2 Generator as a torch-fidelity input: z ~ N(0, I) of size style_dim -> uint8 images [N, 3, H, W].

    torch-fidelity draws the z and feeds batches straight to the feature extractor, so no image file is written and
    no full sample set is held. On a CUDA run torch-fidelity moves the wrapped generator to the GPU (in place).
    """

    def __init__(self, G: torch.nn.Module, *, noise_mode: str = "const"):
        super().__init__()
        if not isinstance(G, torch.nn.Module) or not isinstance(getattr(G, "style_dim", None), int):
            raise FidelityError(f"GeneratorSource needs a replication.networks.Generator, got {type(G).__name__}")
        if noise_mode not in ("const", "none"):
            raise FidelityError(f"noise_mode {noise_mode!r} would make scores vary per call; use 'const' or 'none'")
        self.G = G
        self.noise_mode = noise_mode

    @property
    def z_size(self) -> int:
        return self.G.style_dim

    @property
    def z_type(self) -> str:
        return "normal"

    @property
    def num_classes(self) -> int:
        return 0

    @torch.no_grad()
    def forward(self, z: Tensor) -> Tensor:
        device = next(self.G.parameters()).device
        images, _ = self.G([z.to(device)], noise_mode=self.noise_mode)
        # Back to where torch-fidelity put z: that is where its feature extractor runs.
        return to_uint8(images.float()).to(z.device)


def _check_count(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise FidelityError(f"{what} must be an integer >= 2, got {value!r}")
    return value


def _check_images(images: Tensor, what: str) -> Tensor:
    if images.ndim != 4 or images.shape[1] != 3 or not (images.dtype == torch.uint8 or images.is_floating_point()):
        raise FidelityError(f"{what} must be images [N, 3, H, W], uint8 or float in [-1, 1]; got "
                            f"{tuple(images.shape)} {images.dtype}")
    return images


def _check_backbone(backbone: FidelityBackbone) -> None:
    if not isinstance(backbone, FidelityBackbone):
        raise FidelityError(f"backbone must be a FidelityBackbone, got {type(backbone).__name__}")
    cls = FEATURE_EXTRACTORS_REGISTRY.get(backbone.extractor)
    if cls is None:
        raise FidelityError(f"feature extractor {backbone.extractor!r} is not registered with torch-fidelity; "
                            f"import the module that registers it")
    if backbone.weights_path is None:
        # torch-fidelity's own extractors download their weights when given no path; nothing here may download.
        if cls.__module__.startswith("torch_fidelity."):
            raise FidelityError(f"backbone {backbone.name!r} ({backbone.extractor}) needs weights_path: pass the "
                                f"local weights file, torch-fidelity would otherwise download it")
    elif not backbone.weights_path.is_file():
        raise FidelityError(f"weights file {backbone.weights_path} of backbone {backbone.name!r} does not exist; "
                            f"pass an existing weights file")


def _reference_files(folder: Path) -> list[str]:
    return glob_samples_paths(str(folder), False, _SAMPLE_EXTENSIONS, None, verbose=False)


def _folder_digest(files: list[str]) -> str:
    digest = hashlib.sha256()
    for file in files:  # already sorted by torch-fidelity's glob
        digest.update(Path(file).name.encode() + b"\0")
        digest.update(hashlib.sha256(Path(file).read_bytes()).digest())
    return digest.hexdigest()


def _tensor_digest(images: Tensor) -> str:
    data = images.contiguous().numpy()
    return hashlib.sha256(str(tuple(data.shape)).encode() + data.tobytes()).hexdigest()


def _device(device) -> tuple[bool, contextlib.AbstractContextManager]:
    """(cuda flag for torch-fidelity, context making the asked GPU current: torch-fidelity calls plain .cuda())."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise FidelityError(f"device {device!r} is not supported by torch-fidelity; use 'cpu' or 'cuda[:i]'")
    if parsed.type == "cuda" and parsed.index is not None:
        return True, torch.cuda.device(parsed.index)
    return parsed.type == "cuda", contextlib.nullcontext()


def fid_kid(fake, reference, backbone: FidelityBackbone, *, n: int | None = None, cache_dir: Path | None = None,
            reference_key: str | None = None, kid_subset_size: int | None = None, batch_size: int = 64,
            device="cpu", progress: bool = False) -> dict[str, float]:
    """FID and KID of `fake` against `reference` in `backbone`'s feature space, computed by torch-fidelity.

    fake: images [N, 3, H, W] (float [-1, 1] or uint8; the first n are scored, all when n is None) or a
    GeneratorSource (n samples drawn with z from RNG_SEED). reference: a folder of png/jpg images or an image tensor.
    With cache_dir, the reference's features and FID statistics are cached there under a name made of the backbone
    name, its weights sha256 and `reference_key` (what produced the reference) or, without a key, a sha256 of the
    reference's content. Returns {fid_<name>_n<n>, kid_<name>_n<n>, kid_std_<name>_n<n>}.
    """
    _check_backbone(backbone)
    cuda, cuda_context = _device(device)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise FidelityError(f"batch_size must be a positive integer, got {batch_size!r}")

    if isinstance(fake, GeneratorSource):
        if n is None:
            raise FidelityError("a GeneratorSource needs n, the number of samples to draw; pass n=...")
        n = _check_count(n, "n")
        input1 = fake
    elif isinstance(fake, Tensor):
        fake = _check_images(fake, "fake")
        n = _check_count(fake.shape[0] if n is None else n, "n")
        if n > fake.shape[0]:
            raise FidelityError(f"n={n} but fake holds {fake.shape[0]} images; pass n <= {fake.shape[0]}")
        input1 = UInt8ImageDataset(fake[:n].detach().cpu())
    else:
        raise FidelityError(f"fake must be an image tensor or a GeneratorSource, got {type(fake).__name__}")

    files = None
    if isinstance(reference, (str, Path)):
        folder = Path(reference)
        if not folder.is_dir():
            raise FidelityError(f"reference folder {folder} does not exist; pass an existing folder of images")
        files = _reference_files(folder)
        if len(files) < 2:
            raise FidelityError(f"reference folder {folder} holds {len(files)} png/jpg images; it needs at least 2")
        n_ref = len(files)
        # Absolute, so a folder named like a registered dataset ("cifar10-train") is never taken for that dataset.
        input2 = str(folder.resolve())
    elif isinstance(reference, Tensor):
        _check_images(reference, "reference")
        n_ref = _check_count(reference.shape[0], "the number of reference images")
        input2 = UInt8ImageDataset(reference.detach().cpu())
    else:
        raise FidelityError(f"reference must be a folder path or an image tensor, got {type(reference).__name__}")

    if kid_subset_size is None:
        kid_subset_size = min(MAX_KID_SUBSET, n, n_ref)
    elif isinstance(kid_subset_size, bool) or not isinstance(kid_subset_size, int) \
            or not 2 <= kid_subset_size <= min(n, n_ref):
        raise FidelityError(f"kid_subset_size {kid_subset_size!r} must be an integer in [2, {min(n, n_ref)}] "
                            f"(at most the smaller of n={n} and {n_ref} reference images)")
    if reference_key is not None and (not isinstance(reference_key, str) or not reference_key):
        raise FidelityError(f"reference_key must be a non-empty string describing the reference, got {reference_key!r}")

    cache_name = None
    if cache_dir is not None:
        if reference_key is not None:
            ref_digest = hashlib.sha256(reference_key.encode()).hexdigest()
        elif files is not None:
            ref_digest = _folder_digest(files)
        else:
            ref_digest = _tensor_digest(input2.images)
        cache_name = f"ref-{backbone.name}-w{backbone.weights_sha256[:16]}-r{ref_digest[:16]}-n{n_ref}"

    kwargs = dict(
        input1=input1, input2=input2, fid=True, kid=True,
        feature_extractor=backbone.extractor,
        feature_extractor_weights_path=None if backbone.weights_path is None else str(backbone.weights_path),
        cuda=cuda, batch_size=batch_size, rng_seed=RNG_SEED,
        kid_subsets=KID_SUBSETS, kid_subset_size=kid_subset_size,
        input1_model_num_samples=n if isinstance(fake, GeneratorSource) else None,
        samples_find_deep=False, samples_find_ext=_SAMPLE_EXTENSIONS, datasets_download=False,
        cache=cache_name is not None, cache_root=None if cache_dir is None else str(cache_dir),
        input2_cache_name=cache_name,
        # No DataLoader worker processes (torch-fidelity starts up to 4 otherwise): tensors need none, and a reference
        # folder is decoded once before its statistics are cached; numbers do not depend on it.
        save_cpu_ram=True,
        verbose=progress,
    )
    with cuda_context:
        scores = torch_fidelity.calculate_metrics(**kwargs)
    return {
        f"fid_{backbone.name}_n{n}": float(scores[KEY_METRIC_FID]),
        f"kid_{backbone.name}_n{n}": float(scores[KEY_METRIC_KID_MEAN]),
        f"kid_std_{backbone.name}_n{n}": float(scores[KEY_METRIC_KID_STD]),
    }


def _as_features(x, what: str) -> Tensor:
    array = np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2 or not np.isfinite(array).all():
        raise FidelityError(f"{what} must be a finite feature array [N >= 2, D], got shape {array.shape}")
    return torch.from_numpy(array)


def fid_from_features(a, b) -> float:
    """FID between two feature arrays [N, D] (numpy or torch), by torch-fidelity's own statistics and distance."""
    a, b = _as_features(a, "a"), _as_features(b, "b")
    if a.shape[1] != b.shape[1]:
        raise FidelityError(f"feature widths differ ({a.shape[1]} vs {b.shape[1]}); pass features of one backbone")
    stats = [fid_features_to_statistics(x) for x in (a, b)]
    return float(fid_statistics_to_metric(stats[0], stats[1], False)[KEY_METRIC_FID])
