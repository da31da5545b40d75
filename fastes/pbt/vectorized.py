"""Vectorized population-based training: N members of one model trained in one batched program.

The members' params are stacked along dim 0 (``torch.func.stack_module_state``); a training
step is ``vmap(grad_and_value(loss))`` over members with the minibatch shared, then one
:mod:`fastes.optim` update whose hyperparameters are (N,) tensors (member n steps with its own
learning rate, momentum, weight decay, ...); loss coefficients reach the loss the same way.
Every ``interval`` steps the population is scored, and an exploit rule
(:mod:`fastes.pbt.select`) plus :meth:`Space.perturb` replace the worst members: exploit is an
index gather of params, optimizer state and hyperparameters (warm start), explore a pure
function of a key (Jaderberg et al. 2017, https://arxiv.org/abs/1711.09846).

Contract:

* ``optimizer(hp)`` returns a :mod:`fastes.optim` transformation built from ``hp``, a dict of
  (N,) tensors (floats in the params' dtype, ints / choice indices int64, booleans bool) plus
  the space's fixed values. fastes optimizers ascend, so they are given −∇loss.
* ``loss_fn(outputs, targets, hp)`` is one member's scalar loss; ``hp`` holds that member's
  0-d tensors (and the fixed values). Default: cross-entropy.
* ``fitness(pbt)`` returns (N,) scores, higher is better (``minimize=True`` flips it), e.g.
  ``lambda pop: pop.accuracy(x_val, y_val)``. NaN ranks last.

Buffers (e.g. a positional table) are shared by all members and read-only: modules that update
buffers while training (BatchNorm's running statistics) are not supported.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap
from torch.utils import _pytree as pytree

from .._io import atomic_write
from .._validate import check_callable, positive_int
from ..noise import uniform
from ..prng import fold_in, key_words
from ..run_files import FORMAT, load_checkpoint, unflatten_like, write_csv
from ..tree import tree_map
from .loop import PBTLoop, PBTResult
from .select import gather
from .space import Float

__all__ = ["VectorizedPBT"]


def _cross_entropy(outputs: torch.Tensor, targets: torch.Tensor, hp: dict) -> torch.Tensor:
    return F.cross_entropy(outputs, targets)


class VectorizedPBT(PBTLoop):
    """PBT over ``population_size`` copies of ``model`` (see the module docstring).

    Example:
        >>> from fastes import optim, pbt
        >>> space = {"lr": pbt.Float(1e-3, 1.0, log=True)}
        >>> pop = pbt.VectorizedPBT(nn.Linear(4, 3), space, lambda hp: optim.sgd(hp["lr"]),
        ...                         population_size=8, key=fastes.key(0), interval=5)
        >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
        >>> result = pop.run((x, y), steps=20, batch_size=16,
        ...                  fitness=lambda p: p.accuracy(x, y))
        >>> len(result.history)
        4
    """

    def __init__(self, model: nn.Module, space: Any, optimizer: Callable[[dict], Any], *,
                 population_size: int, key: torch.Tensor, loss_fn: Callable | None = None,
                 interval: int = 100, init: str = "independent", **pbt: Any) -> None:  # fmt: skip
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        super().__init__(space, population_size=population_size, key=key, **pbt)
        self.optimizer = check_callable(optimizer, "optimizer")
        self.loss_fn = _cross_entropy if loss_fn is None else check_callable(loss_fn, "loss_fn")
        self.interval = positive_int(interval, "interval")
        if init not in ("independent", "copy"):
            raise ValueError(f"init must be 'independent' or 'copy'; got {init!r}")
        self.params, self.buffers = self._stack(model, init, self._init_key)
        self._skeleton = copy.deepcopy(model).to("meta")
        self.opt_state = self.optimizer(self.model_hyperparameters()).init(self.params)
        self.step = 0
        shapes = {k: list(v.shape[1:]) for k, v in self.params.items()}
        self.config.update(interval=self.interval, init=init, params=shapes)
        self._train = vmap(grad_and_value(self._member_loss), in_dims=(0, 0, None, None))

    # ---- the population -------------------------------------------------------------------
    def _stack(self, model: nn.Module, init: str, key: torch.Tensor) -> tuple[dict, dict]:
        members = []
        for i in range(self.n):
            m = copy.deepcopy(model)
            if init == "independent":  # member i's init from its own seed; global RNG untouched
                k0, k1 = key_words(fold_in(key, i).cpu())
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(k0 | (k1 << 32))
                    for sub in m.modules():
                        if hasattr(sub, "reset_parameters"):
                            sub.reset_parameters()
            members.append(m)
        params, buffers = stack_module_state(members)
        params = {k: v.detach() for k, v in params.items()}
        return params, {k: v[0] for k, v in buffers.items()}  # buffers: shared, read-only

    def model_hyperparameters(self) -> dict:
        """The hyperparameters as the optimizer and loss see them: (N,) tensors on the params'
        device, floats in the params' dtype, plus the space's fixed values."""
        leaf = next(iter(self.params.values()))
        out = dict(self.space.fixed)
        for name, d in self.space.dims.items():
            v = self.hyperparameters[name]
            dtype = leaf.dtype if isinstance(d, Float) else v.dtype
            out[name] = v.to(device=leaf.device, dtype=dtype)
        return out

    def _member_loss(self, params, hp, x, y):
        out = functional_call(self._skeleton, (params, self.buffers), (x,))
        return self.loss_fn(out, y, {**self.space.fixed, **hp})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's outputs on the shared input x: shape (N, *outputs)."""
        call = lambda p, x: functional_call(self._skeleton, (p, self.buffers), (x,))  # noqa: E731
        with torch.no_grad():
            return vmap(call, in_dims=(0, None))(self.params, x)

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(N,) classification accuracy of every member on (x, y)."""
        return (self.forward(x).argmax(-1) == y).double().mean(-1)

    # ---- training ---------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimizer step of every member on the minibatch (x, y); returns the (N,) losses."""
        hp = self.model_hyperparameters()
        batched = {k: hp[k] for k in self.space.dims}
        grads, losses = self._train(self.params, batched, x, y)
        updates, self.opt_state = self.optimizer(hp).update(
            tree_map(torch.neg, grads), self.opt_state, self.params
        )
        self.params = tree_map(lambda p, u: (p + u).to(p.dtype), self.params, updates)
        self.step += 1
        return losses.detach()

    def exploit_explore(self, fitness: Any) -> dict:
        """Replace the worst members by copies of winners (params, optimizer state,
        hyperparameters), then perturb the copies' hyperparameters. Returns what was done."""
        choice = self._exploit_explore(self._check_scores(fitness, "fitness"))
        self.params = gather(self.params, choice.source, self.n)
        self.opt_state = gather(self.opt_state, choice.source, self.n)
        replaced = choice.replaced.nonzero().flatten()
        return {"replaced": replaced.tolist(), "source": choice.source[replaced].tolist()}

    def _batch(self, data: Any, batch_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        if callable(data):
            return data(self.step)
        x, y = data
        if batch_size is None:
            return x, y
        u = uniform(fold_in(self._data_key, self.step), (batch_size,), [0.0], [1.0])[:, 0]
        idx = (u * x.shape[0]).long().clamp(max=x.shape[0] - 1).to(x.device)
        return x[idx], y[idx]

    def run(self, data: Any, *, steps: int, fitness: Callable[[VectorizedPBT], Any],
            batch_size: int | None = None, run_dir: str | os.PathLike | None = None,
            resume: bool = True,
            callback: Callable[[dict], Any] | None = None) -> PBTResult:  # fmt: skip
        """Train for ``steps`` steps in rounds of ``interval``; after each round score the
        members, record the round, then exploit and explore (after the last round too, so a run
        continued by a later call with more steps is the same as one long run).

        ``data`` is ``(x, y)`` (minibatches of ``batch_size`` drawn from the key; the whole set
        when None) or a callable ``step -> (x, y)``. With ``run_dir`` every round is
        checkpointed atomically (``checkpoint.pt``, ``history.csv``, ``config.json``) and a
        second call with the same settings resumes bit-identically.
        """
        steps = positive_int(steps, "steps")
        check_callable(fitness, "fitness")
        if batch_size is not None:
            positive_int(batch_size, "batch_size")
        path = self._open_run(run_dir, resume)
        rounds = math.ceil(steps / self.interval)
        while self.round < rounds:
            for _ in range(min(self.interval, steps - self.step)):
                self.train_step(*self._batch(data, batch_size))
            scores = self._check_scores(fitness(self), "fitness")
            record = {"step": self.step, **self._record(scores, self._member_params)}
            record.update(self.exploit_explore(scores))
            self.history.append(record)
            self.round += 1
            if path is not None:
                self.save(path)
            if callback is not None:
                callback(record)
        b = self.best
        return PBTResult(b["score"], b["hyperparameters"], b["state"], b["round"], self.history)

    def _member_params(self, i: int) -> dict:
        return {k: v[i].clone() for k, v in self.params.items()}

    # ---- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything a resumed run needs (weights_only-safe)."""
        return {"format": FORMAT, "kind": "pbt-vectorized", **self._loop_state(), "step": self.step,
                "params": self.params,
                "opt_state": pytree.tree_flatten(self.opt_state)[0]}  # fmt: skip

    def save(self, path: str | os.PathLike) -> None:
        """Write the state to ``path`` atomically, and history.csv next to it."""
        ckpt = self.state_dict()
        atomic_write(path, lambda fh: torch.save(ckpt, fh))
        write_csv(os.path.join(os.path.dirname(os.fspath(path)), "history.csv"), self.history)

    def load(self, path: str | os.PathLike) -> None:
        """Restore a state written by :meth:`save` with the same settings; nothing changes when
        the file is damaged or from other settings (a CheckpointError names the file)."""
        path = os.fspath(path)
        ckpt = load_checkpoint(path, kind="pbt-vectorized")
        self._check_config(ckpt, path)
        params = unflatten_like(list(ckpt["params"].values()), list(self.params.values()), path,
                                "this population's params")  # fmt: skip
        opt_state = unflatten_like(ckpt["opt_state"], self.opt_state, path, "the optimizer state")
        self.params = dict(zip(self.params, params, strict=True))
        self.opt_state = opt_state
        self.step = int(ckpt["step"])
        self._load_loop_state(ckpt)
