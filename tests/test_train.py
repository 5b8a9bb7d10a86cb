"""End to end through the same Hydra configs as the CLI: fit, files, TensorBoard, resume, options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nir.errors import NirError
from nir.run.config import CONF_DIR
from nir.run.run import train
from tests.conftest import make_cfg, tiny_overrides


def _event_tags(run_dir: Path) -> dict[str, set[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    return {
        "images": set(tags["images"]),
        "scalars": set(tags["scalars"]),
        "plugins": set(acc.PluginTagToContent("hparams")),
    }


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One small fit shared by several tests (SIREN 2x64 on a smooth 32x40 RGB image)."""
    import imageio.v3 as iio

    from tests.conftest import smooth_image

    d = tmp_path_factory.mktemp("fit")
    img = d / "img.png"
    iio.imwrite(img, smooth_image(), extension=".png")
    cfg = make_cfg(tiny_overrides(img, steps=150) + ["model.hidden_dim=64", "model.num_layers=2", "optim.lr=1e-3"])
    run = d / "run"
    metrics = train(cfg, run)
    return run, metrics, img


def test_tiny_fit_reaches_psnr_floor(fitted):
    _, metrics, _ = fitted
    assert metrics["status"] == "ok"
    assert metrics["psnr"] > 30.0, metrics  # smooth 32x40 image, 150 steps


def test_images_get_ssim_of_the_final_field(fitted):
    from torchmetrics.functional.image import structural_similarity_index_measure

    from nir import load_field, read_image

    run, metrics, img = fitted
    pred = load_field(run).sample().permute(2, 0, 1)[None]
    target = read_image(str(img)).values.permute(2, 0, 1)[None]
    expect = float(structural_similarity_index_measure(pred, target, data_range=2.0))
    assert 0 < metrics["ssim"] <= 1 and metrics["ssim"] == pytest.approx(expect, abs=1e-4)
    assert json.loads((run / "metrics.json").read_text())["ssim"] == pytest.approx(metrics["ssim"])


def test_run_directory_layout(fitted):
    run, metrics, _ = fitted
    for name in ["config.yaml", "metrics.json", "field.safetensors", "checkpoints/last.ckpt", "checkpoints/best.ckpt"]:
        assert (run / name).is_file(), name
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["psnr"] == pytest.approx(metrics["psnr"])
    assert saved["num_params"] == 2 * 64 + 64 + 2 * (64 * 64 + 64) + 64 * 3 + 3
    assert saved["wall_time_s"] > 0 and saved["steps"] == 150
    assert "R = 2" in saved["psnr_convention"]  # data.value_range [-1, 1]


def test_tensorboard_has_images_scalars_and_hparams(fitted):
    run, _, _ = fitted
    tags = _event_tags(run)
    assert {"image/reconstruction", "image/target", "image/abs_error"} <= tags["images"]
    assert {"train/loss", "val/psnr", "hp/psnr"} <= tags["scalars"]
    assert any(t.startswith("lr") for t in tags["scalars"])
    assert tags["plugins"], "no hparams summary in the event file"
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1
    assert "epoch" not in tags["scalars"]  # nir trains in steps: no constant-0 chart heading the page
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("hp/psnr")] == [150]  # only the final value: no NaN point at step 0
    train_psnr = acc.Scalars("train/psnr")  # a point per log step (25), between the validations
    assert [e.step for e in train_psnr] == list(range(24, 150, 25))
    assert train_psnr[-1].value > train_psnr[0].value + 3  # it tracks the fit


def test_error_map_carries_its_scale():
    from nir.figures import error_figure

    fig = error_figure(np.full((30, 40), 0.05), white=0.2)
    image_ax, bar_ax = fig.axes  # the map and its colour bar
    assert "white = 0.2" in image_ax.get_title()
    assert bar_ax.get_ylim() == pytest.approx((0.0, 0.2)) and bar_ax.get_ylabel() == "signal units"
    w, h = fig.get_size_inches() * fig.dpi
    assert 300 <= w <= 700 and 250 <= h <= 600  # readable in a TensorBoard card, not a poster


def test_saved_field_reproduces_final_psnr(fitted):
    from torchmetrics.functional.image import peak_signal_noise_ratio

    from nir import load_field, read_image

    run, metrics, img = fitted
    field = load_field(run)
    sig = read_image(str(img))
    pred = field.sample()
    assert pred.shape == sig.values.shape
    psnr = peak_signal_noise_ratio(pred, sig.values, data_range=2.0)
    assert float(psnr) == pytest.approx(metrics["psnr"], abs=1e-3)


def test_resume_from_last_checkpoint(fitted, tmp_path):
    run, _, img = fitted
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = set(copy.glob("**/events.out.tfevents.*"))
    cfg = make_cfg(tiny_overrides(img, steps=170) + ["model.hidden_dim=64", "model.num_layers=2", "resume=last"])
    metrics = train(cfg, copy)
    assert metrics["steps"] == 170
    # continues in the same TensorBoard run (directory), not a new one: one new event file beside the old
    new = set(copy.glob("**/events.out.tfevents.*")) - before
    assert len(new) == 1 and next(iter(new)).parent == copy / "tb", new
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(copy / "tb"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("val/psnr")]  # Lightning logs a validation at step - 1
    assert 149 in steps and steps[-1] == 169, steps  # the first run's points and the resumed run's, in one run


def test_resume_missing_checkpoint_is_clear(tiny_png, tmp_path):
    cfg = make_cfg(tiny_overrides(tiny_png) + ["resume=last"])
    with pytest.raises(NirError, match="checkpoint .* not found"):
        train(cfg, tmp_path / "fresh")


def _options():
    for group in sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir()):
        for opt in sorted((CONF_DIR / group).glob("*.yaml")):
            yield group, opt.stem


@pytest.mark.parametrize("group,option", list(_options()))
def test_every_config_option_instantiates(group, option, tiny_png):
    import numpy as np
    from hydra.utils import instantiate

    from nir.data.signal import Signal

    base = [o for o in tiny_overrides(tiny_png) if not o.startswith("data.")]
    if (group, option) in (("data", "array"), ("model", "auto")):  # model=auto takes no model.* keys
        base = [o for o in base if not o.startswith("model.")]
    if group != "data" or option == "image":
        base.append(f"data.path={tiny_png}")
    elif option == "array":
        np.save(tiny_png.with_suffix(".npy"), np.random.default_rng(0).random((5, 6)))
        base.append(f"data.path={tiny_png.with_suffix('.npy')}")
    else:
        base.append("data.n=16")
    cfg = make_cfg(base + [f"{group}={option}"])
    if group == "trainer":
        import pytorch_lightning as pl
        from omegaconf import OmegaConf

        kw = OmegaConf.to_container(cfg.trainer)
        if kw["accelerator"] == "gpu" and not torch.cuda.is_available():
            kw["accelerator"] = "cpu"  # the preset's keys are still checked by Trainer
        pl.Trainer(**kw, logger=False)
        return
    if group == "data":  # data.holdout is nir's key of the group (nir.data.holdout), dropped by build
        from nir.run.config import build

        obj = build(cfg.data, "data")
    elif (group, option) == ("model", "auto"):  # a placeholder, resolved from the data: the 2-D photo's siren
        from nir.run.resolve import resolve_auto_model

        cfg, _ = resolve_auto_model(cfg, {}, None)
        assert cfg.model._target_ == "nir.fields.Siren"
        obj = instantiate(cfg.model, in_dim=2, out_dim=3)
    elif (group, option) == ("sampling", "auto"):  # a placeholder, resolved from the signal and the transform
        from nir.run.resolve import choose_sampling

        signal = Signal(values=torch.rand(5, 6, 1), bounds=((-1, 1), (-1, 1)), long_tailed=True)
        choice = choose_sampling(cfg, signal, str(cfg.transform._target_))
        assert choice.nodes["sampling"]["_target_"] == "nir.data.samplers.Uniform"  # this config's transform: identity
        assert cfg.sampling._target_ == "nir.data.samplers.Auto"  # returned, not written into the config
        obj = instantiate(choice.nodes["sampling"])
    else:
        obj = instantiate(cfg[group], **({"in_dim": 2, "out_dim": 3} if group == "model" else {}))
    if group == "data":
        assert isinstance(obj, Signal)
    elif group == "model":
        assert obj(torch.zeros(4, 2)).shape == (4, 3)
    elif group == "loss" and option == "auto":  # a placeholder, resolved from the data (tests/test_longtail.py)
        from nir.training.losses import Auto

        assert isinstance(obj, Auto) and obj.min_decades == 3.0
    elif group == "loss":
        assert torch.isfinite(obj.fit(torch.ones(4, 3))(torch.zeros(4, 3), torch.ones(4, 3)))
    elif group == "transform":
        y = torch.rand(10, 3)
        torch.testing.assert_close(obj.fit(y).inverse(obj(y)), y)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_trains_close_to_fp32(precision, tiny_png, tmp_path):
    base = tiny_overrides(tiny_png, steps=100) + ["model.hidden_dim=64"]
    ref = train(make_cfg(base), tmp_path / "fp32")
    mixed = train(make_cfg(base + [f"trainer.precision={precision}"]), tmp_path / precision)
    assert mixed["psnr"] > ref["psnr"] - 1.5, (mixed["psnr"], ref["psnr"])


@pytest.mark.parametrize(
    "override,match",
    [
        ("model.hidden_dim=0", "model.hidden_dim must be a positive integer"),
        ("trainer.max_steps=0", "trainer.max_steps must be a positive integer"),
        ("optim.lr=-1", "optim.lr must be a positive number"),
        ("batch_size=0", "batch_size must be a positive integer"),
    ],
)
def test_bad_config_values(override, match, tiny_png, tmp_path):
    with pytest.raises(NirError, match=match):
        train(make_cfg(tiny_overrides(tiny_png) + [override]), tmp_path / "r")


def test_no_full_grid_coordinates_during_training(tmp_path, monkeypatch):
    """Coordinates exist only as batches (training) and chunks (validation), never the full grid."""
    from nir.data.signal import Grid

    sizes = []
    orig = Grid.coords

    def spy(self, idx):
        sizes.append(idx.numel())
        return orig(self, idx)

    monkeypatch.setattr(Grid, "coords", spy)
    cfg = make_cfg(
        [
            "data.sample=chelsea",
            "model.hidden_dim=16",
            "model.num_layers=0",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
            "trainer.enable_progress_bar=false",
            "log.images=false",
            "batch_size=4096",
            "trainer.precision=32",
        ]
    )
    train(cfg, tmp_path / "r")
    numel = 300 * 451
    assert sizes and max(sizes) <= 65536 < numel
    assert sizes.count(4096) >= 3


def test_compiled_training_matches_eager_and_saves_plain_weights(tiny_png, tmp_path, monkeypatch):
    """compile=true goes through torch.compile, trains the same field as eager (same seed, same
    batches) and the saved field carries no compiled state: the same plain weight names."""
    from nir.reuse.field import load_field

    calls = []
    real_compile = torch.compile

    def spy(model, **kw):
        calls.append(type(model).__name__)
        return real_compile(model, **kw)

    monkeypatch.setattr(torch, "compile", spy)
    base = tiny_overrides(tiny_png, steps=30) + ["trainer.val_check_interval=30"]
    eager = train(make_cfg(base), tmp_path / "eager")
    assert calls == []
    compiled = train(make_cfg(base + ["compile=true"]), tmp_path / "compiled")
    assert calls == ["Siren"]
    assert compiled["psnr"] == pytest.approx(eager["psnr"], abs=0.2), (compiled["psnr"], eager["psnr"])
    a, b = load_field(tmp_path / "eager" / "field.safetensors"), load_field(tmp_path / "compiled" / "field.safetensors")
    assert a.state_dict().keys() == b.state_dict().keys()
    assert not any("_orig_mod" in k for k in b.state_dict())


def test_compile_flag_must_be_boolean(tiny_png, tmp_path):
    with pytest.raises(NirError, match="compile must be true or false"):
        train(make_cfg(tiny_overrides(tiny_png) + ["compile=yes"]), tmp_path)


def test_the_callbacks_are_the_ones_the_config_lists(tmp_path):
    """conf/train.yaml's ``callbacks:`` in order; ``=null`` drops one, ``enabled: false`` (here
    ``log.images=false``) leaves one out, a relative ``dirpath`` is inside the run directory, and
    one added on the command line is built."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    from nir.run.config import compose_config
    from nir.run.trainer import configured_callbacks

    names = lambda cbs: [type(c).__name__ for c in cbs]  # noqa: E731
    cfg, _ = compose_config([])
    cbs = configured_callbacks(cfg, tmp_path)
    assert names(cbs) == ["DivergenceGuard", "ModelCheckpoint", "ReconstructionLogger", "MagnitudeLogger"]
    assert cbs[1].dirpath == str(tmp_path / "checkpoints") and cbs[0].every == cfg.check_finite_every
    cfg, _ = compose_config(["log.images=false", "callbacks.magnitudes=null", "check_finite_every=7",
                             "+callbacks.extra._target_=nir.training.callbacks.MagnitudeLogger"])  # fmt: skip
    cbs = configured_callbacks(cfg, tmp_path)
    assert names(cbs) == ["DivergenceGuard", "ModelCheckpoint", "MagnitudeLogger"] and cbs[0].every == 7
    assert isinstance(cbs[1], ModelCheckpoint)
