"""CMA-ES with active (negative-weight) covariance update, and sep-CMA-ES (diagonal).

Hansen, "The CMA Evolution Strategy: A Tutorial", 2016, https://arxiv.org/abs/1604.00772 —
the default parameters of its Table 1, including negative recombination weights for C.
sep-CMA-ES: Ros & Hansen 2008, "A simple modification in CMA-ES achieving linear time and space
complexity", https://doi.org/10.1007/978-3-540-87700-4_30 — C diagonal, c_1 and c_μ scaled by
(D + 2)/3, positive weights only.

Samples y_k = B D z_k (z_k regenerated from the key), x_k = m + σ y_k. Internals are float64.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .._validate import real
from ..tree import next_count
from ._ops import TorchOps
from .base import OpsSampled, Strategy


class CMAParams(NamedTuple):
    weights: torch.Tensor  # (λ,) recombination weights, positive then negative
    mu: int
    mu_eff: float
    c_sigma: float
    d_sigma: float
    c_c: float
    c_1: float
    c_mu: float
    chi_n: float  # E‖N(0, I)‖
    weights_sum: float  # Σ weights (≤ 1: the negative weights' share)
    eigen_gap: int  # generations between eigendecompositions of C


def cma_parameters(n: int, lam: int, separable: bool = False) -> CMAParams:
    """Default strategy parameters for dimension n and population λ (tutorial Table 1)."""
    mu = lam // 2
    w = torch.tensor(
        [math.log((lam + 1) / 2) - math.log(i) for i in range(1, lam + 1)], dtype=torch.float64
    )
    pos, neg = w[:mu], w[mu:]
    mu_eff = float(pos.sum() ** 2 / (pos**2).sum())
    mu_eff_neg = float(neg.sum() ** 2 / (neg**2).sum()) if neg.numel() else 0.0
    c_c = (4 + mu_eff / n) / (n + 4 + 2 * mu_eff / n)
    c_sigma = (mu_eff + 2) / (n + mu_eff + 5)
    c_1 = 2 / ((n + 1.3) ** 2 + mu_eff)
    c_mu = min(1 - c_1, 2 * (0.25 + mu_eff + 1 / mu_eff - 2) / ((n + 2) ** 2 + mu_eff))
    if separable:
        c_1, c_mu = c_1 * (n + 2) / 3, min(1 - c_1 * (n + 2) / 3, c_mu * (n + 2) / 3)
    d_sigma = 1 + 2 * max(0.0, math.sqrt((mu_eff - 1) / (n + 1)) - 1) + c_sigma
    weights = torch.zeros(lam, dtype=torch.float64)
    weights[:mu] = pos / pos.sum()
    if not separable and neg.numel() and c_mu > 0:
        alpha_mu = 1 + c_1 / c_mu
        alpha_mu_eff = 1 + 2 * mu_eff_neg / (mu_eff + 2)
        alpha_posdef = (1 - c_1 - c_mu) / (n * c_mu)
        weights[mu:] = neg * min(alpha_mu, alpha_mu_eff, alpha_posdef) / neg.abs().sum()
    chi_n = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n))
    # Lazy eigendecomposition: C changes by about (c_1 + c_μ) per generation, so B and D may lag
    # it a few generations. The rule is Hansen's reference implementation's (pycma's
    # cma/more_algorithms/purecma.py): decompose when more than lazy_gap_evals = λ/(2 n (c_1 +
    # c_μ)) evaluations, i.e. more than gap = 1/(2 n (c_1 + c_μ)) generations, passed since the
    # last decomposition — every ⌊gap⌋ + 1 generations: every 2nd at D = 10 (λ = 10, gap 1.29),
    # every generation at D = 10 with λ = 16 (gap 0.84), every 6th at D = 100 (λ = 17, gap
    # 5.71), where one 100x100 eigh is a third of a generation. The tutorial's Section B.2 and
    # pycma's CMAEvolutionStrategy (updatecovwait) wait 1/(10 n (c_1 + c_μ)), five times shorter.
    eigen_gap = 1 if separable else math.floor(0.5 / (n * (c_1 + c_mu))) + 1
    return CMAParams(weights, mu, mu_eff, c_sigma, d_sigma, c_c, c_1, c_mu, chi_n,
                     float(weights.sum()), eigen_gap)  # fmt: skip


class CMAState(NamedTuple):
    mean: torch.Tensor  # (D,) float64
    sigma: torch.Tensor  # () float64
    C: torch.Tensor  # (D, D) covariance, or (D,) diagonal for sep-CMA-ES
    B: torch.Tensor  # (D, D) eigenvectors of C (unused, (0,) for sep-CMA-ES)
    D: torch.Tensor  # (D,) sqrt of C's eigenvalues
    p_sigma: torch.Tensor  # (D,)
    p_c: torch.Tensor  # (D,)
    generation: torch.Tensor


class CMAES(OpsSampled, Strategy):
    name = "cma_es"

    def __init__(self, params, population_size: int | None = None, *, sigma: float = 1.0, **kwargs):
        super().__init__(params, population_size, **kwargs)
        if not self.separable and self.dim > 2000:
            raise ValueError(
                f"cma_es keeps a D x D covariance and is for D <= 2000; got D={self.dim}. "
                "Use 'sep_cma_es'"
            )
        self.sigma0 = real(sigma, "sigma", positive=True)
        self.p = cma_parameters(self.dim, self.population_size, self.separable)
        self._weights = self.p.weights.to(self.raveler.device)
        # Constants of the update, computed once (a small-D generation is mostly fixed cost).
        p = self.p
        self._ps_scale = math.sqrt(p.c_sigma * (2 - p.c_sigma) * p.mu_eff)
        self._pc_scale = math.sqrt(p.c_c * (2 - p.c_c) * p.mu_eff)
        self._h_bound = (1.4 + 2 / (self.dim + 1)) * p.chi_n
        self._wneg_n = self._weights[p.mu :] * self.dim  # negative weights times D (eq. 46)

    def init(self, params, key=None) -> CMAState:
        mean = self._flat_params(params).double()
        n, dev = self.dim, mean.device
        zeros = torch.zeros(n, dtype=torch.float64, device=dev)
        if self.separable:
            C, B = torch.ones(n, dtype=torch.float64, device=dev), zeros.new_zeros(0)
        else:
            C = B = torch.eye(n, dtype=torch.float64, device=dev)
        sigma = torch.tensor(self.sigma0, dtype=torch.float64, device=dev)
        D = torch.ones_like(zeros)
        return CMAState(mean, sigma, C, B, D, zeros, zeros.clone(), self._counter())

    def _y(self, ops, B, D, z, runs: bool):
        """y = B D z (row-wise) for z (..., m, D) float64 (a leading run dim with ``runs``), in
        the namespace ``ops`` (:mod:`fastes.strategies._ops`)."""
        zd = z * D[..., None, :]
        return zd if self.separable else ops.each(_times_t, zd, B, runs=runs)

    def _sample(self, ops, s, z, runs: bool):
        """x = m + σ·y, y = B D z for float64 z (..., m, D) and the state's fields ``s`` in the
        namespace ``ops``: ``(x, y)`` (the update reads y again, in rank order)."""
        y = self._y(ops, s.B, s.D, z, runs)
        return s.mean[..., None, :] + s.sigma[..., None, None] * y, y

    def _tell(self, state, key, fitness):
        order = self._order(fitness)  # best first
        return self._update(state, self._z(key, order), order)

    def _host_tell(self, state, s, z, y, fitness):
        """:meth:`_tell` from the generation kept on the host (:meth:`Strategy._step_on_host`):
        its z and y rows in rank order, no noise drawn or product taken again."""
        o = self._order(fitness).numpy()  # best first
        return self._update(state, z[o], o, host=(s, y[o]))

    def _tell_runs(self, state, z, fitness):
        """R runs' tell from their noise z (R, λ, D) (:class:`BatchedRuns`): one update over
        the run dim (the same operations on each run's slice: the same bits, tested)."""
        order = self._order_runs(fitness)  # (R, λ) best first, per run
        z = z.gather(1, order[..., None].expand(-1, -1, self.dim))
        return self._update(state, z, order)[0]

    def _update(self, state, z, order, host=None):
        """The CMA update from z (..., λ, D) sorted best first (``order`` (..., λ) maps sorted
        position to member). Written once over optional leading run dims (one run here, R runs
        in :class:`fastes.strategies.BatchedRuns`) against the namespace of
        :mod:`fastes.strategies._ops` (numpy for small D on the CPU, torch elsewhere).
        ``host``: the state's numpy fields and y in rank order, with z float64 and ``order``
        numpy (one run's generation kept on the host)."""
        return self._in_namespace(self._update_in, state, z, order, host=host)

    def _update_in(self, ops, state, z, order, host):
        """:meth:`_update`'s body in the namespace ``ops``."""
        p, runs = self.p, z.ndim > 2
        if host is None:
            s, z = ops.fields(state), ops.f64(ops.arr(z))
            y = self._y(ops, s.B, s.D, z, runs)
        else:
            s, y = host
        w, wneg_n = self._constants(ops)
        wpos = w[: p.mu]
        y_w = ops.each(lambda y_: wpos @ y_[..., : p.mu, :], y, runs=runs)
        mean = ops.addcmul(s.mean, s.sigma[..., None], y_w)
        # C^{-1/2} y_w = B z_w: the z's are already in the C^{-1/2} frame.
        z_w = ops.each(lambda z_: wpos @ z_[..., : p.mu, :], z, runs=runs)
        cz_w = z_w if self.separable else ops.each(ops.mv, s.B, z_w, runs=runs)
        p_sigma = ops.add(s.p_sigma * (1 - p.c_sigma), cz_w, self._ps_scale)
        ps_norm = ops.norm(p_sigma)
        k_sigma = p.c_sigma / p.d_sigma
        sigma = s.sigma * ops.exp(ps_norm * (k_sigma / p.chi_n) - k_sigma)
        g = int(state.generation) + 1  # shared by all runs of a batch
        h_sigma = ops.f64(ps_norm < self._h_bound * math.sqrt(1 - (1 - p.c_sigma) ** (2 * g)))
        p_c = ops.addcmul(s.p_c * (1 - p.c_c), (h_sigma * self._pc_scale)[..., None], y_w)
        # decay = 1 − c_1 − c_μ Σw + c_1 δ(h_σ), δ(h_σ) = (1 − h_σ) c_c (2 − c_c)
        k_h = p.c_1 * p.c_c * (2 - p.c_c)
        decay = h_sigma * -k_h + (1 - p.c_1 - p.c_mu * p.weights_sum + k_h)
        # Negative weights (the last λ − μ) are rescaled by D / ‖C^{-1/2} y‖² = D / ‖z‖²
        # (tutorial eq. 46).
        w_neg = wneg_n / ops.clamp_min(ops.sumsq(z[..., p.mu :, :]), 1e-300)
        w_circ = ops.join(wpos, w_neg)
        if self.separable:
            rank_mu = ops.each(lambda y_, w_: (w_[..., None, :] @ y_**2)[..., 0, :], y, w_circ,
                               runs=runs)  # fmt: skip
            C = s.C * decay[..., None] + p.c_1 * p_c**2 + p.c_mu * rank_mu
            C = ops.clamp_min(C, 1e-300)
            B, D = s.B, ops.sqrt(C)
        else:
            # decay·C + c_1·p_c p_cᵀ + c_μ·Σ w°_i y_i y_iᵀ
            rank_mu = ops.each(
                lambda y_, w_: (ops.mT(y_) * w_[..., None, :]) @ y_, y, w_circ, runs=runs
            )
            C = s.C * decay[..., None, None]  # a fresh array: the rest adds into it
            C = ops.add_(ops.add_(C, p_c[..., :, None] * p_c[..., None, :], p.c_1), rank_mu, p.c_mu)
            if g % p.eigen_gap == 0:  # lazy: B and D lag C by < eigen_gap generations
                # eigh reads C's lower triangle; the rank-μ product's rounding may leave the
                # two triangles a few ulps apart, which this keeps from mattering.
                evals, B = ops.each(ops.eigh, C, runs=runs)
                D = ops.sqrt(ops.clamp_min(evals, 1e-300))
            else:
                B, D = s.B, s.D
        # Member i's recombination weight.
        weights = ops.scatter(order, w)
        arrays = (mean, sigma, C, B, D, p_sigma, p_c)
        return CMAState(*map(ops.tensor, arrays), next_count(state.generation)), weights

    def _constants(self, ops) -> tuple:
        """The recombination weights and the negative ones times D, in ``ops``' namespace
        (numpy views made once: the numpy namespace runs on the CPU only)."""
        if ops is TorchOps:
            return self._weights, self._wneg_n
        kept = self.__dict__.get("_host_constants")
        if kept is None:
            kept = self._host_constants = (self._weights.numpy(), self._wneg_n.numpy())
        return kept


def _times_t(a, b):
    """a bᵀ for one run's matrices (tensors or numpy arrays)."""
    return a @ b.swapaxes(-1, -2)


class SepCMAES(CMAES):
    name = "sep_cma_es"
    separable = True
