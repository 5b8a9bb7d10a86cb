"""nir where scientists keep their data (issue 36, docs/ecosystem.md): the numcodecs codec, the
Zarr 3 codec, the xarray backend for .nir files and chunk-parallel nir-compress on Dask."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import nir
from nir.errors import NirError
from nir.interop import chunks
from nir.interop.chunks import Nir, decode_chunk, encode_chunk

ROOT = Path(__file__).resolve().parent.parent
STEPS = 25  # enough for a field under a bound: the residual keeps the promise whatever the network


def long_tailed(shape, seed=0, dtype=np.float32):
    """A smooth positive field over three decades, with a spike and a few exact zeros."""
    rng = np.random.default_rng(seed)
    axes = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    v = np.exp(3 * np.sin(sum((k + 1) * a for k, a in enumerate(axes)))) * 0.05
    v = v * (1 + 0.02 * rng.standard_normal(shape))
    flat = v.reshape(-1)
    flat[rng.integers(0, flat.size)] = 300.0
    flat[rng.integers(0, flat.size, 3)] = 0.0
    return v.astype(dtype)


def within(back, y, rel=None, abs_=None, floor=0.0):
    """Every kept sample within the bound, checked here from the definition (not the codec's)."""
    back, y = back.astype(np.float64), y.astype(np.float64)
    kept = ~np.isnan(y)
    assert np.array_equal(np.isnan(back), ~kept), "NaN moved"
    allowed = abs_ if abs_ is not None else rel * np.maximum(np.abs(y[kept]), floor)
    return np.abs(back[kept] - y[kept]) <= allowed


def floor_of(data: bytes) -> float:
    from nir.codec import bound, container

    c = container.read(data, "a test chunk")
    return bound.decode(c.residual, int(np.prod(c.spec["shape"]))).bound.floor


# ----------------------------------------------------------------------------- registration
def test_the_entry_points_resolve_and_import_nir_loads_none_of_the_stack():
    import numcodecs
    import xarray as xr
    from zarr.registry import get_codec_class

    from nir.interop.zarr3 import NirZarr

    codec = numcodecs.get_codec({"id": "nir", "rel": 0.01, "steps": 5})
    assert isinstance(codec, Nir) and codec.rel == 0.01 and codec.steps == 5
    assert get_codec_class("nir") is NirZarr
    engine = xr.backends.list_engines()["nir"]
    assert engine.guess_can_open("field.nir") and not engine.guess_can_open("field.nc")
    code = (
        "import sys, nir, nir.codec, nir.interop\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'numcodecs', 'zarr', 'dask', 'distributed', 'xarray'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
    import nir.interop

    assert nir.interop.Nir is Nir and nir.interop.NirZarr is NirZarr


def test_the_configuration_round_trips():
    import numcodecs

    from nir.interop.zarr3 import NirZarr

    for config in ({"id": "nir", "rel": 0.01}, {"id": "nir", "abs": 0.5, "ratio": 40.0, "preset": "siren", "steps": 9}):
        codec = numcodecs.get_codec(dict(config))
        assert codec.get_config() == {k: (float(v) if k in ("rel", "abs", "ratio") else v) for k, v in config.items()}
        assert Nir.from_config(codec.get_config()).get_config() == codec.get_config()
    z = NirZarr(rel=0.02, floor=0.001)
    assert z.to_dict() == {"name": "nir", "configuration": {"rel": 0.02, "floor": 0.001}}
    assert NirZarr.from_dict(z.to_dict()) == z and z.codec.get_config() == {"id": "nir", "rel": 0.02, "floor": 0.001}


@pytest.mark.parametrize(
    "kwargs, says",
    [
        ({"rel": 0.01, "abs": 1.0}, "rel or abs, not both"),
        ({}, "give a bound"),
        ({"rel": 1.5}, "rel must be < 1"),
        ({"rel": -0.1}, "rel must be a number > 0"),
        ({"abs": float("nan")}, "abs must be a number > 0"),
        ({"ratio": "ten"}, "ratio must be a number > 0"),
        ({"abs": 1.0, "floor": 0.1}, "floor applies to rel only"),
        ({"rel": 0.01, "steps": 0}, "steps must be an integer >= 1"),
        ({"rel": 0.01, "level": 3}, "unknown argument(s) level"),
    ],
)
def test_bad_codec_arguments_are_one_line_each(kwargs, says):
    import numcodecs

    with pytest.raises(NirError) as e:
        numcodecs.get_codec({"id": "nir", **kwargs})
    assert says in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- encode / decode
@pytest.mark.parametrize(
    "shape, dtype, bound",
    [
        ((300,), np.float32, {"rel": 0.01}),
        ((18, 20), np.float64, {"rel": 0.05}),
        ((8, 9, 10), np.float32, {"abs": 0.02}),
        ((4, 5, 6, 7), np.float32, {"rel": 0.01}),
    ],
)
def test_a_chunk_decodes_within_its_bound_at_every_sample_with_its_nan_kept(shape, dtype, bound):
    x = long_tailed(shape, seed=len(shape), dtype=dtype)
    x.reshape(-1)[[1, 7, 11]] = np.nan
    data, report = encode_chunk(x, Nir(**bound, steps=STEPS))
    assert data[:4] == b"NIRf" and report.lossless is None and len(data) == report.nbytes
    back = decode_chunk(data)
    assert back.shape == x.shape and back.dtype == x.dtype
    floor = floor_of(data) if "rel" in bound else 0.0
    ok = within(back, x, bound.get("rel"), bound.get("abs"), floor)
    assert ok.all(), f"{(~ok).sum()} samples over the bound"
    assert 0 < report.worst <= 1


def test_encoding_is_deterministic_and_decode_fills_out():
    x = long_tailed((16, 12), seed=3)
    codec = Nir(rel=0.01, steps=STEPS)
    a, b = codec.encode(x), codec.encode(x.copy())
    assert a == b
    out = np.zeros((16, 12), np.float64)
    assert codec.decode(a, out=out) is out
    assert np.array_equal(out, decode_chunk(a).astype(np.float64))


def test_a_budget_without_a_bound_keeps_the_missing_samples_missing():
    x = long_tailed((24, 20), seed=4)
    x[:3, :5] = np.nan
    data, report = encode_chunk(x, Nir(ratio=3, steps=STEPS))
    back = decode_chunk(data)
    assert report.lossless is None and np.array_equal(np.isnan(back), np.isnan(x))
    assert report.worst == pytest.approx(np.nanmax(np.abs(back.astype(np.float64) - x)))


def test_a_chunk_missing_everywhere_is_stored_as_such_without_a_warning():
    x = np.full((5, 6), np.nan, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data, report = encode_chunk(x, Nir(rel=0.01))
    assert report.lossless == "missing everywhere" and len(data) < 40
    assert np.isnan(decode_chunk(data)).all() and decode_chunk(data).shape == (5, 6)


def test_a_chunk_whose_training_raises_is_retried_once_then_kept_exactly(monkeypatch):
    calls = []

    def broken(arr, codec):
        calls.append(arr.shape)
        raise RuntimeError("the optimizer diverged\nsecond line")

    monkeypatch.setattr(chunks, "_train", broken)
    x = long_tailed((6, 7), seed=5)
    x[0, 0] = np.nan
    with pytest.warns(
        RuntimeWarning,
        match=r"chunk \(1, 2\) stored losslessly \(zstd\): training failed: RuntimeError: the optimizer diverged$",
    ):
        data, report = encode_chunk(x, Nir(rel=0.01), name="chunk (1, 2)")
    assert len(calls) == 2 and report.lossless.startswith("training failed")
    assert np.array_equal(decode_chunk(data), x, equal_nan=True)


def test_a_chunk_that_misses_its_check_is_kept_exactly(monkeypatch):
    """encode checks what decode gives: a decode that answers 2 % off fails a 1 % bound."""
    real = chunks.decode_chunk
    monkeypatch.setattr(chunks, "decode_chunk", lambda data: real(data) * (1.02 if data[:4] == b"NIRf" else 1))
    x = long_tailed((8, 9), seed=11)
    with pytest.warns(RuntimeWarning, match="its decoded values missed the bound"):
        data, report = encode_chunk(x, Nir(rel=0.01, steps=STEPS), name="chunk (3,)")
    assert data[:4] == b"NIRz" and np.array_equal(real(data), x)


@pytest.mark.parametrize(
    "arr, says",
    [
        (np.arange(12, dtype=np.int32).reshape(3, 4), "has dtype int32"),
        (np.ones((2, 2, 2, 2, 2), np.float32), "has 5 axes"),
        (np.array([1.0, np.inf, 2.0], np.float32), "has Inf values"),
    ],
)
def test_a_chunk_nir_cannot_code_is_one_line(arr, says):
    with pytest.raises(NirError) as e:
        encode_chunk(arr, Nir(rel=0.01), name="chunk (0,)")
    assert says in str(e.value) and "chunk (0,)" in str(e.value) and "\n" not in str(e.value)


def test_a_foreign_or_damaged_chunk_is_one_line():
    lossless = chunks._lossless(np.arange(10, dtype=np.float32))
    x = long_tailed((10, 12), seed=6)
    field = Nir(rel=0.05, steps=STEPS).encode(x)
    damaged = bytearray(field)
    damaged[len(damaged) // 2] ^= 0xFF
    cases = {
        b"\x89PNG\r\n\x1a\n" + bytes(20): "not a nir chunk",
        lossless[:-3]: "lossless nir chunk is damaged",
        bytes(damaged): "nir chunk",
    }
    for data, says in cases.items():
        with pytest.raises(NirError) as e:
            decode_chunk(data)
        assert says in str(e.value) and "\n" not in str(e.value), str(e.value)


# ----------------------------------------------------------------------------- Zarr 3
def test_a_zarr3_array_and_an_xarray_store_written_and_read_through_the_codec(tmp_path):
    import xarray as xr
    import zarr

    from nir.interop.zarr3 import NirZarr

    x = long_tailed((20, 16), seed=7)
    z = zarr.create_array(store=tmp_path / "a.zarr", shape=x.shape, chunks=(10, 16), dtype="float32",
                          serializer=NirZarr(rel=0.01, steps=STEPS), compressors=None)  # fmt: skip
    z[:] = x
    back = zarr.open_array(tmp_path / "a.zarr", mode="r")
    meta = json.loads((tmp_path / "a.zarr" / "zarr.json").read_text())
    assert meta["codecs"] == [{"name": "nir", "configuration": {"rel": 0.01, "steps": STEPS}}]
    floor = floor_of((tmp_path / "a.zarr" / "c" / "0" / "0").read_bytes())
    assert within(back[:], x, rel=0.01, floor=floor).all()
    ds = xr.Dataset({"v": (("y", "x"), x, {"units": "K"})}, coords={"y": np.arange(20.0)})
    encoding = {"v": {"serializer": NirZarr(abs=0.05, steps=STEPS), "compressors": None, "chunks": (20, 8)}}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*onsolidated metadata.*")
        ds.to_zarr(tmp_path / "b.zarr", encoding=encoding, zarr_format=3)
        read = xr.open_zarr(tmp_path / "b.zarr")
    assert read.v.attrs["units"] == "K" and within(read.v.values, x, abs_=0.05).all()


def test_a_zarr2_store_uses_the_numcodecs_codec_and_reads_back_through_its_entry_point(tmp_path):
    import zarr

    x = long_tailed((14, 12), seed=12)
    z = zarr.create_array(store=tmp_path / "v2.zarr", shape=x.shape, chunks=(14, 6), dtype="float32",
                          zarr_format=2, compressors=Nir(rel=0.02, steps=STEPS), fill_value=np.nan)  # fmt: skip
    z[:] = x
    meta = json.loads((tmp_path / "v2.zarr" / ".zarray").read_text())
    assert meta["compressor"] == {"id": "nir", "rel": 0.02, "steps": STEPS}  # found again by numcodecs.get_codec
    back = zarr.open_array(tmp_path / "v2.zarr", mode="r")[:]
    for j in (0, 1):  # each chunk under its own floor (a zero may use all of eps * floor)
        floor = floor_of((tmp_path / "v2.zarr" / f"0.{j}").read_bytes())
        part = np.s_[:, 6 * j : 6 * j + 6]
        assert within(back[part], x[part], rel=0.02, floor=floor).all()


def test_a_part_of_a_zarr_chunk_evaluates_only_its_samples_within_the_bound(tmp_path, monkeypatch):
    import zarr

    from nir.interop.zarr3 import NirZarr
    from nir.reuse.field import Field

    x = long_tailed((12, 10, 8), seed=10)
    x[0, 0, :3] = np.nan
    z = zarr.create_array(store=tmp_path / "p.zarr", shape=x.shape, chunks=(12, 10, 8), dtype="float32",
                          serializer=NirZarr(rel=0.01, steps=STEPS), compressors=None, fill_value=np.nan)  # fmt: skip
    z[:] = x
    whole = zarr.open_array(tmp_path / "p.zarr", mode="r")[:]
    floor = floor_of((tmp_path / "p.zarr" / "c" / "0" / "0" / "0").read_bytes())
    evaluated = []
    forward = Field.forward
    monkeypatch.setattr(Field, "forward", lambda self, coords: evaluated.append(len(coords)) or forward(self, coords))
    arr = zarr.open_array(tmp_path / "p.zarr", mode="r")
    window = arr[0:3, 2:6, 1:4]
    # the network on 36 points rounds as on the whole chunk to float32's last digit (a batch's own
    # summation order): the bound's 1 % margin absorbs that (docs/ecosystem.md)
    assert sum(evaluated) == 3 * 4 * 3 and np.allclose(window, whole[0:3, 2:6, 1:4], rtol=1e-6, atol=0, equal_nan=True)
    assert within(window, x[0:3, 2:6, 1:4], rel=0.01, floor=floor).all()
    evaluated.clear()
    picked = arr.oindex[[0, 5, 11], :, 2]
    points = arr.vindex[[0, 4, 11], [0, 9, 3], [0, 1, 7]]
    assert sum(evaluated) == 30 + 3 and np.allclose(picked, whole[[0, 5, 11], :, 2], rtol=1e-6, atol=0, equal_nan=True)
    assert np.allclose(points, whole[[0, 4, 11], [0, 9, 3], [0, 1, 7]], rtol=1e-6, atol=0, equal_nan=True)
    assert np.isnan(points[0]) and within(points, x[[0, 4, 11], [0, 9, 3], [0, 1, 7]], rel=0.01, floor=floor).all()


# ----------------------------------------------------------------------------- the xarray backend
@pytest.fixture(scope="module")
def nc_field(tmp_path_factory):
    """A NetCDF variable (a size-1 time, a descending latitude, attributes) and its bounded .nir."""
    import xarray as xr

    from nir.interop.compress import compress

    tmp = tmp_path_factory.mktemp("backend")
    v = long_tailed((1, 20, 24), seed=8)
    ds = xr.Dataset(
        {"t2m": (("time", "lat", "lon"), v, {"units": "K", "long_name": "air temperature"})},
        coords={
            "time": np.array(["2020-01-01"], dtype="datetime64[ns]"),
            "lat": ("lat", np.linspace(80, -80, 20), {"units": "degrees_north"}),
            "lon": np.arange(0, 360, 15.0),
        },
    )
    ds.to_netcdf(tmp / "a.nc")
    compress(tmp / "a.nc", tmp / "a.nir", rel=0.01, steps=STEPS, quiet=True)
    return ds, tmp / "a.nir"


def test_open_dataset_gives_the_sources_dims_coordinates_and_attributes(nc_field):
    import xarray as xr

    from nir.reuse.field import load_field

    ds, path = nc_field
    opened = xr.open_dataset(path)  # no engine=: the suffix is recognised
    assert list(opened.data_vars) == ["t2m"] and opened.t2m.dims == ("time", "lat", "lon")
    assert np.array_equal(opened.time.values, ds.time.values)
    for name in ("lat", "lon"):  # cell centres of the stored box: the file's values to rounding
        np.testing.assert_allclose(opened[name].values, ds[name].values, rtol=0, atol=1e-9)
    assert opened.lat.attrs["units"] == "degrees_north"
    assert opened.t2m.attrs["units"] == "K" and opened.t2m.attrs["long_name"] == "air temperature"
    assert opened.t2m.dtype == np.float32
    whole = opened.t2m.values
    assert np.array_equal(whole, load_field(path).to_xarray().values)
    with pytest.raises(NirError, match="by its path"):
        xr.open_dataset(open(path, "rb"), engine="nir")  # noqa: SIM115 - a file object is what is refused


def test_a_selection_evaluates_only_the_selected_points_within_the_bound(nc_field, monkeypatch):
    import xarray as xr

    from nir.reuse.field import Field

    ds, path = nc_field
    opened = xr.open_dataset(path)
    evaluated = []
    forward = Field.forward
    monkeypatch.setattr(Field, "forward", lambda self, coords: evaluated.append(len(coords)) or forward(self, coords))
    part = opened.t2m.sel(lat=slice(40, -10)).isel(time=0, lon=[1, 3, 5])
    got = part.values
    want = ds.t2m.sel(lat=slice(40, -10)).isel(time=0, lon=[1, 3, 5]).values
    assert got.shape == want.shape == (6, 3) and sum(evaluated) == 18
    floor = floor_of(path.read_bytes())
    assert within(got, want, rel=0.01, floor=floor).all()
    evaluated.clear()
    assert float(opened.t2m.isel(time=0, lat=19, lon=23)) == pytest.approx(float(opened.t2m.values[0, 19, 23]))
    assert evaluated == [1, 480]


def test_open_dataset_of_an_image_field_has_a_channel_dimension(tmp_path, tiny_png):
    import xarray as xr

    import nir

    field, _ = nir.fit(str(tiny_png), run_dir=tmp_path / "run", steps=3, model="siren", model__hidden_dim=8,
                       log__images=False, trainer__enable_progress_bar=False)  # fmt: skip
    opened = xr.open_dataset(tmp_path / "run" / "field.nir")
    assert list(opened.data_vars) == ["tiny"]  # the signal's name
    assert opened.tiny.dims == ("dim_0", "dim_1", "channel") and opened.tiny.shape == (32, 40, 3)
    assert np.allclose(opened.tiny.isel(dim_0=5, channel=2).values, field.sample().numpy()[5, :, 2], atol=1e-6)


# ----------------------------------------------------------------------------- nir-compress on a store
@pytest.fixture
def store(tmp_path):
    """A Zarr store of two float variables, 30 x 26 in 16 x 16 chunks (edge chunks are partial),
    with missing values, coordinates and attributes."""
    import xarray as xr

    v = long_tailed((30, 26), seed=9)
    v[2:4, 20:23] = np.nan
    ds = xr.Dataset(
        {"v": (("y", "x"), v, {"units": "mm/h"}), "w": (("y", "x"), v * 2)},
        coords={"y": np.arange(30.0) * 0.5, "x": np.linspace(-1, 1, 26)},
        attrs={"title": "test store"},
    )
    ds.to_zarr(
        tmp_path / "in.zarr",
        encoding={"v": {"chunks": (16, 16)}, "w": {"chunks": (16, 16)}},
        zarr_format=3,
        consolidated=False,
    )
    return ds, tmp_path / "in.zarr"


def test_nir_compress_of_a_store_on_two_workers_reads_back_within_the_bound(store, tmp_path):
    import xarray as xr

    ds, path = store
    out = tmp_path / "out.zarr"
    cmd = [sys.executable, "-m", "nir.cli.compress", str(path), str(out), "--rel", "0.01", "--floor", "0.001",
           "--var", "v", "--steps", str(STEPS), "--workers", "2"]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    line = run.stdout.strip().splitlines()[-1]
    assert line.startswith(f"{out}: v, 4 chunks,") and "max relative error 0.00" in line and "chunks/s" in line
    back = xr.open_zarr(out)
    assert list(back.data_vars) == ["v"] and back.v.attrs["units"] == "mm/h" and back.attrs["title"] == "test store"
    assert np.array_equal(back.y.values, ds.y.values) and back.v.encoding["chunks"] == (16, 16)
    assert within(back.v.values, ds.v.values, rel=0.01, floor=0.001).all()
    assert not (tmp_path / "out.zarr.partial").exists()


def test_a_store_chunk_whose_training_raises_is_written_losslessly_with_its_warning(store, tmp_path, monkeypatch):
    import xarray as xr

    from nir.interop import stores

    ds, path = store
    out = tmp_path / "out.zarr"
    stores._write_metadata(xr, xr.open_zarr(path, consolidated=False), "v", (16, 16), Nir(rel=0.01), out)
    monkeypatch.setattr(chunks, "_train", lambda arr, codec: 1 / 0)
    index, report, messages = stores.compress_chunk(
        (1, 1), str(path), "v", (16, 16), {"id": "nir", "rel": 0.01}, str(out)
    )
    assert index == (1, 1) and report.lossless.startswith("training failed: ZeroDivisionError")
    assert messages == [
        "nir codec: chunk (1, 1) of v stored losslessly (zstd): training failed: ZeroDivisionError: division by zero"
    ]
    back = xr.open_zarr(out, consolidated=False).v.values
    assert np.array_equal(back[16:, 16:], ds.v.values[16:, 16:], equal_nan=True)
    assert np.isnan(back[:16]).all()  # the chunks not written yet read as missing (the fill value)


@pytest.mark.parametrize(
    "args, says",
    [
        (["--rel", "0.01"], "holds v, w; choose one with --var"),
        (["--rel", "0.01", "--var", "q"], "has no variable 'q'"),
        (["--rel", "0.01", "--var", "v", "--chunks", "8,8,8"], "give 2 sizes (y,x)"),
        (["--rel", "0.01", "--var", "v", "--chunks", "z=4"], "'z' is not a dimension"),
        (["--rel", "2", "--var", "v"], "rel must be < 1"),
        (["--rel", "0.01", "--var", "v", "--workers", "0"], "--workers must be >= 1"),
    ],
)
def test_bad_store_arguments_are_one_line_and_write_nothing(store, tmp_path, capsys, args, says):
    from nir.cli.compress import compress_main

    out = tmp_path / "out.zarr"
    with pytest.raises(SystemExit) as e:
        compress_main([str(store[1]), str(out), *args])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and says in err and "\n" not in err, err
    assert not out.exists() and not (tmp_path / "out.zarr.partial").exists()


def test_an_unreachable_scheduler_is_one_line_and_writes_nothing(store, tmp_path, capsys):
    import dask
    import distributed  # noqa: F401 - loads its config first: set() must restore one key, not drop "distributed"

    from nir.cli.compress import compress_main

    out = tmp_path / "out.zarr"
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), pytest.raises(SystemExit) as e:
        compress_main([str(store[1]), str(out), "--rel", "0.01", "--var", "v", "--scheduler", "tcp://127.0.0.1:9"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "cannot reach the Dask scheduler at 'tcp://127.0.0.1:9'" in err and "\n" not in err
    assert not out.exists() and not (tmp_path / "out.zarr.partial").exists()


def test_store_options_with_a_single_field_output_are_one_line(store, tmp_path, capsys):
    from nir.cli.compress import compress_main

    with pytest.raises(SystemExit) as e:
        compress_main([str(store[1]), str(tmp_path / "f.nir"), "--rel", "0.01", "--var", "v", "--workers", "2"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "--workers: for a .zarr output" in err and not (tmp_path / "f.nir").exists()


def test_an_existing_output_store_is_left_alone(store, tmp_path, capsys):
    from nir.cli.compress import compress_main

    out = tmp_path / "out.zarr"
    out.mkdir()
    (out / "keep").write_text("earlier results")
    with pytest.raises(SystemExit):
        compress_main([str(store[1]), str(out), "--rel", "0.01", "--var", "v"])
    assert "exists; remove it or choose another output" in capsys.readouterr().err
    assert (out / "keep").read_text() == "earlier results"


def test_the_codec_composes_its_config_once_per_process_and_gives_nir_fits_bytes(monkeypatch, tmp_path):
    """Issue 46's direct path for a store: chunks after the first are fitted without Hydra's
    composition or the key check again (counted), and a chunk's bytes are those a ``nir.fit``
    run with the same settings writes."""
    import nir.run.config as config
    import nir.run.run as run
    from nir.run.settings import fit_overrides

    run.prepare.cache_clear()
    calls = []
    compose = config.compose_config
    monkeypatch.setattr(run, "compose_config", lambda ov: calls.append(1) or compose(ov))
    rng = np.random.default_rng(2)
    chunks_ = [np.exp(rng.normal(size=(10, 9, 8)) * 2).astype(np.float32) for _ in range(3)]
    codec = Nir(rel=0.01)
    datas = [encode_chunk(x, codec)[0] for x in chunks_]
    assert len(calls) == 1
    np.save(tmp_path / "chunk.npy", chunks_[2])  # the codec's own file name (the spec keeps it)
    with contextlib.redirect_stdout(io.StringIO()):
        nir.fit(str(tmp_path / "chunk.npy"), fit_overrides(True, **codec.settings()), run_dir=tmp_path / "r")
    assert (tmp_path / "r" / "field.nir").read_bytes() == datas[2]
    run.prepare.cache_clear()
