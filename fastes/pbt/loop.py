"""What the two PBT modes share: a population of hyperparameters in a search space, the exploit
and explore settings, one key per round, the history, the best member so far, and the settings a
checkpoint must match. :class:`~fastes.pbt.VectorizedPBT` (members in one batched program) and
:class:`~fastes.pbt.ProcessPBT` (a callback in worker processes) add what each member carries:
stacked params and optimizer state, or a training callback's checkpoint."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .. import distributed
from .._io import write_json
from .._validate import positive_int
from ..prng import check_key, fold_in, key_words
from ..run_files import CheckpointError
from .select import Exploit, gather, rank_order, tournament, truncation
from .space import as_space

__all__ = ["PBTLoop", "PBTResult", "EXPLOITS"]

EXPLOITS = ("truncation", "tournament")


class PBTResult(NamedTuple):
    best_score: float  # the best fitness any member reached at a scoring round
    best_hyperparameters: Any  # that member's hyperparameters then (dict or dataclass)
    best_state: Any  # what it carried then: its params (VectorizedPBT) or checkpoint (ProcessPBT)
    best_round: int
    history: list[dict]


class PBTLoop:
    """The shared state and rules (see the module docstring); not used on its own.

    Keywords (both modes): ``exploit`` — ``"truncation"`` (Ray Tune's rule, with ``quantile``)
    or ``"tournament"`` (EPBT's, with ``elite_fraction`` and ``tournament_size``); explore —
    ``factors``, ``resample_probability``, ``reset_probability`` (:meth:`Space.perturb`) and
    ``swap_probability`` (crossover between pairs of copies, off by default); ``initial`` —
    ``"sample"`` the first hyperparameters, start every member at the ``"default"``, or give
    them (a list of N dicts / dataclass instances, or a dict of (N,) tensors); ``quantile=0``
    turns exploit off (N independent trainings, e.g. a grid trained in one batch);
    ``minimize`` — lower fitness is better.
    """

    def __init__(self, space: Any, *, population_size: int, key: torch.Tensor,
                 exploit: str = "truncation", quantile: float = 0.25, elite_fraction: float = 0.5,
                 tournament_size: int = 2, factors: tuple[float, ...] = (1.2, 0.8),
                 resample_probability: float = 0.25, reset_probability: float = 0.0,
                 swap_probability: float = 0.0, initial: Any = "sample",
                 minimize: bool = False) -> None:  # fmt: skip
        self.space = as_space(space)
        self.n = positive_int(population_size, "population_size")
        self.key = check_key(key)
        if exploit not in EXPLOITS:
            raise ValueError(f"exploit must be one of {EXPLOITS}; got {exploit!r}")
        self.exploit, self.minimize = exploit, bool(minimize)
        self._exploit_kw = (
            {"quantile": quantile} if exploit == "truncation"
            else {"elite_fraction": elite_fraction, "size": tournament_size}
        )  # fmt: skip
        self._explore_kw = {"factors": tuple(factors), "resample_probability": resample_probability,
                            "reset_probability": reset_probability}  # fmt: skip
        self.swap_probability = swap_probability
        # Check the explore and exploit settings now, not at the first round.
        self.space.perturb(self.space.defaults(1), self.key, **self._explore_kw)
        self.space.crossover(self.space.defaults(2), self.key, torch.tensor([[0, 1]]),
                             swap_probability)  # fmt: skip
        self._select(torch.zeros(self.n), self.key)
        self._init_key, hp_key, self._data_key, self._round_key = (
            fold_in(self.key, i) for i in range(4)
        )
        self.hyperparameters = self._initial(initial, hp_key)
        self.round = 0
        self.history: list[dict] = []
        self.best: dict = {"score": None, "round": -1, "member": -1, "hyperparameters": None,
                           "state": None}  # fmt: skip
        self.config = {
            "population_size": self.n, "exploit": exploit, **self._exploit_kw,
            **self._explore_kw, "swap_probability": swap_probability,
            "initial": initial if isinstance(initial, str) else
            [self.member_hyperparameters(i) for i in range(self.n)],
            "minimize": self.minimize, "key": list(key_words(self.key.cpu())),
            "space": repr(self.space),
        }  # fmt: skip

    def _initial(self, initial: Any, key: torch.Tensor) -> dict[str, torch.Tensor]:
        if isinstance(initial, str):
            if initial not in ("sample", "default"):
                raise ValueError(f"initial must be 'sample', 'default' or the members' "
                                 f"hyperparameters; got {initial!r}")  # fmt: skip
            return (self.space.sample(key, self.n) if initial == "sample"
                    else self.space.defaults(self.n))  # fmt: skip
        if isinstance(initial, (list, tuple)):
            if len(initial) != self.n:
                raise ValueError(f"initial lists {len(initial)} members; population_size is "
                                 f"{self.n}")  # fmt: skip
            initial = self.space.encode(list(initial))
        self.space.check(initial, self.n)
        return {k: v.clone() for k, v in initial.items()}

    def member_hyperparameters(self, i: int) -> Any:
        """Member i's hyperparameters as Python values (a dataclass for a dataclass space)."""
        return self.space.member(self.hyperparameters, i)

    def _select(self, fitness: torch.Tensor, key: torch.Tensor) -> Exploit:
        rule = truncation if self.exploit == "truncation" else tournament
        return rule(fitness, key, **self._exploit_kw, minimize=self.minimize)

    def _exploit_explore(self, scores: torch.Tensor) -> Exploit:
        """Pick who copies whom, and give the copies their winners' hyperparameters, crossed
        over in pairs (with ``swap_probability``) and perturbed. The caller copies the rest of
        each member's state by ``source``."""
        k = fold_in(self._round_key, self.round)
        choice = self._select(scores, fold_in(k, 0))
        hp = gather(self.hyperparameters, choice.source, self.n)
        replaced = choice.replaced.nonzero().flatten()
        if self.swap_probability > 0 and replaced.numel() >= 2:  # EPBT's crossover of copies
            pairs = replaced[: replaced.numel() // 2 * 2].reshape(-1, 2)
            hp = self.space.crossover(hp, fold_in(k, 1), pairs, self.swap_probability)
        self.hyperparameters = self.space.perturb(hp, fold_in(k, 2), choice.replaced,
                                                  **self._explore_kw)  # fmt: skip
        return choice

    def _record(self, scores: torch.Tensor, state_of: Callable[[int], Any]) -> dict:
        """The round's history row; remembers the best member so far (``state_of(i)`` is what
        member i carries: its params or its checkpoint)."""
        top = int(rank_order(scores, self.minimize)[0])
        best = float(scores[top])
        prev = self.best["score"]
        if not math.isnan(best) and (
            prev is None or (best < prev if self.minimize else best > prev)
        ):
            self.best = {"score": best, "round": self.round, "member": top,
                         "hyperparameters": self.member_hyperparameters(top),
                         "state": state_of(top)}  # fmt: skip
        finite = scores[~torch.isnan(scores)]
        hp = self.space.member(self.hyperparameters, top)
        hp = hp if isinstance(hp, dict) else vars(hp)
        return {"round": self.round, "fitness_best": best,
                "fitness_mean": float(finite.mean()) if finite.numel() else math.nan,
                "failed": int(torch.isnan(scores).sum()), "best_member": top,
                **{f"hp_{k}": v for k, v in hp.items() if k in self.space.dims}}  # fmt: skip

    def _check_scores(self, scores: Any, what: str) -> torch.Tensor:
        scores = torch.as_tensor(scores).detach().to("cpu", torch.float64).reshape(-1)
        if scores.numel() != self.n:
            raise ValueError(f"{what} must return {self.n} scores; got {scores.numel()}")
        return scores

    # ---- checkpoints ------------------------------------------------------------------------
    def _open_run(self, run_dir: Any, resume: bool) -> str | None:
        """``run_dir``'s checkpoint path (None without a run_dir): the state is loaded from it
        when it exists and ``resume``; otherwise rank 0 records the settings in config.json."""
        if run_dir is None:
            return None
        path = os.path.join(os.fspath(run_dir), "checkpoint.pt")
        if resume and os.path.exists(path):
            self.load(path)
        elif distributed.is_main():
            write_json(os.path.join(os.fspath(run_dir), "config.json"), self.config)
        return path

    def load(self, path: str) -> None:
        raise NotImplementedError

    def _loop_state(self) -> dict:
        best = dict(self.best)
        if best["hyperparameters"] is not None and not isinstance(best["hyperparameters"], dict):
            best["hyperparameters"] = vars(best["hyperparameters"])
        return {"config": self.config, "round": self.round,
                "hyperparameters": self.hyperparameters, "history": self.history,
                "best": best}  # fmt: skip

    def _check_config(self, ckpt: dict, path: str) -> None:
        if _digest(ckpt["config"]) != _digest(self.config):
            diff = sorted(k for k in set(ckpt["config"]) | set(self.config)
                          if ckpt["config"].get(k) != self.config.get(k))  # fmt: skip
            raise CheckpointError(f"checkpoint {path} was written with other settings: {diff}")
        self.space.check(ckpt["hyperparameters"], self.n)

    def _load_loop_state(self, ckpt: dict) -> None:
        self.hyperparameters = dict(ckpt["hyperparameters"])
        self.round = int(ckpt["round"])
        self.history = list(ckpt["history"])
        best = dict(ckpt["best"])
        if best["hyperparameters"] is not None and self.space.dataclass is not None:
            best["hyperparameters"] = self.space.dataclass(**best["hyperparameters"])
        self.best = best


def _digest(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
