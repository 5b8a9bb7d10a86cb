"""Experiments at scale: multiruns that survive failures, summaries, launchers, search, DDP."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from nir.run.sweep import collect, sort_rows

NIR_TRAIN = [sys.executable, "-m", "nir.cli.train"]
BIN = Path(sys.executable).parent
ENV = dict(os.environ, PYTHONWARNINGS="ignore")
TINY = [
    "trainer.max_steps=6",
    "trainer.val_check_interval=6",
    "trainer.enable_progress_bar=false",
    "log.images=false",
    "data.sample=camera",
    "model.hidden_dim=16",
    "trainer.precision=32",
]


# two CPU processes (gloo), 20 quiet fp32 steps with one validation: the DDP tests' common setting
DDP_SPAWN_2 = [
    "trainer.strategy=ddp_spawn",
    "trainer.devices=2",
    "trainer.max_steps=20",
    "trainer.val_check_interval=20",
    "trainer.enable_progress_bar=false",
    "trainer.precision=32",
    "log.images=false",
]


def run(args, cwd, timeout=600):
    return subprocess.run(NIR_TRAIN + args, cwd=cwd, capture_output=True, text=True, env=ENV, timeout=timeout)


@pytest.fixture(scope="module")
def sweep_2x2(tmp_path_factory) -> Path:
    """One 2x2 multirun (model x loss), shared by the tests that read a finished sweep."""
    tmp = tmp_path_factory.mktemp("sweep2x2")
    sweep = tmp / "sweep"
    r = run(["-m", "model=siren,fourier", "loss=mse,l1", f"hydra.sweep.dir={sweep}", *TINY], tmp)
    assert r.returncode == 0, r.stderr[-2000:]
    return sweep


def test_2x2_sweep_four_runs_and_summary(sweep_2x2):
    sweep = sweep_2x2
    assert sorted(p.name for p in sweep.iterdir() if (p / "metrics.json").is_file()) == ["0", "1", "2", "3"]
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    assert {r["overrides"] for r in rows} == {
        "model=siren loss=mse",
        "model=siren loss=l1",
        "model=fourier loss=mse",
        "model=fourier loss=l1",
    }
    psnr = [float(r["psnr"]) for r in rows]
    assert psnr == sorted(psnr, reverse=True)
    assert "| job | overrides | status |" in (sweep / "summary.md").read_text()


def test_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    r = run(
        ["-m", "model.hidden_dim=16,0,8", f"hydra.sweep.dir={sweep}", *[t for t in TINY if "hidden_dim" not in t]],
        tmp_path,
    )
    assert r.returncode == 1, r.stderr[-2000:]  # the exit status is the number of failed jobs
    assert "error: job 1 failed: model.hidden_dim must be a positive integer" in r.stderr
    rows = {row["overrides"]: row for row in collect(sweep)}
    assert rows["model.hidden_dim=0"]["status"] == "failed"
    assert "positive integer" in rows["model.hidden_dim=0"]["error"]
    assert rows["model.hidden_dim=16"]["status"] == rows["model.hidden_dim=8"]["status"] == "ok"
    assert "3 jobs (1 failed, 2 ok)" in r.stdout


def test_nir_summarize_cli_sorts_by_metric(sweep_2x2, tmp_path):
    out = subprocess.run(
        [str(BIN / "nir-summarize"), str(sweep_2x2), "--sort", "num_params"], capture_output=True, text=True, env=ENV
    )
    assert out.returncode == 0, out.stderr
    with open(sweep_2x2 / "summary.csv") as f:
        params = {r["job"]: int(r["num_params"]) for r in csv.DictReader(f)}
    assert len(set(params.values())) == 2  # siren and fourier differ: the sort has something to order
    jobs = [l.split("|")[1].strip() for l in out.stdout.splitlines() if re.match(r"\| \d ", l)]
    assert sorted(jobs) == sorted(params) and [params[j] for j in jobs] == sorted(params.values())  # fewest first
    bad = subprocess.run([str(BIN / "nir-summarize"), str(tmp_path / "nope")], capture_output=True, text=True, env=ENV)
    assert bad.returncode == 2 and bad.stderr.startswith("error:")


def test_sort_rows_handles_direction_and_missing():
    rows = [
        {"psnr": 30.0, "worst_decade_median": 0.5},
        {"psnr": float("nan")},
        {"psnr": 40.0, "worst_decade_median": 0.1},
    ]
    assert [r["psnr"] for r in sort_rows(rows, "psnr")][:2] == [40.0, 30.0]
    assert [r.get("worst_decade_median") for r in sort_rows(rows, "worst_decade_median")] == [0.1, 0.5, None]


#: conf/hydra/launcher/parallel.yaml's own example, run as written (tests/test_config_examples.py leaves it to this test)
PARALLEL_EXAMPLE = "-m hydra/launcher=parallel hydra.launcher.n_jobs=4"


def test_parallel_preset_runs_two_jobs_at_once(tmp_path):
    sweep = tmp_path / "sweep"
    steps = ["trainer.max_steps=60" if t.startswith("trainer.max_steps") else t for t in TINY]
    r = run([*PARALLEL_EXAMPLE.split(), "seed=0,1", f"hydra.sweep.dir={sweep}", *steps], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    spans = [json.loads((sweep / j / "metrics.json").read_text()) for j in ("0", "1")]
    spans = sorted((m["started_at"], m["finished_at"]) for m in spans)
    assert spans[1][0] < spans[0][1], spans  # the second started before the first finished
    assert "failed" not in r.stdout.split("sweep: ")[-1]
    logs = "".join(p.read_text() for p in sweep.glob("*/*.log"))
    threads = max(1, (os.cpu_count() or 1) // 4)  # the example runs 4 jobs at once
    assert f"4 parallel jobs on {os.cpu_count()} cores: {threads} torch thread(s) per job" in logs, logs[-2000:]


def test_optuna_search_three_trials_reports_best(tmp_path):
    sweep = tmp_path / "sweep"
    tiny = [o for o in TINY if not o.startswith("model.hidden_dim=")]  # width is searched: a small choice instead
    r = run(
        [
            "-m",
            "hydra/sweeper=search",
            "hydra.sweeper.n_trials=3",
            "model.hidden_dim=choice(8,16)",
            f"hydra.sweep.dir={sweep}",
            *tiny,
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    res = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    psnrs = [json.loads((sweep / str(i) / "metrics.json").read_text())["psnr"] for i in range(3)]
    assert res["best_value"] == pytest.approx(max(psnrs))
    assert set(res["best_params"]) == {"optim.lr", "model.hidden_dim"}


def test_submitit_local_launcher(tmp_path):
    """The SLURM path (submitit) with its local executor: same jobs, same run directories."""
    sweep = tmp_path / "sweep"
    r = run(["-m", "hydra/launcher=submitit_local", "seed=0,1", f"hydra.sweep.dir={sweep}", *TINY], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [row["status"] for row in collect(sweep)] == ["ok", "ok"]


def test_slurm_preset_composes(tmp_path):
    from hydra import compose, initialize_config_dir

    from nir.run.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    assert "SlurmLauncher" in cfg.hydra.launcher._target_ and cfg.hydra.launcher.gpus_per_node == 1


@pytest.mark.slow
def test_ddp_two_processes_metrics_equal_full_grid(tmp_path):
    """Two spawned workers on a memory-mapped signal streamed through a cache smaller than it, each
    balancing its own batches over its own blocks (sampling=decades), K optimizer steps per call:
    one event file, one metrics.json, and the logged validation equal to the full grid's score."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import nir
    from nir.data.readers import read_array

    z = np.linspace(0, 1, 20_000, dtype=np.float32)
    path = tmp_path / "a.npy"
    np.save(path, (0.01 + 100 * np.exp(-(((z - 0.5) / 0.02) ** 2))).astype(np.float32))
    run_dir = tmp_path / "ddp"
    r = run(
        [
            *DDP_SPAWN_2,
            "data=array",
            "model=siren",
            f"data.path={path}",
            "loss=log_mse",
            "cache_mb=0.05",  # 50 kB of an 80 kB signal: streamed
            "sampling=decades",
            "batch_size=512",
            "model.hidden_dim=16",
            "steps_per_call=5",  # and several optimizer steps per call under DDP (issue 16)
            "trainer.log_every_n_steps=5",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    # one writer: one event file, one metrics.json
    assert len(list((run_dir / "tb").glob("events.out.tfevents.*"))) == 1
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    logged = {tag: acc.Scalars(tag)[-1].value for tag in ("val/psnr", "val/worst_decade_median")}
    field = nir.load_field(run_dir)
    full = nir.score(field, read_array(str(path)))
    assert logged["val/psnr"] == pytest.approx(full["psnr"], abs=1e-3)
    assert logged["val/worst_decade_median"] == pytest.approx(full["worst_decade_median"], rel=1e-3)
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["psnr"] == pytest.approx(full["psnr"], abs=1e-3) and m["steps"] == 20
    assert m["status"] == "ok" and m["sampling"].startswith("decades")
    assert [e.step for e in acc.Scalars("train/loss")] == [4, 9, 14, 19]  # every 5 optimizer steps


def test_ddp_inside_multirun_is_refused(tmp_path):
    sweep = tmp_path / "sweep"
    r = run(["-m", "trainer.strategy=ddp", "trainer.devices=2", "seed=0", f"hydra.sweep.dir={sweep}", *TINY], tmp_path)
    assert r.returncode == 1
    assert "would re-run the whole sweep in every DDP process" in r.stderr
    assert collect(sweep)[0]["status"] == "failed"
