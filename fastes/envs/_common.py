"""Shared pieces of the torch-native environments: start-state sampling and the time limit."""

from __future__ import annotations

import torch

from ..noise import uniform

__all__ = ["truncated", "uniform"]


def truncated(steps: torch.Tensor, max_steps: int, like: torch.Tensor) -> torch.Tensor:
    """The TimeLimit flag: True everywhere once ``steps`` reaches ``max_steps``."""
    return torch.full_like(like, bool(steps >= max_steps), dtype=torch.bool)
