"""Any ``nn.Module`` as a policy, for every strategy and for low-rank populations.

``ModulePolicy(module, obs_dim, ...)`` maps observations through ``module`` to logits (discrete:
argmax) or to pre-squash actions (continuous: tanh into [low, high]), like
:class:`fastes.rl.MLPPolicy`. Its ``act`` takes either

* stacked params (M, ...) of the module's parameters and observations (M, E, obs_dim): one
  ``vmap`` of ``functional_call`` over members (the "batched" mode of any strategy), or
* a :class:`fastes.population.Population` (``eggroll``'s "population" mode): every member's
  low-rank weights without materialising them.

With ``EnvTask(env, ModulePolicy(...), mode="population")`` the Trainer trains it with
``make("eggroll", params, module=policy.module)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import functional_call

from ..population import Population
from .policies import action, normalized

__all__ = ["ModulePolicy"]


@dataclass(frozen=True, eq=False)
class ModulePolicy:
    """An ``nn.Module`` policy ``obs (..., obs_dim) -> (..., act_dim)`` outputs.

    Args:
        module: the network; its parameters are the params (``init`` returns them).
        obs_dim: observation features.
        discrete: argmax over the outputs (True) or tanh-squashed continuous actions (False).
        low, high: bounds of a continuous action.
        obs_clip: normalised observations are clipped to ±obs_clip.
    """

    module: torch.nn.Module
    obs_dim: int
    discrete: bool = True
    low: float = -1.0
    high: float = 1.0
    obs_clip: float = 5.0

    recurrent = False  # act() keeps no state between steps

    def __post_init__(self):
        if not isinstance(self.module, torch.nn.Module):
            raise TypeError(f"module must be a torch.nn.Module; got {type(self.module).__name__}")
        if not isinstance(self.obs_dim, int) or self.obs_dim < 1:
            raise ValueError(f"obs_dim must be a positive int; got {self.obs_dim!r}")
        if not self.discrete and not self.low < self.high:
            raise ValueError(f"need low < high; got low={self.low}, high={self.high}")

    def init(self, key: torch.Tensor | None = None, dtype=torch.float32, device=None) -> dict:
        """The module's current parameters as params (build the module under your own seed:
        ``key`` is not used, the module's initialisation is)."""
        return {
            k: v.detach().to(dtype=dtype, device=device) for k, v in self.module.named_parameters()
        }

    def act(self, params, obs: torch.Tensor, norm=None) -> torch.Tensor:
        """Actions for stacked params (M, ...) or a Population, observations (M, E, obs_dim)."""
        x = normalized(torch, obs, norm, self.obs_clip)
        if isinstance(params, Population):
            out = params(x, in_dims=0)
        else:
            out = torch.vmap(lambda q, o: functional_call(self.module, q, (o,)))(params, x)
        return action(torch, out, self.discrete, self.low, self.high)
