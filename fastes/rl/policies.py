"""Linear and MLP policies as params pytrees plus one pure ``act`` function.

A policy object holds only the architecture (like a hyperparameter); its parameters are a plain
dict of tensors ``{"w0": (in, h0), "b0": (h0,), ...}``, so fastes' ES machinery perturbs them like
any other params. ``act`` takes

* one member's params and observations (..., obs_dim), or
* a population's stacked params (M, ...) and observations (M, E, obs_dim) — fastes' "batched"
  evaluation mode: M members × E episodes in one pass,

and works on torch tensors or numpy arrays alike (the gymnasium workers run numpy, where a
three-layer MLP costs a few µs per step instead of torch's per-op overhead).

Discrete policies return ``argmax`` of the logits (deterministic, as in Salimans et al. 2017);
continuous ones squash with tanh into [low, high]. Observations can be normalised on the way in
with ``norm=(mean, std)`` (see :mod:`fastes.rl.normalization`), clipped to ±``obs_clip``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..noise import philox_normal_rows
from ..prng import check_key

__all__ = ["MLPPolicy", "action", "normalized", "numpy_params"]


def normalized(xp, obs, norm, clip: float):
    """``clip((obs − mean) / std, ±clip)`` with ``norm = (mean, std)``; ``obs`` when None."""
    if norm is None:
        return obs
    mean, std = norm
    return xp.clip((obs - mean) / std, -clip, clip)


def action(xp, out, discrete: bool, low: float, high: float):
    """The action from the last layer: argmax of the logits, or tanh squashed into [low, high]."""
    if discrete:
        return out.argmax(-1)
    return low + (xp.tanh(out) + 1) * (0.5 * (high - low))


@dataclass(frozen=True)
class MLPPolicy:
    """An MLP policy ``obs_dim → hidden… → act_dim`` (``hidden=()`` is a linear policy).

    Args:
        obs_dim: observation features.
        act_dim: number of discrete actions, or the size of a continuous action.
        hidden: hidden layer widths.
        discrete: argmax over ``act_dim`` logits (True) or a continuous action (False).
        low, high: bounds of a continuous action (tanh-squashed into them).
        activation: ``"tanh"`` or ``"relu"`` for the hidden layers.
        obs_clip: normalised observations are clipped to ±obs_clip.
    """

    obs_dim: int
    act_dim: int
    hidden: tuple[int, ...] = ()
    discrete: bool = True
    low: float = -1.0
    high: float = 1.0
    activation: str = "tanh"
    obs_clip: float = 5.0

    def __post_init__(self):
        for name in ("obs_dim", "act_dim"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int; got {v!r}")
        if any(not isinstance(h, int) or h < 1 for h in self.hidden):
            raise ValueError(f"hidden must be positive ints; got {self.hidden!r}")
        if self.activation not in ("tanh", "relu"):
            raise ValueError(f"activation must be 'tanh' or 'relu'; got {self.activation!r}")
        if not self.discrete and not self.low < self.high:
            raise ValueError(f"need low < high; got low={self.low}, high={self.high}")

    @property
    def sizes(self) -> tuple[int, ...]:
        return (self.obs_dim, *self.hidden, self.act_dim)

    def init(self, key: torch.Tensor, dtype: torch.dtype = torch.float32, device=None) -> dict:
        """Params from ``key`` on ``device`` (default: the key's): weights N(0, 1/fan_in) for
        hidden layers, zero output layer and biases (the initial policy is neutral; ES explores
        from there, as in ARS). The values do not depend on the device."""
        check_key(key)
        params = {}
        layers = len(self.sizes) - 1
        for i, (n_in, n_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:], strict=True)):
            if i < layers - 1:
                w = philox_normal_rows(key, [i], n_in * n_out)[0] / math.sqrt(n_in)
            else:
                w = torch.zeros(n_in * n_out)
            params[f"w{i}"] = w.reshape(n_in, n_out).to(dtype=dtype, device=device)
            params[f"b{i}"] = torch.zeros(n_out, dtype=dtype, device=device or key.device)
        return params

    recurrent = False  # act() keeps no state between steps

    def act(self, params: dict, obs, norm=None):
        """Actions for ``obs``; see the module docstring for the shapes. ``norm`` = (mean, std)."""
        xp = np if isinstance(obs, np.ndarray) else torch
        batched = params["w0"].ndim == 3  # (M, in, out): obs (M, E, in)
        x = normalized(xp, obs, norm, self.obs_clip)
        layers = len(self.sizes) - 1
        for i in range(layers):
            b = params[f"b{i}"]
            x = x @ params[f"w{i}"] + (b[:, None, :] if batched else b)
            if i < layers - 1:
                x = xp.tanh(x) if self.activation == "tanh" else xp.maximum(x, 0 * x)
        return action(xp, x, self.discrete, self.low, self.high)

    def numpy_params(self, params: dict) -> dict:
        return numpy_params(params)


def numpy_params(params: dict) -> dict:
    """A policy's params as float64 numpy arrays (for the numpy path in worker processes)."""
    return {k: v.detach().cpu().double().numpy() for k, v in params.items()}
