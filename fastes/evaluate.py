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

from ._validate import MODES
from .tree import Raveler

__all__ = ["MODES", "functional", "evaluate_population"]


def functional(module: torch.nn.Module) -> Callable[..., Any]:
    """``apply(params, *args, **kwargs)``: run ``module`` with ``params`` substituted.

    ``params`` maps parameter names (as in ``module.named_parameters()``) to tensors; missing
    names and all buffers keep the module's own values. Works under ``vmap``.

    Parameters are what ES perturbs and updates; buffers (BatchNorm's running mean and variance,
    ...) are not evolved and are shared by every member. A BatchNorm layer in train mode that
    tracks running statistics would have each member write its own batch statistics into that
    shared buffer — impossible under ``vmap`` and order-dependent in a loop — so ``apply``
    raises with the fix: ``module.eval()`` (normalise with the running statistics) or
    ``track_running_stats=False`` (normalise with each member's batch statistics, e.g.
    ``torch.func.replace_all_batch_norm_modules_(module)``).

    Example:
        >>> net = torch.nn.Linear(4, 2)
        >>> apply = functional(net)
        >>> def fitness(p, x, y):
        ...     return -((apply(p, x) - y) ** 2).mean()
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module; got {type(module).__name__}")

    batch_norms = [
        (name, m) for name, m in module.named_modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]  # fmt: skip

    def apply(params, *args, **kwargs):
        for name, m in batch_norms:
            if m.training and m.running_mean is not None:
                raise ValueError(
                    f"module has BatchNorm layer {name or type(m).__name__!r} in train mode with "
                    "running statistics, which every population member would overwrite. Call "
                    "module.eval() to use the running statistics, or build the layer with "
                    "track_running_stats=False (torch.func.replace_all_batch_norm_modules_("
                    "module) does it in place) to use each member's batch statistics"
                )
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
        try:
            out = vmap(fitness_fn, in_dims=in_dims)(stacked, *fitness_args)
        except (RuntimeError, ValueError) as e:
            if "vmap" not in str(e):
                raise
            raise type(e)(
                f"fitness_fn failed under torch.func.vmap (mode='vmap'): {e}\n"
                "A vmapped fitness must return a tensor and cannot read values (.item(), "
                "float(), if on a tensor) or call non-torch code. Pass mode='loop' to run it "
                "one member at a time, or mode='batched' if it already takes stacked params."
            ) from e
        if isinstance(out, torch.Tensor) and out.dim() == 1 and out.shape[0] == members:
            if out.is_complex():
                raise TypeError(f"fitness_fn must return real numbers; got dtype {out.dtype}")
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
