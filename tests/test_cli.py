"""The console script as a user runs it: a multirun. (Bad-input exits: tests/test_reliability.py.)"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import tiny_overrides

NIR_TRAIN = [sys.executable, "-m", "nir.train"]


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
    for p in runs:
        assert list((p / "tb").glob("events.out.tfevents.*"))
        assert (p / "field.safetensors").is_file()
