"""fastes: functional, vectorized Evolution Strategies on PyTorch.

The core is one pure step, ``params = fastes.es_step(params, fitness_fn, key, ...)``, built from
public pieces: keys (:mod:`fastes.prng`), counter-based noise (:mod:`fastes.noise`), pytrees
(:mod:`fastes.tree`), population evaluation (:mod:`fastes.evaluate`), fitness shaping
(:mod:`fastes.shaping`), the gradient estimate (:mod:`fastes.es`) and optimizers
(:mod:`fastes.optim`). Fitness is maximized everywhere (``minimize=True`` says otherwise).

Low-rank perturbations for large networks: :mod:`fastes.lowrank`, run by
:mod:`fastes.population` (small models built for them: :mod:`fastes.nn`).

Above the core: strategies (:mod:`fastes.strategies`), the task protocol (:mod:`fastes.tasks`),
RL (:mod:`fastes.envs`, :mod:`fastes.rl`), population-based training (:mod:`fastes.pbt`) and
the :class:`Trainer` with its CLI.

Importing fastes does not import triton, initialise CUDA or change torch settings.
"""

from . import (
    envs,
    es_optimizer,
    evaluate,
    expectations,
    lowrank,
    nn,
    noise,
    optim,
    pbt,
    population,
    prng,
    rl,
    schedules,
    shaping,
    strategies,
    tasks,
    tree,
)
from .es import FitnessStats, es_step, estimate_grad
from .es_optimizer import ESOptimizer
from .evaluate import evaluate_population, functional
from .expectations import expectation
from .noise import NoiseTable, noise_table
from .prng import fold_in, key, split
from .shaping import shape_fitness
from .trainer import Trainer, TrainResult
from .tree import ravel

__version__ = "0.1.0"

__all__ = [
    "ESOptimizer",
    "TrainResult",
    "Trainer",
    "FitnessStats",
    "NoiseTable",
    "envs",
    "es_optimizer",
    "es_step",
    "estimate_grad",
    "evaluate",
    "evaluate_population",
    "expectation",
    "expectations",
    "fold_in",
    "functional",
    "key",
    "lowrank",
    "nn",
    "noise",
    "noise_table",
    "optim",
    "prng",
    "ravel",
    "pbt",
    "population",
    "rl",
    "schedules",
    "shape_fitness",
    "shaping",
    "split",
    "strategies",
    "tasks",
    "tree",
]
