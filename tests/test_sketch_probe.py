"""The sketch-world probe redraws only the sketch hatching, restores the shipped world after, and scores an oracle."""
import json

import torch

from replication.miniworld.attributes import sample_attributes
from replication.miniworld.render import render
from replication.miniworld.sketch_probe import main, sketch_world


def test_the_probe_changes_the_sketch_hatching_only_and_restores_the_shipped_world():
    attrs = sample_attributes(6, torch.Generator().manual_seed(2))
    shipped, photo = render(attrs, "sketch", "human"), render(attrs, "photo", "human")
    with sketch_world(4.0):
        assert torch.equal(render(attrs, "sketch", "human"), shipped)
    with sketch_world(8.0):
        coarse = render(attrs, "sketch", "human")
        assert torch.equal(render(attrs, "photo", "human"), photo)
    with sketch_world(None):
        even = render(attrs, "sketch", "human")
    assert (coarse - shipped).abs().mean() > 0.02 and (even - coarse).abs().mean() > 0.02
    assert torch.equal(render(attrs, "sketch", "human"), shipped)


def test_a_tiny_probe_run_writes_its_scores_and_bad_periods_are_one_line(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "probe.json"
    assert main(["--periods", "8", "--iterations", "2", "--n-eval", "8", "--out", str(out), "--no-progress"]) == 0
    (result,) = json.loads(out.read_text())["results"]
    assert result["hatch_period"] == 8.0 and -1 <= result["edge_corr_true"] <= 1 and result["paired_l1"] > 0
    assert main(["--periods", "fine", "--out", str(tmp_path / "bad.json")]) == 2
    assert "error: --periods" in capsys.readouterr().err and not (tmp_path / "bad.json").exists()
