"""Exploit rules: which members are replaced, and by whom.

Each rule takes the population's fitness (N,) and a key, and returns an :class:`Exploit`:
``source[n]`` is the member whose weights, optimizer state and hyperparameters member n takes
(n itself when it is kept) and ``replaced[n]`` says whether n was replaced. Applying it is an
index gather (:func:`gather`), so every member reads the population as it was before the round.

A NaN fitness (a member that diverged or whose training failed) ranks last; ties keep the lower
member index first, so the order is deterministic.

* :func:`truncation` — Ray Tune's ``PopulationBasedTraining`` rule (Jaderberg et al. 2017,
  https://arxiv.org/abs/1711.09846): the bottom ``quantile`` of members copies a member drawn
  uniformly from the top ``quantile``.
* :func:`tournament` — EPBT's rule (Liang et al. 2020, https://arxiv.org/abs/2002.04225): the top
  ``elite_fraction`` is kept; every other member is replaced by the winner of a tournament between
  ``size`` distinct members drawn from the whole population.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from .._validate import positive_int, real
from ..noise import uniform
from ..prng import check_key
from ..tree import tree_map

__all__ = ["Exploit", "rank_order", "truncation", "tournament", "gather"]


class Exploit(NamedTuple):
    source: torch.Tensor  # (N,) int64: the member each member copies (itself when kept)
    replaced: torch.Tensor  # (N,) bool


def rank_order(fitness: torch.Tensor, minimize: bool = False) -> torch.Tensor:
    """Member indices from best to worst: NaN last, ties by index."""
    f = torch.as_tensor(fitness).detach().to("cpu", torch.float64).reshape(-1)
    score = f if minimize else -f
    score = torch.where(torch.isnan(score), torch.inf, score)
    # Stable sort of the score; a NaN (now +inf) goes after every finite one, and after a true
    # +inf score too (a second key breaks that tie).
    nan_last = torch.isnan(f).to(torch.int64)
    order = torch.sort(score, stable=True).indices
    return order[torch.sort(nan_last[order], stable=True).indices]


def truncation(fitness: torch.Tensor, key: torch.Tensor, quantile: float = 0.25,
               minimize: bool = False) -> Exploit:  # fmt: skip
    """Bottom ``quantile`` (at least one member, at most half) copies a random top-quantile one."""
    check_key(key)
    q = real(quantile, "quantile", high=0.5)
    order = rank_order(fitness, minimize)
    n = order.numel()
    k = min(n // 2, max(1, math.ceil(n * q))) if q > 0 else 0
    source = torch.arange(n)
    if k == 0:
        return Exploit(source, torch.zeros(n, dtype=torch.bool))
    u = uniform(key, (k,), [0.0], [1.0])[:, 0]
    top, bottom = order[:k], order[n - k :]
    source[bottom] = top[(u * k).long().clamp(max=k - 1)]
    replaced = torch.zeros(n, dtype=torch.bool)
    replaced[bottom] = True
    return Exploit(source, replaced)


def tournament(fitness: torch.Tensor, key: torch.Tensor, elite_fraction: float = 0.5,
               size: int = 2, minimize: bool = False) -> Exploit:  # fmt: skip
    """Keep the top ``elite_fraction``; replace the rest by tournament winners."""
    check_key(key)
    e = real(elite_fraction, "elite_fraction", high=1.0)
    order = rank_order(fitness, minimize)
    n = order.numel()
    size = positive_int(size, "size")
    if size > n:
        raise ValueError(f"size must be <= the population size {n}; got {size}")
    n_elite = math.floor(n * e)
    rank = torch.empty(n, dtype=torch.int64)
    rank[order] = torch.arange(n)
    losers = order[n_elite:]
    m = losers.numel()
    source = torch.arange(n)
    if m:
        u = uniform(key, (m,), [0.0] * n, [1.0] * n)  # (m, n): a random permutation per row
        fighters = u.argsort(dim=1)[:, :size]  # (m, size) distinct members
        best = rank[fighters].argmin(dim=1)
        source[losers] = fighters[torch.arange(m), best]
    replaced = torch.zeros(n, dtype=torch.bool)
    replaced[losers] = True
    return Exploit(source, replaced)


def gather(tree: Any, source: torch.Tensor, population_size: int) -> Any:
    """Index every leaf whose dim 0 is the population by ``source`` (other leaves, such as step
    counters shared by all members, unchanged)."""

    def take(leaf):
        if isinstance(leaf, torch.Tensor) and leaf.ndim >= 1 and leaf.shape[0] == population_size:
            return leaf.index_select(0, source.to(leaf.device))
        return leaf

    return tree_map(take, tree)
