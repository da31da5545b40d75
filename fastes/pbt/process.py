"""Process-mode PBT: training code fastes does not own, run through a callback in worker processes.

Each round, every member's :class:`Candidate` goes to ``train(candidate) -> candidate``, which
trains from ``candidate.checkpoint`` (None at first: start fresh) with
``candidate.hyperparameters`` for one interval, and returns the candidate with a new
``checkpoint`` (anything picklable: a ``state_dict``, a path, ...) and its ``fitness`` (higher is
better unless ``minimize``). Any framework works. Members run in a pool of ``workers`` processes
(``concurrent.futures`` with the ``spawn`` start method; 0 runs them in this process); results
are taken in member order, so the outcome does not depend on the number of workers or on which
finishes first — given a ``train`` that is deterministic for its candidate (use
``candidate.key``, a fastes key unique to the member and round, for its randomness).

A member whose callback raises, returns something else than a candidate, or reports a NaN
fitness is recorded (``candidate.error``, the history's ``failed`` count), ranks last and is
replaced from a winner; the run goes on. Then the exploit rule and the explore operators of
:class:`~fastes.pbt.loop.PBTLoop` act on the population: a replaced member takes its winner's
checkpoint (warm start) and perturbed hyperparameters.

:meth:`ProcessPBT.rounds` is a generator that yields the best candidate so far after each round
(as EPBT's ``epbt()`` does); :meth:`ProcessPBT.run` runs them all and returns a
:class:`~fastes.pbt.PBTResult`. With ``run_dir`` each round is checkpointed atomically
(``torch.save``; checkpoints must then be tensors and plain data, as ``weights_only`` loading
requires) and a new run with the same settings resumes where it stopped.

Under ``torchrun`` (after :func:`fastes.distributed.init`) each rank trains its slice of the
members (``member_range``; ``workers`` processes per rank), the ranks all-gather the fitness,
and every rank applies the same exploit and explore. Checkpoints pass through ``run_dir``, which
every rank must be able to read (one machine, or a shared filesystem): ``members/round<r>/<i>.pt``
(the previous round's folder is removed once no rank needs it). Nothing is pickled over the
network. The history's ``errors`` lists the failures of the members rank 0 trained (the
``failed`` count covers all).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import math
import multiprocessing
import os
import shutil
import traceback
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch

from .. import distributed
from .._io import atomic_write
from .._validate import check_callable, positive_int
from ..prng import fold_in
from ..run_files import FORMAT, load_checkpoint, write_csv
from .loop import PBTLoop, PBTResult

__all__ = ["Candidate", "ProcessPBT"]


@dataclasses.dataclass
class Candidate:
    """One member for one round, as the training callback sees it."""

    member: int
    round: int
    hyperparameters: Any  # a dict of Python values, or the space's dataclass
    key: torch.Tensor  # a fastes key for this member and round
    checkpoint: Any = None  # the training state to resume from; None: start fresh
    fitness: float = math.nan  # set by the callback
    error: str | None = None  # set when the callback failed


class _MemberFile(NamedTuple):
    """A member's checkpoint that another rank wrote to the run directory (torchrun mode)."""

    path: str


def _resolve(checkpoint: Any) -> Any:
    if isinstance(checkpoint, _MemberFile):
        return torch.load(checkpoint.path, map_location="cpu", weights_only=True)
    return checkpoint


def _call(train: Callable, candidate: Candidate) -> Candidate:
    """Run the callback; any failure becomes a candidate with an error and NaN fitness."""
    try:
        out = train(candidate)
        if not isinstance(out, Candidate):
            raise TypeError(f"train must return a Candidate; got {type(out).__name__}")
        out.fitness = float(out.fitness)
        if math.isnan(out.fitness):
            out.error = out.error or "fitness is NaN"
        return out
    except Exception as e:  # the member fails, the run goes on
        return dataclasses.replace(candidate, fitness=math.nan, error=error_text(e))


def error_text(e: BaseException) -> str:
    """The last line of an exception's report (``RuntimeError: member 1 crashed``)."""
    return traceback.format_exception_only(type(e), e)[-1].strip()


class ProcessPBT(PBTLoop):
    """PBT of a training callback in worker processes (see the module docstring).

    Example:
        >>> def train(c):  # a toy "training": the checkpoint is a number that grows by lr
        ...     c.checkpoint = (c.checkpoint or 0.0) + c.hyperparameters["lr"]
        ...     c.fitness = c.checkpoint
        ...     return c
        >>> space = {"lr": fastes.pbt.Float(0.1, 1.0)}
        >>> pop = ProcessPBT(train, space, population_size=4, key=fastes.key(0))
        >>> result = pop.run(rounds=3)
        >>> result.best_round, len(result.history)
        (2, 3)
    """

    def __init__(self, train: Callable[[Candidate], Candidate], space: Any, *,
                 population_size: int, key: torch.Tensor, workers: int = 0,
                 start_method: str = "spawn", **pbt: Any) -> None:  # fmt: skip
        super().__init__(space, population_size=population_size, key=key, **pbt)
        self.train = check_callable(train, "train")
        self.workers = positive_int(workers, "workers", minimum=0)
        methods = multiprocessing.get_all_start_methods()
        if start_method not in methods:
            raise ValueError(f"start_method must be one of {methods}; got {start_method!r}")
        self.start_method = start_method
        self.checkpoints: list[Any] = [None] * self.n
        self.group = distributed.current()
        self._local = distributed.member_range(self.n, self.group)

    def _candidates(self) -> list[Candidate]:
        """This round's candidates; the checkpoints of this rank's members loaded."""
        k = fold_in(self._round_key, self.round)
        lo, hi = self._local
        return [Candidate(i, self.round, self.member_hyperparameters(i), fold_in(fold_in(k, 3), i),
                          _resolve(c) if lo <= i < hi else c)
                for i, c in enumerate(self.checkpoints)]  # fmt: skip

    def _evaluate(self, pool: cf.Executor | None, candidates: list[Candidate]) -> list[Candidate]:
        if pool is None:
            return [_call(self.train, c) for c in candidates]
        futures = [pool.submit(_call, self.train, c) for c in candidates]
        out = []
        for c, f in zip(candidates, futures, strict=True):
            try:
                out.append(f.result())
            except Exception as e:  # the worker died (BrokenProcessPool) or could not pickle
                out.append(dataclasses.replace(c, fitness=math.nan, error=error_text(e)))
        return out

    def rounds(self, rounds: int, run_dir: str | os.PathLike | None = None,
               resume: bool = True) -> Iterator[Candidate]:  # fmt: skip
        """Train until ``rounds`` rounds are done, yielding the best candidate so far after each
        (with its checkpoint); see the module docstring."""
        rounds = positive_int(rounds, "rounds")
        if self.group is not None and run_dir is None:
            raise ValueError(
                "ProcessPBT under torchrun needs run_dir, a directory every rank can read (a "
                "shared filesystem across machines): members' checkpoints pass through it"
            )
        path = self._open_run(run_dir, resume)
        pool = None
        try:
            while self.round < rounds:
                if self.workers and pool is None:
                    ctx = multiprocessing.get_context(self.start_method)
                    pool = cf.ProcessPoolExecutor(self.workers, mp_context=ctx)
                candidates = self._candidates()
                results = self._evaluate(pool, candidates[slice(*self._local)])
                if pool is not None and any(r.error and "BrokenProcessPool" in r.error
                                            for r in results):  # fmt: skip
                    pool.shutdown(cancel_futures=True)
                    pool = None  # a fresh pool next round
                if self.group is not None:
                    results = self._share(results, candidates, os.fspath(run_dir))
                yield self._finish_round(results, path)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)

    def _share(self, local: list[Candidate], candidates: list[Candidate],
               run_dir: str) -> list[Candidate]:  # fmt: skip
        """torchrun: write this rank's members' checkpoints to the run directory, all-gather the
        fitness (P numbers), and stand the other ranks' members in by their files."""
        folder = os.path.join(run_dir, "members", f"round{self.round}")
        files = [os.path.join(folder, f"{i}.pt") for i in range(self.n)]
        for r in local:  # a failed member passes on the checkpoint it started from
            ckpt = r.checkpoint if r.error is None else candidates[r.member].checkpoint
            atomic_write(files[r.member], lambda fh, c=ckpt: torch.save(c, fh))
        mine = torch.tensor([r.fitness for r in local], dtype=torch.float64)
        # Once the gather returns, every rank has written its files (and has read the previous
        # round's, which it did before training): the previous round's folder can go.
        fitness = distributed.gather_members(mine, self.n, self.group)
        if self.round > 0 and distributed.is_main():
            shutil.rmtree(os.path.join(run_dir, "members", f"round{self.round - 1}"),
                          ignore_errors=True)  # fmt: skip
        by_member = {r.member: r for r in local}
        return [by_member.get(i) or dataclasses.replace(
                    candidates[i], checkpoint=_MemberFile(files[i]), fitness=float(fitness[i]))
                for i in range(self.n)]  # fmt: skip

    def _finish_round(self, results: list[Candidate], path: str | None) -> Candidate:
        scores = torch.tensor([r.fitness for r in results], dtype=torch.float64)
        for r in results:
            if r.error is None:
                self.checkpoints[r.member] = r.checkpoint  # a failed member keeps its old one
        record = self._record(scores, lambda i: _resolve(results[i].checkpoint))
        record["errors"] = {r.member: r.error for r in results if r.error}
        choice = self._exploit_explore(scores)
        self.checkpoints = [self.checkpoints[int(s)] for s in choice.source]
        replaced = choice.replaced.nonzero().flatten()
        record.update(replaced=replaced.tolist(), source=choice.source[replaced].tolist())
        self.history.append(record)
        self.round += 1
        if path is not None and distributed.is_main():
            self.save(path)
        return self.best_candidate()

    def best_candidate(self) -> Candidate:
        """The best member seen at any round, with its checkpoint and fitness then."""
        b = self.best
        return Candidate(b["member"], b["round"], b["hyperparameters"], self.key, b["state"],
                         math.nan if b["score"] is None else b["score"])  # fmt: skip

    def run(self, rounds: int, run_dir: str | os.PathLike | None = None, resume: bool = True,
            callback: Callable[[Candidate], Any] | None = None) -> PBTResult:  # fmt: skip
        """All of :meth:`rounds`; ``callback(best_candidate)`` after each round."""
        for best in self.rounds(rounds, run_dir, resume):
            if callback is not None:
                callback(best)
        b = self.best
        return PBTResult(b["score"], b["hyperparameters"], b["state"], b["round"], self.history)

    # ---- checkpoints ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """The population (hyperparameters, checkpoints, history) at ``path``, atomically."""
        saved = [{"member_file": c.path} if isinstance(c, _MemberFile) else c
                 for c in self.checkpoints]  # fmt: skip
        ckpt = {"format": FORMAT, "kind": "pbt-process", **self._loop_state(),
                "checkpoints": saved}  # fmt: skip
        atomic_write(path, lambda fh: torch.save(ckpt, fh))
        rows = [{k: v for k, v in r.items() if k != "errors"} for r in self.history]
        write_csv(os.path.join(os.path.dirname(os.fspath(path)), "history.csv"), rows)

    def load(self, path: str | os.PathLike) -> None:
        """Restore what :meth:`save` wrote with the same settings (CheckpointError otherwise)."""
        path = os.fspath(path)
        ckpt = load_checkpoint(path, kind="pbt-process")
        self._check_config(ckpt, path)
        self.checkpoints = [
            _MemberFile(c["member_file"]) if isinstance(c, dict) and set(c) == {"member_file"}
            else c for c in ckpt["checkpoints"]
        ]  # fmt: skip
        self._load_loop_state(ckpt)
