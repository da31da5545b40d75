"""Recurrent policies (GRU, LSTM): a state carried through the episode and reset at its start.

Portable ES evolved recurrent (autoregressive) policies; this is the same idea on fastes'
params-as-pytree policies. ``act(params, obs, norm, state) -> (action, state')`` runs one step of
a GRU cell (PyTorch's gate equations, Cho et al. 2014, https://arxiv.org/abs/1406.1078) or an
LSTM cell, then a linear read-out; ``initial_state`` gives the zero state an episode starts
from. Like
:class:`fastes.rl.MLPPolicy` it takes one member's params or a population's stacked params
(M, ...) with observations (M, E, obs_dim), in torch or in numpy (gymnasium workers):

    r = σ(x W_ir + b_ir + h W_hr + b_hr),  z = σ(x W_iz + b_iz + h W_hz + b_hz)
    n = tanh(x W_in + b_in + r ⊙ (h W_hn + b_hn)),  h' = (1 − z) ⊙ n + z ⊙ h

The torch-native envs start every episode of a batch together, so a batched rollout resets the
state once; gymnasium workers reset it at every ``env.reset``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .._validate import positive_int
from ..noise import philox_normal_rows
from ..prng import check_key
from .policies import MLPPolicy, action, normalized, numpy_params

__all__ = ["GRUPolicy", "LSTMPolicy"]


def _sigmoid(xp, x):
    return 1 / (1 + xp.exp(-x))


@dataclass(frozen=True)
class _Recurrent:
    """Shared by the recurrent policies: sizes, parameters, the state and the step around the
    cell. Subclasses set ``gates`` and implement ``_cell``."""

    obs_dim: int
    act_dim: int
    hidden: int = 16
    discrete: bool = True
    low: float = -1.0
    high: float = 1.0
    obs_clip: float = 5.0

    recurrent = True
    gates = 1

    def __post_init__(self):
        for name in ("obs_dim", "act_dim", "hidden"):
            positive_int(getattr(self, name), name)
        if not self.discrete and not self.low < self.high:
            raise ValueError(f"need low < high; got low={self.low}, high={self.high}")

    def init(self, key: torch.Tensor, dtype: torch.dtype = torch.float32, device=None) -> dict:
        """Params from ``key``: gate weights N(0, 1/fan_in), zero biases and a zero read-out (the
        initial policy is neutral, as for MLPPolicy)."""
        check_key(key)
        G, device = self.gates * self.hidden, device or key.device

        def normal(row: int, fan_in: int) -> torch.Tensor:
            w = philox_normal_rows(key, [row], fan_in * G)[0] / math.sqrt(fan_in)
            return w.reshape(fan_in, G).to(dtype=dtype, device=device)

        zeros = lambda *shape: torch.zeros(*shape, dtype=dtype, device=device)
        return {
            "w_ih": normal(0, self.obs_dim), "w_hh": normal(1, self.hidden),
            "b_ih": zeros(G), "b_hh": zeros(G),
            "w_out": zeros(self.hidden, self.act_dim), "b_out": zeros(self.act_dim),
        }  # fmt: skip

    def _zeros(self, params: dict, batch_shape: tuple[int, ...]):
        w = params["w_hh"]
        if isinstance(w, np.ndarray):
            return np.zeros((*batch_shape, self.hidden), dtype=w.dtype)
        return torch.zeros((*batch_shape, self.hidden), dtype=w.dtype, device=w.device)

    def act(self, params: dict, obs, norm=None, state=None):
        """``(action, state')`` for ``obs`` and the recurrent ``state`` (None: the initial one)."""
        xp = np if isinstance(obs, np.ndarray) else torch
        batched = params["w_hh"].ndim == 3  # (M, H, G): obs (M, E, obs_dim)
        x = normalized(xp, obs, norm, self.obs_clip)
        if state is None:
            state = self.initial_state(params, tuple(obs.shape[:-1]))
        bias = (lambda b: b[:, None, :]) if batched else (lambda b: b)
        h = state[0] if isinstance(state, tuple) else state
        gi = x @ params["w_ih"] + bias(params["b_ih"])  # (..., G)
        gh = h @ params["w_hh"] + bias(params["b_hh"])
        h, state = self._cell(xp, gi, gh, state)
        out = h @ params["w_out"] + bias(params["b_out"])
        return action(xp, out, self.discrete, self.low, self.high), state

    def numpy_params(self, params: dict) -> dict:
        return numpy_params(params)


@dataclass(frozen=True)
class GRUPolicy(_Recurrent):
    """A GRU policy ``obs_dim → GRU(hidden) → act_dim``; the state is h (..., hidden).

    Args:
        obs_dim, act_dim, discrete, low, high, obs_clip: as for :class:`MLPPolicy`.
        hidden: the GRU's state size.
    """

    gates = 3

    def initial_state(self, params: dict, batch_shape: tuple[int, ...] = ()):
        """The zero state (*batch_shape, hidden) in ``params``' library, dtype and device."""
        return self._zeros(params, batch_shape)

    def _cell(self, xp, gi, gh, h):
        H = self.hidden
        r = _sigmoid(xp, gi[..., :H] + gh[..., :H])
        z = _sigmoid(xp, gi[..., H : 2 * H] + gh[..., H : 2 * H])
        n = xp.tanh(gi[..., 2 * H :] + r * gh[..., 2 * H :])
        h = (1 - z) * n + z * h
        return h, h


@dataclass(frozen=True)
class LSTMPolicy(_Recurrent):
    """An LSTM policy ``obs_dim → LSTM(hidden) → act_dim`` (Hochreiter & Schmidhuber 1997,
    PyTorch's gate order i, f, g, o); the state is the pair (h, c), each (..., hidden)."""

    gates = 4

    def initial_state(self, params: dict, batch_shape: tuple[int, ...] = ()):
        """The zero state (h, c) in ``params``' library, dtype and device."""
        return self._zeros(params, batch_shape), self._zeros(params, batch_shape)

    def _cell(self, xp, gi, gh, state):
        H, g = self.hidden, gi + gh
        c = state[1]
        i, f = _sigmoid(xp, g[..., :H]), _sigmoid(xp, g[..., H : 2 * H])
        cand, o = xp.tanh(g[..., 2 * H : 3 * H]), _sigmoid(xp, g[..., 3 * H :])
        c = f * c + i * cand
        h = o * xp.tanh(c)
        return h, (h, c)


POLICY_KINDS = ("mlp", "gru", "lstm")


def make_policy(kind: str, obs_dim: int, act_dim: int, hidden: tuple[int, ...],
                **action_space) -> MLPPolicy | GRUPolicy | LSTMPolicy:  # fmt: skip
    """The default policy of ``kind``: an MLP with layers ``hidden``, or a GRU / LSTM whose
    state has the one size ``hidden`` gives; ``action_space`` (discrete, low, high) as for
    :class:`MLPPolicy`."""
    if kind not in POLICY_KINDS:
        raise ValueError(f"policy must be one of {POLICY_KINDS} or a policy object; got {kind!r}")
    if kind == "mlp":
        return MLPPolicy(obs_dim, act_dim, tuple(hidden), **action_space)
    if len(hidden) != 1:
        raise ValueError(
            f"a {kind} policy takes one hidden size (its state), e.g. hidden=(16,); got {hidden}"
        )
    cls = GRUPolicy if kind == "gru" else LSTMPolicy
    return cls(obs_dim, act_dim, int(hidden[0]), **action_space)
