"""Editing transfer: the fitted direction, the transfer ratio, the metric rows, and the edit CLI's grids."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from metrics.editing import (
    EDIT_ATTRIBUTES,
    Direction,
    EditingError,
    editing_rows,
    editing_transfer,
    fit_direction,
    fit_directions,
)
from replication.miniworld.attributes import ATTRIBUTE_INDEX, NUM_ATTRIBUTES

STYLE_DIM = 8
# a planted direction per edited attribute (unit norm, pairwise orthogonal): the toy evaluator reads each along it
PLANTED = torch.linalg.qr(torch.randn(STYLE_DIM, STYLE_DIM, generator=torch.Generator().manual_seed(1)))[0].T[:4]


class ToyGenerator(nn.Module):
    """w is the identity of z; its image stores gain * w / 8 in its first STYLE_DIM pixels (the rest is 0)."""

    style_dim, n_latent, size = STYLE_DIM, 2, 4

    def __init__(self, gain: float = 1.0):
        super().__init__()
        self.gain = gain

    def mapping(self, z):
        return z.clone()

    def make_wplus(self, styles, input_is_latent=True):
        return styles[0].unsqueeze(1).repeat(1, self.n_latent, 1)

    def synthesis(self, wplus, noise_mode="const"):
        flat = torch.zeros(wplus.shape[0], 3 * self.size * self.size)
        flat[:, :STYLE_DIM] = self.gain * wplus[:, 0] / 8
        return flat.view(-1, 3, self.size, self.size)


class ToyEvaluator:
    """Reads attribute k of EDIT_ATTRIBUTES as 0.5 + 0.1 (w . PLANTED[k]) from a ToyGenerator image; others 0.5."""

    def predict(self, x):
        w = x.flatten(1)[:, :STYLE_DIM] * 8
        attrs = torch.full((x.shape[0], NUM_ATTRIBUTES), 0.5)
        for k, name in enumerate(EDIT_ATTRIBUTES):
            attrs[:, ATTRIBUTE_INDEX[name]] = 0.5 + 0.1 * (w @ PLANTED[k])
        return {"attrs": attrs}


def test_the_fit_recovers_a_planted_linear_direction():
    w = torch.randn(2000, STYLE_DIM, generator=torch.Generator().manual_seed(0))
    d = fit_direction(w, 0.3 + 0.2 * (w @ PLANTED[0]) + 0.01 * torch.randn(2000), "smile")
    assert torch.dot(d.normal, PLANTED[0]) > 0.99 and abs(d.normal.norm() - 1) < 1e-5
    assert d.r2 > 0.95 and abs(d.scale - 1) < 0.1  # 1 sd of the projection of N(0, I) latents

    directions = fit_directions(ToyGenerator(), ToyEvaluator(), n=1000)
    assert list(directions) == list(EDIT_ATTRIBUTES)
    for k, name in enumerate(EDIT_ATTRIBUTES):
        assert torch.dot(directions[name].normal, PLANTED[k]) > 0.98
    with pytest.raises(EditingError, match="unknown attribute"):
        fit_directions(ToyGenerator(), ToyEvaluator(), ("eyes",), n=50)


def test_transfer_is_one_when_the_adapted_generator_is_the_source_and_follows_its_gain():
    G = ToyGenerator()
    directions = fit_directions(G, ToyEvaluator(), n=500)
    z = torch.randn(40, STYLE_DIM, generator=torch.Generator().manual_seed(2))
    same = editing_transfer(G, ToyGenerator(), ToyEvaluator(), z, directions)
    assert set(same.n_per_attribute.values()) == {10}
    for name in EDIT_ATTRIBUTES:
        assert same.values[f"{name}_transfer"] == pytest.approx(1.0, abs=1e-6)
        # a 2-sd edit toward the centre along a direction read with slope 0.1 per unit: about 0.2 on the source
        assert 0.15 < same.values[f"{name}_src"] < 0.25
    doubled = editing_transfer(G, ToyGenerator(gain=2.0), ToyEvaluator(), z, directions)
    dead = editing_transfer(G, ToyGenerator(gain=0.0), ToyEvaluator(), z, directions)
    for name in EDIT_ATTRIBUTES:
        assert doubled.values[f"{name}_transfer"] == pytest.approx(2.0, rel=1e-4)
        assert dead.values[f"{name}_transfer"] == pytest.approx(0.0, abs=1e-6)


def test_rows_are_named_per_attribute_with_their_sample_count_and_the_source_side_is_cached():
    G, cache = ToyGenerator(), {}
    z = torch.randn(8, STYLE_DIM, generator=torch.Generator().manual_seed(3))
    rows = editing_rows(G, ToyGenerator(gain=0.5), ToyEvaluator(), z, cache=cache)
    assert [r["metric"] for r in rows] == [f"mini_edit_{a}_{k}_n2" for a in EDIT_ATTRIBUTES
                                           for k in ("src", "tgt", "transfer")]
    assert all(r["n_samples"] == 2 and "InterFaceGAN" in r["protocol"] and np.isfinite(r["value"]) for r in rows)
    assert {key[0] for key in cache} == {"edit-directions", "edit-source"}
    again = editing_rows(G, ToyGenerator(gain=0.5), ToyEvaluator(), z, cache=cache)
    assert again == rows and len(cache) == 2

    class Optimising(ToyGenerator):  # StyleCLIP-style per-latent optimisation: no editing rows
        def optimise(self, start):
            return start

    assert editing_rows(G, Optimising(), ToyEvaluator(), z) == []


def test_boundary_files_take_interfacegan_shapes_and_apply_unnormalised():
    w = torch.zeros(3, STYLE_DIM)
    d = Direction.from_boundary(np.full((1, STYLE_DIM), 2.0), "age", STYLE_DIM, 2)
    assert torch.equal(d.edit(w, torch.tensor([-1.0, 0.0, 3.0]))[:, 0], torch.tensor([-2.0, 0.0, 6.0]))
    wplus = Direction.from_boundary(np.ones((1, 2, STYLE_DIM)), "pose", STYLE_DIM, 2)
    assert wplus.edit(torch.zeros(1, 2, STYLE_DIM), 1.5).eq(1.5).all()
    for bad in (np.ones(STYLE_DIM + 1), np.ones((3, STYLE_DIM)), np.full(STYLE_DIM, np.nan)):
        with pytest.raises(EditingError, match="boundary"):
            Direction.from_boundary(bad, "age", STYLE_DIM, 2)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished two-step mini run (a few-step copy of mini--zombie)."""
    from quickruns import short_shift
    from replication.pipeline.train import main as train_main

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("edit")
    assert train_main(["--shift", str(short_shift(tmp, iterations=2)), "--seed", "0", "--outdir", str(tmp / "runs"),
                       "--no-progress"]) == 0
    return tmp / "runs" / "mini" / "mini--quick" / "nada" / "seed0"


def test_the_edit_cli_writes_the_interpolation_and_edit_grids_of_a_finished_run(tiny_run, tmp_path, capsys):
    from replication.pipeline.edit import INTERPOLATION_STEPS, VIDEO_FRAMES, main

    assert main([str(tiny_run), "--attribute", "smile", "--fit-latents", "100", "--video"]) == 0
    samples = tiny_run / "samples"
    assert Image.open(samples / "interpolation.png").size == (INTERPOLATION_STEPS * 66 + 2, 4 * 66 + 2)
    assert Image.open(samples / "edit_smile.png").size == (7 * 66 + 2, 2 * 66 + 2)
    assert Image.open(samples / "interpolation.gif").n_frames == 2 * VIDEO_FRAMES - 2
    assert "direction smile: R^2" in capsys.readouterr().out

    boundary = tmp_path / "age.npy"
    np.save(boundary, np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32))
    assert main([str(tiny_run), "--boundary", str(boundary), "--attribute", "age"]) == 0
    assert (samples / "edit_age.png").is_file()

    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    for argv, message in (([str(tiny_run), "--boundary", str(boundary)], "needs --attribute"),
                          ([str(tiny_run), "--boundary", str(pickled), "--attribute", "x"], "not a readable .npy"),
                          ([str(tiny_run), "--attribute", "eyes", "--fit-latents", "20"], "unknown attribute"),
                          ([str(tiny_run), "--boundary", str(boundary), "--attribute", "../x"], "names a file"),
                          ([str(tmp_path), "--attribute", "smile"], "not a finished run")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_scoring_a_mini_run_adds_editing_rows_and_grids_that_publishing_keeps(tiny_run, tmp_path):
    from replication.pipeline.score import main as score_main
    from results.publish import publish_run

    for name in ("interpolation.png", "edit_smile.png"):
        (tiny_run / "samples" / name).unlink(missing_ok=True)
    assert score_main([str(tiny_run), "--n-clip", "8", "--n-lpips", "10", "--n-fid", "8", "--no-progress"]) == 0
    rows = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    edit = {r["metric"]: r["value"] for r in rows if r["metric"].startswith("mini_edit_")}
    assert set(edit) == {f"mini_edit_{a}_{k}_n2" for a in EDIT_ATTRIBUTES for k in ("src", "tgt", "transfer")}
    samples = tiny_run / "samples"
    assert (samples / "interpolation.png").is_file()
    assert all((samples / f"edit_{a}.png").is_file() for a in EDIT_ATTRIBUTES)

    runs = tiny_run.parents[3]
    published = publish_run(tiny_run, runs, tmp_path / "reference" / "runs")
    assert (published / "samples" / "interpolation.png").is_file() and (published / "samples" / "final.png").is_file()
    assert all((published / "samples" / f"edit_{a}.png").is_file() for a in EDIT_ATTRIBUTES)
    assert not (published / "checkpoints").exists() and not (published / "samples" / "interpolation.gif").exists()
