"""Evaluate a fitness function over a population, chunk by chunk.

The fitness function is written for ONE member: ``fitness_fn(params, *fitness_args)`` takes a
params pytree (same structure as the ES mean) and returns a scalar, or a (K,) tensor for K
objectives. Three modes run it over a chunk of members:

* ``"vmap"`` (default) — ``torch.func.vmap`` over the stacked members (dim 0), with
  ``fitness_args`` shared (``in_dims=None``): one batched pass, as in functorch model ensembling.
* ``"batched"`` — the function itself takes stacked params (leading dim = chunk) and returns
  (chunk,) or (chunk, K). For code that is already batched.
* ``"loop"`` — a plain Python loop, one member at a time, for code vmap cannot trace (gymnasium
  environments, data-dependent control flow, ``.item()``) and for debugging. May return floats.

For ``nn.Module`` s, :func:`functional` turns a module into ``apply(params, *args)`` built on
``torch.func.functional_call``, so data passes once and is shared by every member.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.func import functional_call, vmap

from .tree import Raveler

__all__ = ["MODES", "functional", "evaluate_population"]

MODES = ("vmap", "batched", "loop")


def functional(module: torch.nn.Module) -> Callable[..., Any]:
    """``apply(params, *args, **kwargs)``: run ``module`` with ``params`` substituted.

    ``params`` maps parameter names (as in ``module.named_parameters()``) to tensors; missing
    names and all buffers keep the module's own values. Works under ``vmap``.

    Example:
        >>> net = torch.nn.Linear(4, 2)
        >>> apply = functional(net)
        >>> def fitness(p, x, y):
        ...     return -((apply(p, x) - y) ** 2).mean()
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module; got {type(module).__name__}")

    def apply(params, *args, **kwargs):
        return functional_call(module, params, args, kwargs)

    return apply


def _check_output(out: Any, members: int, mode: str) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        out = torch.as_tensor(out)
    if out.dim() not in (1, 2) or out.shape[0] != members:
        one = "(chunk,) or (chunk, K)" if mode == "batched" else "a scalar or (K,) per member"
        raise ValueError(
            f"fitness_fn must return {one}; in {mode!r} mode a chunk of {members} members gave "
            f"shape {tuple(out.shape)[1:] if mode != 'batched' else tuple(out.shape)}"
        )
    if out.is_complex():
        raise TypeError(f"fitness_fn must return real numbers; got dtype {out.dtype}")
    return out


def evaluate_population(
    fitness_fn: Callable[..., Any],
    population: torch.Tensor,
    raveler: Raveler,
    *,
    mode: str = "vmap",
    fitness_args: tuple = (),
) -> torch.Tensor:
    """Fitness of each row of a flat (M, D) population: (M,) or (M, K).

    Args:
        fitness_fn: the one-member fitness function (see the module docstring).
        population: (M, D) flat member parameters, cut into pytrees by ``raveler``.
        raveler: describes the params pytree (from :func:`fastes.tree.raveler`).
        mode: ``"vmap"``, ``"batched"`` or ``"loop"``.
        fitness_args: extra arguments shared by every member (data, targets, ...).
    """
    members = population.shape[0]
    stacked = raveler.unravel_batch(population)  # pytree of (M, *shape)
    if mode == "vmap":
        in_dims = (0,) + (None,) * len(fitness_args)
        out = vmap(fitness_fn, in_dims=in_dims)(stacked, *fitness_args)
        if isinstance(out, torch.Tensor) and out.dim() == 1 and out.shape[0] == members:
            return out
        # A (K,) result per member arrives as (M, K); anything else is reported below.
    elif mode == "batched":
        out = fitness_fn(stacked, *fitness_args)
    elif mode == "loop":
        rows = []
        for i in range(members):
            member = raveler.unravel(population[i])
            rows.append(torch.as_tensor(fitness_fn(member, *fitness_args)))
        shapes = {tuple(r.shape) for r in rows}
        if len(shapes) != 1 or len(next(iter(shapes))) > 1:
            raise ValueError(
                "fitness_fn must return a scalar or a (K,) tensor per member, the same shape "
                f"for all; in 'loop' mode it returned shapes {sorted(shapes)}"
            )
        out = torch.stack(rows)
    else:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    return _check_output(out, members, mode)
