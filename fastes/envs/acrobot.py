"""Acrobot, torch-native and batched: gymnasium's Acrobot-v1 over any batch shape.

Same "book" dynamics (Sutton & Barto), constants, RK4 step of dt = 0.2 s (one step, as
gymnasium's ``rk4`` with t = [0, dt]), angle wrapping, velocity bounds (4π, 9π), torques
{−1, 0, +1}, termination (−cos θ1 − cos(θ1 + θ2) > 1), reward (−1 per step, 0 on the terminating
step) and truncation (500 steps) as ``gymnasium.envs.classic_control.AcrobotEnv``; float64
state, float32 observations [cos θ1, sin θ1, cos θ2, sin θ2, θ̇1, θ̇2] (tests/test_envs.py steps
both side by side). Start states are uniform in [-0.1, 0.1]⁴, rounded to float32 as gymnasium
does, drawn from a fastes key.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ._common import truncated, uniform

__all__ = ["AcrobotState", "reset", "step"]

GYM_ID, OBS_DIM, ACTIONS, DISCRETE, MAX_STEPS = "Acrobot-v1", 6, 3, True, 500
DT = 0.2
L1, M1, M2, LC1, LC2, I1, I2, G = 1.0, 1.0, 1.0, 0.5, 0.5, 1.0, 1.0, 9.8
MAX_VEL_1, MAX_VEL_2 = 4 * math.pi, 9 * math.pi
PI = math.pi


class AcrobotState(NamedTuple):
    s: torch.Tensor  # (*batch, 4) float64: θ1, θ2, θ̇1, θ̇2
    obs: torch.Tensor  # (*batch, 6) float32
    done: torch.Tensor  # (*batch,) bool
    steps: torch.Tensor  # () int64


def _obs(s: torch.Tensor) -> torch.Tensor:
    t1, t2 = s[..., 0], s[..., 1]
    return torch.stack(
        [torch.cos(t1), torch.sin(t1), torch.cos(t2), torch.sin(t2), s[..., 2], s[..., 3]], -1
    ).float()


def reset(key: torch.Tensor, batch: tuple[int, ...], device=None) -> AcrobotState:
    s = uniform(key, batch, [-0.1] * 4, [0.1] * 4, device).float().double()
    done = torch.zeros(batch, dtype=torch.bool, device=s.device)
    return AcrobotState(s, _obs(s), done, torch.zeros((), dtype=torch.int64))


def _dsdt(y: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """gymnasium's ``_dsdt`` ("book"), the same operations in the same order."""
    theta1, theta2, dtheta1, dtheta2 = y.unbind(-1)
    d1 = M1 * LC1**2 + M2 * (L1**2 + LC2**2 + 2 * L1 * LC2 * torch.cos(theta2)) + I1 + I2
    d2 = M2 * (LC2**2 + L1 * LC2 * torch.cos(theta2)) + I2
    phi2 = M2 * LC2 * G * torch.cos(theta1 + theta2 - PI / 2.0)
    phi1 = (
        -M2 * L1 * LC2 * dtheta2**2 * torch.sin(theta2)
        - 2 * M2 * L1 * LC2 * dtheta2 * dtheta1 * torch.sin(theta2)
        + (M1 * LC1 + M2 * L1) * G * torch.cos(theta1 - PI / 2)
        + phi2
    )
    ddtheta2 = (a + d2 / d1 * phi1 - M2 * L1 * LC2 * dtheta1**2 * torch.sin(theta2) - phi2) / (
        M2 * LC2**2 + I2 - d2**2 / d1
    )
    ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
    return torch.stack([dtheta1, dtheta2, ddtheta1, ddtheta2], -1)


def _wrap(x: torch.Tensor) -> torch.Tensor:
    # gymnasium subtracts / adds 2π while outside [-π, π]; one RK4 step moves θ by at most
    # |θ̇|·dt ≲ 9π·0.2 < 2·2π, so two passes cover every reachable case.
    for _ in range(2):
        x = torch.where(x > PI, x - 2 * PI, x)
        x = torch.where(x < -PI, x + 2 * PI, x)
    return x


def step(state: AcrobotState, action: torch.Tensor):
    """One step for every env: ``action`` (*batch,) in {0, 1, 2} (torque −1, 0, +1).

    Returns ``(new_state, reward, terminated, truncated)``; done envs stay frozen, reward 0.
    """
    a = action.to(torch.float64) - 1.0  # AVAIL_TORQUE[a]
    y0 = state.s
    dt, dt2 = DT, DT / 2.0
    k1 = _dsdt(y0, a)
    k2 = _dsdt(y0 + dt2 * k1, a)
    k3 = _dsdt(y0 + dt2 * k2, a)
    k4 = _dsdt(y0 + dt * k3, a)
    ns = y0 + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
    ns = torch.stack(
        [
            _wrap(ns[..., 0]),
            _wrap(ns[..., 1]),
            ns[..., 2].clamp(-MAX_VEL_1, MAX_VEL_1),
            ns[..., 3].clamp(-MAX_VEL_2, MAX_VEL_2),
        ],
        -1,
    )
    s = torch.where(state.done[..., None], state.s, ns)
    terminated = -torch.cos(s[..., 0]) - torch.cos(s[..., 1] + s[..., 0]) > 1.0
    steps = state.steps + 1
    trunc = truncated(steps, MAX_STEPS, terminated) & ~terminated
    live = ~state.done
    reward = torch.where(terminated, 0.0, -1.0).to(torch.float64) * live
    done = state.done | terminated | trunc
    return AcrobotState(s, _obs(s), done, steps), reward, terminated & live, trunc & live
