"""Every ``nir-train ...`` example written in a config file's comments runs as written (with a
few steps added). Examples that need a cluster (SLURM) are composed with ``--cfg hydra``."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from nir.run.config import CONF_DIR

NIR_TRAIN = [sys.executable, "-m", "nir.cli.train"]
FAST = ["trainer.max_steps=3", "trainer.val_check_interval=3", "trainer.enable_progress_bar=false", "log.images=false"]


def _examples():
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        for line in path.read_text().splitlines():
            m = re.match(r"\s*#.*?\bnir-train (.*)$", line)
            if m and "=" in m.group(1):
                cmd = (
                    re.sub(r"\s\(.*\)\s*$", "", m.group(1)).replace("...", "").strip()
                )  # drop "(explanation)" and "..."
                yield pytest.param(shlex.split(cmd), id=f"{path.relative_to(CONF_DIR)}: {cmd}")


#: examples another test runs as written, with more checks: the example's arguments -> that test's file
RUN_ELSEWHERE = {"-m hydra/launcher=parallel hydra.launcher.n_jobs=4": "test_sweeps.py"}
ALL_EXAMPLES = list(_examples())
EXAMPLES = [e for e in ALL_EXAMPLES if " ".join(e.values[0]) not in RUN_ELSEWHERE]


def test_examples_run_elsewhere_are_run_there():
    """The parallel launcher's example runs in tests/test_sweeps.py (two jobs that overlap, their
    threads per job), not twice."""
    found = {" ".join(e.values[0]) for e in ALL_EXAMPLES}
    for example, where in RUN_ELSEWHERE.items():
        assert example in found  # still the config's example
        assert f'"{example}"' in (Path(__file__).parent / where).read_text()


def test_the_config_comments_hold_examples():
    assert len(ALL_EXAMPLES) >= 5  # the search, parallel and slurm presets' examples are collected


@pytest.mark.parametrize("args", EXAMPLES)
def test_config_comment_example_runs(args, tmp_path):
    extra = [f"hydra.sweep.dir={tmp_path / 'sweep'}", f"hydra.run.dir={tmp_path / 'run'}", *FAST]
    if not any(a.startswith("model.hidden_dim") for a in args):
        extra.append("model.hidden_dim=16")
    if "hydra/sweeper=search" in args:
        extra.append("hydra.sweeper.n_trials=2")
    if "hydra/launcher=slurm" in args:  # no cluster here: the example must compose (--cfg excludes -m)
        args = [a for a in args if a != "-m"]
        extra.append("--cfg=hydra")
    r = subprocess.run(NIR_TRAIN + args + extra, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    if "--cfg=hydra" in extra:
        assert "submitit" in r.stdout and "partition: gpu" in r.stdout
    else:
        assert "sweep: " in r.stdout and "0 failed" not in r.stdout and "failed" not in r.stdout.split("sweep: ")[-1]
