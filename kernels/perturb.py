"""Perturb kernel: population members θ ± σ·ε[rows[j]] straight from the key.

out[j] = θ + σ·ε[rows[j]]; with antithetic sampling out[2j] = θ + σ·ε[rows[j]] and
out[2j + 1] = θ − σ·ε[rows[j]]. Bytes moved per member element: 4 read (θ, shared by all
members and served from L2) and 4 written, with no separate noise buffer — the unfused
alternative writes ε, then reads it back to add θ.
Reference: ``fastes.noise.philox_perturb``.
"""

import torch
import triton
import triton.language as tl

from .noise import _direct, check_inputs
from .philox import load_seed, normal_tile


@triton.jit
def _perturb_kernel(
    key_ptr, rows_ptr, theta_ptr, out_ptr, sigma, D, stride_out,
    ANTITHETIC: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    j = tl.program_id(0)
    tile = tl.program_id(1)
    seed = load_seed(key_ptr)
    row = tl.load(rows_ptr + j)
    offs = tile.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < D
    step = sigma * normal_tile(seed, row, tile, BLOCK)
    theta = tl.load(theta_ptr + offs, mask=mask)
    if ANTITHETIC:
        base = out_ptr + (2 * j.to(tl.int64)) * stride_out + offs
        tl.store(base, theta + step, mask=mask)
        tl.store(base + stride_out, theta - step, mask=mask)
    else:
        tl.store(out_ptr + j.to(tl.int64) * stride_out + offs, theta + step, mask=mask)


def philox_perturb(
    key: torch.Tensor,
    rows: torch.Tensor,
    theta: torch.Tensor,
    sigma: float,
    antithetic: bool,
    block: int = 1024,
    launch=_direct,
):
    """Launch: the (R or 2R, D) float32 members for ``rows`` around ``theta`` (D,) float32."""
    check_inputs(key, rows, theta.numel())
    if theta.dtype != torch.float32 or theta.dim() != 1 or not theta.is_contiguous():
        raise TypeError(
            f"theta must be a contiguous 1-D float32 tensor; got {theta.dtype} {tuple(theta.shape)}"
        )
    D = theta.numel()
    out = torch.empty(
        rows.numel() * (2 if antithetic else 1), D, dtype=theta.dtype, device=theta.device
    )
    if rows.numel():
        grid = (rows.numel(), triton.cdiv(D, block))
        launch(_perturb_kernel)[grid](
            key, rows, theta, out, float(sigma), D, out.stride(0), ANTITHETIC=antithetic,
            BLOCK=block,
        )  # fmt: skip
    return out
