"""Short mini runs for harness tests: a few-step copy of a mini shift and tiny scoring sample counts."""
from pathlib import Path

from metrics.scoring import ScoringSettings
from replication.runio import REPO_ROOT

TINY = ["--n-eval", "8", "--n-lpips", "10", "--n-fid", "8", "--no-figures", "--no-progress"]
SETTINGS = {"mini": ScoringSettings(n_clip=8, n_lpips=10, n_fid=8)}


def short_shift(tmp_path: Path, name: str = "mini--quick", iterations: int = 12) -> Path:
    """A copy of mini--zombie that trains a few steps and checkpoints often (the same models and losses)."""
    text = (REPO_ROOT / "replication" / "shifts" / "mini--zombie.toml").read_text()
    text = text.replace("iterations = 300", f"iterations = {iterations}").replace("save_interval = 100",
                                                                                 "save_interval = 2")
    text = text.replace("output_interval = 100", f"output_interval = {iterations}")
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path
