"""Shared pieces of the torch-native environments: start-state sampling and the time limit."""

from __future__ import annotations

import math

import torch

from ..noise import philox_uint32_rows
from ..prng import check_key


def uniform(key: torch.Tensor, batch: tuple[int, ...], low, high, device=None) -> torch.Tensor:
    """(*batch, k) float64 uniform in [low, high) per feature, from ``key`` (k = len(low))."""
    check_key(key)
    if not isinstance(batch, tuple) or any(not isinstance(b, int) or b < 1 for b in batch):
        raise ValueError(f"batch must be a tuple of positive ints; got {batch!r}")
    low = torch.as_tensor(low, dtype=torch.float64)
    high = torch.as_tensor(high, dtype=torch.float64)
    words = philox_uint32_rows(key, torch.arange(math.prod(batch)), low.numel())
    u = (words.double() + 0.5) / 2**32  # (0, 1)
    return (low + (high - low) * u).reshape(*batch, low.numel()).to(device)


def truncated(steps: torch.Tensor, max_steps: int, like: torch.Tensor) -> torch.Tensor:
    """The TimeLimit flag: True everywhere once ``steps`` reaches ``max_steps``."""
    return torch.full_like(like, bool(steps >= max_steps), dtype=torch.bool)
