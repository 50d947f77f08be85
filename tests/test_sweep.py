"""Sweep files: validated before anything trains; a tiny sweep trains, scores and tabulates like make replicate."""
import json

import pytest
import torch

from replication.config import ConfigError
from replication.pipeline.sweep import load_sweep, main


def _write(tmp_path, text, name="s.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_sweep_file_is_valid():
    from replication.runio import REPO_ROOT

    sweep = load_sweep(REPO_ROOT / "replication" / "sweeps" / "mini-nada.toml")
    assert sweep.name == "mini-nada" and "default" in [v.name for v in sweep.variants]
    assert set(sweep.shifts) == {"mini--sketch", "mini--zombie"}


@pytest.mark.parametrize("text, message", [
    ('shifts = ["mini--sketch"]\n[[variant]]\nname = "a"\nnada = { lr_typo = 1 }\n', "lr_typo"),
    ('shifts = ["mini--sketch"]\n[[variant]]\nname = "../x"\n', "folder-safe"),
    ('shifts = ["mini--sketch"]\n[[variant]]\nname = "a"\n[[variant]]\nname = "a"\n', "distinct"),
    ('shifts = ["ffhq--sketch"]\n[[variant]]\nname = "a"\n', "mini shifts only"),
    ('shift = ["mini--sketch"]\n', "unknown key"),
])
def test_bad_sweep_files_are_one_clear_error(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_sweep(_write(tmp_path, text))


def test_cli_reports_a_bad_file_and_writes_nothing(tmp_path, capsys):
    path = _write(tmp_path, 'shifts = ["mini--sketch"]\n[[variant]]\nname = "a"\nnada = { lr = "fast" }\n')
    assert main([str(path), "--outdir", str(tmp_path / "out")]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_tiny_sweep_trains_scores_and_tabulates(tmp_path, capsys):
    torch.set_num_threads(1)
    path = _write(tmp_path, 'seeds = [0]\nn_eval = 8\nn_lpips = 10\nn_fid = 8\nshifts = ["mini--sketch"]\n'
                            '[[variant]]\nname = "two-steps"\nnada = { iterations = 2, output_interval = 1000, '
                            'save_interval = 0 }\n[[variant]]\nname = "unrun"\nnada = { iterations = 3 }\n', "tiny.toml")
    out = tmp_path / "out"
    assert main([str(path), "--outdir", str(out), "--only", "two-steps", "--no-progress"]) == 0
    run_dir = out / "tiny" / "mini" / "mini--sketch" / "two-steps" / "seed0"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["nada"]["iterations"] == 2 and config["method"] == "nada[two-steps]"
    table = (out / "tiny.md").read_text().splitlines()
    assert len(table) == 3 and table[2].startswith("| mini--sketch | two-steps | 0 |")  # the unrun variant has no row
    csv = (out / "tiny.csv").read_text()
    assert "mini_target_accuracy_n8" in csv and "train_truth_clip_dir_miniclipa_n8" in csv
    before = (run_dir / "metrics.jsonl").read_text()
    assert main([str(path), "--outdir", str(out), "--only", "two-steps", "--no-progress"]) == 0  # kept, not redone
    assert (run_dir / "metrics.jsonl").read_text() == before
    assert main([str(path), "--outdir", str(out), "--only", "nope"]) == 2

    # a run trained on other weights (here: a guidance CLIP file that has since changed) is reported, and redone
    # only when asked
    env = json.loads((run_dir / "env.json").read_text())
    env["weights_sha256"] = {k: "0" * 64 for k in env["weights_sha256"]}
    (run_dir / "env.json").write_text(json.dumps(env))
    assert main([str(path), "--outdir", str(out), "--only", "two-steps", "--no-progress"]) == 0
    assert "other weights than the registry's" in capsys.readouterr().err
    assert json.loads((run_dir / "env.json").read_text())["weights_sha256"] == env["weights_sha256"]  # kept
    assert main([str(path), "--outdir", str(out), "--only", "two-steps", "--no-progress", "--rerun-stale"]) == 0
    assert "other weights" not in capsys.readouterr().err
    assert json.loads((run_dir / "env.json").read_text())["weights_sha256"] != env["weights_sha256"]


def test_a_bar_passes_at_its_threshold_and_the_paired_error_against_the_source():
    from metrics.miniworld import NADA_BARS, bars_for

    bars = {bar.name: bar for bar in NADA_BARS}
    assert bars["target"].passes({"mini_target_accuracy": 0.8}) and not bars["target"].passes(
        {"mini_target_accuracy": 0.79})
    l1 = bars["paired L1 below source"]
    assert l1.passes({"mini_paired_l1": 0.3, "mini_paired_l1_src": 0.6})
    assert not l1.passes({"mini_paired_l1": 0.6, "mini_paired_l1_src": 0.6})
    assert l1.passes({"mini_paired_l1": 0.3}) is None and bars["target"].passes({}) is None
    assert "edge corr" in [b.name for b in bars_for("style")]
    assert "edge corr" not in [b.name for b in bars_for("character")]


def _fake_run(root, seed, **scores):
    from replication.runio import mark_done

    run_dir = root / "fake" / "mini" / "mini--zombie" / "v" / f"seed{seed}"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"metric": f"{k}_n500", "value": v}) + "\n"
                                                   for k, v in scores.items()))
    mark_done(run_dir, {"seconds": 1.0})


def test_the_table_counts_over_seeds_the_runs_that_pass_each_bar(tmp_path):
    """Across seeds, a bar's verdict is a count: zombie seeds reading 0.9 and 0.7 pass the target bar once, and only
    the character shift's bars are counted (no edge correlation on a character shift)."""
    from replication.pipeline.sweep import Sweep, Variant, table_markdown

    good = dict(mini_kept_label_accuracy=1.0, mini_attr_r2_ratio=0.8, mini_pixel_spread_ratio=1.0,
                mini_edge_corr_true=0.1, mini_attr_r2_tgt_smile=0.9, mini_attr_r2_tgt_eye_size=-0.5)
    _fake_run(tmp_path, 0, mini_target_accuracy=0.9, **good)
    _fake_run(tmp_path, 1, mini_target_accuracy=0.7, **good)
    sweep = Sweep("fake", ("mini--zombie",), (0, 1, 2), 500, (Variant("v", {}, "nada"),))
    lines = table_markdown(sweep, tmp_path).splitlines()
    assert sum(line.startswith("| mini--zombie | v | ") for line in lines) == 3  # two runs, one summary row
    summary = lines[-1].split(" | ")
    assert summary[2] == "2" and summary[3] == "0.80 +- 0.14 (1/2)" and summary[4] == "1.00 +- 0.00 (2/2)"
    assert summary[6] == "" and summary[-1] == "1/2 |"
    assert summary[-2] == "eye_size -0.50"  # the attribute the adaptation loses most, averaged over seeds
