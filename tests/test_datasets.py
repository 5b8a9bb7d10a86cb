"""Scientists' files (issue 24): NetCDF, HDF5 and Zarr variables through xarray, missing values
as a mask, coordinates as the box, and the field written back with the source's coordinates."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr  # the sci extra, installed by make's set-up: a missing install fails here

from nir.cli.field import main as field_main
from nir.data.holdout import Holdout
from nir.data.readers import read_array
from nir.data.samplers import Decades
from nir.errors import NirError
from nir.figures import value_label
from nir.run.run import train
from nir.training.batches import TrainingData
from nir.training.losses import MSE
from nir.training.metrics import score
from nir.transforms import Identity
from tests.conftest import make_cfg

SUFFIXES = [".nc", ".h5", ".zarr"]


def climate(nt: int = 4, nlat: int = 12, nlon: int = 16, seed: int = 0):
    """time x lat x lon, float32, latitude descending as in most reanalyses, a NaN land mask
    stored with a _FillValue, CF attributes."""
    rng = np.random.default_rng(seed)
    lat = np.linspace(82.5, -82.5, nlat).astype(np.float32)
    lon = np.arange(nlon, dtype=np.float64) * (360.0 / nlon)
    time = np.datetime64("2001-03-01") + np.arange(nt) * np.timedelta64(6, "h")
    y = np.exp(rng.normal(0.0, 1.5, (nt, nlat, nlon))).astype(np.float32)  # long-tailed precipitation-like
    land = np.zeros((nlat, nlon), bool)
    land[3:6, 4:9] = True
    land[9, 12:] = True
    y[:, land] = np.nan
    da = xr.DataArray(
        y,
        dims=("time", "lat", "lon"),
        coords={
            "time": time,
            "lat": ("lat", lat, {"units": "degrees_north", "standard_name": "latitude"}),
            "lon": ("lon", lon, {"units": "degrees_east", "standard_name": "longitude"}),
        },
        name="pr",
        attrs={"units": "kg m-2 s-1", "long_name": "precipitation flux"},
    )
    da.encoding["_FillValue"] = np.float32(-9999.0)
    return da


def save(da, path):
    ds = da.to_dataset() if hasattr(da, "to_dataset") else da
    if path.suffix == ".zarr":
        ds.to_zarr(path, mode="w")
    else:
        ds.to_netcdf(path, engine="h5netcdf" if path.suffix == ".h5" else None)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("sci")
    da = climate()
    return da, {s: save(da, d / f"pr{s}") for s in SUFFIXES}


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_variable_reads_as_its_values_with_missing_values_masked(files, suffix):
    da, paths = files
    s = read_array(str(paths[suffix]))
    ref = da.values[:, ::-1]  # latitude is read ascending
    assert s.shape == ref.shape and s.channels == 1 and s.long_tailed
    assert s.missing == int(np.isnan(ref).sum()) > 0
    got = s.read(0, s.numel)[:, 0].numpy()
    np.testing.assert_array_equal(got, ref.reshape(-1))  # NaN where the fill value is, the rest bit for bit
    # every flat range reads the same rows (hyperslabs across rows, planes and the descending axis)
    for a, b in [(0, 1), (5, 17), (15, 200), (190, 577), (700, 768), (0, 768)]:
        np.testing.assert_array_equal(s.read(a, b)[:, 0].numpy(), ref.reshape(-1)[a:b])
    idx = torch.tensor([767, 3, 191, 192, 400, 3])
    np.testing.assert_array_equal(s.gather(idx)[:, 0].numpy(), ref.reshape(-1)[idx.numpy()])
    # the box: cell centres on the coordinates, in the file's units
    (t0, t1), (a0, a1), (o0, o1) = s.bounds
    assert (t0, t1) == pytest.approx((-0.125, 0.875))  # days since the first time, 6-hourly
    assert (a0, a1) == pytest.approx((-90.0, 90.0)) and (o0, o1) == pytest.approx((-11.25, 348.75))
    assert s.meta["units"] == "kg m-2 s-1" and s.meta["long_name"] == "precipitation flux"
    assert value_label(s.meta) == "|precipitation flux| [kg m-2 s-1]"  # the figures' value axis


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_masked_file_trains_scores_only_valid_points_and_writes_back_its_coordinates(files, suffix, tmp_path):
    import nir

    da, paths = files
    run = tmp_path / "run"
    overrides = [f"data.path={paths[suffix]}", "model=hashgrid_lt3d", "trainer.max_steps=20",
                 "trainer.val_check_interval=10", "trainer.enable_progress_bar=false", "trainer.precision=32"]  # fmt: skip
    m = train(make_cfg(["data=array", *overrides]), run)
    nan = int(np.isnan(da.values).sum())
    assert m["masked_samples"] == nan and json.loads((run / "metrics.json").read_text())["masked_samples"] == nan
    assert sum(row["count"] for row in m["magnitude_bins"]) == da.size - nan  # only valid points are scored
    assert np.isfinite(m["psnr"]) and np.isfinite(m["worst_decade_median"])
    field = nir.load_field(run)
    back = field.to_xarray()
    assert back.dims == da.dims and back.name == "pr" and back.attrs["units"] == "kg m-2 s-1"
    for dim in da.dims:  # equal to the source file's, in its order (latitude descending) and type
        np.testing.assert_array_equal(back[dim].values, da[dim].values)
        assert back[dim].dtype == da[dim].dtype or dim == "time"  # xarray may hold times at its own resolution
    assert back["lat"].attrs["units"] == "degrees_north"
    assert field.spec["meta"]["long_name"] == "precipitation flux"  # units and names travel with the field
    # the run's metric is the stored field's on the valid points
    valid = ~np.isnan(da.values)
    rel = np.abs(back.values[valid] - da.values[valid]) / da.values[valid]
    assert rel.max() > 0 and np.isfinite(back.values).all()
    # another uniform grid on request, in the file's units
    finer = field.to_xarray(lat=np.arange(-80.0, 81.0, 10.0), time=2)
    np.testing.assert_allclose(finer["lat"].values, np.arange(80.0, -81.0, -10.0))  # in the file's (descending) order
    assert finer.shape == (2, 17, 16)


def test_field_sample_writes_netcdf_and_zarr_that_read_back(files, tmp_path):
    da, paths = files
    run = tmp_path / "run"
    train(make_cfg(["data=array", f"data.path={paths['.nc']}", "model=hashgrid_lt3d", "trainer.max_steps=5",
                    "trainer.val_check_interval=5", "trainer.enable_progress_bar=false"]), run)  # fmt: skip
    for suffix in (".nc", ".zarr"):
        out = tmp_path / f"back{suffix}"
        field_main(["sample", str(run), str(out)])  # nir-field sample RUN OUT
        back = xr.open_dataset(out, engine="zarr" if suffix == ".zarr" else None)["pr"]
        assert back.dims == da.dims
        np.testing.assert_array_equal(back["lon"].values, da["lon"].values)
        np.testing.assert_array_equal(back["time"].values, da["time"].values)


def test_a_zarr_larger_than_the_cache_streams_lazily_and_never_draws_masked_samples(tmp_path):
    rng = np.random.default_rng(1)
    v = np.exp(rng.normal(0, 2.0, (16, 12, 10))).astype(np.float32)
    v[rng.random(v.shape) < 0.2] = np.nan
    da = xr.DataArray(v, dims=("z", "y", "x"), name="rho")
    da.encoding["chunks"] = (4, 12, 10)  # chunked on disk: four slabs
    p = save(da, tmp_path / "rho.zarr")
    s = read_array(str(p))
    assert s.values is None and s.lazy is not None  # never loaded whole by the reader
    assert s.bounds == ((-1.0, 1.0),) * 3  # dimensions without coordinates span nir's default box
    h = Holdout(0.25, s.shape, seed=2)
    for sampling in (None, Decades()):
        data = TrainingData(s, Identity(), MSE(), batch_size=128, cache_mb=0.004, seed=0, sampling=sampling, holdout=h)
        data.to(torch.device("cpu"))
        assert data.streaming
        idx = torch.cat([data.next_batch()[0] for _ in range(200)])
        assert not np.isnan(v.reshape(-1)[idx.numpy()]).any() and not h.held(idx).any()
        allowed = set(np.flatnonzero(~np.isnan(v.reshape(-1)) & ~h.held_range(0, v.size).numpy()).tolist())
        assert set(idx.tolist()) == allowed  # every valid training sample is drawn, nothing else
        i, target = data.next_batch()
        np.testing.assert_array_equal(target[:, 0].numpy(), v.reshape(-1)[i.numpy()])


@pytest.mark.parametrize("sampling", [None, Decades()], ids=["uniform", "decades"])
def test_nan_in_an_npy_is_a_mask_for_held_training_data(tmp_path, sampling):
    rng = np.random.default_rng(2)
    v = np.exp(rng.normal(0, 2.0, (20, 30))).astype(np.float32)
    v[rng.random(v.shape) < 0.3] = np.nan
    np.save(tmp_path / "a.npy", v)
    s = read_array(str(tmp_path / "a.npy"))
    assert s.missing == int(np.isnan(v).sum())
    data = TrainingData(s, Identity(), MSE(), batch_size=100, sampling=sampling).to(torch.device("cpu"))
    assert not data.streaming
    idx = torch.cat([data.next_batch()[0] for _ in range(100)])
    assert set(idx.tolist()) == set(np.flatnonzero(~np.isnan(v.reshape(-1))).tolist())
    # the statistics are the valid samples'
    assert float(s.summary()["min"][0]) == np.nanmin(v) and float(s.summary()["max"][0]) == np.nanmax(v)


def test_metrics_leave_masked_samples_out(tmp_path):
    rng = np.random.default_rng(3)
    v = np.exp(rng.normal(0, 2.0, (40, 50))).astype(np.float32)
    pred = v * (1 + 0.01 * rng.standard_normal(v.shape)).astype(np.float32)
    holes = v.copy()
    holes[rng.random(v.shape) < 0.25] = np.nan
    np.save(tmp_path / "full.npy", v)
    np.save(tmp_path / "holes.npy", holes)
    full, masked = read_array(str(tmp_path / "full.npy")), read_array(str(tmp_path / "holes.npy"))
    keep = ~np.isnan(holes)
    pred_bad = pred.copy()
    pred_bad[~keep] = 1e6  # whatever the field says under the mask is never scored
    got = score(pred_bad, masked)
    assert got["masked_samples"] == int((~keep).sum())
    mse = float(np.mean((pred[keep].astype(np.float64) - v[keep]) ** 2))
    r = float(np.nanmax(holes) - np.nanmin(holes))
    assert got["psnr"] == pytest.approx(10 * np.log10(r**2 / mse), abs=1e-3)
    assert sum(row["count"] for row in got["magnitude_bins"]) == keep.sum()
    assert score(pred, full)["masked_samples"] == 0


def test_sel_isel_and_the_refusals_are_one_line(tmp_path):
    rng = np.random.default_rng(4)
    ds = xr.Dataset(
        {
            "rho": (("t", "level", "y", "x"), rng.random((2, 3, 4, 5)).astype(np.float32) + 0.1),
            "T": (("t", "level", "y", "x"), rng.random((2, 3, 4, 5)).astype(np.float32)),
            "five": (("a", "b", "c", "d", "e"), np.ones((2, 2, 2, 2, 2), np.float32)),
            "label": (("x",), np.array(list("abcde"))),
            "holes": (("x",), np.full(5, np.nan, np.float32)),
        },
        coords={"level": [1000.0, 750.0, 500.0], "x": np.array([0.0, 1.0, 2.0, 4.0, 8.0])},
    )
    p = save(ds, tmp_path / "many.nc")
    with pytest.raises(NirError, match=r"holds 5 variables \(rho, T, five, label, holes\); choose one with data.var"):
        read_array(str(p))
    s = read_array(str(p), var="rho", sel={"level": 500.0}, isel={"t": 1}, bounds=[[0, 1], [0, 2]])
    assert s.shape == (4, 5) and s.bounds == ((0.0, 1.0), (0.0, 2.0))
    np.testing.assert_array_equal(s.read(0, 20)[:, 0].numpy(), ds["rho"].values[1, 2].reshape(-1))
    cases = [
        ({"var": "nope"}, "data.var 'nope' is not in"),
        ({"var": "holes", "bounds": [0, 1]}, "every value is missing"),
        ({"var": "label"}, "has dtype <U1; nir fits real numbers"),
        ({"var": "five"}, "has 5 dimensions (a, b, c, d, e); nir fits 1 to 4"),
        ({"var": "rho", "sel": {"level": 123.0}}, "data.sel={'level': 123.0} cannot index 'rho'"),
        ({"var": "rho", "sel": {"depth": 1}}, "data.sel names depth, not a dimension of 'rho'"),
        ({"var": "T", "isel": {"x": [0, 3, 1]}}, "coordinate 'x' of"),  # x not monotonic (0, 4, 1): refused
    ]
    for options, match in cases:
        with pytest.raises(NirError) as e:
            read_array(str(p), **options)
        assert match in str(e.value) and "\n" not in str(e.value), str(e.value)
    for name, match in [("a.grib", "unsupported extension '.grib'; use one of .npy, .npz, .nc"), ("none.nc", "does not exist")]:  # fmt: skip
        with pytest.raises(NirError, match=match):
            read_array(str(tmp_path / name))
    (tmp_path / "junk.nc").write_bytes(b"not a netcdf file at all")
    with pytest.raises(NirError, match="cannot be read as NetCDF"):
        read_array(str(tmp_path / "junk.nc"))


def test_a_network_sees_the_box_mapped_onto_minus_one_one():
    from nir.fields import EncodedMLP, Siren

    box = [[-90.0, 90.0], [0.0, 360.0]]
    x = torch.rand(64, 2) * torch.tensor([180.0, 360.0]) + torch.tensor([-90.0, 0.0])
    unit = (x - torch.tensor([0.0, 180.0])) / torch.tensor([90.0, 180.0])
    for make in (
        lambda b: Siren(2, 1, hidden_dim=16, num_layers=1, bounds=b),
        lambda b: EncodedMLP(
            2, 1, {"otype": "nir.fields.encodings.FourierEncoding", "num_features": 8}, 16, 1, bounds=b
        ),
    ):
        torch.manual_seed(0)
        on_box = make(box)
        torch.manual_seed(0)
        plain = make(None)
        assert torch.allclose(on_box(x), plain(unit), atol=1e-5)
        assert set(on_box.state_dict()) == set(plain.state_dict())  # the map is rebuilt from the spec, not stored
        torch.manual_seed(0)
        assert torch.equal(make([[-1.0, 1.0]] * 2)(unit), plain(unit))  # [-1, 1]: no arithmetic at all


def test_a_cache_full_of_masked_blocks_reads_on_instead_of_failing(tmp_path):
    """A contiguous mask larger than the cache (land, a detector's dead region): the block cache
    loads blocks until it holds valid samples, and still draws only those."""
    v = np.exp(np.random.default_rng(5).normal(size=(64, 32))).astype(np.float32)
    v[:56] = np.nan  # seven eighths of the rows, contiguous
    np.save(tmp_path / "land.npy", v)
    s = read_array(str(tmp_path / "land.npy"))
    for sampling in (None, Decades()):
        data = TrainingData(s, Identity(), MSE(), batch_size=64, cache_mb=0.001, sampling=sampling)
        data.to(torch.device("cpu"))
        assert data.streaming and data._cache.slots * data._cache.block < 56 * 32  # the cache fits inside the mask
        idx = torch.cat([data.next_batch()[0] for _ in range(30)])
        assert idx.min() >= 56 * 32 and not np.isnan(v.reshape(-1)[idx.numpy()]).any()


# ----------------------------------------------------------------------------- files as they come (issue 33)


def _monthly() -> xr.Dataset:
    """Monthly means: a time axis of 28-31-day steps (not uniform), 3 decades of values."""
    rng = np.random.default_rng(7)
    time = np.array([np.datetime64(f"2001-{m:02d}-01") for m in range(1, 13)], dtype="datetime64[ns]")
    v = np.exp(rng.normal(0.0, 1.5, (12, 6, 8))).astype(np.float32)
    return xr.Dataset({"pr": (("time", "lat", "lon"), v)}, coords={"time": time, "lat": np.linspace(-50, 50, 6), "lon": np.arange(8.0)})  # fmt: skip


def _gaussian_lats() -> xr.Dataset:
    """Gaussian latitudes (the roots of a Legendre polynomial: not uniform), descending."""
    lat = np.degrees(np.arcsin(np.polynomial.legendre.leggauss(16)[0]))[::-1].copy()
    v = np.exp(np.random.default_rng(8).normal(0.0, 1.5, (16, 12))).astype(np.float32)
    return xr.Dataset({"q": (("lat", "lon"), v)}, coords={"lat": ("lat", lat, {"units": "degrees_north"}), "lon": np.arange(12.0) * 30})  # fmt: skip


def _packed() -> xr.Dataset:
    """time and depth of length 1, int16 packed with scale_factor / add_offset and a land mask
    as the fill value (as ocean products ship)."""
    v = np.exp(np.random.default_rng(9).normal(0.0, 1.0, (1, 1, 10, 14))).astype(np.float32)
    v[0, 0, 2:4, 3:7] = np.nan  # land
    ds = xr.Dataset(
        {"chl": (("time", "depth", "lat", "lon"), v, {"units": "mg m-3"})},
        coords={"time": [np.datetime64("2010-06-01", "ns")], "depth": ("depth", [5.0], {"units": "m"}),
                "lat": np.linspace(10, 19, 10), "lon": np.linspace(100, 113, 14)},
    )  # fmt: skip
    ds["chl"].encoding.update(dtype="int16", scale_factor=0.001, add_offset=10.0, _FillValue=np.int16(-32768))
    return ds


def _undecodable(path):
    """A climatology whose time units xarray cannot decode ('hour since 0000-01-01')."""
    import netCDF4

    with netCDF4.Dataset(path, "w") as f:
        f.createDimension("time", 4)
        f.createDimension("x", 9)
        t = f.createVariable("time", "f8", ("time",))
        t.units, t[:] = "hour since 0000-01-01", np.array([0.0, 6.0, 12.0, 18.0])
        v = f.createVariable("u", "f4", ("time", "x"))
        v[:] = np.exp(np.random.default_rng(10).normal(0.0, 1.5, (4, 9)))
    return path


@pytest.mark.parametrize("case", ["monthly", "gaussian", "packed", "undecodable"])
def test_files_as_they_come_train_and_give_their_coordinates_back(case, tmp_path, capsys):
    import nir

    p = tmp_path / f"{case}.nc"
    if case == "undecodable":
        _undecodable(p)
        ref = xr.open_dataset(p, decode_times=False)
    else:
        ({"monthly": _monthly, "gaussian": _gaussian_lats, "packed": _packed}[case]()).to_netcdf(p)
        ref = xr.open_dataset(p)
    (name,) = list(ref.data_vars)
    da = ref[name]
    s = read_array(str(p))
    if case == "undecodable":
        assert "cannot decode its times" in capsys.readouterr().out
    if case == "packed":  # unpacked as xarray does; the size-1 dims are dropped from the box
        assert s.shape == (10, 14) and s.missing == 8 and s.read(0, 1).dtype == torch.float32
        np.testing.assert_allclose(s.read(0, s.numel)[:, 0].numpy(), da.values[0, 0].reshape(-1), rtol=1e-6)
    # each sample sits at its coordinate: the grid's positions are the file's values (ascending)
    xs = s.grid().coords(torch.arange(s.numel)).double().numpy()
    for k, dim in enumerate(d for d in da.dims if da.sizes[d] > 1):
        if dim not in da.coords:  # no coordinate: nir's [-1, 1]
            continue
        c = np.asarray(da[dim].values)
        c = (c - c[0]) / np.timedelta64(1, "D") if np.issubdtype(c.dtype, np.datetime64) else c.astype(float)
        np.testing.assert_allclose(np.unique(xs[:, k]), np.sort(c), rtol=1e-6, atol=1e-5)
    run = tmp_path / "run"
    m = train(make_cfg(["data=array", f"data.path={p}", "trainer.max_steps=10", "trainer.val_check_interval=10",
                        "trainer.enable_progress_bar=false", "log.images=false", "trainer.precision=32"]), run)  # fmt: skip
    valid = int(np.isfinite(da.values).sum())
    assert sum(row["count"] for row in m["magnitude_bins"]) == valid and m["masked_samples"] == da.size - valid
    back = nir.load_field(run).to_xarray()
    assert back.dims == da.dims and back.shape == da.shape
    for dim in da.dims:  # the file's own coordinate values, in its order
        if np.issubdtype(da[dim].dtype, np.datetime64):
            np.testing.assert_array_equal(
                back[dim].values.astype("datetime64[s]"), da[dim].values.astype("datetime64[s]")
            )
        else:
            np.testing.assert_allclose(back[dim].values, da[dim].values, rtol=1e-6)
    uniform = nir.load_field(run).to_xarray(**{da.dims[-1]: 5})  # a uniform query grid still works
    assert uniform.sizes[da.dims[-1]] == 5
