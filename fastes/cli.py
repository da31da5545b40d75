"""``python -m fastes`` (or ``fastes``): train, resume, evaluate and summarise ES runs.

    fastes train cartpole                       # a torch-native env, preset settings
    fastes train gym:LunarLander-v3 --generations 600 --run-dir runs/lander
    fastes resume runs/lander                   # continue a stopped or killed run
    fastes eval runs/lander --episodes 100      # the best params on fresh episodes
    fastes summary runs/lander
    fastes grid cartpole --grid sigma=0.05,0.1 --grid lr=0.01,0.03 --run-dir runs/grid

A run directory holds ``config.json`` (every setting; ``resume`` and ``eval`` rebuild the task
and strategy from it), ``checkpoint.pt``, ``best.pt``, ``history.csv`` and optional
``curve.png`` / ``tb/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch

from . import distributed, envs, strategies
from ._io import write_json
from .cli_config import FLAGS, PRESETS, build, check_flags, knobs, parse_set, preset
from .prng import fold_in, key
from .trainer import CheckpointError, Trainer, load_checkpoint

__all__ = ["FLAGS", "PRESETS", "build", "check_flags", "knobs", "main", "preset"]


def _trainer(config: dict, run_dir: str, progress: bool) -> Trainer:
    task, strategy, params = build(config)
    return Trainer(
        strategy, task, key=key(config["seed"]), generations=config["generations"],
        params=params, goal=config["goal"], goal_count=config["goal_count"],
        eval_every=config["eval_every"], run_dir=run_dir,
        checkpoint_every=config["checkpoint_every"], tensorboard=config.get("tensorboard", False),
        plot=config.get("plot", False), progress=progress, config=config,
        video_every=config.get("video_every", 0),  # runs from before the flag have none
    )  # fmt: skip


def _train(args) -> int:
    config = preset(args.task)
    # A preset's strategy knobs hold for its own strategy; --set adds to / overrides them.
    preset_args = config.pop("strategy_args", {})
    given = {k for k, v in vars(args).items() if k in config and v is not None}
    if config["strategy"] != (args.strategy or config["strategy"]):
        preset_args = {}
    config.update({k: getattr(args, k) for k in given})
    config.update(task=args.task, tensorboard=args.tensorboard, plot=args.plot,
                  strategy_args={**preset_args, **parse_set(args.set)})  # fmt: skip
    config = check_flags(config, given)
    if config["video_every"] and not config["tensorboard"]:
        raise SystemExit("--video-every logs clips to TensorBoard: add --tensorboard")
    run_dir = args.run_dir or os.path.join(
        "runs", f"{args.task.replace(':', '_')}-{config['seed']}"
    )
    restarted = distributed.restarted()  # a collective: every rank asks, whatever it sees
    if os.path.exists(os.path.join(run_dir, "checkpoint.pt")):
        if not restarted:
            raise SystemExit(
                f"{run_dir} already holds a run: `fastes resume {run_dir}` continues it"
            )
        # torchrun restarted the group (a worker died, or a node joined or left): the same
        # command continues the run from its last checkpoint, if it is this run.
        if _load_config(run_dir) != json.loads(json.dumps(config, default=str)):
            raise SystemExit(f"{run_dir} holds a different run than this command's")
        return _run(_trainer(config, run_dir, not args.no_progress), run_dir, resume=True)
    trainer = _trainer(config, run_dir, progress=not args.no_progress)  # validates everything
    if distributed.is_main():
        write_json(os.path.join(run_dir, "config.json"), config)
    return _run(trainer, run_dir, resume=False)


def _run(trainer: Trainer, run_dir: str, resume: bool) -> int:
    torch.manual_seed(0)  # nothing should use the global RNG; make any slip reproducible
    try:
        result = trainer.run(resume=resume)
    finally:
        getattr(trainer.task, "close", lambda: None)()
    if distributed.is_main():
        print(f"stopped: {result.stop_reason} after {result.generation} generations; "
              f"best score {result.best_score:.4g}; run in {run_dir}")  # fmt: skip
    return 0


_CONFIG_KEYS = ("task", "strategy", "generations", "population", "sigma", "sigma_decay", "hidden",
                "episodes", "normalize_obs", "eval_every", "eval_episodes", "seed", "goal",
                "goal_count", "checkpoint_every")  # fmt: skip


def _load_config(run_dir: str) -> dict:
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise SystemExit(f"{run_dir} is not a fastes run directory (no config.json)")
    try:
        with open(path) as fh:
            config = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SystemExit(f"{path} is not valid JSON ({e}); the run directory is damaged") from None
    if not isinstance(config, dict):
        raise SystemExit(f"{path} must hold a JSON object of settings; got {type(config).__name__}")
    missing = [k for k in _CONFIG_KEYS if k not in config]
    if missing:
        raise SystemExit(f"{path} lacks the settings {missing}; the run directory is damaged")
    return config


def _checkpoint_path(run_dir: str) -> str:
    path = os.path.join(run_dir, "checkpoint.pt")
    if not os.path.exists(path):
        raise SystemExit(
            f"{path} does not exist: {run_dir} has no checkpoint to continue from (a run writes "
            "one every --checkpoint-every generations); nothing was changed"
        )
    return path


def _resume(args) -> int:
    config = _load_config(args.run_dir)
    load_checkpoint(_checkpoint_path(args.run_dir))  # a clear error before anything changes
    if args.generations is not None:
        config["generations"] = args.generations
    trainer = _trainer(config, args.run_dir, progress=not args.no_progress)
    if args.generations is not None and distributed.is_main():
        write_json(os.path.join(args.run_dir, "config.json"), config)
    return _run(trainer, args.run_dir, resume=True)


def _eval(args) -> int:
    config = _load_config(args.run_dir)
    config["eval_episodes"] = args.episodes
    path = _checkpoint_path(args.run_dir)
    trainer = _trainer(config, args.run_dir, progress=False)
    try:
        trainer.load(path)  # params and normaliser
        strategy, task = trainer.strategy, trainer.task
        if args.which == "best":
            score, flat = trainer.best()
            if not math.isfinite(score):
                raise SystemExit(f"{args.run_dir} has no evaluated params yet; use --which last")
            params = strategy.raveler.unravel(flat.to(strategy.raveler.flat_dtype))
        else:
            params = strategy.params(trainer.state)
        eval_key = fold_in(key(args.seed), 2**31 - 1)
        out = task.evaluate(params, eval_key)
        main = distributed.is_main()  # under torchrun, rank 0 alone films, writes and prints
        if args.video and main:
            from .rl.gym import GymTask
            from .rl.video import write_video

            seeds = GymTask.seeds(eval_key, args.video_episodes)  # the first evaluated episodes
            frames, returns, lengths = task.record(params, seeds)
            write_video(args.video, frames)
    finally:
        getattr(trainer.task, "close", lambda: None)()
    if not main:
        return 0
    print(f"{args.which} params of {args.run_dir} on {args.episodes} episodes: "
          f"mean return {out['score']:.2f} ± {out['score_std']:.2f}, "
          f"mean length {out['eval_length']:.1f}")  # fmt: skip
    if args.video:
        print(f"video: {len(frames)} frames of {args.video_episodes} episode(s), returns "
              f"{[round(float(r), 2) for r in returns]}, lengths {[int(n) for n in lengths]}, "
              f"written to {args.video}")  # fmt: skip
    return 0


def _best_score(ckpt: dict) -> float:
    """The run's best score: the best evaluation, or the provisional final one if better."""
    best = ckpt["best_score"]
    final = ckpt.get("final")
    if final is not None and math.isfinite(final["score"]):
        minimize = ckpt.get("minimize", False)
        if not math.isfinite(best) or (
            final["score"] < best if minimize else final["score"] > best
        ):
            best = final["score"]
    return best


def _summary(args) -> int:
    config = _load_config(args.run_dir)
    ckpt = load_checkpoint(_checkpoint_path(args.run_dir))
    hist = ckpt["history"]
    evals = [r for r in hist if "score" in r]
    print(f"run {args.run_dir}: task {config['task']}, strategy {config['strategy']}, "
          f"population {config['population']}, seed {config['seed']}")  # fmt: skip
    print(f"generations {ckpt['generation']} / {config['generations']}, "
          f"time {sum(r['time_s'] for r in hist):.1f} s, "
          f"env steps {hist[-1].get('env_steps', 0) if hist else 0}")  # fmt: skip
    if hist:
        print(f"last population fitness mean {hist[-1]['fitness_mean']:.4g}, "
              f"best {hist[-1].get('fitness_best', hist[-1]['fitness_max']):.4g}")  # fmt: skip
    if evals:
        print(f"last evaluation {evals[-1]['score']:.4g} (generation {evals[-1]['generation']})")
    best = _best_score(ckpt)
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
        ("optimizer", str), ("policy", str),
        ("goal", float), ("goal-count", int), ("eval-every", int), ("eval-episodes", int),
        ("workers", int), ("seed", int), ("checkpoint-every", int), ("video-every", int),
        ("reward-clip", float),
    ):  # fmt: skip
        t.add_argument(f"--{name}", type=typ)
    t.add_argument("--normalize-obs", action=argparse.BooleanOptionalAction, default=None)
    t.add_argument(
        "--set", action="append", metavar="NAME=VALUE",
        help="a strategy setting, e.g. --set top_directions=8 (ars), --set elite_ratio=0.1 "
        "(cem), --set shaping=nes (openai_es); VALUE is JSON or text",
    )  # fmt: skip
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
    e.add_argument("--video", help="also film episodes to this .gif or .mp4 (gymnasium render)")
    e.add_argument("--video-episodes", type=int, default=1)
    e.set_defaults(func=_eval)
    s = sub.add_parser("summary", help="print a run's summary")
    s.add_argument("run_dir")
    s.set_defaults(func=_summary)
    return ap


def _grid(argv: list[str]) -> int:
    """``fastes grid TASK --grid FLAG=V1,V2 ... --run-dir DIR [train flags]``: one ``fastes
    train`` run per configuration (see :func:`fastes.pbt.grid.grid_search`)."""
    from .pbt.grid import grid_search

    g = argparse.ArgumentParser(prog="fastes grid", description="a grid of `fastes train` runs; "
                                "other flags go to every run")  # fmt: skip
    g.add_argument("task")
    g.add_argument(
        "--grid",
        action="append",
        required=True,
        metavar="FLAG=V1,V2,...",
        help="a train flag and its values, e.g. sigma=0.05,0.1 or set.shaping=nes,ranks",
    )
    g.add_argument("--run-dir", required=True)
    args, rest = g.parse_known_args(argv)
    train = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    options = {o: a for a in train.choices["train"]._actions for o in a.option_strings}
    grid = {}
    for spec in args.grid:
        name, _, values = spec.partition("=")
        if not values:
            raise SystemExit(f"fastes grid: --grid takes FLAG=V1,V2,...; got {spec!r}")
        if not name.startswith("set.") and f"--{name}" not in options:
            raise SystemExit(f"fastes grid: --grid {name}: `fastes train` has no --{name}")
        grid[name] = values.split(",")

    def run(config: dict, run_dir: str) -> dict:
        if os.path.exists(os.path.join(run_dir, "checkpoint.pt")):  # interrupted: continue it
            command = ["resume", run_dir, "--no-progress"]
        else:
            command = ["train", args.task, *rest, "--run-dir", run_dir, "--no-progress"]
            for name, value in config.items():
                if name.startswith("set."):
                    command += ["--set", f"{name[4:]}={value}"]
                elif isinstance(options[f"--{name}"], argparse.BooleanOptionalAction):
                    command.append(f"--{'' if value.lower() == 'true' else 'no-'}{name}")
                else:
                    command += [f"--{name}", value]
        try:
            main(command)
        except SystemExit as e:  # a failed configuration is reported, not the end of the grid
            raise RuntimeError(f"fastes {' '.join(command)}: {e}") from None
        ckpt = load_checkpoint(_checkpoint_path(run_dir))
        return {"best_score": _best_score(ckpt), "generations": ckpt["generation"]}

    table = grid_search(run, grid, args.run_dir)
    for row in table:
        values = ", ".join(f"{k}={row[k]}" for k in grid)
        score = f"best score {row['best_score']:.4g}" if "best_score" in row else ""
        print(f"{values}: {score} ({row['status']})")
    print(f"table: {os.path.join(args.run_dir, 'results.csv')}")
    return 0 if all(not r["status"].startswith("failed") for r in table) else 1


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["grid"]:
        return _grid(argv[1:])
    args = parser().parse_args(argv)
    if args.func in (_train, _resume, _eval):
        distributed.init()  # under torchrun: join the group (a no-op otherwise)
    try:
        code = args.func(args)
    except CheckpointError as e:
        raise SystemExit(f"fastes: {e}") from None
    distributed.shutdown()  # every rank finished: leave together
    return code


if __name__ == "__main__":
    sys.exit(main())
