"""`make verify` passes on scores equal to the reference, fails when one moves past its stated tolerance;
`make reference` is the only writer of the shipped reference and replaces a run as a whole."""
import csv
import shutil
from pathlib import Path

import pytest

from replication.config import ConfigError, load_shift, load_tolerances
from replication.pipeline.verify import main as verify_main
from replication.runio import REPO_ROOT
from results.collect import COLUMNS
from results.publish import main as publish_main

REFERENCE = REPO_ROOT / "results" / "reference" / "scores.csv"


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _write(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_every_mini_shift_states_its_tolerances():
    for shift in ("mini--zombie", "mini--sketch", "mini--clown"):
        tolerances = load_tolerances(shift)
        assert tolerances["mini_target_accuracy"] > 0 and "clip_dir_miniclipb" in tolerances


def test_a_bad_tolerance_is_a_config_error(tmp_path):
    path = tmp_path / "mini--bad.toml"
    text = (REPO_ROOT / "replication" / "shifts" / "mini--zombie.toml").read_text()
    path.write_text(text.replace("mini_paired_l1 = 0.02", "mini_paired_l1 = -1"))
    with pytest.raises(ConfigError, match=r"\[verify\] mini_paired_l1 must be a tolerance >= 0"):
        load_shift(str(path))


def test_verify_passes_on_the_reference_and_fails_when_a_score_moves(tmp_path, capsys):
    rows = [r for r in _rows(REFERENCE) if r["world"] == "mini" and r["method"] == "nada"]
    assert rows, "the shipped reference holds NADA's mini scores"
    same = _write(tmp_path / "same.csv", rows)
    assert verify_main(["--scores", str(same)]) == 0
    out = capsys.readouterr().out
    assert "| pass |" in out and "FAIL" not in out
    moved = [dict(r) for r in rows]
    for r in moved:  # one shift's target accuracy drops by 0.2 on every seed
        if r["shift"] == "mini--zombie" and r["metric"].startswith("mini_target_accuracy_n"):
            r["value"] = str(float(r["value"]) - 0.2)
    assert verify_main(["--scores", str(_write(tmp_path / "moved.csv", moved)), "--out", str(tmp_path / "v.md")]) == 1
    out = capsys.readouterr().out
    failing = [line for line in out.splitlines() if "FAIL" in line]
    assert len(failing) == 1 and "mini--zombie" in failing[0] and "-0.2000" in failing[0]
    assert (tmp_path / "v.md").read_text().count("FAIL") == 1


def test_verify_compares_paper_scores_with_published_numbers(tmp_path, capsys):
    numbers = tmp_path / "numbers.toml"
    numbers.write_text('[[rows]]\nworld = "paper"\nshift = "dog--cat-svl"\nmethod = "nada"\n'
                       'metric = "intra_lpips_lpipsvgg_avg"\nvalue = 0.460\ntolerance = 0.05\n'
                       'source = "SVL Table 1"\n')
    row = dict.fromkeys(COLUMNS, "")
    row.update(world="paper", shift="dog--cat-svl", method="nada", seed="0", metric="intra_lpips_lpipsvgg_avg_n1000")
    fresh = _write(tmp_path / "fresh.csv", [dict(row, value="0.47"), dict(row, seed="1", value="0.49")])
    assert verify_main(["--scores", str(fresh), "--numbers", str(numbers)]) == 0  # mean 0.48, within 0.05
    assert "SVL Table 1" in capsys.readouterr().out
    far = _write(tmp_path / "far.csv", [dict(row, value="0.30")])
    assert verify_main(["--scores", str(far), "--numbers", str(numbers)]) == 1


def test_verify_without_fresh_scores_says_what_to_run(tmp_path, capsys):
    assert verify_main(["--scores", str(tmp_path / "none.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "make replicate" in err[0]


def test_publishing_replaces_a_reference_run_whole_and_keeps_the_others(tmp_path):
    shipped = REPO_ROOT / "results" / "reference" / "runs" / "mini" / "mini--zombie" / "nada" / "seed0"
    runs = tmp_path / "runs"
    fresh = runs / "mini" / "mini--zombie" / "nada" / "seed0"
    shutil.copytree(shipped, fresh)
    (fresh / "checkpoints").mkdir()
    (fresh / "checkpoints" / "G_tgt.pt").write_bytes(b"weights stay out of the reference")
    reference = tmp_path / "reference"
    other = reference / "runs" / "mini" / "mini--sketch" / "nada" / "seed0"
    shutil.copytree(shipped.parent.parent.parent / "mini--sketch" / "nada" / "seed0", other)
    stale = reference / "runs" / "mini" / "mini--zombie" / "nada" / "seed0"
    stale.mkdir(parents=True)
    (stale / "leftover.txt").write_text("from an older publication")
    assert publish_main(["--runs", str(runs), "--reference", str(reference)]) == 0
    assert not (stale / "leftover.txt").exists() and not (stale / "checkpoints").exists()
    assert (stale / "samples" / "final.png").is_file() and (other / "DONE").is_file()
    shifts = {r["shift"] for r in _rows(reference / "scores.csv")}
    assert shifts == {"mini--zombie", "mini--sketch"}
