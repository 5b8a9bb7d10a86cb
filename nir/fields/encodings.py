"""Input encodings: ``(N, d)`` coordinates -> ``(N, n_output_dims)`` features for an MLP head.

An encoding is a plain ``nn.Module`` with ``in_dim`` and ``n_output_dims``; :class:`~nir.fields.mlp.EncodedMLP`
feeds it into a ReLU MLP, as tiny-cuda-nn's ``NetworkWithInputEncoding`` composes an encoding
with a network. A new encoding is one class here and one config file under ``conf/model/``.

Every encoding computes in fp32, also under autocast (the MLP head may run in bf16): the phase
of a Fourier feature and the interpolation weights of a grid both need fp32's mantissa.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from nir.errors import NirError, positive_float, positive_int, require

# the grid encoding's implementations: the torch path (the reference), Triton kernels on CUDA
# (nir.fields.grid_triton), Numba kernels on the CPU (nir.fields.grid_numba)
BACKENDS = ("auto", "torch", "triton", "numba")
KERNEL_FOR = {"cuda": "triton", "cpu": "numba"}  # what auto tries on each device type
log = logging.getLogger("nir")

# tiny-cuda-nn's spatial-hash primes, one per axis (the first is 1: coherent along x)
PRIMES = (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737)


#: the kernels' verdicts per (kernel, device, grid layout) in this process (GridEncoding._verify)
_VERIFIED: dict[tuple, str | None] = {}


class UnitBox(nn.Module):
    """The signal's box ``bounds`` mapped onto [-1, 1] per axis, the domain the SIREN and Fourier
    initialisations assume, so a field trained in a file's units (degrees, metres, days) sees
    what it would on [-1, 1]. No box, or [-1, 1] itself: the identity (no arithmetic, so fields
    on the default box are bit for bit what they were). Holds no state of its own: the map is
    rebuilt from the spec's ``bounds``."""

    def __init__(self, in_dim: int, bounds: Sequence[Sequence[float]] | None) -> None:
        super().__init__()
        b = None if bounds is None else torch.tensor(bounds, dtype=torch.float64)
        if b is not None:
            require(
                tuple(b.shape) == (in_dim, 2), f"model.bounds must be one [lo, hi] per axis ({in_dim}), got {bounds}"
            )
            require(bool((b[:, 1] > b[:, 0]).all()), f"model.bounds needs lo < hi on every axis, got {bounds}")
        self.active = b is not None and bool((b[:, 0] != -1).any() or (b[:, 1] != 1).any())
        if self.active:
            span = b[:, 1] - b[:, 0]
            self.register_buffer("scale", (2.0 / span).float(), persistent=False)
            self.register_buffer("shift", (-(b[:, 1] + b[:, 0]) / span).float(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.addcmul(self.shift, x.float(), self.scale) if self.active else x


class FourierEncoding(nn.Module):
    """Fourier features (Tancik et al., NeurIPS 2020, arXiv:2006.10739):
    ``gamma(v) = [cos(2 pi B v), sin(2 pi B v)]`` with a fixed matrix ``B`` (a buffer).

    gaussian:   B ~ N(0, sigma^2), shape (num_features, in_dim)                   (paper Sec. 6)
    positional: frequencies sigma^(j/m), j = 0..m-1, on each axis separately ("log-linear";
                m = num_features // in_dim rows per axis)                          (paper Sec. 5)
    none:       gamma(v) = v, the coordinates themselves (the paper's "no mapping" baseline:
                a plain ReLU MLP)
    """

    def __init__(
        self,
        in_dim: int,
        num_features: int = 256,
        sigma: float = 10.0,
        mapping: str = "gaussian",
        seed: int = 0,
        bounds: Sequence[Sequence[float]] | None = None,
    ) -> None:
        super().__init__()
        self.box = UnitBox(in_dim, bounds)  # the signal's box onto [-1, 1]: sigma means the same on any box
        positive_int("model.encoding.num_features", num_features)
        positive_float("model.encoding.sigma", sigma)
        gen = torch.Generator().manual_seed(int(seed))
        if mapping == "gaussian":
            B = torch.randn(num_features, in_dim, generator=gen) * sigma
        elif mapping == "none":
            B = torch.zeros(0, in_dim)
        elif mapping == "positional":
            m = max(1, num_features // in_dim)
            freqs = sigma ** (torch.arange(m, dtype=torch.float64) / m)
            B = torch.zeros(m * in_dim, in_dim, dtype=torch.float64)
            for k in range(in_dim):
                B[k * m : (k + 1) * m, k] = freqs
            B = B.float()
        else:
            raise NirError(f"model.encoding.mapping must be 'gaussian', 'positional' or 'none', got {mapping!r}")
        self.in_dim, self.identity = in_dim, mapping == "none"
        self.register_buffer("B", B)

    @property
    def n_output_dims(self) -> int:
        return self.in_dim if self.identity else 2 * self.B.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        """``Float[Tensor, "N in_dim"]`` -> ``Float[Tensor, "N 2*num_features"]``, fp32."""
        x = self.box(x)
        if self.identity:
            return x.float()
        with torch.autocast(x.device.type, enabled=False):
            proj = (2.0 * math.pi) * (x.float() @ self.B.T)
            return torch.cat([torch.cos(proj), torch.sin(proj)], dim=-1)


class GridEncoding(nn.Module):
    """Multiresolution grid encoding (Müller et al., "Instant neural graphics primitives",
    SIGGRAPH 2022, arXiv:2201.05989), hashed or dense, in any dimension.

    Level ``l`` is a grid of resolution ``N_l = floor(base_resolution * per_level_scale^l)``
    per axis over the box ``bounds``; a point's feature at that level is the d-linear
    interpolation of the ``2^d`` surrounding vertices' feature vectors (``n_features_per_level``
    each), and the encoding concatenates the levels: ``n_levels * n_features_per_level`` values.
    Vertex features live in one table per level:

    - ``hashed=True`` (tiny-cuda-nn's ``HashGrid``): a level whose dense grid has more than
      ``2^log2_hashmap_size`` vertices uses that many entries, indexed by the spatial hash
      ``(XOR_i c_i * pi_i) mod 2^log2_hashmap_size`` with tiny-cuda-nn's primes ``pi``; a level
      that fits is indexed densely (row-major, axis 0 slowest), without collisions.
    - ``hashed=False`` (``DenseGrid``): every level is a full grid, ``N_l^d`` entries.

    ``per_level_scale`` may be given, or derived from ``finest_resolution``:
    ``exp((ln finest - ln base) / (n_levels - 1))`` (instant-ngp's ``b``). Tables start at
    ``U(-1e-4, 1e-4)`` (instant-ngp). Vertex ``i`` of an axis of resolution ``N`` sits at
    ``lo + i (hi - lo) / (N - 1)``: the grid's corners are the box's. Coordinates outside the box
    are clamped to it. The torch path (the reference) is vectorised: the ``2^d`` corners of every
    level are one gather from the concatenated tables (its backward is a scatter-add), in fp32
    under autocast; the kernels (Triton on CUDA, Numba on the CPU) walk the corners per point and
    never store them.

    Args (tiny-cuda-nn's names):
        in_dim: coordinate dimension (1-4 axes are tested; any works).
        n_levels, n_features_per_level, log2_hashmap_size, base_resolution, per_level_scale:
            as in tiny-cuda-nn / instant-ngp.
        finest_resolution: the last level's resolution, instead of ``per_level_scale``.
        hashed: hash levels larger than the table (True) or keep every level dense (False).
        bounds: the box, one ``[lo, hi]`` per axis (nir fills in the signal's).
        backend: ``auto`` (Triton kernels on CUDA, Numba kernels on the CPU, each where it can
            run and has run; the torch path elsewhere), ``torch`` (the reference), ``triton``
            (:mod:`nir.fields.grid_triton`; on the CPU only under ``TRITON_INTERPRET=1``) or
            ``numba`` (:mod:`nir.fields.grid_numba`, the CPU). The same numbers on every path, to
            fp32 rounding.
    """

    def __init__(
        self,
        in_dim: int,
        n_levels: int = 16,
        n_features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        per_level_scale: float | None = None,
        finest_resolution: int | None = None,
        hashed: bool = True,
        bounds: Sequence[Sequence[float]] | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        require(backend in BACKENDS, f"model.encoding.backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.backend = backend
        for key, v in [("n_levels", n_levels), ("n_features_per_level", n_features_per_level),
                       ("log2_hashmap_size", log2_hashmap_size), ("base_resolution", base_resolution)]:  # fmt: skip
            positive_int(f"model.{key}", v)
        require(base_resolution >= 2, f"model.encoding.base_resolution must be >= 2, got {base_resolution}")
        require(in_dim <= len(PRIMES), f"grid encodings support up to {len(PRIMES)} axes, got {in_dim}")
        self.in_dim, self.n_levels, self.n_features = in_dim, n_levels, n_features_per_level
        self.resolutions = _resolutions(n_levels, base_resolution, per_level_scale, finest_resolution)
        table = 1 << log2_hashmap_size
        # resolutions never decrease, so the dense levels are the first ones (_corner_rows relies on it)
        self.dense_levels = [not hashed or r**in_dim <= table for r in self.resolutions]
        sizes = [r**in_dim if dense else table for r, dense in zip(self.resolutions, self.dense_levels)]
        offsets = [0, *torch.tensor(sizes).cumsum(0).tolist()]
        self.embeddings = nn.Parameter(torch.empty(offsets[-1], n_features_per_level).uniform_(-1e-4, 1e-4))
        b = torch.tensor(bounds if bounds is not None else [[-1.0, 1.0]] * in_dim, dtype=torch.float32)
        require(tuple(b.shape) == (in_dim, 2), f"model.bounds must be one [lo, hi] per axis ({in_dim}), got {bounds}")
        self.register_buffer("lo", b[:, 0].clone(), persistent=False)
        self.register_buffer("span", (b[:, 1] - b[:, 0]).clone(), persistent=False)
        self.register_buffer("_res", torch.tensor(self.resolutions, dtype=torch.float32), persistent=False)
        self.register_buffer("_offsets", torch.tensor(offsets[:-1], dtype=torch.long), persistent=False)
        self.register_buffer("_sizes", torch.tensor(sizes, dtype=torch.long), persistent=False)
        self.register_buffer("_dense", torch.tensor(self.dense_levels), persistent=False)
        # corner offsets (2^d, d) in {0, 1}, and per-axis strides of every level's dense layout
        corners = torch.tensor([[(c >> k) & 1 for k in range(in_dim)] for c in range(1 << in_dim)], dtype=torch.long)
        self.register_buffer("_corners", corners, persistent=False)
        strides = torch.tensor([[r ** (in_dim - 1 - k) for k in range(in_dim)] for r in self.resolutions])
        self.register_buffer("_strides", strides, persistent=False)
        self.register_buffer("_primes", torch.tensor(PRIMES[:in_dim], dtype=torch.long), persistent=False)
        # the Triton kernels' view of the levels (nir.fields.grid_triton)
        self.register_buffer("_res_i", torch.tensor(self.resolutions, dtype=torch.long), persistent=False)
        self.register_buffer("_dense_i", torch.tensor(self.dense_levels, dtype=torch.int32), persistent=False)

    def backend_for(self, device: torch.device) -> str:
        """``torch``, ``triton`` or ``numba``: what :meth:`forward` runs on ``device``.

        ``auto``: the device's kernels (Triton on CUDA, Numba on the CPU) where they can run *and*
        have run: the first time on a device they encode a few points forward and backward and
        must agree with the torch path; a kernel that fails to compile, to launch or to agree is
        never picked again by this encoding, and one line says why it fell back. ``triton`` or
        ``numba`` named where the kernels cannot run: one line saying why."""
        kernel = KERNEL_FOR.get(device.type) if self.backend == "auto" else self.backend
        if kernel in (None, "torch"):
            return "torch"
        why = self._cannot_run(kernel, device)
        if why is not None and self.backend == kernel:
            raise NirError(f"model.encoding.backend={kernel} cannot run here: {why}; use backend=torch or auto")
        if why is None and self.backend == "auto":
            why = self._verify(kernel, device)
        return "torch" if why is not None else kernel

    def _cannot_run(self, kernel: str, device: torch.device) -> str | None:
        """Why ``kernel``'s kernels cannot encode this grid on ``device`` (``None``: they can)."""
        if kernel == "triton":
            from nir.fields import grid_triton as mod
        else:
            from nir.fields import grid_numba as mod
        if self.in_dim > mod.MAX_DIM:
            return f"more than {mod.MAX_DIM} axes"
        why = mod.available(device)
        features = getattr(mod, "FEATURES", None)
        if why is None and features is not None and self.n_features not in features:
            why = f"n_features_per_level {self.n_features} (the kernels take {', '.join(map(str, features))})"
        return why

    def _verify(self, kernel: str, device: torch.device) -> str | None:
        """Run ``kernel`` once on a few points against the torch path (features, table and input
        gradients); ``None`` if it agrees, else the reason (also logged, once). The verdict holds
        for every encoding of the same layout in the process (:data:`_VERIFIED`): a Zarr read
        that rebuilds a chunk's field does not pay the check again."""
        verified = _VERIFIED
        key = (kernel, str(device), self.in_dim, self.n_features, tuple(self.resolutions), tuple(self.dense_levels),
               tuple(self.embeddings.shape))  # fmt: skip
        if key not in verified:
            verified[key] = None
            try:
                err = self._compare(kernel, device)
                if err > 1e-4:
                    verified[key] = f"its answers differ from the torch path by {err:.1e} (relative)"
            except Exception as e:  # a compiler or driver failure of any kind: the torch path still works
                first = (str(e).strip().splitlines() or [""])[0][:200]
                verified[key] = f"{type(e).__name__}: {first}"
            if verified[key] is not None:
                log.warning("grid encoding: the %s kernels failed on %s (%s); using the torch path", kernel,
                            device.type, verified[key])  # fmt: skip
        return verified[key]

    def _compare(self, kernel: str, device: torch.device) -> float:
        """Largest relative difference between ``kernel`` and the torch path on 67 points (inside,
        on and outside the box) with a random table: the features and the table's gradient."""
        gen = torch.Generator().manual_seed(0)
        u = torch.rand(67, self.in_dim, generator=gen) * 1.2 - 0.1
        u[:3] = torch.tensor([0.0, 1.0, 0.5])[:, None]  # a corner, the far corner, the centre
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            table = torch.randn(self.embeddings.shape, generator=gen).to(device).requires_grad_()
            x = (self.lo + u.to(device) * self.span).detach()
            g = torch.randn(67, self.n_output_dims, generator=gen).to(device)
            # the input's gradient is left to the tests: only Field.gradient uses it
            outs = (self._kernel(kernel, x, table).float(), self._reference(x, table))
            answers = [(out.detach(), *torch.autograd.grad(out, [table], g)) for out in outs]
        return max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in zip(*answers))

    def _kernel(self, kernel: str, x: Tensor, table: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """``kernel``'s encoding of ``x`` from ``table``; Triton writes the features in ``dtype``,
        Numba always in fp32 (the CPU's MLP head takes either)."""
        if kernel == "triton":
            from nir.fields.grid_triton import encode

            return encode(self, x.float(), dtype, table)
        from nir.fields.grid_numba import encode

        return encode(self, x, table)

    @property
    def n_output_dims(self) -> int:
        return self.n_levels * self.n_features

    def indices(self, vertex: Tensor) -> Tensor:
        """Table rows of integer vertices ``(..., L, K, d)`` (level axis L, K vertices a level):
        the dense row-major index on levels that fit, tiny-cuda-nn's spatial hash on the others,
        plus each level's offset into the concatenated tables. (The reference form of what
        :meth:`forward` computes corner by corner.)"""
        dense = (vertex * self._strides[:, None, :]).sum(-1)
        h = vertex[..., 0] * self._primes[0]
        for k in range(1, self.in_dim):  # XOR of the low 32 bits of c_k * pi_k, as uint32 in tcnn
            h = h ^ ((vertex[..., k] * self._primes[k]) & 0xFFFFFFFF)
        hashed = (h & 0xFFFFFFFF) % self._sizes[:, None]
        return torch.where(self._dense[:, None], dense, hashed) + self._offsets[:, None]

    def _corner_rows(self, base: Tensor) -> Tensor:
        """:meth:`indices` of the ``2^d`` corners of cells with lower vertex ``base`` ``(N, L, d)``
        -> ``(N, L, 2^d)``. Per-axis terms are computed once per cell, then combined per corner:
        dense levels (the coarse ones, first) add a corner's row offset, hashed levels XOR the
        per-axis hash terms of ``c`` or ``c + 1``."""
        nd, bits = sum(self.dense_levels), self._corners
        parts = []
        if nd:
            rows = (base[:, :nd] * self._strides[:nd]).sum(-1)
            parts.append(rows[..., None] + (bits[None] * self._strides[:nd, None, :]).sum(-1))
        if nd < self.n_levels:
            b = base[:, nd:]
            h = None
            for k in range(self.in_dim):
                terms = torch.stack([b[..., k] * self._primes[k], (b[..., k] + 1) * self._primes[k]], -1) & 0xFFFFFFFF
                t = terms[..., bits[:, k]]  # (N, L_hashed, 2^d): c_k or c_k + 1 per corner
                h = t if h is None else h ^ t
            parts.append(h % self._sizes[nd:, None])
        return torch.cat(parts, 1) + self._offsets[:, None]

    def forward(self, x: Tensor) -> Tensor:
        """``Float[Tensor, "N in_dim"]`` -> ``Float[Tensor, "N n_levels*n_features_per_level"]``, fp32
        (the Triton kernels write the features in the autocast dtype, computed in fp32).
        Traced or compiled (ONNX export, ``torch.compile``): the torch path, which tracers read."""
        if self.backend != "torch" and not _tracing():
            kernel = self.backend_for(x.device)
            if kernel != "torch":
                kind = x.device.type
                dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else torch.float32
                with torch.autocast(kind, enabled=False):  # fp32 tables and arithmetic
                    return self._kernel(kernel, x, self.embeddings, dtype)
        return self._reference(x, self.embeddings)

    def _reference(self, x: Tensor, table: Tensor) -> Tensor:
        """The torch path: every corner's row and weight as tensors, one gather from ``table``."""
        with torch.autocast(x.device.type, enabled=False):
            u = ((x.float() - self.lo) / self.span).clamp(0.0, 1.0)  # (N, d) in [0, 1]
            pos = u[:, None, :] * (self._res[:, None] - 1)  # (N, L, d)
            base = pos.floor().clamp_max(self._res[:, None] - 2)  # the cell's lower vertex
            frac = pos - base  # (N, L, d) in [0, 1]
            rows = self._corner_rows(base.long())  # (N, L, 2^d)
            w = None  # d-linear weights: prod_k (frac_k if the corner's bit k else 1 - frac_k)
            for k in range(self.in_dim):
                wk = torch.stack([1 - frac[..., k], frac[..., k]], -1)[..., self._corners[:, k]]
                w = wk if w is None else w * wk
            feats = table.index_select(0, rows.reshape(-1)).view(*rows.shape, self.n_features)
            return (feats * w[..., None]).sum(2).reshape(x.shape[0], -1)


def _tracing() -> bool:
    """Whether a tracer (torch.compile's dynamo, torch.jit, ONNX export) is reading the forward."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)()
    return bool(torch.compiler.is_compiling() or exporting or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


def _resolutions(n_levels: int, base: int, scale: float | None, finest: int | None) -> list[int]:
    if scale is None:
        require(finest is not None, "model needs per_level_scale or finest_resolution")
        require(finest >= base, f"model.encoding.finest_resolution ({finest}) must be >= base_resolution ({base})")
        scale = math.exp((math.log(finest) - math.log(base)) / max(1, n_levels - 1))
    else:
        require(finest is None, "model: give per_level_scale or finest_resolution, not both")
        positive_float("model.encoding.per_level_scale", scale)
        require(scale >= 1, f"model.encoding.per_level_scale must be >= 1 (levels get finer), got {scale}")
    return [int(math.floor(base * scale**level + 1e-6)) for level in range(n_levels)]
