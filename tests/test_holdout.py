"""Held-out samples (issue 17): the split is a pure function of index, shape and seed; held-out
samples are never drawn by any sampler; train and held-out metrics are reported apart."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nir.data.holdout import Holdout
from nir.data.readers import read_array
from nir.data.samplers import Decades
from nir.errors import NirError
from nir.run.run import train
from nir.training.batches import TrainingData
from nir.training.losses import MSE
from nir.transforms import Identity
from tests.conftest import make_cfg, tiny_overrides


@pytest.mark.parametrize("shape", [(9,), (4, 5), (3, 4, 5), (2, 3, 4, 5)])
def test_every_other_holds_out_samples_with_an_odd_coordinate(shape):
    h = Holdout("every_other", shape)
    n = int(np.prod(shape))
    coords = np.stack(np.unravel_index(np.arange(n), shape), -1)
    expected = (coords % 2 == 1).any(-1)
    assert np.array_equal(h.held(torch.arange(n)).numpy(), expected)
    assert np.array_equal(h.train_indices(n).numpy(), np.flatnonzero(~expected))


def test_fraction_is_seeded_uniform_and_random_access():
    n = 200_000
    a = Holdout(0.2, (n,), seed=0).held_range(0, n)
    assert abs(a.float().mean().item() - 0.2) < 0.005
    assert torch.equal(a, Holdout("0.2", (n,), seed=0).held_range(0, n))  # deterministic per seed
    b = Holdout(0.2, (n,), seed=1).held_range(0, n)
    assert not torch.equal(a, b) and abs(b.float().mean().item() - 0.2) < 0.005
    idx = torch.randint(0, n, (1000,))
    assert torch.equal(Holdout(0.2, (n,), seed=0).held(idx), a[idx])  # any index, any order
    # spread along the grid: each tenth of it holds out close to the fraction
    assert all(abs(p.float().mean().item() - 0.2) < 0.02 for p in a.chunk(10))


@pytest.mark.parametrize("spec", [1.5, 0, "half", "1"])
def test_bad_holdout_is_one_clear_line(spec):
    with pytest.raises(NirError, match="data.holdout must be every_other or a fraction in"):
        Holdout(spec, (10,))


def _drawn(data: TrainingData, batches: int) -> torch.Tensor:
    data.to(torch.device("cpu"))
    return torch.cat([data.next_batch()[0] for _ in range(batches)])


@pytest.mark.parametrize("where", ["held", "held-decades", "streamed", "streamed-decades"])
def test_held_out_samples_are_never_drawn(tmp_path, where):
    rng = np.random.default_rng(0)
    vol = np.exp(rng.normal(0, 2.5, (16, 16, 16))).astype(np.float32)  # long-tailed: decades apply
    p = tmp_path / "v.npy"
    np.save(p, vol)
    s = read_array(str(p), mmap=True)
    h = Holdout(0.3, s.shape, seed=3)
    sampling = Decades() if "decades" in where else None
    cache = 0.004 if "streamed" in where else 4096  # 4 KB: the 16 KB volume streams through blocks
    data = TrainingData(s, Identity(), MSE(), batch_size=256, cache_mb=cache, seed=0, sampling=sampling, holdout=h)
    drawn = _drawn(data, 300)
    assert data.streaming == ("streamed" in where)
    assert not h.held(drawn).any()
    train_set = set(h.train_indices(s.numel).tolist())
    assert set(drawn.tolist()) == train_set  # and every training sample is drawn (300 x 256 >> 2,900)
    # the targets are the drawn samples' values
    idx, target = data.next_batch()
    assert torch.allclose(target, torch.as_tensor(vol.reshape(-1, 1))[idx])


def test_full_batch_with_holdout_is_the_training_samples(tmp_path):
    s = read_array(str(_save(tmp_path, np.random.default_rng(1).random((6, 7)).astype(np.float32))))
    h = Holdout("every_other", s.shape)
    data = TrainingData(s, Identity(), MSE(), batch_size=10_000, holdout=h).to(torch.device("cpu"))
    idx, target = data.next_batch()
    assert torch.equal(torch.sort(idx).values, h.train_indices(s.numel)) and target.shape == (12, 1)
    assert torch.equal(data.targets_at(idx), target)


def _save(tmp_path, arr):
    p = tmp_path / "a.npy"
    np.save(p, arr)
    return p


def test_train_reports_heldout_metrics_of_the_stored_field(tiny_png, tmp_path):
    import nir

    def psnr_of(p, y, r):
        return float(10 * torch.log10(r**2 / ((p.double() - y.double()) ** 2).mean()))

    run = tmp_path / "run"
    m = train(make_cfg(tiny_overrides(tiny_png, steps=20) + ["data.holdout=every_other"]), run)
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["holdout"] == "every other sample along each axis"
    field = nir.load_field(run)
    pred = field.sample().reshape(-1, 3)
    target = nir.read_image(str(tiny_png)).flat()
    held = Holdout("every_other", (32, 40)).held_range(0, 32 * 40)
    assert m["psnr_heldout"] == pytest.approx(psnr_of(pred[held], target[held], 2.0), abs=1e-3)
    assert m["psnr_train"] == pytest.approx(psnr_of(pred[~held], target[~held], 2.0), abs=1e-3)
    # all samples' MSE is the two parts' weighted mean: its PSNR lies between theirs
    assert min(m["psnr_train"], m["psnr_heldout"]) <= m["psnr"] <= max(m["psnr_train"], m["psnr_heldout"])


def test_resume_keeps_the_split(tiny_png, tmp_path):
    from safetensors.torch import load_file

    # float32 storage: quantisation-aware training starts at a share of max_steps, which the split run changes
    ov = tiny_overrides(tiny_png, steps=20) + ["data.holdout=0.3", "optim.schedule=constant", "batch_size=200",
                                               "store.dtype=float32"]  # fmt: skip
    train(make_cfg(ov), tmp_path / "full")
    half = [o if not o.startswith("trainer.max_steps") else "trainer.max_steps=10" for o in ov]
    train(make_cfg(half), tmp_path / "split")
    train(make_cfg([*ov, "resume=last"]), tmp_path / "split")
    a, b = load_file(tmp_path / "full" / "field.safetensors"), load_file(tmp_path / "split" / "field.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
