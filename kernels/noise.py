"""Noise kernel: fill Philox normal rows ε[rows[j], 0:D] for a set of rows.

out[j, k] = ε(key, rows[j], k) (see kernels/philox.py for the counter layout). Bytes moved per
element: 4 written, nothing read (the key and row index are two scalar loads per program), so the
kernel is bounded by write bandwidth once Philox's ~100 integer ops per 4 elements are hidden.
Reference: ``fastes.noise.philox_normal_rows``.
"""

import torch
import triton
import triton.language as tl

from .philox import interleave4, load_seed, normal_tile, philox_tile


@triton.jit
def _noise_kernel(
    key_ptr, rows_ptr, out_ptr, D, stride_out, RAW: tl.constexpr, BLOCK: tl.constexpr
):
    j = tl.program_id(0)
    tile = tl.program_id(1)
    seed = load_seed(key_ptr)
    row = tl.load(rows_ptr + j)
    offs = tile.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    if RAW:  # the uint32 stream itself (as int64), to check it bit for bit against the reference
        x0, x1, x2, x3 = philox_tile(seed, row, tile, BLOCK)
        vals = interleave4(x0.to(tl.int64), x1.to(tl.int64), x2.to(tl.int64), x3.to(tl.int64))
    else:
        vals = normal_tile(seed, row, tile, BLOCK)
    tl.store(out_ptr + j.to(tl.int64) * stride_out + offs, vals, mask=offs < D)


def check_inputs(key: torch.Tensor, rows: torch.Tensor, dim: int) -> None:
    if key.dtype != torch.int64 or key.shape != (2,):
        raise TypeError(f"key must be an int64 tensor of shape (2,); got {key.dtype} {key.shape}")
    if rows.dtype != torch.int64 or rows.dim() != 1:
        raise TypeError(f"rows must be a 1-D int64 tensor; got {rows.dtype} {tuple(rows.shape)}")
    if rows.device != key.device:
        raise ValueError(f"rows and key must be on one device; got {rows.device}, {key.device}")
    if dim < 1:
        raise ValueError(f"dim must be >= 1; got {dim}")


def _direct(kernel):
    return kernel


def philox_normal_rows(
    key: torch.Tensor, rows: torch.Tensor, dim: int, block: int = 1024, launch=_direct
):
    """Launch: (R, dim) float32 normals, same semantics as the reference."""
    return _fill(key, rows, dim, block, launch, raw=False)


def philox_uint32_rows(key: torch.Tensor, rows: torch.Tensor, dim: int, block: int = 1024):
    """Launch: the raw (R, dim) uint32 stream in int64, as fastes.noise.philox_uint32_rows."""
    return _fill(key, rows, dim, block, _direct, raw=True)


def _fill(key, rows, dim, block, launch, raw):
    check_inputs(key, rows, dim)
    dtype = torch.int64 if raw else torch.float32
    out = torch.empty(rows.numel(), dim, dtype=dtype, device=key.device)
    if rows.numel():
        grid = (rows.numel(), triton.cdiv(dim, block))
        launch(_noise_kernel)[grid](key, rows, out, dim, out.stride(0), RAW=raw, BLOCK=block)
    return out
