"""Normal and uniform variates as pure functions of (key, row, element), straight from Philox.

Element k of row r uses Philox4x32-10 with counter (b mod 2^32, b div 2^32, r mod 2^32,
r div 2^32), block b = k div 4, and the step key; the four output words x0..x3 become four
normals by Box-Muller on (x0, x1) and (x2, x3), with u = ((x >> 8) + 1)·2^-24 ∈ (0, 1] for the
radius and v = (x >> 8)·2^-24 ∈ [0, 1) for the angle. These integer steps are exact, so the
Triton kernels (kernels/noise.py) reproduce the uniforms bit for bit. The noise sources built on
them (direct Philox, the shared table) are in :mod:`fastes.noise`.
"""

from __future__ import annotations

import math

import torch

from .prng import MASK32, check_key, key_words, philox4x32

__all__ = ["philox_normal_rows", "philox_uint32_rows", "uniform"]

_TILE = 2**16  # Philox counters per tile: 64K int64 words per lane stay in L2 (measured best)
_TWO_POW_M24 = 2.0**-24


def _as_rows(rows: torch.Tensor | range | list, device) -> torch.Tensor:
    if isinstance(rows, torch.Tensor):
        if rows.dtype == torch.int64 and rows.ndim == 1 and rows.device == torch.device(device):
            return rows  # already as asked (most calls: ~2 µs of no-op conversions saved)
        return rows.to(device=device, dtype=torch.int64).reshape(-1)
    return torch.as_tensor(list(rows), dtype=torch.int64, device=device)


def _philox_words(k: torch.Tensor, rows: torch.Tensor, b0: int, nb: int):
    """Philox output words for blocks [b0, b0 + nb) of each row: four (R, nb) int64 tensors."""
    blocks = torch.arange(b0, b0 + nb, dtype=torch.int64, device=rows.device)
    c0 = (blocks & MASK32).expand(rows.numel(), nb)
    c1 = (blocks >> 32).expand(rows.numel(), nb)
    c2 = (rows & MASK32)[:, None].expand(-1, nb)
    c3 = (rows >> 32)[:, None].expand(-1, nb)
    return philox4x32(c0, c1, c2, c3, *key_words(k))


def philox_uint32_rows(k: torch.Tensor, rows, dim: int) -> torch.Tensor:
    """The raw uint32 stream (in int64) behind :func:`philox_normal_rows`: shape (R, dim)."""
    check_key(k)
    rows = _as_rows(rows, k.device)
    nb = -(-dim // 4)
    words = _philox_words(k, rows, 0, nb)
    return torch.stack(words, dim=-1).reshape(rows.numel(), 4 * nb)[:, :dim]


def _box_muller(x0, x1, x2, x3, dtype) -> torch.Tensor:
    """Four uint32 lanes (R, nb) -> (R, 4·nb) normals, element 4b + j from lane j."""
    compiling = torch.compiler.is_compiling()
    out = None if compiling else torch.empty(*x0.shape, 4, dtype=torch.float32, device=x0.device)
    lanes = []
    for (xu, xv), j in (((x0, x1), 0), ((x2, x3), 2)):
        u = ((xu >> 8) + 1).to(torch.float32).mul_(_TWO_POW_M24)  # (0, 1]
        v = (xv >> 8).to(torch.float32).mul_(_TWO_POW_M24 * 2 * math.pi)  # [0, 2π)
        r = u.log_().mul_(-2.0).sqrt_()
        if compiling:  # graphs take no out= into strided views; the compiler fuses anyway
            lanes += [r * torch.cos(v), r * torch.sin(v)]
            continue
        torch.mul(r, torch.cos(v), out=out[..., j])
        torch.mul(r, v.sin_(), out=out[..., j + 1])
    out = torch.stack(lanes, -1) if compiling else out
    out = out.reshape(x0.shape[0], -1)
    return out if dtype == torch.float32 else out.to(dtype)


def philox_normal_rows(
    k: torch.Tensor, rows, dim: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Standard normals ε[r, 0:dim] for each row r in ``rows``: shape (R, dim).

    A pure function of (key, r, element): any subset or order of rows gives the same values.
    Element counters are 64-bit, so R·dim may exceed 2^32.

    Example:
        >>> eps = philox_normal_rows(fastes.key(0), torch.arange(4), 10)  # (4, 10)
    """
    check_key(k)
    rows = _as_rows(rows, k.device)
    R, nb = rows.numel(), -(-dim // 4)
    out = torch.empty(R, 4 * nb, dtype=dtype, device=k.device)
    # Tile over blocks so the ~12 int64 temporaries of each round stay cache-resident.
    step = max(1, _TILE // max(R, 1))
    for b0 in range(0, nb, step):
        n = min(step, nb - b0)
        out[:, 4 * b0 : 4 * (b0 + n)] = _box_muller(*_philox_words(k, rows, b0, n), dtype)
    return out[:, :dim]


def uniform(key: torch.Tensor, batch: tuple[int, ...], low, high, device=None) -> torch.Tensor:
    """(*batch, k) float64 uniforms in (low, high) per feature, from ``key`` (k = len(low)).

    Element [..., j] of flat batch index b is word j of Philox row b, so any batch shape gives
    the same numbers in the same order.

    Example:
        >>> uniform(fastes.key(0), (3,), [0.0], [1.0]).shape
        torch.Size([3, 1])
    """
    check_key(key)
    if not isinstance(batch, tuple) or any(not isinstance(b, int) or b < 1 for b in batch):
        raise ValueError(f"batch must be a tuple of positive ints; got {batch!r}")
    low = torch.as_tensor(low, dtype=torch.float64)
    high = torch.as_tensor(high, dtype=torch.float64)
    words = philox_uint32_rows(key, torch.arange(math.prod(batch)), low.numel())
    u = (words.double() + 0.5) / 2**32  # (0, 1)
    return (low + (high - low) * u).reshape(*batch, low.numel()).to(device)
