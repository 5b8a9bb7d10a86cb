"""Grid encodings (nir/fields/encodings.py): indices, interpolation, gradients, composition, 4-D."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nir.errors import NirError
from nir.fields import EncodedMLP, GridEncoding

MASK = 0xFFFFFFFF
# tiny-cuda-nn's spatial-hash primes (encodings/grid.h), written out here rather than imported from
# the module under test, so that a changed constant there fails these tests
TCNN_PRIMES = (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737)


def _hash(vertex: list[int], table: int) -> int:
    """tiny-cuda-nn's spatial hash, by hand: XOR of uint32(c_i * pi_i), modulo the table size."""
    h = 0
    for c, p in zip(vertex, TCNN_PRIMES):
        h ^= (c * p) & MASK
    return h % table


@pytest.mark.parametrize("d", [2, 3])
def test_hash_and_dense_indices_match_a_hand_computation(d):
    enc = GridEncoding(d, n_levels=2, log2_hashmap_size=6, base_resolution=4, finest_resolution=40)
    r0, r1 = enc.resolutions
    assert enc.dense_levels == [r0**d <= 64, r1**d <= 64] == [d == 2 or r0**d <= 64, False]
    rng = np.random.default_rng(d)
    verts = [[int(v) for v in rng.integers(0, r1, d)] for _ in range(20)]
    v = torch.tensor(verts)[:, None, None, :].expand(-1, 2, 1, d)  # (N, L=2, K=1, d)
    got = enc.indices(v)[:, :, 0]
    off = r0**d if enc.dense_levels[0] else 64
    for i, vert in enumerate(verts):
        assert int(got[i, 1]) == off + _hash(vert, 64)  # hashed level, after level 0's table
    small = torch.tensor([[1] * d, [r0 - 1] * d, [0] * (d - 1) + [2]])[:, None, None, :].expand(-1, 2, 1, d)
    dense = enc.indices(small)[:, 0, 0]
    if enc.dense_levels[0]:  # row-major, axis 0 slowest
        expect = [sum(c * r0 ** (d - 1 - k) for k, c in enumerate(row)) for row in small[:, 0, 0].tolist()]
        assert dense.tolist() == expect


@pytest.mark.parametrize(
    "vertex,row",
    [((3, 5, 7), 329061), ((0, 1, 0), 489905), ((199, 0, 123), 5200), ((17, 42, 99), 403844),
     ((3, 5, 7, 11), 484834), ((1, 0, 0, 1), 443124)],
)  # fmt: skip
def test_hashed_rows_are_tiny_cuda_nns(vertex, row):
    """Literal table rows of a 2^19-entry hashed level: (XOR_i uint32(c_i * pi_i)) mod 2^19."""
    d = len(vertex)
    enc = GridEncoding(d, n_levels=1, log2_hashmap_size=19, base_resolution=200, finest_resolution=200)
    assert enc.dense_levels == [False]
    assert int(enc.indices(torch.tensor(vertex)[None, None, None, :])) == row


def test_dense_level_is_trilinear_interpolation_of_its_table():
    enc = GridEncoding(3, n_levels=1, n_features_per_level=3, base_resolution=5, finest_resolution=5, hashed=False)
    with torch.no_grad():
        enc.embeddings.normal_()
    x = torch.rand(200, 3) * 2 - 1
    table = enc.embeddings.detach().reshape(5, 5, 5, 3).permute(3, 0, 1, 2)[None]  # (1, F, D=ax0, H=ax1, W=ax2)
    ref = F.grid_sample(table, x.flip(-1)[None, :, None, None, :], mode="bilinear", align_corners=True)
    torch.testing.assert_close(enc(x), ref[0, :, :, 0, 0].T, rtol=1e-5, atol=1e-5)


def test_gradients_match_finite_differences_on_a_tiny_grid():
    torch.manual_seed(0)
    enc = GridEncoding(2, n_levels=3, log2_hashmap_size=4, base_resolution=3, finest_resolution=9)
    with torch.no_grad():
        enc.embeddings.normal_()
    x = torch.tensor([[0.13, -0.41], [0.52, 0.77]], requires_grad=True)
    w = torch.randn(enc.n_output_dims)
    (enc(x) @ w).sum().backward()
    eps = 1e-3  # inside a cell the encoding is multilinear in x: central differences are exact up to rounding
    for k in range(2):
        d = torch.zeros(2)
        d[k] = eps
        with torch.no_grad():
            fd = ((enc(x + d) - enc(x - d)) @ w) / (2 * eps)
        torch.testing.assert_close(x.grad[:, k], fd, rtol=1e-3, atol=1e-3)
    # the tables: the encoding is linear in them, so the gradient of one entry is its weight
    g = enc.embeddings.grad
    assert (
        g is not None and int((g != 0).sum()) <= 2 * 3 * 4 * 2
    )  # only the touched corners (2 pts, 3 levels, 4 corners, F=2)
    i = int(g.abs().argmax()) // 2
    with torch.no_grad():
        base = float((enc(x) @ w).sum())
        enc.embeddings[i, 0] += 1e-2
        assert float((enc(x) @ w).sum()) - base == pytest.approx(1e-2 * float(g[i, 0]), rel=1e-3)


def test_levels_must_get_finer():
    with pytest.raises(NirError, match="per_level_scale must be >= 1"):
        GridEncoding(2, n_levels=3, base_resolution=16, per_level_scale=0.5)
    with pytest.raises(NirError, match="finest_resolution .* must be >= base_resolution"):
        GridEncoding(2, n_levels=3, base_resolution=16, finest_resolution=8)


def test_grid_stays_fp32_under_autocast():
    enc = GridEncoding(2, n_levels=2, log2_hashmap_size=8, base_resolution=4, finest_resolution=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert enc(torch.rand(5, 2)).dtype == torch.float32


def test_bounds_map_the_box_onto_the_grid():
    a = GridEncoding(1, n_levels=1, base_resolution=8, finest_resolution=8, hashed=False)
    b = GridEncoding(1, n_levels=1, base_resolution=8, finest_resolution=8, hashed=False, bounds=[[0.0, 10.0]])
    with torch.no_grad():
        b.embeddings.copy_(a.embeddings.normal_())
    torch.testing.assert_close(a(torch.tensor([[-1.0], [0.3], [1.0]])), b(torch.tensor([[0.0], [6.5], [10.0]])))


def test_encoded_mlp_composes_through_config_and_groups_its_parameters():
    from hydra.utils import instantiate

    from tests.conftest import make_cfg

    cfg = make_cfg(
        [
            "model=hashgrid",
            "model.encoding.n_levels=4",
            "model.encoding.log2_hashmap_size=8",
            "model.encoding.finest_resolution=32",
        ]
    )
    net = instantiate(cfg.model, in_dim=2, out_dim=3, bounds=[[-1, 1], [-1, 1]])
    assert isinstance(net, EncodedMLP) and isinstance(net.encoding, GridEncoding)
    assert net.encoding.n_levels == 4 and net(torch.rand(7, 2)).shape == (7, 3)
    groups = net.param_groups()
    assert set(groups) == {"encoding", "mlp"} and groups["encoding"] == [net.encoding.embeddings]
    from nir.training.optim import Adam

    opt = Adam(lr=1e-2, groups={"encoding": {"eps": 1e-15, "betas": [0.9, 0.99], "weight_decay": 0.0}}).build(net, 10)
    by_name = {g["name"]: g for g in opt["optimizer"].param_groups}
    assert by_name["encoding"]["eps"] == 1e-15 and by_name["encoding"]["betas"] == (0.9, 0.99)
    assert by_name["mlp"]["eps"] == 1e-8 and by_name["mlp"]["lr"] == 1e-2
    with pytest.raises(NirError, match="parameter groups are"):
        Adam(groups={"tables": {"eps": 1e-15}}).build(net, 10)


def test_hashgrid_lt3d_preset_fits_the_fourier_budget():
    from hydra.utils import instantiate

    from tests.conftest import make_cfg

    def count(model: str) -> int:
        cfg = make_cfg(["data=lognormal3d", f"model={model}"])
        return sum(p.numel() for p in instantiate(cfg.model, in_dim=3, out_dim=1).parameters())

    assert count("hashgrid_lt3d") <= count("fourier_lt3d") == 16_641


def test_four_dimensional_array_trains_samples_and_exports(tmp_path):
    """A (t, z, y, x) volume: the 4-D grid trains, answers, samples and exports like the rest."""
    import nir

    t, z, y, x = np.meshgrid(*[np.linspace(0, 1, n) for n in (3, 5, 6, 7)], indexing="ij")
    vol = (0.1 + np.exp(-((x - 0.3 * t - 0.3) ** 2 + (y - 0.5) ** 2 + (z - 0.5) ** 2) * 10)).astype(np.float32)
    np.save(tmp_path / "v4.npy", vol)
    field, m = nir.fit(str(tmp_path / "v4.npy"), run_dir=tmp_path / "run", steps=40, model="hashgrid",
                       model__encoding__n_levels=4, model__encoding__base_resolution=3, model__encoding__finest_resolution=8, model__hidden_dim=16,
                       trainer__val_check_interval=20, trainer__enable_progress_bar=False)  # fmt: skip
    assert m["status"] == "ok" and m["signal"]["shape"] == [3, 5, 6, 7] and field.in_dim == 4
    assert field.sample().shape == (3, 5, 6, 7, 1) and field.sample((2, 3, 3, 3)).shape == (2, 3, 3, 3, 1)
    field.export(tmp_path / "f.pt2")
    q = torch.rand(11, 4) * 2 - 1
    prog = torch.export.load(str(tmp_path / "f.pt2")).module()
    with torch.no_grad():
        torch.testing.assert_close(prog(q), field(q))
    assert (tmp_path / "run" / "tb").is_dir() and m["worst_decade_median"] < 1.0


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_forward_equals_the_reference_lookup(d):
    """The vectorised forward (per-axis hash terms combined per corner) against the reference:
    every corner's row from :meth:`GridEncoding.indices`, weights from the fractional position."""
    torch.manual_seed(d)
    enc = GridEncoding(d, n_levels=5, log2_hashmap_size=4 if d == 1 else 7, base_resolution=2, finest_resolution=30)
    assert not all(enc.dense_levels) and any(enc.dense_levels)  # both kinds of level are exercised
    with torch.no_grad():
        enc.embeddings.normal_()
    x = torch.rand(64, d) * 2 - 1
    u = (x + 1) / 2
    pos = u[:, None, :] * (enc._res[:, None] - 1)
    base = pos.floor().clamp_max(enc._res[:, None] - 2)
    frac = pos - base
    corners = enc._corners.float()
    w = (frac[:, :, None, :] * corners + (1 - frac[:, :, None, :]) * (1 - corners)).prod(-1)
    rows = enc.indices(base.long()[:, :, None, :] + enc._corners)
    ref = (enc.embeddings[rows] * w[..., None]).sum(2).reshape(64, -1)
    torch.testing.assert_close(enc(x), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", ["fourier", "hashgrid"])
def test_output_layer_runs_in_fp32_under_autocast(model):
    """bf16's output spacing is ~1 % of a log-space value: the last layer stays fp32."""
    from nir.fields import EncodedMLP, FourierMLP

    torch.manual_seed(0)
    if model == "fourier":
        net = FourierMLP(1, 1, hidden_dim=16, num_layers=1, num_features=8)
    else:
        grid = {"otype": "nir.fields.encodings.GridEncoding", "n_levels": 4, "finest_resolution": 64}
        net = EncodedMLP(1, 1, grid, hidden_dim=16, bounds=[[-1, 1]])
    x = torch.rand(64, 1) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
        hidden = net.mlp[:-1](net.encoding(x))
    assert out.dtype == torch.float32
    head = net.mlp[-1]
    torch.testing.assert_close(out, hidden.float() @ head.weight.T + head.bias, rtol=1e-6, atol=1e-6)
