"""``python -m fastes`` (or ``fastes``): train, resume, evaluate and summarise ES runs.

    fastes train cartpole                       # a torch-native env, preset settings
    fastes train gym:LunarLander-v3 --generations 600 --run-dir runs/lander
    fastes resume runs/lander                   # continue a stopped or killed run
    fastes eval runs/lander --episodes 100      # the best params on fresh episodes
    fastes summary runs/lander

A run directory holds ``config.json`` (every setting; ``resume`` and ``eval`` rebuild the task
and strategy from it), ``checkpoint.pt``, ``best.pt``, ``history.csv`` and optional
``curve.png`` / ``tb/``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import sys

import torch

from . import envs, schedules, strategies
from ._io import write_json
from .prng import fold_in, key
from .rl.tasks import EnvTask
from .trainer import Trainer, load_checkpoint

__all__ = ["main", "PRESETS", "build"]

_COMMON = dict(
    strategy="openai_es", generations=200, population=64, sigma=0.1, lr=0.05, sigma_decay=1.0,
    lr_decay=1.0, hidden="16", episodes=4, normalize_obs=True, goal=None, goal_count=3,
    eval_every=5, eval_episodes=10, workers=None, seed=0, checkpoint_every=10,
)  # fmt: skip

# Settings per built-in task: a starting point (measured results in the README), not a law.
PRESETS: dict[str, dict] = {
    "cartpole": dict(goal=500.0),
    "acrobot": dict(goal=-100.0),
    "pendulum": dict(
        hidden="16",
        population=128,
        episodes=8,
        sigma=0.5,
        lr=0.1,
        goal=-200.0,
        goal_count=2,
        eval_every=10,
        eval_episodes=20,
        generations=300,
    ),  # fmt: skip
    "mountain_car": dict(sigma=0.5, goal=90.0, episodes=2),
    "gym:LunarLander-v3": dict(
        hidden="32",
        population=128,
        sigma=0.1,
        lr=0.03,
        episodes=2,
        goal=200.0,
        goal_count=3,
        eval_every=10,
        eval_episodes=20,
        generations=1000,
    ),  # fmt: skip
}
_GYM_DEFAULT = dict(hidden="32,32", sigma=0.05, lr=0.02, episodes=1, eval_every=10)


def preset(task: str) -> dict:
    """Default settings for ``task`` (built-in env name or ``gym:ID``)."""
    if task.startswith("gym:"):
        return {**_COMMON, **_GYM_DEFAULT, **PRESETS.get(task, {})}
    envs.get(task)  # a clear error for unknown names
    return {**_COMMON, **PRESETS.get(task, {})}


def _hidden(text: str) -> tuple[int, ...]:
    return tuple(int(h) for h in str(text).split(",") if h.strip())


def build(config: dict):
    """(task, strategy, params) for a run config (the JSON in a run directory)."""
    name = config["task"]
    hidden = _hidden(config["hidden"])
    if name.startswith("gym:"):
        from .rl.gym import GymTask

        task = GymTask(
            name[4:], hidden=hidden, episodes=config["episodes"], workers=config["workers"],
            normalize_obs=config["normalize_obs"], eval_episodes=config["eval_episodes"],
        )  # fmt: skip
    else:
        task = EnvTask(
            name, hidden=hidden, episodes=config["episodes"],
            normalize_obs=config["normalize_obs"], eval_episodes=config["eval_episodes"],
        )  # fmt: skip
    params = task.init_params(key(config["seed"] + 1))
    cls = strategies.REGISTRY.get(config["strategy"])
    if cls is None:
        raise SystemExit(
            f"unknown strategy {config['strategy']!r}; one of {sorted(strategies.REGISTRY)}"
        )
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = dict(population_size=config["population"], mode=task.mode)
    if "sigma" in accepted:
        kwargs["sigma"] = _schedule(config["sigma"], config["sigma_decay"])
    for lr_name in ("learning_rate", "center_learning_rate"):
        if lr_name in accepted:
            kwargs[lr_name] = _schedule(config["lr"], config["lr_decay"])
            break
    strategy = cls(params, **kwargs)
    return task, strategy, params


def _schedule(value: float, decay: float):
    return schedules.exponential_decay(value, decay) if decay != 1.0 else value


def _trainer(config: dict, run_dir: str, progress: bool) -> Trainer:
    task, strategy, params = build(config)
    return Trainer(
        strategy, task, key=key(config["seed"]), generations=config["generations"],
        params=params, goal=config["goal"], goal_count=config["goal_count"],
        eval_every=config["eval_every"], run_dir=run_dir,
        checkpoint_every=config["checkpoint_every"], tensorboard=config.get("tensorboard", False),
        plot=config.get("plot", False), progress=progress, config=config,
    )  # fmt: skip


def _train(args) -> int:
    config = preset(args.task)
    for k, v in vars(args).items():
        if k in config and v is not None:
            config[k] = v
    config.update(task=args.task, tensorboard=args.tensorboard, plot=args.plot)
    run_dir = args.run_dir or os.path.join(
        "runs", f"{args.task.replace(':', '_')}-{config['seed']}"
    )
    if os.path.exists(os.path.join(run_dir, "checkpoint.pt")):
        raise SystemExit(f"{run_dir} already holds a run: `fastes resume {run_dir}` continues it")
    write_json(os.path.join(run_dir, "config.json"), config)
    return _run(config, run_dir, args.no_progress, resume=False)


def _run(config, run_dir, no_progress, resume) -> int:
    torch.manual_seed(0)  # nothing should use the global RNG; make any slip reproducible
    trainer = _trainer(config, run_dir, progress=not no_progress)
    try:
        result = trainer.run(resume=resume)
    finally:
        getattr(trainer.task, "close", lambda: None)()
    print(f"stopped: {result.stop_reason} after {result.generation} generations; "
          f"best score {result.best_score:.4g}; run in {run_dir}")  # fmt: skip
    return 0


def _load_config(run_dir: str) -> dict:
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise SystemExit(f"{run_dir} is not a fastes run directory (no config.json)")
    with open(path) as fh:
        return json.load(fh)


def _resume(args) -> int:
    config = _load_config(args.run_dir)
    if args.generations is not None:
        config["generations"] = args.generations
        write_json(os.path.join(args.run_dir, "config.json"), config)
    return _run(config, args.run_dir, args.no_progress, resume=True)


def _eval(args) -> int:
    config = _load_config(args.run_dir)
    config["eval_episodes"] = args.episodes
    trainer = _trainer(config, args.run_dir, progress=False)
    trainer.load(os.path.join(args.run_dir, "checkpoint.pt"))  # params and normaliser
    strategy, task = trainer.strategy, trainer.task
    if args.which == "best":
        params = strategy.raveler.unravel(trainer.best_flat.to(strategy.raveler.flat_dtype))
    else:
        params = strategy.params(trainer.state)
    try:
        out = task.evaluate(params, fold_in(key(args.seed), 2**31 - 1))
    finally:
        getattr(task, "close", lambda: None)()
    print(f"{args.which} params of {args.run_dir} on {args.episodes} episodes: "
          f"mean return {out['score']:.2f} ± {out['score_std']:.2f}, "
          f"mean length {out['eval_length']:.1f}")  # fmt: skip
    return 0


def _summary(args) -> int:
    config = _load_config(args.run_dir)
    ckpt = load_checkpoint(os.path.join(args.run_dir, "checkpoint.pt"))
    hist = ckpt["history"]
    evals = [r for r in hist if "score" in r]
    print(f"run {args.run_dir}: task {config['task']}, strategy {config['strategy']}, "
          f"population {config['population']}, seed {config['seed']}")  # fmt: skip
    print(f"generations {ckpt['generation']} / {config['generations']}, "
          f"time {sum(r['time_s'] for r in hist):.1f} s, "
          f"env steps {hist[-1].get('env_steps', 0) if hist else 0}")  # fmt: skip
    if hist:
        print(f"last population fitness mean {hist[-1]['fitness_mean']:.4g}, "
              f"max {hist[-1]['fitness_max']:.4g}")  # fmt: skip
    if evals:
        print(f"last evaluation {evals[-1]['score']:.4g} (generation {evals[-1]['generation']})")
    best = ckpt["best_score"]
    print(f"best score {best:.4g}" if math.isfinite(best) else "no score yet")
    goal = config.get("goal")
    if goal is not None:
        reached = ckpt["streak"] >= config["goal_count"]
        print(f"goal {goal} x{config['goal_count']} in a row: {'' if reached else 'not '}reached")
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fastes", description="Evolution Strategies runs.")
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a policy on a built-in env or gym:ID")
    t.add_argument("task", help=f"one of {sorted(envs.ENVS)} or gym:ENV_ID")
    t.add_argument("--strategy", help=f"one of {sorted(strategies.REGISTRY)}")
    for name, typ in (
        ("generations", int), ("population", int), ("sigma", float), ("lr", float),
        ("sigma-decay", float), ("lr-decay", float), ("hidden", str), ("episodes", int),
        ("goal", float), ("goal-count", int), ("eval-every", int), ("eval-episodes", int),
        ("workers", int), ("seed", int), ("checkpoint-every", int),
    ):  # fmt: skip
        t.add_argument(f"--{name}", type=typ)
    t.add_argument("--normalize-obs", action=argparse.BooleanOptionalAction, default=None)
    t.add_argument("--run-dir")
    t.add_argument("--tensorboard", action="store_true")
    t.add_argument("--plot", action="store_true", help="write curve.png (matplotlib)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_train)
    r = sub.add_parser("resume", help="continue a run from its checkpoint")
    r.add_argument("run_dir")
    r.add_argument("--generations", type=int, help="a new total")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=_resume)
    e = sub.add_parser("eval", help="evaluate saved params on fresh episodes")
    e.add_argument("run_dir")
    e.add_argument("--episodes", type=int, default=100)
    e.add_argument("--which", choices=("best", "last"), default="best")
    e.add_argument("--seed", type=int, default=12345)
    e.set_defaults(func=_eval)
    s = sub.add_parser("summary", help="print a run's summary")
    s.add_argument("run_dir")
    s.set_defaults(func=_summary)
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
