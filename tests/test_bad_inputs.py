"""Bad input to every CLI: exit 2 and one `error:` line naming what is wrong and the fix, before anything trains."""
import datetime
import io
import math
import os
import re
import tomllib

import pytest
import torch

import baselines
import replication.convert
import replication.pipeline.replicate
import replication.pipeline.score
import replication.pipeline.sweep
import replication.pipeline.train
import replication.weights
import results.tables
from replication.config import SHIFTS_DIR

MAINS = {"train": replication.pipeline.train.main, "sweep": replication.pipeline.sweep.main,
         "replicate": replication.pipeline.replicate.main, "weights": replication.weights.main,
         "convert": replication.convert.main, "tables": results.tables.main, "score": replication.pipeline.score.main}
# Arguments every call of a CLI gets before the case's own (argparse lets a later option win).
DEFAULT_ARGS = {"train": ["--shift", "{tmp}/s.toml", "--outdir", "{tmp}/runs", "--device", "cpu", "--no-progress"],
                "sweep": ["{tmp}/sw.toml", "--outdir", "{tmp}/out", "--device", "cpu", "--no-progress"],
                "replicate": ["--outdir", "{tmp}/runs", "--device", "cpu", "--no-progress", "--no-figures",
                              "--shifts", "mini--sketch", "--methods", "nada"]}
RUN = "runs/mini/s/nada/seed0"  # the run folder of the train CLI's defaults
BASE_SHIFT = tomllib.loads((SHIFTS_DIR / "mini--sketch.toml").read_text())


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return repr(value) if isinstance(value, float) else str(value) if isinstance(value, int) else f'"{value}"'


def shift(task=None, nada=None, drop=()) -> dict:
    """s.toml: the mini--sketch shift with some [task] / [nada] values replaced and the keys in `drop` removed."""
    sections = {name: {**BASE_SHIFT[name], **(extra or {})} for name, extra in (("task", task), ("nada", nada))}
    text = "".join(f"[{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in values.items() if k not in drop)
                   for name, values in sections.items())
    return {"s.toml": text}


def sweep(top: str, variant: str = 'name = "a"') -> dict:
    """sw.toml: top-level keys, then one [[variant]] table."""
    return {"sw.toml": f"{top}\n[[variant]]\n{variant}\n"}


SWEEP_OK = 'shifts = ["mini--sketch"]\nseeds = [0]\nn_eval = 8'


def _unpicklable_by_weights_only() -> bytes:
    buffer = io.BytesIO()
    torch.save({"g_ema": datetime.timedelta(days=1)}, buffer)  # a harmless global weights_only refuses
    return buffer.getvalue()


def _read_only(path, monkeypatch):
    """A folder this process may not write into; root ignores mode bits, so os.access is told so as well."""
    path.mkdir()
    path.chmod(0o555)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(path) and mode & os.W_OK
                        else real_access(p, mode, **kw))


# id, CLI, files written under tmp (text, bytes, or a callable(path, monkeypatch)), the case's arguments ("{tmp}" is
# the test's folder), and a regex the one `error:` line must match.
CASES = [
    # shift TOML values, found by the train CLI before any weight loads
    ("output_interval-0", "train", shift(nada={"output_interval": 0}), [],
     r"s\.toml: \[nada\] output_interval must be >= 1"),
    ("grid_seeds-empty", "train", shift(task={"grid_seeds": []}), [],
     r"s\.toml: \[task\] grid_seeds is empty; list at least one"),
    ("grid_seeds-negative", "train", shift(task={"grid_seeds": [0, -1]}), [],
     r"\[task\] grid_seeds must be seeds in \[0, 4294967296\)"),
    ("eval_seeds-strings", "train", shift(task={"eval_seeds": ["a", "b"]}), [],
     r"s\.toml: \[task\] eval_seeds must be a list of 2 integers like \[0, 1000\], got \['a', 'b'\]"),
    ("eval_seeds-three", "train", shift(task={"eval_seeds": [0, 10, 20]}), [],
     r"\[task\] eval_seeds must be a list of 2 integers"),
    ("eval_seeds-reversed", "train", shift(task={"eval_seeds": [10, 0]}), [],
     r"\[task\] eval_seeds is \[start, stop\) with start < stop"),
    ("source_text-number", "train", shift(task={"source_text": 5}), [],
     r"\[task\] source_text must be a string, got 5"),
    ("generator-empty", "train", shift(task={"generator": " "}), [], r"\[task\] generator is empty"),
    ("resolution-48", "train", shift(task={"resolution": 48}), [], r"\[task\] resolution must be a power of two"),
    ("world-moon", "train", shift(task={"world": "moon"}), [], r"\[task\] world must be one of \('paper', 'mini'\)"),
    ("task-key-typo", "train", shift(task={"target_txt": "x"}), [], r"unknown key\(s\) \['target_txt'\] in \[task\]"),
    ("target_text-missing", "train", shift(drop=("target_text",)), [],
     r"\[task\] lacks required key\(s\) \['target_text'\]"),
    ("mode-exact", "train", shift(nada={"mode": "exact"}), [], r"\[nada\] mode must be one of \('faithful', 'fixed'\)"),
    ("iterations-0", "train", shift(nada={"iterations": 0}), [], r"\[nada\] iterations must be >= 1"),
    ("batch-true", "train", shift(nada={"batch": True}), [], r"\[nada\] batch must be an integer like 2, got True"),
    ("lr-negative", "train", shift(nada={"lr": -0.002}), [], r"\[nada\] lr must be > 0"),
    ("lr-nan", "train", shift(nada={"lr": math.nan}), [], r"\[nada\] lr must be finite"),
    ("lr-string", "train", shift(nada={"lr": "fast"}), [], r"\[nada\] lr must be a number like 0\.0016, got 'fast'"),
    ("betas-one", "train", shift(nada={"betas": [0.9]}), [], r"\[nada\] betas must be a list of 2 numbers"),
    ("betas-above-1", "train", shift(nada={"betas": [0.0, 1.5]}), [],
     r"\[nada\] betas are Adam's two decay rates in \[0, 1\)"),
    ("clip_models-empty", "train", shift(nada={"clip_models": [], "clip_model_weights": []}), [],
     r"\[nada\] clip_models is empty"),
    ("clip_models-number", "train", shift(nada={"clip_models": [3]}), [],
     r"\[nada\] clip_models must be a list of strings"),
    ("clip_model_weights-zero", "train", shift(nada={"clip_model_weights": [0.0]}), [],
     r"clip_model_weights must be >= 0 with at least one > 0"),
    ("clip_model_weights-length", "train", shift(nada={"clip_model_weights": [1.0, 1.0]}), [], r"differ in length"),
    ("lambda-negative", "train", shift(nada={"lambda_global": -1.0}), [],
     r"\[nada\] lambda_global must be >= 0 \(0 turns that loss off\)"),
    ("lambdas-all-zero", "train", shift(nada={"lambda_direction": 0.0}), [],
     r"every loss weight \(lambda_\*\) is 0; set lambda_direction = 1"),
    ("mixing-2", "train", shift(nada={"mixing": 2.0}), [], r"\[nada\] mixing is a probability in \[0, 1\]"),
    ("sample_truncation-1.5", "train", shift(nada={"sample_truncation": 1.5}), [],
     r"\[nada\] sample_truncation is a truncation psi in \[0, 1\]"),
    ("noise_mode-loud", "train", shift(nada={"noise_mode": "loud"}), [], r"\[nada\] noise_mode must be one of"),
    ("phase-legs", "train", shift(nada={"phase": "legs"}), [], r"\[nada\] phase must be one of"),
    ("auto_layer_k-0", "train", shift(nada={"auto_layer_iters": 1, "auto_layer_k": 0}), [],
     r"auto_layer_k must be >= 1 while auto_layer_iters > 0"),
    ("auto_layer_batch-0", "train", shift(nada={"auto_layer_batch": 0}), [], r"\[nada\] auto_layer_batch must be >= 1"),
    ("save_interval-negative", "train", shift(nada={"save_interval": -5}), [],
     r"\[nada\] save_interval must be >= 0 \(0: "),
    ("resize_antialias-string", "train", shift(nada={"resize_antialias": "yes"}), [],
     r"\[nada\] resize_antialias must be true or false, got 'yes'"),
    ("nada-key-typo", "train", shift(nada={"iters": 3}), [], r"unknown key\(s\) \['iters'\] in \[nada\]"),
    ("shift-not-toml", "train", {"s.toml": "[task\nworld = "}, [], r"s\.toml: not valid TOML"),
    ("shift-unknown", "train", {}, ["--shift", "nope"], r"unknown shift 'nope'.*known shifts: .*mini--sketch"),
    # train CLI arguments and the state of its run folder
    ("train-seed-negative", "train", shift(), ["--seed", "-1"], r"--seed -1: seeds are integers in \[0, 4294967296\)"),
    ("train-method-unknown", "train", shift(), ["--method", "gan"], r"unknown method 'gan'; known methods: .*nada"),
    ("train-device-gpu", "train", shift(), ["--device", "gpu"],
     r"--device 'gpu' is not a device; use auto, cpu, cuda or cuda:N"),
    ("train-device-cuda", "train", shift(), ["--device", "cuda"],
     r"--device cuda: torch sees no CUDA GPU on this machine; use --device cpu"),
    ("train-device-cuda-99", "train", shift(), ["--device", "cuda:99"],
     r"--device cuda:99: torch sees (no CUDA GPU|\d+ CUDA GPU)"),
    ("train-outdir-is-file", "train", {**shift(), "runs": "x"}, [],
     r"--outdir .*runs cannot be a folder: .*runs is a file"),
    ("train-outdir-below-file", "train", {**shift(), "f": "x"}, ["--outdir", "{tmp}/f/runs"],
     r"--outdir .*f/runs cannot be a folder: .*/f is a file"),
    ("train-outdir-unwritable", "train", {**shift(), "ro": _read_only}, ["--outdir", "{tmp}/ro/runs"],
     r"--outdir .*ro/runs: .*ro is not writable"),
    ("generator-path-missing", "train", shift(task={"generator": "/nonexistent/G.pt"}), [],
     r"source generator: no file /nonexistent/G\.pt; set \[task\] generator to a checkpoint file or one of "
     r".*mini-stylegan2"),
    ("generator-unknown-name", "train", shift(task={"generator": "stylegan9"}), [],
     r"source generator: 'stylegan9' is neither a file nor a weight-registry name"),
    ("generator-is-a-clip", "train", shift(task={"generator": "mini-clip-a"}), [],
     r"source generator 'mini-clip-a' is a clip weight, not a generator"),
    ("generator-refused-by-weights-only", "train",
     {**shift(task={"generator": "{tmp}/G.pt"}), "G.pt": _unpicklable_by_weights_only()}, [],
     r"^(?!.*weights_only=False).*G\.pt: refused by weights-only loading \(Unsupported global: GLOBAL "
     r"datetime\.timedelta\).*replication\.convert"),
    ("finished-run-without-final-weights", "train", {**shift(), f"{RUN}/DONE": "{}"}, [],
     r"^(?!.*make convert).*seed0 is a finished run without its final generator .*G_tgt\.pt.*delete that folder"),
    ("resume-corrupt", "train", {**shift(), f"{RUN}/checkpoints/resume.pt": b"\x80\x02 not a torch file"}, [],
     r"cannot resume .*seed0: .*resume\.pt is damaged or not a resume state; delete it to train the run again"),
    ("resume-not-a-state", "train",
     {**shift(), f"{RUN}/checkpoints/resume.pt": lambda path, _: torch.save({"step": 3}, path)}, [],
     r"cannot resume .*: .*resume\.pt is damaged or not a resume state"),
    # sweep files and the sweep CLI
    ("sweep-seeds-strings", "sweep", sweep('shifts = ["mini--sketch"]\nseeds = ["a"]'), [],
     r"sw\.toml: `seeds` must list at least one seed .*got \['a'\]"),
    ("sweep-seeds-number", "sweep", sweep('shifts = ["mini--sketch"]\nseeds = 3'), [],
     r"sw\.toml: `seeds` must list at least one seed .*got 3"),
    ("sweep-seeds-empty", "sweep", sweep('shifts = ["mini--sketch"]\nseeds = []'), [],
     r"sw\.toml: `seeds` must list at least one seed"),
    ("sweep-n_eval-string", "sweep", sweep('shifts = ["mini--sketch"]\nn_eval = "many"'), [],
     r"sw\.toml: `n_eval` .*must be an integer >= 2.*got 'many'"),
    ("sweep-n_eval-1", "sweep", sweep('shifts = ["mini--sketch"]\nn_eval = 1'), [],
     r"sw\.toml: `n_eval` .*must be an integer >= 2"),
    ("sweep-nada-number", "sweep", sweep(SWEEP_OK, 'name = "a"\nnada = 5'), [],
     r"sw\.toml: variant 'a': `nada` must be a table of \[nada\] overrides.*got 5"),
    ("sweep-shifts-string", "sweep", sweep('shifts = "mini--zombie"'), [],
     r"sw\.toml: `shifts` must list at least one mini shift, like .*got 'mini--zombie'"),
    ("sweep-shifts-empty", "sweep", sweep("shifts = []"), [], r"sw\.toml: `shifts` must list at least one mini shift"),
    ("sweep-shift-unknown", "sweep", sweep('shifts = ["mini--nope"]'), [],
     r"sw\.toml: shifts: unknown shift 'mini--nope'"),
    ("sweep-paper-shift", "sweep", sweep('shifts = ["ffhq--sketch"]'), [],
     r"sw\.toml: ffhq--sketch is a paper-world shift.*mini shifts only"),
    ("sweep-override-key-typo", "sweep", sweep(SWEEP_OK, 'name = "a"\nnada = { lr_typo = 1 }'), [],
     r"^error: [^ ]*sw\.toml: variant 'a' \(its nada overrides, on mini--sketch\): unknown key\(s\) "
     r"\['lr_typo'\] in \[nada\]"),
    ("sweep-override-bad-value", "sweep", sweep(SWEEP_OK, 'name = "a"\nnada = { output_interval = 0 }'), [],
     r"sw\.toml: variant 'a' .*\[nada\] output_interval must be >= 1"),
    ("sweep-variant-not-a-table", "sweep", {"sw.toml": f"{SWEEP_OK}\nvariant = 5\n"}, [],
     r"sw\.toml: variants are \[\[variant\]\] tables"),
    ("sweep-variant-name-unsafe", "sweep", sweep(SWEEP_OK, 'name = "../x"'), [],
     r"sw\.toml: each \[\[variant\]\] needs a folder-safe `name`"),
    ("sweep-variant-method-unknown", "sweep", sweep(SWEEP_OK, 'name = "a"\nmethod = "gan"'), [],
     r"sw\.toml: variant 'a' has unknown method 'gan'"),
    ("sweep-key-typo", "sweep", sweep('shift = ["mini--sketch"]'), [], r"sw\.toml: unknown key\(s\) \['shift'\]"),
    ("sweep-file-missing", "sweep", {}, [], r"sweep file .*sw\.toml does not exist"),
    ("sweep-seeds-no-value", "sweep", sweep(SWEEP_OK), ["--seeds"], r"--seeds needs at least one seed"),
    ("sweep-only-no-value", "sweep", sweep(SWEEP_OK), ["--only"], r"--only needs at least one variant name"),
    ("sweep-only-unknown", "sweep", sweep(SWEEP_OK), ["--only", "b"], r"--only names \['b'\] are not variants"),
    ("sweep-threads-negative", "sweep", sweep(SWEEP_OK), ["--threads", "-2"], r"--threads -2: give a count >= 0"),
    ("sweep-device-cuda", "sweep", sweep(SWEEP_OK), ["--device", "cuda"], r"--device cuda: torch sees no CUDA GPU"),
    ("sweep-outdir-is-file", "sweep", {**sweep(SWEEP_OK), "out": "x"}, [], r"--outdir .*out cannot be a folder"),
    # replicate CLI arguments
    ("replicate-seeds-no-value", "replicate", {}, ["--seeds"], r"--seeds needs at least one seed"),
    ("replicate-seeds-negative", "replicate", {}, ["--seeds", "0", "-3"], r"--seeds -3: seeds are integers in \[0, "),
    ("replicate-shifts-no-value", "replicate", {}, ["--shifts"], r"--shifts needs at least one name"),
    ("replicate-methods-no-value", "replicate", {}, ["--methods"], r"--methods needs at least one name"),
    ("replicate-n-eval-0", "replicate", {}, ["--n-eval", "0"], r"--n-eval 0: a score needs at least 2 samples"),
    ("replicate-method-unknown", "replicate", {}, ["--methods", "gan"], r"unknown method\(s\) \['gan'\]"),
    ("replicate-shift-unknown", "replicate", {}, ["--shifts", "nope"], r"unknown shift 'nope'"),
    ("replicate-device-cuda", "replicate", {}, ["--device", "cuda"], r"--device cuda: torch sees no CUDA GPU"),
    ("replicate-outdir-is-file", "replicate", {"runs": "x"}, [], r"--outdir .*runs cannot be a folder"),
    # the other CLIs
    ("weights-unknown", "weights", {}, ["path", "nope"], r"unknown weight 'nope'"),
    ("convert-no-arguments", "convert", {}, [], r"give SRC and DST"),
    ("convert-source-missing", "convert", {}, ["{tmp}/none.pkl", "{tmp}/o.pt"], r"source not found: .*none\.pkl"),
    ("tables-scores-missing", "tables", {}, ["--scores", "{tmp}/none.csv"], r"no scores file at .*none\.csv"),
    ("score-not-a-run", "score", {}, ["{tmp}/norun"], r"norun is not a finished run"),
]
NEEDS_NO_GPU = {"train-device-cuda", "sweep-device-cuda", "replicate-device-cuda"}


@pytest.fixture
def no_training(monkeypatch):
    """Any method or sweep variant that starts to train fails the test."""
    def train(*_, **__):
        raise AssertionError("training started: the bad input should have been refused before")

    for name in baselines.METHODS:
        monkeypatch.setitem(baselines.METHODS, name, train)


def _files(root) -> dict:
    return {p.relative_to(root): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")}


@pytest.mark.parametrize("cli, files, args, message", [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_bad_input_is_one_line_and_nothing_runs(cli, files, args, message, tmp_path, capsys, monkeypatch,
                                               no_training, request):
    if request.node.callspec.id in NEEDS_NO_GPU and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(path, monkeypatch)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content.replace("{tmp}", str(tmp_path)))
    before = _files(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in DEFAULT_ARGS.get(cli, []) + args]
    code = MAINS[cli](argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert re.search(message, lines[0]), lines[0]
    assert _files(tmp_path) == before, "a refused call wrote or changed files"


def test_the_table_is_large_and_each_case_distinct():
    ids = [case[0] for case in CASES]
    assert len(ids) >= 30 and len(set(ids)) == len(ids)
