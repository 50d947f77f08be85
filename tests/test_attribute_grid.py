"""The attribute grid draws a finished mini run's G_src, G_tgt and the truth over one attribute's range."""
import pytest
import torch

from paper_figures.attribute_grid import AttributeGridError, attribute_grid, main
from replication.pipeline.sweep import main as sweep_main


def test_grid_rows_are_the_generators_and_the_truth_ordered_by_the_attribute(tmp_path, capsys):
    from replication.sampling import sample_images
    from replication.checkpoint import load_generator
    from replication.miniworld.attributes import ATTRIBUTE_INDEX
    from replication.miniworld.render import render
    from replication.miniworld.truth import latent_to_attributes
    from replication.nada import resolve_generator_path

    torch.set_num_threads(1)
    sweep = tmp_path / "tiny.toml"
    sweep.write_text('seeds = [0]\nn_eval = 8\nn_lpips = 10\nn_fid = 8\nshifts = ["mini--zombie"]\n'
                     '[[variant]]\nname = "two-steps"\n'
                     'nada = { iterations = 2, output_interval = 1000, save_interval = 0 }\n')
    assert sweep_main([str(sweep), "--outdir", str(tmp_path / "out"), "--no-progress"]) == 0
    run_dir = tmp_path / "out" / "tiny" / "mini" / "mini--zombie" / "two-steps" / "seed0"
    grid = attribute_grid(run_dir, "smile", columns=4, pool=16, seed=3)
    assert grid.shape == (16, 3, 64, 64)
    z = torch.randn(16, 64, generator=torch.Generator().manual_seed(3))
    smiles = latent_to_attributes(z)[:, ATTRIBUTE_INDEX["smile"]]
    z = z[smiles.argsort()[torch.tensor([0, 5, 10, 15])]]
    attrs = latent_to_attributes(z)
    assert torch.equal(grid[8:12], render(attrs, "photo", "zombie")) and torch.equal(grid[12:], render(attrs, "photo",
                                                                                                      "human"))
    G_src, _ = load_generator(resolve_generator_path("mini-stylegan2"))
    assert torch.equal(grid[:4], sample_images(G_src, z)) and not torch.equal(grid[4:8], grid[:4])

    with pytest.raises(AttributeGridError, match="unknown attribute"):
        attribute_grid(run_dir, "eyes")
    out = tmp_path / "grid.png"
    assert main([str(tmp_path), "--out", str(out)]) == 2 and not out.exists()
    assert "not a finished run" in capsys.readouterr().err
    assert main([str(run_dir), "--attribute", "smile", "--columns", "4", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000


def test_several_runs_of_one_shift_get_a_row_each_and_other_shifts_are_refused(tmp_path, capsys):
    torch.set_num_threads(1)
    sweep = tmp_path / "tiny.toml"
    sweep.write_text('seeds = [0]\nn_eval = 8\nn_lpips = 10\nn_fid = 8\nshifts = ["mini--zombie", "mini--sketch"]\n'
                     '[[variant]]\nname = "a"\nnada = { iterations = 2, output_interval = 1000, save_interval = 0 }\n'
                     '[[variant]]\nname = "b"\nnada = { iterations = 3, output_interval = 1000, save_interval = 0 }\n')
    assert sweep_main([str(sweep), "--outdir", str(tmp_path / "out"), "--no-progress"]) == 0
    runs = tmp_path / "out" / "tiny" / "mini"
    zombie_a, zombie_b = runs / "mini--zombie" / "a" / "seed0", runs / "mini--zombie" / "b" / "seed0"
    grid = attribute_grid([zombie_a, zombie_b], "smile", columns=4, pool=16, seed=3)
    single = attribute_grid(zombie_a, "smile", columns=4, pool=16, seed=3)
    assert grid.shape == (20, 3, 64, 64)
    # rows: G_src, run a, run b, then the truths; one more step moves run b's row off run a's
    assert torch.equal(grid[:8], single[:8]) and torch.equal(grid[12:], single[8:])
    assert not torch.equal(grid[8:12], grid[4:8])
    with pytest.raises(AttributeGridError, match="different shifts"):
        attribute_grid([zombie_a, runs / "mini--sketch" / "a" / "seed0"], "smile", columns=4, pool=16)
    out = tmp_path / "two.png"
    assert main([str(zombie_a), str(zombie_b), "--attribute", "smile", "--columns", "4", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
