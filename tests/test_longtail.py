"""Long-tailed fields: arrays, generators, transforms, losses, per-magnitude statistics."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

import nir
from nir.data.readers import read_array
from nir.data.synthetic import lognormal3d, peaks1d, sources3d
from nir.errors import NirError
from nir.run.run import train
from nir.training.losses import L1, MSE, Huber, LogHuber, LogMSE, RelL2, RelL2TCNN, check_setup
from nir.training.metrics import GridMetrics, MagnitudeBins, SignalStats, decade_edges
from nir.transforms import Asinh, Identity, Log, SignedLog, Softplus, Standardize, floor_from_data
from tests.conftest import make_cfg

# ----------------------------------------------------------------------------- generators


def _decades(v: torch.Tensor) -> set[int]:
    return set(np.floor(np.log10(v.numpy().ravel())).astype(int).tolist())


def test_peaks1d_spans_six_decades():
    s = peaks1d()
    assert s.shape == (16384,) and s.channels == 1
    assert {-4, -3, -2, -1, 0, 1, 2} <= _decades(s.values)
    assert float(s.values.max()) == pytest.approx(300, rel=0.01)
    assert float(s.values.min()) > 0
    assert s.meta["params"]["seed"] == 0


def test_generators_are_seeded():
    assert torch.equal(peaks1d(n=512, seed=3).values, peaks1d(n=512, seed=3).values)
    assert not torch.equal(peaks1d(n=512, seed=3).values, peaks1d(n=512, seed=4).values)


def test_lognormal3d_spans_at_least_four_decades():
    s = lognormal3d(n=24)
    assert s.shape == (24, 24, 24)
    v = s.values
    assert math.log10(float(v.max()) / float(v.min())) >= 4


def test_sources3d_peaks_of_several_hundred_over_tiny_background():
    s = sources3d(n=32)
    v = s.values
    assert float(v.max()) == pytest.approx(500, rel=0.01)
    assert float(v.median()) < 0.1 and float(v.min()) < 1e-3


def test_nir_synth_writes_npy(tmp_path):
    from nir.cli.synth import main

    out = tmp_path / "p.npy"
    main(["peaks1d", str(out), "n=1024", "seed=2"])
    arr = np.load(out)
    np.testing.assert_array_equal(arr, peaks1d(n=1024, seed=2).values[..., 0].numpy())
    with pytest.raises(SystemExit):
        main(["nope", str(out)])


# ----------------------------------------------------------------------------- transforms


@pytest.mark.parametrize(
    "transform", [Log(), Asinh(), Softplus(), Log(floor=1e-3), Asinh(scale=0.5), SignedLog(), SignedLog(scale=0.5)]
)
def test_transforms_invert_exactly_on_the_data(transform):
    y = peaks1d(n=4096).flat()
    transform.fit(y)
    back = transform.inverse(transform(y))
    rel = ((back - y).abs() / y.abs()).max()
    assert rel < 2e-5, float(rel)


@pytest.mark.parametrize("cls", [Asinh, SignedLog])
def test_signed_transforms_round_trip_at_zero_the_floor_and_far_below_zero(cls):
    """Fitted on 80 % zeros plus a sub-floor negative noise and 5 decades: zero maps back to
    zero exactly, the floor and -1e4 floors within fp32 rounding, and the map is linear (odd)
    near zero, so noise below zero is fitted at the floor's scale."""
    y = torch.from_numpy(_zeros80()).float()[:, None]
    y[1::5] = -1e-5
    t = cls().fit(y)
    f = float(t.scale)
    assert f == pytest.approx(floor_from_data(y, 1e-7))
    probe = torch.tensor([[0.0], [f], [-f], [-1e4 * f], [1e-3 * f], [-1e-3 * f]])
    back = t.inverse(t(probe))
    assert float(back[0]) == 0.0
    torch.testing.assert_close(back, probe, rtol=2e-5, atol=1e-6 * f)
    u = t(probe) * t.sigma + t.mu  # before standardising: odd in y, slope 1/scale at zero
    assert float(u[1] + u[2]) == pytest.approx(0.0, abs=1e-6)
    assert float(u[4]) == pytest.approx(1e-3, rel=1e-2)


def test_identity_and_standardize_invert():
    y = torch.randn(100, 3) * 5 + 2
    torch.testing.assert_close(Identity().fit(y).inverse(Identity()(y)), y)
    s = Standardize().fit(y)
    torch.testing.assert_close(s.inverse(s(y)), y, atol=1e-5, rtol=1e-5)
    assert s(y).mean(0).abs().max() < 1e-5


def test_transform_state_round_trips_through_state_dict():
    y = peaks1d(n=1024).flat()
    a = Log().fit(y)
    b = Log()
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b(y), a(y))


def test_log_transform_refuses_negative_values():
    with pytest.raises(NirError, match="transform log needs values >= 0"):
        Log().fit(torch.tensor([[1.0], [-0.5]]))


@pytest.mark.parametrize("bad", [0.0, -1e-3])
def test_non_positive_floor_refused(bad):
    with pytest.raises(NirError, match="transform.floor must be a positive number"):
        Log(floor=bad)
    with pytest.raises(NirError, match="loss.floor must be a positive number"):
        RelL2(floor=bad)


def test_floor_rule():
    y = torch.cat([torch.zeros(10), torch.logspace(-4, 2, 1000)])
    f = floor_from_data(y, 1e-7)
    # the docs' rule by hand: 0.1 x the 1st percentile of the non-zero values, the 10th of 1000 log-spaced ones
    assert f == pytest.approx(0.1 * 10 ** (-4 + 9 * 6 / 999), rel=1e-5)
    # the relative minimum wins when the smallest values are far below the peak
    tiny = torch.cat([torch.full((1000,), 1e-12), torch.tensor([100.0])])
    assert floor_from_data(tiny, 1e-5) == pytest.approx(1e-3)


# ----------------------------------------------------------------------------- losses

EXTREMES = torch.tensor([[0.0, 0.0], [0.0, 1.0], [-3.0, 0.0], [-3.0, 1e4], [1e4, 1e4], [0.5, 1e-4]])


def _fitted(loss):
    return loss.fit(torch.tensor([[0.0], [1e-4], [1.0], [1e4]]))


@pytest.mark.parametrize("loss", [MSE(), L1(), Huber(), LogMSE(), LogHuber(), RelL2(), RelL2TCNN()])
@pytest.mark.parametrize("autocast", [False, True])
def test_losses_finite_at_extremes(loss, autocast):
    loss = _fitted(loss)
    p, y = EXTREMES[:, :1].clone().requires_grad_(True), EXTREMES[:, 1:]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = loss(p.to(torch.bfloat16) if autocast else p, y)
    assert out.dtype == torch.float32
    assert torch.isfinite(out)
    out.backward()
    assert torch.isfinite(p.grad).all()


def test_rel_l2_uses_stop_gradient_denominator():
    loss = RelL2(floor=0.1)
    p = torch.tensor([2.0], requires_grad=True)
    loss(p, torch.tensor([1.0])).backward()
    # d/dp ((p - y)/(sg(p) + f))^2 = 2 (p - y) / (p + f)^2 with the denominator held fixed
    assert float(p.grad) == pytest.approx(2 * 1.0 / 2.1**2, rel=1e-6)


def test_rel_l2_tcnn_parity_formula():
    p, y = torch.tensor([0.3, 2.0]), torch.tensor([0.1, 1.0])
    expect = ((p - y) ** 2 / (p**2 + 0.01)).mean()
    torch.testing.assert_close(RelL2TCNN()(p, y), expect)


@pytest.mark.parametrize(
    "loss,transform,match",
    [
        (LogMSE(), Identity(), "needs transform=log"),
        (LogHuber(), Asinh(), "needs transform=log"),
        (RelL2(floor=0.1), Identity(), "needs a non-negative output"),
        (RelL2TCNN(), Standardize(), "needs a non-negative output"),
        (RelL2(floor=1e-20), Softplus(), "underflows"),
    ],
)
def test_blow_up_combinations_refused(loss, transform, match):
    with pytest.raises(NirError, match=match):
        check_setup(loss, transform, "32")


def test_safe_combinations_accepted():
    check_setup(LogMSE(), Log(), "bf16-mixed")
    check_setup(RelL2(floor=1e-3), Softplus(), "16-mixed")
    check_setup(MSE(), Identity(), "32")


# ----------------------------------------------------------------------------- per-magnitude bins


def test_decade_edges():
    assert decade_edges(3e-5, 300) == [3e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0]
    assert decade_edges(1e-3, 100.0) == [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0]


def test_bin_statistics_match_hand_computation():
    """Bins [<1e-3], [1e-3, 1e-2), [1e-2, 1e-1), [1e-1, 1]; relative error against max(|y|, floor)."""
    y = torch.tensor([0.0, 5e-4, 2e-3, 4e-3, 8e-3, 0.02, 0.05, 0.5])
    rel = torch.tensor([0.0, 0.0, 0.01, 0.02, 0.04, 0.1, 0.3, 0.001])
    p = y * (1 + rel)
    p[0] = 1e-3  # |p - 0| / floor = 1
    m = MagnitudeBins(floor=1e-3, top=0.5)
    # feed in two chunks: the state must merge exactly
    m.update(p[:4], y[:4])
    m.update(p[4:], y[4:])
    t = m.table()
    assert [r["bin"] for r in t] == ["<1e-03", "1e-03..1e-02", "1e-02..1e-01", "1e-01..1e+00"]
    assert [r["count"] for r in t] == [2, 3, 2, 1]
    assert t[1]["share_points"] == pytest.approx(3 / 8)
    assert t[1]["share_mass"] == pytest.approx(float(y[2:5].sum() / y.sum()), rel=1e-6)
    assert t[1]["median"] == pytest.approx(0.02, rel=0.025)  # 0.01-decade histogram resolution
    assert t[1]["max"] == pytest.approx(0.04, rel=1e-5)
    assert t[0]["max"] == pytest.approx(1.0, rel=1e-5)
    assert t[2]["max"] == pytest.approx(0.3, rel=1e-5)
    bias = np.mean(np.log10(p[5:7].numpy() + 1e-3) - np.log10(y[5:7].numpy() + 1e-3))
    assert t[2]["bias_log10"] == pytest.approx(float(bias), abs=1e-6)


def test_bin_quantiles_on_many_samples():
    torch.manual_seed(0)
    y = torch.full((20000,), 0.5)
    rel = 10 ** torch.empty(20000).uniform_(-4, -1)  # log-uniform 1e-4..1e-1
    m = MagnitudeBins(floor=1e-3, top=1.0)
    m.update(y * (1 + rel), y)
    row = next(r for r in m.table() if r["bin"] == "1e-01..1e+00")
    assert row["count"] == 20000
    assert row["median"] == pytest.approx(float(rel.median()), rel=0.03)
    assert row["p90"] == pytest.approx(float(rel.quantile(0.9)), rel=0.03)


def test_quantiles_never_exceed_the_bin_maximum():
    """A one-sample bin: its p90 (interpolated in a 0.01-decade bucket) must not pass its max."""
    m = MagnitudeBins(floor=1e-3, top=1.0)
    y = torch.tensor([0.5])
    m.update(y * (1 + 37.72), y)
    row = next(r for r in m.table() if r["count"] == 1)
    assert row["max"] == pytest.approx(37.72, rel=1e-5)
    assert row["median"] <= row["max"] and row["p90"] <= row["max"]


@pytest.mark.parametrize("shape", [(6, 7, 8), (3, 5, 6, 4)])
def test_max_projections_match_numpy_over_chunks(shape):
    """Exact whole-grid projections from flat chunks of any size; a 4-D field: its central time."""
    from nir.training.metrics import MaxProjections

    rng = np.random.default_rng(0)
    values = rng.standard_normal(shape).astype(np.float32)
    flat = torch.from_numpy(values.reshape(-1, 1))
    mip = MaxProjections(shape)
    start = 0
    while start < flat.shape[0]:
        stop = min(flat.shape[0], start + int(rng.integers(1, 50)))
        mip.update(start, stop, flat[start:stop])
        start = stop
    vol = np.abs(values if len(shape) == 3 else values[shape[0] // 2])
    for axis, got in enumerate(mip.compute()):
        np.testing.assert_array_equal(got.numpy(), vol.max(axis=axis))


def test_grid_metrics_psnr_conventions():
    s = peaks1d(n=1024)
    gm = GridMetrics(SignalStats.measure(s))
    y = s.flat()
    gm.update(y * 1.01, y)
    out = gm.compute()
    rng = float(y.max() - y.min())
    mse = float(((y * 0.01) ** 2).mean())
    assert float(out["psnr"]) == pytest.approx(10 * math.log10(rng**2 / mse), abs=1e-3)
    assert float(out["worst_decade_median"]) == pytest.approx(0.01, rel=0.03)


# ----------------------------------------------------------------------------- arrays


@pytest.mark.parametrize("shape", [(50,), (6, 7), (4, 5, 6)])
def test_read_npy_any_dimension(tmp_path, shape):
    a = np.random.default_rng(0).random(shape).astype(np.float32)
    p = tmp_path / "a.npy"
    np.save(p, a)
    s = read_array(str(p))
    assert s.shape == shape and s.channels == 1
    np.testing.assert_array_equal(s.values[..., 0].numpy(), a)


def test_read_npz_key_and_channels(tmp_path):
    a = np.random.default_rng(0).random((3, 8, 9)).astype(np.float32)
    p = tmp_path / "a.npz"
    np.savez(p, other=np.zeros(3), field=a)
    s = read_array(str(p), var="field", channel_axis=0, bounds=[0, 1])
    assert s.shape == (8, 9) and s.channels == 3
    assert s.bounds == ((0.0, 1.0), (0.0, 1.0))
    with pytest.raises(NirError, match="data.var 'values' not in"):
        read_array(str(p))


@pytest.mark.parametrize(
    "array,match,options",
    [
        (np.array([1.0, np.nan, 2.0]), r"contains 1 missing \(NaN\) samples; data.nan=mask", {"nan": "error"}),
        (np.array([np.nan, np.nan]), "every value is missing", {}),
        (np.array([1.0, np.inf, np.nan]), "contains 1 Inf values", {}),
        (np.zeros((0,)), "is empty", {}),
        (np.zeros((2, 2, 2, 2, 2)), "5 grid axes", {}),
        (np.array(3.0), "0 grid axes", {}),
        (np.array(["a", "b"]), "non-numeric dtype", {}),
    ],
)
def test_bad_arrays(tmp_path, array, match, options):
    p = tmp_path / "bad.npy"
    np.save(p, array)
    with pytest.raises(NirError, match=match) as e:
        read_array(str(p), **options)
    assert "bad.npy" in str(e.value)


def test_pickled_npy_refused(tmp_path):
    p = tmp_path / "obj.npy"
    np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(NirError, match="obj.npy"):
        read_array(str(p))


# ----------------------------------------------------------------------------- end to end


def custom_scalars_layout(logdir):
    """The custom-scalars layout written into a run's event files, read back."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.custom_scalar import layout_pb2

    for f in sorted(logdir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(f)).Load():
            for value in event.summary.value:
                if value.tag == "custom_scalars__config__":
                    return layout_pb2.Layout.FromString(value.tensor.string_val[0])
    raise AssertionError(f"no custom-scalars layout in {logdir}")


@pytest.fixture(scope="module")
def peaks_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("peaks") / "run"
    cfg = make_cfg(
        [
            "data=peaks1d",
            "data.n=2048",
            "data.widths=[0.01,0.03]",
            "trainer.max_steps=300",
            "trainer.val_check_interval=150",
            "trainer.enable_progress_bar=false",
            "trainer.precision=32",
            "model=fourier_lt",  # the Fourier MLP this test was tuned with (the preset brings the grid since issue 45)
            "model.encoding.sigma=10",
        ]
    )
    return run, train(cfg, run)


def test_peaks1d_default_setup_fits_every_decade(peaks_run):
    _, m = peaks_run
    rows = [r for r in m["magnitude_bins"] if r["count"] > 0 and r["lo"] > 0]
    assert len(rows) >= 6
    assert m["worst_decade_median"] < 0.1, [(r["bin"], r["median"]) for r in rows]


def test_long_tail_run_records_bins_and_tensorboard(peaks_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, m = peaks_run

    def refuse(token):
        raise ValueError(f"metrics.json is not strict JSON: {token}")

    saved = json.loads((run / "metrics.json").read_text(), parse_constant=refuse)
    empty = [r for r in saved["magnitude_bins"] if r["count"] == 0]
    assert empty, "the fixture must have an empty bin for this check"
    assert all(r["median"] is None and r["max"] is None for r in empty)
    assert saved["magnitude_bins"][0]["bin"].startswith("<")
    assert {"bin", "lo", "hi", "count", "median", "p90", "max", "bias_log10"} <= set(saved["magnitude_bins"][1])
    assert "psnr_log" in saved and "worst_decade_median" in saved
    acc = EventAccumulator(str(run / "tb"), size_guidance={"histograms": 0, "images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert any(t.startswith("magnitude/log10_rel_err/") for t in tags["histograms"])
    assert "magnitude/quantiles" in tags["images"] and "field/reconstruction" in tags["images"]
    assert {"val/psnr", "val/psnr_log", "val/worst_decade_median"} <= set(tags["scalars"])
    assert any(t.startswith("magnitude/median/") for t in tags["scalars"])
    # the custom-scalars charts: every bin's tag must match its own pattern (and no other bin's)
    layout = custom_scalars_layout(run / "tb")
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    binned = sorted(t for t in tags["scalars"] if t.startswith("magnitude/median/"))
    assert any("+" in t for t in binned), "the fixture must have a bin from 1e+00 upward"
    for tag in binned:
        assert [p for p in charts["median"] if re.search(p, tag)] == [f"^{re.escape(tag)}$"], tag
    cfg = (run / "config.yaml").read_text()
    assert "nir.data.synthetic.peaks1d" in cfg and "num_peaks" in cfg


@pytest.mark.parametrize("data", ["lognormal3d", "sources3d"])
def test_3d_presets_train(data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_cfg(
        [
            f"data={data}",
            "data.n=12",
            "trainer.max_steps=20",
            "trainer.val_check_interval=10",
            "trainer.enable_progress_bar=false",
            "batch_size=512",
        ]
    )
    m = train(cfg, tmp_path / "r")
    assert math.isfinite(m["psnr"]) and math.isfinite(m["worst_decade_median"])
    acc = EventAccumulator(str(tmp_path / "r" / "tb"), size_guidance={"images": 0})
    acc.Reload()
    assert "field/reconstruction" in acc.Tags()["images"]
    # five rows (slices, error, and the target's and prediction's projections) of readable panels
    figure = acc.Images("field/reconstruction")[-1]
    assert figure.height > 1.3 * figure.width and figure.width <= 1000, (figure.width, figure.height)  # 3 rows: 0.85


def test_log_loss_on_negative_data_is_a_clear_error(tmp_path):
    p = tmp_path / "neg.npy"
    np.save(p, np.linspace(-1, 1, 64))
    cfg = make_cfg(["data=array", f"data.path={p}", "loss=log_mse", "trainer.max_steps=5"])
    with pytest.raises(NirError, match="transform log needs values >= 0"):
        train(cfg, tmp_path / "r")


def test_refused_combination_from_config(tmp_path):
    cfg = make_cfg(["data=peaks1d", "data.n=256", "loss=log_mse", "transform=identity", "trainer.max_steps=5"])
    with pytest.raises(NirError, match="needs transform=log"):
        train(cfg, tmp_path / "r")


def _zeros80() -> np.ndarray:
    v = np.zeros(4096)
    v[::5] = np.geomspace(1e-3, 100.0, len(v[::5]))  # 80 % exact zeros, 5 decades on the rest
    return v


def _slightly_negative() -> np.ndarray:
    v = np.random.default_rng(0).lognormal(-3.0, 1.5, 1 << 17)  # positive, ~4 decades
    v[::100_000] = -1e-4  # 2 samples of 131,072 (1.5e-5) just below zero: sky-subtraction noise
    return v


def _negative_spikes() -> np.ndarray:
    v = np.geomspace(1e-3, 50.0, 4096)
    v[[100, 2000, 3000]] = -40.0  # a few large negative values
    return v


@pytest.mark.parametrize(
    "values,choice",
    [
        (np.geomspace(1e-4, 10.0, 4096), "log_mse"),  # positive, 5 decades (unchanged)
        (np.linspace(1.0, 5.0, 4096), "mse"),  # positive, < 1 decade (unchanged)
        (np.geomspace(1e-4, 10.0, 4096) - 1e-3, "asinh_mse"),  # crosses zero, 5 decades of |y|
        (_zeros80(), "asinh_mse"),
        (_slightly_negative(), "asinh_mse"),
        (_negative_spikes(), "asinh_mse"),
        (np.random.default_rng(1).normal(0.0, 1.0, 4096), "mse"),  # noise: |y| spans 2.4 decades from its p1
    ],
    ids=["long-tailed", "narrow", "signed", "zeros80", "slightly-negative", "negative-spikes", "gaussian-noise"],
)
def test_loss_auto_decides_from_the_data(values, choice, tmp_path, capsys):
    import yaml

    import nir

    np.save(tmp_path / "f.npy", values.astype(np.float32))
    nir.fit(
        tmp_path / "f.npy", run_dir=tmp_path / "run", steps=2, log__images=False, trainer__enable_progress_bar=False
    )
    (line,) = [l for l in capsys.readouterr().out.splitlines() if l.startswith("loss=auto:")]
    assert f"-> loss={choice}" in line, line
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    expect = {  # sampling=auto follows: decade-balanced batches in a log space
        "log_mse": ("nir.training.losses.LogMSE", "nir.transforms.Log", "nir.data.samplers.Decades"),
        "mse": (
            "nir.training.losses.MSE",
            "nir.transforms.Standardize",
            "nir.data.samplers.Uniform",
        ),  # an array: scaled
        "asinh_mse": ("nir.training.losses.MSE", "nir.transforms.Asinh", "nir.data.samplers.Decades"),
    }
    got = (saved["loss"]["_target_"], saved["transform"]["_target_"], saved["sampling"]["_target_"])
    assert got == expect[choice]


def test_a_transform_on_the_command_line_beats_autos(tmp_path, capsys):
    """loss=auto on signed long-tailed data with transform=slog given: MSE in slog space."""
    import yaml

    import nir

    np.save(tmp_path / "f.npy", (np.geomspace(1e-4, 10.0, 2048) - 1e-3).astype(np.float32))
    nir.fit(tmp_path / "f.npy", ["transform=slog"], run_dir=tmp_path / "run", steps=2, log__images=False)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (saved["loss"]["_target_"], saved["transform"]["_target_"]) == (
        "nir.training.losses.MSE",
        "nir.transforms.SignedLog",
    )
    assert "transform SignedLog as given" in capsys.readouterr().out


def test_loss_on_the_command_line_beats_auto(tmp_path, capfd):
    import nir

    np.save(tmp_path / "f.npy", np.geomspace(1e-4, 10.0, 1024).astype(np.float32))
    nir.fit(tmp_path / "f.npy", ["loss=mse", "sampling=decades"], run_dir=tmp_path / "run", steps=2, log__images=False)
    out = capfd.readouterr()
    assert "loss=auto" not in out.out and "sampling=auto" not in out.out  # auto would say uniform (identity space)
    assert "nir.data.samplers.Decades" in (tmp_path / "run" / "config.yaml").read_text()
    assert "GPU available" not in out.out + out.err and "litlogger" not in out.out + out.err  # nir.fit is quiet too
    assert "nir.training.losses.MSE" in (tmp_path / "run" / "config.yaml").read_text()


# ----------------------------------------------------------------------------- the contract, pinned by literal values


def test_exact_powers_of_ten_open_their_decade_in_the_metric_and_the_sampler():
    """docs/long-tail.md: bin 0 is [0, floor), bin i is [edges[i-1], edges[i]); 0.01 lands in 1e-2..1e-1.
    Expected bins are written out by hand from that rule, not computed by the code under test."""
    from nir.data.samplers import DecadeSampler

    floor, top = 2e-3, 50.0
    edges = decade_edges(floor, top)
    assert edges == [2e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0]
    mags = torch.tensor([0.0, 1e-3, 2e-3, 5e-3, 1e-2, 0.05, 1e-1, 1.0, 9.99, 10.0, 50.0])
    expect = [0, 0, 1, 1, 2, 2, 3, 4, 4, 5, 5]
    assert MagnitudeBins(floor, top).bin_index(mags).tolist() == expect
    sampler = DecadeSampler(mags, edges, batch_size=64, alpha=0.0)
    assert sampler.counts.tolist() == [2, 2, 2, 1, 2, 2]  # how many of `expect` fall in each bin


def test_worst_decade_median_leaves_out_the_values_below_the_floor():
    """A large error below the floor (bin 0) and 1 % errors above it: the worst decade is 1 %."""
    stats = SignalStats(range=100.0, long_tailed=True, floor=1e-3, absmin=1e-5, absmax=100.0)
    gm = GridMetrics(stats)
    below = torch.full((50,), 1e-5)
    above = torch.logspace(-2.9, 1.9, 200)
    target = torch.cat([below, above])
    pred = torch.cat([torch.full((50,), 1.0), above * 1.01])  # relative error 1000 below, 0.01 above
    gm.update(pred[:, None], target[:, None])
    out = gm.compute()
    assert float(gm.bins.compute()["median"][0]) > 100  # bin 0 holds the large error ...
    assert float(out["worst_decade_median"]) == pytest.approx(0.01, rel=0.03)  # ... and is not the worst decade


def test_score_takes_a_field_or_its_grid_values():
    """nir.score: the one scorer (runs, scripts, tests); a field is sampled on the signal's grid."""
    from pathlib import Path

    import nir
    from nir.data.signal import Signal

    field = nir.load_field(Path(__file__).parent / "data" / "legacy" / "fourier_log3d.safetensors")
    pred = field.sample()
    signal = Signal(values=pred * 1.01, bounds=tuple(map(tuple, field.spec["bounds"])), long_tailed=True)
    from nir.run.records import json_safe  # an empty bin's statistics are NaN, which equals nothing

    by_field, by_values = nir.score(field, signal), nir.score(pred[..., 0].numpy(), signal)
    assert json_safe(by_field) == json_safe(by_values)
    assert by_field["worst_decade_median"] == pytest.approx(1 / 1.01 - 1 + 0.02, abs=0.011)  # |p - y| / y = 0.0099
    assert [b["count"] for b in by_field["magnitude_bins"]] and "ssim" not in by_field


def test_masked_lines_project_to_gaps_and_the_error_panel_is_not_floored():
    """A line of masked (NaN) samples projects to NaN (a gap in the figure, not the floor's
    colour); the relative-error panel shows errors below the metric floor as they are (flooring
    it like the value panels painted a field with a high floor in one colour)."""
    from nir.figures import _slices_figure
    from nir.training.metrics import MaxProjections

    vol = np.arange(1, 1 + 4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    vol[:, 2, 3] = np.nan  # a whole line along axis 0
    vol[1, 1, 1] = np.nan  # one sample of another line
    mip = MaxProjections(vol.shape)
    mip.update(0, vol.size, torch.from_numpy(vol.reshape(-1, 1)))
    along0 = mip.compute()[0].numpy()
    assert np.isnan(along0[2, 3]) and np.isnan(along0).sum() == 1
    assert along0[1, 1] == np.nanmax(vol[:, 1, 1])
    t = np.full((6, 6), 5.0)
    p = t * (1 + np.linspace(1e-4, 1e-3, 36).reshape(6, 6))  # errors 1e-4 .. 1e-3, under a floor of 1e-2
    fig = _slices_figure([(p, t)], floor=1e-2)
    shown = fig.axes[2].get_images()[0].get_array()
    np.testing.assert_allclose(np.asarray(shown), np.abs(p - t) / t, rtol=1e-6)


def test_the_zero_region_and_the_top_decade_are_reported():
    """A mostly-zero field: ``below_floor_kept`` is the share of its below-floor samples the
    prediction keeps below the floor; ``top_decade_median`` the median of the highest decade."""
    import nir
    from nir.data.signal import Signal

    y = torch.from_numpy(_zeros80()).float()[:, None]
    signal = Signal(values=y, bounds=((-1.0, 1.0),), long_tailed=True)
    exact = nir.score(y.numpy(), signal)
    assert exact["below_floor_kept"] == 1.0 and exact["top_decade_median"] == 0.0
    floor = exact["magnitude_floor"]
    pred = y.clone()
    zero_rows = torch.nonzero(y[:, 0] == 0)[:, 0]
    pred[zero_rows] = 2 * floor  # every zero answered above the floor ...
    pred[zero_rows[:400]] = -0.5 * floor  # ... but 400 of them, kept below it
    top = y[:, 0] >= 10.0
    pred[top] = y[top] * 1.3  # the top decade 30 % off
    got = nir.score(pred.numpy(), signal)
    assert got["below_floor_kept"] == pytest.approx(400 / len(zero_rows))
    assert got["top_decade_median"] == pytest.approx(0.3, abs=0.01)


def test_a_mostly_zero_3d_field_fits_its_top_decade_with_the_defaults(tmp_path):
    """data=array with no overrides on a 3-D field that is 80 % exact zeros (rain-like cells
    spanning 4 decades, a few strong ones): loss=auto picks asinh_mse, sampling=auto decades, and
    a short run gets the top decade within 10 % and keeps the zeros below the floor."""
    import nir

    rng = np.random.default_rng(3)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, 24)] * 3, indexing="ij")
    v = np.zeros((24, 24, 24))
    for amp in np.geomspace(0.01, 300.0, 10):
        c = rng.uniform(-0.7, 0.7, 3)
        v += amp * np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / 0.02)
    v[v < 1e-3 * v.max() * 1e-3] = 0.0
    v[rng.random(v.shape) < 0.8 * (v < 1e-2)] = 0.0  # most of the weak region exactly zero
    assert 0.6 < (v == 0).mean() < 0.9, (v == 0).mean()
    np.save(tmp_path / "rain.npy", v.astype(np.float32))
    _, m = nir.fit(tmp_path / "rain.npy", ["trainer.max_steps=300", "trainer.precision=32"], run_dir=tmp_path / "run",
                   log__images=False, trainer__enable_progress_bar=False)  # fmt: skip
    assert m["top_decade_median"] < 0.10, m["top_decade_median"]
    assert m["below_floor_kept"] > 0.75, m["below_floor_kept"]  # measured 0.83; loss=mse keeps almost none


def test_an_array_in_the_hundreds_is_scaled_into_the_networks_range(tmp_path, capsys):
    """Issue 45: an array spanning under 3 decades with values in the hundreds (counts up to
    523 came back 10x too low) gets loss=mse on standardised values, and its top decade comes
    within 5 % in a short run (in its own units, measured here: ~99 % off)."""
    x, y = np.meshgrid(np.linspace(0, 3, 48), np.linspace(0, 2, 48))
    np.save(tmp_path / "h.npy", (300 + 200 * np.sin(3 * x) * np.cos(2 * y)).astype(np.float32))
    _, m = nir.fit(str(tmp_path / "h.npy"), run_dir=tmp_path / "r", steps=200, log__images=False,
                   trainer__enable_progress_bar=False)  # fmt: skip
    assert "-> loss=mse, transform=standardize" in capsys.readouterr().out
    assert m["top_decade_median"] < 0.05 and m["worst_decade_median"] < 0.05


def test_a_field_larger_than_the_lossless_data_says_so(tmp_path, capsys):
    """Issue 45: sparse integer counts (80 % zeros, 1-9 elsewhere) code losslessly to a few kB;
    the default field of a 64^2 frame is larger, and the run says so in one line with the
    lossless size in metrics.json; a smooth 1-D field whose network is far smaller does not."""
    import json

    import nir

    rng = np.random.default_rng(0)
    counts = np.where(rng.random((64, 64)) < 0.8, 0, rng.integers(1, 10, (64, 64))).astype(np.float32)
    np.save(tmp_path / "counts.npy", counts)
    nir.fit(
        tmp_path / "counts.npy", run_dir=tmp_path / "a", steps=2, log__images=False, trainer__enable_progress_bar=False
    )
    out = capsys.readouterr().out
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert m["bytes"] > m["lossless_bytes"] > 0
    (line,) = [l for l in out.splitlines() if "larger than the data losslessly coded" in l]
    assert f"{m['lossless_bytes']:,} bytes" in line
    smooth = np.sin(np.linspace(0, 20, 200_000)).astype(np.float32) + 2
    np.save(tmp_path / "smooth.npy", smooth)
    nir.fit(
        tmp_path / "smooth.npy", run_dir=tmp_path / "b", steps=2, log__images=False, trainer__enable_progress_bar=False
    )
    assert "larger than the data losslessly coded" not in capsys.readouterr().out
