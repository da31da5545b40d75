"""The task protocol: what the :class:`fastes.Trainer` trains.

A task is a fitness over a population plus the bookkeeping around it. The Trainer talks to tasks
only through :class:`Task` (DESIGN §13), never through a policy's attribute or parameter names:

* ``mode`` — the fastes evaluation mode its ``fitness`` is written for (``"vmap"``,
  ``"batched"`` or ``"loop"``, see :mod:`fastes.evaluate`; or ``"population"``: ``fitness``
  gets a :class:`fastes.population.Population`, for the ``eggroll`` strategy);
* ``fitness(params, key)`` — the fitness of the members in that mode; ``key`` is the
  generation's task key, shared by all members (common random numbers). Maximized, unless the
  strategy was built with ``minimize=True``;
* optionally ``init_params(key)``, ``evaluate(params, key) -> dict`` (the unperturbed params;
  the dict holds ``"score"``, in the fitness' sense), ``end_generation() -> dict`` (statistics to
  log once a generation's members are evaluated), ``state_dict()`` / ``load_state_dict(state)``
  (checkpointed with the run, tensors and plain data only) and ``close()``.

:class:`FunctionTask` makes a task of a plain fitness function; :mod:`fastes.rl` has the RL tasks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch

from ._validate import MODES, POPULATION, check_callable

__all__ = ["FunctionTask", "Task"]


@runtime_checkable
class Task(Protocol):
    """The part of the protocol every task has (the optional methods are listed above)."""

    mode: str

    def fitness(self, params: Any, key: torch.Tensor) -> Any: ...


class FunctionTask:
    """A task from ``fitness_fn(params[, key])`` and optionally ``eval_fn(params, key)``.

    Args:
        fitness_fn: fitness of one member (``mode="vmap"``/``"loop"``), of stacked members
            (``"batched"``) or of a low-rank population (``"population"``); maximized unless
            the strategy has ``minimize=True``.
        eval_fn: returns a float (or a dict with ``"score"``) for the unperturbed params.
        takes_key: pass the generation's key as a second argument to ``fitness_fn``.
    """

    def __init__(
        self,
        fitness_fn: Callable[..., Any],
        eval_fn: Callable[[Any, torch.Tensor], Any] | None = None,
        mode: str = "vmap",
        takes_key: bool = False,
    ):
        check_callable(fitness_fn, "fitness_fn")
        if eval_fn is not None:
            check_callable(eval_fn, "eval_fn")
        if mode not in (*MODES, POPULATION):
            raise ValueError(f"mode must be one of {(*MODES, POPULATION)}; got {mode!r}")
        self.fitness_fn, self.eval_fn, self.mode, self.takes_key = (
            fitness_fn, eval_fn, mode, takes_key,
        )  # fmt: skip
        if eval_fn is None:
            self.evaluate = None

    def fitness(self, params, key):
        return self.fitness_fn(params, key) if self.takes_key else self.fitness_fn(params)

    def evaluate(self, params, key) -> dict:
        out = self.eval_fn(params, key)
        return dict(out) if isinstance(out, dict) else {"score": float(out)}
