"""CartPole, torch-native and batched: gymnasium's CartPole-v1 dynamics over any batch shape.

Same equations, constants, float64 Euler integration, termination (|x| > 2.4 or
|θ| > 12°), reward (1 per step, the terminating step included) and truncation (500 steps) as
``gymnasium.envs.classic_control.CartPoleEnv`` (tests/test_envs.py steps both side by side).
Start states are uniform in [-0.05, 0.05]⁴, drawn from a fastes key, so a whole generation can
share them (common random numbers). Functional: states in, states out.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ._common import uniform

__all__ = ["CartPoleState", "reset", "step", "GRAVITY", "MAX_STEPS"]

GRAVITY, MASSCART, MASSPOLE, LENGTH, FORCE_MAG, TAU = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
TOTAL_MASS = MASSPOLE + MASSCART
POLEMASS_LENGTH = MASSPOLE * LENGTH
THETA_THRESHOLD = 12 * 2 * math.pi / 360
X_THRESHOLD = 2.4
GYM_ID, OBS_DIM, ACTIONS, DISCRETE = "CartPole-v1", 4, 2, True
MAX_STEPS = 500  # CartPole-v1's TimeLimit


class CartPoleState(NamedTuple):
    obs: torch.Tensor  # (*batch, 4) float64: x, ẋ, θ, θ̇
    done: torch.Tensor  # (*batch,) bool: terminated or truncated
    steps: torch.Tensor  # () int64, steps taken


def reset(key: torch.Tensor, batch: tuple[int, ...], device=None) -> CartPoleState:
    """Start states uniform in [-0.05, 0.05] for every env in ``batch``, from ``key``."""
    obs = uniform(key, batch, [-0.05] * 4, [0.05] * 4, device)
    done = torch.zeros(batch, dtype=torch.bool, device=obs.device)
    return CartPoleState(obs, done, torch.zeros((), dtype=torch.int64))


_FORCES: dict = {}  # (dtype, device) -> tensor([-FORCE_MAG, FORCE_MAG])


def step(state: CartPoleState, action: torch.Tensor):
    """One step for every env: ``action`` (*batch,) in {0, 1} (1 pushes right).

    Returns ``(new_state, reward, terminated, truncated)``; envs already done stay frozen and
    get reward 0, so summing rewards over a rollout gives each episode's return.
    """
    # The same float64 operations, in the same order, as gymnasium's CartPoleEnv.step; written
    # with few tensor ops (per-op overhead dominates at population-sized batches).
    obs = state.obs
    k = (obs.dtype, obs.device)
    if k not in _FORCES:
        _FORCES[k] = torch.tensor([-FORCE_MAG, FORCE_MAG], dtype=obs.dtype, device=obs.device)
    force = _FORCES[k][action.long()]
    theta, theta_dot = obs[..., 2], obs[..., 3]
    costheta, sintheta = torch.cos(theta), torch.sin(theta)
    temp = (force + POLEMASS_LENGTH * theta_dot.square() * sintheta) / TOTAL_MASS
    thetaacc = (GRAVITY * sintheta - costheta * temp) / (
        LENGTH * (4.0 / 3.0 - MASSPOLE * costheta.square() / TOTAL_MASS)
    )
    xacc = temp - POLEMASS_LENGTH * thetaacc * costheta / TOTAL_MASS
    # Euler: x + τ·ẋ, ẋ + τ·ẍ, θ + τ·θ̇, θ̇ + τ·θ̈ — one multiply and one add per component.
    new = obs + TAU * torch.stack([obs[..., 1], xacc, theta_dot, thetaacc], dim=-1)
    live = ~state.done
    obs = torch.where(live[..., None], new, obs)
    terminated = ((new[..., 0].abs() > X_THRESHOLD) | (new[..., 2].abs() > THETA_THRESHOLD)) & live
    steps = state.steps + 1
    if int(steps) >= MAX_STEPS:
        trunc = live & ~terminated
    else:
        trunc = torch.zeros_like(live)
    reward = live.to(obs.dtype)  # 1 per live step, the terminating one included
    done = state.done | terminated | trunc
    return CartPoleState(obs, done, steps), reward, terminated, trunc
