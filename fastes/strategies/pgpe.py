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
from ..tree import HOST_MAX, as_dtype, from_host, host_view, next_count, on_host
from .base import Strategy, _rows_weighted_sum, diagonal_form


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


def _pair_sums64(rows, f):
    """Σ_j (f⁺−f⁻)/2·z_j and Σ_j ((f⁺+f⁻)/2 − b)·(z_j² − 1), b = Σf / P, over noise rows
    (..., n, D) and shaped fitness (..., P) (tensors or host arrays, leading run dims allowed),
    accumulated in float64 and rounded once to float32: within (n + P + 6)·2⁻⁵³·Σ_j M_j·|x_j|
    of the true sums before that rounding (M_j = |f⁺_j| + |f⁻_j| + Σ|f|/P, x_j = z_j or
    z_j² + 1; derived and tested), where float32 accumulation is ~n·2⁻²⁴ of it away. The
    products are (1, n) @ (n, D) matmuls: numpy runs a stack of them as the same BLAS call per
    run (R runs of :class:`BatchedRuns` get the bits of each run alone, tested)."""
    if isinstance(rows, np.ndarray):
        z, g = rows.astype(np.float64), f.astype(np.float64)
    else:
        z, g = rows.double(), f.double()
    fold = (g[..., 0::2] - g[..., 1::2]) / 2
    avg = (g[..., 0::2] + g[..., 1::2]) / 2 - g.sum(-1, keepdims=True) / g.shape[-1]
    z_sum, zsq_sum = fold[..., None, :] @ z, avg[..., None, :] @ (z * z - 1)
    if isinstance(rows, np.ndarray):
        return z_sum[..., 0, :].astype(np.float32), zsq_sum[..., 0, :].astype(np.float32)
    return z_sum[..., 0, :].float(), zsq_sum[..., 0, :].float()


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
        return self._apply(state, *self._steps(state.sigma, f, key=key)), f

    def _check_runs(self) -> None:
        hint = " (pgpe's default, ClipUp, normalises over the whole tree: pass optimizer="
        self._require_elementwise(self.optimizer, hint + "fastes.optim.adam(...))")

    def _tell_runs(self, state, z, fitness):
        """R runs' tell from their noise z (R, λ, D) (:class:`BatchedRuns`): each run's σ step
        and gradient as alone, one optimizer update over the run dim (elementwise ones only)."""
        f, rows = self._runs_scores(fitness, "centered_ranks"), z[:, 0::2]
        if rows.shape[1] * self.dim <= HOST_MAX:  # the float64 sums of each run alone
            hosts = [host_view(x) for x in (state.sigma, rows, f)]
            if all(isinstance(h, np.ndarray) for h in hosts):  # one stack of numpy matmuls
                return self._apply(state, *map(from_host, self._kept_rows_step(*hosts)))
        steps = [
            self._steps(s, fr, rows=zr) for s, zr, fr in zip(state.sigma, rows, f, strict=True)
        ]
        return self._apply(state, *(torch.stack(x) for x in zip(*steps, strict=True)))

    def _steps(self, sigma, f, *, key=None, rows=None):
        """One run's gradient for the mean and new σ (D,) from its shaped fitness f (P,) and
        noise rows (n, D) (``rows``, or those of ``key``). Small problems (n·D ≤ HOST_MAX):
        the sums in float64 (:func:`_pair_sums64`), all in numpy on the host where it can;
        larger: float32 products (BLAS over kept rows, or the noise source's regenerating
        ones), as a GPU or a large D needs them."""
        n = len(f) // 2
        if n * self.dim <= HOST_MAX:
            rows = rows if rows is not None else self._noise_rows(key, self._ids(0, n))
            return on_host(self._kept_rows_step, sigma, rows, f)
        fold, avg = on_host(_pair_weights, f, f.sum())  # on the host where f is small
        if rows is None:
            z_sum = self._z_weighted_sum(key, fold, per_row=True)
            zsq_sum = self._z_sq_weighted_sum(key, avg, per_row=True)
        else:
            z_sum = _rows_weighted_sum(rows, fold)
            zsq_sum = _rows_weighted_sum(rows.square(), as_dtype(avg, torch.float32))
        # Σ avg_j in the z² sums' float32 (a 0-d float64 would promote them)
        zsq_sum = zsq_sum - as_dtype(avg.sum(), zsq_sum.dtype)
        return on_host(self._sigma_step, sigma, z_sum, zsq_sum)

    def _kept_rows_step(self, s, rows, f):
        """:meth:`_sigma_step` from the float64 sums of rows (..., n, D) and f (..., P)."""
        return self._sigma_step(s, *_pair_sums64(rows, f))

    def _sigma_step(self, s, z_sum, zsq_sum):
        """(∇_θ, new σ) from Σ (f⁺−f⁻)/2·z_j and Σ avg_j (z_j² − 1): host arrays or tensors."""
        n, lr, c = self.population_size // 2, self.stdev_lr, self.max_change
        # (ε² − σ²)/σ = σ(z² − 1) with ε = σz.
        sigma = s + lr * (s * zsq_sum / n)
        xp = np if isinstance(s, np.ndarray) else torch
        return s * z_sum / n, xp.minimum(xp.maximum(sigma, s * (1 - c)), s * (1 + c))

    def _apply(self, state, grad_mean, sigma):
        """The new state: the optimizer's step of the mean (leading run dims allowed)."""
        updates, opt_state = self.optimizer.update(grad_mean, state.opt_state, state.mean)
        return PGPEState(state.mean + updates, sigma, opt_state, next_count(state.generation))
