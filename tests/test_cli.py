"""The console script as a user runs it: one-line errors and exit codes, a multirun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides

NIR_TRAIN = [sys.executable, "-m", "nir.train"]


def run(args, cwd):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(NIR_TRAIN + args, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("args,match", [
    (["data.path=/no/such/image.png"], "does not exist"),
    (["model=transformer"], "unknown model 'transformer'; choose one of: fourier, fourier_lt, fourier_lt3d, siren"),
    (["model.hidden_dim=0"], "model.hidden_dim must be a positive integer"),
    (["trainer.max_steps=-5"], "trainer.max_steps must be a positive integer"),
])
def test_bad_input_one_line_error(args, match, tmp_path):
    r = run(args + [f"hydra.run.dir={tmp_path / 'run'}", "trainer.enable_progress_bar=false"], tmp_path)
    assert r.returncode != 0
    lines = [l for l in r.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and match in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_multirun_gives_each_job_its_own_run_dir(tiny_png, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "model=siren,fourier", f"hydra.sweep.dir={sweep}"] + tiny_overrides(tiny_png, steps=10)
    r = run(args, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "metrics.json").exists())
    assert [p.name for p in runs] == ["0", "1"]
    for p in runs:
        assert list((p / "tb").glob("events.out.tfevents.*"))
        assert (p / "field.safetensors").is_file()
