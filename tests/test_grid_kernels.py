"""The grid encoding's kernels against the torch path (the reference): Triton's (issue 26), on the
CPU through Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 where no CUDA device
is), and Numba's fused CPU kernels (issue 34); and auto's first-use check with its fallback."""

from __future__ import annotations

import itertools

import pytest
import torch

from nir.errors import NirError
from nir.fields import encodings, grid_numba, grid_triton
from nir.fields.encodings import GridEncoding

assert grid_triton.triton is not None, "triton is installed by make's set-up (the dev extra)"
assert grid_numba.numba is not None, "numba is a dependency"
# compiled kernels on a CUDA device (scripts/gpu_check.sh), the interpreter on the CPU elsewhere
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
KERNELS = ["triton", "numba"] if DEVICE.type == "cpu" else ["triton"]  # each kernel where it runs


def pair(d: int, hashed: bool, log2: int, features: int = 2, levels: int = 4, finest: int = 17, kernel="triton"):
    kw = dict(n_levels=levels, n_features_per_level=features, log2_hashmap_size=log2, base_resolution=3,
              finest_resolution=finest, hashed=hashed, bounds=[[-1.0, 2.0]] * d)  # fmt: skip
    ref, ker = GridEncoding(d, backend="torch", **kw).to(DEVICE), GridEncoding(d, backend=kernel, **kw).to(DEVICE)
    with torch.no_grad():
        ref.embeddings.normal_(generator=torch.Generator().manual_seed(d))
        ker.embeddings.copy_(ref.embeddings)
    return ref, ker


def points(d: int, n: int = 90, finest: int = 17) -> torch.Tensor:
    """Random points, points exactly on the finest level's vertices (cell edges), the box's
    faces and corners, and points outside the box (clamped)."""
    g = torch.Generator().manual_seed(10 + d)
    rand = torch.rand(n, d, generator=g) * 3.0 - 1.0
    edges = -1.0 + 3.0 * torch.randint(0, finest, (20, d), generator=g).float() / (finest - 1)
    faces = torch.tensor(list(itertools.product([-1.0, 2.0], repeat=d)))
    outside = (
        torch.rand(8, d, generator=g) + torch.tensor([2.5, -3.5])[torch.arange(8) % 2][:, None]
    )  # beyond a face on every axis
    return torch.cat([rand, edges, faces, outside]).to(DEVICE)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(
    "d,hashed,log2,features",
    [(1, True, 3, 2), (2, True, 5, 2), (2, True, 12, 4), (3, True, 6, 2), (3, False, 6, 1), (4, True, 7, 2), (4, True, 17, 8)],
    ids=["1d-hashed", "2d-collide", "2d-fits", "3d-collide", "3d-dense", "4d-collide", "4d-fits-f8"],
)  # fmt: skip
def test_kernels_match_the_torch_path_forward_and_both_gradients(d, hashed, log2, features, kernel):
    ref, ker = pair(d, hashed, log2, features, kernel=kernel)
    assert any(not dense for dense in ref.dense_levels) == (hashed and log2 < 12)  # collisions where meant
    x = points(d)
    xr, xk = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    a, b = ref(xr), ker(xk)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (a - b).abs().max()
    g = torch.randn(a.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    a.backward(g)
    b.backward(g)
    assert torch.allclose(ref.embeddings.grad, ker.embeddings.grad, rtol=1e-5, atol=1e-5)
    assert torch.allclose(xr.grad, xk.grad, rtol=1e-4, atol=1e-4), (xr.grad - xk.grad).abs().max()
    assert float(xk.grad[-8:].abs().max()) == 0.0  # outside the box the clamp holds: no gradient
    assert float(xk.grad.abs().sum()) > 0  # and inside there is one


def test_a_short_training_run_ends_at_the_torch_backends_weights(tmp_path):
    import numpy as np

    import nir

    vol = np.exp(np.random.default_rng(0).normal(size=(10, 9, 8))).astype(np.float32)
    common = ["model=hashgrid_lt3d", "model.encoding.n_levels=3", "model.encoding.finest_resolution=10",
              "model.encoding.log2_hashmap_size=6", "model.hidden_dim=8", "trainer.max_steps=6",
              "trainer.val_check_interval=6", "batch_size=128", "trainer.precision=32", "log.images=false",
              "trainer.enable_progress_bar=false", *(["trainer=gpu"] if DEVICE.type == "cuda" else [])]  # fmt: skip
    fields = {}
    for backend in ("torch", *KERNELS):
        fields[backend], _ = nir.fit(vol, [*common, f"model.encoding.backend={backend}"], run_dir=tmp_path / backend)
    a = fields["torch"].network.state_dict()
    for kernel in KERNELS:
        b = fields[kernel].network.state_dict()
        for key in a:
            assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-6), (kernel, key)
    assert float(a["encoding.embeddings"].abs().max()) > 1e-3  # the tables trained (init is U(-1e-4, 1e-4))


@pytest.mark.parametrize("kernel", KERNELS)
def test_field_gradient_goes_through_the_kernels_and_a_second_derivative_is_one_line(kernel):
    ref, ker = pair(3, True, 6, kernel=kernel)
    x = points(3)[:40].requires_grad_(True)
    (gx,) = torch.autograd.grad(ker(x).sum(), x)
    (gr,) = torch.autograd.grad(ref(x).sum(), x)
    assert torch.allclose(gx, gr, rtol=1e-4, atol=1e-4)
    with pytest.raises(NirError, match="no second derivative.*backend=torch"):
        (g2,) = torch.autograd.grad(ker(x).sum(), x, create_graph=True)
        g2.sum().backward()


def test_where_the_kernels_cannot_run_is_one_line(monkeypatch):
    with pytest.raises(NirError, match="model.encoding.backend must be one of auto, torch, triton, numba"):
        GridEncoding(2, backend="cuda")
    enc = GridEncoding(2, n_features_per_level=3, log2_hashmap_size=8, finest_resolution=32, backend="triton")
    with pytest.raises(NirError, match="backend=triton cannot run here: n_features_per_level 3"):
        enc.to(DEVICE)(torch.zeros(4, 2, device=DEVICE))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "CUDA" in grid_triton.available(torch.device("cpu"))
    enc = GridEncoding(2, log2_hashmap_size=8, finest_resolution=32, backend="triton")
    with pytest.raises(NirError, match="backend=triton cannot run here: the Triton kernels run on CUDA"):
        enc(torch.zeros(4, 2))
    # auto: the Numba kernels on the CPU (said by the start line's backend), the torch path where
    # numba is missing; backend=numba off the CPU is one line
    assert GridEncoding(2, log2_hashmap_size=8, finest_resolution=32).backend_for(torch.device("cpu")) == "numba"
    monkeypatch.setattr(grid_numba, "numba", None)
    assert GridEncoding(2, log2_hashmap_size=8, finest_resolution=32).backend_for(torch.device("cpu")) == "torch"
    with pytest.raises(NirError, match="backend=numba cannot run here: numba is not installed"):
        GridEncoding(2, log2_hashmap_size=8, finest_resolution=32, backend="numba")(torch.zeros(4, 2))
    monkeypatch.undo()
    assert "run on the CPU, not on cuda" in grid_numba.available(torch.device("cuda"))


def test_the_kernels_are_checked_once_per_grid_layout_in_a_process(monkeypatch):
    monkeypatch.setitem(encodings.KERNEL_FOR, "cpu", "numba")
    monkeypatch.setattr(encodings, "_VERIFIED", {})
    checks = []
    real = encodings.GridEncoding._compare
    monkeypatch.setattr(encodings.GridEncoding, "_compare", lambda self, *a: checks.append(1) or real(self, *a))
    x = points(2)
    for _ in range(3):  # a Zarr read rebuilds a chunk's field each time
        assert pair(2, True, 5, kernel="auto")[1].backend_for(x.device) == "numba"
    assert pair(2, True, 6, kernel="auto")[1].backend_for(x.device) == "numba"  # another layout
    assert len(checks) == 2


@pytest.mark.parametrize("kernel", ["triton", "numba"])
@pytest.mark.parametrize("failure", ["raises", "disagrees"])
def test_auto_never_uses_a_kernel_that_failed_its_first_run(kernel, failure, monkeypatch, caplog):
    """auto on a device whose kernel fails to compile or launch (simulated on the CPU: the
    kernel's autograd function raises, as a driver or compiler error would) or answers wrongly
    (a weight off): the torch path, one line saying why, the same answers as backend=torch."""
    monkeypatch.setitem(encodings.KERNEL_FOR, "cpu", kernel)
    monkeypatch.setattr(encodings, "_VERIFIED", {})  # a fresh process: no verdict yet
    mod = grid_triton if kernel == "triton" else grid_numba
    real = mod.GridFunction.apply

    def broken(x, table, *rest):
        if failure == "raises":
            raise RuntimeError("simulated: PTX assembly failed\nsecond line of the driver's report")
        return real(x, table, *rest) * 1.01

    monkeypatch.setattr(mod.GridFunction, "apply", broken)
    ref, enc = pair(2, True, 5, kernel="auto")
    x = points(2)
    with caplog.at_level("WARNING", logger="nir"):
        assert enc.backend_for(x.device) == "torch"
        out = enc(x)
    torch.testing.assert_close(out, ref(x), rtol=0, atol=0)
    lines = [r.getMessage() for r in caplog.records if "grid encoding" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0], lines  # once, one line
    assert f"the {kernel} kernels failed on cpu" in lines[0] and "using the torch path" in lines[0]
    assert ("PTX assembly failed" if failure == "raises" else "differ from the torch path") in lines[0]


def test_bench_encoding_times_both_backends(monkeypatch, capsys):
    """scripts/bench_encoding.py (the GPU check's throughput table) runs end to end, here on the
    CPU with a tiny batch; its numbers are measured on a device, not asserted."""
    import importlib.util
    import json
    import sys

    from tests.conftest import ROOT

    spec = importlib.util.spec_from_file_location("bench_encoding", ROOT / "scripts" / "bench_encoding.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, "GRIDS", {"3-D tiny": (3, {**bench.GRID, "n_levels": 3, "log2_hashmap_size": 8})})
    monkeypatch.setattr(
        sys, "argv", ["bench_encoding.py", "--batch", "32", "--steps", "1", "--backends", "torch", "triton"]
    )
    bench.main()
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert {r["network"] for r in rows} >= {"3-D tiny [torch]", "3-D tiny [triton]"}
    assert all(r["samples_per_s"] > 0 for r in rows) and len(rows) == 2 * 4


def test_under_autocast_the_features_leave_in_the_mlps_dtype():
    """fp32 tables and arithmetic, bf16 features out (half the bytes written): equal to the torch
    path's fp32 features to one bf16 rounding, and the table's gradient still fp32."""
    ref, ker = pair(3, True, 6)
    x = points(3)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        a, b = ref(x), ker(x)
    assert a.dtype == torch.float32 and b.dtype == torch.bfloat16
    torch.testing.assert_close(b.float(), a, rtol=2**-7, atol=1e-6)
    b.float().square().sum().backward()
    assert ker.embeddings.grad.dtype == torch.float32 and float(ker.embeddings.grad.abs().sum()) > 0
