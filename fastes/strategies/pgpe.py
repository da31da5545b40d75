"""PGPE with ClipUp: symmetric sampling and adaptive per-parameter σ.

Sehnke et al. 2010, "Parameter-exploring policy gradients" (https://doi.org/10.1016/j.neunet.2009.12.004);
ClipUp, Toklu et al. 2020 (https://arxiv.org/abs/2008.02387), the mean's optimizer by default.
For pairs θ ± ε_j, ε_j = σ ⊙ z_j, with shaped fitness f⁺_j, f⁻_j (centered ranks) and b their mean:

    ∇_θ  = 1/n Σ_j (f⁺_j − f⁻_j)/2 · ε_j
    ∇_σ  = 1/n Σ_j ((f⁺_j + f⁻_j)/2 − b) · (ε_j² − σ²)/σ
    σ    ← clip(σ + η_σ·∇_σ, (1 − c)·σ, (1 + c)·σ)        c = stdev_max_change (0.2)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from .. import optim
from .._validate import real
from ..tree import as_dtype, on_host
from .base import Strategy, _runs_weighted_sums, diagonal_form


def _pair_weights(f, f_sum):
    """Per antithetic pair (tensors or host arrays): the fold of weights f/2 in float32
    (halving is exact), (f⁺ − f⁻)/2, which gives Σ_j (f⁺−f⁻)/2 z_j, and
    (f⁺ + f⁻)/2 − b in f's dtype, the pair's weight of its z², with the baseline b = Σf / P
    (the bits of torch's mean on the CPU, its sum divided by P, for one dispatch fewer)."""
    if isinstance(f, np.ndarray):
        half = f.astype(np.float32, copy=False) / 2
    else:
        half = as_dtype(f, torch.float32) / 2
    return half[0::2] - half[1::2], (f[0::2] + f[1::2]) / 2 - f_sum / len(f)


class PGPEState(NamedTuple):
    mean: torch.Tensor  # (D,) in the params' flat dtype
    sigma: torch.Tensor  # (D,)
    opt_state: Any
    generation: torch.Tensor


class PGPE(Strategy):
    name = "pgpe"
    antithetic = True

    def __init__(
        self,
        params,
        population_size: int | None = None,
        *,
        sigma: float = 0.1,
        center_learning_rate=0.15,
        stdev_learning_rate: float = 0.1,
        stdev_max_change: float = 0.2,
        optimizer: optim.GradientTransformation | None = None,
        **kwargs,
    ):
        super().__init__(params, population_size, **kwargs)
        self.sigma0 = real(sigma, "sigma", positive=True)
        self.stdev_lr = real(stdev_learning_rate, "stdev_learning_rate")
        self.max_change = real(stdev_max_change, "stdev_max_change")
        if self.max_change >= 1:
            raise ValueError(f"stdev_max_change must be in [0, 1); got {self.max_change}")
        self.optimizer = optimizer if optimizer is not None else optim.clipup(center_learning_rate)

    default_population = staticmethod(Strategy.paired_population)

    def init(self, params, key=None) -> PGPEState:
        mean = self._flat_params(params)
        sigma = torch.full_like(mean, self.sigma0)
        return PGPEState(mean, sigma, self.optimizer.init(mean), self._counter())

    _affine = staticmethod(diagonal_form)

    def _tell(self, state, key, fitness):
        f = self._scores(fitness)  # centered ranks, (P,)
        fold, avg = on_host(_pair_weights, f, f.sum())  # on the host where f is small
        z_sum = self._z_weighted_sum(key, fold, per_row=True)
        zsq_sum = self._z_sq_weighted_sum(key, avg, per_row=True)
        return self._update(state, z_sum, zsq_sum, avg.sum()), f

    def _check_runs(self) -> None:
        hint = " (pgpe's default, ClipUp, normalises over the whole tree: pass optimizer="
        self._require_elementwise(self.optimizer, hint + "fastes.optim.adam(...))")

    def _tell_runs(self, state, z, fitness):
        """R runs' tell from their noise z (R, λ, D) (:class:`BatchedRuns`): each run's sums
        as alone, one update over the run dim (elementwise optimizers only)."""
        f = self._runs_scores(fitness, "centered_ranks")
        rows, half = z[:, 0::2], (f / 2).to(torch.float32)
        z_sum = _runs_weighted_sums(rows, half[:, 0::2] - half[:, 1::2])
        f_sums = torch.stack([fr.sum() for fr in f])[:, None]  # each run's Σf as alone
        avg = (f[:, 0::2] + f[:, 1::2]) / 2 - f_sums / f.shape[1]
        zsq_sum = _runs_weighted_sums(rows.square(), avg.to(torch.float32))
        return self._update(state, z_sum, zsq_sum, torch.stack([a.sum() for a in avg])[:, None])

    def _update(self, state, z_sum, zsq_sum, avg_sum):
        """The step from Σ (f⁺−f⁻)/2·z_j, Σ w_j z_j² and Σ avg_j (leading run dims allowed)."""
        n, lr, c = self.population_size // 2, self.stdev_lr, self.max_change

        def steps(s, z_sum, zsq_sum, avg_sum):  # D numbers each: on the host where small
            # (ε² − σ²)/σ = σ(z² − 1) with ε = σz.
            sigma = s + lr * (s * (zsq_sum - avg_sum) / n)
            xp = np if isinstance(s, np.ndarray) else torch
            return s * z_sum / n, xp.minimum(xp.maximum(sigma, s * (1 - c)), s * (1 + c))

        # Σ avg_j in the z² sums' float32 (a 0-d float64 would promote them on the host; a
        # float32 tensor minus a 0-d tensor casts it so, and R runs' (R, 1) sums alike)
        avg_sum = as_dtype(avg_sum, zsq_sum.dtype)
        grad_mean, sigma = on_host(steps, state.sigma, z_sum, zsq_sum, avg_sum)
        updates, opt_state = self.optimizer.update(grad_mean, state.opt_state, state.mean)
        return PGPEState(state.mean + updates, sigma, opt_state, state.generation + 1)
