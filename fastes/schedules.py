"""Schedules for learning rates and σ: ``schedule(generation) -> value``.

Any hyperparameter documented as "float or schedule" accepts one of these (or any callable of the
generation index). Strategies evaluate them at ``state.generation``.

Example:
    >>> lr = cosine(0.1, 0.001, steps=1000, warmup=50)
    >>> lr(0), lr(50), lr(1000)
    (0.0, 0.1, 0.001)
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["constant", "exponential_decay", "cosine", "resolve"]

Schedule = Callable[[int], float]


def constant(value: float) -> Schedule:
    """``value`` at every generation."""
    value = float(value)
    return lambda t: value


def exponential_decay(init: float, rate: float, minimum: float = 0.0) -> Schedule:
    """``max(init·rate^t, minimum)`` (PyTorch-ES's ``decay`` / ``sigma_decay``: rate 0.9999)."""
    if not 0 < rate <= 1:
        raise ValueError(f"rate must be in (0, 1]; got {rate}")
    return lambda t: max(init * rate**t, minimum)


def cosine(init: float, final: float, steps: int, warmup: int = 0) -> Schedule:
    """Linear warm-up from 0 over ``warmup`` generations, then cosine from ``init`` to ``final``
    at ``steps``; ``final`` afterwards."""
    if steps <= warmup:
        raise ValueError(f"steps must exceed warmup; got steps={steps}, warmup={warmup}")

    def schedule(t: int) -> float:
        if t < warmup:
            return init * t / warmup
        frac = min(1.0, (t - warmup) / (steps - warmup))
        return final + 0.5 * (init - final) * (1 + math.cos(math.pi * frac))

    return schedule


def resolve(value: float | Schedule, name: str) -> Schedule:
    """A schedule from a number or a callable; numbers must be finite."""
    if callable(value):
        return value
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number or a schedule; got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite; got {v}")
    return constant(v)
