"""The evaluator as a torch-fidelity feature extractor ("mini-evaluator"), with the uint8 image conversions it reads."""

from __future__ import annotations

import torch
from torch import Tensor

from replication.miniworld.evaluator_model import EvaluatorError, load_evaluator

FEATURE_EXTRACTOR_NAME = "mini-evaluator"
PENULTIMATE = "penultimate"


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] float images -> uint8 [N, 3, H, W], rounding the way image files store them."""
    return ((images.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def from_uint8(images: Tensor) -> Tensor:
    """uint8 [N, 3, H, W] -> float32 images in [-1, 1]."""
    return images.to(torch.float32) / 127.5 - 1.0


class UInt8ImageDataset(torch.utils.data.Dataset):
    """Images as torch-fidelity wants them: one uint8 [3, H, W] tensor per item (from [-1, 1] float or uint8 input)."""

    def __init__(self, images: Tensor):
        if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
            raise EvaluatorError("UInt8ImageDataset needs a tensor [N, 3, H, W] (uint8, or float in [-1, 1])")
        self.images = images if images.dtype == torch.uint8 else to_uint8(images)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        return self.images[index]


def _feature_extractor_class():
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.helpers import vassert

    class MiniEvaluatorFeatureExtractor(FeatureExtractorBase):
        """torch-fidelity feature extractor: the evaluator's penultimate features of uint8 images [N, 3, H, W]."""

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            self.evaluator = load_evaluator(feature_extractor_weights_path)

        @staticmethod
        def get_provided_features_list():
            return (PENULTIMATE,)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            vassert(metric in ("fid", "kid", "prc"), f"the mini evaluator provides no features for metric {metric!r}")
            return PENULTIMATE

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, 64, 64, dtype=torch.uint8)

        def forward(self, x):
            vassert(torch.is_tensor(x) and x.dtype == torch.uint8, "expecting uint8 images [N, 3, H, W]")
            vassert(x.dim() == 4 and x.shape[1] == 3, f"input is not Nx3xHxW: {tuple(x.shape)}")
            features = self.evaluator.features(from_uint8(x))
            # torch-fidelity computes statistics in float64 from what we return; fp32 features lose nothing we need.
            return (features.to(torch.float64),)

    return MiniEvaluatorFeatureExtractor


def register_feature_extractor() -> None:
    """Register the evaluator with torch-fidelity as "mini-evaluator" (idempotent)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    from torch_fidelity.registry import register_feature_extractor as _register

    if FEATURE_EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:
        _register(FEATURE_EXTRACTOR_NAME, _feature_extractor_class())


register_feature_extractor()
