"""Error-bounded fields (issue 23): the guarantee at every sample, the file round trip, the
command line, and one line for every bad input."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import nir
from nir.cli.compress import compress_main, decompress_main
from nir.codec import bound as B
from nir.errors import NirError

BIN = Path(sys.executable).parent


def _hard_values(shape, seed):
    """Long-tailed values with the cases a bound must survive: values below the floor, exact
    zeros, a constant region, negative values and a single spike."""
    rng = np.random.default_rng(seed)
    y = np.exp(rng.normal(size=shape) * 2.5).astype(np.float32)
    flat = y.reshape(-1)
    n = flat.size
    flat[: n // 10] = 0.0  # exact zeros
    flat[n // 10 : n // 5] = 1e-6  # far below the floor
    flat[n // 5 : n // 3] = 3.0  # a constant region
    flat[n // 3 : n // 3 + 5] *= -1  # a few negative values
    flat[n // 2] = 5e4  # a single spike
    return y


def _check(y, out, bound):
    y = y.reshape(-1).astype(np.float64)
    err = np.abs(out.reshape(-1).astype(np.float64) - y)
    return bool((err <= bound.allowed(y)).all()), float((err / bound.allowed(y)).max())


@pytest.mark.parametrize("shape", [(4000,), (40, 50), (12, 14, 16), (5, 6, 7, 8)])
@pytest.mark.parametrize(
    "bound", [B.Bound("rel", 1e-3, 1e-3), B.Bound("rel", 0.1, 0.05), B.Bound("abs", 0.01), B.Bound("abs", 2.0)]
)
def test_the_residual_meets_the_bound_at_every_sample(shape, bound):
    """Whatever the network says (here: the values with 30 % noise and a few wild answers), the
    coded residual brings every sample within the bound."""
    y = _hard_values(shape, seed=len(shape))
    rng = np.random.default_rng(0)
    pred = (y * (1 + 0.3 * rng.normal(size=y.shape))).astype(np.float32).reshape(-1)
    pred[::97] = rng.normal(size=pred[::97].size) * 100  # wild answers
    chunks = [(pred[:1000], y.reshape(-1)[:1000]), (pred[1000:], y.reshape(-1)[1000:])]
    residual, worst = B.build_residual(chunks, bound, shape=shape)
    data = B.encode(residual)
    assert data[19 + 12] == B.CONTEXT  # after the header and the sizes: the context coder's id
    back = B.decode(data, y.size)
    ok, measured = _check(y, B.apply(pred, back), bound)
    assert ok, measured
    assert measured == pytest.approx(worst) and worst <= B.MARGIN + 1e-6  # the cell leaves the margin


@pytest.mark.parametrize("bound", [B.Bound("rel", 0.01, 1e-3), B.Bound("abs", 0.1), B.Bound("none", 0.0)])
def test_missing_samples_are_nan_again_and_only_they(bound):
    """NaN in the signal is a missing sample: no integer, NaN in the answer (a land mask: a
    block; the rest scattered); every other sample within the bound."""
    y = _hard_values((30, 40), 3).reshape(-1).astype(np.float64)
    y[100:400] = np.nan
    y[::53] = np.nan
    pred = np.where(np.isnan(y), 7.0, y * 1.2).astype(np.float32)
    residual, _ = B.build_residual([(pred[:500], y[:500]), (pred[500:], y[500:])], bound)
    data = B.encode(residual)
    back = B.apply(pred, B.decode(data, y.size))
    assert np.array_equal(np.isnan(back), np.isnan(y))
    kept = ~np.isnan(y)
    ok, _ = _check(y[kept], back[kept], bound)
    assert ok
    if bound.kind == "none":  # no correction: the network's answer where a value is kept
        assert (
            np.array_equal(back[kept], pred[kept]) and len(data) < 19 + y.size // 16
        )  # the mask: under half its raw bits
    with pytest.raises(NirError, match="mask covers"):
        B.decode(data, y.size + 64)


def test_a_bounded_run_keeps_the_missing_samples_missing(tmp_path):
    y = _hard_values((20, 30), 4)
    y[3:6, 10:20] = np.nan
    np.save(tmp_path / "in.npy", y)
    compress_main([str(tmp_path / "in.npy"), str(tmp_path / "f.nir"), "--rel", "0.05", "--steps", "20"])
    decompress_main([str(tmp_path / "f.nir"), str(tmp_path / "back.npy")])
    back = np.load(tmp_path / "back.npy")
    assert np.array_equal(np.isnan(back), np.isnan(y))
    kept = ~np.isnan(y)
    bound = B.decode(nir.load_field(tmp_path / "f.nir").residual, y.size).bound
    ok, worst = _check(y[kept], back[kept], bound)
    assert ok, worst


@pytest.mark.parametrize("coder", [2, 3])
def test_residual_integers_round_trip_exactly_with_each_coder(coder):
    rng = np.random.default_rng(coder)
    cases = [rng.laplace(scale=3, size=5000).round(), np.zeros(100), np.full(50, -7.0),
             np.array([0, 2**19 - 1, -(2**19 - 1), 1, -1]), rng.integers(-300, 300, 999).astype(float)]  # fmt: skip
    for k in cases:
        k = k.astype(np.int64)
        data = B.code_ints(k, only=coder)
        assert data[0] == (coder if k.any() else 2)  # all zeros: ANS has no support to code on
        assert np.array_equal(B.decode_ints(data, k.size), k)


def test_the_blocked_coder_decodes_a_part_alone_and_older_files_still_decode():
    from nir.codec import ints

    k = np.random.default_rng(7).laplace(scale=4, size=3 * ints.RESIDUAL_BLOCK + 17).round().astype(np.int64)
    data = B.code_ints(k)
    assert data[0] == 3
    wanted = np.array([5, 2 * ints.RESIDUAL_BLOCK + 1, k.size - 1])
    part = B.decode_ints(data, k.size, wanted)
    assert np.array_equal(part[wanted], k[wanted])
    decoded = np.zeros(k.size, bool)  # the stretches holding a wanted index, and nothing else
    for w in wanted // ints.RESIDUAL_BLOCK:
        decoded[w * ints.RESIDUAL_BLOCK : (w + 1) * ints.RESIDUAL_BLOCK] = True
    assert np.array_equal(part[decoded], k[decoded]) and not part[~decoded].any()
    legacy = bytes([1]) + ints.LaplaceAns().encode([k])  # a residual written before the blocks
    assert np.array_equal(B.decode_ints(legacy, k.size), k)
    with pytest.raises(NirError, match="truncated or damaged"):
        B.decode_ints(data[:-4], k.size)


def test_a_network_that_meets_the_bound_stores_an_empty_residual():
    y = _hard_values((500,), 0).reshape(-1)
    residual, _ = B.build_residual([(y, y)], B.Bound("rel", 0.01, 1e-3))
    assert residual.empty and len(B.encode(residual)) == 19


@pytest.mark.parametrize("shape,bound", [((3000,), ["bound.rel=0.02"]), ((14, 12, 10), ["bound.abs=0.05"])])
def test_a_bounded_run_meets_its_bound_from_the_file(shape, bound, tmp_path):
    y = _hard_values(shape, 3)
    np.save(tmp_path / "y.npy", y)
    _, m = nir.fit(str(tmp_path / "y.npy"), [*bound, "log.images=false", "trainer.enable_progress_bar=false"],
                   run_dir=tmp_path / "run", steps=30)  # fmt: skip
    kind, value = bound[0].split("=")[0].split(".")[1], float(bound[0].split("=")[1])
    key = "max_rel_error" if kind == "rel" else "max_abs_error"
    assert m[key] <= value and m["bytes"] == m["bytes_network"] + m["bytes_residual"]
    assert m["bytes"] == (tmp_path / "run" / "field.nir").stat().st_size
    field = nir.load_field(tmp_path / "run" / "field.nir")  # the file alone, as a user has it
    b = B.Bound(kind, value, m["bound"].get("floor", 0.0))
    ok, measured = _check(y, field.sample().numpy(), b)
    assert ok and measured * value == pytest.approx(m[key], rel=1e-5)  # the metric is the file's
    grids = [mod for mod in field.network.modules() if hasattr(mod, "backend_for")]
    if grids:  # the 3-D case trains a hash grid: built and decoded through the fused CPU kernels,
        assert grids[0].backend_for(torch.device("cpu")) == "numba"
        grids[0].backend = "torch"  # and the reference path (another machine's) still meets the bound
        assert _check(y, field.sample().numpy(), b)[0]
    # off the grid: the network alone (not bounded, documented)
    coarse = field.sample([max(1, s // 2) for s in shape])
    assert coarse.shape[:-1] == tuple(max(1, s // 2) for s in shape)


def test_compress_and_decompress_in_fresh_processes(tmp_path):
    """The command line end to end: float64 input, its shape and dtype back, the bound held."""
    y = _hard_values((16, 18, 10), 5).astype(np.float64)
    np.save(tmp_path / "in.npy", y)
    r = subprocess.run([BIN / "nir-compress", tmp_path / "in.npy", tmp_path / "out.nir", "--rel", "0.01", "--steps", "40"],
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    summary = r.stdout.strip().splitlines()[-1]
    assert "out.nir" in summary and "max relative error" in summary and "bytes" in summary
    r = subprocess.run([BIN / "nir-decompress", tmp_path / "out.nir", tmp_path / "back.npy"],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    back = np.load(tmp_path / "back.npy")
    assert back.shape == y.shape and back.dtype == np.float64
    from nir.interop.compress import info

    text = info(tmp_path / "out.nir")
    floor = float(text.split("floor ")[1].split(" ")[0].rstrip(",;"))
    ok, _ = _check(y.astype(np.float32), back, B.Bound("rel", 0.01, floor))
    assert ok
    assert "bytes:" in text and "residual" in text and "(16, 18, 10)" in text


@pytest.mark.parametrize(
    "args,message",
    [
        (["--rel", "0"], "bound.rel must be a number > 0"),
        (["--rel", "-0.1"], "bound.rel must be a number > 0"),
        (["--abs", "0"], "bound.abs must be a number > 0"),
        (["--rel", "0.01", "--floor", "0"], "bound.floor must be a number > 0"),
        (["--rel", "0.01", "inf"], "Inf values"),
        ([], "needs --rel, --abs or --ratio"),
    ],
)
def test_bad_inputs_are_one_line(args, message, tmp_path, capsys):
    y = _hard_values((300,), 0)
    if "inf" in args:
        args = [a for a in args if a != "inf"]
        y[7] = np.inf
    np.save(tmp_path / "in.npy", y)
    with pytest.raises(SystemExit) as e:
        compress_main([str(tmp_path / "in.npy"), str(tmp_path / "out.nir"), *args, "--steps", "2"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out.nir").exists()


def test_damaged_bounded_files_are_one_line(tmp_path, capsys):
    y = _hard_values((2000,), 1)
    np.save(tmp_path / "y.npy", y)
    compress_main([str(tmp_path / "y.npy"), str(tmp_path / "f.nir"), "--abs", "0.1", "--steps", "5"])
    data = (tmp_path / "f.nir").read_bytes()
    start = data.index(b"NIRf") + 6
    n, pos = data[start], start + 1  # the spec's length (one byte for these specs)
    residual_at = pos + n + 2  # after the residual's length varint
    cases = {
        "truncated": data[: len(data) - 40],
        # a residual byte changed and the checksum recomputed: the residual's own parser must say it
        "residual": _with_crc(data[:-4], residual_at + 30),
    }
    for what, damaged in cases.items():
        p = tmp_path / f"{what}.nir"
        p.write_bytes(damaged)
        with pytest.raises(SystemExit) as e:
            decompress_main([str(p), str(tmp_path / "o.npy")])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1, (what, err)


def _with_crc(body: bytes, flip: int) -> bytes:
    b = bytearray(body)
    b[flip] ^= 0xFF
    return bytes(b) + struct.pack("<I", zlib.crc32(bytes(b)))


def test_bound_settings_are_checked(tmp_path):
    with pytest.raises(NirError, match="set bound.rel or bound.abs, not both"):
        nir.fit("peaks1d", ["data.n=64", "bound.rel=0.1", "bound.abs=0.1"], run_dir=tmp_path / "a", steps=2)
    with pytest.raises(NirError, match="bound.floor is set but neither"):
        nir.fit("peaks1d", ["data.n=64", "bound.floor=0.1"], run_dir=tmp_path / "b", steps=2)


# ----------------------------------------------------------------------------- the context coder (issue 37)
def _modes(shape, seed):
    from nir.codec import context

    return np.random.default_rng(seed).integers(0, 3, context.block_count(shape)).astype(np.uint8)


@pytest.mark.parametrize("shape", [(5000,), (70, 90), (20, 33, 17), (6, 7, 9, 11)])
def test_the_context_coder_decodes_what_the_encoder_answers_bit_for_bit(shape):
    """The closed loop: the decoder's offsets equal the encoder's exactly (random, all-zero, one
    spike, heavy-tailed values; blocks of every mode mixed), each within half a cell of its value."""
    from nir.codec import context

    rng = np.random.default_rng(len(shape))
    n = int(np.prod(shape))
    spike = np.zeros(n)
    spike[n // 3] = 4e3
    cases = {"random": rng.laplace(scale=3, size=n), "zeros": np.zeros(n), "spike": spike,
             "heavy": rng.standard_cauchy(n).clip(-1e4, 1e4)}  # fmt: skip
    cell = 0.37
    for i, (name, net) in enumerate(cases.items()):
        own = np.cumsum(rng.normal(size=n)) if name == "random" else net * 2
        modes = _modes(shape, n)
        levels = context.LEVEL_CHOICES[i % len(context.LEVEL_CHOICES)]  # with and without level-wise bounds
        data, offset, q = context.encode(net, own, modes, shape, cell, None, levels)
        back, on_map = context.decode(data, n)
        assert np.array_equal(back, offset), name
        assert np.array_equal(on_map, context.map_mask(modes, shape)), name
        target = np.where(on_map, own, net)
        assert np.abs(back - target).max() <= cell / 2 * (1 + 1e-12), name
        if name == "zeros":
            assert not q.any() and len(data) < 100 + context.block_count(shape), len(data)  # next to nothing


def test_a_loose_bound_on_a_smooth_field_tightens_the_coarse_levels():
    """Level-wise bounds (issue 46): where the coarse samples predict a smooth field's fine ones,
    a tighter cell at the coarse levels codes smaller, and the encoder finds it on its crop; the
    bound still holds at every sample (each level's cell is at most the bound's)."""
    from nir.codec import context

    yy, xx, zz = np.meshgrid(*[np.linspace(0, 1, 48)] * 3, indexing="ij")
    own = (np.sin(6 * xx) * np.cos(5 * yy) + zz**2 + 0.02 * np.random.default_rng(0).normal(size=xx.shape)).reshape(-1)
    cell = 0.2
    chosen = context.tune_levels(own, xx.shape, cell)
    assert chosen != (1.0, 1.0), chosen
    sizes = {lv: len(context.code(own, own, xx.shape, cell, lv)[0]) for lv in ((1.0, 1.0), chosen)}
    assert sizes[chosen] < sizes[(1.0, 1.0)], sizes
    data, offset, *_ = context.code(own, own, xx.shape, cell)
    back, _ = context.decode(data, own.size)
    assert np.array_equal(back, offset) and np.abs(back - own).max() <= cell / 2 * (1 + 1e-12)
    assert (
        context.level_cell(cell, 3, (1.5, 2.0)) == cell / 2 and context.level_cell(cell, 1, (1.25, 2.0)) == cell / 1.25
    )


def test_blocks_choose_the_cheaper_kind():
    """Where the network is exact the block codes its (zero) residual; where it is wild, the
    signal's own map; a smooth signal without a network: the map after the predictor."""
    from nir.codec import context

    shape = (128, 128)
    yy, xx = np.mgrid[0:128, 0:128] / 128.0
    rng = np.random.default_rng(0)
    own = 40 * np.sin(3 * xx) * np.cos(2 * yy) + np.where(xx < 0.5, rng.normal(size=shape), 0.0)  # rough on the left
    net = np.where(xx < 0.5, 0.0, rng.normal(size=shape) * 50)  # where the network is exact, and where it is wild
    modes = context.choose(net.reshape(-1), own.reshape(-1), shape, 0.01)[0].reshape(2, 2)
    assert (modes[:, 0] != context.MAP).all() and (modes[:, 1] == context.MAP).all(), modes


def test_zeros_the_network_misses_cost_next_to_nothing():
    """A mostly-zero field (80 % exact zeros, as X-ray counts are) where the network answers
    small non-zero values everywhere: the zeros' blocks code the map (zero) instead."""
    rng = np.random.default_rng(3)
    y = np.where(rng.random((96, 96)) < 0.8, 0.0, np.exp(rng.normal(size=(96, 96)) * 2))
    y[:48] = 0.0  # a half of nothing but zeros
    pred = (np.abs(y) + rng.normal(size=y.shape) * 0.05).astype(np.float32)
    bound = B.Bound("rel", 0.01, 1e-2)
    residual, _ = B.build_residual([(pred.reshape(-1), y.reshape(-1))], bound, shape=y.shape)
    data = B.encode(residual)
    plain = len(B.code_ints(B.quantize(pred.reshape(-1), y.reshape(-1), bound)))
    assert residual.on_map[: 48 * 96].all()  # the zero half: the map, not the network
    assert len(data) < plain / 2, (len(data), plain)
    ok, _ = _check(y, B.apply(pred, B.decode(data, y.size)), bound)
    assert ok


def test_a_damaged_context_residual_is_one_line():
    y = _hard_values((40, 50), 5)
    pred = (y * 1.1).astype(np.float32).reshape(-1)
    residual, _ = B.build_residual([(pred, y.reshape(-1))], B.Bound("rel", 0.01, 1e-3), shape=y.shape)
    data = B.encode(residual)
    for bad in (data[:-5], data[:40] + bytes([255]) * 8 + data[48:]):
        with pytest.raises(NirError, match="residual") as e:
            B.decode(bad, y.size)
        assert "\n" not in str(e.value)


def test_the_network_budget_under_a_bound_is_a_share_of_what_the_bound_costs(tmp_path):
    """``size.share`` (nir-compress's default): the budget follows the bound's cost without a
    network (a rough signal gets more than a smooth one of the same size, a looser bound less),
    at least 1,000 bytes; without a bound, or outside (0, 1): one line."""
    from nir.run.config import build, compose_config
    from nir.run.resolve import choose_share, measured_bound

    def resolve_share(cfg, signal):
        return choose_share(cfg, signal, measured_bound(cfg, signal))

    rng = np.random.default_rng(0)
    smooth = np.exp(np.sin(np.linspace(0, 6, 96))[:, None] * np.cos(np.linspace(0, 4, 96))[None, :] * 4)
    rough = np.exp(rng.normal(size=(96, 96)) * 2)
    budgets = {}
    for name, y, rel in (("smooth", smooth, 0.001), ("rough", rough, 0.001), ("rough_loose", rough, 0.1)):
        np.save(tmp_path / f"{name}.npy", y.astype(np.float32))
        cfg, _ = compose_config(
            ["data=array", f"data.path={tmp_path / name}.npy", f"bound.rel={rel}", "size.share=0.5"]
        )
        budget, line = resolve_share(cfg, build(cfg.data, "data"))
        assert "without a network" in line and f"network budget {budget:,} bytes" in line
        budgets[name] = budget
    assert budgets["rough"] > 2 * budgets["smooth"] >= 2000 and budgets["rough_loose"] < budgets["rough"] / 2
    for overrides, message in (
        (["size.share=0.5"], "needs a bound"),
        (["bound.rel=0.01", "size.share=2"], "in \\(0, 1\\)"),
    ):
        cfg, _ = compose_config(["data=array", f"data.path={tmp_path / 'rough.npy'}", *overrides])
        with pytest.raises(NirError, match=message):
            resolve_share(cfg, build(cfg.data, "data"))


def test_a_relative_bound_without_a_floor_holds_for_every_non_zero_value(tmp_path, capsys):
    """Issue 46: a chunk spanning 18 decades (7e-9 .. 5e10, zeros and negatives among them) under
    ``rel=0.01`` with no floor: every non-zero value within 1 % of itself (the default floor was
    1e-7 of the maximum, and values below it came back with relative errors up to 5e5), zeros
    exactly zero within eps * floor. A floor the user sets above some values is counted."""
    from nir.interop.chunks import Nir, decode_chunk, encode_chunk

    rng = np.random.default_rng(7)
    x = (10.0 ** rng.uniform(-8.2, 10.7, (12, 10, 8)) * rng.choice([-1.0, 1.0], (12, 10, 8))).astype(np.float32)
    x[0, 0, :3] = 0.0
    data, report = encode_chunk(x, Nir(rel=0.01, steps=5))
    back = decode_chunk(data)
    nz = x != 0
    rel = np.abs(back[nz].astype(np.float64) - x[nz]) / np.abs(x[nz].astype(np.float64))
    assert report.lossless is None and rel.max() <= 0.01
    assert np.abs(back[~nz]).max() <= 0.01 * np.abs(x[nz]).min()
    # a floor set above some values: they are held to eps * floor, and the run says how many
    np.save(tmp_path / "x.npy", x)
    _, m = nir.fit(str(tmp_path / "x.npy"), ["bound.rel=0.01", "bound.floor=1.0", "log.images=false"], run_dir=tmp_path / "r",
                   steps=5, trainer__enable_progress_bar=False)  # fmt: skip
    below = int(((np.abs(x) > 0) & (np.abs(x) < 1.0)).sum())
    assert below > 0 and m["below_floor_values"] == below
    assert f"{below:,} non-zero values below the floor" in capsys.readouterr().out
    from nir.interop.compress import info

    assert f"{below:,} non-zero values below the floor (given)" in info(tmp_path / "r" / "field.nir")


def test_network_never_trains_nothing_and_the_residual_alone_meets_the_bound(tmp_path, monkeypatch, capsys):
    """``--network never`` (and ``auto`` without a size or a preset, nir-compress's default):
    no Trainer is built and no step is taken (counted), the file holds no parameters, and every
    sample meets the bound from the residual alone; ``always`` trains, and ``never`` without a
    bound is one line."""
    import pytorch_lightning as pl

    from nir.cli.compress import compress_main, decompress_main

    fits = []
    monkeypatch.setattr(pl.Trainer, "fit", lambda self, *a, **k: fits.append(1))
    rng = np.random.default_rng(3)
    y = np.exp(rng.normal(size=(20, 18, 6)) * 2).astype(np.float32)
    y[0, :4] = 0.0
    np.save(tmp_path / "y.npy", y)
    for network in ("never", "auto"):
        out = tmp_path / f"{network}.nir"
        compress_main([str(tmp_path / "y.npy"), str(out), "--rel", "0.01", "--network", network])
        decompress_main([str(out), str(tmp_path / "back.npy")])
        back = np.load(tmp_path / "back.npy")
        nz = y != 0
        assert (np.abs(back[nz].astype(np.float64) - y[nz]) <= 0.01 * np.abs(y[nz].astype(np.float64))).all()
        assert np.abs(back[~nz]).max() <= 0.01 * np.abs(y[nz]).min()
        assert nir.load_field(out).num_parameters() == 0
    assert fits == [] and "network: none, the residual carries the signal" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # the patched fit trains nothing: always reaches the Trainer
        compress_main(
            [str(tmp_path / "y.npy"), str(tmp_path / "a.nir"), "--rel", "0.01", "--network", "always", "--steps", "2"]
        )
    assert fits == [1]
    # with no network the run's metrics are the bounded answer's (the zero network's would be ~100 % off)
    _, m = nir.fit(str(tmp_path / "y.npy"), ["bound.rel=0.01", "bound.network=never"], run_dir=tmp_path / "m")
    assert m["steps"] == 0 and m["num_params"] == 0 and m["worst_decade_median"] <= 0.01 and m["psnr"] > 40
    from nir.data.readers import read_array
    from nir.training.metrics import score

    s = score(nir.load_field(tmp_path / "m"), read_array(str(tmp_path / "y.npy")))  # the stored file, scored apart
    assert all(m[k] == s[k] for k in ("psnr", "psnr_log", "worst_decade_median", "top_decade_median"))
    with pytest.raises(NirError, match="bound.network=never needs a bound"):
        nir.fit(str(tmp_path / "y.npy"), ["bound.network=never"], run_dir=tmp_path / "r", steps=2)


def _loaded(code: str, names: set[str]) -> list[str]:
    """Which of ``names`` (top-level packages) a fresh Python process has loaded after ``code``."""
    code += f"\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(names)!r}))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_decode_imports_neither_lightning_nor_hydra_nor_torch_without_a_network(tmp_path):
    """``nir-decompress`` in a fresh process loads neither pytorch_lightning nor hydra; a file with
    no network (``--network never``, nir-compress's default) not torch either, and its numpy
    decode is bit for bit what the field's own (torch) answer is. A file with a network still
    needs torch to evaluate it (issue 46's compiled evaluator is not built)."""
    y = np.exp(np.random.default_rng(1).normal(size=(16, 12)) * 2).astype(np.float32)
    np.save(tmp_path / "y.npy", y)
    from nir.interop.compress import compress

    # with no network the compression itself builds no Trainer: no Lightning either
    npy, nirf, back_npy = (str(tmp_path / n) for n in ("y.npy", "y.nir", "b.npy"))
    assert _loaded(f"from nir.interop.compress import compress\ncompress({npy!r}, {nirf!r}, rel=0.01, network='never', "
                   "quiet=True)", {"pytorch_lightning", "lightning", "lightning_fabric"}) == []  # fmt: skip
    decode = f"from nir.cli.compress import decompress_main\ndecompress_main([{nirf!r}, {back_npy!r}])"
    assert _loaded(decode, {"pytorch_lightning", "lightning", "hydra", "torch"}) == []
    back = np.load(tmp_path / "b.npy")
    assert (np.abs(back.astype(np.float64) - y) <= 0.01 * np.abs(y.astype(np.float64))).all()
    assert np.array_equal(back, nir.load_field(tmp_path / "y.nir").grid_array())
    # with a network: torch evaluates it, and still neither Lightning nor Hydra is loaded
    compress(tmp_path / "y.npy", tmp_path / "n.nir", rel=0.01, network="always", steps=3, quiet=True)
    assert _loaded(decode.replace("y.nir", "n.nir"), {"pytorch_lightning", "lightning", "hydra", "torch"}) == ["torch"]
