"""Metric maths, statistics over seeds, the scores collector and the figure scripts on a fixture results tree."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from replication.miniworld.imagestats import edge_correlation
from replication.miniworld.truth import MiniShift, ShiftKindError, mini_shift
from replication.miniworld.truth import attribute_r2
from metrics.stats import bootstrap_ci, probability_of_improvement
from paper_figures.make_all import make_all
from results.collect import COLUMNS, collect_rows, write_scores


def test_mini_shift_reads_style_and_character_shifts():
    assert mini_shift("photo", "sketch") == MiniShift("style", "sketch")
    assert mini_shift("human", "zombie").target_style == "photo"
    with pytest.raises(ShiftKindError, match="'photo' to one of"):
        mini_shift("photo", "zombie")


def test_r2_and_edge_correlation():
    rng = np.random.default_rng(0)
    truth = torch.from_numpy(rng.random((200, 13)))  # the 13 mini-world attributes (two of them circular)
    assert np.allclose(attribute_r2(truth, truth), 1.0)
    # the mean predicts nothing on the linear attributes; the two circular ones (wrapped residuals, where the
    # arithmetic mean is not the best constant) are covered by test_attribute_r2_wraps_circular_attributes
    from replication.miniworld.truth import CIRCULAR_ATTRIBUTES
    from replication.miniworld.attributes import ATTRIBUTE_NAMES

    linear = [i for i, n in enumerate(ATTRIBUTE_NAMES) if n not in CIRCULAR_ATTRIBUTES]
    assert np.all(np.array(attribute_r2(truth.mean(0).expand_as(truth), truth))[linear] < 1e-9)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    assert torch.allclose(edge_correlation(x, x), torch.ones(4), atol=1e-5)
    assert torch.allclose(edge_correlation(x, 0.5 * x + 0.1), torch.ones(4), atol=1e-5)  # contrast-invariant
    assert edge_correlation(x, torch.rand(4, 3, 16, 16)).abs().max() < 0.5


def test_bootstrap_ci_brackets_the_mean_and_is_seeded():
    vals = [0.2, 0.4, 0.5, 0.9]
    mean, lo, hi = bootstrap_ci(vals)
    assert lo <= mean <= hi and mean == pytest.approx(0.5)
    assert bootstrap_ci(vals) == (mean, lo, hi)
    assert bootstrap_ci([0.3]) == (0.3, 0.3, 0.3)
    assert probability_of_improvement([2, 3], [1, 1]) == 1.0 and probability_of_improvement([1], [1]) == 0.5


def _fake_run(root, shift, method, seed, value):
    run = root / "mini" / shift / method / f"seed{seed}"
    (run / "samples").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"mode": "faithful"}))
    (run / "env.json").write_text(json.dumps({"git_sha": "abc123"}))
    (run / "metrics.jsonl").write_text(json.dumps({"metric": "mini_target_accuracy_n8", "value": value,
                                                   "n_samples": 8, "protocol": "p"}) + "\n")
    from PIL import Image

    Image.new("RGB", (40, 20)).save(run / "samples" / "final.png")
    (run / "DONE").write_text("{}")
    return run


def test_collect_and_figures_from_a_fixture_tree(tmp_path):
    runs = tmp_path / "runs"
    for seed, v in enumerate([0.8, 0.9]):
        _fake_run(runs, "mini--sketch", "nada", seed, v)
        _fake_run(runs, "mini--sketch", "source", seed, 0.0)
    unfinished = _fake_run(runs, "mini--zombie", "nada", 0, 0.5)
    (unfinished / "DONE").unlink()
    rows = collect_rows(runs)
    assert len(rows) == 4 and {r["shift"] for r in rows} == {"mini--sketch"}
    assert rows[0].keys() == set(COLUMNS) and rows[0]["code_version"] == "abc123"
    csv_path = write_scores(rows, tmp_path / "scores.csv")
    assert csv_path.read_text().splitlines()[0] == ",".join(COLUMNS)
    figures = make_all(csv_path, runs, tmp_path / "out")
    assert {p.name for p in figures} == {"mini_scores.png", "mini_grids.png"}
    assert all(p.stat().st_size > 1000 for p in figures)
    # a many-seed sweep's scores (same long format) add the per-seed verdict figure
    figures = make_all(csv_path, runs, tmp_path / "out", seeds_csv=csv_path)
    assert "mini_seeds.png" in {p.name for p in figures}
    assert (tmp_path / "out" / "mini_seeds.png").stat().st_size > 1000


def test_figure_pools_each_headline_metric_without_its_source_reference():
    from paper_figures.make_all import _base

    assert _base("mini_edge_corr_true_n500") == "edge_corr_true"
    assert _base("mini_edge_corr_true_src_n500") == ""  # the unadapted generator's score, drawn apart or not at all
    assert _base("mini_paired_l1_src_n500") == "" and _base("mini_paired_l1_n500") == "paired_l1"
    assert _base("clip_dir_miniclipb_n500") == "clip_dir" and _base("clip_target_sim_miniclipb_n500") == ""
    assert _base("mini_attr_r2_src_n500") == "" and _base("mini_attr_r2_ratio_n500") == "attr_r2_ratio"


def test_stale_scores_are_found_by_scorer_sha256(tmp_path):
    """A run scored by other evaluator / eval-CLIP weights is stale (make replicate warns, --rerun-stale redoes it)."""
    from replication.pipeline.scoring import scorer_sha256, scores_are_current, write_metrics

    current = scorer_sha256()
    assert set(current) == {"mini-evaluator", "mini-clip-b"} and all(len(v) == 64 for v in current.values())
    assert not scores_are_current(tmp_path, current)  # never scored
    write_metrics(tmp_path, [{"metric": "m", "value": 1.0, "scorers": current}])
    assert scores_are_current(tmp_path, current)
    old = dict(current, **{"mini-evaluator": "0" * 64})
    write_metrics(tmp_path, [{"metric": "m", "value": 1.0, "scorers": current},
                             {"metric": "n", "value": 2.0, "scorers": old}])
    assert not scores_are_current(tmp_path, current)
    write_metrics(tmp_path, [{"metric": "m", "value": 1.0}])  # scored before the provenance was recorded
    assert not scores_are_current(tmp_path, current)


def test_a_mini_run_is_current_only_for_todays_generator_clip_and_scorers(tmp_path):
    from replication.pipeline.scoring import scorer_sha256, write_metrics
    from replication.config import load_shift
    from replication.nada import run_weight_sha256
    from replication.pipeline.launch import run_is_current

    shift = load_shift("mini--sketch")
    trained_on = run_weight_sha256(shift)
    # the guidance CLIP is a registry name, and its file's hash is part of what a run depends on
    assert set(trained_on) == {"generator:mini-stylegan2", "clip:mini-clip-a"}
    (tmp_path / "env.json").write_text(json.dumps({"weights_sha256": trained_on}))
    write_metrics(tmp_path, [{"metric": "m", "value": 1.0, "scorers": scorer_sha256()}])
    assert run_is_current(tmp_path, shift)
    (tmp_path / "env.json").write_text(json.dumps({"weights_sha256": dict(trained_on, **{"clip:mini-clip-a": "0" * 64})}))
    assert not run_is_current(tmp_path, shift)
    (tmp_path / "env.json").unlink()
    assert not run_is_current(tmp_path, shift)


def test_rescore_scores_a_finished_run_again_without_training(tmp_path):
    import torch

    from replication.config import load_shift
    from replication.pipeline.launch import Job, JobOptions, can_rescore, run_job
    from metrics.scoring import ScoringSettings

    torch.set_num_threads(1)
    options = JobOptions(outdir=str(tmp_path), settings={"mini": ScoringSettings(n_clip=8, n_lpips=10, n_fid=8)})
    shift, job = load_shift("mini--sketch"), Job("mini--sketch", "source", 0)
    result = run_job(job, options)
    assert result.status == "trained"
    run_dir = Path(result.run_dir)
    metrics = run_dir / "metrics.jsonl"
    first = metrics.read_text()
    assert "truth_clip_dir_miniclipb_n8" in first and "train_truth_clip_dir_miniclipa_n8" in first
    metrics.write_text('{"metric": "old", "value": 0.0}\n')  # scored by an older metric set
    assert run_job(job, options).status == "kept"
    assert "old" in metrics.read_text()  # a finished run is kept as it is ...
    assert can_rescore(run_dir, shift, "source") and not can_rescore(run_dir, shift, "nada")  # nada: no G_tgt.pt
    assert run_job(job, dataclasses.replace(options, rescore=True)).status == "rescored"
    assert metrics.read_text() == first  # ... unless asked to rescore, which reproduces the scores exactly


def test_a_broken_metrics_file_is_stale_so_rerun_stale_repairs_it(tmp_path):
    from replication.pipeline.scoring import scorer_sha256, scores_are_current, write_metrics

    current = scorer_sha256()
    write_metrics(tmp_path, [{"metric": "m", "value": 1.0, "scorers": current}])
    assert scores_are_current(tmp_path, current)
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"metric": "cut off", "val\n')  # a write cut short
    assert not scores_are_current(tmp_path, current)
