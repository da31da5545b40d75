"""IPOP-CMA-ES: restart CMA-ES with a doubled population when it stagnates.

Auger & Hansen 2005, "A restart CMA evolution strategy with increasing population size",
https://doi.org/10.1109/CEC.2005.1554902. A run restarts when, within the current run,

* the best fitness of the last 10 + ⌈30D/λ⌉ generations spans less than ``tol_fun``, or
* σ·max(D_i) < ``tol_x``·σ₀ (the search distribution has collapsed), or
* the condition number of C exceeds 1e14,

and then starts again from x₀ + σ₀·z (z drawn from the key: without box constraints there is no
uniform domain to draw from) with λ doubled. ``params(state)`` is the best member seen overall.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .._validate import positive_int, real
from ..tree import next_count
from .base import Strategy
from .cma_es import CMAES, CMAState, SepCMAES


class IPOPState(NamedTuple):
    inner: CMAState
    restarts: torch.Tensor  # () int64
    history: torch.Tensor  # (L,) float64 best shaped-fitness per generation, NaN-padded
    best_fitness: torch.Tensor  # () float64, in "larger is better" units
    best: torch.Tensor  # (D,) best member so far, in the params' flat dtype
    x0: torch.Tensor  # (D,) float64 the first run's start, centre of the restart points
    generation: torch.Tensor


class IPOP(Strategy):
    name = "ipop_cma_es"

    def __init__(
        self,
        params,
        population_size: int | None = None,
        *,
        sigma: float = 1.0,
        separable: bool = False,
        max_restarts: int = 9,
        tol_fun: float = 1e-12,
        tol_x: float = 1e-12,
        **kwargs,
    ):
        super().__init__(params, population_size, **kwargs)
        self.inner_cls = SepCMAES if separable else CMAES
        self.sigma0 = real(sigma, "sigma", positive=True)
        positive_int(max_restarts, "max_restarts", 0)
        self.tol_fun, self.tol_x = real(tol_fun, "tol_fun"), real(tol_x, "tol_x")
        self.kwargs = dict(kwargs)
        self.base_population = self.population_size
        self.max_restarts = max_restarts
        self._inners: dict[int, CMAES] = {}
        self._template = params
        self.inner(0)  # validates sigma and D now

    def inner(self, restarts: int) -> CMAES:
        """The CMA-ES of restart ``restarts`` (population base·2^restarts)."""
        if restarts not in self._inners:
            self._inners[restarts] = self.inner_cls(
                self._template, self.base_population * 2**restarts, sigma=self.sigma0,
                **self.kwargs,
            )  # fmt: skip
        return self._inners[restarts]

    def _window(self, restarts: int) -> int:
        return 10 + math.ceil(30 * self.dim / self.inner(restarts).population_size)

    def init(self, params, key=None) -> IPOPState:
        inner = self.inner(0).init(params)
        dev = inner.mean.device
        history = torch.full((self._window(0),), math.nan, dtype=torch.float64, device=dev)
        best_f = torch.tensor(-math.inf, dtype=torch.float64, device=dev)
        best = inner.mean.to(self.raveler.flat_dtype)
        return IPOPState(
            inner, self._counter(), history, best_f, best, inner.mean.clone(), self._counter()
        )

    def _restarts(self, state) -> int:
        return int(state.restarts)

    def _members(self, state, key, ids):
        return self.inner(self._restarts(state))._members(state.inner, key, ids)

    def mean(self, state):
        return state.best

    def population(self, state) -> int:
        return self.inner(self._restarts(state)).population_size

    def _tell(self, state, key, fitness):
        r = self._restarts(state)
        cma = self.inner(r)
        inner, weights = cma._tell(state.inner, key, fitness)
        # Best member so far, in "larger is better" units of the first objective.
        f = fitness if fitness.dim() == 1 else fitness[:, 0]
        f = (-f if self.minimize else f).double()
        f = torch.where(torch.isnan(f), -math.inf, f)
        i = int(torch.argmax(f))
        best_f, best = state.best_fitness, state.best
        if f[i] > best_f:
            best_f = f[i]
            best = cma._members(state.inner, key, self._ids(i, i + 1))[0]
            best = best.to(self.raveler.flat_dtype)
        history = torch.roll(state.history, 1)
        history[0] = f[i]
        span = history.max() - history.min() if not torch.isnan(history).any() else math.inf
        stalled = (
            span < self.tol_fun
            or float(inner.sigma * inner.D.max()) < self.tol_x * self.sigma0
            or float(inner.D.max() / inner.D.min()) ** 2 > 1e14
        )
        gen = next_count(state.generation)
        if stalled and r < self.max_restarts:
            r += 1
            nxt = self.inner(r)
            z = nxt._z(key, self._ids(0, 1))[0].double()
            start = state.x0 + self.sigma0 * z
            inner = nxt.init(self.raveler.unravel(start.to(self.raveler.flat_dtype)))
            history = history.new_full((self._window(r),), math.nan)
        restarts = torch.full_like(state.restarts, r)
        return IPOPState(inner, restarts, history, best_f, best, state.x0, gen), weights
