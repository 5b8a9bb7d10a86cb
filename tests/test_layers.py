"""Issue 44: what the move to one folder per layer promises beyond the import rules
(tests/test_structure.py): the stored forms checked on load, old run configs, settings resolved
once and frozen, one rank-zero rule, one place for the compression keywords, and every console
script's ``--help``."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import nir
from nir.errors import NirError
from tests.conftest import make_cfg, tiny_overrides

LEGACY = Path(__file__).resolve().parent / "data" / "legacy"


def _field():
    from nir.fields import Siren
    from nir.reuse.field import Field
    from nir.transforms import Identity

    torch.manual_seed(0)
    spec = {
        "network": {"target": "nir.fields.siren.Siren", "kwargs": {"in_dim": 2, "out_dim": 1, "hidden_dim": 8, "num_layers": 1}},
        "transform": {"target": "nir.transforms.Identity", "kwargs": {}},
        "bounds": [[-1.0, 1.0], [-1.0, 1.0]], "shape": [6, 5], "channels": 1, "meta": {},
    }  # fmt: skip
    return Field(Siren(2, 1, hidden_dim=8, num_layers=1), Identity(), spec)


def test_a_flipped_byte_in_a_safetensors_field_is_one_line(tmp_path):
    """field.safetensors carries a checksum of its metadata and tensors (``nir_crc32``): a flipped
    weight byte, once loaded silently, is now refused in one line."""
    path = _field().save(tmp_path / "f.safetensors")
    data = bytearray(path.read_bytes())
    assert b"nir_crc32" in data[: 8 + int.from_bytes(data[:8], "little")]
    nir.load_field(path)  # intact: loads
    data[-5] ^= 0x10  # inside the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(
        NirError, match=r"f.safetensors' is corrupt \(its checksum does not match\); save the field again"
    ):
        nir.load_field(path)


@pytest.mark.parametrize("name", ["siren_image.safetensors", "fourier_log3d.safetensors", "hashgrid_log3d.safetensors"])
def test_a_legacy_safetensors_field_resaves_with_its_checksum_and_the_same_values(name, tmp_path):
    """Files written before the checksum load unchecked; saved again they get one and the same
    tensors (safetensors orders its metadata as it likes, so the bytes may differ between saves;
    the compact files' bytes are pinned in tests/test_legacy.py)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    field = nir.load_field(LEGACY / name)
    a = field.save(tmp_path / "a.safetensors")
    with safe_open(str(LEGACY / name), "pt") as f, safe_open(str(a), "pt") as g:
        old_meta, new_meta = f.metadata(), g.metadata()
    assert "nir_crc32" not in old_meta and new_meta.pop("nir_crc32")
    new_spec, old_spec = json.loads(new_meta.pop("nir_spec")), json.loads(old_meta.pop("nir_spec"))
    assert {k: new_spec[k] for k in old_spec} == old_spec  # (+ is_image, issue 27)
    assert {k: new_meta[k] for k in old_meta} == old_meta  # (+ nir_format, nir_dtype for the oldest)
    old, new = field.state_dict(), nir.load_field(a).state_dict()  # (an old file's names are upgraded on load)
    assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)
    assert len(load_file(a)) == len(load_file(LEGACY / name))
    coords = torch.from_numpy(np.load(LEGACY / "coords.npy"))[:, : field.in_dim]
    with torch.no_grad():
        assert torch.equal(nir.load_field(a)(coords), field(coords))


def test_an_old_run_config_trains_with_one_line_naming_the_moved_classes(tiny_png, tmp_path, capsys):
    """A run directory's config.yaml written before the move names nir.losses.MSE,
    nir.samplers.uniform.Uniform, nir.readers.images.read_image, nir.callbacks.DivergenceGuard:
    they are read at their new paths, with one line saying so."""
    from nir.run.run import train

    cfg = make_cfg([*tiny_overrides(tiny_png, steps=4), "log.images=false", "loss=mse", "sampling=uniform"])
    old = OmegaConf.to_yaml(cfg, resolve=True)
    for new, was in (("nir.training.losses.", "nir.losses."), ("nir.data.samplers.", "nir.samplers."),
                     ("nir.data.readers.", "nir.readers."), ("nir.training.guards.DivergenceGuard", "nir.callbacks.DivergenceGuard"),
                     ("nir.training.callbacks.", "nir.callbacks.")):  # fmt: skip
        assert new in old
        old = old.replace(new, was)
    (tmp_path / "config.yaml").write_text(old)
    metrics = train(OmegaConf.load(tmp_path / "config.yaml"), tmp_path / "run")
    assert metrics["status"] == "ok"
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "before nir's layers moved" in x]
    assert (
        "nir.losses.MSE -> nir.training.losses.MSE" in line
        and "nir.callbacks.DivergenceGuard -> nir.training.guards" in line
    )
    written = (tmp_path / "run" / "config.yaml").read_text()
    assert "nir.training.losses.MSE" in written and "nir.losses.MSE" not in written


def test_settings_are_resolved_once_into_a_frozen_config(tmp_path, capsys):
    """loss=auto, sampling=auto and a byte budget return their choices: the composed config is
    left as it was, the settings' config has them and is read-only, and config.yaml is it."""
    import dataclasses

    from omegaconf.errors import ReadonlyConfigError

    from nir.run.config import build, compose_config
    from nir.run.resolve import resolve_settings

    np.save(tmp_path / "y.npy", np.exp(np.random.default_rng(0).normal(size=(24, 20)) * 3).astype(np.float32))
    cfg, _ = compose_config(["data=array", f"data.path={tmp_path / 'y.npy'}", "model=siren", "size.bytes=3000"])
    before = OmegaConf.to_yaml(cfg)
    settings = resolve_settings(cfg, build(cfg.data, "data"))
    assert OmegaConf.to_yaml(cfg) == before  # nothing written back
    r = settings.config
    assert r.loss._target_ != "nir.training.losses.Auto" and r.sampling._target_ != "nir.data.samplers.Auto"
    assert settings.chosen.keys() == {"loss", "sampling"} and r.model.hidden_dim != cfg.model.hidden_dim
    assert [line.split(":")[0] for line in settings.lines] == ["loss=auto", "sampling=auto", "size"]
    with pytest.raises(ReadonlyConfigError):
        r.model.hidden_dim = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.precision = "64"  # type: ignore[misc]


@pytest.mark.parametrize(
    "env,first",
    [({}, True), ({"RANK": "0", "LOCAL_RANK": "0", "NODE_RANK": "0"}, True), ({"LOCAL_RANK": "1"}, False),
     ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False), ({"RANK": "3"}, False), ({"SLURM_PROCID": "2"}, False)],
)  # fmt: skip
def test_one_rank_zero_rule(env, first, monkeypatch, capsys):
    """A multi-node run's second node has LOCAL_RANK=0 and NODE_RANK=1: not the first process (the
    console once printed there); the console, the lock and the callbacks ask the same rule."""
    from nir.ranks import RANK_VARIABLES, first_process, on_first_process
    from nir.run.console import say

    for k in RANK_VARIABLES:
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert first_process() is first
    say("hello")
    assert (capsys.readouterr().out == "hello\n") is first
    assert on_first_process(lambda: 1)() == (1 if first else None)


def test_the_compression_keywords_are_spelled_once(monkeypatch):
    """nir-compress's options, the chunk codec's arguments and fit_overrides all take
    COMPRESSION_KEYS, and nothing else."""
    import inspect

    from nir.interop.chunks import Nir
    from nir.run.settings import COMPRESSION_KEYS, fit_overrides

    params = set(inspect.signature(Nir.__init__).parameters) - {"self", "unknown"}
    assert params == set(COMPRESSION_KEYS)
    with pytest.raises(TypeError, match="unknown setting"):
        fit_overrides(bound=0.1)
    assert "bound.rel=0.01" in fit_overrides(rel=0.01) and "size.share=0.01" in fit_overrides(rel=0.01)
    import nir.cli.compress as cli

    seen = {}
    monkeypatch.setattr(cli, "compress", lambda input, output, var=None, **settings: seen.update(settings) or "ok")
    cli.compress_main(["in.npy", "out.nir", "--rel", "0.02", "--steps", "7"])
    assert set(seen) == set(COMPRESSION_KEYS) and seen["rel"] == 0.02 and seen["steps"] == 7


SCRIPTS = {
    "nir-train": "nir.cli.train:main",
    "nir-field": "nir.cli.field:main",
    "nir-compress": "nir.cli.compress:compress_main",
    "nir-decompress": "nir.cli.compress:decompress_main",
    "nir-synth": "nir.cli.synth:main",
    "nir-summarize": "nir.cli.summarize:main",
}


def test_the_console_scripts_are_the_ones_installed():
    from importlib.metadata import entry_points

    installed = {e.name: e.value for e in entry_points(group="console_scripts") if e.value.startswith("nir.")}
    assert installed == SCRIPTS


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_console_script_help_exits_0(name, capsys, monkeypatch):
    """``--help`` of each script prints its usage and exits 0 (nir-compress's once ended in a
    traceback: a '%' in a help string)."""
    module, func = SCRIPTS[name].split(":")
    main = getattr(importlib.import_module(module), func)
    if name == "nir-train":  # reads sys.argv (Hydra's app)
        monkeypatch.setattr("sys.argv", [name, "--help"])
        args = ()
    else:
        args = (["--help"],)
    try:
        main(*args)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr().out
    assert code == 0 and ("usage" in out.lower() or name in out), out[-500:]
