"""Shift TOML files parse into frozen configs; unknown keys and bad values are one-line ConfigErrors."""
import dataclasses

import pytest

from replication.config import ConfigError, NadaConfig, available_shifts, load_shift, parse_shift, to_dict


def test_every_shipped_shift_parses():
    names = available_shifts()
    assert "ffhq--sketch" in names and len(names) >= 10
    for name in names:
        cfg = load_shift(name)
        assert cfg.task.name == name
        assert cfg.task.source_text and cfg.task.target_text


def test_readme_recipe_defaults():
    cfg = load_shift("ffhq--sketch")
    n = cfg.nada
    assert n.lr == pytest.approx(0.0016) and n.betas == pytest.approx((0.0, 0.99 ** 0.8))
    assert n.clip_models == ("ViT-B/32", "ViT-B/16") and n.clip_model_weights == (1.0, 1.0)
    assert (n.auto_layer_k, n.auto_layer_iters, n.auto_layer_batch, n.batch, n.iterations) == (18, 1, 8, 2, 301)
    assert n.mixing == 0.0 and n.mode == "faithful" and n.antialias is False


def test_configs_are_frozen_and_json_safe():
    cfg = load_shift("ffhq--white-walker")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.nada.iterations = 5
    d = to_dict(cfg)
    assert d["nada"]["mixing"] == 0.9 and d["task"]["target_text"] == "white walker"


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"task": {"world": "paper", "generator": "g", "source_text": "a", "target_text": "b"}, "nada": {"iters": 3}},
         "unknown key(s) ['iters']"),
        ({"task": {"world": "paper", "generator": "g", "source_text": "a", "target_text": "b"}, "extra": {}},
         "unknown section(s) ['extra']"),
        ({"task": {"world": "moon", "generator": "g", "source_text": "a", "target_text": "b"}}, "world must be one of"),
        ({"task": {"world": "paper", "generator": "g", "source_text": "a", "target_text": " "}}, "target_text is empty"),
        ({"task": {"world": "paper", "generator": "g", "source_text": "a", "target_text": "b"},
          "nada": {"clip_models": ["ViT-B/32"], "clip_model_weights": [1.0, 1.0]}}, "differ in length"),
        ({"task": {"world": "paper", "source_text": "a", "target_text": "b"}}, "generator"),
    ],
)
def test_bad_configs_are_one_line_errors(data, fragment):
    with pytest.raises(ConfigError) as info:
        parse_shift(data, "x")
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_unknown_shift_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown shift 'nope'.*ffhq--sketch"):
        load_shift("nope")


def test_fixed_mode_antialiases_by_default():
    assert NadaConfig(mode="fixed").antialias is True
    assert NadaConfig(mode="faithful", resize_antialias=True).antialias is True
