"""The data pipeline (nir/batches.py): samplers, the training data on the device, statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nir.batches import IndexSampler, TrainingData
from nir.errors import NirError
from nir.losses import MSE, LogMSE, RelL2
from nir.signal import Signal
from nir.synthetic import peaks1d
from nir.transforms import Identity, Log, Softplus
from tests.conftest import make_cfg, tiny_overrides

CPU = torch.device("cpu")


def test_index_sampler_covers_every_sample_uniformly():

    n, batch = 1000, 128
    s = IndexSampler(n, batch, torch.device("cpu"), seed=3)
    drawn = torch.cat([s.next() for _ in range(5 * n // batch + 1)])[: 5 * n]
    assert all(s.next().numel() == batch for _ in range(20))  # constant batch size across epochs
    counts = torch.bincount(drawn, minlength=n)
    assert int(counts.min()) == int(counts.max()) == 5


def test_index_sampler_state_round_trip():

    a = IndexSampler(100, 30, torch.device("cpu"), seed=1)
    for _ in range(5):
        a.next()
    b = IndexSampler(100, 30, torch.device("cpu"), seed=1)
    b.load_state_dict(a.state_dict())
    for _ in range(7):
        assert torch.equal(a.next(), b.next())


def test_training_data_targets_are_in_the_losses_space():
    s = peaks1d(n=2000)
    log_data = TrainingData(s, Log(), LogMSE(), batch_size=256).to(CPU)
    idx, target = log_data.next_batch()
    torch.testing.assert_close(target, log_data.transform(s.flat()[idx]))  # transformed once, gathered
    torch.testing.assert_close(log_data.values_at(idx), s.flat()[idx])  # signal units for metrics
    rel = TrainingData(s, Softplus(), RelL2(), batch_size=256).to(CPU)
    assert not rel.transformed_copy  # a signal-space loss needs no transformed copy
    idx, target = rel.next_batch()
    torch.testing.assert_close(target, s.flat()[idx])


def test_training_data_fits_transform_and_loss_and_measures_stats():
    s = peaks1d(n=2000)
    transform, loss = Log(), RelL2()
    data = TrainingData(s, transform, loss, batch_size=256)
    assert float(transform.floor) > 0 and loss.floor is not None  # both fitted in place
    assert data.stats.long_tailed and data.stats.floor > 0
    assert data.stats.absmax == pytest.approx(float(s.flat().abs().max()))
    image = Signal(torch.rand(8, 8, 3), ((-1.0, 1.0),) * 2, meta={"value_range": [0.0, 1.0]})
    stats = TrainingData(image, Identity(), MSE(), batch_size=16).stats
    assert not stats.long_tailed and stats.range == 1.0


def test_constant_signal_is_refused():
    with pytest.raises(NirError, match="is constant"):
        TrainingData(Signal(torch.ones(10, 1), ((-1.0, 1.0),)), Identity(), MSE(), batch_size=4)


def test_full_batch_is_the_whole_grid_without_a_gather():
    s = Signal(torch.from_numpy(np.linspace(0, 1, 50, dtype=np.float32))[:, None], ((-1.0, 1.0),))
    data = TrainingData(s, Identity(), MSE(), batch_size=64).to(CPU)
    idx, target = data.next_batch()
    assert torch.equal(idx, torch.arange(50)) and target.data_ptr() == data.values_range(0, 50).data_ptr()


def test_statistics_of_a_run_are_sampled_once(tiny_png, tmp_path, monkeypatch):
    """The fit sample (the bounded sample of a large signal) is drawn once per run; transform,
    loss, validation metrics, final evaluation and figures share the statistics from it."""
    calls = []
    real = Signal.fit_sample

    def counted(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(Signal, "fit_sample", counted)
    from nir.run import train

    np.save(tmp_path / "a.npy", np.random.default_rng(0).lognormal(size=(20, 30)).astype(np.float32))
    ov = [o for o in tiny_overrides(tiny_png, steps=10) if not o.startswith("data.")]
    train(make_cfg(ov + ["data=array", f"data.path={tmp_path / 'a.npy'}", "loss=log_mse"]), tmp_path / "run")
    assert len(calls) == 1
