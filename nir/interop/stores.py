"""``nir-compress in.zarr out.zarr --rel 0.01``: a chunked Zarr store compressed chunk by chunk
on Dask (docs/ecosystem.md).

The output is an ordinary Zarr 3 store: the variable with its coordinates and attributes, its
chunks coded by :class:`nir.interop.zarr3.NirZarr` (so ``xr.open_zarr`` reads it wherever nir is
installed). The metadata is written first (xarray's ``to_zarr(compute=False)``), then every
chunk is one ``dask.distributed`` task: read the block from the input, pad an edge block with
NaN to the chunk's shape (Zarr stores edge chunks whole; the padding is missing, so it costs a
few bytes of mask), train and check it (:func:`nir.interop.chunks.encode_chunk`: a chunk whose
training fails is tried again, then kept losslessly with one warning naming it), and write its
bytes under the chunk's key. The cluster is a ``LocalCluster`` of ``workers`` processes of one
thread each, or an existing one by address (a SLURM or Kubernetes deployment of Dask). The store
is written beside the output and renamed into place when every chunk is in, so a failed run
leaves nothing half-written under the output's name.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from nir.errors import NirError, require
from nir.interop.chunks import DTYPES, Nir, Report, encode_chunk


def parse_chunks(text: str | None, dims: tuple[str, ...], default: tuple[int, ...]) -> tuple[int, ...]:
    """``--chunks``: ``64,64,64`` (one size per dimension, in order) or ``time=1,lat=90`` (by name,
    the others as the input's); None: the input's chunks."""
    if not text:
        return default
    out = list(default)
    parts = [p.strip() for p in text.split(",") if p.strip()]
    named = all("=" in p for p in parts)
    require(named or len(parts) == len(dims),
            f"--chunks {text!r}: give {len(dims)} sizes ({','.join(dims)}) or name=size pairs")  # fmt: skip
    for k, p in enumerate(parts):
        name, _, size = p.rpartition("=") if named else (dims[k], "", p)
        require(name in dims, f"--chunks {text!r}: {name!r} is not a dimension ({', '.join(dims)})")
        require(size.isdigit() and int(size) >= 1, f"--chunks {text!r}: sizes are integers >= 1, got {size!r}")
        out[dims.index(name)] = int(size)
    return tuple(out)


def _variable(ds: Any, var: str | None, path: Path) -> str:
    names = sorted(str(v) for v in ds.data_vars)
    if var is None:
        floats = [v for v in names if ds[v].dtype.name in DTYPES]
        require(len(floats) == 1, f"{str(path)!r} holds {', '.join(names) or 'no variables'}; choose one with --var")
        return floats[0]
    require(var in names, f"{str(path)!r} has no variable {var!r} (it has {', '.join(names)}); fix --var")
    require(ds[var].dtype.name in DTYPES, f"--var {var}: nir codes float16/32/64, {var} is {ds[var].dtype}")
    return var


def compress_store(
    input: str | Path,
    output: str | Path,
    codec: Nir,
    var: str | None = None,
    chunks: str | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool | None = None,
) -> str:
    """Compress the Zarr store ``input`` into ``output`` (see the module docstring); the summary line."""
    import xarray as xr

    from nir.data.readers.datasets import open_dataset

    input, output = Path(input), Path(output)
    require(
        input.suffix == ".zarr" and input.is_dir(),
        f"{str(input)!r} is not a Zarr store (a .zarr directory); nir-compress IN.zarr OUT.zarr",
    )
    require(not output.exists(), f"{str(output)!r} exists; remove it or choose another output")
    ds = open_dataset(input)
    var = _variable(ds, var, input)
    da = ds[var]
    stored = da.encoding.get("chunks") or da.encoding.get("preferred_chunks") or da.shape
    if isinstance(stored, dict):
        stored = tuple(stored[d] for d in da.dims)
    shape = tuple(int(n) for n in da.shape)
    chunk = tuple(min(int(c), n) for c, n in zip(parse_chunks(chunks, tuple(map(str, da.dims)), tuple(stored)), shape))
    partial = output.with_name(output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    grid = [math.ceil(n / c) for n, c in zip(shape, chunk)]
    tasks = [tuple(int(i) for i in ix) for ix in np.ndindex(*grid)]
    try:
        _write_metadata(xr, ds, var, chunk, codec, partial)
        t = time.perf_counter()
        reports, start = _run(
            tasks, str(input), var, chunk, codec.get_config(), str(partial), scheduler, workers, progress
        )
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    seconds = time.perf_counter() - t
    partial.rename(output)
    return _summary(output, var, reports, codec, math.prod(shape) * da.dtype.itemsize, seconds, start)


def _write_metadata(xr: Any, ds: Any, var: str, chunk: tuple[int, ...], codec: Nir, path: Path) -> None:
    """The output's metadata and coordinates; the variable's chunks follow, one task each."""
    import dask.array

    from nir.interop.zarr3 import NirZarr

    da = ds[var]
    placeholder = dask.array.zeros(da.shape, dtype=da.dtype, chunks=chunk)
    out = xr.Dataset({var: (da.dims, placeholder, da.attrs)}, coords=da.coords, attrs=ds.attrs)
    config = {k: v for k, v in codec.get_config().items() if k != "id"}
    encoding = {
        var: {"serializer": NirZarr(**config), "compressors": None, "chunks": chunk, "fill_value": float("nan")}
    }
    for name in out.coords:
        out[name].encoding = {}
    with warnings.catch_warnings():  # xr.open_zarr reads consolidated metadata first; zarr 3 notes it is an extension
        warnings.filterwarnings("ignore", ".*[Cc]onsolidated metadata.*")
        out.to_zarr(path, mode="w-", compute=False, encoding=encoding, zarr_format=3, consolidated=True)


def _run(tasks, input, var, chunk, config, partial, scheduler, workers, progress) -> tuple[list, float]:
    """Every chunk on the cluster: ``(index, report, warnings)`` per chunk, and the seconds the
    cluster took to start (its workers import torch: seconds that do not grow with the store)."""
    from distributed import Client, LocalCluster, as_completed
    from distributed import progress as show

    cluster, t = None, time.perf_counter()
    if scheduler is None:
        n = workers or max(1, min(os.cpu_count() or 1, len(tasks)))
        cores = str(max(1, (os.cpu_count() or 1) // n))
        # each worker's share of the cores, set before it imports torch and numba: numba's thread
        # pool sized to every core in each of n processes costs 4-8x (docs/ecosystem.md)
        env = {"OMP_NUM_THREADS": cores, "NUMBA_NUM_THREADS": cores, "MKL_NUM_THREADS": cores}
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None, env=env)
    try:
        client = _client(Client, scheduler or cluster, scheduler)
        with client:
            client.wait_for_workers(n if cluster is not None else 1)
            client.run(_preload, len(chunk), cluster is not None)  # once per worker, before the clock of the chunks
            start = time.perf_counter() - t
            # a local cluster shares this machine's cores; a remote one's workers keep their own setting
            threads = int(cores) if cluster is not None else None
            futures = client.map(compress_chunk, tasks, input=input, var=var, chunk=chunk, config=config,
                                 output=partial, threads=threads, pure=False)  # fmt: skip
            if progress if progress is not None else sys.stderr.isatty():
                show(futures)
            return [f.result() for f in as_completed(futures)], start
    finally:
        if cluster is not None:
            cluster.close()


def _client(Client: Any, target: Any, scheduler: str | None) -> Any:
    """A client of the local cluster, or of the one at ``scheduler`` (one line if it cannot be reached)."""
    try:
        return Client(target)
    except (OSError, TimeoutError) as e:
        if scheduler is None:
            raise
        raise NirError(f"cannot reach the Dask scheduler at {scheduler!r} ({e}); check --scheduler") from None


def _preload(ndim: int, tune: bool) -> None:
    """A worker's first training, on a tiny smooth chunk of the store's dimension: the imports
    (torch, Lightning, Hydra) and the kernels' compilation are paid here, once per worker.
    ``tune``: nir-compress's own worker processes (a LocalCluster) get the allocator setting
    nir-train's process gets (:func:`nir.allocator.tune_allocator`; Dask's nanny asks glibc to
    trim freed memory at 64 KiB, which page-faults every step's activations in again)."""
    if tune:
        from nir.allocator import tune_allocator

        tune_allocator()
    axes = np.meshgrid(*[np.linspace(1, 2, 6)] * ndim, indexing="ij")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encode_chunk(sum(axes).astype(np.float32), Nir(rel=0.1, steps=2), "the warm-up chunk")


def compress_chunk(index, input, var, chunk, config, output, threads=None) -> tuple[tuple, Report, list[str]]:
    """One task: the block at chunk ``index`` of ``var`` in ``input``, coded and written under
    its key in ``output``; returns ``(index, report, warnings)``."""
    import torch

    from nir.data.readers.datasets import open_dataset

    if threads:
        torch.set_num_threads(threads)
    codec = Nir.from_config(config)
    da = open_dataset(Path(input))[var]
    region = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, chunk, da.shape))
    block = np.asarray(da[region].values)
    if block.shape != tuple(chunk):  # an edge chunk: Zarr stores it whole, the rest is missing
        full = np.full(chunk, np.nan, block.dtype)
        full[tuple(slice(0, s) for s in block.shape)] = block
        block = full
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        data, report = encode_chunk(block, codec, f"chunk {index} of {var}")
    _write_chunk(Path(output), var, index, data)
    return index, report, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def _write_chunk(output: Path, var: str, index: tuple, data: bytes) -> None:
    """The chunk's bytes under its key (the store's chunk key encoding: ``c/0/1/2``)."""
    import zarr

    key = zarr.open_array(output / var, mode="r").metadata.encode_chunk_key(index)
    path = output / var / key
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _summary(output: Path, var: str, reports: list, codec: Nir, raw: int, seconds: float, start: float) -> str:
    for _, _, messages in sorted(reports, key=lambda r: r[0]):
        for m in messages:
            warnings.warn(m, RuntimeWarning, stacklevel=3)
    nbytes = sum(r.nbytes for _, r, _ in reports)
    worst = max((r.worst for _, r, _ in reports), default=0.0)
    lossless = sum(r.lossless is not None and r.lossless != "missing everywhere" for _, r, _ in reports)
    bound = codec.rel if codec.rel is not None else codec.abs
    what = "relative" if codec.rel is not None else "absolute"
    err = f"max {what} error {worst * bound:.4g} (bound {bound:g})" if bound is not None else f"max error {worst:.4g}"
    n, work = len(reports), max(seconds - start, 1e-9)
    return (
        f"{output}: {var}, {n} chunks, {nbytes:,} bytes of chunks (ratio {raw / max(nbytes, 1):.3g}), {err}"
        + (f", {lossless} chunk(s) stored losslessly" if lossless else "")
        + f", {seconds:.1f} s (cluster start {start:.1f} s; then {n / work:.3g} chunks/s, {raw / 1e6 / work:.3g} MB/s)"
    )
