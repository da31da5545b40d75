"""OpenAI-ES (Salimans et al. 2017, https://arxiv.org/abs/1703.03864) as a strategy.

Antithetic members θ ± σz, shaped fitness w (centered ranks by default), the estimate
ĝ = 1/(Pσ) Σ_i w_i z_i — the same estimator as :func:`fastes.es_step`, which is this strategy
with ``optimizer=fastes.optim.sgd(learning_rate)`` — and any ``fastes.optim`` optimizer for the
step (Adam by default, as in the paper). ``weight_decay`` is decoupled (AdamW's form): the
optimizer's update is followed by θ ← θ − learning_rate·weight_decay·θ, whatever the optimizer.
``sigma`` and the learning rate may be schedules. ``exchange`` picks what processes exchange
under torch.distributed (see :func:`fastes.estimate_grad`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import optim
from .._validate import check_callable, check_exchange, check_fitness_args, real
from ..es import _flat_estimate
from ..prng import check_key
from ..schedules import resolve
from ..shaping import METHODS
from ..tree import next_count
from .base import Strategy, _runs_weighted_sums, scheduled_sigma_form


class OpenESState(NamedTuple):
    mean: torch.Tensor  # (D,) in the params' flat dtype
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
        exchange: str = "fitness",
        **kwargs,
    ):
        super().__init__(params, population_size, **kwargs)
        self.exchange = check_exchange(exchange)
        self.sigma = resolve(sigma, "sigma")
        real(self.sigma(0), "sigma", positive=True)
        self.learning_rate = resolve(learning_rate, "learning_rate")
        if shaping not in METHODS:
            raise ValueError(f"shaping must be one of {METHODS}; got {shaping!r}")
        self.shaping = shaping
        self.weight_decay = real(weight_decay, "weight_decay")
        if optimizer is None:
            optimizer = optim.adam(self.learning_rate)
        elif not isinstance(optimizer, optim.GradientTransformation):
            raise TypeError(
                "optimizer must be a fastes.optim transformation (e.g. fastes.optim.adam(0.01));"
                f" got {type(optimizer).__name__}"
            )
        if self.weight_decay:
            decay = optim.add_decayed_weights(self.weight_decay, self.learning_rate)
            optimizer = optim.chain(optimizer, decay)
        self.optimizer = optimizer

    default_population = staticmethod(Strategy.paired_population)

    def init(self, params, key=None) -> OpenESState:
        mean = self._flat_params(params)
        return OpenESState(mean, self.optimizer.init(mean), self._counter())

    _affine = scheduled_sigma_form

    def _update(self, state, g, n: int | None = None) -> OpenESState:
        """The step from ĝ (``n``: the generation, where the caller has read it)."""
        updates, opt_state = self.optimizer.update(g, state.opt_state, state.mean)
        return OpenESState(state.mean + updates, opt_state, next_count(state.generation, n))

    def _tell(self, state, key, fitness):
        n = int(state.generation)
        w = self._scores(fitness, self.shaping)
        g = self._z_weighted_sum(key, w).to(state.mean.dtype) / (
            self.population_size * self.sigma(n)
        )
        return self._update(state, g, n), w

    def _check_runs(self) -> None:
        self._require_elementwise(self.optimizer)

    def _tell_runs(self, state, z, fitness):
        """R runs' tell from their noise z (R, λ, D) (:class:`BatchedRuns`): each run's
        gradient as alone, one optimizer step over the run dim (elementwise optimizers only)."""
        sigma = self.sigma(int(state.generation))
        w = self._runs_scores(fitness, self.shaping)  # folded in its dtype, then float32: as es
        g = _runs_weighted_sums(z[:, 0::2], (w[:, 0::2] - w[:, 1::2]).to(torch.float32))
        return self._update(state, g.to(state.mean.dtype) / (self.population_size * sigma))

    def step(self, state, fitness_fn, key, fitness_args=()):
        """One generation through :func:`fastes.es_step`'s estimator (chunked evaluation, noise
        rows kept for the gradient while they fit its memory budget)."""
        check_key(key)
        check_callable(fitness_fn, "fitness_fn")
        n = int(state.generation)
        g, stats = _flat_estimate(
            state.mean, self.raveler, fitness_fn, key,
            population_size=self.population_size, sigma=self.sigma(n),
            antithetic=True, shaping=self.shaping, objective_weights=self.objective_weights,
            minimize=self.minimize, mode=self.mode, chunk_size=self.chunk_size,
            noise=self.noise, fitness_args=check_fitness_args(fitness_args),
            exchange=self.exchange,
        )  # fmt: skip
        return self._update(state, g, n), stats


__all__ = ["OpenES", "OpenESState"]
