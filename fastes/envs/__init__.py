"""Torch-native, batched environments whose dynamics match gymnasium's.

Each environment is a module of pure functions over any batch shape — ``reset(key, batch)`` and
``step(state, action) -> (state, reward, terminated, truncated)`` — plus constants (``GYM_ID``,
``OBS_DIM``, ``DISCRETE``, ``ACTIONS`` or ``ACTION_DIM``/``ACTION_LOW``/``ACTION_HIGH``,
``MAX_STEPS``). A whole generation of rollouts (population × episodes) steps together as one
tensor program, on CPU or GPU; envs that are done stay frozen and earn 0.

| name | gymnasium id | obs | actions |
|---|---|---|---|
| ``cartpole`` | CartPole-v1 | 4 | 2 discrete |
| ``acrobot`` | Acrobot-v1 | 6 | 3 discrete |
| ``pendulum`` | Pendulum-v1 | 3 | 1 in [-2, 2] |
| ``mountain_car`` | MountainCarContinuous-v0 | 2 | 1 in [-1, 1] |
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import NamedTuple

import torch

from .._validate import positive_int
from ..normalization import RunningNorm, merge, moments, moments_by_member, running_norm
from . import acrobot, cartpole, mountain_car, pendulum

__all__ = [
    "ENVS",
    "Rollout",
    "acrobot",
    "cartpole",
    "episode_returns",
    "get",
    "mountain_car",
    "pendulum",
    "rollout",
]

ENVS: dict[str, ModuleType] = {
    "cartpole": cartpole,
    "acrobot": acrobot,
    "pendulum": pendulum,
    "mountain_car": mountain_car,
}


def get(name: str) -> ModuleType:
    """The environment module registered as ``name``."""
    if name not in ENVS:
        raise ValueError(f"unknown environment {name!r}; choose one of {sorted(ENVS)}")
    return ENVS[name]


class Rollout(NamedTuple):
    returns: torch.Tensor  # (*batch,) float64, sum of rewards
    lengths: torch.Tensor  # (*batch,) int64, steps until terminated or truncated
    obs_stats: RunningNorm  # moments of the observations acted on (per member with `members`)


def rollout(
    policy: Callable[[torch.Tensor], torch.Tensor],
    key: torch.Tensor,
    batch: tuple[int, ...],
    env: ModuleType = cartpole,
    device=None,
    observe: bool = False,
    members: int | None = None,
) -> Rollout:
    """Run ``policy(obs (*batch, OBS_DIM)) -> actions`` on a batch of episodes started from
    ``key`` until all are done. ``observe=True`` also gathers the observation moments (for
    running normalisation; only live envs count).

    ``members=M`` runs M copies of the batch, shape (M, *batch), that share their start states
    (common random numbers: every member of a population plays the same episodes); the
    observation moments are then per member (count (M,), mean and M2 (M, OBS_DIM)), so that
    populations split over processes pool them the same way
    (:func:`fastes.normalization.combine`).
    """
    state = env.reset(key, batch, device)
    if members is not None:
        state = _tile(state, batch, members)
        batch = (members, *batch)
    total = torch.zeros(batch, dtype=torch.float64, device=state.done.device)
    length = torch.zeros(batch, dtype=torch.int64, device=state.done.device)
    stats = running_norm(env.OBS_DIM) if observe else None
    if observe and members is not None:
        z = torch.zeros(members, env.OBS_DIM, dtype=torch.float64, device=state.done.device)
        stats = RunningNorm(z[:, 0].clone(), z, z.clone())
    while not bool(state.done.all()):
        if observe and members is not None:
            stats = merge(stats, moments_by_member(state.obs, ~state.done))
        elif observe:
            stats = merge(stats, moments(state.obs, ~state.done))
        live = ~state.done
        state, reward, _, _ = env.step(state, policy(state.obs))
        total += reward
        length += live
    return Rollout(total, length, stats)


def _tile(state, batch: tuple[int, ...], members: int):
    """Repeat every batch-shaped field of ``state`` over a new leading member dim."""
    positive_int(members, "members")
    n = len(batch)
    return type(state)(*(
        t.expand(members, *t.shape).clone() if t.dim() >= n and tuple(t.shape[:n]) == batch else t
        for t in state
    ))  # fmt: skip


def episode_returns(
    policy: Callable[[torch.Tensor], torch.Tensor],
    key: torch.Tensor,
    batch: tuple[int, ...],
    env: ModuleType = cartpole,
    members: int | None = None,
) -> torch.Tensor:
    """Returns (*batch,) float64 — ((members, *batch) with ``members``) — of episodes run with
    ``policy`` from start states drawn from ``key``; see :func:`rollout`."""
    return rollout(policy, key, batch, env, members=members).returns
