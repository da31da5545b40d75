"""Fused reduction: g = Σ_j w_j ε[rows[j]] without ever storing a noise row.

Each program owns a BLOCK-element tile of g and a slice of the rows; for every row it regenerates
that row's tile of ε in registers from (key, row) and accumulates w_j·ε in fp32. Bytes moved per
output element: 4 written per row-slice (plus R weight/row scalar loads per program), against
4·R read for a matmul over a stored (R, D) noise matrix. Slices of rows run as separate programs
when the tiles alone would not fill the GPU; their partial sums are added in a fixed order
afterwards (no atomics), so the result is deterministic.

Antithetic pairs are folded by the caller: w_j = w(2j) − w(2j+1) for the shared row j.
Reference: ``fastes.noise.philox_weighted_sum``.
"""

import torch
import triton
import triton.language as tl

from .noise import _direct, check_inputs
from .philox import load_seed, normal_tile


@triton.jit
def _weighted_sum_kernel(
    key_ptr, rows_ptr, w_ptr, out_ptr, R, D, ROWS_PER_SPLIT, BLOCK: tl.constexpr
):
    tile = tl.program_id(0)
    split = tl.program_id(1)
    seed = load_seed(key_ptr)
    offs = tile.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    r0 = split * ROWS_PER_SPLIT
    r1 = tl.minimum(r0 + ROWS_PER_SPLIT, R)
    for j in range(r0, r1):
        w = tl.load(w_ptr + j).to(tl.float32)
        row = tl.load(rows_ptr + j)
        acc += w * normal_tile(seed, row, tile, BLOCK)
    tl.store(out_ptr + split.to(tl.int64) * D + offs, acc, mask=offs < D)


def philox_weighted_sum(
    key: torch.Tensor,
    rows: torch.Tensor,
    weights: torch.Tensor,
    dim: int,
    block: int = 1024,
    min_programs: int = 1024,
    launch=_direct,
):
    """Launch: Σ_j weights[j]·ε[rows[j]] as a (dim,) float32 tensor."""
    check_inputs(key, rows, dim)
    if weights.shape != rows.shape:
        raise ValueError(f"weights must have shape {tuple(rows.shape)}; got {tuple(weights.shape)}")
    R = rows.numel()
    tiles = triton.cdiv(dim, block)
    # Split the rows only as far as needed to give the GPU ~min_programs programs.
    splits = max(1, min(R, min_programs // tiles))
    rows_per_split = triton.cdiv(max(R, 1), splits)
    splits = triton.cdiv(max(R, 1), rows_per_split)
    partial = torch.empty(splits, dim, dtype=torch.float32, device=key.device)
    w = weights.to(device=key.device, dtype=torch.float32).contiguous()
    launch(_weighted_sum_kernel)[(tiles, splits)](
        key, rows, w, partial, R, dim, rows_per_split, BLOCK=block
    )
    return partial[0] if splits == 1 else partial.sum(0)
