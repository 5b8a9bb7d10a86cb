"""Packaging: a wheel (not the editable install) carries the configs and the sample photos, and
nir-train works from it outside the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # built from a copy: setuptools leaves build/ in the source tree, and a stale one would hide a gap
    src = out / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("nir", "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = out.glob("nir-*.whl")
    return whl


def test_wheel_holds_every_config_and_sample(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"nir/conf/{p.relative_to(ROOT / 'conf').as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert configs and configs <= names, sorted(configs - names)
    assert {"nir/data/chelsea.png", "nir/data/camera.png"} <= names


@pytest.mark.slow
def test_wheel_install_trains_outside_the_repository(wheel, tmp_path):
    """A fresh venv gets the wheel (not editable); its dependencies come from this venv's
    site-packages through a .pth line, which does not run this venv's editable-install hook."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "nir-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NIR_CONFIG_DIR")}
    where = subprocess.run(
        [str(py), "-c", "import nir, nir.run.config as c; print(nir.__file__); print(c.CONF_DIR)"],
        cwd=work,
        capture_output=True,
        text=True,
        env=env,
    )
    nir_file, conf_dir = where.stdout.split()
    assert nir_file.startswith(site) and conf_dir.startswith(site), where.stdout  # the wheel's copy
    nir_train = str(venv / "bin" / "nir-train")
    cfg = subprocess.run([nir_train, "--cfg", "job"], cwd=work, capture_output=True, text=True, env=env, timeout=300)
    assert cfg.returncode == 0 and "hidden_dim" in cfg.stdout, cfg.stderr[-2000:]
    fit = subprocess.run(
        [
            nir_train,
            "trainer.max_steps=5",
            "trainer.val_check_interval=5",
            "model.hidden_dim=16",
            "log.images=false",
            "batch_size=256",
            "hydra.run.dir=run",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["steps"] == 5
    assert metrics["signal"]["name"] == "chelsea"  # the bundled photo, from the wheel
