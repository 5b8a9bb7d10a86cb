"""The data pipeline (nir/training/batches.py): samplers, the training data on the device, statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from nir.data.samplers import IndexSampler
from nir.data.signal import Signal
from nir.data.synthetic import peaks1d
from nir.errors import NirError
from nir.training.batches import TrainingData
from nir.training.losses import MSE, LogMSE, RelL2
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
    from nir.run.run import train

    np.save(tmp_path / "a.npy", np.random.default_rng(0).lognormal(size=(20, 30)).astype(np.float32))
    ov = [o for o in tiny_overrides(tiny_png, steps=10) if not o.startswith("data.")]
    train(
        make_cfg(ov + ["data=array", "model=siren", f"data.path={tmp_path / 'a.npy'}", "loss=log_mse"]),
        tmp_path / "run",
    )
    assert len(calls) == 1


# ----------------------------------------------------------------------------- decade sampling


def _bins(values: Tensor, data: TrainingData) -> Tensor:
    from nir.training.metrics import MagnitudeBins

    return MagnitudeBins(data.stats.floor, data.stats.absmax).bin_index(values.abs().amax(1))


def _long_tailed(n: int = 4000, seed: int = 0) -> Signal:
    """Log-uniform values over 1e-4..1e2 plus one sample at 500: the top decade holds one sample."""
    rng = np.random.default_rng(seed)
    v = 10 ** rng.uniform(-4, 2, n)
    v[1234] = 500.0
    return Signal(torch.from_numpy(v.astype(np.float32))[:, None], ((-1.0, 1.0),), long_tailed=True)


def test_decade_batches_have_the_requested_shares():
    from nir.data.samplers import Decades, DecadeSampler

    s = _long_tailed()
    data = TrainingData(s, Log(), LogMSE(), batch_size=700, sampling=Decades(alpha=0.0)).to(CPU)
    assert isinstance(data.sampler, DecadeSampler)
    nonempty = int((data.sampler.counts > 0).sum())
    for _ in range(5):
        idx, _ = data.next_batch()
        per_bin = torch.bincount(_bins(s.flat()[idx], data), minlength=len(data.sampler.counts))
        assert torch.equal(per_bin, data.sampler.slots)  # every batch: exactly its slots per decade
    occupied = per_bin[per_bin > 0]
    assert len(occupied) == nonempty and int(occupied.max()) - int(occupied.min()) <= 1  # equal shares


def test_a_decade_with_a_single_sample_is_drawn_in_every_batch():
    from nir.data.samplers import Decades

    s = _long_tailed()
    data = TrainingData(s, Log(), LogMSE(), batch_size=700, sampling=Decades()).to(CPU)
    for _ in range(5):
        idx, _ = data.next_batch()
        assert int((idx == 1234).sum()) >= 700 // 8  # one sample, a full decade's share (8 decades)


def test_draws_within_a_decade_are_uniform():
    from nir.data.samplers import DecadeSampler

    mag = torch.cat([torch.full((50,), 0.5), torch.full((1000,), 5.0)])  # decades 1e-1.. and 1e0..
    sampler = DecadeSampler(mag, [1e-2, 1e-1, 1.0, 10.0], batch_size=1000, alpha=0.0, seed=2)
    counts = torch.zeros(1050)
    for _ in range(200):
        counts += torch.bincount(sampler.next(), minlength=1050)
    small, large = counts[:50], counts[50:]
    assert float(small.sum()) == float(large.sum()) == 100_000  # equal shares of 500 a batch
    for part, n in ((small, 50), (large, 1000)):
        mean = 100_000 / n
        assert abs(float(part.mean()) - mean) < 1e-9 and float(part.std()) < 1.3 * mean**0.5  # binomial spread


def test_tempered_shares_follow_count_to_the_alpha():
    from nir.data.samplers import decade_slots

    counts = torch.tensor([0, 10, 100, 1000, 10000])
    assert decade_slots(counts, 400, 0.0).tolist() == [0, 100, 100, 100, 100]
    assert decade_slots(counts, 11110, 1.0).tolist() == [0, 10, 100, 1000, 10000]
    half = decade_slots(counts, 1000, 0.5)
    assert int(half.sum()) == 1000 and half.tolist() == sorted(half.tolist()) and half[1] >= 1
    assert decade_slots(torch.tensor([1, 0, 10**6]), 3, 1.0).tolist() == [1, 0, 2]  # every non-empty decade drawn


def test_decade_sampler_state_round_trips():
    from nir.data.samplers import Decades

    s = _long_tailed()
    a = TrainingData(s, Log(), LogMSE(), batch_size=300, sampling=Decades()).to(CPU)
    for _ in range(4):
        a.next_batch()
    b = TrainingData(s, Log(), LogMSE(), batch_size=300, sampling=Decades())
    b.load_state_dict(a.state_dict())  # as a checkpoint restores it, before the data is on a device
    b.to(CPU)
    for _ in range(3):
        assert torch.equal(a.next_batch()[0], b.next_batch()[0])


def test_decade_sampling_refuses_images():
    from nir.data.samplers import Decades

    img = Signal(torch.rand(8, 8, 3), ((-1.0, 1.0),) * 2)
    with pytest.raises(NirError, match="sampling=decades needs a long-tailed signal"):
        TrainingData(img, Identity(), MSE(), batch_size=16, sampling=Decades())


def test_streamed_and_held_signals_get_the_same_decade_shares(tmp_path):
    """A memory-mapped signal streamed through a small block cache is balanced over the cached
    samples: with every decade in every block, each batch has the held sampler's shares."""
    from nir.data.readers import read_array
    from nir.data.samplers import Decades
    from nir.training.batches import BlockCache

    rng = np.random.default_rng(5)
    np.save(tmp_path / "lt.npy", (10 ** rng.uniform(-4, 2, 60_000)).astype(np.float32))
    held = TrainingData(read_array(str(tmp_path / "lt.npy"), mmap=False), Log(), LogMSE(), 600, sampling=Decades()).to(
        CPU
    )
    streamed = TrainingData(
        read_array(str(tmp_path / "lt.npy")), Log(), LogMSE(), 600, cache_mb=0.1, sampling=Decades()
    ).to(CPU)
    assert isinstance(streamed.sampler, BlockCache) and streamed.sampler.n_blocks > streamed.sampler.slots
    values = read_array(str(tmp_path / "lt.npy")).flat()
    for _ in range(6):  # blocks are replaced as batches are drawn
        idx, target = streamed.next_batch()
        torch.testing.assert_close(target, streamed.transform(values[idx]))  # rows and targets agree
        got = torch.bincount(_bins(values[idx], streamed), minlength=len(held.sampler.slots))
        assert torch.equal(got, held.sampler.slots)
    counts = torch.zeros(60_000)
    for _ in range(200):
        counts += torch.bincount(streamed.next_batch()[0], minlength=60_000)
    assert int((counts > 0).sum()) > 50_000  # the stream moves through the whole signal


def test_decade_sampling_resumes_to_the_same_weights(tmp_path):
    """20 steps + resume to 40 gives the same field as 40 uninterrupted steps, sampler state
    restored from the checkpoint; metrics.json records the sampling."""
    import json

    from nir import load_field
    from nir.run.run import train

    np.save(tmp_path / "lt.npy", _long_tailed(2000).flat().numpy()[:, 0])
    ov = [
        "data=array", f"data.path={tmp_path / 'lt.npy'}", "loss=log_mse", "sampling=decades", "batch_size=256",
        "model=fourier_lt", "model.hidden_dim=16", "optim.schedule=constant", "trainer.precision=32", "store.dtype=float32",
        "trainer.val_check_interval=10", "trainer.enable_progress_bar=false", "log.images=false",
    ]  # fmt: skip
    train(make_cfg([*ov, "trainer.max_steps=40"]), tmp_path / "full")
    train(make_cfg([*ov, "trainer.max_steps=20"]), tmp_path / "split")
    train(make_cfg([*ov, "trainer.max_steps=40", "resume=last"]), tmp_path / "split")
    torch.testing.assert_close(load_field(tmp_path / "full").sample(), load_field(tmp_path / "split").sample())
    assert json.loads((tmp_path / "full" / "metrics.json").read_text())["sampling"] == "decades(alpha=0)"


def test_each_ddp_rank_draws_its_own_balanced_batches():
    from nir.data.samplers import Decades

    s = _long_tailed()
    ranks = [TrainingData(s, Log(), LogMSE(), batch_size=400, sampling=Decades()).to(CPU, rank=r) for r in (0, 1)]
    batches = [d.next_batch()[0] for d in ranks]
    assert not torch.equal(batches[0], batches[1])  # different draws on each rank ...
    for d, idx in zip(ranks, batches):  # ... each with the decade shares
        assert torch.equal(torch.bincount(_bins(s.flat()[idx], d), minlength=len(d.sampler.slots)), d.sampler.slots)


def test_each_epoch_is_a_new_permutation_seeded_by_seed_plus_epoch():
    """The docstring's contract: epoch e is torch.randperm under a generator seeded with seed + e."""
    s = IndexSampler(100, 50, CPU, seed=7)
    epochs = [torch.cat([s.next(), s.next()]) for _ in range(3)]
    for e, got in enumerate(epochs):
        expect = torch.randperm(100, generator=torch.Generator().manual_seed(7 + e))
        assert torch.equal(got, expect)
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])


def test_a_resumed_sampler_draws_what_an_uninterrupted_one_draws_across_epochs():
    whole = IndexSampler(100, 30, CPU, seed=2)
    drawn = [whole.next() for _ in range(12)]  # four epochs' worth, batches straddling epoch ends
    first = IndexSampler(100, 30, CPU, seed=2)
    for _ in range(5):
        first.next()
    resumed = IndexSampler(100, 30, CPU, seed=2)
    resumed.load_state_dict(first.state_dict())
    for k in range(5, 12):
        assert torch.equal(resumed.next(), drawn[k])


def test_a_sampler_written_outside_nir_is_built_from_its_config_path(tmp_path):
    """The sampler protocol (nir.data.samplers): a class of the user's, named by sampling._target_,
    draws the batches with no change to nir, and its state goes into the checkpoint."""
    from nir.data.readers import read_array
    from nir.run.config import build
    from nir.run.run import train_field

    np.save(tmp_path / "x.npy", np.linspace(1.0, 2.0, 64, dtype=np.float32))
    ov = ["data=array", "model=siren", f"data.path={tmp_path / 'x.npy'}", "loss=mse", "model.hidden_dim=8", "batch_size=8",
          "trainer.max_steps=6", "trainer.val_check_interval=6", "log.images=false",
          "trainer.enable_progress_bar=false", "sampling._target_=tests.usersampler.EvenOnly", "+sampling.stride=2"]  # fmt: skip
    cfg = make_cfg(ov)
    sampling = build(cfg.sampling, "sampling")
    assert type(sampling).__module__ == "tests.usersampler"
    data = TrainingData(read_array(str(tmp_path / "x.npy")), Identity(), MSE(), 8, sampling=sampling).to(CPU)
    drawn = torch.cat([data.next_batch()[0] for _ in range(8)])
    assert sorted(set(drawn.tolist())) == list(range(0, 64, 2))  # every even position, no odd one
    field, m = train_field(cfg, tmp_path / "run")
    assert m["sampling"] == "even_only(stride=2)" and m["status"] == "ok"
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["nir_sampler"] == {"epoch": -1, "pos": (8 * 6) % 32}  # 6 batches of 8 over 32 positions
