"""The console script as a user runs it: a multirun. (Bad-input exits: tests/test_reliability.py.)"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nir.errors import NirError
from nir.run.config import CONF_DIR
from tests.conftest import make_cfg, tiny_overrides

NIR_TRAIN = [sys.executable, "-m", "nir.cli.train"]


def run(args, cwd):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(NIR_TRAIN + args, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def test_multirun_gives_each_job_its_own_run_dir(tiny_png, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "model=siren,fourier", f"hydra.sweep.dir={sweep}"] + tiny_overrides(tiny_png, steps=10)
    r = run(args, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "metrics.json").exists())
    assert [p.name for p in runs] == ["0", "1"]
    columns = []
    for p, model in zip(runs, ["siren", "fourier"]):
        # TensorBoard names each run after its swept values
        assert list((p / "tb" / f"model={model}").glob("events.out.tfevents.*")), list(p.rglob("*tfevents*"))
        assert (p / "field.safetensors").is_file()
        columns.append(hparam_columns(p / "tb" / f"model={model}"))
    # HPARAMS: the same columns in every job (Fourier's run does not add its own), the swept key first
    assert columns[0] == columns[1] and columns[0][0] == "model", columns
    assert len(columns[0]) <= 20


def hparam_columns(run_dir):
    """The HPARAMS columns (the experiment's hparam names, in order) a run's event file declares."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    for f in run_dir.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(f)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    if data.HasField("experiment"):
                        return [h.name for h in data.experiment.hparam_infos]
    raise AssertionError(f"no HPARAMS experiment in {run_dir}")


def test_hydra_flags_with_values_are_not_taken_for_overrides(tmp_path):
    """``--cfg job`` / ``-c job`` / ``-p KEY`` / ``--info``: Hydra's own parser reads argv."""
    r = run(["--cfg", "job", "model=fourier"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "otype: nir.fields.encodings.FourierEncoding" in r.stdout  # the encoding node of model=fourier
    r = run(["-c", "job", "-p", "optim"], tmp_path)
    assert r.returncode == 0 and "lr: 0.001" in r.stdout and "_target_: nir.training.optim.Adam" in r.stdout, r.stderr[
        -2000:
    ]
    r = run(["--info", "defaults"], tmp_path)
    assert r.returncode == 0 and "optim/adam" in r.stdout, r.stderr[-2000:]


def test_data_preset_says_what_it_brought(tmp_path):
    r = run(
        [
            "data=peaks1d",
            "data.n=512",
            "model.hidden_dim=8",
            "optim.lr=0.01",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "trainer.enable_progress_bar=false",
            "log.images=false",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (line,) = [l for l in r.stdout.splitlines() if l.startswith("data=peaks1d brings")]
    # the choices and values in effect after the command line, not the preset's own
    for part in ("model=hashgrid_lt1d", "loss=log_mse", "sampling=decades", "trainer.max_steps=2", "batch_size=16384"):
        assert part in line, line
    assert "optim.lr" not in line  # the learning rate is the model's own (the grid's 1e-2), not the preset's


def test_only_data_presets_print_what_they_brought():
    from nir.run.config import compose_config, preset_line

    cfg, choices = compose_config(["data=sources3d", "trainer.max_steps=7"])
    assert preset_line(cfg, choices).startswith(
        "data=sources3d brings model=hashgrid_lt3d, loss=log_mse, sampling=decades"
    )
    assert "trainer.max_steps=7" in preset_line(cfg, choices)
    assert preset_line(*compose_config(["data=image"])) is None  # a reader only: nothing to announce
    # data=array brings model=auto and loss=auto (decided from the data when the run starts)
    line = preset_line(*compose_config(["data=array", "data.path=x.npy"]))
    assert line.startswith("data=array brings model=auto, loss=auto")
    line = preset_line(*compose_config(["data=array", "data.path=x.npy", "loss=l1", "model=siren"]))
    assert line.startswith("data=array brings model=siren, loss=l1")


def test_help_is_nirs_own(tmp_path):
    r = run(["--help"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Config groups" in r.stdout and "model=" in r.stdout and "siren*" in r.stdout
    assert "trainer.max_steps=" in r.stdout and "docs/" in r.stdout
    synth = subprocess.run([sys.executable, "-m", "nir.cli.synth", "--help"], capture_output=True, text=True)
    assert synth.returncode == 0 and synth.stdout.startswith("usage: nir-synth"), synth.stderr


def _significant(number: str) -> int:
    mantissa = number.lower().split("e")[0].replace("-", "").replace(".", "").lstrip("0")
    return len(mantissa)


def test_console_is_quiet_and_labels_each_figure(tiny_png, tmp_path):
    """Not a terminal (a pipe): plain step lines, no Lightning banner or advert, one nir line."""
    r = run(
        tiny_overrides(tiny_png, steps=50) + ["trainer.val_check_interval=25", f"hydra.run.dir={tmp_path / 'run'}"],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout + r.stderr
    for noise in ("GPU available", "TPU available", "litlogger", "Tip:", "Epoch", "Automatic Mixed Precision"):
        assert noise not in out, noise
    (start,) = [l for l in r.stdout.splitlines() if l.startswith("nir: Siren (")]
    assert "device cpu, precision 32" in start, start
    steps = [l for l in r.stdout.splitlines() if l.startswith("step ")]
    assert [l.split()[1] for l in steps] == ["25/50", "50/50"]
    loss = steps[-1].split("loss ")[1].split()[0]
    assert _significant(loss) <= 3, steps[-1]
    assert "val psnr" in steps[-1] and steps[-1].endswith("(32)"), steps[-1]  # the precision it was computed in
    (final,) = [l for l in r.stdout.splitlines() if l.startswith("nir: 50 steps")]
    assert "fp32 evaluation of the final field" in final


def test_progress_bar_in_a_terminal_counts_steps(tiny_png, tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    args = [o for o in tiny_overrides(tiny_png, steps=50) if "enable_progress_bar" not in o]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    p = subprocess.Popen(
        NIR_TRAIN + args + [f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert p.wait(timeout=300) == 0
    os.close(master)
    screen = b"".join(chunks).decode(errors="replace").replace("\r", "\n")
    assert "step 50/50 |" in screen and "Epoch" not in screen and "Validation" not in screen, screen[-2000:]
    last = [l for l in screen.splitlines() if l.startswith("step 50/50")][-1]
    assert "val psnr (32)=" in last and _significant(last.split("loss=")[1].split(",")[0]) <= 3, last


@pytest.mark.parametrize(
    "overrides,lr,model",
    [
        ([], 1e-3, "siren"),  # train.yaml's default
        (["data=lognormal3d"], 1e-2, "hashgrid_lt3d_large"),  # the data preset's model, at the rate it was tuned with
        (["data=lognormal3d", "model=fourier_lt3d"], 3e-3, "fourier_lt3d"),  # the model's own beats the data preset's
        (["data=sources3d", "model=hashgrid_lt3d"], 1e-2, "hashgrid_lt3d"),
        (["data=sources3d", "model=hashgrid_lt3d", "optim.lr=5e-3"], 5e-3, "hashgrid_lt3d"),  # the command line wins
        (["data=peaks1d"], 1e-2, "hashgrid_lt1d"),  # the preset brings the 1-D grid (issue 45) at the grid's rate
        (["data=peaks1d", "model=siren"], 1e-3, "siren"),  # a model without settings: the defaults'
    ],
)
def test_one_precedence_rule_command_line_then_model_then_data_preset(overrides, lr, model):
    from nir.run.config import compose_config

    cfg, choices = compose_config(overrides)
    assert choices["model"] == model and cfg.optim.lr == pytest.approx(lr)
    if model == "hashgrid_lt3d":
        assert (
            cfg.optim.groups.encoding.eps == 1e-15 and cfg.trainer.max_steps == 2000
        )  # the grid's, and the preset's schedule


def test_model_auto_picks_by_dimension_and_size():
    from nir.fields.auto import COMPACT_SAMPLES
    from nir.fields.auto import choose_model as choose

    assert choose(1, 16384)[0] == "fourier_lt"
    assert choose(2, 512 * 512)[0] == "siren" and choose(2, 512 * 512)[2] == ["size.ratio=2"]  # sized by the data
    assert choose(2, 40 * 40)[2] == []  # too small to size: SIREN's own width
    assert choose(3, 48**3)[0] == choose(4, COMPACT_SAMPLES)[0] == "hashgrid_lt3d"
    assert choose(3, COMPACT_SAMPLES + 1)[0] == "hashgrid"


@pytest.mark.parametrize(
    "shape,extra,model,lr",
    [
        ((6, 7, 8), [], "hashgrid_lt3d", 1e-2),  # the chosen model's own optimiser settings
        ((6, 7, 8), ["optim.lr=5e-3"], "hashgrid_lt3d", 5e-3),  # the command line still wins
        ((300,), [], "fourier_lt", 3e-3),
        ((6, 7, 8), ["model=siren"], "siren", 1e-3),  # a model named on the command line: no choice made
    ],
)
def test_model_auto_is_the_option_a_user_would_have_typed(tmp_path, capsys, shape, extra, model, lr):
    import numpy as np
    import yaml

    import nir

    arr = np.exp(np.random.default_rng(0).normal(size=shape)).astype(np.float32)
    short = [
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.enable_progress_bar=false",
        "log.images=false",
    ]
    _, m = nir.fit(arr, [*short, *extra], run_dir=tmp_path / "run")
    record = yaml.safe_load((tmp_path / "run" / ".hydra" / "config.yaml").read_text())
    expected = yaml.safe_load((CONF_DIR / "model" / f"{model}.yaml").read_text())
    target = (expected.get("model") or expected).get("_target_") or "nir.fields.EncodedMLP"  # fourier_lt: from fourier
    assert record["model"]["_target_"] == target and record["optim"]["lr"] == pytest.approx(lr)
    said = "model=auto:" in capsys.readouterr().out
    assert said == ("model=siren" not in extra)
    # a config composed by hand (no overrides known) gets the same network and rate
    if not extra:
        from nir.run.resolve import resolve_auto_model

        cfg = make_cfg(["data=array", f"data.path={tmp_path / 'run' / 'signal.npy'}"])
        resolved, _ = resolve_auto_model(cfg, {}, None)
        assert resolved.model._target_ == target and resolved.optim.lr == pytest.approx(lr)


def test_a_model_key_under_model_auto_says_to_choose_a_network(tmp_path):
    from nir.cli.precheck import check_compose

    with pytest.raises(NirError, match="model.hidden_dim needs a chosen network: model=auto"):
        check_compose(["data=array", f"data.path={tmp_path / 'x.npy'}", "model.hidden_dim=8"])


@pytest.mark.parametrize("extra,ratio", [([], 2), (["size.ratio=8"], 8), (["bound.rel=0.1"], None)])
def test_model_auto_sizes_a_2d_siren_by_its_data(tmp_path, capsys, extra, ratio):
    """A 2-D array gets a SIREN smaller than its data (size.ratio=2), unless the run sets its own
    size or bound; the choice is printed and recorded."""
    import numpy as np
    import yaml

    import nir

    arr = np.exp(np.random.default_rng(0).normal(size=(72, 64))).astype(np.float32)
    short = ["trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.enable_progress_bar=false", "log.images=false"]  # fmt: skip
    _, m = nir.fit(arr, [*short, *extra], run_dir=tmp_path / "run")
    record = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())  # what the run trained
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("model=auto:"))
    assert record["model"]["_target_"] == "nir.fields.Siren" and record["size"]["ratio"] == ratio
    assert ("size.ratio=2" in line) == (not extra)
    if ratio is not None:
        assert m["compression_ratio"] >= ratio and record["model"]["hidden_dim"] < 256
