"""The ES family as small functional modules, picked by name from one registry.

    strategy = fastes.strategies.make("cma_es", params, sigma=0.5)
    state = strategy.init(params)
    state, stats = strategy.step(state, fitness_fn, key)

| name | paper | for |
|---|---|---|
| ``openai_es`` | Salimans et al. 2017 | large D, any fastes.optim optimizer |
| ``pgpe`` | Sehnke et al. 2010 + ClipUp (Toklu et al. 2020) | large D, adaptive per-parameter σ |
| ``snes`` | Schaul et al. 2011 | large D, adaptive per-parameter σ |
| ``xnes`` | Glasmachers et al. 2010 | small D (full covariance) |
| ``cma_es`` | Hansen 2016 (active) | small / medium D |
| ``sep_cma_es`` | Ros & Hansen 2008 | large D (diagonal) |
| ``ipop_cma_es`` | Auger & Hansen 2005 | multimodal, restarts |
| ``cem`` | Rubinstein 1999; Szita & Lőrincz 2006 | simple baselines |
| ``ars`` | Mania et al. 2018 | linear policies, observation normalisation |
| ``eggroll`` | Sarkar et al. 2025 | large networks: low-rank noise, population forward |
"""

from __future__ import annotations

from typing import Any

from .ars import ARS
from .base import Strategy
from .batched import BatchedRuns
from .cem import CEM
from .cma_es import CMAES, SepCMAES
from .eggroll import EGGROLL
from .ipop import IPOP
from .open_es import OpenES
from .pgpe import PGPE
from .snes import SNES
from .xnes import XNES

REGISTRY: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (OpenES, PGPE, SNES, XNES, CMAES, SepCMAES, IPOP, CEM, ARS, EGGROLL)
}

# Settings that solve the classic test functions (sphere, Rosenbrock, Rastrigin; coordinates of
# order 1-3) in the convergence tests and benchmarks/strategies.py: a starting point, not a law.
TEST_FUNCTION_SETTINGS: dict[str, dict[str, Any]] = {
    "openai_es": dict(sigma=0.02, learning_rate=0.02, population_size=64),
    "pgpe": dict(sigma=0.3, center_learning_rate=0.03, population_size=64),
    "snes": dict(sigma=1.0),
    "xnes": dict(sigma=1.0),
    "cma_es": dict(sigma=1.0),
    "sep_cma_es": dict(sigma=1.0),
    "ipop_cma_es": dict(sigma=2.0),
    "cem": dict(sigma=1.0, population_size=100, noise_floor=0.01),
    "ars": dict(sigma=0.02, learning_rate=0.02, population_size=64),
    "eggroll": dict(sigma=0.02, learning_rate=0.02, population_size=64),
}

__all__ = [
    "REGISTRY",
    "BatchedRuns",
    "Strategy",
    "TEST_FUNCTION_SETTINGS",
    "make",
    *(c.__name__ for c in REGISTRY.values()),
]


def make(name: str, params: Any, **kwargs: Any) -> Strategy:
    """The strategy registered as ``name``, built for the structure of ``params``."""
    if name not in REGISTRY:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(REGISTRY)}")
    return REGISTRY[name](params, **kwargs)
