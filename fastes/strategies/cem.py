"""Cross-entropy method (Rubinstein 1999; for policy search: Szita & Lőrincz 2006,
https://doi.org/10.1162/neco.2006.18.12.2936), diagonal Gaussian.

x_i = μ + σ ⊙ z_i; the ⌈ρλ⌉ best members (elites) refit the Gaussian:
μ ← (1 − α)μ + α·mean(elites),  σ ← (1 − α)σ + α·(std(elites) + ε_t), where ε_t (``noise_floor``,
a number or schedule) is the extra noise of Szita & Lőrincz that prevents premature collapse.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .._validate import real
from ..schedules import resolve
from ..tree import host_view, next_count
from .base import Strategy, diagonal_form


class CEMState(NamedTuple):
    mean: torch.Tensor  # (D,) in the params' flat dtype
    sigma: torch.Tensor  # (D,)
    generation: torch.Tensor


class CEM(Strategy):
    name = "cem"

    def __init__(
        self,
        params,
        population_size: int | None = None,
        *,
        sigma: float = 1.0,
        elite_ratio: float = 0.2,
        smoothing: float = 1.0,
        noise_floor=0.0,
        **kwargs,
    ):
        super().__init__(params, population_size, **kwargs)
        self.sigma0 = real(sigma, "sigma", positive=True)
        if not 0 < elite_ratio <= 1 or math.ceil(elite_ratio * self.population_size) < 2:
            raise ValueError(
                "elite_ratio must be in (0, 1] and keep at least 2 elites of population_size="
                f"{self.population_size}; got {elite_ratio}"
            )
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1]; got {smoothing}")
        self.n_elite = math.ceil(elite_ratio * self.population_size)
        self.smoothing = smoothing
        self.noise_floor = resolve(noise_floor, "noise_floor")

    @staticmethod
    def default_population(dim: int) -> int:
        return max(20, 4 + int(3 * math.log(dim)) * 2)

    def init(self, params, key=None) -> CEMState:
        mean = self._flat_params(params)
        return CEMState(mean, torch.full_like(mean, self.sigma0), self._counter())

    _affine = staticmethod(diagonal_form)

    def _tell(self, state, key, fitness):
        elites = self._order(fitness)[: self.n_elite]
        x = self._members(state, key, elites)  # (k, D), regenerated
        new = self._refit(state, x.mean(0), x.std(0, unbiased=False))
        weights = torch.zeros(self.population_size, dtype=new.mean.dtype, device=new.mean.device)
        # each elite's share of the refit mean (written on the host where the weights are small)
        host_view(weights)[host_view(elites)] = self.smoothing / self.n_elite
        return new, weights

    def _tell_runs(self, state, z, fitness):
        """R runs' tell from their noise z (R, λ, D) (:class:`BatchedRuns`): each run's elite
        statistics as alone, one refit over the run dim."""
        elites = self._order_runs(fitness)[:, : self.n_elite]  # (R, k)
        z = z.gather(1, elites[..., None].expand(-1, -1, self.dim))
        x = self._members_from(state, z)  # (R, k, D)
        mean = torch.stack([xr.mean(0) for xr in x])
        return self._refit(state, mean, torch.stack([xr.std(0, unbiased=False) for xr in x]))

    def _refit(self, state, elite_mean, elite_std):
        a = self.smoothing
        extra = self.noise_floor(int(state.generation))
        if a == 1:  # the default: the elite statistics themselves (0·x + 1·y is y, ±0 aside)
            return CEMState(elite_mean, elite_std + extra, next_count(state.generation))
        mean = (1 - a) * state.mean + a * elite_mean
        sigma = (1 - a) * state.sigma + a * (elite_std + extra)
        return CEMState(mean, sigma, next_count(state.generation))
