"""Gaussian noise as a pure function of (key, row, element): direct Philox or a shared table.

Two sources keep the DESIGN §3 contract; both are reproducible from the key alone, so a
population's noise is never stored as a (P, D) matrix unless it fits the memory budget.

``PhiloxNoise`` — element k of row r is drawn directly from Philox4x32-10:
    counter = (b mod 2^32, b div 2^32, r mod 2^32, r div 2^32) with block b = k div 4,
    key = the step key. The four output words x0..x3 become four normals by Box-Muller on
    (x0, x1) and (x2, x3), with u = ((x >> 8) + 1)·2^-24 ∈ (0, 1] for the radius and
    v = (x >> 8)·2^-24 ∈ [0, 1) for the angle: n0 = √(-2 ln u0)·cos 2πv1, n1 = ...·sin 2πv1.
    These integer steps are exact, so the Triton kernels reproduce the uniforms bit for bit.

``TableNoise`` — the shared noise table of Salimans et al. 2017 (https://arxiv.org/abs/1703.03864):
    a table T of N normals, itself Philox row 0 of a fixed table key, is made once per
    (seed, size, device). Row r of a step is the slice T[o_r : o_r + D] at an offset o_r drawn
    from Philox(key, r). Slices at different offsets are element-wise independent; only equal
    offsets (probability ≈ P²/2N per generation) repeat a row.

Measured on the 2-core CPU of the dev machine (torch 2.13, D = 100,000, 128 rows; the
``benchmarks/test_bench_core.py`` cases reproduce them): torch.randn ≈ 8 ns/element, direct
Philox here ≈ 6-7 ns/element once warm (64K-counter tiles; 8K tiles were 15 ns), and the table's
weighted sum ≈ 0.2 ns/element. ``noise="auto"`` (:func:`resolve_noise`) therefore picks the table
whenever D fits it, on every device (DESIGN §3: the choice may not depend on the device or on
torch.compile), and direct Philox above; ``noise="philox"`` runs the Triton kernels on CUDA,
which regenerate the noise in registers.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np
import torch

from . import _dispatch
from ._validate import positive_int

# The element-wise generators (re-exported: fastes.noise is their public home too).
from .normals import (
    _TILE,
    _as_rows,
    philox_normal_rows,
    philox_uint32_rows,
    uniform,
)
from .prng import (
    _KEYED_LANES,
    _LANES,
    MASK32,
    TAG_OFFSET,
    _batch_key_words,
    _lane_masks,
    _Lanes,
    _philox_lane_ints,
    check_key,
    check_keys,
    key_words,
    philox4x32,
)
from .prng import key as make_key

__all__ = [
    "PhiloxNoise",
    "TableNoise",
    "NoiseTable",
    "noise_table",
    "clear_caches",
    "philox_normal_rows",
    "philox_uint32_rows",
    "philox_weighted_sum",
    "philox_perturb",
    "table_offsets",
    "uniform",
    "resolve_noise",
    "DEFAULT_TABLE_SIZE",
]

DEFAULT_TABLE_SIZE = 2**24  # 16.7 M float32 = 64 MiB, generated in ~0.3 s on the dev CPU


class NoiseTable(NamedTuple):
    """A shared table of standard normals (Philox row 0 of ``key(seed)``)."""

    values: torch.Tensor  # (N,) float32
    seed: int


# Memo of made tables, keyed by (size, seed, device). A table's values are a pure function of
# (seed, size), so the memo changes no result; it is bounded (oldest evicted) so that a process
# that touches many devices or sizes does not pin 64 MiB per table forever. clear_caches()
# empties it.
_MAX_TABLES = 4
_TABLES: dict[tuple[int, int, str], NoiseTable] = {}


def noise_table(
    size: int = DEFAULT_TABLE_SIZE, seed: int = 0, device: torch.device | str = "cpu"
) -> NoiseTable:
    """The noise table of ``size`` normals for ``seed`` on ``device``, made once and memoised.

    Made lazily on first use (never at import). Its values are a pure function of (seed, size),
    so memoising it is an optimisation, not hidden state; at most ``_MAX_TABLES`` tables are kept
    (the oldest is dropped first) and :func:`clear_caches` frees them.
    """
    positive_int(size, "size")
    device = torch.device(device)
    cache_key = (size, seed, str(device))
    table = _TABLES.get(cache_key)
    if table is None:
        values = philox_normal_rows(make_key(seed), [0], size)[0].to(device)
        table = NoiseTable(values.contiguous(), seed)
        while len(_TABLES) >= _MAX_TABLES:
            del _TABLES[next(iter(_TABLES))]  # dicts keep insertion order: the oldest
        _TABLES[cache_key] = table
    return table


def made_noise_table(device, size: int = DEFAULT_TABLE_SIZE, seed: int = 0) -> NoiseTable | None:
    """The table :func:`noise_table` has already made for (size, seed, device), or None: never
    makes one (inside ``torch.compile`` the table must come from eager code)."""
    return _TABLES.get((size, seed, str(torch.device(device))))


def clear_caches() -> None:
    """Free fastes' memos: noise tables, the last table-offset lookup and the shaping rank
    tables. Results never depend on them; this only returns their memory."""
    from . import shaping

    _TABLES.clear()
    _LAST_OFFSETS.clear()
    _ROW_VIEWS.clear()
    shaping._TABLES.clear()
    shaping._TABLES_NP.clear()


def table_offsets(k: torch.Tensor, rows, dim: int, table_size: int) -> torch.Tensor:
    """Offset o_r ∈ [0, table_size - dim] of each row's slice, drawn from Philox(key, r).

    ``k`` may be a batch of keys (R, 2): offsets (R, len(rows)), row j of key i as for key i
    alone (independent runs advanced together, :class:`fastes.strategies.BatchedRuns`)."""
    batch = k.ndim == 2
    check_keys(k, "k") if batch else check_key(k)
    rows = _as_rows(rows, k.device)
    span = _offset_span(dim, table_size)
    small = rows.numel() <= _LANES and k.is_cpu and not torch.compiler.is_compiling()
    if small and not batch:
        return torch.from_numpy(_small_offsets(key_words(k), rows.numpy(), span))
    if small and batch and k.shape[0] * rows.numel() <= _KEYED_LANES:
        # R keys' rows as R·n lanes of one Python int, each lane with its key (64 runs x 10
        # rows: 0.12 ms against numpy's 0.24)
        R, n = k.shape[0], rows.numel()
        words = _batch_key_words(k, n)
        return torch.from_numpy(_small_offsets(words, np.tile(rows.numpy(), R), span).reshape(R, n))
    ops = None if batch else _dispatch.kernel_ops(k.device)
    if ops is not None:  # one launch, where the tensor ops below are ~150 tiny ones
        return ops.table_offsets(k, rows, span)
    zero = torch.zeros_like(rows)
    words = (k[:, :1], k[:, 1:]) if batch else key_words(k)  # a batch: (R, 1) against (rows,)
    w0, w1, _, _ = philox4x32(rows & MASK32, rows >> 32, zero, zero + TAG_OFFSET, *words)
    # 62 random bits mod span: the modulo bias is below span / 2^62, i.e. negligible.
    return (((w1 & 0x3FFFFFFF) << 32) | w0) % span


def _offset_span(dim: int, table_size: int) -> int:
    """How many offsets a row of ``dim`` elements can start at in a table of ``table_size``."""
    span = table_size - dim + 1
    if span < 1:
        raise ValueError(f"dim must be <= the noise table size {table_size}; got dim={dim}")
    return span


def _small_offsets(words: tuple, rows: np.ndarray | int, span: int) -> np.ndarray:
    """:func:`table_offsets` of up to a few hundred rows (int64, >= 0; an int n: rows 0..n−1)
    of one CPU key given by its words, as numpy int64: the rows' counters as lanes of one Python
    int, the offsets in numpy uint64 (16 rows: 14 µs; one Python-int Philox a row 47 µs, tensor
    ops ~150 µs). ``words`` may also be two uint64 arrays, a key per row."""
    u = np.uint64
    n = rows if isinstance(rows, int) else rows.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if isinstance(rows, int):  # rows 0..n−1: their low words packed once, high words 0
        lo, hi = _first_lanes(n), 0
    else:
        r = rows.view(np.uint64)
        lo, hi = r & u(MASK32), (r >> u(32) if r.max() > MASK32 else 0)
    w0, w1, _, _ = _philox_lane_ints(n, lo, hi, 0, TAG_OFFSET, *words)
    # 62 random bits (lane by lane: 30 bits of w1 above w1's 32, which stay inside each 64-bit
    # lane) mod span: the modulo bias is below span / 2^62, i.e. negligible.
    bits = ((w1 & _lane_masks(n)[0] * 0x3FFFFFFF) << 32) | w0
    # the lanes read in place (the remainder is the fresh array; no copy of them first)
    lanes = np.frombuffer(bits.to_bytes(8 * n, "little"), dtype="<u8")
    return np.remainder(lanes, u(span), dtype=np.uint64).view(np.int64)


@functools.lru_cache(maxsize=16)
def _first_lanes(n: int) -> _Lanes:
    """Row ids 0..n−1 as the lanes of one Python int, made once per n."""
    return _Lanes(int.from_bytes(np.arange(n, dtype="<u8").tobytes(), "little"))


def philox_weighted_sum(
    k: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor, dim: int
) -> torch.Tensor:
    """Σ_j weights[j]·ε[rows[j]] as a (dim,) float32 tensor, regenerating rows in tiles.

    Reference of the fused Triton reduction (kernels/reduce.py): same signature and semantics.
    """
    return _tiled_weighted_sum(lambda r: philox_normal_rows(k, r, dim), rows, weights, dim)


def _tiled_weighted_sum(make_rows, rows, weights: torch.Tensor, dim: int):
    """Σ_j weights[j]·rows_j as (dim,) float32: ``make_rows(rows[s:e])`` ~4 MiB at a time, one
    matrix-vector product each (both noise sources sum in this order, and es_step's kept rows
    too; the first tile's product is ``mv``, what ``zeros(dim).addmv_`` gives bit for bit).
    ``rows``: a 1-D tensor of row ids, or a ``range`` of positions (kept rows)."""
    tile = _TILE * 16 if weights.is_cpu else _TILE * 1024  # GPUs: 256 MiB tiles
    step = max(1, tile // max(dim, 1))
    n = len(rows)
    if 0 < n <= step:  # one tile (every small problem): no slices, no casts to make
        w = weights if weights.dtype == torch.float32 else weights.to(torch.float32)
        return torch.mv(make_rows(rows).T, w)
    out = None
    for s in range(0, n, step):
        part, w = make_rows(rows[s : s + step]).T, weights[s : s + step].to(torch.float32)
        out = torch.mv(part, w) if out is None else out.addmv_(part, w)
    return torch.zeros(dim, dtype=torch.float32, device=weights.device) if out is None else out


def philox_perturb(
    k: torch.Tensor,
    rows: torch.Tensor,
    theta: torch.Tensor,
    sigma: float,
    antithetic: bool,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Members θ ± σ·ε[rows[j]]: returns ``(members, eps)``.

    Without antithetic sampling members[j] = θ + σ·ε[rows[j]]; with it, the pair
    members[2j] = θ + σ·ε[rows[j]], members[2j + 1] = θ − σ·ε[rows[j]] shares one row.
    ``out`` (R or 2R, D) receives the members when given. Reference of kernels/perturb.py, which
    returns the members only (it never materialises ε).
    """
    eps = philox_normal_rows(k, rows, theta.numel())
    return _fill_members(theta, eps, sigma, antithetic, out), eps


def _fill_members(theta, eps, sigma, antithetic, out) -> torch.Tensor:
    """θ ± σ·ε for noise rows ``eps`` (R, D), into ``out`` (R or 2R, D) when given."""
    if torch.compiler.is_compiling():  # graphs: no out= into strided views
        return _functional_members(theta, eps, sigma, antithetic)
    if out is None:
        out = torch.empty(
            eps.shape[0] * (2 if antithetic else 1),
            theta.numel(),
            dtype=theta.dtype,
            device=theta.device,
        )
    if antithetic:
        torch.add(theta, eps, alpha=sigma, out=out[0::2])
        torch.sub(theta, eps, alpha=sigma, out=out[1::2])
    else:
        torch.add(theta, eps, alpha=sigma, out=out)
    return out


def _functional_members(theta, eps, sigma, antithetic) -> torch.Tensor:
    """θ ± σ·ε without out= buffers (the form traced inside torch.compile graphs)."""
    if not antithetic:
        return torch.add(theta, eps, alpha=sigma)
    pair = torch.stack([torch.add(theta, eps, alpha=sigma), torch.sub(theta, eps, alpha=sigma)])
    return pair.transpose(0, 1).reshape(-1, theta.numel())


class PhiloxNoise(NamedTuple):
    """Noise drawn directly from Philox counters: row r, element k of the step key.

    On CUDA tensors with triton available the Triton kernels run (see fastes._dispatch);
    elsewhere the PyTorch references above.
    """

    def rows(self, k: torch.Tensor, rows: torch.Tensor, dim: int) -> torch.Tensor:
        """(R, dim) float32 noise rows."""
        ops = _dispatch.kernel_ops(k.device)
        if ops is not None:
            return ops.philox_normal_rows(k, _as_rows(rows, k.device), dim)
        return philox_normal_rows(k, rows, dim)

    def weighted_sum(
        self, k: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor, dim: int
    ) -> torch.Tensor:
        """Σ_j weights[j]·ε[rows[j]]: (dim,) float32, never storing all rows at once."""
        ops = _dispatch.kernel_ops(k.device)
        if ops is not None:
            return ops.philox_weighted_sum(k, rows, weights.float(), dim)
        return philox_weighted_sum(k, rows, weights, dim)

    def perturb(self, k, rows, theta, sigma, antithetic, out):
        """Members around θ for ``rows`` (see :func:`philox_perturb`): ``(members, eps | None)``.

        ``out`` is filled when the reference runs; the kernel path returns fresh members and no
        noise (the fused reduction regenerates it).
        """
        ops = _dispatch.kernel_ops(k.device)
        if ops is not None and theta.dtype == torch.float32:
            return ops.philox_perturb(k, rows, theta, float(sigma), bool(antithetic)), None
        return philox_perturb(k, rows, theta, sigma, antithetic, out)


# A one-entry memo of the last eager offset lookup: [(key words, dim, size), rows, offsets].
# Bounded by construction (one entry, a few ints per row) and keyed by every input, so it can
# only return what the pure function would; clear_caches() empties it.
_LAST_OFFSETS: list = []
# Up to this D the table's rows are gathered in one index_select and handed back for the
# gradient (per-row Python loops dominated there: es_step at D = 1e3 went 3.2 -> 1.1 ms); above
# it each member is written straight from its table slice and the gradient re-reads the slices,
# which moves the least memory (D = 1e5, P = 256: 23 ms this way, 40 ms through a gather).
_GATHER_MAX_DIM = 2**14
# Up to this many elements eager CPU rows are gathered by numpy indexing (no dispatch; a copy of
# the same table values either way). Measured, numpy / index_select µs: 160 elements 2.8 / 4.0,
# 1,024 3.9 / 4.2, 1,600 4.4 / 4.2, 3,200 10.3 / 4.9.
_NUMPY_GATHER = 1024


# Read-only numpy views (span, dim) of a CPU table's overlapping rows, one per (table, dim): a
# gather of whole rows by offset (the same values as indexing the table element by element).
# Keyed by the table tensor's id, the tensor held with its view so that id is not reused; at
# most _MAX_ROW_VIEWS, emptied by clear_caches().
_ROW_VIEWS: dict = {}
_MAX_ROW_VIEWS = 16


def _row_view(t: torch.Tensor, dim: int) -> np.ndarray:
    """The rows [o, o + dim) of the CPU table ``t`` for every offset o, as one numpy view."""
    entry = _ROW_VIEWS.get((id(t), dim))
    if entry is None:
        a = t.numpy()  # 1-D; its stride steps both along a row and from row to row
        view = np.lib.stride_tricks.as_strided(
            a, (a.size - dim + 1, dim), (a.strides[0], a.strides[0]), writeable=False
        )
        if len(_ROW_VIEWS) >= _MAX_ROW_VIEWS:
            _ROW_VIEWS.clear()
        entry = _ROW_VIEWS[id(t), dim] = (t, view)
    return entry[1]


def _offsets_memo(k: torch.Tensor, rows, dim: int, size: int) -> torch.Tensor:
    """``table_offsets(...)`` of a CPU key, remembering the last call: one ES step asks for the
    same rows twice (members, then the gradient), and at small D the Philox call on a handful
    of rows was a quarter of the whole step. A pure function's result is reused only for
    identical inputs (compared in numpy: ~1 µs against ~3 µs of torch.equal and a clone)."""
    check_key(k)
    rows = _as_rows(rows, k.device).numpy()
    tag = (*k.tolist(), dim, size)
    if _LAST_OFFSETS and _LAST_OFFSETS[0] == tag and np.array_equal(_LAST_OFFSETS[1], rows):
        return _LAST_OFFSETS[2]
    if rows.size <= _LANES:
        offsets = torch.from_numpy(_small_offsets(tag[:2], rows, _offset_span(dim, size)))
    else:
        offsets = table_offsets(k, torch.from_numpy(rows), dim, size)
    _LAST_OFFSETS[:] = [tag, rows.copy(), offsets]
    return offsets


class TableNoise(NamedTuple):
    """Noise read from a shared table: row r is ``table[o_r : o_r + dim]``."""

    table: NoiseTable

    def rows(self, k: torch.Tensor, rows: torch.Tensor, dim: int) -> torch.Tensor:
        t = self.table.values
        if torch.compiler.is_compiling():
            return self._gather(k, rows, dim)
        if not t.is_cpu:  # no memo: its key lookup would read the key back (a sync)
            return torch.index_select(
                t.unfold(0, dim, 1), 0, table_offsets(k, rows, dim, t.numel())
            )
        return self._slices(_offsets_memo(k, rows, dim, t.numel()).numpy(), dim)

    def first_rows(self, words: tuple[int, int], n: int, dim: int) -> torch.Tensor:
        """Rows 0..n−1 (n up to a few hundred) of an eager CPU key given by its two words
        (checked by the caller): what :meth:`rows` returns for them, without its key check and
        offsets memo (a strategy keeps the rows themselves)."""
        span = _offset_span(dim, self.table.values.numel())
        return self._slices(_small_offsets(words, n, span), dim)

    def _slices(self, offsets: np.ndarray, dim: int) -> torch.Tensor:
        """The table's slices [o, o + dim) for CPU offsets (n,) int64: (n, dim) float32."""
        t = self.table.values
        if offsets.size * dim <= _NUMPY_GATHER:  # the same values, ~1 µs against ~10 µs
            return torch.from_numpy(_row_view(t, dim)[offsets])
        # One index_select on the overlapping (span, dim) view of the table: measured here at
        # 0.1-0.25 ns/element for 128 rows of D = 1e3-1e4 (8x faster than slicing row by row and
        # stacking) and no slower at D = 1e5-1e6.
        return torch.index_select(t.unfold(0, dim, 1), 0, torch.from_numpy(offsets))

    def perturb(self, k, rows, theta, sigma, antithetic, out):
        """Members around θ (as :func:`philox_perturb`); returns ``(members, eps)`` for
        D <= 2^14, ``(members, None)`` above (the gradient re-reads the table)."""
        t, D = self.table.values, theta.numel()
        if torch.compiler.is_compiling():
            eps = self._gather(k, rows, D)
            return _functional_members(theta, eps, sigma, antithetic), None
        if D <= _GATHER_MAX_DIM or not t.is_cpu:  # GPUs: gathers, no per-row loop
            eps = self.rows(k, rows, D)
            return _fill_members(theta, eps, sigma, antithetic, out), eps
        offsets = _offsets_memo(k, rows, D, t.numel()).tolist()
        if out is None:
            m = len(offsets) * (2 if antithetic else 1)
            out = torch.empty(m, D, dtype=theta.dtype, device=theta.device)
        for j, o in enumerate(offsets):  # one pass per member, straight from its slice
            if antithetic:
                torch.add(theta, t[o : o + D], alpha=sigma, out=out[2 * j])
                torch.sub(theta, t[o : o + D], alpha=sigma, out=out[2 * j + 1])
            else:
                torch.add(theta, t[o : o + D], alpha=sigma, out=out[j])
        return out, None

    def weighted_sum(
        self, k: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor, dim: int
    ) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return weights.float() @ self._gather(k, rows, dim)
        rows = _as_rows(rows, k.device)
        t = self.table.values
        if dim <= _GATHER_MAX_DIM or not t.is_cpu:  # the product the kept rows get
            return _tiled_weighted_sum(lambda r: self.rows(k, r, dim), rows, weights, dim)
        out = torch.zeros(dim, dtype=torch.float32, device=t.device)
        offsets = _offsets_memo(k, rows, dim, t.numel()).tolist()
        for o, w in zip(offsets, weights.tolist(), strict=True):  # one axpy per row's slice
            out.add_(t[o : o + dim], alpha=w)
        return out

    def _gather(self, k: torch.Tensor, rows, dim: int) -> torch.Tensor:
        """(R, dim) rows as one gather with tensor offsets: no host reads, for compiled graphs
        (eager code uses index_select or per-member slices above, faster on the CPU)."""
        t = self.table.values
        offsets = table_offsets(k, rows, dim, t.numel())
        return t[offsets[:, None] + torch.arange(dim, device=t.device)]


def resolve_noise(noise: Any, dim: int, device: torch.device) -> PhiloxNoise | TableNoise:
    """Pick the noise source: ``"auto"``, ``"table"``, ``"philox"``, a NoiseTable or a source.

    ``"auto"`` depends on D only, never on the device or on ``torch.compile`` (DESIGN §3: one
    key gives the same members everywhere, e.g. on the CPU and GPU ranks of one job): the shared
    table when D <= table size / 4 (the fastest CPU source, see fastes.noise; on GPUs its rows
    are gathers), direct Philox above. ``noise="philox"`` picks the fused Triton kernels on CUDA.
    Inside ``torch.compile`` the table must have been made eagerly before tracing (a table made
    while tracing would be traced into the graph): call ``fastes.noise_table(device=...)`` once,
    or pass the NoiseTable itself.
    """
    if isinstance(noise, (PhiloxNoise, TableNoise)) or all(
        callable(getattr(noise, m, None)) for m in ("rows", "weighted_sum", "perturb")
    ):  # a source of fastes' own or one with their interface (e.g. fastes.lowrank.LowRankNoise)
        return noise
    if isinstance(noise, NoiseTable):
        return TableNoise(noise)
    given = noise
    if noise == "auto":
        noise = "table" if dim <= DEFAULT_TABLE_SIZE // 4 else "philox"
    if noise == "philox":
        return PhiloxNoise()
    if noise == "table":
        if torch.compiler.is_compiling():
            made = made_noise_table(device)
            if made is None:
                raise ValueError(
                    f"noise={given!r} reads the noise table (D={dim}) inside torch.compile, "
                    "which needs the table made beforehand: call "
                    f"fastes.noise_table(device={str(device)!r}) once before compiling, pass "
                    "noise=fastes.noise_table(...), or pass noise='philox'"
                )
            return TableNoise(made)
        if dim > DEFAULT_TABLE_SIZE:
            raise ValueError(
                f"noise='table' needs D <= the table size {DEFAULT_TABLE_SIZE}; got D={dim}. "
                "Pass noise='philox' or a larger fastes.noise_table(size=...)"
            )
        return TableNoise(noise_table(device=device))
    raise ValueError(
        "noise must be 'auto', 'table', 'philox', a fastes.NoiseTable or a noise source; "
        f"got {noise!r}"
    )
