"""Torch-native, batched environments whose dynamics match gymnasium's (issue: RL).

So far: :mod:`fastes.envs.cartpole`. :func:`episode_returns` runs a population of policies on
a batch of episodes in one batched tensor program.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import cartpole

__all__ = ["cartpole", "episode_returns"]


def episode_returns(
    policy: Callable[[torch.Tensor], torch.Tensor],
    key: torch.Tensor,
    batch: tuple[int, ...],
    env=cartpole,
) -> torch.Tensor:
    """Returns of episodes run with ``policy(obs (*batch, obs_dim)) -> actions (*batch,)``.

    All episodes start from states drawn from ``key`` and run until every one has terminated or
    been truncated; returns (*batch,) float64.
    """
    state = env.reset(key, batch)
    total = torch.zeros(batch, dtype=torch.float64)
    while not bool(state.done.all()):
        state, reward, _, _ = env.step(state, policy(state.obs))
        total += reward
    return total
