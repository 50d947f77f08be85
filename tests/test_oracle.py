"""The oracles: the paired one trained on the true target renders, the CLIP one on their CLIP directions, both through
NADA's loop, mini shifts only, sweepable."""
import json

import pytest
import torch

from baselines import METHODS
from baselines.oracle import CLIP_ORACLE_NAME, METHOD_NAME, PairedClipDirectionLoss, PairedTruthLoss, oracle_config
from replication.checkpoint import load_generator
from replication.config import ConfigError, load_shift
from replication.miniworld.render import render
from replication.miniworld.truth import latent_to_attributes
from replication.nada import resolve_generator_path


def _paired_l1(G, z, style, character):
    with torch.no_grad():
        x, _ = G([z], noise_mode="const")
    return (x.clamp(-1, 1) - render(latent_to_attributes(z), style, character)).abs().mean().item()


def test_short_oracle_run_moves_the_shipped_generator_toward_the_true_sketch(tmp_path):
    torch.set_num_threads(1)
    shift = load_shift("mini--sketch", {"nada": {"iterations": 30, "output_interval": 1000, "save_interval": 0}})
    G_src, _ = load_generator(resolve_generator_path("mini-stylegan2"))
    G_tgt = METHODS[METHOD_NAME](G_src, shift, 0, tmp_path, progress=False)
    z = torch.randn(32, G_src.style_dim, generator=torch.Generator().manual_seed(11))  # not the training latents
    before, after = _paired_l1(G_src, z, "sketch", "human"), _paired_l1(G_tgt, z, "sketch", "human")
    # measured 0.66 -> about 0.25 after 30 steps; a loss against the wrong target would not halve it
    assert after < 0.5 * before, (before, after)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["method"] == METHOD_NAME and config["nada"]["auto_layer_iters"] == 0
    stats = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert {"truth_pixel", "truth_perceptual"} <= set(stats[0])


def test_truth_loss_is_zero_at_the_truth_and_needs_the_latents():
    z = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    truth = render(latent_to_attributes(z), "photo", "zombie")
    loss_fn = PairedTruthLoss("photo", "zombie")
    loss, _ = loss_fn(truth, truth, z)
    assert float(loss) < 1e-6
    other, _ = loss_fn(truth, render(latent_to_attributes(z), "photo", "human"), z)
    assert float(other) > 0.05


def _clip_loss():
    from replication.clip_models import load_clip

    return PairedClipDirectionLoss([(load_clip("mini-clip-a"), 1.0)], ("photo", "human"), ("sketch", "human"))


def test_clip_oracle_loss_is_zero_for_the_true_edit_and_needs_the_latents():
    z = torch.randn(4, 64, generator=torch.Generator().manual_seed(3))
    attrs = latent_to_attributes(z)
    photo, sketch = render(attrs, "photo", "human"), render(attrs, "sketch", "human")
    loss_fn = _clip_loss()
    loss, stats = loss_fn(photo, sketch, z)
    assert float(loss) < 1e-4 and set(stats) == {"truth_direction/0"}
    # the same edit toward another domain, or toward the sketch of other faces, is not the truth's direction
    assert float(loss_fn(photo, render(attrs, "photo", "zombie"), z)[0]) > 0.3
    other = torch.randn(4, 64, generator=torch.Generator().manual_seed(4))
    assert float(loss_fn(photo, sketch, other)[0]) > 0.05


def test_clip_oracle_loss_is_finite_for_an_unmoved_generator_in_faithful_mode():
    from replication.clip_models import load_clip

    z = torch.randn(2, 64, generator=torch.Generator().manual_seed(5))
    photo = render(latent_to_attributes(z), "photo", "human")
    loss_fn = PairedClipDirectionLoss([(load_clip("mini-clip-a"), 1.0)], ("photo", "human"), ("sketch", "human"),
                                      mode="faithful")
    # NADA's guard: an exactly zero edit is re-encoded 1e-6 off, never divided by zero
    assert torch.isfinite(loss_fn(photo, photo.clone(), z)[0])


def test_short_clip_oracle_run_lowers_its_truth_direction_loss(tmp_path):
    torch.set_num_threads(1)
    shift = load_shift("mini--sketch", {"nada": {"iterations": 20, "output_interval": 1000, "save_interval": 0,
                                                 "auto_layer_iters": 1}})
    G_src, _ = load_generator(resolve_generator_path("mini-stylegan2"))
    METHODS[CLIP_ORACLE_NAME](G_src, shift, 0, tmp_path, progress=False)
    stats = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    # measured 1.0 at the first step (G_tgt = G_src) and 0.73 at the 20th
    assert stats[0]["truth_direction/0"] > 0.99 and stats[-1]["truth_direction/0"] < 0.9
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["method"] == CLIP_ORACLE_NAME and config["nada"]["auto_layer_iters"] == 0
    assert config["nada"]["clip_models"] == ["mini-clip-a"]


def test_oracle_switches_off_mixing_and_clip_layer_selection():
    shift = load_shift("mini--zombie", {"nada": {"mixing": 0.9, "auto_layer_iters": 1}})
    fixed = oracle_config(shift)
    assert fixed.nada.mixing == 0.0 and fixed.nada.auto_layer_iters == 0 and fixed.nada.lr == shift.nada.lr


@pytest.mark.parametrize("method", [METHOD_NAME, CLIP_ORACLE_NAME])
def test_oracles_refuse_a_paper_shift_in_one_line(method):
    from baselines import check_method

    with pytest.raises(ConfigError, match=f"^{method} needs the mini world's renderer"):
        check_method(method, load_shift("ffhq--sketch"))


def test_replicate_trains_nada_by_default_and_the_oracles_when_asked():
    from replication.pipeline.replicate import methods_for

    assert methods_for("mini", None) == methods_for("paper", None) == ["nada"]
    assert methods_for("mini", [METHOD_NAME, CLIP_ORACLE_NAME]) == [METHOD_NAME, CLIP_ORACLE_NAME]


def test_sweep_variants_can_name_a_method(tmp_path):
    from replication.runio import REPO_ROOT
    from replication.pipeline.sweep import load_sweep

    sweep = load_sweep(REPO_ROOT / "replication" / "sweeps" / "mini-oracle.toml")
    assert {v.method for v in sweep.variants} == {METHOD_NAME}
    bad = tmp_path / "bad.toml"
    bad.write_text('shifts = ["mini--sketch"]\n[[variant]]\nname = "a"\nmethod = "nada-typo"\n')
    with pytest.raises(ConfigError, match="unknown method 'nada-typo'"):
        load_sweep(bad)


@pytest.mark.parametrize("cli", ["train", "replicate"])
def test_clis_refuse_the_oracle_on_a_paper_shift_before_loading_weights(tmp_path, capsys, cli):
    # the paper generator is not converted here: the oracle's own reason must come first, in one line, and no run
    # folder may be started
    if cli == "train":
        from replication.pipeline.train import main

        argv = ["--shift", "ffhq--sketch", "--method", METHOD_NAME, "--outdir", str(tmp_path / "runs")]
    else:
        from replication.pipeline.replicate import main

        argv = ["--world", "paper", "--shifts", "ffhq--sketch", "--methods", METHOD_NAME, "--outdir",
                str(tmp_path / "runs"), "--no-figures", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mini world's renderer" in err[0]
    assert not (tmp_path / "runs").exists()
