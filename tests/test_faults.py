"""Faults lose nothing (issue 25): signals checkpoint at the current step and resume=auto ends at
the uninterrupted field; a run directory in use is refused; a failed write is one line and leaves
the earlier file; a TensorBoard failure does not stop the run; corrupt files are one line."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from nir import checkpoint, load_field
from nir.checkpoint import WriteError
from nir.errors import NirError
from nir.run.run import train, train_field
from nir.training.faults import LOCK_NAME, Interrupted
from tests.conftest import make_cfg, smooth_image, tiny_overrides

ENV = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
NIR_TRAIN = [sys.executable, "-m", "nir.cli.train"]


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    import imageio.v3 as iio

    p = tmp_path_factory.mktemp("img") / "ok.png"
    iio.imwrite(p, smooth_image(), extension=".png")
    return p


def _ov(image: Path, steps: int = 24, *extra: str) -> list[str]:
    return [*tiny_overrides(image, steps=steps), "log.images=false", "trainer.val_check_interval=8", *extra]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_field(run).state_dict()


def _assert_same_field(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k  # bitwise: CPU training is deterministic


# ----------------------------------------------------------------------------- signals


class _SignalAt(pl.Callback):
    """Sends a real signal to this process after optimizer step ``step``."""

    def __init__(self, signum: int, step: int) -> None:
        self.signum, self.step = signum, step

    def on_train_batch_end(self, trainer, *_):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGUSR1, signal.SIGTERM])
def test_a_signal_checkpoints_the_current_step_and_resume_auto_ends_at_the_same_field(signum, image, tmp_path):
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    ref = tmp_path / "ref"
    train(make_cfg(_ov(image, 24, "resume=auto")), ref)  # resume=auto with no checkpoint: starts from 0
    run = tmp_path / "run"
    with pytest.raises(Interrupted) as e:
        train_field(make_cfg(_ov(image)), run, callbacks=[_SignalAt(signum, 13)])  # between validations
    # the signal arrives after step 13's check: step 14, already under way, completes, then the checkpoint
    assert e.value.exit_status == 128 + signum and e.value.step == 14
    assert f"interrupted by {signal.Signals(signum).name} at step 14 of 24" in str(e.value)
    assert "resume=last" in str(e.value) and "\n" not in str(e.value)
    ckpt = checkpoint.load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 14  # the current step, not the last validation's (8)
    m = json.loads((run / "metrics.json").read_text())
    assert m["status"] == "interrupted" and m["step"] == 14 and m["signal"] == signum
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the process's handlers are back
    assert not (run / "field.safetensors").exists()
    train(make_cfg(_ov(image, 24, "resume=auto")), run)
    assert json.loads((run / "metrics.json").read_text())["steps"] == 24
    _assert_same_field(ref, run)


@pytest.mark.slow
def test_two_processes_in_one_run_directory_the_second_is_refused_then_takes_over(image, tmp_path):
    """A live process holds the run directory (the lock nir takes); nir-train into it is refused
    with one line and touches nothing; once the holder is killed (-9), a run takes over."""
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from nir.training.faults import RunLock; RunLock({str(run)!r}).acquire(); print('held', flush=True); input()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        (run / "earlier.txt").write_text("the live run's")
        before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
        second = subprocess.run(
            NIR_TRAIN + [f"data.path={image}", "trainer.max_steps=4", f"hydra.run.dir={run}"],
            capture_output=True, text=True, env=ENV, timeout=300,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr[-2000:]
        errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"run directory '{run}' is in use by a live run (pid {holder.pid} on " in errors[0]
        assert "Traceback" not in second.stderr
        assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # nothing written, nothing added
    finally:
        holder.kill()
        holder.wait(timeout=60)
    m = train(make_cfg(_ov(image, 8)), run)
    assert m["status"] == "ok"


# ----------------------------------------------------------------------------- the run directory's lock


def test_a_lock_left_by_a_dead_run_is_taken_over_with_one_line(image, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text("pid 999999 on elsewhere since 2026-01-01 00:00:00\n")  # nobody holds the flock
    train(make_cfg(_ov(image, 8)), run)
    out = capsys.readouterr().out
    assert "taking over the lock of a run that ended without releasing it (pid 999999" in out
    assert (run / LOCK_NAME).read_text() == ""  # released cleanly at the end: the next run says nothing
    train(make_cfg(_ov(image, 8)), run)
    assert "taking over" not in capsys.readouterr().out


def test_a_live_lock_refuses_the_run_before_it_writes(image, tmp_path):
    from nir.training.faults import RunLock

    run = tmp_path / "run"
    run.mkdir()
    held = RunLock(run)
    held.acquire()
    try:
        with pytest.raises(NirError, match=r"is in use by a live run \(pid \d+ on .* since "):
            train_field(make_cfg(_ov(image, 8)), run, overrides=["x=1"])
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # no record, no checkpoint, no metrics
    finally:
        held.release()


# ----------------------------------------------------------------------------- failed writes


def _fail_writes_to(monkeypatch, target: Path) -> None:
    """The temporary file atomic_write_bytes opens for ``target`` gets ENOSPC on its first write."""
    real_open = open

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, a):
            return getattr(self.f, a)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        p = Path(path)
        return Full(f) if p.parent == target.parent and p.name.startswith(f".{target.name}.") else f

    monkeypatch.setattr(checkpoint, "open", fake_open, raising=False)


WRITES = [
    ".hydra/overrides.yaml",
    ".hydra/config.yaml",
    "config.yaml",
    "checkpoints/last.ckpt",
    "field.safetensors",
    "metrics.json",
]


@pytest.mark.parametrize("name", WRITES)
def test_a_full_disk_at_each_write_is_one_line_and_the_earlier_file_stays(name, image, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train_field(make_cfg(_ov(image, 8)), run, overrides=["first"])  # an earlier complete run
    target = run / name
    before = target.read_bytes()
    _fail_writes_to(monkeypatch, target)
    with pytest.raises(WriteError) as e:
        train_field(make_cfg(_ov(image, 8, "seed=3")), run, overrides=["second"])
    assert e.value.exit_status == 74 and "\n" not in str(e.value)
    assert f"could not write '{target}': No space left on device (" in str(e.value) and " free there)" in str(e.value)
    assert target.read_bytes() == before  # the earlier file whole
    assert not [p for p in run.rglob(".*.tmp")]  # no temporary file left behind
    monkeypatch.undo()
    train(make_cfg(_ov(image, 8)), run)  # the lock was released: the directory is usable again


def test_nir_train_on_a_full_disk_is_one_line_and_exit_74(tmp_path):
    """The console script's path, in a subprocess whose writes of field.safetensors fail."""
    code = (
        "import errno, sys\n"
        "from nir import checkpoint\n"
        "real = checkpoint.atomic_write_bytes\n"
        "def full(path, write):\n"
        "    if path.name == 'field.safetensors':\n"
        "        raise checkpoint.WriteError(path, OSError(errno.ENOSPC, 'No space left on device'))\n"
        "    real(path, write)\n"
        "checkpoint.atomic_write_bytes = full\n"
        "from nir.cli.train import main\n"
        "sys.argv = ['nir-train'] + sys.argv[1:]\n"
        "main()\n"
    )
    args = ["data=peaks1d", "data.n=256", "model.hidden_dim=16", "trainer.max_steps=4", "log.images=false",
            f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 74, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "could not write" in errors[0] and "field.safetensors" in errors[0], r.stderr
    assert "Traceback" not in r.stderr


def test_tensorboard_failing_does_not_stop_the_run(image, tmp_path, monkeypatch, capsys):
    from torch.utils.tensorboard.writer import FileWriter

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(FileWriter, "add_event", full)
    monkeypatch.setattr(FileWriter, "add_summary", full)
    m = train(make_cfg(_ov(image, 16, "log.images=true")), tmp_path / "run")
    assert m["status"] == "ok" and (tmp_path / "run" / "field.safetensors").is_file()
    err = capsys.readouterr().err
    assert err.count("warning: TensorBoard events in") == 1 and "TensorBoard is off for the rest of the run" in err


# ----------------------------------------------------------------------------- corrupt files


@pytest.fixture(scope="module")
def trained(image, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    train(make_cfg(_ov(image, 8)), run)
    return run


def _damage(path: Path, kind: str) -> None:
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "corrupt":  # a few bytes overwritten: inside the spec's JSON (a field file), or the pickle's
        i = data.index(b"nir_spec") + 30 if data[8:9] == b"{" else data.index(b"data.pkl") + 60
        path.write_bytes(data[:i] + b"}}}}" + data[i + 4 :])
    elif kind == "bad-json":  # the spec's first bytes overwritten: the header parses, the spec does not
        i = data.index(b'"nir_spec":"') + len(b'"nir_spec":"')
        path.write_bytes(data[:i] + b"xxxx" + data[i + 4 :])
    elif kind == "foreign":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))


@pytest.mark.parametrize("kind", ["truncated", "corrupt", "bad-json", "foreign", "newer"])
def test_corrupt_field_files_are_one_line(kind, trained, tmp_path):
    p = tmp_path / "field.safetensors"
    if kind == "newer":
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        with safe_open(str(trained / "field.safetensors"), "pt") as f:
            meta = f.metadata()
        save_file(load_file(trained / "field.safetensors"), str(p), metadata={**meta, "nir_format": "2"})
    else:
        p.write_bytes((trained / "field.safetensors").read_bytes())
        _damage(p, kind)
    with pytest.raises(NirError) as e:
        load_field(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)
    if kind == "corrupt":  # the header still parses; the spec inside it is damaged
        assert f"field file '{p}' is corrupt" in str(e.value)
    if kind == "bad-json":
        assert f"field file '{p}' is corrupt: its spec is not valid JSON" in str(e.value)
    if kind == "newer":
        assert "written by a newer nir (file format 2" in str(e.value)


@pytest.mark.parametrize("kind", ["truncated", "corrupt", "foreign", "newer"])
def test_corrupt_checkpoints_are_one_line_for_load_and_resume(kind, trained, image, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    p = run / "checkpoints" / "last.ckpt"
    if kind == "newer":
        ckpt = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True)
        torch.save({**ckpt, "nir_format": 2}, p)
    else:
        p.write_bytes((trained / "checkpoints" / "last.ckpt").read_bytes())
        _damage(p, kind)
    before = p.read_bytes()
    with pytest.raises(NirError) as e:
        load_field(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)
    with pytest.raises(NirError) as e:
        train(make_cfg(_ov(image, 8, "resume=auto")), run)
    assert "\n" not in str(e.value) and str(p) in str(e.value)
    assert p.read_bytes() == before


def test_nir_field_on_a_corrupt_file_is_one_line_and_exit_2(trained, tmp_path, capsys):
    from nir.cli.field import main

    p = tmp_path / "field.safetensors"
    p.write_bytes((trained / "field.safetensors").read_bytes())
    _damage(p, "corrupt")
    with pytest.raises(SystemExit) as e:
        main(["sample", str(p), str(tmp_path / "out.npy")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: field file '{p}' is corrupt"), err


@pytest.mark.parametrize("record", ["metrics.json", ".hydra/overrides.yaml"])
def test_corrupt_sweep_records_are_one_line_for_nir_summarize(record, tmp_path, capsys):
    from nir.cli.summarize import main

    for job in ("0", "1"):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n")
        (tmp_path / job / "metrics.json").write_text('{"status": "ok", "psnr": 30.0}')
    bad = tmp_path / "1" / record
    bad.write_text('{"status": "ok", "psn' if record.endswith(".json") else "- [unclosed\n")
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "corrupt" in err[0] and str(bad) in err[0]


def test_a_corrupt_swept_keys_record_is_one_line(tmp_path):
    from nir.run.sweep import SWEPT_FILE, read_swept

    (tmp_path / SWEPT_FILE).write_text('["seed", ')
    with pytest.raises(NirError, match="sweep record .* is corrupt"):
        read_swept(tmp_path)


def test_a_sweep_summary_reports_an_interrupted_job_as_interrupted(tmp_path):
    from nir.run.sweep import collect, counts

    for job, status in (("0", "ok"), ("1", "interrupted")):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n")
        (tmp_path / job / "metrics.json").write_text(json.dumps({"status": status, "psnr": 30.0}))
    assert counts(collect(tmp_path)) == {"ok": 1, "interrupted": 1}


def test_a_failed_sweep_job_keeps_its_interrupted_status(tmp_path):
    from omegaconf import OmegaConf

    from nir.cli.train import _record_failed_job

    (tmp_path / "metrics.json").write_text(json.dumps({"status": "interrupted", "step": 5}))
    hc = OmegaConf.create({"overrides": {"task": ["seed=1"]}, "job": {"num": 3}})
    _record_failed_job(tmp_path, OmegaConf.create({"seed": 1}), hc, Interrupted(15, 5, 10, tmp_path / "x", tmp_path))
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "interrupted"
    assert (tmp_path / ".hydra" / "overrides.yaml").is_file()  # listed by nir-summarize


def test_nir_summarize_on_a_full_disk_is_one_line_and_exit_74(tmp_path, monkeypatch, capsys):
    from nir.cli.summarize import main

    (tmp_path / "0" / ".hydra").mkdir(parents=True)
    (tmp_path / "0" / ".hydra" / "overrides.yaml").write_text("- seed=0\n")
    (tmp_path / "0" / "metrics.json").write_text('{"status": "ok", "psnr": 30.0}')
    (tmp_path / "summary.md").write_text("the earlier summary")
    _fail_writes_to(monkeypatch, tmp_path / "summary.md")
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path)])
    assert e.value.code == 74
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"could not write '{tmp_path / 'summary.md'}'" in err[0]
    assert (tmp_path / "summary.md").read_text() == "the earlier summary"


def test_inside_a_slurm_job_sigusr1_is_left_to_lightnings_auto_requeue(monkeypatch):
    from nir.training.faults import signals_to_catch

    for k in ("SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(k, raising=False)
    assert set(signals_to_catch()) == {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1}
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "field")  # a batch job (not an interactive "bash" allocation)
    assert set(signals_to_catch()) == {signal.SIGTERM, signal.SIGINT}


def test_a_lock_file_that_cannot_be_created_is_one_write_error(tmp_path, monkeypatch):
    from nir.training import faults
    from nir.training.faults import RunLock

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(faults.os, "open", full)
    with pytest.raises(WriteError, match=r"could not write '.*\.nir-lock': No space left on device"):
        RunLock(tmp_path).acquire()
