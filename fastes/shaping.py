"""Fitness shaping: raw fitness (P,) or (P, K) -> one weight per member (P,).

Fitness is **maximized** everywhere in fastes: a larger weight pulls the search toward that
member. Pass ``minimize=True`` to shape the negated fitness instead; nothing flips silently.

Methods (``method=``):

* ``"centered_ranks"`` — rank / (P - 1) - 0.5 ∈ [-0.5, 0.5], the OpenAI-ES shaping
  (Salimans et al. 2017, https://arxiv.org/abs/1703.03864).
* ``"nes"`` — the NES log-rank utilities u_k = max(0, ln(P/2 + 1) - ln k) / Σ_j (...) - 1/P for
  the k-th best member (Wierstra et al. 2014, https://arxiv.org/abs/1106.4487); they sum to 0.
* ``"zscore"`` — (f - mean) / std; all zeros when std = 0 (a flat population carries no signal).
* ``"raw"`` — the fitness itself.

Ties get the mean of the weights their ranks would get, so equal fitness always means equal
weight, and an all-equal population yields a zero gradient.

Multiple objectives: fitness (P, K) is shaped column by column, then combined as
Σ_k objective_weights[k] · shaped[:, k] (equal weights 1/K by default).

Non-finite policy (DESIGN §8): NaN is the worst possible fitness. Rank methods rank NaN members
below everything (−inf included), tied with each other; value methods (zscore, raw) give them the
weight of the lowest finite fitness. ±inf rank normally; value methods clamp them to the
largest/smallest finite value. :class:`ShapeStats` counts both. A column that is entirely NaN
raises ``ValueError``: there is nothing to learn from it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["METHODS", "ShapeStats", "shape_fitness", "centered_ranks", "nes_utilities", "zscore"]

METHODS = ("centered_ranks", "nes", "zscore", "raw")


class ShapeStats(NamedTuple):
    """Counts of non-finite fitness values seen while shaping (over all objectives): ints, or
    0-dim int64 tensors inside ``torch.compile`` (graphs do not read values back to the host)."""

    nan_count: int
    inf_count: int


# Eager-mode memo of rank tables keyed by (P, method, dtype, device): a pure function's results,
# bounded at 64 entries (cleared when full) and freed by fastes.noise.clear_caches().
_TABLES: dict[tuple, torch.Tensor] = {}


def _rank_table(p: int, method: str, dtype, device) -> torch.Tensor:
    """Weight of the member at ascending sorted position 0..p-1 (0 = worst)."""
    if torch.compiler.is_compiling():  # constant-folded by the compiler; no memo in graphs
        return _make_rank_table(p, method, dtype, device)
    k = (p, method, dtype, str(device))
    if k not in _TABLES:
        if len(_TABLES) > 64:
            _TABLES.clear()
        _TABLES[k] = _make_rank_table(p, method, dtype, device)
    return _TABLES[k]


def _make_rank_table(p: int, method: str, dtype, device) -> torch.Tensor:
    pos = torch.arange(p, dtype=torch.float64, device=device)
    if method == "centered_ranks":
        table = pos / max(p - 1, 1) - 0.5 if p > 1 else torch.zeros(1, dtype=torch.float64)
    else:  # nes: utility of the k-th best, k = p - pos
        k = p - pos
        u = (math.log(p / 2 + 1) - torch.log(k)).clamp_min(0)
        table = u / u.sum() - 1.0 / p
    return table.to(device=device, dtype=dtype)


# Up to this P the eager CPU shortcut ranks in numpy (measured, whole weights: P = 16 7 µs
# against 30 µs of tiny tensor ops — sort, flip, gather, tie test, scatter —, P = 256 10 vs
# 67 µs, P = 4096 84 vs 112 µs).
_SMALL_P = 8192
_TABLES_NP: dict[tuple, np.ndarray] = {}


def _rank_weights_small(f: torch.Tensor, method: str, negate: bool = False) -> torch.Tensor | None:
    """:func:`_rank_weights` of a finite CPU float32/float64 fitness without ties, in numpy (the
    same float64 table entries cast once to f's dtype: the same bits); None when a NaN, an
    infinity or a tie needs the general path. f may hold several runs' fitness (R, P): each row
    ranked alone (:class:`fastes.strategies.BatchedRuns`), None if any row needs the general
    path."""
    v = f.detach().numpy() if f.requires_grad else f.numpy()
    # Ascending: position 0 is the worst, or with ``negate`` the best (without ties, -f's
    # ascending order is f's reversed: the table goes in reversed instead, no -f to make)
    order = v.argsort(axis=-1, kind="stable")
    one = v.ndim == 1  # one run: plain indexing (take/put_along_axis cost ~5-10 µs each)
    s = v[order] if one else np.take_along_axis(v, order, -1)
    # Sorted ascending with NaN last: finite and without ties iff its ends are finite and it
    # rises strictly (ufunc reductions: no .all() wrappers)
    n = v.shape[-1]
    if one:  # two numbers: math's test (~0.1 µs against ~1.4 µs of numpy calls)
        ends_finite = math.isfinite(s[0]) and math.isfinite(s[-1])
    else:
        ends_finite = np.logical_and.reduce(np.isfinite(s[..., :: n - 1]), axis=None)
    if not ends_finite or not np.logical_and.reduce(s[..., 1:] > s[..., :-1], axis=None):
        return None
    k = (n, method, v.dtype.str, negate)
    if k not in _TABLES_NP:
        if len(_TABLES_NP) > 64:
            _TABLES_NP.clear()
        table = _make_rank_table(n, method, torch.float64, "cpu").numpy().astype(v.dtype)
        _TABLES_NP[k] = table[::-1].copy() if negate else table
    w = np.empty_like(v)
    if one:
        w[order] = _TABLES_NP[k]
    else:
        np.put_along_axis(w, order, np.broadcast_to(_TABLES_NP[k], v.shape), -1)
    return torch.from_numpy(w)


def _numpy_shortcut(f: torch.Tensor, objective_weights=None) -> bool:
    """Whether one objective's fitness (..., P) may be shaped by the numpy shortcuts: unweighted,
    1 < P <= _SMALL_P, float32/float64 on the CPU, eager."""
    return (objective_weights is None and 1 < f.shape[-1] <= _SMALL_P and f.is_cpu
            and f.dtype in (torch.float32, torch.float64)
            and not torch.compiler.is_compiling())  # fmt: skip


def _all_finite(x: torch.Tensor) -> bool:
    """Whether every value is finite: numpy's test on eager CPU tensors (~1 µs against ~7 µs of
    torch ops and a host read), torch's elsewhere."""
    if x.is_cpu and not torch.compiler.is_compiling() and x.dtype != torch.bfloat16:
        v = x.detach().numpy() if x.requires_grad else x.numpy()
        return bool(np.logical_and.reduce(np.isfinite(v), axis=None))  # no .all()'s wrapper
    return bool(torch.isfinite(x).all())


def _rank_weights(f: torch.Tensor, method: str) -> torch.Tensor:
    """Rank-based weights of one objective (P,), ties averaged, NaN below everything.

    Sync-free (sorts and scatters, no ``unique`` or host reads), so it runs inside
    ``torch.compile(fullgraph=True)`` graphs and CUDA graphs.
    """
    p = f.numel()
    table = _rank_table(p, method, torch.float64, f.device)  # averaged in float64, cast at the end
    nan = torch.isnan(f)
    # Ascending order with NaN below everything (even −inf): torch.sort puts NaN last, so sort
    # −f ascending and flip. (The order within a tie group is irrelevant: ties are averaged.)
    order = torch.sort(-f).indices.flip(0)
    s, s_nan = f[order], nan[order]
    if p > 1 and f.is_cpu and not torch.compiler.is_compiling():
        # Eager CPU, no NaN and no ties (the usual case): every group is one member, so the
        # general path below reduces to the table itself — same bits, a third of the ops.
        if not bool(s_nan.any()) and not bool((s[1:] == s[:-1]).any()):
            return torch.empty_like(table).scatter_(0, order, table).to(f.dtype)
    # Exact ties share a group (all NaNs form one); each position gets its group's mean weight.
    new_group = torch.ones(p, dtype=torch.bool, device=f.device)
    new_group[1:] = (s[1:] != s[:-1]) & ~(s_nan[1:] & s_nan[:-1])
    group = torch.cumsum(new_group, 0) - 1
    sums = torch.zeros(p, dtype=table.dtype, device=f.device).scatter_add_(0, group, table)
    counts = torch.zeros(p, dtype=table.dtype, device=f.device).scatter_add_(
        0, group, torch.ones_like(table)
    )
    weights = torch.empty_like(table).scatter_(0, order, sums[group] / counts[group])
    # Every member tied: no signal — exactly 0, not the table's mean up to rounding.
    return torch.where(group[-1] == 0, 0.0, weights).to(f.dtype)


def _value_weights(f: torch.Tensor, method: str) -> torch.Tensor:
    """z-score / raw weights; NaN → the lowest finite value, ±inf clamped (sync-free)."""
    finite = torch.isfinite(f)
    lo = torch.where(finite, f, math.inf).min()
    hi = torch.where(finite, f, -math.inf).max()
    g = torch.where(torch.isnan(f), lo, f).clamp(lo, hi)
    if method == "zscore":
        std = g.std(unbiased=False)
        g = torch.where(std == 0, 0.0, (g - g.mean()) / std)
    # No finite anchor (all ±inf/NaN mixtures): no signal.
    return torch.where(finite.any(), g, 0.0)


def shape_fitness(
    fitness: torch.Tensor,
    method: str = "centered_ranks",
    *,
    objective_weights: Sequence[float] | torch.Tensor | None = None,
    minimize: bool = False,
) -> tuple[torch.Tensor, ShapeStats]:
    """Turn fitness (P,) or (P, K) into weights (P,) for the gradient estimate.

    Args:
        fitness: (P,) or (P, K) fitness values; larger is better unless ``minimize``.
        method: one of ``METHODS``.
        objective_weights: K weights combining the shaped objectives (default 1/K each).
        minimize: shape ``-fitness`` instead, i.e. smaller fitness is better.

    Returns:
        ``(weights, stats)``: weights (P,) in fitness' float dtype (float32 for integer input),
        and :class:`ShapeStats` with the NaN and inf counts.

    Example:
        >>> w, _ = shape_fitness(torch.tensor([3.0, 1.0, 2.0]))
        >>> w
        tensor([ 0.5000, -0.5000,  0.0000])
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if not isinstance(fitness, torch.Tensor):
        raise TypeError(f"fitness must be a torch.Tensor; got {type(fitness).__name__}")
    if fitness.dim() not in (1, 2) or fitness.shape[0] < 1:
        raise ValueError(f"fitness must have shape (P,) or (P, K); got {tuple(fitness.shape)}")
    # One objective on the eager CPU (every small-D generation): the numpy shortcuts, on the
    # column itself (no (P, 1) views; only float32/float64 columns qualify).
    col = fitness if fitness.dim() == 1 else fitness[:, 0] if fitness.shape[1] == 1 else None
    if col is not None and _numpy_shortcut(col, objective_weights):
        if method == "raw":  # finite: the fitness itself, as the general path returns it
            if _all_finite(col):
                return (-col if minimize else col.clone()), ShapeStats(0, 0)
        elif method != "zscore":
            w = _rank_weights_small(col, method, minimize)  # None: NaN, inf or ties (below)
            if w is not None:
                return w, ShapeStats(0, 0)
    f = fitness if fitness.is_floating_point() else fitness.float()
    f = f[:, None] if f.dim() == 1 else f
    P, K = f.shape
    if objective_weights is None:
        ow = torch.full((K,), 1.0 / K, dtype=f.dtype, device=f.device)
    else:
        ow = torch.as_tensor(objective_weights, dtype=f.dtype, device=f.device).reshape(-1)
        finite = torch.compiler.is_compiling() or bool(torch.isfinite(ow).all())
        if ow.numel() != K or not finite:
            raise ValueError(
                f"objective_weights must be {K} finite numbers, one per objective (fitness has "
                f"shape {tuple(fitness.shape)}); got {objective_weights!r}"
            )
    if minimize:
        f = -f
    shape_one = _rank_weights if method in ("centered_ranks", "nes") else _value_weights
    if (K == 1 and objective_weights is None and f.is_cpu
            and not torch.compiler.is_compiling() and _all_finite(f)):  # fmt: skip
        # One finite objective on the CPU (the common small-D case): no counts to take, no
        # combination to make (x·1.0 is x) — the same weights in a few ops.
        return shape_one(f[:, 0], method), ShapeStats(0, 0)
    nan = torch.isnan(f)
    if torch.compiler.is_compiling():
        # No host reads inside a graph: counts stay 0-dim tensors, and an all-NaN objective
        # cannot raise — it shapes to zero weights (no update) instead.
        stats = ShapeStats(nan.sum(), torch.isinf(f).sum())
    else:
        all_nan = nan.all(dim=0)
        if bool(all_nan.any()):
            cols = all_nan.nonzero().flatten().tolist()
            raise ValueError(
                f"fitness is NaN for every member of the population (objective column(s) "
                f"{cols}); check the fitness function"
            )
        stats = ShapeStats(int(nan.sum()), int(torch.isinf(f).sum()))
    shaped = torch.stack([shape_one(f[:, j], method) for j in range(K)], dim=1)  # (P, K)
    return shaped @ ow, stats


def centered_ranks(fitness: torch.Tensor) -> torch.Tensor:
    """Centered ranks in [-0.5, 0.5] of a (P,) fitness (ties averaged)."""
    return shape_fitness(fitness, "centered_ranks")[0]


def nes_utilities(fitness: torch.Tensor) -> torch.Tensor:
    """NES log-rank utilities of a (P,) fitness (ties averaged); they sum to 0."""
    return shape_fitness(fitness, "nes")[0]


def zscore(fitness: torch.Tensor) -> torch.Tensor:
    """(f - mean) / std of a (P,) fitness; zeros when std = 0."""
    return shape_fitness(fitness, "zscore")[0]
