"""OpenAI-ES (Salimans et al. 2017, https://arxiv.org/abs/1703.03864) as a strategy.

Antithetic members θ ± σz, shaped fitness w (centered ranks by default), the estimate
ĝ = 1/(Pσ) Σ_i w_i z_i, decoupled weight decay, and any ``fastes.optim`` optimizer for the step
(Adam by default, as in the paper). ``sigma`` and the optimizer's learning rate may be schedules.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import optim
from ..es import _finite_float
from ..schedules import resolve
from ..shaping import METHODS
from .base import Strategy


class OpenESState(NamedTuple):
    mean: torch.Tensor  # (D,)
    opt_state: Any
    generation: torch.Tensor  # () int64


class OpenES(Strategy):
    name = "openai_es"
    antithetic = True

    def __init__(
        self,
        params,
        population_size: int | None = None,
        *,
        sigma=0.1,
        learning_rate=0.01,
        optimizer: optim.GradientTransformation | None = None,
        weight_decay: float = 0.0,
        shaping: str = "centered_ranks",
        **kwargs,
    ):
        super().__init__(params, population_size, **kwargs)
        self.sigma = resolve(sigma, "sigma")
        if self.sigma(0) <= 0:
            raise ValueError(f"sigma must be > 0; got {self.sigma(0)}")
        if shaping not in METHODS:
            raise ValueError(f"shaping must be one of {METHODS}; got {shaping!r}")
        self.shaping = shaping
        self.weight_decay = _finite_float(weight_decay, "weight_decay")
        self.optimizer = optimizer if optimizer is not None else optim.adam(learning_rate)

    default_population = staticmethod(Strategy.paired_population)

    def init(self, params, key=None) -> OpenESState:
        mean = self.raveler.ravel(params).float()
        return OpenESState(mean, self.optimizer.init(mean), torch.zeros((), dtype=torch.int64))

    def _members(self, state, key, ids):
        return state.mean + self.sigma(int(state.generation)) * self._z(key, ids)

    def tell(self, state, key, fitness) -> OpenESState:
        fitness = self._check_fitness(fitness)
        sigma = self.sigma(int(state.generation))
        w = self._scores(fitness, self.shaping)
        g = self._z_weighted_sum(key, w) / (self.population_size * sigma)
        if self.weight_decay:
            g = g - self.weight_decay * state.mean
        updates, opt_state = self.optimizer.update(g, state.opt_state, state.mean)
        return OpenESState(state.mean + updates, opt_state, state.generation + 1)
