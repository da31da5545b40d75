"""SNES: separable natural evolution strategies (Schaul, Glasmachers & Schmidhuber 2011,
"High dimensions and heavy tails for natural evolution strategies",
https://doi.org/10.1145/2001576.2001692; Wierstra et al. 2014, https://arxiv.org/abs/1106.4487).

x_i = μ + σ ⊙ z_i with NES utilities u (best first, Σu = 0):

    ∇μ = Σ u_i z_i,  ∇σ = Σ u_i (z_i² − 1)
    μ ← μ + η_μ σ ⊙ ∇μ,   σ ← σ ⊙ exp(η_σ/2 · ∇σ)

Defaults: λ = 4 + ⌊3 ln D⌋, η_μ = 1, η_σ = (3 + ln D) / (5√D). O(λD) per generation.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .._validate import real
from ..schedules import resolve
from ..tree import as_dtype, next_count
from .base import Strategy, _runs_weighted_sums, diagonal_form


class SNESState(NamedTuple):
    mean: torch.Tensor  # (D,) in the params' flat dtype
    sigma: torch.Tensor  # (D,)
    generation: torch.Tensor


class NESBase(Strategy):
    """Shared constructor of SNES and xNES: σ₀, a mean learning rate (number or schedule) and a
    σ learning rate whose default each strategy derives from D."""

    def __init__(
        self,
        params,
        population_size: int | None = None,
        *,
        sigma: float = 1.0,
        mean_learning_rate=1.0,
        sigma_learning_rate: float | None = None,
        **kwargs,
    ):
        super().__init__(params, population_size, **kwargs)
        self.sigma0 = real(sigma, "sigma", positive=True)
        self.eta_mu = resolve(mean_learning_rate, "mean_learning_rate")  # number or schedule
        if sigma_learning_rate is None:
            sigma_learning_rate = self.default_sigma_rate(self.dim)
        self.eta_sigma = real(sigma_learning_rate, "sigma_learning_rate")

    @staticmethod
    def default_sigma_rate(dim: int) -> float:
        raise NotImplementedError


class SNES(NESBase):
    name = "snes"

    @staticmethod
    def default_sigma_rate(dim: int) -> float:
        return (3 + math.log(dim)) / (5 * math.sqrt(dim))

    def init(self, params, key=None) -> SNESState:
        mean = self._flat_params(params)
        return SNESState(mean, torch.full_like(mean, self.sigma0), self._counter())

    _affine = staticmethod(diagonal_form)

    def _tell(self, state, key, fitness):
        u = self._scores(fitness, "nes")
        grad_mu = self._z_weighted_sum(key, u)
        grad_sigma = self._z_sq_weighted_sum(key, u) - u.sum()
        return self._update(state, grad_mu, grad_sigma), u

    def _tell_runs(self, state, z, fitness):
        """R runs' tell from their noise z (R, λ, D) (:class:`BatchedRuns`): each run's sums as
        alone, one update over the run dim."""
        u = self._runs_scores(fitness, "nes")
        w = u.to(torch.float32)
        grad_mu = _runs_weighted_sums(z, w)
        # each run's Σu in float32, as a run alone's float32 sum minus its 0-d Σu computes it
        u_sum = as_dtype(torch.stack([ur.sum() for ur in u])[:, None], torch.float32)
        return self._update(state, grad_mu, _runs_weighted_sums(z.square(), w) - u_sum)

    def _update(self, state, grad_mu, grad_sigma):
        mean = state.mean + self.eta_mu(int(state.generation)) * state.sigma * grad_mu
        sigma = state.sigma * torch.exp(0.5 * self.eta_sigma * grad_sigma)
        return SNESState(mean, sigma, next_count(state.generation))
