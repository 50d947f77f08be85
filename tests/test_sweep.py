"""Sweep files: validated before anything trains; a tiny sweep trains, scores and tabulates like make replicate."""
import json

import pytest
import torch

from replication.config import ConfigError
from replication.sweep import load_sweep, main


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
    path = _write(tmp_path, 'seeds = [0]\nn_eval = 8\nshifts = ["mini--sketch"]\n'
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
