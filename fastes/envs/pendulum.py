"""Pendulum, torch-native and batched: gymnasium's Pendulum-v1 over any batch shape.

Same equations, constants (g = 10, m = l = 1, dt = 0.05, max speed 8, max torque 2), cost
θ_n² + 0.1 θ̇² + 0.001 u² with θ_n the angle wrapped to [-π, π) (numpy's floor-mod, emulated),
and the same float32 torque arithmetic as ``gymnasium.envs.classic_control.PendulumEnv``
(its action is a float32 Box, and ``3.0 * u`` and ``0.001 * u**2`` stay float32 under NumPy 2's
promotion rules); float64 state, float32 observations [cos θ, sin θ, θ̇]. Never terminates;
truncated at 200 steps. Start states uniform in [-π, π] × [-1, 1] from a fastes key.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ._common import truncated, uniform

__all__ = ["PendulumState", "reset", "step"]

GYM_ID, OBS_DIM, ACTION_DIM, DISCRETE, MAX_STEPS = "Pendulum-v1", 3, 1, False, 200
ACTION_LOW, ACTION_HIGH = -2.0, 2.0
MAX_SPEED, MAX_TORQUE, DT, G, M, L = 8.0, 2.0, 0.05, 10.0, 1.0, 1.0


class PendulumState(NamedTuple):
    s: torch.Tensor  # (*batch, 2) float64: θ, θ̇
    obs: torch.Tensor  # (*batch, 3) float32
    done: torch.Tensor  # (*batch,) bool (truncation only)
    steps: torch.Tensor  # () int64


def _obs(s: torch.Tensor) -> torch.Tensor:
    th = s[..., 0]
    return torch.stack([torch.cos(th), torch.sin(th), s[..., 1]], -1).float()


def reset(key: torch.Tensor, batch: tuple[int, ...], device=None) -> PendulumState:
    s = uniform(key, batch, [-math.pi, -1.0], [math.pi, 1.0], device)
    done = torch.zeros(batch, dtype=torch.bool, device=s.device)
    return PendulumState(s, _obs(s), done, torch.zeros((), dtype=torch.int64))


def angle_normalize(x: torch.Tensor) -> torch.Tensor:
    """((x + π) mod 2π) − π with numpy's remainder (fmod, then shifted into the divisor's sign)."""
    two_pi = 2 * math.pi
    r = torch.fmod(x + math.pi, two_pi)
    r = torch.where((r != 0) & (r < 0), r + two_pi, r)
    return r - math.pi


def step(state: PendulumState, action: torch.Tensor):
    """One step: ``action`` (*batch, 1) torque (clipped to ±2). Returns
    ``(new_state, reward, terminated, truncated)``; done envs stay frozen with reward 0."""
    th, thdot = state.s[..., 0], state.s[..., 1]
    u = action.to(torch.float32)[..., 0].clamp(-MAX_TORQUE, MAX_TORQUE)
    costs = angle_normalize(th) ** 2 + 0.1 * thdot**2 + (0.001 * u**2).double()
    newthdot = thdot + (3 * G / (2 * L) * torch.sin(th) + (3.0 / (M * L**2) * u).double()) * DT
    newthdot = newthdot.clamp(-MAX_SPEED, MAX_SPEED)
    newth = th + newthdot * DT
    live = ~state.done
    s = torch.where(live[..., None], torch.stack([newth, newthdot], -1), state.s)
    steps = state.steps + 1
    terminated = torch.zeros_like(live)
    trunc = truncated(steps, MAX_STEPS, live) & live
    return PendulumState(s, _obs(s), state.done | trunc, steps), -costs * live, terminated, trunc
