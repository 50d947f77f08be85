"""Converter tests: NVIDIA TF and stylegan2-ada-pytorch pickles -> our checkpoint, orientation checks, refusal of bad input."""
from __future__ import annotations

import builtins
import glob
import math
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from replication import convert as conv
from replication.checkpoint import load_checkpoint, load_generator, sha256_file
from replication.conversion.ada import module_tensors
from replication.conversion.sources import detect_format
from replication.safe_unpickle import TFNetworkState, UnsafePickleError, safe_load

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_nvidia import (  # noqa: E402
    module_src_with_payload,
    random_discriminator,
    random_generator,
    write_ada_pickle,
    write_tf_pickle,
)

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parent.parent
SIZE = 16


@pytest.fixture(scope="module")
def models():
    return random_generator(SIZE, seed=0), random_discriminator(SIZE, seed=1), random_generator(SIZE, seed=2)


def _render(model, n=3, seed=7):
    z = torch.randn(n, model.style_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model([z], noise_mode="const")[0]


def _assert_same_state(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------------------------------------------------------------
# Round trips through the official structures.


def test_tf_pickle_converts_to_identical_generator(tmp_path, models):
    G, D, G_raw = models
    marker = tmp_path / "executed.txt"
    dlatent_avg = np.linspace(-1, 1, G.style_dim).astype(np.float32)
    write_tf_pickle(tmp_path / "net.pkl", G, D, g_model=G_raw, module_src=module_src_with_payload(marker),
                    latent_avg=dlatent_avg)
    assert detect_format(tmp_path / "net.pkl") == "tf-stylegan2"
    conv.convert(tmp_path / "net.pkl", tmp_path / "net.pt")

    G_conv, ckpt = load_generator(tmp_path / "net.pt")
    _assert_same_state(G_conv.state_dict(), G.state_dict())
    assert (_render(G_conv) - _render(G)).abs().max().item() == 0.0
    assert torch.equal(ckpt.latent_avg, torch.from_numpy(dlatent_avg))
    _assert_same_state(ckpt.d, D.state_dict())
    _assert_same_state(ckpt.g, G_raw.state_dict())
    assert ckpt.generator_config == G.cfg
    assert ckpt.provenance["source_sha256"] == sha256_file(tmp_path / "net.pkl")
    assert ckpt.provenance["source_format"] == "tf-stylegan2"
    assert ckpt.provenance["source_path"] == "net.pkl"
    assert ckpt.provenance["converter_version"] == conv.CONVERTER_VERSION
    assert not marker.exists()  # the pickled build-module source was never executed


def test_tf_which_G_picks_the_raw_generator(tmp_path, models):
    G, D, G_raw = models
    write_tf_pickle(tmp_path / "net.pkl", G, D, g_model=G_raw)
    conv.convert(tmp_path / "net.pkl", tmp_path / "raw.pt", which="G", include_d=False)
    ckpt = load_checkpoint(tmp_path / "raw.pt")
    _assert_same_state(ckpt.g_ema, G_raw.state_dict())
    assert ckpt.d is None


def test_ada_pickle_converts_to_identical_generator(tmp_path, models):
    G, D, G_raw = models
    marker = tmp_path / "executed.txt"
    w_avg = torch.randn(G.style_dim)
    write_ada_pickle(tmp_path / "net.pkl", G, D, g_model=G_raw, w_avg=w_avg,
                     module_src=module_src_with_payload(marker))
    assert detect_format(tmp_path / "net.pkl") == "ada-pytorch"
    conv.convert(tmp_path / "net.pkl", tmp_path / "net.pt")

    G_conv, ckpt = load_generator(tmp_path / "net.pt")
    _assert_same_state(G_conv.state_dict(), G.state_dict())
    assert (_render(G_conv) - _render(G)).abs().max().item() == 0.0
    assert torch.equal(ckpt.latent_avg, w_avg)
    _assert_same_state(ckpt.d, D.state_dict())
    _assert_same_state(ckpt.g, G_raw.state_dict())
    assert ckpt.provenance["source_format"] == "ada-pytorch"
    assert not marker.exists()


def test_rosinality_pt_converts_with_inferred_config(tmp_path, models):
    G, D, _ = models
    torch.save({"g_ema": G.state_dict(), "latent_avg": torch.zeros(G.style_dim), "d": D.state_dict()},
               tmp_path / "ros.pt")
    assert detect_format(tmp_path / "ros.pt") == "rosinality"
    conv.convert(tmp_path / "ros.pt", tmp_path / "ours.pt")
    ckpt = load_checkpoint(tmp_path / "ours.pt")
    assert ckpt.source_format == "nada-replication-checkpoint"
    assert ckpt.generator_config == G.cfg
    _assert_same_state(ckpt.g_ema, G.state_dict())
    _assert_same_state(ckpt.d, D.state_dict())


# ---------------------------------------------------------------------------------------------------------------------
# Up-sampling conv orientation, checked against independent references of the foreign semantics.


def _upfirdn(x: torch.Tensor, f: torch.Tensor, up: int, pad0: int, pad1: int, gain: float) -> torch.Tensor:
    """Definition: zero-insert (up-1 after each sample), pad, true 2-D convolution with f*gain, per channel."""
    n, c, h, w = x.shape
    if up > 1:
        z = x.new_zeros(n, c, h * up, w * up)
        z[:, :, ::up, ::up] = x
        x = z
    x = F.pad(x, [pad0, pad1, pad0, pad1])
    kernel = (f * gain).flip([0, 1])[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, kernel, groups=c)


def _fir() -> torch.Tensor:
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = torch.outer(k, k)
    return k / k.sum()


def _tf_modulated_upconv(x, w, weight, mod_weight, mod_bias):
    """TF G_synthesis Conv0_up: styles with +1, demodulate, then upsample_conv_2d.

    upsample_conv_2d is documented as upsample_2d followed by tf.nn.conv2d (a correlation with the [kh, kw, in, out]
    kernel), with all padding done once at the beginning: upsample_2d's pads plus the conv's SAME pads, no crop between.
    """
    kh, kw, cin, cout = weight.shape
    s = w @ (mod_weight / math.sqrt(mod_weight.shape[0])) + mod_bias + 1
    ww = weight[None] / math.sqrt(kh * kw * cin) * s[:, None, None, :, None]
    ww = ww * torch.rsqrt(ww.square().sum(dim=[1, 2, 3]) + 1e-8)[:, None, None, None, :]
    p = 4 - 2  # upsample_2d: filter taps minus factor
    outs = []
    for b in range(x.shape[0]):
        up = _upfirdn(x[b:b + 1], _fir(), 2, (p + 1) // 2 + 1 + kh // 2, p // 2 + kh // 2, 4.0)
        outs.append(F.conv2d(up, ww[b].permute(3, 2, 0, 1)))
    return torch.cat(outs)


def _ada_modulated_upconv(x, w, weight, affine_w, affine_b, path: str):
    """stylegan2-ada-pytorch SynthesisLayer(up=2): modulated_conv2d -> conv2d_resample(up=2, flip_weight=False)."""
    cout, cin, kh, kw = weight.shape
    styles = w @ (affine_w * (1 / math.sqrt(affine_w.shape[1]))).t() + affine_b
    wb = weight[None] * styles[:, None, :, None, None]
    wb = wb * torch.rsqrt(wb.square().sum(dim=[2, 3, 4]) + 1e-8)[:, :, None, None, None]
    fw, up, padding, flip_weight = 4, 2, kw // 2, False  # SynthesisLayer passes flip_weight=(up == 1)
    px0, px1 = padding + (fw + up - 1) // 2, padding + (fw - up) // 2
    outs = []
    for b in range(x.shape[0]):
        if path == "fast":  # transposed conv, then filter; the wrapper flips only when its flip_weight is False
            q0, q1 = px0 - (kw - 1), px1 - (kw - up)
            pt = max(min(-q0, -q1), 0)
            wt = wb[b].transpose(0, 1)
            wrapper_flip = not flip_weight
            wt = wt if wrapper_flip else wt.flip([2, 3])
            y = F.conv_transpose2d(x[b:b + 1], wt, stride=up, padding=pt)
            outs.append(_upfirdn(y, _fir(), 1, q0 + pt, q1 + pt, up ** 2))
        else:  # generic reference path: upfirdn with up, then conv2d (flip_weight=False means a true convolution)
            y = _upfirdn(x[b:b + 1], _fir(), up, px0, px1, up ** 2)
            outs.append(F.conv2d(y, wb[b] if flip_weight else wb[b].flip([2, 3])))
    return torch.cat(outs)


def _layer_inputs(G, seed=3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, G.channels[4], 4, 4, generator=gen)
    w = torch.randn(2, G.style_dim, generator=gen)
    return x, w


def test_tf_upconv_orientation_matches_tf_semantics(tmp_path, models):
    G, D, _ = models
    states = write_tf_pickle(tmp_path / "net.pkl", G, D)
    conv.convert(tmp_path / "net.pkl", tmp_path / "net.pt")
    G_conv, _ = load_generator(tmp_path / "net.pt")
    tf_vars = dict(states["Gs"]["synthesis"]["variables"])
    t = {k: torch.from_numpy(np.asarray(tf_vars[f"8x8/Conv0_up/{k}"])) for k in ("weight", "mod_weight", "mod_bias")}
    x, w = _layer_inputs(G)
    reference = _tf_modulated_upconv(x, w, t["weight"], t["mod_weight"], t["mod_bias"])
    with torch.no_grad():
        ours = G_conv.convs[0].conv(x, w)
        assert (ours - reference).abs().max().item() < 1e-5
        # The check has teeth: the unflipped kernel gives a clearly different result.
        G_conv.convs[0].conv.weight.copy_(G_conv.convs[0].conv.weight.flip([3, 4]))
        assert (G_conv.convs[0].conv(x, w) - reference).abs().max().item() > 1e-2


@pytest.mark.parametrize("path", ["fast", "generic"])
def test_ada_upconv_orientation_matches_ada_semantics(tmp_path, models, path):
    G, D, _ = models
    write_ada_pickle(tmp_path / "net.pkl", G, D)
    data = safe_load(tmp_path / "net.pkl")
    layer = module_tensors(data["G_ema"])
    ada = {k: layer[f"synthesis.b8.conv0.{k}"] for k in ("weight", "affine.weight", "affine.bias")}
    conv.convert(tmp_path / "net.pkl", tmp_path / "net.pt")
    G_conv, _ = load_generator(tmp_path / "net.pt")
    x, w = _layer_inputs(G)
    reference = _ada_modulated_upconv(x, w, ada["weight"], ada["affine.weight"], ada["affine.bias"], path)
    with torch.no_grad():
        ours = G_conv.convs[0].conv(x, w)
        assert (ours - reference).abs().max().item() < 1e-5
        G_conv.convs[0].conv.weight.copy_(G_conv.convs[0].conv.weight.flip([3, 4]))
        assert (G_conv.convs[0].conv(x, w) - reference).abs().max().item() > 1e-2


# ---------------------------------------------------------------------------------------------------------------------
# Coverage: every source variable consumed, every target filled; failures leave the destination intact.


def _existing_dst(tmp_path: Path) -> tuple[Path, bytes]:
    dst = tmp_path / "dst.pt"
    dst.write_bytes(b"previous good checkpoint")
    return dst, dst.read_bytes()


def test_missing_tf_variable_is_named_and_destination_kept(tmp_path, models):
    G, D, _ = models

    def drop(states):
        st = states["Gs"]["synthesis"]
        st["variables"] = [(k, v) for k, v in st["variables"] if k != "8x8/Conv1/mod_bias"]

    write_tf_pickle(tmp_path / "net.pkl", G, D, edit=drop)
    dst, before = _existing_dst(tmp_path)
    with pytest.raises(conv.ConversionError, match=r"synthesis/8x8/Conv1/mod_bias") as info:
        conv.convert(tmp_path / "net.pkl", dst)
    assert "convs.1.conv.modulation.bias" in str(info.value)
    assert dst.read_bytes() == before


def test_unconsumed_ada_tensor_is_named(tmp_path, models):
    G, D, _ = models

    def add(tree):
        tree["G_ema"].children["synthesis"].children["b8"].params["surprise"] = torch.zeros(3)

    write_ada_pickle(tmp_path / "net.pkl", G, D, edit=add)
    dst, before = _existing_dst(tmp_path)
    with pytest.raises(conv.ConversionError, match=r"unconsumed source variables \[synthesis\.b8\.surprise\]"):
        conv.convert(tmp_path / "net.pkl", dst)
    assert dst.read_bytes() == before


def test_wrong_shape_in_source_is_an_error(tmp_path, models):
    G, D, _ = models

    def reshape(states):
        st = states["Gs"]["synthesis"]
        st["variables"] = [(k, v[:, :-1] if k == "4x4/ToRGB/mod_weight" else v) for k, v in st["variables"]]

    write_tf_pickle(tmp_path / "net.pkl", G, D, edit=reshape)
    with pytest.raises(conv.ConversionError, match=r"to_rgb1\.conv\.modulation\.weight"):
        conv.convert(tmp_path / "net.pkl", tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_resolution_mismatch_is_an_error(tmp_path, models):
    G, D, _ = models
    write_tf_pickle(tmp_path / "net.pkl", G, D)
    with pytest.raises(conv.ConversionError, match=r"16px generator but 32px was expected"):
        conv.convert(tmp_path / "net.pkl", tmp_path / "out.pt", expected_resolution=32)
    assert not (tmp_path / "out.pt").exists()


def test_explicit_format_must_match(tmp_path, models):
    G, D, _ = models
    write_tf_pickle(tmp_path / "net.pkl", G, D)
    with pytest.raises(conv.ConversionError, match="is a tf-stylegan2 file, not ada-pytorch"):
        conv.convert(tmp_path / "net.pkl", tmp_path / "out.pt", fmt="ada-pytorch")


# ---------------------------------------------------------------------------------------------------------------------
# Malicious pickles are refused and their payload never runs.


class _Payload:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "subprocess.Popen"])
def test_malicious_pickle_is_refused(tmp_path, kind):
    marker = tmp_path / "pwned"
    cmd = f"touch {marker}"
    payload = {"os.system": _Payload(os.system, (cmd,)),
               "builtins.eval": _Payload(builtins.eval, (f"open({str(marker)!r}, 'w')",)),
               "subprocess.Popen": _Payload(subprocess.Popen, (["touch", str(marker)],))}[kind]
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"G_ema": payload}))
    refused = {"os.system": r"(posix|os)\.system", "builtins.eval": r"builtins\.eval",
               "subprocess.Popen": r"subprocess\.Popen"}[kind]
    with pytest.raises(UnsafePickleError, match=refused):
        conv.convert(tmp_path / "evil.pkl", tmp_path / "out.pt")
    assert not marker.exists()
    assert not (tmp_path / "out.pt").exists()


def test_network_shaped_pickle_smuggling_a_payload_is_refused(tmp_path, models):
    G, D, _ = models
    marker = tmp_path / "pwned"

    def smuggle(states):
        states["Gs"]["mapping"]["variables"].append(("Dense9/weight", _Payload(os.system, (f"touch {marker}",))))

    write_tf_pickle(tmp_path / "net.pkl", G, D, edit=smuggle)
    with pytest.raises(UnsafePickleError, match=r"os\.system|posix\.system"):
        conv.convert(tmp_path / "net.pkl", tmp_path / "out.pt")
    assert not marker.exists()


def test_storage_bytes_are_loaded_weights_only(tmp_path):
    marker = tmp_path / "pwned"
    inner = pickle.dumps(_Payload(os.system, (f"touch {marker}",)))
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_Payload(torch.storage._load_from_bytes, (inner,))))
    with pytest.raises(UnsafePickleError, match="weights_only"):
        safe_load(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_restricted_reader_keeps_tf_state_as_data(tmp_path, models):
    G, D, _ = models
    write_tf_pickle(tmp_path / "net.pkl", G, D)
    G_tf, D_tf, Gs_tf = safe_load(tmp_path / "net.pkl")
    assert isinstance(Gs_tf, TFNetworkState) and Gs_tf.version == 4
    assert Gs_tf.build_func_name == "training.networks_stylegan2.G_main"
    variables = Gs_tf.all_variables()
    assert "synthesis/16x16/Conv0_up/weight" in variables and "mapping/Dense1/bias" in variables
    assert variables["synthesis/4x4/Conv/weight"].shape == (3, 3, G.channels[4], G.channels[4])


def test_legacy_reader_module_is_python37_compatible():
    """The legacy TF environment (Python 3.7, numpy only) imports safe_unpickle and legacy_tf_crosscheck."""
    import ast

    for name in ("safe_unpickle.py", "legacy_tf_crosscheck.py"):
        tree = ast.parse((REPO / "replication" / name).read_text(), feature_version=(3, 7))
        # Module-level imports only: torch may be imported lazily inside functions that need tensors.
        imported = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in tree.body
                     if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
        assert "torch" not in imported, name
        first = next(n for n in tree.body if isinstance(n, ast.ImportFrom))
        assert first.module == "__future__", f"{name}: needs `from __future__ import annotations` first"
    # Where a Python 3.7 interpreter exists, really import both modules with it (numpy stubbed: none installed there).
    candidates = [shutil.which("python3.7")] + sorted(glob.glob("/root/.pyenv/versions/3.7*/bin/python3.7"))
    py37 = next((c for c in candidates if c and subprocess.run([c, "-V"], capture_output=True).returncode == 0), None)
    if py37 is not None:
        code = ("import sys, types; sys.modules.setdefault('numpy', types.ModuleType('numpy')); "
                "sys.path.insert(0, sys.argv[1]); import replication.safe_unpickle, replication.legacy_tf_crosscheck")
        proc = subprocess.run([py37, "-c", code, str(REPO)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------------------------------------------------
# CLIs.


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "replication.convert", *args], capture_output=True, text=True,
                          cwd=REPO, env=full_env, timeout=120)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_cli_missing_source(tmp_path):
    line = _one_error_line(_cli(str(tmp_path / "nope.pkl"), str(tmp_path / "out.pt")))
    assert "source not found" in line and "nope.pkl" in line


def test_cli_unknown_format_keeps_destination(tmp_path):
    (tmp_path / "weird.pkl").write_bytes(pickle.dumps([1, 2, 3]))
    dst, before = _existing_dst(tmp_path)
    line = _one_error_line(_cli(str(tmp_path / "weird.pkl"), str(dst)))
    assert "unknown format" in line
    assert dst.read_bytes() == before


def test_cli_resolution_mismatch(tmp_path, models):
    G, D, _ = models
    write_tf_pickle(tmp_path / "net.pkl", G, D)
    line = _one_error_line(_cli(str(tmp_path / "net.pkl"), str(tmp_path / "out.pt"), "--resolution", "256"))
    assert "16px generator but 256px" in line
    assert not (tmp_path / "out.pt").exists()


def _registry(tmp_path: Path, entries: dict[str, dict]) -> Path:
    lines = []
    for name, fields in entries.items():
        lines.append(f'[weights."{name}"]')
        for key, value in fields.items():
            lines.append(f"{key} = {value!r}".replace("'", '"'))
    path = tmp_path / "weights.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_convert_all_converts_present_and_reports_missing(tmp_path, models, monkeypatch, capsys):
    G, D, _ = models
    wdir = tmp_path / "weights"
    wdir.mkdir()
    write_tf_pickle(wdir / "tiny.pkl", G, D)
    base = {"kind": "generator", "format": "tf-stylegan2", "url": "https://example.invalid/x", "source": "test"}
    toml = _registry(tmp_path, {"tiny": dict(base, filename="tiny.pkl", resolution=SIZE),
                                "absent": dict(base, filename="absent.pkl", resolution=SIZE),
                                "clipish": dict(base, kind="clip", format="clip-jit", filename="c.pt")})
    monkeypatch.setenv("NADA_WEIGHTS_TOML", str(toml))
    monkeypatch.setenv("NADA_WEIGHTS_DIR", str(wdir))
    out = tmp_path / "converted"

    assert conv.main(["--all", "--out-dir", str(out)]) == 0
    captured = capsys.readouterr()
    assert "converted:" in captured.out
    missing = [line for line in captured.err.splitlines() if "absent" in line]
    assert len(missing) == 1 and "absent.pkl" in missing[0] and "https://example.invalid/x" in missing[0]
    _assert_same_state(load_checkpoint(out / "tiny.pt").g_ema, G.state_dict())
    assert (tmp_path / "weights.lock.toml").exists()  # first-seen hash recorded

    mtime = (out / "tiny.pt").stat().st_mtime_ns
    assert conv.main(["--all", "--out-dir", str(out)]) == 0
    assert "up to date" in capsys.readouterr().out
    assert (out / "tiny.pt").stat().st_mtime_ns == mtime

    assert conv.main(["--all", "--require-all", "--out-dir", str(out)]) == 2
    assert "error: weight 'absent' is missing" in capsys.readouterr().err


def test_convert_all_rejects_registry_resolution_mismatch(tmp_path, models, monkeypatch, capsys):
    G, D, _ = models
    wdir = tmp_path / "weights"
    wdir.mkdir()
    write_tf_pickle(wdir / "tiny.pkl", G, D)
    toml = _registry(tmp_path, {"tiny": {"kind": "generator", "format": "tf-stylegan2", "url": "https://e.invalid/t",
                                         "source": "test", "filename": "tiny.pkl", "resolution": 256}})
    monkeypatch.setenv("NADA_WEIGHTS_TOML", str(toml))
    monkeypatch.setenv("NADA_WEIGHTS_DIR", str(wdir))
    assert conv.main(["--all", "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "error: tiny:" in err and "16px generator but 256px was expected" in err
    assert not (tmp_path / "out" / "tiny.pt").exists()


# ---------------------------------------------------------------------------------------------------------------------
# Torch side of the TF cross-check.


def test_compare_with_tf_render_reports_diff_and_writes_grid(tmp_path, models):
    G, D, _ = models
    torch.save({"g_ema": G.state_dict(), "latent_avg": torch.randn(G.style_dim) * 0.1}, tmp_path / "ros.pt")
    conv.convert(tmp_path / "ros.pt", tmp_path / "ours.pt")
    ckpt = load_checkpoint(tmp_path / "ours.pt")
    z = np.random.RandomState(0).randn(2, G.style_dim).astype(np.float32)
    noise = [torch.randn(1, 1, *G.noises.get_buffer(f"noise_{i}").shape[2:]) for i in range(G.num_layers)]
    with torch.no_grad():
        images, _ = G([torch.from_numpy(z)], noise_mode="given", noise=noise, truncation=0.5,
                      truncation_latent=ckpt.latent_avg.reshape(1, -1))
    shifted = images.numpy().copy()
    shifted[0, 0, 0, 0] += 0.25  # a known disagreement the comparison must report
    np.savez(tmp_path / "tf.npz", z=z, images=shifted, truncation_psi=np.float32(0.5),
             **{f"noise{i}": n.numpy() for i, n in enumerate(noise)})
    result = conv.compare_with_tf_render(tmp_path / "ours.pt", tmp_path / "tf.npz", tmp_path / "grid.png")
    assert abs(result["max_abs_diff"] - 0.25) < 1e-5
    from PIL import Image

    with Image.open(result["grid_path"]) as im:
        assert im.size[0] > 2 * SIZE and im.size[1] > 3 * SIZE


def test_unusual_discriminator_does_not_block_the_generator(tmp_path, models, monkeypatch, capsys):
    G, D, _ = models

    def add(states):
        states["D"]["own"]["variables"].append(("4x4/Mystery/weight", np.zeros(3, np.float32)))

    wdir = tmp_path / "weights"
    wdir.mkdir()
    write_tf_pickle(wdir / "tiny.pkl", G, D, edit=add)
    with pytest.raises(conv.DiscriminatorConversionError, match=r"4x4/Mystery/weight.*--no-discriminator"):
        conv.convert(wdir / "tiny.pkl", tmp_path / "x.pt")
    conv.convert(wdir / "tiny.pkl", tmp_path / "x.pt", include_d=False)
    assert load_checkpoint(tmp_path / "x.pt").d is None

    toml = _registry(tmp_path, {"tiny": {"kind": "generator", "format": "tf-stylegan2", "url": "https://e.invalid/t",
                                         "source": "test", "filename": "tiny.pkl", "resolution": SIZE}})
    monkeypatch.setenv("NADA_WEIGHTS_TOML", str(toml))
    monkeypatch.setenv("NADA_WEIGHTS_DIR", str(wdir))
    assert conv.main(["--all", "--out-dir", str(tmp_path / "out")]) == 0
    assert "warning: tiny: discriminator not converted" in capsys.readouterr().err
    ckpt = load_checkpoint(tmp_path / "out" / "tiny.pt")
    assert ckpt.d is None
    _assert_same_state(ckpt.g_ema, G.state_dict())


def test_unsupported_tf_settings_are_named_in_one_line():
    from replication.conversion import tf as tf_reader
    from replication.conversion.common import ConversionError
    from replication.safe_unpickle import TFNetworkState

    with pytest.raises(ConversionError, match="mapping widths that differ") as caught:
        tf_reader._check_tf_kwargs({"latent_size": 48, "mapping_fmaps": 80, "dlatent_size": 64}, "G.pkl")
    assert "latent_size 48" in str(caught.value) and "\n" not in str(caught.value)
    tf_reader._check_tf_kwargs({"latent_size": 64, "dlatent_size": 64}, "G.pkl")  # one width: fine
    net = TFNetworkState({"version": 4, "name": "D", "static_kwargs": {"mbstd_group_size": 8}, "components": {},
                          "variables": []})
    with pytest.raises(ConversionError, match="group size 8"):
        tf_reader.tf_discriminator(net, "D.pkl")
