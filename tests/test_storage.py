"""Bytes as a quantity (issue 14): the stored precision of a field file (float32, float16, int8),
its round trip, and run metrics that are those of the stored field."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load as safetensors_load

import nir
from nir.codec import storage
from nir.errors import NirError
from nir.fields import FourierMLP, Siren
from nir.reuse.field import Field, load_field


def _field(network: torch.nn.Module, in_dim: int = 2, **kwargs) -> Field:
    """A field around ``network``; its spec rebuilds it when ``kwargs`` are its constructor's."""
    from nir.transforms import Identity

    spec = {
        "network": {
            "target": f"{type(network).__module__}.{type(network).__qualname__}",
            "kwargs": {"in_dim": in_dim, **kwargs} if kwargs else {},
        },
        "transform": {"target": "nir.transforms.Identity", "kwargs": {}},
        "bounds": [[-1.0, 1.0]] * in_dim,
        "shape": [8] * in_dim,
        "channels": 1,
        "meta": {},
    }
    return Field(network, Identity(), spec)


@pytest.mark.parametrize("suffix", [".nir", ".safetensors"])
@pytest.mark.parametrize("dtype,tol", [("float32", 0.0), ("float16", 1e-2), ("int8", 5e-2), ("int4", 0.5)])
def test_save_and_load_round_trip_at_each_precision(dtype, tol, suffix, tmp_path):
    torch.manual_seed(0)
    net = Siren(2, 1, hidden_dim=32, num_layers=2)
    field = _field(net)
    field.spec["network"]["kwargs"] = {"in_dim": 2, "out_dim": 1, "hidden_dim": 32, "num_layers": 2}
    x = torch.rand(200, 2) * 2 - 1
    ref = field(x)
    path = field.save(tmp_path / f"f{suffix}", dtype=dtype)
    assert path.stat().st_size == field.stored_bytes(dtype, format=suffix[1:])  # the byte count is the file's size
    loaded = load_field(path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())  # dequantised on load
    field.round_to_storage(dtype)  # in place: what the file holds
    torch.testing.assert_close(loaded(x), field(x), rtol=0, atol=0)
    scale = float(ref.abs().max())
    assert float((loaded(x) - ref).abs().max()) <= tol * scale + 1e-7


def test_lower_precision_files_are_smaller():
    torch.manual_seed(0)
    field = _field(Siren(2, 1, hidden_dim=64, num_layers=2), in_dim=2, out_dim=1, hidden_dim=64, num_layers=2)
    sizes = {d: field.stored_bytes(d, format="safetensors") for d in ("float32", "float16", "int8")}
    params = field.num_parameters()
    # two bytes fewer per parameter, plus one 4-byte power-of-two scale per tensor and its header entry
    assert 1.8 * params < sizes["float32"] - sizes["float16"] < 2 * params
    # about one byte fewer per parameter, less the int8 scales (2 bytes per weight row) and their headers
    assert 0.7 * params < sizes["float16"] - sizes["int8"] < params
    # the compact file, integers at N bits each: one bit per quantised integer fewer per bit
    quantized = sum(p.numel() for n, p in field.named_parameters() if storage.quantized(n, p))
    raw = {b: field.stored_bytes(f"int{b}", coder="raw") for b in range(2, 9)}
    for b in range(2, 8):
        assert abs((raw[b + 1] - raw[b]) - quantized / 8) <= 1


def test_per_row_scales_beat_one_scale_for_rows_of_different_size():
    w = torch.randn(16, 32) * torch.logspace(-3, 0, 16)[:, None]  # rows spanning three decades
    state, params = {"layer.weight": w}, ["layer.weight"]
    row = storage.round_trip(state, params, "int8", "row")["layer.weight"]
    tensor = storage.round_trip(state, params, "int8", "tensor")["layer.weight"]
    rel = lambda a: float(((a - w).norm(dim=1) / w.norm(dim=1)).max())  # noqa: E731
    assert rel(row) < 0.01 < rel(tensor)


def test_buffers_stay_float32():
    """A Fourier field's B (a buffer) is stored exactly: its errors would be phase errors."""
    torch.manual_seed(0)
    field = _field(FourierMLP(2, 1, hidden_dim=16, num_layers=1, num_features=8, sigma=40.0))
    tensors = safetensors_load(field.to_bytes("int8", "row", format="safetensors"))
    assert tensors["network.encoding.B"].dtype == torch.float32
    assert torch.equal(tensors["network.encoding.B"], field.network.encoding.B)
    assert tensors["network.mlp.0.weight"].dtype == torch.int8


def test_unknown_store_dtype_is_one_line(tmp_path):
    with pytest.raises(NirError, match="store.dtype must be one of auto, float32, float16, int8"):
        nir.fit("peaks1d", ["data.n=64", "store.dtype=int4"], run_dir=tmp_path / "r", steps=2)


@pytest.mark.parametrize("dtype", ["float16", "int8", "auto"])
def test_run_metrics_are_those_of_the_stored_field(dtype, tmp_path):
    """A run's metrics are its file's; the default (``auto``) stores the compact int8 field
    (issue 45: quantisation-aware, entropy coded), and 4x fewer bytes than float32 would."""
    from nir.data.synthetic import lognormal3d

    field, m = nir.fit(
        "lognormal3d",
        ["data.n=12", "model=hashgrid_lt3d", "optim.lr=1e-2", "log.images=false"]
        + [f"store.dtype={dtype}"] * (dtype != "auto"),
        run_dir=tmp_path / "run",
        steps=60,
        trainer__enable_progress_bar=False,
    )
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    stored = tmp_path / "run" / "field.nir"
    assert (
        saved["store_dtype"] == (storage.AUTO if dtype == "auto" else dtype) and saved["bytes"] == stored.stat().st_size
    )
    if dtype == "auto":
        assert saved["bytes"] < len(load_field(stored).to_bytes("float32", "row", "nir")) / 3
    values = 12**3
    assert saved["compression_ratio"] == pytest.approx(4 * values / saved["bytes"])
    assert saved["bits_per_sample"] == pytest.approx(8 * saved["bytes"] / values)
    # the metrics are the file's: evaluate the loaded field independently
    scored = nir.score(load_field(tmp_path / "run"), lognormal3d(n=12))
    assert scored["psnr"] == pytest.approx(saved["psnr"], abs=1e-4)
    assert scored["worst_decade_median"] == pytest.approx(saved["worst_decade_median"], rel=1e-4)


def test_float16_keeps_tiny_grid_values_relative():
    """Grid tables start at 1e-4: plain float16 would put them among its subnormals."""
    v = torch.empty(4096, 2).uniform_(-1e-6, 1e-6)
    back = storage.round_trip({"enc.embeddings": v}, ["enc.embeddings"], "float16")["enc.embeddings"]
    assert float(((back - v).abs() / v.abs().max()).max()) < 1e-3
    assert float(((v.half().float() - v).abs() / v.abs().max()).max()) > 1e-2  # what the scale avoids


def test_int8_keeps_the_coordinate_layer_and_biases_in_float16():
    torch.manual_seed(0)
    field = _field(Siren(2, 1, hidden_dim=32, num_layers=1))
    tensors = safetensors_load(field.to_bytes("int8", "row", format="safetensors"))
    assert tensors["network.body.0.linear.weight"].dtype == torch.float16  # fan-in 2: w0 multiplies its errors
    assert tensors["network.body.0.linear.bias"].dtype == torch.float16
    assert tensors["network.body.1.linear.weight"].dtype == torch.int8
    assert tensors["network.body.1.linear.weight" + storage.SCALE_SUFFIX].shape == (32, 1)  # one per row


def test_grid_tables_get_one_int8_scale_per_block_of_rows():
    table = torch.randn(1000, 2) * torch.logspace(-4, 0, 1000)[:, None]  # levels of very different size
    t = storage.encode({"enc.embeddings": table}, ["enc.embeddings"], "int8", "row")
    assert t["enc.embeddings"].dtype == torch.int8
    assert t["enc.embeddings" + storage.SCALE_SUFFIX].shape == (4, 1)  # ceil(1000 / 256) blocks
    back = storage.decode(t)["enc.embeddings"]
    blocked = float((back - table).abs()[:256].max() / table[:256].abs().max())
    assert blocked < 1 / 127  # the small first block keeps its own scale


@pytest.mark.parametrize("int8_scale", ["row", "tensor"])
@pytest.mark.parametrize("name,rows", [("net.weight", 8), ("enc.embeddings", 600)])
def test_int8_grid_values_round_trip_bit_exactly(name, rows, int8_scale):
    """The docs' rule is scale = max|w| / 127 with integers in [-127, 127]: a tensor whose entries
    are k * (integers in [-127, 127]), its maximum exactly 127 k (k a power of two, so every
    product is exact), is on the int8 grid and must come back bit for bit."""
    gen = torch.Generator().manual_seed(rows)
    k = 2.0**-9
    q = torch.randint(-127, 128, (rows, 16), generator=gen).float()
    q[:, 0] = 127.0  # every row and every block of rows reaches the maximum
    q[1::2, 1] = -127.0
    w = q * k
    t = storage.encode({name: w}, [name], "int8", int8_scale)
    assert t[name].dtype == torch.int8
    assert torch.equal(t[name].float(), q)  # the stored integers are the grid's
    assert torch.equal(storage.decode(t)[name], w)


@pytest.mark.parametrize(
    "data,overrides,knob",
    [
        ("peaks1d", ["data.n=512", "model=fourier_lt", "size.bytes=20000"], "hidden_dim"),  # an MLP's width
        (
            "lognormal3d",
            ["data.n=12", "model=hashgrid_lt3d", "size.bytes=15000", "store.dtype=int8"],
            "encoding.log2_hashmap_size",
        ),
        ("lognormal3d", ["data.n=16", "model=fourier_lt3d", "sampling=uniform", "size.ratio=2"], "hidden_dim"),
    ],
)
def test_a_budget_sizes_the_network_to_fit(data, overrides, knob, tmp_path, capsys):
    import yaml
    from omegaconf import OmegaConf, open_dict

    from nir.run.config import build
    from nir.run.resolve import candidate_bytes
    from nir.run.settings import store_of

    run = tmp_path / "run"
    _, m = nir.fit(data, [*overrides, "log.images=false"], run_dir=run, steps=2, trainer__enable_progress_bar=False)
    (line,) = [l for l in capsys.readouterr().out.splitlines() if l.startswith("size: budget")]
    chosen = OmegaConf.select(
        OmegaConf.create(yaml.safe_load((run / "config.yaml").read_text())["model"]), knob
    )  # saved
    assert f"model.{knob}={chosen}" in line
    budget = int(line.split("budget ")[1].split(" bytes")[0].replace(",", ""))
    assert (run / "field.nir").stat().st_size == m["bytes"] <= budget
    # issue 45: the budget is used, not halved: the sized file (its integers at N bits, what the rule
    # controls) within 10 % of it; the entropy coder then takes 2-16 % more (docs/compression.md)
    sized = int(line.split("(")[-1].split(" bytes before")[0].replace(",", ""))
    assert 0.9 * budget <= sized <= budget, (sized, budget)
    # the largest that fits: one more does not
    cfg = OmegaConf.load(run / "config.yaml")
    signal = build(cfg.data, "data")
    bigger = cfg.model.copy()
    with open_dict(bigger):
        OmegaConf.update(bigger, knob, chosen + 1)
    store = store_of(cfg)
    assert candidate_bytes(cfg, bigger, signal, store.dtype, store.int8_scale) > budget


@pytest.mark.parametrize("budget", [300, 1500, 6000])
def test_the_ladder_gives_a_3d_field_for_small_budgets(budget, tmp_path, capsys):
    """Down to ~300 bytes a 3-D preset gets a field that fits (the ladder changes levels,
    features, head and bits); a larger budget gets a larger table or more levels."""
    _, m = nir.fit("lognormal3d", ["data.n=24", f"size.bytes={budget}", "log.images=false"],
                   run_dir=tmp_path / "r", steps=3, trainer__enable_progress_bar=False)  # fmt: skip
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("size: budget")]
    assert m["bytes"] == (tmp_path / "r" / "field.nir").stat().st_size <= budget
    assert m["bytes"] > budget / 3  # the budget is used, not just met
    assert m["store_dtype"].startswith("int") and f"store {m['store_dtype']}" in line


@pytest.mark.parametrize("data", ["lognormal3d", "sources3d"])
def test_a_128_cubed_field_exists_at_ratio_1000(data, capsys):
    """Issue 22's acceptance at the size scientists keep: ratio 1000 of a 128^3 float32 field
    (8,388 bytes) gets a network whose file fits (sized before training; nothing trained here)."""
    from nir.run.config import build, compose_config
    from nir.run.parts import build_field, network_dims
    from nir.run.resolve import candidate_bytes, resolve_settings

    cfg, _ = compose_config([f"data={data}", "data.n=128", "size.ratio=1000"])
    signal = build(cfg.data, "data")
    settings = resolve_settings(cfg, signal)
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("size: budget 8,388 bytes")]
    resolved = settings.config
    assert resolved.store.bits != cfg.store.get("bits") and cfg.size.ratio == 1000  # chosen, and cfg left as composed
    field = build_field(resolved, resolved.model, network_dims(resolved, signal), signal)
    assert candidate_bytes(resolved, resolved.model, signal, settings.store.dtype, "row") <= 8388
    assert field.stored_bytes(f"int{resolved.store.bits}") <= 8388 and "store int" in line


def test_impossible_budgets_are_one_line(tmp_path):
    with pytest.raises(NirError, match="no network fits 100 bytes .the smallest setup, hidden_dim=1 "):
        nir.fit("peaks1d", ["data.n=64", "model=fourier_lt", "size.bytes=100"], run_dir=tmp_path / "a", steps=2)
    with pytest.raises(NirError, match="no network fits 60 bytes .the smallest setup, encoding.n_levels=2, "):
        nir.fit("lognormal3d", ["data.n=16", "size.bytes=60"], run_dir=tmp_path / "c", steps=2)
    with pytest.raises(NirError, match="set size.bytes or size.ratio, not both"):
        nir.fit("peaks1d", ["data.n=64", "size.bytes=1000", "size.ratio=10"], run_dir=tmp_path / "b", steps=2)


def test_quantisation_aware_training_starts_on_a_call_boundary():
    """With K optimizer steps a call the forward switches between calls only: QAT's first step
    is the call's first (24 steps, 20 %: step 19 alone, 18 with K = 6; before, K = 6 never began)."""
    from nir.codec.storage import Store, StoredTraining

    store = Store("int8", qat_fraction=0.2)
    assert StoredTraining(store, 24, 100).start == 19
    assert StoredTraining(store, 24, 100, steps_per_call=6).start == 18
    assert StoredTraining(Store("float32", qat_fraction=0.2), 24, 100).start is None
