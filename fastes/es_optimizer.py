"""A stateful, PyTorch-idiomatic ES optimizer for ``nn.Module`` s, on the functional core.

Covers what the block-wise "pytorch-optimize" tool offered, with its known bugs fixed:

* any ``torch.optim`` optimizer performs the update: the ES gradient ĝ (uphill) is written into
  ``.grad`` as −ĝ, so the optimizer's descent step *ascends* the fitness;
* block-coordinate ES: per step one block of parameters (a top-level submodule by default, or a
  user-given group) is perturbed and updated — all at once, bottom-up, top-down or at random.
  Parameters outside the block get ``.grad = None``, which every torch optimizer skips, so a
  block's old gradient (and its momentum / weight decay) is never re-applied on a later step;
* several objectives: the objective returns K scalars, each is shaped (centered ranks) over the
  population, then combined with ``objective_weights``;
* members are evaluated in one vmap'd pass over a functional view of the module, not by
  deep-copying the model into a process pool per perturbation.

Example:
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    >>> def objective(net, x, y):           # net(x) runs the model with one member's params
    ...     logits = net(x)
    ...     return torch.stack([(logits.argmax(-1) == y).float().mean(),
    ...                         -torch.nn.functional.cross_entropy(logits, y)])
    >>> es = ESOptimizer(model, torch.optim.Adam(model.parameters(), lr=0.01), objective,
    ...                  population_size=64, sigma=0.05, blocks="bottom_up",
    ...                  objective_weights=[1.0, 0.5])
    >>> x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    >>> result = es.step(x, y)               # one block updated in place
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch.func import functional_call

from .es import FitnessStats, estimate_grad
from .prng import check_key, fold_in
from .prng import key as make_key

__all__ = ["ESOptimizer", "StepResult", "BLOCK_ORDERS", "module_blocks"]

BLOCK_ORDERS = ("all", "bottom_up", "top_down", "random")


class StepResult(NamedTuple):
    """What one :meth:`ESOptimizer.step` did."""

    block: str  # the block updated ("all" when every parameter was)
    grad: dict[str, torch.Tensor]  # ĝ for the block's parameters (uphill)
    stats: FitnessStats


def module_blocks(module: torch.nn.Module) -> dict[str, list[str]]:
    """Trainable parameters grouped by their first dotted name component, in module order.

    ``fc1.weight`` and ``fc1.bias`` form block ``fc1``; an ``nn.Sequential`` gives ``0``, ``2``, ...
    """
    blocks: dict[str, list[str]] = {}
    for name, p in module.named_parameters():
        if p.requires_grad:
            blocks.setdefault(name.split(".", 1)[0], []).append(name)
    return blocks


class ESOptimizer:
    """Block-wise, multi-objective ES on an ``nn.Module`` with any ``torch.optim`` optimizer.

    Args:
        module: the model; its parameters are updated in place by ``optimizer``.
        optimizer: a ``torch.optim.Optimizer`` over (some of) ``module``'s parameters.
        objective: ``objective(net, *data) -> scalar or (K,)``, where ``net(*inputs)`` runs the
            module with one population member's parameters. Maximized unless ``minimize``.
        population_size, sigma, antithetic, shaping, mode, chunk_size, noise, minimize:
            as in :func:`fastes.estimate_grad`.
        blocks: ``"all"``, ``"bottom_up"``, ``"top_down"`` or ``"random"``.
        groups: ``{block name: [parameter names]}``; default :func:`module_blocks`.
        objective_weights: K weights combining the shaped objectives (default 1/K each).
        seed: seeds the run key; step t uses ``fold_in(key(seed), t)``.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        objective: Callable[..., Any],
        *,
        population_size: int,
        sigma: float,
        blocks: str = "all",
        groups: Mapping[str, Sequence[str]] | None = None,
        objective_weights: Sequence[float] | torch.Tensor | None = None,
        antithetic: bool = True,
        shaping: str = "centered_ranks",
        minimize: bool = False,
        mode: str = "vmap",
        chunk_size: int | None = None,
        noise: Any = "auto",
        seed: int = 0,
    ) -> None:
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"module must be a torch.nn.Module; got {type(module).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__}"
            )
        if not callable(objective):
            raise TypeError(f"objective must be callable; got {type(objective).__name__}")
        if blocks not in BLOCK_ORDERS:
            raise ValueError(f"blocks must be one of {BLOCK_ORDERS}; got {blocks!r}")
        named = dict(module.named_parameters())
        groups = dict(module_blocks(module) if groups is None else groups)
        if not groups:
            raise ValueError("module has no trainable parameters to optimize")
        for block, names in groups.items():
            unknown = [n for n in names if n not in named]
            if not names or unknown:
                raise ValueError(
                    f"groups[{block!r}] must list parameter names of module; unknown or empty: "
                    f"{unknown or names}"
                )
        self.module, self.optimizer, self.objective = module, optimizer, objective
        self.order, self.groups = blocks, {b: list(ns) for b, ns in groups.items()}
        self.estimate_kwargs = dict(
            population_size=population_size, sigma=sigma, antithetic=antithetic,
            shaping=shaping, objective_weights=objective_weights, minimize=minimize,
            mode=mode, chunk_size=chunk_size, noise=noise,
        )  # fmt: skip
        self.key = make_key(seed)
        self.steps = 0

    def next_block(self) -> str:
        """The block the next :meth:`step` will update (a pure function of the step count)."""
        names = list(self.groups)
        if self.order == "all":
            return "all"
        if self.order == "bottom_up":
            return names[self.steps % len(names)]
        if self.order == "top_down":
            return names[::-1][self.steps % len(names)]
        pick = fold_in(fold_in(self.key, self.steps), 0x424C4B)  # "BLK": the block draw's key
        return names[int(pick[0]) % len(names)]

    def block_params(self, block: str) -> list[str]:
        if block == "all":
            return [n for ns in self.groups.values() for n in ns]
        return self.groups[block]

    def step(self, *data: Any) -> StepResult:
        """One ES step on the next block, ``data`` shared by all members; returns what it did."""
        block = self.next_block()
        names = self.block_params(block)
        named = dict(self.module.named_parameters())
        frozen = {n: p.detach() for n, p in named.items() if n not in names}
        buffers = dict(self.module.named_buffers())
        module, objective = self.module, self.objective

        def fitness(member: dict[str, torch.Tensor], *batch: Any):
            full = {**frozen, **buffers, **member}

            def net(*inputs: Any, **kwargs: Any):
                return functional_call(module, full, inputs, kwargs)

            return objective(net, *batch)

        center = {n: named[n].detach() for n in names}
        grad, stats = estimate_grad(
            center, fitness, fold_in(self.key, self.steps), fitness_args=data,
            **self.estimate_kwargs,
        )  # fmt: skip
        for n, p in named.items():
            # −ĝ: torch optimizers descend, ES ascends. None outside the block: skipped entirely.
            p.grad = (-grad[n]).to(p.dtype) if n in grad else None
        self.optimizer.step()
        self.steps += 1
        return StepResult(block, grad, stats)

    def state_dict(self) -> dict[str, Any]:
        """An independent snapshot of the run key, step count and the optimizer's state.

        Deep-copied: ``torch.optim.Optimizer.state_dict()`` returns the live state tensors, and a
        second optimizer loading them would share (and silently co-update) its moments.
        """
        snapshot = {"key": self.key, "steps": self.steps, "optimizer": self.optimizer.state_dict()}
        return copy.deepcopy(snapshot)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.key = check_key(state["key"]).clone()
        self.steps = int(state["steps"])
        self.optimizer.load_state_dict(state["optimizer"])
