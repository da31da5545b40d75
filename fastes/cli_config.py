"""Run configurations for the CLI: per-task presets, what each generic flag sets for each
strategy (an explicit table, never introspection), and building the task and strategy of a run
from its ``config.json``."""

from __future__ import annotations

import inspect
import json

import torch

from . import envs, optim, schedules, strategies
from .prng import key
from .rl.recurrent import POLICY_KINDS
from .rl.tasks import EnvTask

__all__ = ["FLAGS", "PRESETS", "build", "check_flags", "knobs", "parse_set", "preset"]

_COMMON = dict(
    strategy="openai_es", generations=200, population=64, sigma=0.1, lr=0.05, sigma_decay=1.0,
    lr_decay=1.0, optimizer=None, policy="mlp", hidden="16", episodes=4, normalize_obs=True,
    goal=None,
    goal_count=3, eval_every=5, eval_episodes=10, workers=None, seed=0, checkpoint_every=None,
    video_every=0, reward_clip=None,
)  # fmt: skip

# ARS V2-t on a linear policy, Mania et al. 2018's step (ν = 0.03, α = 0.02), one episode per
# member, 10 evaluation episodes, 3 evaluations in a row at the goal: the locomotion presets.
_ARS_LINEAR = dict(strategy="ars", hidden="", sigma=0.03, lr=0.02, episodes=1, goal_count=3,
                   eval_episodes=10)  # fmt: skip

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
    # ARS V2-t on a linear policy with Mania et al. 2018's HalfCheetah settings (N = 32
    # directions, b = 4); the goal is their threshold, 3430, on 3 evaluations in a row (a policy
    # that crossed it once still falls over on some episodes).
    "gym:HalfCheetah-v5": dict(
        _ARS_LINEAR,
        strategy_args={"top_directions": 4},
        population=64,
        goal=3430.0,
        eval_every=10,
        generations=300,
    ),  # fmt: skip
    # 16 directions all used (b = 16), training rewards clipped to ±1 (a fall's −100 would
    # drown walking); goal: the env's "solved" 300 (true returns), 3 evaluations in a row.
    "gym:BipedalWalker-v3": dict(
        _ARS_LINEAR,
        strategy_args={"top_directions": 16},
        population=32,
        reward_clip=1.0,
        goal=300.0,
        eval_every=20,
        generations=2000,
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


# What the generic flags set for each strategy: (keyword, takes a schedule). --sigma sets the
# initial σ; --sigma-decay / --lr-decay need a keyword that takes a schedule (strategies that adapt
# σ themselves take none). None: the strategy has no learning rate, and --lr is an error.
FLAGS: dict[str, dict[str, tuple[str, bool] | None]] = {
    "openai_es": {"sigma": ("sigma", True), "lr": ("learning_rate", True)},
    "ars": {"sigma": ("sigma", True), "lr": ("learning_rate", True)},
    "pgpe": {"sigma": ("sigma", False), "lr": ("center_learning_rate", True)},
    "snes": {"sigma": ("sigma", False), "lr": ("mean_learning_rate", True)},
    "xnes": {"sigma": ("sigma", False), "lr": ("mean_learning_rate", True)},
    "cma_es": {"sigma": ("sigma", False), "lr": None},
    "sep_cma_es": {"sigma": ("sigma", False), "lr": None},
    "ipop_cma_es": {"sigma": ("sigma", False), "lr": None},
    "cem": {"sigma": ("sigma", False), "lr": None},
    # The CLI's policies are functional MLPs: eggroll perturbs their 2-D weights by rank-r
    # matrices on materialised members (--set rank=R); the population forward needs an
    # nn.Module (fastes.rl.ModulePolicy, Python API).
    "eggroll": {"sigma": ("sigma", True), "lr": ("learning_rate", True)},
}
# Keywords the CLI sets itself (flags or the task); --set may not override them.
_RESERVED = {"params", "population_size", "mode", "self", "sigma", "learning_rate",
             "center_learning_rate", "mean_learning_rate", "module"}  # fmt: skip
_BASE_KNOBS = ("minimize", "objective_weights", "chunk_size", "noise")


def _strategy_cls(name: str):
    cls = strategies.REGISTRY.get(name)
    if cls is None:
        raise SystemExit(f"unknown strategy {name!r}; one of {sorted(strategies.REGISTRY)}")
    return cls


def knobs(name: str) -> list[str]:
    """The strategy-specific keywords ``--set NAME=VALUE`` accepts for strategy ``name``."""
    cls = _strategy_cls(name)
    own = [
        p.name for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind is p.KEYWORD_ONLY and p.name not in _RESERVED
    ]  # fmt: skip
    return sorted({*own, *_BASE_KNOBS})


def check_flags(config: dict, given: set[str]) -> dict:
    """Check that every flag the user gave applies to the configured strategy; return the config
    with the settings that do not apply removed (config.json records only what takes effect)."""
    name = config["strategy"]
    _strategy_cls(name)
    flags = FLAGS[name]
    config = dict(config)
    if flags["lr"] is None:
        for flag in ("lr", "lr_decay"):
            if flag in given:
                raise SystemExit(
                    f"--{flag.replace('_', '-')} does not apply to {name}: it has no learning "
                    f"rate (its knobs: --sigma and --set NAME=VALUE with NAME in {knobs(name)})"
                )
            config[flag] = None
    for flag in ("sigma", "lr"):
        target = flags[flag]
        decay = config.get(f"{flag}_decay")
        if target is not None and not target[1] and decay not in (None, 1.0):
            takers = sorted(n for n, f in FLAGS.items() if f[flag] and f[flag][1])
            raise SystemExit(
                f"--{flag}-decay does not apply to {name}, which adapts its {flag} itself; "
                f"it applies to {takers}"
            )
    optimizer = config.get("optimizer")
    if optimizer is not None:
        takers = sorted(n for n, c in strategies.REGISTRY.items() if "optimizer" in knobs(n))
        if name not in takers:
            raise SystemExit(f"--optimizer does not apply to {name}; it applies to {takers}")
        _torch_optimizer_class(optimizer)
        if "lr_decay" in given:
            raise SystemExit("--lr-decay does not apply with --optimizer: torch.optim takes --lr")
    unknown = sorted(set(config.get("strategy_args") or {}) - set(knobs(name)))
    if unknown:
        raise SystemExit(f"--set {unknown} are not settings of {name}; it takes {knobs(name)}")
    return config


def _torch_optimizer_class(name: str) -> type:
    cls = getattr(torch.optim, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)) or cls is (
        torch.optim.Optimizer
    ):
        known = sorted(
            n for n, c in vars(torch.optim).items()
            if isinstance(c, type) and issubclass(c, torch.optim.Optimizer) and n != "Optimizer"
        )  # fmt: skip
        raise SystemExit(
            f"--optimizer must name a torch.optim optimizer, one of {known}; got {name!r}"
        )
    return cls


def build(config: dict):
    """(task, strategy, params) for a run config (the JSON in a run directory)."""
    name = config["task"]
    hidden = _hidden(config["hidden"])
    policy = config.get("policy", "mlp")  # runs from before --policy existed are MLPs
    if policy not in POLICY_KINDS:
        raise SystemExit(f"--policy must be one of {POLICY_KINDS}; got {policy!r}")
    if policy != "mlp" and len(hidden) != 1:
        raise SystemExit(f"--policy {policy} takes one --hidden size (its state); got {hidden}")
    if name.startswith("gym:"):
        from .rl.gym import GymTask

        task = GymTask(
            name[4:], policy, hidden=hidden, episodes=config["episodes"], workers=config["workers"],
            normalize_obs=config["normalize_obs"], eval_episodes=config["eval_episodes"],
            reward_clip=config.get("reward_clip"),  # runs from before it existed: None
        )  # fmt: skip
    else:
        if config.get("reward_clip") is not None:
            raise SystemExit("--reward-clip applies to gym: tasks (the built-in envs' rewards "
                             f"are already bounded); got it for {name!r}")  # fmt: skip
        task = EnvTask(
            name, policy, hidden=hidden, episodes=config["episodes"],
            normalize_obs=config["normalize_obs"], eval_episodes=config["eval_episodes"],
        )  # fmt: skip
    params = task.init_params(key(config["seed"] + 1))
    strategy_name = config["strategy"]
    cls, flags = _strategy_cls(strategy_name), FLAGS[strategy_name]
    kwargs = dict(population_size=config["population"], mode=task.mode)
    sigma_kw, sigma_schedule = flags["sigma"]
    kwargs[sigma_kw] = _schedule(config["sigma"], config["sigma_decay"] if sigma_schedule else 1)
    if config.get("optimizer") is not None:  # any torch.optim optimizer, at --lr
        cls_opt = _torch_optimizer_class(config["optimizer"])
        kwargs["optimizer"] = optim.torch_optimizer(cls_opt, lr=config["lr"])
    elif flags["lr"] is not None:
        kwargs[flags["lr"][0]] = _schedule(config["lr"], config["lr_decay"])
    elif config.get("lr") is not None:
        raise SystemExit(f"config sets lr={config['lr']} but {strategy_name} has no learning rate")
    kwargs.update(config.get("strategy_args") or {})
    try:
        strategy = cls(params, **kwargs)
    except (TypeError, ValueError) as e:
        getattr(task, "close", lambda: None)()
        raise SystemExit(f"strategy {strategy_name}: {e}") from None
    return task, strategy, params


def _schedule(value: float, decay: float | None):
    return schedules.exponential_decay(value, decay) if decay not in (None, 1.0) else value


def parse_set(items: list[str] | None) -> dict:
    """``--set NAME=VALUE`` items as a dict; VALUE is JSON (numbers, true/false, lists) or text."""
    out = {}
    for item in items or []:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"--set takes NAME=VALUE (e.g. --set top_directions=8); got {item!r}")
        try:
            out[name.strip()] = json.loads(text)
        except json.JSONDecodeError:
            out[name.strip()] = text
    return out
