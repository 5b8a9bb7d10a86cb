"""Crash-safe writes (nir/checkpoint.py): a write that fails leaves the old file's bytes, and the
final name is never opened for writing; every file nir writes atomically goes through it."""

from __future__ import annotations

import builtins
import errno
import os
from pathlib import Path

import pytest
import torch

from nir import checkpoint
from nir.checkpoint import WriteError, atomic_write_bytes


@pytest.fixture
def opened_for_writing(monkeypatch):
    """Every path opened with a writing mode, through Python's open (what atomic_write_bytes uses)."""
    seen: list[Path] = []
    real_open = builtins.open

    def spy(file, mode="r", *args, **kwargs):
        if isinstance(file, str | os.PathLike) and any(c in mode for c in "wax+"):
            seen.append(Path(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    return seen


def test_a_write_that_fails_halfway_leaves_the_old_bytes(tmp_path, opened_for_writing):
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"old complete file")

    def half(f):
        f.write(b"new, partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteError, match=r"could not write '.*last\.ckpt': No space left on device \(.* free there\)"):
        atomic_write_bytes(path, half)
    assert path.read_bytes() == b"old complete file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left behind
    assert path not in opened_for_writing and opened_for_writing  # written, but never under the real name


def test_a_failed_fsync_or_rename_leaves_the_old_bytes(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    path.write_bytes(b"{}")
    for name in ("fsync", "replace"):
        with monkeypatch.context() as m:
            m.setattr(checkpoint.os, name, lambda *a: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
            with pytest.raises(WriteError):
                atomic_write_bytes(path, lambda f: f.write(b'{"new": 1}'))
        assert path.read_bytes() == b"{}" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_successful_write_replaces_the_file_whole(tmp_path, opened_for_writing):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    atomic_write_bytes(path, lambda f: f.write(b"new bytes"))
    assert path.read_bytes() == b"new bytes" and path not in opened_for_writing


def _small_field():
    from nir.fields import Siren
    from nir.reuse.field import Field
    from nir.transforms import Identity

    spec = {
        "network": {
            "target": "nir.fields.Siren",
            "kwargs": {"in_dim": 2, "out_dim": 1, "hidden_dim": 8, "num_layers": 1},
        },
        "transform": {"target": "nir.transforms.Identity", "kwargs": {}},
        "bounds": [[-1.0, 1.0]] * 2,
        "shape": [4, 4],
        "channels": 1,
        "meta": {},
    }
    return Field(Siren(2, 1, hidden_dim=8, num_layers=1), Identity(), spec)


def test_field_save_is_atomic_and_synced(tmp_path, monkeypatch, opened_for_writing):
    """Field.save writes through atomic_write_bytes: a failed sync leaves the earlier field whole."""
    from nir.reuse.field import load_field

    field = _small_field()
    path = field.save(tmp_path / "field.safetensors")
    before = path.read_bytes()
    assert path not in opened_for_writing
    with torch.no_grad():
        for p in field.parameters():
            p.add_(1.0)
    monkeypatch.setattr(checkpoint.os, "fsync", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(WriteError):
        field.save(path)
    assert path.read_bytes() == before
    load_field(path)  # still a complete field file
