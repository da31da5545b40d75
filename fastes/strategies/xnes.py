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

from .snes import NESBase

MAX_DIM = 1000


class XNESState(NamedTuple):
    mean: torch.Tensor  # (D,) float64
    sigma: torch.Tensor  # () float64
    B: torch.Tensor  # (D, D) float64, det 1
    generation: torch.Tensor


class XNES(NESBase):
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

    def _members(self, state, key, ids):
        z = self._z(key, ids).double()
        return state.mean + state.sigma * z @ state.B.T

    def _tell(self, state, key, fitness):
        u = self._scores(fitness, "nes").double()  # (P,)
        z = self._z(key, self._ids(0, self.population_size)).double()  # (P, D)
        eye = torch.eye(self.dim, dtype=torch.float64, device=z.device)
        g_delta = u @ z
        g_m = (z * u[:, None]).T @ z - u.sum() * eye
        g_sigma = torch.trace(g_m) / self.dim
        g_b = g_m - g_sigma * eye
        mean = state.mean + self.eta_mu(int(state.generation)) * state.sigma * (state.B @ g_delta)
        sigma = state.sigma * torch.exp(0.5 * self.eta_sigma * g_sigma)
        B = state.B @ torch.linalg.matrix_exp(0.5 * self.eta_sigma * g_b)
        return XNESState(mean, sigma, B, state.generation + 1), u
