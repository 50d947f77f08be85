"""Offline stand-ins for downloaded weights: a seeded random Inception-v3 state dict in torch-fidelity's layout."""
from __future__ import annotations

import math
from pathlib import Path

import torch


def random_inception_weights(path, seed: int = 0) -> Path:
    """Write a randomly initialised state dict of torch-fidelity's Inception-v3 to `path` (same bytes per seed).

    The file loads strictly through feature_extractor_weights_path, so "inception-v3-compat" runs with no download;
    its features are those of a random network, good for checking plumbing and agreement, not for real FIDs.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Unloaded(FeatureExtractorInceptionV3):
        # The constructor always loads weights (downloading when given no path); skipping the load keeps its layers.
        def load_state_dict(self, state_dict, *args, **kwargs):
            return None

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({}, path)  # read (and ignored) by the constructor above
    net = _Unloaded("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    rng = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in net.state_dict().items():
        if name.endswith("conv.weight"):
            # He-normal keeps activations at a usable scale through ~90 random conv+ReLU layers; PyTorch's default
            # init shrinks them layer after layer until the 2048-d pool features are all but constant.
            fan_in = tensor[0].numel()
            tensor = torch.randn(tensor.shape, generator=rng) * math.sqrt(2.0 / fan_in)
        elif name == "fc.weight":
            tensor = torch.randn(tensor.shape, generator=rng) / math.sqrt(tensor.shape[1])
        elif name == "fc.bias":
            tensor = torch.zeros_like(tensor)  # constructed from the global RNG; zero keeps the file seed-determined
        else:
            tensor = tensor.clone()  # BatchNorm as constructed: identity (weight 1, bias 0, mean 0, var 1)
        state[name] = tensor
    torch.save(state, path)
    return path
