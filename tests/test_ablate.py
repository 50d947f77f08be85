"""`make ablate`: the ablation file's variants run through the launcher, shared runs once, and a table and figure come
out with a CI over seeds; a bad file is one line before anything trains."""
from pathlib import Path

from paper_figures.ablations import load_ablations
from replication.pipeline.ablate import ablation_jobs
from replication.pipeline.ablate import main as ablate_main
from quickruns import TINY, short_shift


def test_the_shipped_ablations_cover_the_four_the_paper_asks_for():
    seeds, ablations = load_ablations()
    assert seeds == (0, 1, 2)
    assert {a.name for a in ablations} == {"loss", "freezing", "mapper", "clips"}
    methods = {v.method for a in ablations for v in a.variants}
    assert {"nada", "nada-global", "nada-freeze", "nada-mapper"} <= methods
    jobs = ablation_jobs(ablations, seeds)
    assert len(jobs) == len(set((j.shift, j.folder, j.seed) for j in jobs))  # a shared run is trained once
    assert sum(j.shift == "mini--zombie" and j.folder == "nada" and j.seed == 0 for j in jobs) == 1


def test_ablate_writes_a_table_with_cis_and_a_figure(tmp_path):
    shift = short_shift(tmp_path, iterations=4)
    spec = tmp_path / "ablations.toml"
    spec.write_text(f'seeds = [0, 1]\n[[ablation]]\nname = "loss"\ntitle = "Loss"\nshifts = ["{shift}"]\n'
                    'variants = [{ name = "directional", method = "nada" }, '
                    '{ name = "both", method = "nada", nada = { lambda_global = 1.0 } }]\n')
    outdir = tmp_path / "runs"
    assert ablate_main(["--spec", str(spec), "--outdir", str(outdir), "--workers", "1", "--threads", "1",
                        *[a for a in TINY if a != "--no-figures"]]) == 0
    assert (outdir / "mini" / "mini--quick" / "nada+both" / "seed1" / "DONE").is_file()
    table = (outdir / "ablations" / "ablations.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| quick")]
    assert [r.split(" | ")[1] for r in rows] == ["directional", "both"]
    assert all(" [" in r and "| 2 |" in r for r in rows)  # mean [lo, hi] over the two seeds
    assert (outdir / "ablations" / "ablations.png").stat().st_size > 10_000
    assert "\\begin{tabular}" in (outdir / "ablations" / "ablations.tex").read_text()


def test_a_bad_ablation_file_is_one_line(tmp_path, capsys):
    spec = tmp_path / "bad.toml"
    spec.write_text('[[ablation]]\nname = "loss"\nshifts = ["mini--zombie"]\n'
                    'variants = [{ name = "x", method = "nada-typo" }]\n')
    assert ablate_main(["--spec", str(spec), "--outdir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown method 'nada-typo'" in err[0]
    assert not (tmp_path / "runs").exists()
