"""Reuse: load a trained field (checkpoint, safetensors, .pt2, ONNX), query, sample, export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import nir
from nir.errors import NirError
from nir.reuse.field import Field, load_field

NIR_FIELD = str(Path(sys.executable).parent / "nir-field")  # the installed console script

FRESH = r"""
import sys, numpy as np, torch
import nir
import onnxruntime as ort
for line in sys.stdin:  # one request per line: run directory, coordinates file, output file
    run, coords_file, out = line.split()
    x = torch.from_numpy(np.load(coords_file))
    res = {}
    with torch.no_grad():
        res["ckpt"] = nir.load_field(run + "/checkpoints/last.ckpt")(x).numpy()
        res["safetensors"] = nir.load_field(run + "/field.safetensors")(x).numpy()
        res["nir"] = nir.load_field(run + "/field.nir")(x).numpy()
        res["rundir"] = nir.load_field(run)(x).numpy()
        res["pt2"] = torch.export.load(run + "/field.pt2").module()(x).numpy()
    sess = ort.InferenceSession(run + "/field.onnx", providers=["CPUExecutionProvider"])
    res["onnx"] = sess.run(None, {"coords": x.numpy()})[0]
    np.savez(out, **res)
    print("done", flush=True)
"""


@pytest.fixture(scope="module")
def fresh_loader():
    """A Python process that never held the fields it loads: it reads the files a test names
    (one request per line) and answers with what each loader gives. One per test module and
    worker, so the cases pay torch's and onnxruntime's imports once, not once per case."""
    p = subprocess.Popen(
        [sys.executable, "-c", FRESH], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )

    def ask(run, coords, out):
        p.stdin.write(f"{run} {coords} {out}\n")
        p.stdin.flush()
        line = p.stdout.readline()
        assert line.strip() == "done", p.stderr.read()[-3000:] if p.poll() is not None else line

    yield ask
    p.stdin.close()
    p.wait(timeout=60)


CASES = {
    "image-siren": ["model=siren", "data.sample=camera", "model.hidden_dim=32", "model.num_layers=1"],
    "image-fourier": ["model=fourier", "model.hidden_dim=32", "model.num_layers=1", "model.encoding.num_features=16"],
    "sources3d-fourier": ["data=sources3d", "data.n=10", "model=fourier_lt3d", "sampling=uniform"],
    "lognormal3d-siren": ["data=lognormal3d", "data.n=10", "model=siren", "model.hidden_dim=32", "model.num_layers=1"],
    "image-hashgrid": ["model=hashgrid", "data.sample=camera", "model.encoding.n_levels=4", "model.encoding.log2_hashmap_size=10",
                       "model.encoding.finest_resolution=64", "model.hidden_dim=16"],
    "sources3d-hashgrid": ["data=sources3d", "data.n=10", "model=hashgrid_lt3d", "model.encoding.finest_resolution=12"],
    "image-densegrid": ["model=densegrid", "model.encoding.n_levels=3", "model.encoding.finest_resolution=32", "model.hidden_dim=16"],
    "image-finer": ["model=finer", "model.hidden_dim=16", "model.num_layers=1"],
    "image-gauss": ["model=gauss", "model.hidden_dim=16", "model.num_layers=1"],
    "image-wire": ["model=wire", "data.sample=camera", "model.hidden_dim=12", "model.num_layers=1"],
}  # fmt: skip
TINY = [
    "store.dtype=float32",  # every form answers the same: the checkpoint keeps full precision, so the file must too
    "trainer.max_steps=15",
    "trainer.val_check_interval=15",
    "trainer.enable_progress_bar=false",
    "batch_size=1024",
    "log.images=false",
]


@pytest.fixture(scope="module", params=list(CASES))
def trained(request, tmp_path_factory):
    run = tmp_path_factory.mktemp(request.param) / "run"
    signal = "image.png" if request.param.startswith("image") else None
    overrides = CASES[request.param] + TINY
    if signal:
        from nir.data.readers import sample_image_path

        src = "camera" if "data.sample=camera" in overrides else "chelsea"
        overrides = [o for o in overrides if not o.startswith("data.sample")]
        field, metrics = nir.fit(str(sample_image_path(src)), overrides, run_dir=run)
    else:
        field, metrics = nir.fit(overrides[0].split("=")[1], overrides[1:], run_dir=run)
    return run, field, metrics


def test_round_trip_in_fresh_process(trained, tmp_path, fresh_loader):
    run, field, _ = trained
    field.export(run / "field.pt2")
    field.export(run / "field.onnx")
    torch.manual_seed(0)
    lo, hi = field.bounds[:, 0], field.bounds[:, 1]
    x = lo + torch.rand(257, field.in_dim) * (hi - lo)
    np.save(tmp_path / "x.npy", x.numpy())
    fresh_loader(run, tmp_path / "x.npy", tmp_path / "out.npz")
    with torch.no_grad():
        ref = field(x).numpy()
    scale = float(np.abs(ref).max())
    out = np.load(tmp_path / "out.npz")
    assert set(out.files) == {"ckpt", "safetensors", "nir", "rundir", "pt2", "onnx"}
    for name in out.files:
        np.testing.assert_allclose(out[name], ref, rtol=1e-5, atol=1e-6 * scale, err_msg=name)


def test_gradient_matches_finite_differences(trained):
    _, field, _ = trained
    x = torch.zeros(3, field.in_dim, dtype=torch.float32) + 0.1
    g = field.gradient(x)
    assert g.shape == (3, field.channels, field.in_dim)
    eps = 1e-4  # central differences: truncation ~ eps^2 |f'''| (Fourier features reach hundreds of rad/unit)
    for k in range(field.in_dim):
        d = torch.zeros(field.in_dim)
        d[k] = eps
        with torch.no_grad():
            fd = (field(x + d) - field(x - d)) / (2 * eps)
            rounding = 4 * 1.2e-7 * float(field(x).abs().max()) / eps  # fp32 noise of the difference quotient
        torch.testing.assert_close(g[:, :, k], fd, rtol=5e-2, atol=5e-2 * float(fd.abs().max()) + rounding + 1e-6)


def test_queries_answer_without_autograd_and_accept_numpy(trained):
    _, field, _ = trained
    x64 = np.random.default_rng(0).uniform(-0.9, 0.9, (11, field.in_dim))  # float64, as numpy makes it
    out = field(x64)
    assert not out.requires_grad and out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), field(torch.from_numpy(x64).float()).numpy())
    np.testing.assert_array_equal(field(torch.from_numpy(x64)).numpy(), out.numpy())  # float64 tensor
    xg = torch.from_numpy(x64).float().requires_grad_(True)
    assert field(xg).requires_grad  # derivatives by coordinates still work
    field.train()
    try:
        assert field(x64).requires_grad  # fine-tuning: training mode records the weights' graph
    finally:
        field.eval()


def test_sample_image_gives_the_file_back_in_its_type(trained):
    import imageio.v3 as iio

    run, field, _ = trained
    if field.spec["meta"].get("kind") != "image":
        with pytest.raises(NirError, match="needs a field trained on an image"):
            field.sample_image()
        return
    original = iio.imread(field.spec["meta"]["path"])
    img = field.sample_image()
    assert img.dtype == original.dtype == np.uint8 and img.shape == original.shape
    lo, hi = field.spec["meta"]["value_range"]
    expect = np.clip((field.sample().numpy() - lo) / (hi - lo), 0, 1) * 255
    np.testing.assert_array_equal(img, expect.reshape(img.shape).round().astype(np.uint8))


def test_sample_shapes_any_resolution_and_sub_box(trained):
    _, field, _ = trained
    shape = [5] * field.in_dim
    out = field.sample(shape, bounds=[[-0.5, 0.5]] * field.in_dim, chunk=7)
    assert out.shape == (*shape, field.channels)
    # chunking does not change the answer
    torch.testing.assert_close(out, field.sample(shape, bounds=[[-0.5, 0.5]] * field.in_dim, chunk=100000))


def test_image_sampled_at_4x_and_3x(tmp_path):
    """4x: the right size, and its 4x4 block means match the training-grid prediction; 3x (odd):
    every third sample sits exactly on a training pixel centre and must equal it."""
    from nir.data.readers import sample_image_path

    field, _ = nir.fit(
        str(sample_image_path("camera")),
        run_dir=tmp_path / "r",
        steps=10,
        trainer__enable_progress_bar=False,
        log__images=False,
        model__hidden_dim=32,
        model__num_layers=1,
        model__w0_first=10.0,
    )
    H, W = field.spec["shape"]
    base = field.sample()
    big = field.sample((4 * H, 4 * W))
    assert big.shape == (4 * H, 4 * W, 1)
    blocks = big.reshape(H, 4, W, 4, 1).mean(dim=(1, 3))
    assert float((blocks - base).abs().mean()) < 0.02  # values in [-1, 1]
    three = field.sample((3 * H, 3 * W))
    torch.testing.assert_close(three[1::3, 1::3], base, rtol=1e-5, atol=1e-5)


def test_sample_writes_npy_png_tiff(trained, tmp_path):
    import imageio.v3 as iio

    _, field, _ = trained
    shape = [6] * field.in_dim
    v = field.sample(shape, out=tmp_path / "s.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), v.numpy())
    if field.in_dim == 2:
        field.sample(shape, out=tmp_path / "s.png")
        assert iio.imread(tmp_path / "s.png").dtype == (np.uint16 if field.channels == 1 else np.uint8)
        field.sample(shape, out=tmp_path / "s.tif")
        np.testing.assert_allclose(np.asarray(iio.imread(tmp_path / "s.tif")).reshape(v.shape), v.numpy())
    else:
        with pytest.raises(NirError, match="needs a 2-D field"):
            field.sample(shape, out=tmp_path / "s.png")


def test_sampling_memory_is_bounded(trained):
    """Chunked sampling allocates activations of ``chunk`` points, not of the whole grid."""
    _, field, _ = trained
    shape = [24] * field.in_dim if field.in_dim == 3 else [200, 200]
    seen = []
    hook = field.network.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    field.sample(shape, chunk=1024)
    hook.remove()
    assert max(seen) == 1024 and sum(seen) == int(np.prod(shape))


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/nir_pwned_marker",))


def test_malicious_checkpoint_refused_without_running_payload(tmp_path):
    marker = Path("/tmp/nir_pwned_marker")
    marker.unlink(missing_ok=True)
    bad = tmp_path / "evil.ckpt"
    torch.save({"nir_spec": {}, "state_dict": {}, "x": _Payload()}, bad)
    with pytest.raises(NirError, match="refused"):
        load_field(bad)
    assert not marker.exists()


@pytest.mark.parametrize("target", ["nir.fields.Nope", "os.system", "builtins.eval"])
def test_field_file_naming_foreign_class_refused(tmp_path, target):
    from safetensors.torch import save_file

    spec = {
        "network": {"target": target, "kwargs": {}},
        "transform": {"target": "nir.transforms.Identity"},
        "bounds": [[-1, 1]],
        "shape": [4],
        "channels": 1,
    }
    p = tmp_path / "f.safetensors"
    save_file({"x": torch.zeros(1)}, str(p), metadata={"nir_spec": json.dumps(spec)})
    with pytest.raises(NirError, match="unknown class|outside the trusted modules"):
        load_field(p)


def test_bad_paths_and_coordinates(trained, tmp_path):
    _, field, _ = trained
    with pytest.raises(NirError, match="does not exist"):
        load_field(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NirError, match="not a nir run directory"):
        load_field(tmp_path / "empty")
    with pytest.raises(NirError, match=f"expects coordinates with {field.in_dim} columns"):
        field(torch.zeros(3, field.in_dim + 1))
    with pytest.raises(NirError, match="floating-point"):
        field(torch.zeros(3, field.in_dim, dtype=torch.long))
    with pytest.raises(NirError, match="must have"):
        field.sample([4] * (field.in_dim + 1))


def test_nir_field_cli(trained, tmp_path, capsys):
    """``nir-field``'s code on every case, in this process (the console script itself runs in a
    subprocess once, below)."""
    from nir.cli.field import main

    run, field, _ = trained
    main(["sample", str(run), str(tmp_path / "o.npy"), "--scale", "2"])
    assert np.load(tmp_path / "o.npy").shape == (*[2 * s for s in field.spec["shape"]], field.channels)
    assert capsys.readouterr().out.startswith("wrote ")


def test_nir_field_console_script(tmp_path):
    """The installed ``nir-field`` samples a run and answers a bad path with one line, exit 2."""
    field, _ = nir.fit(np.linspace(0.1, 1.0, 32, dtype=np.float32), ["model=relu", "model.hidden_dim=8"] + TINY,
                       run_dir=tmp_path / "run")  # fmt: skip
    r = subprocess.run(
        [NIR_FIELD, "sample", str(tmp_path / "run"), str(tmp_path / "o.npy"), "--scale", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "o.npy").shape == (64, 1)
    r = subprocess.run(
        [NIR_FIELD, "export", str(tmp_path / "nope"), str(tmp_path / "x.pt2")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1


def test_fit_matches_cli_with_same_overrides(tmp_path, tiny_png):
    from tests.conftest import tiny_overrides

    ov = tiny_overrides(tiny_png, steps=20)
    _, m_py = nir.fit(str(tiny_png), ov, run_dir=tmp_path / "py")
    r = subprocess.run(
        [sys.executable, "-m", "nir.cli.train", *ov, f"hydra.run.dir={tmp_path / 'cli'}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    m_cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert m_cli["psnr"] == pytest.approx(m_py["psnr"], abs=1e-4)
    for name in ["config.yaml", "metrics.json", "field.safetensors", "checkpoints/last.ckpt", ".hydra/overrides.yaml"]:
        assert (tmp_path / "py" / name).exists() and (tmp_path / "cli" / name).exists(), name


def test_fit_accepts_arrays_and_tensors(tmp_path):
    y = torch.linspace(0, 1, 300) ** 2
    field, m = nir.fit(y, run_dir=tmp_path / "t", steps=5, precision="32", trainer__enable_progress_bar=False)
    assert isinstance(field, Field) and field.spec["shape"] == [300]
    field2, _ = nir.fit(
        np.stack([y.numpy()] * 2, -1),
        run_dir=tmp_path / "a",
        steps=5,
        channel_axis=-1,
        trainer__enable_progress_bar=False,
    )
    assert field2.channels == 2


def test_user_network_loads_only_from_trusted_modules(tmp_path, monkeypatch):
    """A field whose network is the user's own class: refused by default, loaded (same answers)
    when its module prefix is trusted by argument or by NIR_TRUSTED_MODULES; still no unpickling."""
    from nir.components import component_spec
    from nir.reuse.field import Field
    from nir.transforms import Identity
    from tests.usernet import TinyNet

    net = TinyNet(2, 1)
    spec = {
        "network": component_spec(net, {"in_dim": 2, "out_dim": 1}),
        "transform": component_spec(Identity(), {}),
        "bounds": [[-1.0, 1.0]] * 2,
        "shape": [4, 4],
        "channels": 1,
        "meta": {},
    }
    path = Field(net, Identity(), spec).save(tmp_path / "f.safetensors")
    x = torch.rand(16, 2)
    monkeypatch.delenv("NIR_TRUSTED_MODULES", raising=False)
    with pytest.raises(NirError, match=r"outside the trusted modules .*trusted=\['tests'\]"):
        load_field(path)
    with pytest.raises(NirError, match="outside the trusted modules"):
        load_field(path, trusted=["tes"])  # a prefix is a whole module path, not a string prefix
    with torch.no_grad():
        torch.testing.assert_close(load_field(path, trusted=["tests"])(x), net(x))
        monkeypatch.setenv("NIR_TRUSTED_MODULES", "other, tests.usernet")
        torch.testing.assert_close(load_field(path)(x), net(x))
