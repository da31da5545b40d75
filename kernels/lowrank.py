"""Low-rank population linear: out_p = x_p Wᵀ + b_p + s_p·(x_p B_p) A_pᵀ for every member p.

The members' rows are flattened (P·S rows, S per member: S = 1 is the paper's one input per
member) and one program computes a (BLOCK_Q × BLOCK_M) output tile. Along K (the n input
features) it accumulates the shared GEMM x Wᵀ with ``tl.dot`` — W is read once per tile as in a
plain GEMM — and, from the same x tile, each row's thin product x B_p (BLOCK_Q × r, an
elementwise multiply-reduce: rows of one tile may belong to different members); at the end it
adds s_p·(x B_p) A_pᵀ and the bias. The per-row extra is r·(BLOCK_K + BLOCK_M) factor values per
K step — read from memory (``A``/``B`` given) or **regenerated in registers** from (key, row)
(``GENERATE``), so a population's factors never exist in memory.

Factor layout (the reference's, :class:`fastes.lowrank.LowRankNoise` on Philox noise): member
p's noise row ``rows[p]`` of the leaf key holds r·(m + n) normals, A (m × r) first, row-major,
then B (n × r); element e is lane e mod 4 of Philox4x32-10 at block e div 4 (kernels/philox.py).
References: ``fastes.population.lowrank_linear`` (given factors) and
``fastes.lowrank.LowRankNoise.draw`` for the generated ones.
"""

import torch
import triton
import triton.language as tl

from .noise import _direct
from .philox import box_muller, load_seed, philox_blocks


@triton.jit
def _normal_at(seed, row, e):
    """The Philox normal at element indices ``e`` (any shape, int64) of noise row ``row``."""
    lane = e % 4
    x0, x1, x2, x3 = philox_blocks(seed, row, e // 4)
    hi = lane >= 2  # lanes 2, 3 come from (x2, x3)
    n_cos, n_sin = box_muller(tl.where(hi, x2, x0), tl.where(hi, x3, x1))
    return tl.where(lane % 2 == 0, n_cos, n_sin)


@triton.jit
def _lowrank_linear_kernel(
    x_ptr, w_ptr, b_ptr, a_ptr, bf_ptr, key_ptr, rows_ptr, scale_ptr, out_ptr,
    Q, S, M, N,
    HAS_BIAS: tl.constexpr, BIAS_PER_MEMBER: tl.constexpr, GENERATE: tl.constexpr,
    RANK: tl.constexpr, RANK_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    IEEE: tl.constexpr,
):  # fmt: skip
    tq, tm = tl.program_id(0), tl.program_id(1)
    offs_q = tq * BLOCK_Q + tl.arange(0, BLOCK_Q)  # rows of all members, flattened (P·S)
    offs_m = tm * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_r = tl.arange(0, RANK_PAD)
    q_ok, m_ok, r_ok = offs_q < Q, offs_m < M, offs_r < RANK
    member = (offs_q // S).to(tl.int64)  # (BLOCK_Q,): each row's member
    acc = tl.zeros((BLOCK_Q, BLOCK_M), dtype=tl.float32)
    xb = tl.zeros((BLOCK_Q, RANK_PAD), dtype=tl.float32)
    if GENERATE:
        seed = load_seed(key_ptr)
        row = tl.load(rows_ptr + member, mask=q_ok, other=0)  # (BLOCK_Q,) noise rows
    for k0 in range(0, N, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < N
        xt = tl.load(
            x_ptr + offs_q[:, None].to(tl.int64) * N + offs_k[None, :],
            mask=q_ok[:, None] & k_ok[None, :], other=0.0,
        )  # (BLOCK_Q, BLOCK_K)  # fmt: skip
        wt = tl.load(
            w_ptr + offs_m[None, :].to(tl.int64) * N + offs_k[:, None],
            mask=m_ok[None, :] & k_ok[:, None], other=0.0,
        )  # (BLOCK_K, BLOCK_M) = Wᵀ tile  # fmt: skip
        if IEEE:
            acc += tl.dot(xt, wt, input_precision="ieee")
        else:
            acc += tl.dot(xt, wt)
        # x B, row by row (each row has its member's B): (BLOCK_Q, BLOCK_K, RANK_PAD)
        bmask = q_ok[:, None, None] & k_ok[None, :, None] & r_ok[None, None, :]
        kr = offs_k[None, :, None].to(tl.int64) * RANK + offs_r[None, None, :]
        if GENERATE:  # B[k, j] is element m·r + k·r + j of the member's row
            # (int64 zeros first: M may be specialized to the constant 1, which has no .to)
            e = (tl.zeros((BLOCK_Q, 1, 1), dtype=tl.int64) + M) * RANK + kr
            bt = tl.where(bmask, _normal_at(seed, row[:, None, None], e), 0.0)
        else:
            bt = tl.load(bf_ptr + member[:, None, None] * N * RANK + kr, mask=bmask, other=0.0)
        xb += tl.sum(xt.to(tl.float32)[:, :, None] * bt.to(tl.float32), axis=1)
    # + scale·(x B) Aᵀ, row by row: (BLOCK_Q, BLOCK_M, RANK_PAD) summed over the rank
    amask = q_ok[:, None, None] & m_ok[None, :, None] & r_ok[None, None, :]
    mr = offs_m[None, :, None].to(tl.int64) * RANK + offs_r[None, None, :]
    if GENERATE:  # A[i, j] is element i·r + j
        e = mr + tl.zeros((BLOCK_Q, 1, 1), dtype=tl.int64)
        at = tl.where(amask, _normal_at(seed, row[:, None, None], e), 0.0)
    else:
        at = tl.load(a_ptr + member[:, None, None] * M * RANK + mr, mask=amask, other=0.0)
    scale = tl.load(scale_ptr + member, mask=q_ok, other=0.0)
    acc += scale[:, None] * tl.sum(xb[:, None, :] * at.to(tl.float32), axis=2)
    if HAS_BIAS:
        if BIAS_PER_MEMBER:
            bias = tl.load(b_ptr + member[:, None] * M + offs_m[None, :],
                           mask=q_ok[:, None] & m_ok[None, :], other=0.0)  # fmt: skip
        else:
            bias = tl.load(b_ptr + offs_m, mask=m_ok, other=0.0)[None, :]
        acc += bias.to(tl.float32)
    out = out_ptr + offs_q[:, None].to(tl.int64) * M + offs_m[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=q_ok[:, None] & m_ok[None, :])


def lowrank_linear(
    x: torch.Tensor,
    W: torch.Tensor,
    bias: torch.Tensor | None,
    scale: torch.Tensor,
    *,
    A: torch.Tensor | None = None,
    B: torch.Tensor | None = None,
    key: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
    rank: int | None = None,
    block_q: int = 64,
    block_m: int = 64,
    block_k: int = 32,
    ieee: bool = True,
    launch=_direct,
) -> torch.Tensor:
    """Launch: out (P, S, m) = x Wᵀ + bias + scale_p·(x B_p) A_pᵀ for x (P, S, n), W (m, n).

    Factors either given — A (P, m, r), B (P, n, r) — or regenerated from ``key`` (the leaf's
    key) and ``rows`` (P,) with ``rank`` (Philox layout above). ``bias``: None, (m,) or (P, m).
    ``scale`` (P,): σ/√r with the member's antithetic sign. ``ieee=False`` lets fp32 dots use
    TF32 on GPUs that have it.
    """
    if x.dim() != 3 or W.dim() != 2 or x.shape[2] != W.shape[1]:
        raise ValueError(
            f"x must be (P, S, n) and W (m, n); got {tuple(x.shape)}, {tuple(W.shape)}"
        )
    P, S, N = x.shape
    M = W.shape[0]
    generate = A is None
    if generate:
        if key is None or rows is None or rank is None:
            raise ValueError("give the factors A and B, or key, rows and rank to regenerate them")
        r = int(rank)
        A = B = x  # unused pointers
    else:
        r = A.shape[2]
        if A.shape != (P, M, r) or B is None or B.shape != (P, N, r):
            raise ValueError(f"A must be (P, m, r) = ({P}, {M}, r) and B (P, n, r) = ({P}, {N}, r)")
        key = rows = scale  # unused pointers
        A, B = A.contiguous(), B.contiguous()
    if scale.shape != (P,):
        raise ValueError(f"scale must have shape ({P},); got {tuple(scale.shape)}")
    has_bias = bias is not None
    per_member = has_bias and bias.dim() == 2
    out = torch.empty(P, S, M, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(P * S, block_q), triton.cdiv(M, block_m))
    launch(_lowrank_linear_kernel)[grid](
        x.contiguous(), W.contiguous(), bias.contiguous() if has_bias else x, A, B, key, rows,
        scale.to(torch.float32).contiguous(), out, P * S, S, M, N,
        HAS_BIAS=has_bias, BIAS_PER_MEMBER=per_member, GENERATE=generate, RANK=r,
        RANK_PAD=triton.next_power_of_2(r), BLOCK_Q=block_q, BLOCK_M=block_m,
        BLOCK_K=block_k, IEEE=ieee,
    )  # fmt: skip
    return out
