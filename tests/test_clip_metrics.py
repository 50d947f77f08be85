"""HyperDomainNet's Quality and Diversity and the directional CLIP score on hand-built embeddings."""
import math

import pytest
import torch

from metrics.clip_metrics import ClipMetricError, diversity, directional_similarity, quality


class HandEncoder:
    """A stand-in encoder whose text features are fixed unit vectors: text i of a call -> row i of `texts`."""

    def __init__(self, texts: dict[str, torch.Tensor]):
        self.texts = texts

    def text_features(self, prompts):
        return torch.stack([self.texts.get(p, self.texts["*"]) for p in prompts])


def test_quality_is_the_mean_cosine_over_images_and_templates():
    e1, e2 = torch.eye(3)[0], torch.eye(3)[1]
    # two templates: one prompt reads along e1, the other along e2
    encoder = HandEncoder({"a photo of a sketch.": e1, "*": e2})
    images = torch.stack([e1, (e1 + e2) / math.sqrt(2.0)])
    templates = ("a photo of a {}.", "a drawing of a {}.")
    # cosines: image 1 -> (1, 0), image 2 -> (0.7071, 0.7071); mean of the four
    expected = (1.0 + 0.0 + 2 / math.sqrt(2.0)) / 4
    assert quality(encoder, images, "sketch", templates) == pytest.approx(expected, abs=1e-7)


def test_diversity_is_the_mean_pairwise_one_minus_cosine():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # pairs: (0,1) 1 - 0 = 1, (0,2) 1 - (-1) = 2, (1,2) 1 - 0 = 1 -> mean 4/3
    assert diversity(images) == pytest.approx(4 / 3)
    assert diversity(torch.tensor([[0.6, 0.8]] * 5)) == pytest.approx(0.0, abs=1e-6)  # float32 unit rows
    with pytest.raises(ClipMetricError, match="at least 2"):
        diversity(images[:1])


def test_directional_similarity_against_a_hand_direction(monkeypatch):
    import metrics.clip_metrics as cm

    monkeypatch.setattr(cm, "text_direction", lambda encoder, s, t: torch.tensor([[0.0, 1.0]]))
    f_src = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    f_to = torch.tensor([[1.0, 1.0], [2.0, 0.0]])  # an edit along the direction (cos 1), one across it (cos 0)
    assert directional_similarity(None, f_src, f_to, "photo", "sketch") == pytest.approx(0.5)
    assert directional_similarity(None, f_src, f_src, "photo", "sketch") == 0.0  # no edit, no direction
