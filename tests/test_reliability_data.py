"""Collecting scores from run folders: bad metrics.jsonl lines are one-line CollectErrors and scores.csv stays intact."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from results import collect
from results.collect import CollectError, collect_rows, write_scores

GOOD = {"metric": "mini_target_accuracy_n8", "value": 0.9, "n_samples": 8, "protocol": "p"}


def _run(root: Path, metrics_text: str, *, shift: str = "mini--sketch", seed: int = 0, done: bool = True) -> Path:
    run = root / "mini" / shift / "nada" / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"mode": "faithful"}))
    (run / "env.json").write_text(json.dumps({"git_sha": "abc123"}))
    (run / "metrics.jsonl").write_text(metrics_text)
    if done:
        (run / "DONE").write_text("{}")
    return run


def _lines(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def _one_line_error(runs: Path) -> str:
    with pytest.raises(CollectError) as info:
        collect_rows(runs)
    text = str(info.value)
    assert "\n" not in text
    return text


def test_blank_lines_are_skipped(tmp_path):
    runs = tmp_path / "runs"
    _run(runs, _lines(GOOD, "", {**GOOD, "metric": "other_n8", "value": 1}) + "\n  \n")
    rows = collect_rows(runs)
    assert [(r["metric"], r["value"]) for r in rows] == [("mini_target_accuracy_n8", 0.9), ("other_n8", 1)]


def test_malformed_line_names_file_line_and_fix(tmp_path):
    runs = tmp_path / "runs"
    run = _run(runs, _lines(GOOD, '{"metric": "x_n8", "value": 0.'))
    text = _one_line_error(runs)
    assert f"{run / 'metrics.jsonl'}:2: not valid JSON" in text
    assert f"make metrics RUN={run}" in text and "make replicate RERUN_STALE=1" in text


@pytest.mark.parametrize("record, problem", [
    ({"metric": "m_n8", "value": "0.9"}, 'value "0.9", not a finite number'),
    ({"metric": "m_n8", "value": [0.9]}, "value [0.9], not a finite number"),
    ({"metric": "m_n8", "value": True}, "value true, not a finite number"),
    ({"metric": "m_n8", "value": None}, "value null, not a finite number"),
    ('{"metric": "m_n8", "value": NaN}', "value NaN, not a finite number"),
    ({"metric": "m_n8"}, "has no \"value\""),
    ({"value": 0.9}, "no \"metric\" name"),
    ({"metric": 3, "value": 0.9}, "no \"metric\" name"),
    ("[1, 2]", "no \"metric\" name"),
])
def test_non_numeric_value_or_missing_field_is_refused(tmp_path, record, problem):
    runs = tmp_path / "runs"
    run = _run(runs, _lines(GOOD, "", record))
    text = _one_line_error(runs)
    assert text.startswith(f"{run / 'metrics.jsonl'}:3: ") and problem in text
    assert f"make metrics RUN={run}" in text


@pytest.mark.parametrize("text", ["", "\n\n"])
def test_empty_metrics_of_a_finished_run_is_an_error(tmp_path, text):
    runs = tmp_path / "runs"
    _run(runs, _lines(GOOD), seed=0)
    empty = _run(runs, text, seed=1)
    message = _one_line_error(runs)
    assert message.startswith(f"{empty / 'metrics.jsonl'}: a finished run with no metrics")


def test_unfinished_runs_are_still_skipped(tmp_path):
    runs = tmp_path / "runs"
    _run(runs, _lines(GOOD), seed=0)
    _run(runs, "", seed=1, done=False)
    _run(runs, "not json\n", seed=2, done=False)
    assert [r["seed"] for r in collect_rows(runs)] == [0]


def test_damaged_config_names_the_file(tmp_path):
    runs = tmp_path / "runs"
    run = _run(runs, _lines(GOOD))
    (run / "config.json").write_text("{")
    assert _one_line_error(runs).startswith(f"{run / 'config.json'}: unreadable")


def test_cli_error_exits_2_and_leaves_scores_csv_intact(tmp_path, monkeypatch, capsys):
    runs, scores = tmp_path / "runs", tmp_path / "scores.csv"
    monkeypatch.setattr(collect, "RUNS_DIR", runs)
    monkeypatch.setattr(collect, "SCORES_CSV", scores)
    run = _run(runs, _lines(GOOD))
    assert collect.main([]) == 0
    before = scores.read_bytes()
    assert b"mini_target_accuracy_n8,0.9" in before
    _run(runs, _lines(GOOD, {"metric": "m_n8", "value": "high"}), seed=1)
    capsys.readouterr()
    assert collect.main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "seed1/metrics.jsonl:2:" in err
    assert scores.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "scores.csv"]  # no temp file left behind
    (run.parent / "seed1" / "metrics.jsonl").write_text(_lines(GOOD) + "\n")
    assert collect.main([]) == 0 and scores.read_bytes() != before


def test_write_scores_is_not_reached_when_collection_fails(tmp_path):
    runs, scores = tmp_path / "runs", tmp_path / "scores.csv"
    _run(runs, _lines({"metric": "m_n8", "value": "0.9"}))
    scores.write_text("old scores\n")
    with pytest.raises(CollectError):
        write_scores(collect_rows(runs), scores)
    assert scores.read_text() == "old scores\n"
