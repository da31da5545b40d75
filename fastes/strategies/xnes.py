"""xNES: exponential natural evolution strategies with a full covariance, for small D.

Glasmachers, Schaul, Sun, Wierstra & Schmidhuber 2010, https://arxiv.org/abs/1106.1998.
x_i = μ + σ B z_i (det B = 1), NES utilities u (best first, Σu = 0):

    G_δ = Σ u_i z_i,  G_M = Σ u_i (z_i z_iᵀ − I),  G_σ = tr(G_M)/D,  G_B = G_M − G_σ I
    μ ← μ + η_μ σ B G_δ,   σ ← σ exp(η_σ/2 · G_σ),   B ← B expm(η_B/2 · G_B)

Defaults: λ = 4 + ⌊3 ln D⌋, η_μ = 1, η_σ = η_B = 3(3 + ln D) / (5 D √D). O(D³) per generation:
use SNES or sep-CMA-ES beyond a few hundred dimensions.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..tree import next_count
from .base import OpsSampled
from .cma_es import _times_t
from .snes import NESBase

MAX_DIM = 1000


class XNESState(NamedTuple):
    mean: torch.Tensor  # (D,) float64
    sigma: torch.Tensor  # () float64
    B: torch.Tensor  # (D, D) float64, det 1
    generation: torch.Tensor


class XNES(OpsSampled, NESBase):
    name = "xnes"

    def __init__(self, params, population_size: int | None = None, **kwargs):
        super().__init__(params, population_size, **kwargs)
        if self.dim > MAX_DIM:
            raise ValueError(
                f"xnes keeps a D x D matrix and is for D <= {MAX_DIM}; got D={self.dim}. "
                "Use 'snes' or 'sep_cma_es'"
            )

    @staticmethod
    def default_sigma_rate(dim: int) -> float:
        return 3 * (3 + math.log(dim)) / (5 * dim * math.sqrt(dim))

    def init(self, params, key=None) -> XNESState:
        mean = self._flat_params(params).double()
        eye = torch.eye(self.dim, dtype=torch.float64, device=mean.device)
        sigma = torch.tensor(self.sigma0, dtype=torch.float64, device=mean.device)
        return XNESState(mean, sigma, eye, self._counter())

    def _sample(self, ops, s, z, runs: bool):
        """x = μ + σ·B z for float64 z (..., m, D) and the state's fields ``s`` in the
        namespace ``ops``: ``(x, None)``."""
        sz = s.sigma[..., None, None] * z
        return s.mean[..., None, :] + ops.each(_times_t, sz, s.B, runs=runs), None

    def _tell(self, state, key, fitness):
        u = self._scores(fitness, "nes").double()  # (P,)
        z = self._z(key, self._ids(0, self.population_size))  # (P, D)
        return self._update(state, z, u), u

    def _host_tell(self, state, s, z, aux, fitness):
        """:meth:`_tell` from the generation kept on the host (:meth:`Strategy._step_on_host`):
        its float64 z, no noise drawn again."""
        u = self._scores(fitness, "nes").double()
        return self._update(state, z, u, host=s), u

    def _tell_runs(self, state, z, fitness):
        """R runs' tell from their noise z (R, λ, D) (:class:`BatchedRuns`)."""
        return self._update(state, z, self._runs_scores(fitness, "nes").double())

    def _update(self, state, z, u, host=None):
        """The xNES update from z (..., P, D) and utilities u (..., P), over an optional leading
        run dim, written once against the namespace of :mod:`fastes.strategies._ops`.
        ``host``: the state's numpy fields, with z float64 numpy (a generation kept on the
        host)."""
        return self._in_namespace(self._update_in, state, z, u, host=host)

    def _update_in(self, ops, state, z, u, host):
        """:meth:`_update`'s body in the namespace ``ops``."""
        runs = z.ndim > 2
        mean, sigma, B, _ = ops.fields(state) if host is None else host
        z, u = ops.f64(ops.arr(z)), ops.arr(u)
        eye = ops.eye(self.dim, z)
        g_delta = ops.each(ops.vecmat, u, z, runs=runs)  # Σ u_i z_i
        # G_M = Σ u_i (z_i z_iᵀ − I) = Zᵀ diag(u) Z − (Σ u) I
        g_m = ops.each(lambda z_, u_: _weighted_outer(ops, z_, u_, eye), z, u, runs=runs)
        g_sigma = ops.each(ops.trace, g_m, runs=runs) / self.dim
        step = self.eta_mu(int(state.generation)) * sigma  # the generation: shared
        mean = mean + step[..., None] * ops.each(ops.mv, B, g_delta, runs=runs)
        sigma = sigma * ops.exp(0.5 * self.eta_sigma * g_sigma)
        # expm(η_σ/2 · G_B) for the symmetric G_B = G_M − G_σ I as V exp(Λ) Vᵀ from its
        # eigendecomposition: 4x cheaper than torch's Padé matrix_exp at D = 10 (12 vs 52 µs)
        # and more accurate at D = 2 (tested).
        g_b = (0.5 * self.eta_sigma) * (g_m - g_sigma[..., None, None] * eye)
        evals, V = ops.each(ops.eigh, g_b, runs=runs)
        B = ops.each(lambda b, v, e: _times_expm(ops, b, v, e), B, V, evals, runs=runs)
        return XNESState(*map(ops.tensor, (mean, sigma, B)), next_count(state.generation))


def _weighted_outer(ops, z, u, eye):
    """Zᵀ diag(u) Z − (Σ u) I for z (..., P, D), u (..., P) in the namespace ``ops``."""
    return (ops.mT(z) * u[..., None, :]) @ z - u.sum(-1)[..., None, None] * eye


def _times_expm(ops, B, V, evals):
    """B · V diag(exp(evals)) Vᵀ in the namespace ``ops``."""
    return B @ ((V * ops.exp(evals)[..., None, :]) @ ops.mT(V))
