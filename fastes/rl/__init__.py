"""Reinforcement-learning helpers: policies, observation normalisation, tasks and the
gymnasium adapter.

* :class:`MLPPolicy` — linear / MLP policies (discrete or continuous) as params pytrees;
  :class:`ModulePolicy` — any ``nn.Module`` (stacked params or a low-rank population).
* ``fastes.rl.normalization`` — running observation mean/std (Salimans 2017, ARS V2); the
  module lives in the core as :mod:`fastes.normalization` (ARS uses it too).
* :class:`EnvTask` — a population on fastes' torch-native envs, one batched program.
* :class:`GymTask` — a population on any gymnasium env id, across worker processes, with common
  random numbers (one env seed per episode slot per generation, shared by all members).
"""

from .. import normalization
from ..normalization import RunningNorm, running_norm
from .module_policy import ModulePolicy
from .policies import MLPPolicy
from .recurrent import GRUPolicy, LSTMPolicy
from .tasks import EnvTask, FunctionTask


def __getattr__(name):  # GymTask imports gymnasium's adapter lazily
    if name == "GymTask":
        from .gym import GymTask

        return GymTask
    raise AttributeError(f"module 'fastes.rl' has no attribute {name!r}")


__all__ = [
    "EnvTask",
    "FunctionTask",
    "GRUPolicy",
    "LSTMPolicy",
    "GymTask",
    "MLPPolicy",
    "ModulePolicy",
    "RunningNorm",
    "normalization",
    "running_norm",
]
