"""Reliability: one-line errors for bad input, divergence caught, crash-safe resume, determinism."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nir.errors import NirError
from nir.run.run import train
from tests.conftest import make_cfg, smooth_image, tiny_overrides

NIR_TRAIN = [sys.executable, "-m", "nir.cli.train"]
ENV = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import imageio.v3 as iio

    d = tmp_path_factory.mktemp("inputs")
    iio.imwrite(d / "ok.png", smooth_image(), extension=".png")
    (d / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (d / "text.png").write_text("not an image at all")
    (d / "x.gif").write_bytes(b"GIF89a")
    np.save(d / "empty.npy", np.zeros((0,)))
    np.save(d / "scalar.npy", np.array(1.0))
    np.save(d / "five.npy", np.zeros((2, 2, 2, 2, 2)))
    np.save(d / "text.npy", np.array(["a", "b"]))
    np.save(d / "nan.npy", np.array([1.0, np.nan]))
    np.save(d / "neg.npy", np.linspace(-1, 1, 64))
    np.save(d / "const.npy", np.full(64, 3.0))
    (d / "a_file").write_text("not a directory")
    return d


FAST = ["trainer.max_steps=5", "trainer.enable_progress_bar=false", "log.images=false"]
# (case, overrides, expected words in the one-line error); {d} is the inputs folder
CASES = [
    ("missing path", ["data.path={d}/missing.png"], "does not exist"),
    ("directory", ["data.path={d}"], "is a directory"),
    ("corrupt image", ["data.path={d}/bad.png"], "cannot be decoded as a PNG image"),
    ("text as image", ["data.path={d}/text.png"], "cannot be decoded as a PNG image"),
    ("unsupported extension", ["data.path={d}/x.gif"], "unsupported extension"),
    ("empty array", ["data=array", "data.path={d}/empty.npy"], "is empty"),
    ("0-D array", ["data=array", "data.path={d}/scalar.npy"], "0 grid axes"),
    ("5-D array", ["data=array", "data.path={d}/five.npy"], "5 grid axes"),
    ("non-numeric", ["data=array", "data.path={d}/text.npy"], "non-numeric dtype"),
    ("NaN values", ["data=array", "data.path={d}/nan.npy", "data.nan=error"], "contains 1 missing (NaN) samples"),
    ("negative with log", ["data=array", "data.path={d}/neg.npy", "loss=log_mse"], "transform log needs values >= 0"),
    ("constant field", ["data=array", "data.path={d}/const.npy"], "is constant"),
    # which check refuses a key: a plain `key=value` that is not in the config is refused by Hydra's
    # struct mode and rewritten into nir's message (nir.cli.precheck.check_compose); a key added with `+` is
    # accepted by Hydra and refused by nir's own check (nir.run.config.check_keys). One case of each.
    ("unknown key", ["model.depth=3"], "unknown config key 'model.depth'"),  # Hydra's struct check
    (
        "added key",
        ["+trainer.max_step=5"],
        "unknown config key 'trainer.max_step'; did you mean trainer.max_steps",
    ),  # check_keys
    ("unknown option", ["loss=focal"], "unknown loss 'focal'"),
    ("width", ["model.hidden_dim=0"], "model.hidden_dim must be a positive integer"),
    ("layers", ["model.num_layers=-1"], "model.num_layers must be a positive integer"),
    ("steps", ["trainer.max_steps=0"], "trainer.max_steps must be a positive integer"),
    ("learning rate", ["optim.lr=0"], "optim.lr must be a positive number"),
    ("floor", ["data=peaks1d", "data.n=64", "transform.floor=-1"], "transform.floor must be a positive number"),
    (
        "loss floor",
        ["data=peaks1d", "data.n=64", "loss=rel_l2", "loss.floor=0"],
        "loss.floor must be a positive number",
    ),
    ("frequency", ["model=fourier", "model.encoding.sigma=0"], "model.encoding.sigma must be a positive number"),
    ("siren w0", ["model.w0_first=-30"], "model.w0_first must be a positive number"),
    ("output dir", ["hydra.run.dir={d}/a_file/run"], "cannot be created"),
    ("output dir in /proc", ["hydra.run.dir=/proc/nir-test/run"], "cannot be created"),
]


# the console script end to end (a subprocess: one `error:` line, exit 2, no traceback) for one case
# of each place a problem is found: argv before Hydra (unknown key, added key, output dir), reading
# the signal (missing path, NaN values), building a component (width); every case, these included,
# also runs in-process below (the same checks, the same message, nothing touched), which is fast
CONSOLE = {"missing path", "NaN values", "unknown key", "added key", "width", "output dir"}


def _args(overrides: list[str], files: Path, tmp_path: Path) -> list[str]:
    args = [o.format(d=files) for o in overrides]
    if not any(a.startswith("hydra.run.dir") for a in args):
        args.append(f"hydra.run.dir={tmp_path / 'new'}")
    if not any(a.startswith("data.path") or a.startswith("data=") for a in args):
        args.append(f"data.path={files / 'ok.png'}")
    return args + [f for f in FAST if f.split("=")[0] not in {a.split("=")[0] for a in args}]


def _earlier(tmp_path: Path) -> dict[Path, int]:
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "metrics.json").write_text('{"status": "ok"}')
    return {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}


@pytest.mark.parametrize("case,overrides,expect", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_its_message_and_touches_nothing(case, overrides, expect, files, tmp_path):
    """In-process, as nir-train does it: the argv checks, then the run (nir.cli.precheck.precheck, nir.run.run.train)."""
    from nir.cli.precheck import precheck

    before = _earlier(tmp_path)
    args = _args(overrides, files, tmp_path)
    with pytest.raises(NirError) as e:
        precheck(args)
        train(make_cfg([a for a in args if not a.startswith("hydra.")]), tmp_path / "new")
    assert expect in str(e.value) and "\n" not in str(e.value)
    assert {p: p.stat().st_mtime_ns for p in before if p.exists()} == before
    assert not (tmp_path / "new" / "metrics.json").exists()


@pytest.mark.parametrize(
    "case,overrides,expect", [c for c in CASES if c[0] in CONSOLE], ids=sorted(CONSOLE, key=[c[0] for c in CASES].index)
)
def test_bad_input_is_one_line_on_the_console_and_touches_nothing(case, overrides, expect, files, tmp_path):
    before = _earlier(tmp_path)
    args = _args(overrides, files, tmp_path)
    r = subprocess.run(NIR_TRAIN + args, capture_output=True, text=True, env=ENV, timeout=300, cwd=tmp_path)
    assert r.returncode == 2
    err = [l for l in r.stderr.splitlines() if l.strip()]
    lines = [l for l in err if l.startswith("error:")]
    assert len(lines) == 1 and expect in lines[0], r.stderr[-1500:]
    assert "Traceback" not in r.stderr and "pip install" not in r.stderr  # no stack, no plugin advice
    assert {p: p.stat().st_mtime_ns for p in before if p.exists()} == before
    assert not (tmp_path / "new" / "metrics.json").exists()


@pytest.mark.parametrize(
    "override,expect",
    [
        # without +: Hydra's struct mode refuses, check_compose rewrites its error
        ("trainer.max_step=5", "unknown config key 'trainer.max_step'; did you mean trainer.max_steps"),
        ("model.depth=3", "unknown config key 'model.depth'"),
        # with +: Hydra adds the key, nir.run.config.check_keys refuses it (top level, a component's arguments)
        ("+lr=1", "unknown config key 'lr'; did you mean optim.lr"),
        ("+model.hiden_dim=3", "unknown config key 'model.hiden_dim'; did you mean model.hidden_dim"),
        ("+data.foo=1", "unknown config key 'data.foo'"),
    ],
)
def test_unknown_keys_name_the_closest_valid_ones(override, expect, tmp_path):
    """The argv checks in-process (the console's one line for these: the subprocess cases above)."""
    from nir.cli.precheck import precheck

    with pytest.raises(NirError, match=re.escape(expect)):
        precheck([override, f"hydra.run.dir={tmp_path / 'run'}"])


def test_batch_larger_than_signal_is_clamped(files, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="nir"):
        m = train(make_cfg(tiny_overrides(files / "ok.png", steps=3) + ["batch_size=100000"]), tmp_path / "r")
    assert m["status"] == "ok"
    assert any("using full batches of 1280" in r.getMessage() for r in caplog.records)


def test_divergence_stops_keeps_last_good_checkpoint(files, tmp_path):
    from nir import load_field

    run = tmp_path / "run"
    base = tiny_overrides(files / "ok.png", steps=20) + ["model=fourier", "model.hidden_dim=32"]
    train(make_cfg(base), run)
    good = (run / "checkpoints" / "last.ckpt").read_bytes()
    # resume on values whose squared error overflows fp32 (same grid and channels): the loss
    # becomes inf at step 20, the weights NaN right after; the guard must stop within 5 steps
    huge = tmp_path / "huge.npy"
    np.save(huge, np.full((32, 40, 3), 3e38, dtype=np.float32) * np.linspace(0.1, 1, 3, dtype=np.float32))
    bad = [o for o in base if not o.startswith(("trainer.max_steps", "data.path"))] + [
        "trainer.max_steps=200",
        "check_finite_every=5",
        "resume=last",
        "data=array",
        f"data.path={huge}",
        "data.channel_axis=-1",
        "loss=mse",  # in the image run's space (loss=auto would scale an array: transform=standardize)
    ]
    with pytest.raises(NirError, match=r"diverged at step \d+: loss (nan|inf).*precision 32.*likely causes"):
        train(make_cfg(bad), run)
    m = json.loads((run / "metrics.json").read_text())
    assert m["status"] == "diverged" and m["step"] >= 20 and m["precision"] == "32"
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == good
    field = load_field(run / "checkpoints" / "last.ckpt")
    assert torch.isfinite(field.sample()).all()


def test_nonfinite_gradient_before_validation_is_caught_and_not_checkpointed(files, tmp_path, monkeypatch):
    """A finite loss whose gradient is NaN on the last step before a validation: the weights turn
    NaN and no later loss exists to flag it; the check of the weights at validation must."""
    from nir.training.module import FieldModule

    real = FieldModule.forward_loss
    steps = []

    def poisoned(self, data, idx, target):
        steps.append(self.global_step)
        loss, out = real(self, data, idx, target)
        if self.global_step == 9:  # the 10th step; validation follows it
            zero = (self.field.network.head.bias * 0).sum()  # adds 0 to the loss ...
            zero.register_hook(lambda g: g * float("nan"))  # ... and NaN to the gradient
            loss = loss + zero
        return loss, out

    monkeypatch.setattr(FieldModule, "forward_loss", poisoned)
    run = tmp_path / "run"
    cfg = tiny_overrides(files / "ok.png", steps=30) + ["trainer.val_check_interval=5", "check_finite_every=1000"]
    with pytest.raises(NirError, match=r"diverged at step 10: loss nan"):  # found at the validation of step 10
        train(make_cfg(cfg), run)
    assert max(steps) == 9  # stopped there: no step ran on the NaN weights (the losses would flag it only later)
    field = __import__("nir").load_field(run / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(p).all() for p in field.parameters())


def test_same_seed_same_result(files, tmp_path):
    ov = tiny_overrides(files / "ok.png", steps=15)
    a = train(make_cfg(ov), tmp_path / "a")
    b = train(make_cfg(ov), tmp_path / "b")
    assert a["psnr"] == b["psnr"]
    c = train(make_cfg(ov + ["seed=1"]), tmp_path / "c")
    assert c["psnr"] != a["psnr"]


def test_resume_restores_sampler_optimizer_and_schedule(files, tmp_path):
    """20 steps + resume to 40 gives the same weights as 40 uninterrupted steps."""
    from nir import load_field

    # constant schedule: the cosine one depends on max_steps, which this test changes on resume
    # (and float32 storage: quantisation-aware training starts at a share of max_steps too)
    ov = tiny_overrides(files / "ok.png", steps=40) + [
        "batch_size=300",
        "optim.schedule=constant",
        "store.dtype=float32",
    ]
    train(make_cfg(ov), tmp_path / "full")
    split = [o if not o.startswith("trainer.max_steps") else "trainer.max_steps=20" for o in ov]
    train(make_cfg(split), tmp_path / "split")
    train(make_cfg(ov + ["resume=last"]), tmp_path / "split")
    a = load_field(tmp_path / "full").sample()
    b = load_field(tmp_path / "split").sample()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


KILL_RUN = [
    "data=peaks1d",
    "data.n=4096",
    "batch_size=1024",
    "model.hidden_dim=32",
    "trainer.max_steps=120",
    "trainer.val_check_interval=10",
    "trainer.enable_progress_bar=false",
    "log.images=false",
    "trainer.precision=32",
]


def _run(run_dir: Path, extra=()) -> subprocess.Popen:
    return subprocess.Popen(
        NIR_TRAIN + KILL_RUN + [f"hydra.run.dir={run_dir}", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
    )


@pytest.fixture(scope="module")
def kill_ref(tmp_path_factory) -> Path:
    """The uninterrupted KILL_RUN, for the kill and signal tests to compare with."""
    ref = tmp_path_factory.mktemp("kill") / "ref"
    p = _run(ref)
    assert p.wait(timeout=600) == 0, p.stdout.read()[-2000:]
    return ref


@pytest.mark.slow
def test_sigterm_to_nir_train_checkpoints_the_step_and_resume_auto_ends_at_the_same_field(kill_ref, tmp_path):
    """The command line end to end (issue 25): SIGTERM mid-run (what SLURM and kill send) is one
    line and exit 143 after a checkpoint at the current step; the same command again with
    resume=auto ends at the uninterrupted field, bit for bit."""
    from nir import load_field
    from nir.checkpoint import load_checkpoint

    run = tmp_path / "run"
    p = _run(run, ["resume=auto"])
    out = []
    for line in p.stdout:
        out.append(line)
        if line.startswith("step 30/"):
            p.send_signal(signal.SIGTERM)
            break
    out.append(p.stdout.read())
    assert p.wait(timeout=120) == 128 + signal.SIGTERM, "".join(out)[-2000:]
    errors = [line for line in "".join(out).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "error: interrupted by SIGTERM at step" in errors[0], "".join(out)[-2000:]
    assert "Traceback" not in "".join(out)
    step = json.loads((run / "metrics.json").read_text())["step"]
    assert 30 <= step < 120 and load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == step
    q = _run(run, ["resume=auto"])
    rest = q.stdout.read()
    assert q.wait(timeout=600) == 0, rest[-2000:]
    assert f"resume=auto: resuming from {run / 'checkpoints' / 'last.ckpt'} at step {step}" in rest
    assert json.loads((run / "metrics.json").read_text())["steps"] == 120
    a, b = load_field(kill_ref).state_dict(), load_field(run).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_sigkill_at_several_moments_then_resume_matches(kill_ref, tmp_path):
    """One run killed at step 20, resumed and killed again at step 50, resumed and killed at step
    90 (each at another instant: during the checkpoint write, just after, ...), then resumed to the
    end: every kill leaves loadable checkpoints and no partial file, and the field is the
    uninterrupted run's."""
    from nir import load_field

    ref_psnr = json.loads((kill_ref / "metrics.json").read_text())["psnr"]
    run = tmp_path / "kill"
    for i, kill_at in enumerate(["step 20/", "step 50/", "step 90/"]):
        p = _run(run, ["resume=last"] if i else [])
        for line in p.stdout:
            if line.startswith(kill_at):
                time.sleep(0.05 * i)  # vary the instant: during the checkpoint write, just after, ...
                p.send_signal(signal.SIGKILL)
                break
        p.wait(timeout=60)
        assert p.returncode == -signal.SIGKILL
        assert not (run / "metrics.json").exists()
        ckpts = run / "checkpoints"
        # a kill during a write may leave a hidden temporary file; never a partial file under a real name
        visible = {p.name for p in ckpts.iterdir() if not p.name.startswith(".")}
        assert visible <= {"last.ckpt", "best.ckpt"}, visible
        assert all(p.suffix == ".tmp" for p in ckpts.iterdir() if p.name.startswith(".")), list(ckpts.iterdir())
        load_field(ckpts / "last.ckpt")
    q = _run(run, ["resume=last"])
    out = q.stdout.read()
    assert q.wait(timeout=600) == 0, out[-2000:]
    m = json.loads((run / "metrics.json").read_text())
    assert m["steps"] == 120
    assert m["psnr"] == pytest.approx(ref_psnr, abs=0.05)


@pytest.mark.parametrize("network,w0_named", [("siren", True), ("fourier", False)])
def test_the_divergence_message_lists_the_networks_own_causes(network, w0_named):
    """A network says what makes it diverge (``divergence_causes``): SIREN names its w0."""
    from types import SimpleNamespace

    from nir.fields import FourierMLP, Siren
    from nir.training.guards import Diverged, DivergenceGuard

    net = Siren(2, 1, hidden_dim=8, num_layers=1) if network == "siren" else FourierMLP(2, 1, 8, 1, num_features=4)
    health = SimpleNamespace(
        nonfinite_steps=torch.tensor(1), first_bad_step=torch.tensor(3), first_bad_loss=torch.tensor(float("inf"))
    )
    module = SimpleNamespace(health=health, field=SimpleNamespace(network=net))
    with pytest.raises(Diverged) as e:
        DivergenceGuard()._check(SimpleNamespace(precision="32-true"), module)
    assert ("w0 too large for the signal (model.w0, model.w0_first)" in str(e.value)) == w0_named
