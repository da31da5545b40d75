"""Many independent runs of one strategy, advanced by one call and vectorized over runs.

Where D is small, one generation is mostly fixed cost (a few dozen tiny tensor ops), so R runs
one after another cost R times that. :class:`BatchedRuns` keeps the R states stacked along a
leading run dim and advances them with the strategy's own update written over that dim: the
same ops on (R, ...) tensors, one noise gather for all runs. Run r with key
``keys[r]`` gives the same result as the strategy alone with that key (tested).

    runs = fastes.strategies.BatchedRuns(fastes.strategies.make("cma_es", x0, minimize=True), 64)
    state = runs.init(x0)                            # or params with a leading (64,) dim
    keys = torch.stack([fastes.key(s) for s in range(64)])
    for g in range(100):
        state, fitness = runs.step(state, f, fastes.fold_in(keys, g))
    runs.params(state)                               # leaves (64, *shape)

``f`` receives the members of every run, leaves (R, λ, *shape), and returns fitness (R, λ):
different problems per run are the user's to index by the leading dim. Supported: ``cma_es``,
``sep_cma_es``, ``xnes``, ``snes``, ``cem``, and ``openai_es``, ``pgpe`` and ``ars`` (without
observation statistics) with an elementwise optimizer or none (sgd, momentum, adam, adamw:
``GradientTransformation.elementwise``; not pgpe's default ClipUp), whose tell is written for a
run dim (``_tell_runs``); ARS picks each run's best directions run by run. Operations whose
rounding a batched kernel could change run run by run with the single run's own op: weighted sums
of noise rows, the elites' mean, and the CMA-ES and xNES matrix products and eigendecompositions
(:func:`fastes.strategies._ops.each_run`: batched float64 matmuls and ``eigh`` rounded some sizes
differently, e.g. D = 17); elementwise work is one op over all runs. Counters (the generation, an
optimizer's step count) are shared: the runs advance in lockstep. Not supported: ``eggroll`` (its
update is a GEMM over factors) and the restart strategy (its runs would need generation counters
of their own).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils import _pytree as pytree

from .._validate import check_callable, positive_int
from ..noise import TableNoise, table_offsets
from ..prng import check_keys
from .base import Strategy

__all__ = ["BatchedRuns"]


class BatchedRuns:
    """``runs`` independent runs of ``strategy`` (see the module docstring)."""

    def __init__(self, strategy: Strategy, runs: int) -> None:
        if not hasattr(strategy, "_tell_runs"):
            raise NotImplementedError(
                "BatchedRuns supports cma_es, sep_cma_es, xnes, snes, cem, openai_es, pgpe and "
                f"ars; got {getattr(strategy, 'name', type(strategy).__name__)!r}"
            )
        strategy._check_runs()
        self.strategy = strategy
        self.runs = positive_int(runs, "runs")

    def init(self, params: Any):
        """R states: all from ``params`` (the template), or from params whose leaves have a
        leading (R,) dim (a different starting point per run)."""
        s, R = self.strategy, self.runs
        leaves = pytree.tree_leaves(params)
        # Counters (int64 scalars: the generation, an optimizer's step count) are shared by
        # all runs, which advance in lockstep; every other leaf gets a leading run dim.
        if all(tuple(x.shape) == tuple(t) for x, t in zip(leaves, s.raveler.shapes, strict=True)):
            # One start for all: one init (a pure function of params), copied R times (64
            # CMA-ES runs at D = 10: 4.8 ms of R inits -> 0.2 ms)
            return pytree.tree_map(
                lambda x: x if _is_counter(x) else torch.stack([x] * R), s.init(params)
            )
        if all(tuple(x.shape) == (R, *t) for x, t in zip(leaves, s.raveler.shapes, strict=True)):
            spec = pytree.tree_structure(params)
            starts = [pytree.tree_unflatten([x[r] for x in leaves], spec) for r in range(R)]
        else:
            raise ValueError(
                f"params must have the template's shapes {[tuple(t) for t in s.raveler.shapes]} "
                f"or those with a leading ({R},) run dim; got {[tuple(x.shape) for x in leaves]}"
            )
        return pytree.tree_map(
            lambda *xs: xs[0] if _is_counter(xs[0]) else torch.stack(xs),
            *(s.init(p) for p in starts),
        )

    def params(self, state) -> Any:
        """Every run's search centre: the template's structure, leaves (R, *shape)."""
        rav = self.strategy.raveler
        return rav.unravel_batch(state.mean.to(rav.flat_dtype))

    def _z(self, keys: torch.Tensor) -> torch.Tensor:
        """(R, λ, D) float32 standard normals: row i of run r as the strategy draws it for
        keys[r] — one gather from the noise table for all runs where the table is used."""
        s = self.strategy
        n = s.population_size // s._per_pair  # noise rows: one per antithetic pair
        ids = s._ids(0, n)
        if isinstance(s.noise, TableNoise):
            t = s.noise.table.values
            offsets = table_offsets(keys, ids, s.dim, t.numel())  # (R, n)
            rows = torch.index_select(t.unfold(0, s.dim, 1), 0, offsets.reshape(-1))
            rows = rows.view(self.runs, n, s.dim)
        else:
            rows = torch.stack([s.noise.rows(k, ids, s.dim) for k in keys])
        if s.antithetic:  # members 2j, 2j + 1: z_j, −z_j, as a single run draws them
            return torch.stack([rows, -rows], 2).reshape(self.runs, 2 * n, s.dim)
        return rows

    def ask(self, state, keys: torch.Tensor, *, flat: bool = False) -> Any:
        """Every run's members: a pytree with leaves (R, λ, *shape) (``flat``: (R, λ, D))."""
        return self._members(state, self._z(self._check_keys(keys)), flat)

    def _members(self, state, z: torch.Tensor, flat: bool = False) -> Any:
        """Members from the runs' noise z (R, λ, D): (R, λ, D), or the pytree of (R, λ, ...)."""
        s = self.strategy  # (each _members_from takes float32 z into its state's dtype)
        members = s._members_from(state, z).to(s.raveler.flat_dtype)
        return members if flat else s.raveler.unravel_batch(members)

    def tell(self, state, keys: torch.Tensor, fitness: Any):
        """The new states from fitness (R, λ) (maximized unless the strategy minimizes)."""
        return self._tell(state, self._check_keys(keys), self._check_fitness(fitness),
                          self._z(keys))  # fmt: skip

    def step(self, state, fitness_fn: Callable[[Any], Any],
             keys: torch.Tensor) -> tuple[Any, torch.Tensor]:  # fmt: skip
        """Ask, evaluate ``fitness_fn`` on every run's members at once, tell: returns the new
        states and the fitness (R, λ)."""
        check_callable(fitness_fn, "fitness_fn")
        z = self._z(self._check_keys(keys))
        fitness = self._check_fitness(fitness_fn(self._members(state, z)))
        return self._tell(state, keys, fitness, z), fitness

    def _tell(self, state, keys, fitness, z):
        return self.strategy._tell_runs(state, z, fitness)

    def _check_keys(self, keys: torch.Tensor) -> torch.Tensor:
        check_keys(keys)
        if keys.shape[0] != self.runs:
            raise ValueError(f"keys must hold {self.runs} keys, one per run; got {keys.shape[0]}")
        return keys

    def _check_fitness(self, fitness: Any) -> torch.Tensor:
        f = fitness if isinstance(fitness, torch.Tensor) else torch.as_tensor(fitness)
        shape = (self.runs, self.strategy.population_size)
        if tuple(f.shape) != shape or f.is_complex() or f.dtype == torch.bool:
            raise ValueError(f"fitness must be real numbers of shape {shape} (runs, members); "
                             f"got {f.dtype} {tuple(f.shape)}")  # fmt: skip
        return f.detach().to(self.strategy.raveler.device)


def _is_counter(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.ndim == 0 and x.dtype == torch.int64
