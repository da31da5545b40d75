"""Augmented Random Search (Mania, Guy & Recht 2018, https://arxiv.org/abs/1803.07055).

Antithetic directions δ_j; rewards r⁺_j = F(θ + νδ_j), r⁻_j = F(θ − νδ_j). The b directions with
the largest max(r⁺_j, r⁻_j) update the policy (V1-t when b < N, V1 when b = N):

    θ ← θ + α / (b·σ_R) · Σ_{top b} (r⁺_j − r⁻_j)·δ_j,     σ_R = std of those 2b rewards.

V2 adds observation normalisation: the state carries running mean / variance of the states the
policy saw (:meth:`ARS.observe` feeds them, merged as in :mod:`fastes.rl.normalization`) and
:meth:`ARS.normalize` applies them in the policy — the hook between this strategy and the user's
rollouts.
Rewards are used raw (no ranking); non-finite rewards follow fastes.shaping's "raw" policy.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch

from .. import normalization as nz
from .. import optim
from .._validate import positive_int
from ..schedules import resolve
from ..shaping import shape_fitness
from ..tree import from_host, next_count
from .base import Strategy, _runs_weighted_sums, scheduled_sigma_form


class ARSState(NamedTuple):
    mean: torch.Tensor  # (D,) policy parameters θ
    obs_count: torch.Tensor  # () float64, states seen (V2)
    obs_mean: torch.Tensor  # (obs_dim,) float64
    obs_m2: torch.Tensor  # (obs_dim,) float64, sum of squared deviations
    generation: torch.Tensor
    opt_state: Any = ()  # the optimizer's state, when one is given


class ARS(Strategy):
    name = "ars"
    antithetic = True

    def __init__(
        self,
        params,
        population_size: int | None = None,
        *,
        sigma=0.03,
        learning_rate=0.02,
        top_directions: int | None = None,
        obs_dim: int = 0,
        optimizer: optim.GradientTransformation | None = None,
        **kwargs,
    ):
        super().__init__(params, population_size, **kwargs)
        self.sigma = resolve(sigma, "sigma")
        self.learning_rate = resolve(learning_rate, "learning_rate")
        if self.sigma(0) <= 0:
            raise ValueError(f"sigma must be > 0; got {self.sigma(0)}")
        n_dirs = self.population_size // 2
        b = n_dirs if top_directions is None else top_directions
        positive_int(b, "top_directions")
        if b > n_dirs:
            raise ValueError(f"top_directions must be <= population_size / 2 = {n_dirs}; got {b}")
        self.top, self.obs_dim = b, int(obs_dim)
        if optimizer is not None and not isinstance(optimizer, optim.GradientTransformation):
            raise TypeError(
                "optimizer must be a fastes.optim transformation (e.g. "
                f"fastes.optim.torch_optimizer(torch.optim.Adam, lr=0.02)); got {optimizer!r}"
            )
        # None: ARS's own step, θ += α/(b·σ_R)·Σ(r⁺ − r⁻)δ. Otherwise the optimizer takes the
        # direction Σ(r⁺ − r⁻)δ/(b·σ_R) as its ascent gradient (learning_rate is then unused).
        self.optimizer = optimizer

    @staticmethod
    def default_population(dim: int) -> int:
        return 16

    def init(self, params, key=None) -> ARSState:
        mean = self._flat_params(params)
        z = torch.zeros(self.obs_dim, dtype=torch.float64, device=mean.device)
        count = torch.zeros((), dtype=torch.float64, device=mean.device)
        opt_state = () if self.optimizer is None else self.optimizer.init(mean)
        return ARSState(mean, count, z, z.clone(), self._counter(), opt_state)

    _affine = scheduled_sigma_form

    def _tell(self, state, key, fitness):
        lr = self._step_size(state)
        half = self._step_weights(fitness, lr)
        # Σ_top (r⁺ − r⁻) δ_j: each direction's weight is half − (−half), i.e. 2·half exactly
        dev = self.raveler.device
        direction = self._z_weighted_sum(key, from_host(half + half, dev), per_row=True)
        direction = direction.to(state.mean.dtype)
        # Each member's weight: its coefficient of z_i in the update, per unit learning rate.
        weights = from_host(_pairs(half / lr if lr else half), dev)
        return self._apply(state, direction), weights

    def _check_runs(self) -> None:
        if self.obs_dim:
            raise NotImplementedError(
                "BatchedRuns does not run ars with observation statistics (obs_dim > 0): they "
                "come from each run's rollouts; advance RL runs one by one"
            )
        self._require_elementwise(self.optimizer)

    def _tell_runs(self, state, z, fitness):
        """R runs' tell from their noise z (R, λ, D) (:class:`BatchedRuns`): each run's step
        weights and direction as alone, one step over the run dim."""
        lr = self._step_size(state)
        half = np.stack([self._step_weights(f, lr) for f in fitness])
        direction = _runs_weighted_sums(z[:, 0::2], from_host(half + half, z.device))
        return self._apply(state, direction.to(state.mean.dtype))

    def _step_size(self, state) -> float:
        return 1.0 if self.optimizer is not None else self.learning_rate(int(state.generation))

    def _step_weights(self, fitness, lr: float) -> np.ndarray:
        """Each direction's half-coefficient (P/2,) float32 in the step: lr/(b·σ_R)·
        (r⁺ − r⁻)/2 for the b best directions, 0 for the rest (member 2j takes +, 2j + 1 −).

        Worked out on the host in numpy: P numbers, which ARS reads back anyway (σ_R decides
        whether there is a step), in a dozen numpy calls instead of as many tensor dispatches.
        The elementwise arithmetic rounds as torch's (IEEE float32/float64, a Python scalar
        taken in the array's dtype); σ_R is :func:`_reward_std`. bfloat16 rewards (numpy has
        none) are taken in float32."""
        r, _ = shape_fitness(
            fitness, "raw", objective_weights=self.objective_weights, minimize=self.minimize
        )
        v = (r.float() if r.dtype == torch.bfloat16 else r).detach().cpu().numpy()
        r_plus, r_minus = v[0::2], v[1::2]
        # The b best directions by max(r⁺, r⁻), ties in index order (as a stable descending
        # sort). Finite: "raw" shaping clamps ±inf and fills NaN.
        top = (-np.maximum(r_plus, r_minus)).argsort(kind="stable")[: self.top]
        r_plus, r_minus = r_plus[top], r_minus[top]
        sigma_r = _reward_std(np.concatenate([r_plus, r_minus]))
        half = np.zeros(self.population_size // 2, dtype=np.float32)
        if sigma_r > 0:  # all selected rewards equal: no information, no step
            coef = lr / (self.top * sigma_r)
            half[top] = coef * (r_plus - r_minus).astype(np.float32) / 2
        return half

    def _apply(self, state, direction):
        """θ + direction (ARS's own step) or the optimizer's step on it (leading run dims
        allowed)."""
        opt_state = state.opt_state
        if self.optimizer is None:
            mean = state.mean + direction
        else:
            updates, opt_state = self.optimizer.update(direction, state.opt_state, state.mean)
            mean = state.mean + updates
        return state._replace(
            mean=mean, generation=next_count(state.generation), opt_state=opt_state
        )

    # -- V2: observation normalisation hook -------------------------------------------------
    def observe(self, state: ARSState, observations: torch.Tensor) -> ARSState:
        """Fold a batch of observed states (N, obs_dim) into the running mean / variance."""
        obs = torch.as_tensor(observations, dtype=torch.float64).reshape(-1, self.obs_dim)
        if obs.shape[0] == 0:
            return state
        norm = nz.merge(_norm(state), nz.moments(obs))
        return state._replace(obs_count=norm.count, obs_mean=norm.mean, obs_m2=norm.m2)

    def normalize(self, state: ARSState, observations: torch.Tensor) -> torch.Tensor:
        """(obs − mean) / std with the running statistics (identity before two observations:
        :func:`fastes.rl.normalization.mean_std` is (0, 1) then)."""
        mean, std = nz.mean_std(_norm(state))
        return (observations - mean.to(observations)) / std.to(observations)


def _reward_std(r: np.ndarray) -> float:
    """σ_R, the population standard deviation of the selected rewards, in float64 on the host
    (two passes: the mean, then the squared deviations from it)."""
    x = r.astype(np.float64)
    d = x - np.add.reduce(x) / x.size
    return math.sqrt(float(np.dot(d, d)) / x.size)


def _pairs(half: np.ndarray) -> np.ndarray:
    """Per-member weights (P,) from per-direction ones: member 2j +half[j], 2j + 1 −half[j]."""
    return np.stack([half, -half], 1).reshape(-1)


def _norm(state: ARSState) -> nz.RunningNorm:
    return nz.RunningNorm(state.obs_count, state.obs_mean, state.obs_m2)
