"""Several optimizer steps per training call (issue 16): the same batches, weights, schedule,
logs, checkpoints and divergence stops as one step per call (nir.training.steps, nir.training.module)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nir.errors import NirError
from nir.run.run import train
from nir.training.steps import effective_steps_per_call, graph_blocker, resolve_steps_per_call
from tests.conftest import make_cfg, tiny_overrides


def test_effective_steps_per_call_divides_every_event():
    assert effective_steps_per_call(25, 2000, 250, 25) == 25  # the GPU preset: no reduction
    assert effective_steps_per_call(16, 800, 200, 25) == 5  # the CPU preset's log every 25 steps
    assert effective_steps_per_call(4, 40, 20, 10) == 2
    assert effective_steps_per_call(8, 24, 12, 6) == 6
    assert effective_steps_per_call(7, 0, 0) == 7  # no events: as asked
    assert effective_steps_per_call(1, 24, 12, 6) == 1


def test_steps_per_call_auto_and_bad_values():
    assert resolve_steps_per_call("auto", "gpu") == 25 and resolve_steps_per_call("auto", "cpu") == 1
    assert resolve_steps_per_call(3, "cpu") == 3
    for bad in (0, "1.5", "many"):
        with pytest.raises(ValueError, match="steps_per_call must be an integer >= 1 or auto, got"):
            resolve_steps_per_call(bad, "cpu")


def test_graph_blocker_names_each_reason():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert graph_blocker(cuda, "bf16-mixed", False, 1) is None
    assert graph_blocker(cuda, "32-true", False, 1) is None
    assert "CUDA device" in graph_blocker(cpu, "32-true", False, 1)
    assert "gradient scaler" in graph_blocker(cuda, "16-mixed", False, 1)
    assert "block cache" in graph_blocker(cuda, "32-true", True, 1)
    assert "DDP" in graph_blocker(cuda, "32-true", False, 2)


def _run(img, tmp_path, name, k, extra=()):
    ov = tiny_overrides(img, steps=24) + [
        "trainer.val_check_interval=12",
        "trainer.log_every_n_steps=6",
        "log.images=false",
        f"steps_per_call={k}",
        "store.dtype=float32",  # quantisation-aware training starts on a call's first step (storage.StoredTraining)
        *extra,
    ]
    run = tmp_path / name
    metrics = train(make_cfg(ov), run)
    return run, metrics


def _scalars(run, tag):
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


# Tolerance: none. K steps per call run the same kernels in the same order as K=1 on the CPU, so
# the weights are bitwise equal. bf16-mixed guards the autocast weight cache: with it on, steps
# 2..K of a call would reuse bf16 copies of the weights from before the call (Lightning's autocast
# runs with the cache off today; a torch.autocast with the cache on around the call fails this).
@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_k_steps_per_call_equal_k1_weights_logs_and_schedule(tiny_png, tmp_path, precision):
    extra = [f"trainer.precision={precision}", "batch_size=300", "model.num_layers=3"]
    one, m1 = _run(tiny_png, tmp_path, "k1", 1, extra)
    six, m6 = _run(tiny_png, tmp_path, "k6", 6, extra)
    w1, w6 = load_file(one / "field.safetensors"), load_file(six / "field.safetensors")
    assert w1.keys() == w6.keys()
    for key in w1:
        assert torch.equal(w1[key], w6[key]), key
    assert m6["steps"] == m1["steps"] == 24 and m6["psnr"] == m1["psnr"]
    # the same points on the same optimizer steps: losses every 6 steps, validations every 12,
    # the learning rate of every logged step (the cosine schedule advanced per optimizer step)
    for tag in ("train/loss", "val/psnr", "lr-Adam"):
        assert _scalars(six, tag) == _scalars(one, tag), tag
    assert [s for s, _ in _scalars(six, "train/loss")] == [5, 11, 17, 23]


def test_k_steps_per_call_resume_and_clipping(tiny_png, tmp_path):
    """12 + 12 steps with a resume equal 24 uninterrupted (K=6, clipping on); resuming with
    another K is one clear line."""
    extra = ["optim.schedule=constant", "trainer.gradient_clip_val=0.05", "batch_size=300"]
    full, _ = _run(tiny_png, tmp_path, "full", 6, extra)
    half = [*extra, "trainer.max_steps=12"]
    split, _ = _run(tiny_png, tmp_path, "split", 6, half)
    with pytest.raises(NirError, match="trained with steps_per_call=6; pass steps_per_call=6"):
        _run(tiny_png, tmp_path, "split", 3, [*extra, "resume=last"])
    _run(tiny_png, tmp_path, "split", 6, [*extra, "resume=last"])
    a, b = load_file(full / "field.safetensors"), load_file(split / "field.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # clipping is applied (Lightning clips only in automatic optimisation; the module does it)
    free, _ = _run(tiny_png, tmp_path, "free", 6, ["optim.schedule=constant", "batch_size=300"])
    c = load_file(free / "field.safetensors")
    assert any(not torch.equal(a[key], c[key]) for key in a)


def test_k_steps_per_call_divergence_stops_at_the_step(tmp_path, tiny_png):
    import numpy as np

    huge = tmp_path / "huge.npy"
    np.save(huge, np.full((32, 40, 3), 3e38, dtype=np.float32) * np.linspace(0.1, 1, 3, dtype=np.float32))
    ov = [o for o in tiny_overrides(tiny_png, steps=24) if not o.startswith("data.path")]
    ov += ["data=array", "model=siren", f"data.path={huge}", "data.channel_axis=-1", "loss=mse", "steps_per_call=4",
           "trainer.log_every_n_steps=4", "trainer.val_check_interval=12", "check_finite_every=4"]  # fmt: skip
    with pytest.raises(NirError, match=r"diverged at step 0: loss inf"):
        train(make_cfg(ov), tmp_path / "run")
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["status"] == "diverged" and m["step"] == 0


def test_bad_steps_per_call_is_one_clear_line(tiny_png, tmp_path):
    with pytest.raises(NirError, match="steps_per_call must be an integer >= 1 or auto, got 'x'"):
        train(make_cfg(tiny_overrides(tiny_png, steps=4) + ["steps_per_call=x"]), tmp_path / "r")


def test_bad_cuda_graph_is_one_clear_line(tiny_png, tmp_path):
    with pytest.raises(NirError, match="cuda_graph must be auto, true or false, got 'yes'"):
        train(make_cfg(tiny_overrides(tiny_png, steps=4) + ["cuda_graph=yes"]), tmp_path / "r")
