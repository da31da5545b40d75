"""Table offsets kernel: o_r = bits(Philox(key, (r mod 2^32, r div 2^32, 0, TAG_OFFSET))) mod span.

The start of each noise row's slice in the shared noise table, one lane per row: the 62 random
bits ((w1 & (2^30 − 1)) << 32) | w0 modulo the number of possible starts. Integer-exact: equal
to the reference ``fastes.noise.table_offsets`` bit for bit. On a GPU the reference is ~150
elementwise launches of a few rows each (Philox's ten rounds in tensor ops), which left a table
generation host-bound; this is one launch. Bytes moved per row: 8 read, 8 written.
"""

import torch
import triton
import triton.language as tl

from fastes.prng import TAG_OFFSET

from .noise import _direct
from .philox import load_seed


@triton.jit
def _offsets_kernel(key_ptr, rows_ptr, out_ptr, R, span, TAG: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < R
    seed = load_seed(key_ptr)
    row = tl.load(rows_ptr + i, mask=mask, other=0)
    c0 = (row & 0xFFFFFFFF).to(tl.uint32)
    c1 = (row >> 32).to(tl.uint32)
    zero = tl.zeros_like(c0)
    w0, w1, _, _ = tl.philox(seed, c0, c1, zero, zero + TAG)
    bits = ((w1 & 0x3FFFFFFF).to(tl.uint64) << 32) | w0.to(tl.uint64)  # < 2^62: a valid int64
    tl.store(out_ptr + i, bits.to(tl.int64) % span, mask=mask)


def table_offsets(
    key: torch.Tensor, rows: torch.Tensor, span: int, block: int = 256, launch=_direct
) -> torch.Tensor:
    """Launch: (R,) int64 offsets in [0, span) of ``rows`` (1-D int64, >= 0) for ``key``."""
    if key.dtype != torch.int64 or key.shape != (2,):
        raise TypeError(f"key must be an int64 tensor of shape (2,); got {key.dtype} {key.shape}")
    if rows.dtype != torch.int64 or rows.dim() != 1 or rows.device != key.device:
        raise TypeError(f"rows must be a 1-D int64 tensor on the key's device; got {rows.dtype} "
                        f"{tuple(rows.shape)} on {rows.device}")  # fmt: skip
    if not 1 <= span < 2**62:
        raise ValueError(f"span must be in [1, 2^62); got {span}")
    out = torch.empty_like(rows)
    if rows.numel():
        grid = (triton.cdiv(rows.numel(), block),)
        launch(_offsets_kernel)[grid](key, rows.contiguous(), out, rows.numel(), span,
                                      TAG=TAG_OFFSET, BLOCK=block)  # fmt: skip
    return out
