"""The argument checks shared by every public entry point (es_step, strategies, optimizers,
the Trainer): one implementation each, so a bad value gets the same clear message everywhere.

Each check names the argument, says what was expected and shows what was given; it raises
``TypeError`` for a value of the wrong kind and ``ValueError`` for one out of range.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "FLOAT32_MAX",
    "POPULATION",
    "check_callable",
    "check_evaluation",
    "check_exchange",
    "check_finite_flat",
    "check_fitness_args",
    "check_population",
    "positive_int",
    "real",
]

# Hyperparameters multiply float32 tensors; a value past float32's range cannot be converted.
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
MODES = ("vmap", "batched", "loop")  # fastes.evaluate's modes (re-exported there)
# A fitness written for a whole low-rank population (fastes.population.Population; eggroll).
POPULATION = "population"
# fastes.distributed's exchanges (re-exported there); "auto" picks one from measured costs
EXCHANGES = ("fitness", "partial_sums", "auto")


def positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """An int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}")
    return value


def real(
    value: Any, name: str, *, positive: bool = False, low: float = 0.0, high: float = FLOAT32_MAX
) -> float:
    """A finite real number in [low, high] (in (0, high] with ``positive``), as a float.

    ``high`` defaults to float32's largest value: hyperparameters meet float32 tensors.
    """
    if isinstance(value, (bool, complex, str, bytes)):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__} {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"{name} must be a real number; got {type(value).__name__} {value!r}"
        ) from None
    lo_ok = v > 0 if positive else v >= low
    if not (math.isfinite(v) and lo_ok):
        lower = "> 0" if positive else f">= {low:g}"
        raise ValueError(f"{name} must be a finite number {lower}; got {v!r}")
    if v > high:
        why = " (float32's largest value)" if high == FLOAT32_MAX else ""
        raise ValueError(f"{name} must be <= {high:g}{why}; got {v!r}")
    return v


def check_callable(fn: Any, name: str) -> Callable:
    if not callable(fn):
        raise TypeError(f"{name} must be callable; got {type(fn).__name__}")
    return fn


def check_fitness_args(fitness_args: Any) -> tuple:
    """The extra arguments passed after the params: a tuple or list (one argument: ``(x,)``)."""
    if not isinstance(fitness_args, (tuple, list)):
        raise TypeError(
            "fitness_args must be a tuple of the extra arguments fitness_fn takes after the "
            f"params (one argument x: fitness_args=(x,)); got {type(fitness_args).__name__}"
        )
    return tuple(fitness_args)


def check_population(population_size: int, antithetic: bool, paired: str = "with antithetic=True"):
    """P >= 2, and even when members come in antithetic pairs (``paired`` says why)."""
    positive_int(population_size, "population_size", 2)
    if antithetic and population_size % 2:
        raise ValueError(
            f"population_size must be even {paired} (members come in ± pairs); "
            f"got {population_size}"
        )


def check_evaluation(mode: str, chunk_size: int | None, modes: tuple = MODES) -> None:
    """An evaluation mode from ``modes`` and a positive chunk size (or None)."""
    if mode not in modes:
        hint = " ('population' needs a low-rank strategy: eggroll)" if mode == POPULATION else ""
        raise ValueError(f"mode must be one of {modes}; got {mode!r}{hint}")
    if chunk_size is not None:
        positive_int(chunk_size, "chunk_size")


def check_exchange(exchange: str) -> str:
    """What processes exchange under torch.distributed: one of EXCHANGES."""
    if exchange not in EXCHANGES:
        raise ValueError(f"exchange must be one of {EXCHANGES}; got {exchange!r}")
    return exchange


def check_finite_flat(flat: torch.Tensor, name: str = "params") -> torch.Tensor:
    """A flat (D,) mean holds no NaN or inf (one reduction; skipped inside torch.compile, where
    graphs do not read values back to the host)."""
    if torch.compiler.is_compiling() or flat.device.type == "meta":
        return flat
    bad = ~torch.isfinite(flat)
    if bool(bad.any()):
        idx = bad.nonzero().flatten()
        raise ValueError(
            f"{name} must be finite; {idx.numel()} of {flat.numel()} flat values are NaN or inf "
            f"(first at flat index {int(idx[0])}: {float(flat[idx[0]])})"
        )
    return flat
