"""Shared Triton device functions: one tile of Philox4x32-10 normals.

Element k of noise row r is lane k mod 4 of Philox4x32-10 at counter
(b mod 2^32, b div 2^32, r mod 2^32, r div 2^32), b = k div 4, with the 64-bit key
(k0 | k1 << 32); lanes (x0, x1) and (x2, x3) become normals by Box-Muller on
u = ((x >> 8) + 1)·2^-24 and v = (x >> 8)·2^-24·2π. This is the layout of the PyTorch reference
``fastes.noise.philox_normal_rows``: the integer stream and the uniforms are bit-identical; the
normals differ only by the accuracy of log/sqrt/cos/sin on the device.

A tile of BLOCK elements costs BLOCK/4 Philox calls (10 rounds of 2 mulhi/lo each) and BLOCK/2
log + sqrt + cos + sin: it reads nothing but the two key words and the row index.
"""

import triton
import triton.language as tl

TWO_POW_M24 = tl.constexpr(5.9604644775390625e-08)  # 2^-24
# 2π·2^-24 rounded to float32 (0x1.921fb6p-22), written exactly: the reference multiplies by the
# same float32, so the angles v are bit-identical.
TWO_PI_M24 = tl.constexpr(3.7450703871400037e-07)


@triton.jit
def load_seed(key_ptr):
    """The 64-bit Philox key from a fastes key tensor (int64 words k0, k1) in device memory."""
    k0 = tl.load(key_ptr).to(tl.uint64)
    k1 = tl.load(key_ptr + 1).to(tl.uint64)
    return k0 | (k1 << 32)


@triton.jit
def box_muller(xu, xv):
    u = ((xu >> 8) + 1).to(tl.float32) * TWO_POW_M24  # (0, 1]
    v = (xv >> 8).to(tl.float32) * TWO_PI_M24  # [0, 2π)
    r = tl.sqrt(tl.log(u) * -2.0)
    return r * tl.cos(v), r * tl.sin(v)


@triton.jit
def philox_blocks(seed, row, b):
    """Philox words x0..x3 at blocks ``b`` (int64, any shape) of noise row ``row`` (a scalar or
    a tensor broadcasting against ``b``): counter (b mod 2^32, b div 2^32, row mod 2^32, row div
    2^32)."""
    c0 = (b & 0xFFFFFFFF).to(tl.uint32)
    c1 = (b >> 32).to(tl.uint32)
    zero = tl.zeros_like(c0)
    row = row.to(tl.int64)
    c2 = zero + (row & 0xFFFFFFFF).to(tl.uint32)
    c3 = zero + (row >> 32).to(tl.uint32)
    return tl.philox(seed, c0, c1, c2, c3)


@triton.jit
def philox_tile(seed, row, tile, BLOCK: tl.constexpr):
    """Philox words x0..x3 for the BLOCK/4 counters of elements [tile·BLOCK, (tile+1)·BLOCK)."""
    b = tile.to(tl.int64) * (BLOCK // 4) + tl.arange(0, BLOCK // 4).to(tl.int64)
    return philox_blocks(seed, row, b)


@triton.jit
def interleave4(a, b, c, d):
    """Element 4i + j from lane j: a0 b0 c0 d0 a1 b1 ..."""
    return tl.interleave(tl.interleave(a, c), tl.interleave(b, d))


@triton.jit
def normal_tile(seed, row, tile, BLOCK: tl.constexpr):
    """Normals for elements [tile·BLOCK, (tile+1)·BLOCK) of noise row ``row``: (BLOCK,) fp32."""
    x0, x1, x2, x3 = philox_tile(seed, row, tile, BLOCK)
    n0, n1 = box_muller(x0, x1)
    n2, n3 = box_muller(x2, x3)
    return interleave4(n0, n1, n2, n3)
