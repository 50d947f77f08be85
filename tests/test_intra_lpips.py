"""Tests of intra-cluster LPIPS: matrix against lpips' own forward, k-medoids on known clusters, VGG loading, errors."""

from __future__ import annotations

import statistics
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metrics import intra_lpips as il
from replication.miniworld.evaluator_model import load_evaluator

torch.set_num_threads(1)


def _images(n: int, seed: int, size: int = 64) -> torch.Tensor:
    """Smooth colour fields plus pixel noise in [-1, 1]: pairs at varied distances, not all alike like pure noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 6, 6, generator=g) * 2 - 1
    fine = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    mix = torch.rand(n, 1, 1, 1, generator=g)
    smooth = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return ((1 - mix) * smooth + mix * fine).clamp(-1, 1)


@pytest.fixture(scope="module")
def lpips_model():
    import lpips

    torch.manual_seed(1234)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False).eval()


@pytest.fixture(scope="module")
def evaluator():
    return load_evaluator()


def _raising_backbone(name: str = "probe") -> il.PerceptualBackbone:
    def features(images):
        raise AssertionError("features must not be computed")

    return il.PerceptualBackbone(name, None, features)


# --------------------------------------------------------------------------------------------------------------- matrix


def test_matrix_equals_lpips_forward_on_every_pair(lpips_model):
    x = _images(8, seed=0)
    d = il.lpips_matrix(x, il.lpips_vgg_backbone(lpips_model, size=None), progress=False)
    assert d.dtype == np.float64 and d.shape == (8, 8)
    assert np.array_equal(d, d.T) and np.all(np.diag(d) == 0.0)
    ii, jj = torch.triu_indices(8, 8, offset=1)
    with torch.no_grad():
        reference = lpips_model(x[ii], x[jj]).flatten().double().numpy()
    ours = d[ii.numpy(), jj.numpy()]
    assert reference.std() > 0.01 * reference.mean()  # the pairs differ: a wrong pairing would show
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=0)


def test_backbone_size_resizes_before_the_network(lpips_model):
    x = _images(3, seed=1, size=48)
    d = il.lpips_matrix(x, il.lpips_vgg_backbone(lpips_model, size=64), progress=False)
    up = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        reference = lpips_model(up[[0, 0, 1]], up[[1, 2, 2]]).flatten().double().numpy()
    np.testing.assert_allclose(d[[0, 0, 1], [1, 2, 2]], reference, rtol=1e-5, atol=0)


def test_evaluator_backbone_matches_a_hand_computation(evaluator):
    x = _images(4, seed=2)
    backbone = il.evaluator_backbone(evaluator)
    assert backbone.name == "evaluatorperceptual" and backbone.size == 64
    d = il.lpips_matrix(x, backbone, progress=False)
    pair = x[[1, 3]]
    with torch.no_grad():
        h = torch.cat([pair, evaluator.coords.expand(2, -1, -1, -1)], dim=1)
        expected = 0.0
        for stage in range(len(evaluator.config.blocks)):
            out = evaluator.trunk[: 3 * (stage + 1)](h).double()  # Conv, BN, SiLU per stage, recomputed from the input
            unit = out / (out.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            expected += (unit[0] - unit[1]).pow(2).sum(dim=0).mean().item()
    assert d[1, 3] == pytest.approx(expected, rel=1e-5)
    assert d[3, 1] == d[1, 3]


def test_block_path_equals_one_pass(evaluator):
    x = _images(12, seed=3)
    backbone = il.evaluator_backbone(evaluator)
    one_pass = il.lpips_matrix(x, backbone, max_block=12, progress=False)
    auto = il.lpips_matrix(x, backbone, progress=False)  # 12 small images fit the budget: one pass too
    blocks = il.lpips_matrix(x, backbone, max_block=5, progress=False)  # blocks of 5, 5, 2: six block pairs
    np.testing.assert_array_equal(auto, one_pass)
    np.testing.assert_allclose(blocks, one_pass, rtol=1e-6, atol=1e-9)
    assert np.array_equal(blocks, blocks.T) and np.all(np.diag(blocks) == 0.0)


# ------------------------------------------------------------------------------------------------------------ k-medoids

# Three 1-D clusters, shuffled; each cluster's medoid (least summed distance inside it) is known by construction.
_POINTS = np.array([1003.0, 0.0, 101.0, 1010.0, 2.0, 1000.0, 100.0, 1.0, 1004.0, 103.0, 1002.0])
_MEDOID_VALUES = {1.0, 101.0, 1003.0}
_CLUSTERS = ([0.0, 1.0, 2.0], [100.0, 101.0, 103.0], [1000.0, 1002.0, 1003.0, 1004.0, 1010.0])


def test_kmedoids_finds_the_known_medoids_and_the_hand_numbers():
    d = np.abs(_POINTS[:, None] - _POINTS[None, :])
    result = il.intra_cluster_lpips(d, k=3, seed=0)
    assert {_POINTS[m] for m in result["medoids"]} == _MEDOID_VALUES
    for members in _CLUSTERS:
        labels = {int(result["labels"][int(np.flatnonzero(_POINTS == v)[0])]) for v in members}
        assert len(labels) == 1
    assert result["algorithm"] == "kmedoids.fasterpam" and result["k"] == 3
    # by hand: each sample's distance to its medoid, the medoid's own 0 included (AIR's definition)
    per_cluster = [[1, 0, 1], [1, 0, 2], [3, 1, 0, 1, 7]]
    means = [statistics.fmean(c) for c in per_cluster]
    every = [v for c in per_cluster for v in c]
    assert result["avg"] == pytest.approx(statistics.fmean(means), rel=1e-12)
    assert result["avg_std"] == pytest.approx(statistics.pstdev(means), rel=1e-12)
    assert result["all"] == pytest.approx(17 / 11, rel=1e-12)
    assert result["all_std"] == pytest.approx(statistics.pstdev(every), rel=1e-12)
    assert result["loss"] == pytest.approx(17.0)


def _air_default_loss(d: np.ndarray, k: int) -> float:
    """sklearn_extra KMedoids(metric="precomputed") defaults, method "alternate" from init "heuristic", re-written."""
    medoids = np.argpartition(d.sum(axis=1), k - 1)[:k].copy()
    for _ in range(300):
        before = medoids.copy()
        labels = np.argmin(d[medoids], axis=0)
        for c in range(k):
            members = np.flatnonzero(labels == c)
            if len(members):
                cost = d[np.ix_(members, members)].sum(axis=1)
                if cost.min() < cost[np.flatnonzero(members == medoids[c])[0]]:
                    medoids[c] = members[np.argmin(cost)]
        if np.array_equal(before, medoids):
            break
    return float(d[medoids].min(axis=0).sum())


def test_fasterpam_reaches_at_most_the_air_default_loss():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(10, 2))
    points = centres[rng.integers(0, 10, size=300)] + rng.normal(size=(300, 2))
    d = np.sqrt(((points[:, None] - points[None]) ** 2).sum(axis=-1))
    np.fill_diagonal(d, 0.0)
    result = il.intra_cluster_lpips(d, k=10, seed=0)
    assert result["loss"] <= _air_default_loss(d, 10) + 1e-9
    assert result["all"] == pytest.approx(result["loss"] / 300)


def test_scores_are_named_rows_of_the_clustering(evaluator):
    x = _images(12, seed=4)
    backbone = il.evaluator_backbone(evaluator)
    scores = il.intra_lpips_scores(x, backbone, k=3, progress=False)
    reference = il.intra_cluster_lpips(il.lpips_matrix(x, backbone, progress=False), k=3)
    assert scores == {f"intra_lpips_evaluatorperceptual_{key}_n12": reference[key]
                      for key in ("avg", "avg_std", "all", "all_std")}


# -------------------------------------------------------------------------------------------------------- VGG loading


def test_lpips_vgg_model_loads_torchvision_vgg16_features(tmp_path):
    import lpips
    import torchvision

    full = torchvision.models.vgg16(weights=None).state_dict()
    # the real file also holds the classifier (500 MB); one of its keys is enough to show it is skipped
    state = {k: v for k, v in full.items() if k.startswith("features.")}
    state["classifier.6.bias"] = full["classifier.6.bias"]
    torch.save(state, tmp_path / "vgg16.pth")
    rng_before = torch.random.get_rng_state()
    model = il.lpips_vgg_model(tmp_path / "vgg16.pth")
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert not model.training and isinstance(model, lpips.LPIPS)
    slices = [model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4, model.net.slice5]
    loaded = 0
    for key, value in state.items():
        if key.startswith("features."):
            _, index, param = key.split(".")
            holder = next(s for s in slices if index in s._modules)
            assert torch.equal(getattr(holder._modules[index], param), value), key
            loaded += 1
    assert loaded == 26
    heads = torch.load(lpips.__path__[0] + "/weights/v0.1/vgg.pth", map_location="cpu", weights_only=True)
    for i in range(5):
        assert torch.equal(model.lins[i].model[-1].weight, heads[f"lin{i}.model.1.weight"])

    del state["features.28.bias"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(il.IntraLpipsError, match=r"missing \['features.28.bias'\]") as err:
        il.lpips_vgg_model(tmp_path / "broken.pth")
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------------------------- errors


def test_too_few_samples_fail_before_any_feature_pass():
    with pytest.raises(il.IntraLpipsError, match=r"too few samples for k = 10: got 5; draw at least 10"):
        il.intra_lpips_scores(_images(5, seed=5), _raising_backbone(), k=10, progress=False)
    with pytest.raises(il.IntraLpipsError, match="too few samples"):
        il.intra_cluster_lpips(np.zeros((3, 3)), k=10)


@pytest.mark.parametrize("images", [
    torch.zeros(4, 1, 16, 16), torch.zeros(3, 16, 16), torch.zeros(4, 3, 16, 16, dtype=torch.uint8),
    torch.full((4, 3, 16, 16), 1.5), torch.full((4, 3, 16, 16), float("nan")), np.zeros((4, 3, 16, 16)),
])
def test_bad_images_fail_before_any_feature_pass(images):
    with pytest.raises(il.IntraLpipsError, match="images must"):
        il.intra_lpips_scores(images, _raising_backbone(), k=2, progress=False)


@pytest.mark.parametrize("matrix, message", [
    (np.zeros((3, 4)), "square"),
    (np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 3.0], [2.5, 3.0, 0.0]]), "symmetric"),
    (np.array([[0.0, -1.0], [-1.0, 0.0]]), "non-negative"),
    (np.array([[1.0, 1.0], [1.0, 0.0]]), "zero diagonal"),
])
def test_bad_matrices_are_refused(matrix, message):
    with pytest.raises(il.IntraLpipsError, match=message):
        il.intra_cluster_lpips(matrix, k=1)


def test_bad_models_and_arguments_are_refused(lpips_model, evaluator):
    with pytest.raises(il.IntraLpipsError, match="lpips.LPIPS"):
        il.lpips_vgg_backbone(evaluator)
    with pytest.raises(il.IntraLpipsError, match="Evaluator"):
        il.evaluator_backbone(lpips_model)
    lpips_model.train()
    try:
        with pytest.raises(il.IntraLpipsError, match="training mode"):
            il.lpips_vgg_backbone(lpips_model)
    finally:
        lpips_model.eval()
    with pytest.raises(il.IntraLpipsError, match="max_block"):
        il.lpips_matrix(_images(2, seed=6), _raising_backbone(), max_block=0, progress=False)
    with pytest.raises(il.IntraLpipsError, match="k must"):
        il.intra_cluster_lpips(np.zeros((3, 3)), k=0)
    with pytest.raises(il.IntraLpipsError, match="name"):
        il.PerceptualBackbone("LPIPS-VGG", 256, lambda x: [x])
