#!/usr/bin/env python
"""nir against the error-bounded compressors SZ3 (``pysz``), ZFP (``zfpy``), SPERR, EBCC and
TTHRESH (numcodecs-wasm, issue 37) at equal bytes (issues 14, 22): per-decade median relative error, PSNR and decode time at compression ratios
10, 30, 100, 300 and 1000, on the 3-D presets at 48^3 and 128^3 (``lognormal3d:n=128``).

For each dataset and ratio nir trains the dataset preset's field (no other override) under the
byte budget ``size.ratio=R``: the budget ladder (nir/budget.py) chooses the grid's table,
levels, features, head and stored bits so that the compact file fits; then each codec is
given exactly as many bytes as nir's file: its error bound is searched (bisection on a log
scale) for the smallest bound whose compressed stream fits. The codecs compress **log10 of
the data**: an absolute bound on log10 is a relative bound on the value, which is what the
per-decade metric judges (on the raw values their absolute bound leaves the small decades
with 100 % error at any useful ratio). Everything is scored by nir's own ``GridMetrics`` on
the whole grid. Needs the ``bench`` extra: ``pip install -e ".[bench]"``.

    .venv/bin/python scripts/bench_codec.py                          # every dataset, ~50 min on 2 cores
    .venv/bin/python scripts/bench_codec.py sources3d --ratios 10 100  # a subset
    .venv/bin/python scripts/bench_codec.py PATH.npy                   # your own array (positive values)
    .venv/bin/python scripts/bench_codec.py sources3d --ratios 30 100 --section bench_codec_anchors  # its own section
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


import nir
from nir.interop.benchmark import data_overrides, signal_of, write_section
from nir.training.metrics import SignalStats

#: nir's setup per dataset: the preset as it ships (its defaults are nir's best), under the budget
NIR = {"lognormal3d": [], "sources3d": [], "lognormal3d:n=128": [], "sources3d:n=128": [], "peaks1d": []}
RATIOS = [10, 30, 100, 300, 1000]


def score(pred: np.ndarray, signal) -> dict:
    r = nir.score(pred, signal)
    return {
        "psnr": r["psnr"],
        "worst": r.get("worst_decade_median"),
        "decades": {b["bin"]: b["median"] for b in r.get("magnitude_bins", [])[1:] if b["count"]},
    }


def fit_bytes(compress, budget: int, lo: float = 1e-7, hi: float = 10.0) -> tuple[float, bytes] | None:
    """The smallest error bound in [lo, hi] whose stream fits ``budget`` bytes (bisection on log scale)."""
    top = compress(hi)
    if len(top) > budget:
        return None
    best = (hi, top)
    a, b = math.log(lo), math.log(hi)
    for _ in range(40):
        mid = math.exp((a + b) / 2)
        c = compress(mid)
        if len(c) <= budget:
            best, b = (mid, c), math.log(mid)
        else:
            a = math.log(mid)
    return best


def sz3(log: np.ndarray):
    from pysz import sz, szConfig, szErrorBoundMode

    def compress(eb: float) -> bytes:
        cfg = szConfig(log.shape)
        cfg.errorBoundMode = szErrorBoundMode.ABS
        cfg.absErrorBound = eb
        return sz.compress(log, cfg)[0].tobytes()

    def decompress(c: bytes) -> np.ndarray:
        return sz.decompress(np.frombuffer(c, dtype=np.uint8), np.float32, log.shape)[0]

    return compress, decompress


def zfp(log: np.ndarray):
    import zfpy

    return (lambda eb: zfpy.compress_numpy(log, tolerance=eb)), zfpy.decompress_numpy


def _wasm(log: np.ndarray, make):
    """A numcodecs-wasm codec (bench extra) with its error parameter ``eb``: ``make(eb)``."""

    def compress(eb: float) -> bytes:
        return bytes(make(eb).encode(log))

    def decompress(c: bytes) -> np.ndarray:
        return np.asarray(make(1.0).decode(np.frombuffer(c, np.uint8))).reshape(log.shape)

    return compress, decompress


def sperr(log: np.ndarray):
    from numcodecs_wasm_sperr import Sperr

    return _wasm(log, lambda eb: Sperr(mode="pwe", pwe=eb))


def ebcc(log: np.ndarray):
    from numcodecs_wasm_ebcc import Ebcc

    return _wasm(log, lambda eb: Ebcc(residual="absolute", error=eb))


def tthresh(log: np.ndarray):
    """TTHRESH (tensor decomposition): no point-wise bound, its RMSE target is searched."""
    from numcodecs_wasm_tthresh import Tthresh

    return _wasm(log, lambda eb: Tthresh(eb_mode="rmse", eb_rmse=eb))


#: the compressors beside nir at equal bytes: their bound (or TTHRESH's RMSE) searched to fit
CODECS = {"SZ3": sz3, "ZFP": zfp, "SPERR": sperr, "EBCC": ebcc, "TTHRESH": tthresh}


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    """The best of ``repeat`` wall times of ``fn()`` (this machine is shared) and its result."""
    best, out = math.inf, None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def run_nir(name: str, ratio: float, tmp: Path) -> dict | None:
    """nir's field under ``size.ratio=ratio``; its decode time is ``load_field`` of the compact
    file plus ``Field.sample`` of the whole grid."""
    preset, opts = data_overrides(name)
    run = tmp / f"{Path(name).stem.replace(':', '_')}_{ratio}"
    try:
        field, m = nir.fit(preset, [*opts, *NIR.get(name, []), f"size.ratio={ratio}", "log.images=false",
                                    "trainer.enable_progress_bar=false"], run_dir=run)  # fmt: skip
    except nir.NirError as e:  # no network fits the budget
        print(f"  nir at ratio {ratio}: {e}", flush=True)
        return None
    decode_s, _ = timed(lambda: nir.load_field(run / "field.nir").sample())
    decades = {b["bin"]: b["median"] for b in m.get("magnitude_bins", [])[1:] if b["count"]}
    spec = field.spec["network"]["kwargs"]
    enc = spec.get("encoding") or {}
    model = (f"grid {enc.get('n_levels')}x{enc.get('n_features_per_level')}, 2^{enc.get('log2_hashmap_size')}, "
             f"head {spec.get('hidden_dim')}" if "n_levels" in enc else field.spec["network"]["target"].split(".")[-1])  # fmt: skip
    return {"bytes": m["bytes"], "psnr": m["psnr"], "worst": m.get("worst_decade_median"), "decades": decades,
            "fit_s": m.get("fit_time_s"), "decode_s": decode_s, "model": model, "store": m["store_dtype"],
            "num_params": field.num_parameters(), "header": m.get("bytes_header")}  # fmt: skip


def bench(name: str, ratios: list[float], tmp: Path) -> list[dict]:
    signal = signal_of(name)
    values = signal.flat().numpy().reshape(signal.shape).astype(np.float32)
    floor = float(SignalStats.measure(signal).floor)
    log = np.log10(np.maximum(values, floor)).astype(
        np.float32
    )  # the codecs' input: log10, floored at the metric floor
    raw_bytes = values.size * 4
    rows = []
    for ratio in ratios:
        t = time.perf_counter()
        res = run_nir(name, ratio, tmp)
        budget = res["bytes"] if res else int(raw_bytes / ratio)
        row = {"data": name, "ratio": ratio, "budget": budget, "samples": values.size, "nir": res}
        for codec, make in CODECS.items():
            compress, decompress = make(log)
            found = fit_bytes(compress, budget)
            if found is None:
                row[codec] = None
                continue
            eb, stream = found
            decode_s, back = timed(lambda stream=stream, decompress=decompress: decompress(stream))
            pred = np.power(10.0, back.astype(np.float64)).reshape(-1)
            row[codec] = {"bytes": len(stream), "bound_log10": eb, "decode_s": decode_s, **score(pred, signal)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        print(f"  {name} ratio {ratio}: {time.perf_counter() - t:.0f} s", flush=True)
    return rows


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f} %"


def report(rows: list[dict], figure: Path) -> list[str]:
    lines = [
        "## nir against SZ3, ZFP, SPERR, EBCC and TTHRESH at equal bytes",
        "",
        "Generated by `scripts/bench_codec.py` (do not edit by hand); "
        f"{time.strftime('%Y-%m-%d')}, torch {torch.__version__}, 2-core CPU.",
        "nir: the dataset preset as it ships under `size.ratio=R` (the budget ladder picks the grid and the "
        "stored bits; bytes = the compact `field.nir`, header included). SZ3 (absolute bound), ZFP (fixed accuracy), SPERR (point-wise bound), EBCC (absolute residual bound) and TTHRESH (RMSE target) compress log10 of the "
        "values (floored at the metric floor), each given exactly nir's bytes (the smallest bound whose "
        "stream fits; at the ratios where no nir field fits, the raw size / R). Errors: median relative "
        "error per magnitude decade; 'worst' is the worst decade above the floor, 'top' the largest values' decade. "
        "Decode: nir `load_field` + `Field.sample` of the whole grid, the codecs' decompress (best of 3, this CPU).",
        "",
        "| data | ratio | bytes | bits/sample | method | worst decade | top decade | PSNR | decode |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        n = r["budget"]
        bits = f"{8 * n / r['samples']:.2f}"
        for method in ("nir", *(c for c in CODECS if c in r)):
            m = r[method]
            if m is None:
                lines.append(
                    f"| {r['data']} | {r['ratio']} | {n:,} | {bits} | {method} | no fit at this size | - | - | - |"
                )
                continue
            top = list(m["decades"].values())[-1] if m["decades"] else None
            label = (
                f"nir ({m.get('model', '?')}, {m['num_params']:,} parameters, {m.get('store', '?')})"
                if method == "nir"
                else method
            )
            decode = f"{m['decode_s']:.3f} s" if m.get("decode_s") is not None else "-"
            lines.append(
                f"| {r['data']} | {r['ratio']} | {m['bytes']:,} | {bits} | {label} | {pct(m['worst'])} | {pct(top)} | "
                f"{m['psnr']:.1f} dB | {decode} |"
            )
    lines += ["", f"![worst- and top-decade error against bits per sample]({figure.name})", ""]
    plot(rows, figure)
    return lines


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["data"] for r in rows))
    fig, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 6.4), squeeze=False)
    for col, name in enumerate(names):
        sub = [r for r in rows if r["data"] == name]
        size = sub[0]["samples"]
        for row, (what, pick) in enumerate(
            [("worst-decade", lambda m: m["worst"]), ("top-decade", lambda m: list(m["decades"].values())[-1])]
        ):
            ax = axes[row][col]
            for method, style in [("nir", "o-"), ("SZ3", "s--"), ("ZFP", "^:"), ("SPERR", "d-."), ("TTHRESH", "v:")]:
                pts = [
                    (8 * r[method]["bytes"] / size, pick(r[method]))
                    for r in sub
                    if r.get(method) and r[method]["decades"]
                ]
                if pts:
                    x, y = zip(*sorted(pts))
                    ax.plot(x, [100 * v for v in y], style, label=method)
            ax.set(xscale="log", yscale="log", xlabel="bits per sample", ylabel=f"{what} median error (%)")
            ax.set_title(f"{name}: {what}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="*", default=list(NIR),
                    help="presets (lognormal3d sources3d peaks1d; lognormal3d:n=128 for 128^3) or .npy paths")  # fmt: skip
    ap.add_argument("--ratios", type=float, nargs="+", default=RATIOS)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "compression.md")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    ap.add_argument(
        "--section", default="bench_codec", help="the generated section of --out to write (and its figure's name)"
    )
    ap.add_argument(
        "--reuse", type=Path, default=None, help="JSON lines of earlier rows: kept, their (data, ratio) not rerun"
    )
    args = ap.parse_args()
    try:
        import pysz  # noqa: F401
        import zfpy  # noqa: F401
    except ImportError:
        sys.exit('bench_codec: needs pysz and zfpy: pip install -e ".[bench]"')
    ratios = [int(r) if float(r).is_integer() else r for r in args.ratios]
    text = args.reuse.read_text().strip() if args.reuse else ""
    old = json.loads(text) if text.startswith("[") else [json.loads(x) for x in text.splitlines() if x.strip()]
    done = {(r["data"], r["ratio"]) for r in old}
    rows = list(old)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.data:
            todo = [r for r in ratios if (name, r) not in done]
            rows += bench(name, todo, Path(tmp)) if todo else []
    order = {n: i for i, n in enumerate(args.data)}
    rows.sort(key=lambda r: (order.get(r["data"], 99), r["ratio"]))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    figure = "compression-rd.png" if args.section == "bench_codec" else f"{args.section}.png"
    lines = report(rows, args.out.parent / figure)
    write_section(args.out, args.section, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
