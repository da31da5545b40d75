"""Continuous mountain car, torch-native and batched: gymnasium's MountainCarContinuous-v0.

Same equations and constants (power 0.0015, gravity term 0.0025·cos 3x, speed limit 0.07,
positions [-1.2, 0.6], goal x ≥ 0.45 with ẋ ≥ 0, reward 100 at the goal minus 0.1·a² per step,
truncation at 999 steps) and the same float32 arithmetic as
``gymnasium.envs.classic_control.Continuous_MountainCarEnv`` after its first step (it keeps its
state as float32 and NumPy 2 does scalar maths in float32; when the action is clipped its
increment is formed in float64 and rounded, which is emulated too). One difference: the start
position, uniform in [-0.6, -0.4) from a fastes key, is rounded to float32 here, where
gymnasium's first step still uses the float64 value.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._common import truncated, uniform

__all__ = ["MountainCarState", "reset", "step"]

GYM_ID, OBS_DIM, ACTION_DIM, DISCRETE, MAX_STEPS = "MountainCarContinuous-v0", 2, 1, False, 999
ACTION_LOW, ACTION_HIGH = -1.0, 1.0
POWER, MAX_SPEED, MIN_POSITION, MAX_POSITION, GOAL_POSITION = 0.0015, 0.07, -1.2, 0.6, 0.45


class MountainCarState(NamedTuple):
    obs: torch.Tensor  # (*batch, 2) float32: position, velocity (the whole state)
    done: torch.Tensor  # (*batch,) bool
    steps: torch.Tensor  # () int64


def reset(key: torch.Tensor, batch: tuple[int, ...], device=None) -> MountainCarState:
    pos = uniform(key, batch, [-0.6], [-0.4], device).float()
    obs = torch.cat([pos, torch.zeros_like(pos)], -1)
    done = torch.zeros(batch, dtype=torch.bool, device=obs.device)
    return MountainCarState(obs, done, torch.zeros((), dtype=torch.int64))


def step(state: MountainCarState, action: torch.Tensor):
    """One step: ``action`` (*batch, 1) force (clipped to ±1). Returns
    ``(new_state, reward, terminated, truncated)``; done envs stay frozen with reward 0."""
    position, velocity = state.obs[..., 0], state.obs[..., 1]
    a = action.to(torch.float32)[..., 0]
    force = a.clamp(ACTION_LOW, ACTION_HIGH)
    gravity = 0.0025 * torch.cos((3 * position).double())  # float64, as math.cos
    inc = torch.where(
        a == force,
        force * POWER - gravity.float(),  # float32 throughout
        (force.double() * POWER - gravity).float(),  # clipped: a python float, float64 maths
    )
    velocity = (velocity + inc).clamp(-MAX_SPEED, MAX_SPEED)
    position = (position + velocity).clamp(MIN_POSITION, MAX_POSITION)
    velocity = torch.where((position == MIN_POSITION) & (velocity < 0), 0.0, velocity)
    terminated = (position >= GOAL_POSITION) & (velocity >= 0)
    reward = torch.where(terminated, 100.0, 0.0).double() - a.double() ** 2 * 0.1
    live = ~state.done
    obs = torch.where(live[..., None], torch.stack([position, velocity], -1), state.obs)
    steps = state.steps + 1
    trunc = truncated(steps, MAX_STEPS, live) & ~terminated & live
    done = state.done | terminated | trunc
    return MountainCarState(obs, done, steps), reward * live, terminated & live, trunc
