"""NADA in a redrawn sketch world is scored against the redrawn sketches; bad arguments are one line."""
import torch

from replication import weights
from replication.miniworld.sketch_world_nada import main, nada_runs


def test_nada_in_the_wash_world_is_scored_against_the_wash_sketches():
    torch.set_num_threads(1)
    clip = weights.resolve("mini-clip-a")
    (wash,) = nada_runs(None, clip, [0], n_eval=8, progress=False, iterations=2)
    (shipped,) = nada_runs(4.0, clip, [0], n_eval=8, progress=False, iterations=2)
    # the same generators (a deterministic run), scored against other truths
    assert wash["scores"]["mini_chroma_n8"] == shipped["scores"]["mini_chroma_n8"]
    assert wash["scores"]["mini_edge_corr_true_n8"] != shipped["scores"]["mini_edge_corr_true_n8"]


def test_the_clip_oracle_in_the_wash_world_follows_the_wash_sketches():
    torch.set_num_threads(1)
    from baselines.oracle import PairedClipDirectionLoss
    from replication.clip_models import load_clip
    from replication.miniworld.sketch_probe import sketch_world

    z = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    loss = PairedClipDirectionLoss([(load_clip("mini-clip-a"), 1.0)], ("photo", "human"), ("sketch", "human"))
    with sketch_world(None):
        (wash_dir,) = loss.directions(z)
    (shipped_dir,) = loss.directions(z)
    assert not torch.allclose(wash_dir, shipped_dir)
    (run,) = nada_runs(None, weights.resolve("mini-clip-a"), [0], n_eval=8, progress=False, iterations=2,
                       method="clip-oracle")
    assert 0.0 < run["scores"]["mini_edge_corr_true_n8"] < 1.0


def test_bad_arguments_are_one_line(tmp_path, capsys):
    assert main(["nada", "--clip", str(tmp_path / "none.pt")]) == 2
    assert main(["clip", "--period", "0", "--out", str(tmp_path / "c.pt")]) == 2
    err = capsys.readouterr().err
    assert "no CLIP at" in err and "--period takes" in err and not (tmp_path / "c.pt").exists()
