"""Benchmark support for the scripts under ``scripts/`` (they import nir, never each other or the
tests): the cameraman workload, a plain PyTorch loop to compare with, step timers, PSNR
curves, and the writer of the generated sections of docs/. Not part of the training path."""

from __future__ import annotations

import importlib.util
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nir.data.readers import read_image
from nir.data.signal import Signal
from nir.fields import Siren


def cameraman256() -> Signal:
    """The SIREN notebook's target: cameraman resized to 256x256, gray, values in [-1, 1],
    saved as an 8-bit PNG so that the plain loop and nir read exactly the same pixels.
    Resized by torch's antialiased bilinear interpolation (scikit-image's ``resize`` until
    nir stopped depending on scikit-image; the two differ by a fraction of a grey level)."""
    import imageio.v3 as iio
    import torch.nn.functional as F

    s = read_image(sample="camera", value_range=(0, 1))
    x = s.values[..., 0][None, None]
    img = F.interpolate(x, size=(256, 256), mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy()
    path = Path(tempfile.gettempdir()) / "nir_cameraman256.png"
    iio.imwrite(path, (np.clip(img, 0, 1) * 255).round().astype(np.uint8), extension=".png")
    return read_image(str(path), value_range=(-1, 1))


def siren_flops_per_point(d_in=2, width=256, hidden=3, d_out=1) -> float:
    """Multiply-adds x 2 of the linear layers, forward; a training step is ~3x (forward, grad
    w.r.t. weights, grad w.r.t. inputs; the first layer needs no input gradient: ~3x - 1 layer)."""
    fwd = 2 * (d_in * width + hidden * width * width + width * d_out)
    return 3 * fwd - 2 * d_in * width


def block(device: str) -> int:
    """Steps between timing points: 1 on the CPU (each step is synchronous), 10 on a GPU."""
    return 10 if device == "cuda" else 1


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_ceiling(dtype: torch.dtype, device: str = "cpu", reps: int = 10) -> float:
    """GFLOP/s of a large square matmul in ``dtype`` (2048^3 on CPU, 8192^3 on GPU): best of ``reps``."""
    n = 8192 if device == "cuda" else 2048
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    ts = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        ts.append(time.perf_counter() - t)
    return 2 * n**3 / min(ts) / 1e9


def psnr(pred: torch.Tensor, target: torch.Tensor, rng: float) -> float:
    mse = float(((pred.float() - target.float()) ** 2).mean())
    return 10 * math.log10(rng**2 / mse)


AUTOCAST = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


class PlainLoop:
    """The reference: a minimal PyTorch loop (coordinates precomputed, full batch). ``16-mixed``
    uses a gradient scaler, as Lightning does; ``compile`` wraps the network in torch.compile."""

    def __init__(
        self,
        signal: Signal,
        lr: float,
        precision: str = "32",
        seed: int = 0,
        device: str = "cpu",
        compile: bool = False,
        batch: int | None = None,
    ) -> None:
        torch.manual_seed(seed)
        self.device = device
        self.net = Siren(2, 1, 256, 3).to(device)
        self.fwd = torch.compile(self.net, dynamic=False) if compile else self.net
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        n = signal.numel
        self.x = signal.grid().coords(torch.arange(n)).to(device)
        self.y = signal.flat().to(device)
        self.batch = None
        if batch is not None and batch < n:  # minibatches: random pixels each step, as a training loop draws them
            self.batch = batch
        elif batch is not None and batch > n:  # random coordinates and targets of a larger batch (throughput only)
            self.x = torch.rand(batch, 2, device=device) * 2 - 1
            self.y = torch.rand(batch, 1, device=device)
        self.dtype = AUTOCAST[precision]
        self.scaler = torch.amp.GradScaler(device) if precision == "16-mixed" else None

    def step(self) -> None:
        x, y = self.x, self.y
        if self.batch is not None:
            idx = torch.randint(0, x.shape[0], (self.batch,), device=x.device)
            x, y = x[idx], y[idx]
        with torch.autocast(self.device, dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None):
            p = self.fwd(x)
        loss = ((p.float() - y) ** 2).mean()
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()

    def timed(self, steps: int, warmup: int = 3) -> list[float]:
        """Per-step times. On a GPU, the mean of each block of BLOCK steps between two
        synchronisations: a training loop never waits for the GPU at every step, so the host's
        work overlaps the kernels as it would in real use."""
        for _ in range(warmup):
            self.step()
        k = block(self.device)
        ts = []
        for _ in range(max(1, steps // k)):
            sync(self.device)
            t = time.perf_counter()
            for _ in range(k):
                self.step()
            sync(self.device)
            ts.append((time.perf_counter() - t) / k)
        return ts

    def psnr(self) -> float:
        with torch.no_grad():
            return psnr(self.net(self.x), self.y, 2.0)  # values in [-1, 1]


def graphed_step_time(signal: Signal, precision: str, steps: int = 200, batch: int | None = None) -> float:
    """GPU only: the plain loop's whole step (forward, backward, Adam) captured once in a CUDA
    graph and replayed, i.e. the step without the host. Seconds per step. ``batch``: random
    coordinates of that many samples instead of the full grid (throughput only)."""
    torch.manual_seed(0)
    dev = "cuda"
    net = Siren(2, 1, 256, 3).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, capturable=True)
    x = signal.grid().coords(torch.arange(signal.numel)).to(dev)
    y = signal.flat().to(dev)
    if batch is not None and batch < signal.numel:
        x, y = torch.rand(batch, 2, device=dev) * 2 - 1, torch.rand(batch, 1, device=dev)
    dtype = AUTOCAST[precision]

    def step() -> None:
        with torch.autocast(dev, dtype=dtype or torch.bfloat16, enabled=dtype is not None, cache_enabled=False):
            p = net(x)
        ((p.float() - y) ** 2).mean().backward()
        opt.step()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up on a side stream, as graph capture requires
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)  # backward in the capture then writes fresh gradients on each replay
    with torch.cuda.graph(graph):
        step()
    for _ in range(5):
        graph.replay()
    sync(dev)
    t = time.perf_counter()
    for _ in range(steps):
        graph.replay()
    sync(dev)
    return (time.perf_counter() - t) / steps


DEVICE_OVERRIDES: list[str] = []  # ["trainer=gpu"] with --device cuda


def nir_run(signal_path: str, overrides: list[str], steps: int, run_dir: Path, cb=()) -> dict:
    from nir.run.config import compose_config
    from nir.run.run import train_field

    ov = [
        *DEVICE_OVERRIDES,
        f"data.path={signal_path}",
        f"trainer.max_steps={steps}",
        "trainer.enable_progress_bar=false",
        "log.images=false",
        "check_finite_every=0",
        *overrides,
    ]
    _, m = train_field(compose_config(ov)[0], run_dir, callbacks=list(cb))
    return m


def step_timer(device: str = "cpu"):
    import pytorch_lightning as pl

    class StepTimer(pl.Callback):
        """Wall time per optimizer step, as the plain loop's timer: on the CPU per training call,
        on a GPU between synchronisations every ``block`` calls (a loop never waits for the GPU
        at every step). A call runs ``steps_per_call`` optimizer steps, so each interval is
        divided by the optimizer steps it holds."""

        def __init__(self) -> None:
            self.points: list[tuple[float, int]] = []
            self.k = block(device)
            self.n = 0

        def on_train_batch_start(self, trainer, *a, **k) -> None:
            if self.n % self.k == 0:
                sync(device)
                self.points.append((time.perf_counter(), trainer.global_step))
            self.n += 1

        def on_train_end(self, trainer, *a) -> None:
            sync(device)
            self.points.append((time.perf_counter(), trainer.global_step))

        def step_times(self, skip: int = 3) -> list[float]:
            """Seconds per optimizer step of each interval after the first ``skip`` steps."""
            p = [(t, s) for t, s in self.points if s >= skip]
            return [(t1 - t0) / (s1 - s0) for (t0, s0), (t1, s1) in zip(p, p[1:]) if s1 > s0]

    return StepTimer()


def psnr_curve(every: int):
    import pytorch_lightning as pl

    class Curve(pl.Callback):
        """Time (training only) at which PSNR (fp32, whole image, R = 2 on [-1, 1]) first reaches 30 / 40 dB."""

        def __init__(self) -> None:
            self.t, self.points, self.paused = 0.0, [], 0.0

        def on_train_start(self, trainer, module) -> None:
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, module, *a) -> None:
            # a call may run several optimizer steps: evaluate when the count crosses a multiple
            if trainer.global_step // every <= getattr(self, "done", 0):
                return
            self.done = trainer.global_step // every
            p0 = time.perf_counter()
            m = module.evaluate()
            self.points.append((p0 - self.t0 - self.paused, trainer.global_step, m["psnr"]))
            self.paused += time.perf_counter() - p0

    return Curve()


def write_section(path: Path, name: str, text: str) -> None:
    """Replace the section that script ``name`` generates in ``path`` (between its
    ``<!-- name: begin -->`` / ``end`` markers), or append it; the rest of the file is kept."""
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    old = path.read_text() if path.is_file() else ""
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) + 1 :]
    else:
        new = (old.rstrip() + "\n\n" if old else "") + block
    path.write_text(new)


def fmt3(xs: list[float], scale: float = 1.0, nd: int = 3) -> str:
    xs = sorted(x * scale for x in xs)
    return f"{xs[0]:.{nd}f} / {statistics.median(xs):.{nd}f} / {xs[-1]:.{nd}f}"


def first_reach(points, level):
    for t, s, p in points:
        if p >= level:
            return t, s
    return None, None


def data_overrides(name: str) -> tuple[str, list[str]]:
    """A benchmark's dataset name as a data preset and its overrides: ``lognormal3d:n=128`` ->
    ``("lognormal3d", ["data.n=128"])``; a ``.npy`` / ``.npz`` path -> ``data=array``."""
    if name.endswith((".npy", ".npz")):
        return "array", [f"data.path={name}"]
    preset, *opts = name.split(":")
    return preset, [f"data.{o}" for o in opts]


def signal_of(name: str) -> Any:
    """The signal a benchmark's dataset name reads (:func:`data_overrides`)."""
    from nir.run.config import build, compose_config

    preset, opts = data_overrides(name)
    cfg, _ = compose_config([f"data={preset}", *opts])
    return build(cfg.data, "data")


# ----------------------------------------------------------------------------- real fields
def _npy(path: Path, a: np.ndarray) -> tuple[Path, list[str]]:
    np.save(path, a.astype(np.float32))
    return path, []


def _minus_median(a: np.ndarray) -> np.ndarray:
    return a - np.float32(np.median(a))


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the package {name!r} is not installed: pip install -e '.[realdata]'")
    return Path(list(spec.submodule_search_locations)[0])


def fits_image(package: str, rel: str, hdu: int = 0) -> np.ndarray:
    from astropy.io import fits

    with fits.open(package_dir(package) / rel) as f:
        return np.asarray(f[hdu].data, dtype=np.float32)


def cdf_variable(rel: str, var: str) -> np.ndarray:
    """A variable of a CDF file shipped by sunpy, its fill values as NaN (nir's missing values)."""
    import cdflib

    f = cdflib.CDF(str(package_dir("sunpy") / rel))
    a = np.asarray(f.varget(var), dtype=np.float32)
    fill = f.varattsget(var).get("FILLVAL")
    if fill is not None:
        a[a == np.float32(np.asarray(fill).reshape(-1)[0])] = np.nan
    return a


def name_ash(rel: str = "sample_data/NAME_output.txt") -> np.ndarray:
    """A NAME III dispersion model output (the Eyjafjallajokull ash forecast): a header, column
    titles, then one line per non-zero cell ``x, y, lon, lat, field1, field2, field3``
    (1-based cell-centre indices) -> ``(fields, y, x)`` with zeros elsewhere."""
    lines = (package_dir("iris_sample_data") / rel).read_text().splitlines()
    head = {k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[:20] if ":" in ln)}
    nx, ny, nf = int(head["X grid size"]), int(head["Y grid size"]), int(head["Number of fields"])
    start = next(i for i, ln in enumerate(lines) if ln.strip().startswith("X grid,")) + 2
    rows = np.array([[float(v) for v in ln.split(",")[: 4 + nf]] for ln in lines[start:] if ln.strip()])
    out = np.zeros((nf, ny, nx), np.float32)
    ix, iy = rows[:, 0].astype(int) - 1, rows[:, 1].astype(int) - 1
    for f in range(nf):
        out[f, iy, ix] = rows[:, 4 + f]
    return out


#: name -> (what it is, where it comes from, licence, writer of the file nir is given)
#: real long-tailed fields that packages ship as test or sample data (the realdata extra; no
#: download): name -> (description, source, licence, writer of the ``.npy`` or file to train on)
REAL_FIELDS = {
    "aia171": (
        "solar EUV image (SDO/AIA 171 A, level 1, 128^2; 1 % of pixels <= 0)",
        "sunpy: sunpy/data/test/aia_171_level1.fits",
        "BSD-3-Clause (sunpy); SDO data are public",
        lambda d: _npy(d / "aia171.npy", fits_image("sunpy", "data/test/aia_171_level1.fits")),
    ),
    "m13": (
        "star cluster M13 (300^2), sky-subtracted (minus its median): noise around zero, stars to 3,500",
        "astropy: astropy/io/fits/hdu/compressed/tests/data/m13.fits",
        "BSD-3-Clause (astropy)",
        lambda d: _npy(
            d / "m13.npy", _minus_median(fits_image("astropy", "io/fits/hdu/compressed/tests/data/m13.fits"))
        ),
    ),
    "rhessi": (
        "solar hard X-ray image (RHESSI CLEAN, 64^2; 49 % of pixels below zero)",
        "sunpy: sunpy/data/test/hsi_image_20101016_191218.fits",
        "BSD-3-Clause (sunpy); RHESSI data are public",
        lambda d: _npy(d / "rhessi.npy", fits_image("sunpy", "data/test/hsi_image_20101016_191218.fits")),
    ),
    "ions": (
        "energetic ion flux (Solar Orbiter EPD/EPT, 39,784 time steps x 12 energy channels; 97 % zeros, fill values)",
        "sunpy: sunpy/data/test/solo_L2_epd-ept-north-hcad_20200713_V02.cdf (read with cdflib)",
        "BSD-3-Clause (sunpy); Solar Orbiter data are public",
        lambda d: _npy(
            d / "ions.npy", cdf_variable("data/test/solo_L2_epd-ept-north-hcad_20200713_V02.cdf", "Ion_Flux")
        ),
    ),
    "ash": (
        "volcanic ash air concentration (NAME III, 3 flight-level bands x 214 x 584; mostly zero, 14 decades)",
        "iris-sample-data: sample_data/NAME_output.txt",
        "Open Government Licence (iris-sample-data, Met Office)",
        lambda d: _npy(d / "ash.npy", name_ash()),
    ),
    "electrons": (
        "ionospheric electron density Ne (29 heights x 31 x 31; heights not uniform), NetCDF as shipped",
        "iris-sample-data: sample_data/space_weather.nc",
        "Open Government Licence (iris-sample-data, Met Office)",
        lambda d: (package_dir("iris_sample_data") / "sample_data" / "space_weather.nc", ["data.var=Ne"]),
    ),
}


# ----------------------------------------------------------------------------- bounded compression
def max_rel(pred: np.ndarray, y: np.ndarray, floor: float) -> float:
    y = y.reshape(-1).astype(np.float64)
    return float((np.abs(pred.reshape(-1).astype(np.float64) - y) / np.maximum(np.abs(y), floor)).max())


def bounded_row(path: Path, eps: float, tmp: Path, ratio: float | None = None, network: str | None = None) -> dict:
    """``nir-compress --rel eps [--ratio R] [--network N]`` of ``path`` (an ``.npy``) and back,
    measured: bytes (the residual's and the network's apart, and 'plain': the same network with
    the residual coded as before issue 37), the maximum relative error over every sample, the
    floor, compress and decompress times."""
    from nir.interop.compress import compress, decompress
    from nir.reuse.field import load_field

    out = tmp / f"{path.stem}_{eps}_{ratio}_{network}.nir"
    t = time.perf_counter()
    line = compress(path, out, rel=eps, ratio=ratio, network=network, quiet=True)
    c_s = time.perf_counter() - t
    t = time.perf_counter()
    back = decompress(out, tmp / "back.npy")
    d_s = time.perf_counter() - t
    from nir.codec.bound import decode as decode_residual
    from nir.reuse.compact import compact_header_bytes

    field = load_field(out)
    floor = decode_residual(field.residual, back.size).bound.floor
    y = np.load(path)

    data = out.read_bytes()
    # the residual the coder before issue 37 stores for the same network: one Laplace, no context
    from nir.codec import bound as B

    bound = decode_residual(field.residual, back.size).bound
    pred = field._network_grid().reshape(-1)
    plain = len(data) - len(field.residual) + 31 + len(B.code_ints(B.quantize(pred, y.reshape(-1), bound)))
    return {"bytes": out.stat().st_size, "residual": len(field.residual or b""), "plain": plain, "header": compact_header_bytes(data, field),
            "max_rel": max_rel(back, y, floor), "floor": floor, "compress_s": c_s, "decompress_s": d_s,
            "line": line, "network_ratio": ratio, "network": network or "auto", "params": field.num_parameters()}  # fmt: skip
