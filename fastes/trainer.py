"""A training loop around any strategy and any task: goals, decay, evaluation, checkpoints.

    strategy = fastes.strategies.make("openai_es", params, population_size=64, mode="batched",
                                      sigma=fastes.schedules.exponential_decay(0.1, 0.999),
                                      learning_rate=0.05)
    trainer = fastes.Trainer(strategy, fastes.rl.EnvTask("cartpole"), key=fastes.key(0),
                             params=params, generations=200, goal=500.0, goal_count=3,
                             run_dir="runs/cartpole")
    result = trainer.run()                 # or trainer.run(resume=True) after a crash

Each generation g uses keys derived from (key, g) only — the strategy's noise, the env seeds
(common random numbers) and the evaluation episodes — so a run resumed from a checkpoint
continues bit-identically to an uninterrupted one (the checkpoint holds the strategy state, the
task state such as the observation normaliser, the history, the best params and the goal streak).
Learning-rate and σ decay are the strategy's schedules (:mod:`fastes.schedules`), evaluated at
its generation counter.

Every ``eval_every`` generations the unperturbed params are scored by ``task.evaluate``; the run
stops early once that score reaches ``goal`` on ``goal_count`` evaluations in a row (PyTorch-ES's
``reward_goal`` / ``consecutive_goal_stopping``, with ``goal=0`` a real goal). Without an
evaluation, the population's mean fitness is the score. Scores follow the strategy's sense: with
``minimize=True`` a lower score is better, the goal is reached at ``score <= goal``, and
``best.pt`` keeps the lowest-scoring params.

A run that ends on its generation budget and whose last generation was not on the evaluation
schedule gets one more evaluation of its final params, so every run has a score and ``best.pt``.
It is provisional: it counts for the result and ``best.pt``, not for the goal streak, and a run
resumed from that checkpoint continues as if it had not happened (bit-identical to a run that
never stopped). Outputs in ``run_dir`` (all written atomically): ``checkpoint.pt``, ``best.pt``
(best-scoring params), ``history.csv``, ``curve.png`` (``plot=True``, needs matplotlib) and
TensorBoard events (``tensorboard=True``).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, NamedTuple

import torch
from torch.utils import _pytree as pytree

from . import distributed
from ._io import atomic_write
from ._validate import positive_int
from .noise import philox_uint32_rows
from .prng import check_key, fold_in, split
from .run_files import (
    FORMAT,
    CheckpointError,
    add_gif,
    load_checkpoint,
    plot_history,
    unflatten_like,
    write_csv,
)
from .run_files import summary_writer as _summary_writer
from .strategies.base import Strategy
from .tasks import FunctionTask

__all__ = ["CheckpointError", "Trainer", "TrainResult", "load_checkpoint"]


class TrainResult(NamedTuple):
    params: Any  # the final search center
    best_params: Any  # the params with the best score seen
    best_score: float  # in the fitness' sense: the lowest when the strategy minimizes
    generation: int  # generations completed
    stop_reason: str  # "generations" or "goal"
    history: list[dict]


class Trainer:
    """Run ``strategy`` on ``task`` for ``generations`` generations (see the module docstring).

    Args:
        strategy: a :class:`fastes.strategies.Strategy` built for ``params``' structure.
        task: a task object (:mod:`fastes.rl.tasks`) or a plain fitness function (vmap mode).
        key: the run's key.
        generations: total generations (a resumed run continues up to this number).
        params: initial params; default ``task.init_params(key')``.
        goal, goal_count: stop once the score reaches ``goal`` (>=, or <= when the strategy
            minimizes) on ``goal_count`` scorings in a row.
        eval_every: generations between unperturbed evaluations (0: never).
        run_dir: where checkpoints and logs go (None: nothing is written).
        checkpoint_every: generations between checkpoints (the last generation always saves);
            default 10, and 1 under torch.distributed (a restarted group resumes from it).
        check_every: under torch.distributed, generations between checks that every rank holds
            the same strategy state (a mismatch raises, naming the ranks).
        csv, tensorboard, plot: history.csv, TensorBoard events, curve.png in ``run_dir``.
        video_every: every this many evaluations, film one episode of the unperturbed params
            and log it to TensorBoard as an animated GIF (tag ``clip``); needs
            ``tensorboard=True``, ``run_dir`` and a task with ``record(params, seeds)`` (the RL
            tasks, gymnasium ``rgb_array`` rendering; imageio). 0: never.
        progress: a tqdm progress bar (printed lines when tqdm is missing; False: silent).
        config: a JSON-able dict stored in checkpoints (the CLI rebuilds runs from it).
        sync_state: under torch.distributed, broadcast rank 0's strategy state after every
            generation (O(state) bytes) so replicas on different kinds of device, which round
            the same update differently, stay identical. None (default): exactly when the
            ranks' devices differ (a gloo group of CPU and GPU ranks).
    """

    def __init__(
        self,
        strategy: Strategy,
        task: Any,
        *,
        key: torch.Tensor,
        generations: int,
        params: Any = None,
        goal: float | None = None,
        goal_count: int = 1,
        eval_every: int = 10,
        run_dir: str | os.PathLike | None = None,
        checkpoint_every: int | None = None,
        check_every: int = 10,
        csv: bool = True,
        tensorboard: bool = False,
        plot: bool = False,
        progress: bool = True,
        config: dict | None = None,
        video_every: int = 0,
        sync_state: bool | None = None,
    ):
        if not isinstance(strategy, Strategy):
            raise TypeError(f"strategy must be a fastes Strategy; got {type(strategy).__name__}")
        self.task = FunctionTask(task) if callable(task) and not hasattr(task, "fitness") else task
        if not callable(getattr(self.task, "fitness", None)):
            raise TypeError(f"task must have a fitness method or be callable; got {task!r}")
        mode = getattr(self.task, "mode", strategy.mode)
        if mode != strategy.mode:
            raise ValueError(
                f"the task evaluates in mode {mode!r} but the strategy was built with "
                f"mode={strategy.mode!r}; build it with mode={mode!r}"
            )
        check_key(key)
        self.strategy, self.key = strategy, key
        self.generations = positive_int(generations, "generations")
        self.goal = None if goal is None else float(goal)
        self.goal_count = positive_int(goal_count, "goal_count")
        if not isinstance(eval_every, int) or eval_every < 0:
            raise ValueError(f"eval_every must be an int >= 0; got {eval_every!r}")
        self.eval_every = eval_every
        self.group = distributed.current()
        if checkpoint_every is None:
            checkpoint_every = 10 if self.group is None else 1
        self.checkpoint_every = positive_int(checkpoint_every, "checkpoint_every")
        self.check_every = positive_int(check_every, "check_every")
        self.run_dir = None if run_dir is None else os.fspath(run_dir)
        # Under torch.distributed every rank trains; rank 0 alone writes files and prints.
        self._main = distributed.is_main()
        self.csv, self.tensorboard, self.plot = csv, tensorboard, plot
        positive_int(video_every, "video_every", 0)
        if video_every and not (tensorboard and run_dir is not None):
            raise ValueError(
                "video_every logs clips to TensorBoard: it needs tensorboard=True "
                f"and a run_dir; got tensorboard={tensorboard}, run_dir={run_dir}"
            )
        if video_every and not callable(getattr(self.task, "record", None)):
            raise ValueError(
                "video_every needs a task that films episodes (record(params, "
                f"seeds), as the RL tasks do); {type(self.task).__name__} has none"
            )
        self.video_every = video_every
        self.progress = progress and self._main
        self.config = dict(config or {})
        gen_key, init_key = split(key)
        self._gen_key = gen_key
        if params is None:
            if not hasattr(self.task, "init_params"):
                raise ValueError("params is required when the task has no init_params")
            params = self.task.init_params(init_key)
        self.state = strategy.init(params)
        # Replicas on different kinds of device (a gloo group of CPU and GPU ranks) round the
        # same update differently: rank 0's state is broadcast after every generation. None:
        # exactly when the devices differ (one collective here); True / False force it.
        if sync_state is None:
            sync_state = distributed.devices_differ(strategy.raveler.device, self.group)
        self.sync_state = bool(sync_state) and self.group is not None
        self.generation = 0
        self.history: list[dict] = []
        self.minimize = strategy.minimize
        self.best_score = math.inf if self.minimize else -math.inf
        self.best_flat = strategy.mean(self.state).clone()
        self.streak = 0
        # Ranks must agree on the run before any collective inside a step (a different P or key
        # would otherwise hang in a gather or silently train a different run).
        distributed.check_consistent("the run (strategy, population, key, task, params)", {
            "strategy": strategy.name, "population": strategy.population_size,
            "dim": strategy.dim, "minimize": strategy.minimize, "key": key,
            "task": type(self.task).__name__, "generations": self.generations,
            "goal": self.goal, "eval_every": self.eval_every, "state": self.state,
            # Ranks given different noise sources would draw different members: refuse.
            "noise": type(strategy.noise).__name__,
        })  # fmt: skip
        # The provisional evaluation of a run's last generation: {"score", "flat", "keys"}.
        self.final: dict | None = None
        self._writer = None

    # -- the loop -----------------------------------------------------------------------------
    def keys(self, generation: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(strategy key, task key, evaluation key) of ``generation``."""
        es_key, task_key, eval_key = split(fold_in(self._gen_key, generation), 3)
        return es_key, task_key, eval_key

    def run(self, resume: bool = False) -> TrainResult:
        """Train until ``generations`` or the goal. ``resume=True`` continues from
        ``run_dir/checkpoint.pt`` when it exists."""
        if resume:
            path = self._path("checkpoint.pt")
            if path is None:
                raise ValueError("resume=True needs a run_dir")
            if os.path.exists(path):
                self.load(path)
        self._forget_final()
        bar = self._progress_bar()
        stop = "goal" if self._goal_reached() else "generations"
        evaluate = getattr(self.task, "evaluate", None)
        t_run = time.perf_counter()
        while stop != "goal" and self.generation < self.generations:
            g = self.generation
            es_key, task_key, eval_key = self.keys(g)
            t0 = time.perf_counter()
            self.state, stats = self.strategy.step(
                self.state, self.task.fitness, es_key, fitness_args=(task_key,)
            )
            if self.sync_state:
                self.state = distributed.broadcast_from_main(self.state, self.group)
            record = {"generation": g, **_fitness_summary(stats.fitness, self.minimize)}
            record.update(self._hyperparameters(g))
            if hasattr(self.task, "end_generation"):
                record.update(self.task.end_generation())
            score = record["fitness_mean"]
            # On a fixed schedule only (not "also at the last generation"): a run stopped at
            # generation N and resumed must evaluate exactly when an uninterrupted run does.
            if evaluate is not None and self.eval_every and (g + 1) % self.eval_every == 0:
                params = self.strategy.params(self.state)
                record.update(evaluate(params, eval_key))
                score = record["score"]
                if self.video_every and ((g + 1) // self.eval_every) % self.video_every == 0:
                    self._clip(g, params, eval_key)
            scored = evaluate is None or "score" in record
            if scored:
                self._score(score)
                stop = "goal" if self._goal_reached() else stop
            record["time_s"] = time.perf_counter() - t0
            self.history.append(record)
            self.generation = g + 1
            if self.group is not None and self.generation % self.check_every == 0:
                distributed.check_consistent(
                    f"the strategy state after generation {self.generation}", self.state
                )
            self._log(record, bar)
            if self.generation % self.checkpoint_every == 0 or stop == "goal":
                self.save()
        final = stop == "generations" and self._evaluate_final(evaluate)
        unsaved = self.generation % self.checkpoint_every != 0 and stop != "goal"
        if final or (self.history and unsaved):
            self.save()
        self._finish(bar, time.perf_counter() - t_run)
        best_score, best_flat = self.best()
        return TrainResult(
            self.strategy.params(self.state),
            self.strategy.raveler.unravel(best_flat.to(self.strategy.raveler.flat_dtype)),
            best_score, self.generation, stop, self.history,
        )  # fmt: skip

    def _evaluate_final(self, evaluate) -> bool:
        """Score the last generation's params when the schedule did not (provisionally: see the
        module docstring). Returns whether it ran."""
        if evaluate is None or not self.history or "score" in self.history[-1]:
            return False
        out = evaluate(self.strategy.params(self.state), self.keys(self.generation - 1)[2])
        out = {**out, "final_eval": 1}
        self.history[-1].update(out)
        score = float(out["score"])
        self.final = {"score": score, "flat": self.strategy.mean(self.state).clone(),
                      "keys": sorted(out)}  # fmt: skip
        if self._better(score, self.best_score):
            self._write_best(score)
        return True

    def best(self) -> tuple[float, torch.Tensor]:
        """(best score, flat params) over the scheduled evaluations and the final one."""
        if self.final is not None and self._better(self.final["score"], self.best_score):
            return self.final["score"], self.final["flat"]
        return self.best_score, self.best_flat

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.minimize else a > b

    def _write_best(self, score: float, flat: torch.Tensor | None = None) -> None:
        if self.run_dir is None or not self._main:
            return
        rav = self.strategy.raveler
        params = self.strategy.params(self.state) if flat is None else rav.unravel(
            flat.to(rav.flat_dtype)
        )  # fmt: skip
        path = self._path("best.pt")
        atomic_write(path, lambda fh: torch.save({"params": params, "score": score}, fh))

    def _score(self, score: float) -> None:
        if self._better(score, self.best_score):
            self.best_score = float(score)
            self.best_flat = self.strategy.mean(self.state).clone()
            self._write_best(score)
        if self.goal is not None:
            reached = score <= self.goal if self.minimize else score >= self.goal
            self.streak = self.streak + 1 if reached else 0

    def _goal_reached(self) -> bool:
        return self.goal is not None and self.streak >= self.goal_count

    def _hyperparameters(self, g: int) -> dict:
        out = {}
        for name in ("sigma", "learning_rate"):
            v = getattr(self.strategy, name, None)
            if callable(v):
                out[name] = float(v(g))
        sigma = getattr(self.state, "sigma", None)
        if isinstance(sigma, torch.Tensor):
            out["sigma"] = float(sigma.float().mean())
        return out

    # -- checkpoints --------------------------------------------------------------------------
    def _path(self, name: str) -> str | None:
        return None if self.run_dir is None else os.path.join(self.run_dir, name)

    def checkpoint(self) -> dict:
        """Everything a resumed run needs, as tensors, lists and numbers (weights_only-safe)."""
        state_dict = getattr(self.task, "state_dict", None)
        return {
            "format": FORMAT,
            "generation": self.generation,
            "key": self.key,
            "strategy": self.strategy.name,
            "strategy_state": pytree.tree_flatten(self.state)[0],
            "task": state_dict() if state_dict else {},
            "history": self.history,
            "best_score": self.best_score,
            "best_flat": self.best_flat,
            "streak": self.streak,
            "minimize": self.minimize,
            "final": self.final,
            "config": self.config,
            # The group that wrote it (1 without torchrun): where an elastic run changed size.
            "world_size": getattr(distributed.current(), "world_size", 1),
        }

    def save(self) -> None:
        """Write ``run_dir/checkpoint.pt`` (and history.csv / curve.png) atomically (rank 0)."""
        if self.run_dir is None or not self._main:
            return
        ckpt = self.checkpoint()
        atomic_write(self._path("checkpoint.pt"), lambda fh: torch.save(ckpt, fh))
        if self.csv:
            write_csv(self._path("history.csv"), self.history)
        if self.plot:
            plot_history(self.history, self._path("curve.png"))

    def load(self, path: str | os.PathLike) -> None:
        """Restore the state saved by :meth:`save` (the same strategy and task settings).

        Raises :class:`CheckpointError` (naming the file) for a missing, damaged or foreign
        checkpoint; nothing is changed then."""
        ckpt = load_checkpoint(path)
        if ckpt["strategy"] != self.strategy.name:
            raise CheckpointError(
                f"checkpoint {path} is for strategy {ckpt['strategy']!r}, "
                f"not {self.strategy.name!r}"
            )
        state = unflatten_like(ckpt["strategy_state"], self.state, path, "this strategy's state")
        if not torch.equal(ckpt["key"], self.key):
            raise CheckpointError(f"checkpoint {path} was made with key {ckpt['key'].tolist()}")
        self.state = state
        if hasattr(self.task, "load_state_dict"):
            self.task.load_state_dict(ckpt["task"])
        self.generation = int(ckpt["generation"])
        self.history = list(ckpt["history"])
        self.best_score = float(ckpt["best_score"])
        self.best_flat = ckpt["best_flat"].to(self.best_flat.device)
        self.streak = int(ckpt["streak"])
        self.final = ckpt.get("final")

    def _forget_final(self) -> None:
        """Continue as if the provisional final evaluation had not happened: drop it from the
        history, and give best.pt back to the best scheduled evaluation."""
        final, self.final = self.final, None
        if final is None:
            return
        for k in final["keys"]:
            self.history[-1].pop(k, None)
        if self._better(final["score"], self.best_score):
            if math.isfinite(self.best_score):
                self._write_best(self.best_score, self.best_flat)
            elif self._main and self.run_dir is not None and os.path.exists(self._path("best.pt")):
                os.unlink(self._path("best.pt"))

    # -- logging ------------------------------------------------------------------------------
    def _progress_bar(self):
        if not self.progress:
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            print("(pip install tqdm for a progress bar)")
            return None
        return tqdm(total=self.generations, initial=self.generation, unit="gen")

    def _log(self, record: dict, bar) -> None:
        if bar is not None:
            post = {"fitness": f"{record['fitness_mean']:.4g}"}
            if "score" in record:
                post["score"] = f"{record['score']:.4g}"
            bar.set_postfix(post, refresh=False)
            bar.update(1)
        elif self.progress and ("score" in record or record["generation"] % 10 == 0):
            extra = f", score {record['score']:.4g}" if "score" in record else ""
            print(f"gen {record['generation']}: fitness {record['fitness_mean']:.4g}{extra}")
        if self.tensorboard and self.run_dir is not None and self._main:
            writer = self._tb(record["generation"])
            for k, v in record.items():
                if k != "generation" and isinstance(v, int | float):
                    writer.add_scalar(k, v, record["generation"])

    def _tb(self, step: int):
        """The run's TensorBoard writer (opened at ``step`` on first use)."""
        if self._writer is None:
            self._writer = _summary_writer(self._path("tb"), purge_step=step)
        return self._writer

    def _clip(self, g: int, params: Any, eval_key: torch.Tensor) -> None:
        """One episode of the evaluated params (the evaluation's first seed), as a GIF."""
        if not self._main:
            return
        from .rl.video import encode_gif

        seed = philox_uint32_rows(eval_key, [0], 1)[0].tolist()
        frames = self.task.record(params, seed)[0]
        add_gif(self._tb(g), "clip", encode_gif(frames), frames[0].shape, g)

    def _finish(self, bar, seconds: float) -> None:
        if bar is not None:
            bar.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.progress:
            best = f", best score {self.best()[0]:.4g}" if self.history else ""
            print(f"{self.generation} generations ({seconds:.1f} s this run){best}")


def _fitness_summary(fitness: torch.Tensor, minimize: bool) -> dict:
    f = fitness.double()
    if f.dim() == 2:  # (P, K): summarise the first objective
        f = f[:, 0]
    finite = f[torch.isfinite(f)]
    if finite.numel() == 0:
        finite = torch.full((1,), math.nan, dtype=torch.float64)
    return {
        "fitness_mean": float(finite.mean()),
        "fitness_best": float(finite.min() if minimize else finite.max()),
        "fitness_max": float(finite.max()),
        "fitness_min": float(finite.min()),
        "fitness_std": float(finite.std(unbiased=False)),
        "nonfinite": int((~torch.isfinite(f)).sum()),
    }
