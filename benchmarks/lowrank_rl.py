"""Low-rank ES (eggroll) next to full-rank OpenAI-ES on an RL task, same budget.

    python benchmarks/lowrank_rl.py --out benchmarks/results/lowrank_rl_cpu.json

Pendulum swing-up on fastes' torch-native batched Pendulum; policy: an ``nn.Sequential`` MLP
3-64-64-1 (tanh), torque tanh-squashed into [-2, 2], observations scaled by (1, 1, 1/8). Both
methods: P members, every member plays the same ``episodes`` start states per generation
(common random numbers), centered ranks, Adam, the same σ and learning rate and generations.
Full-rank: ``openai_es``, members' weights materialised and run through ``vmap`` of
``functional_call``. Low-rank: ``eggroll`` with rank r, the population run at once. Reported per
seed: the final search centre's mean return over 20 unseen episodes, and wall time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import environment, write_json  # noqa: E402

import fastes  # noqa: E402
from fastes.envs import pendulum, rollout  # noqa: E402
from fastes.rl.policies import action  # noqa: E402

OBS_SCALE = torch.tensor([1.0, 1.0, 1.0 / 8.0])


def policy_net(seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
        torch.nn.Linear(64, 1),
    )  # fmt: skip
    with torch.no_grad():  # a neutral start, as fastes' MLPPolicy: zero output layer
        net[4].weight.zero_()
        net[4].bias.zero_()
    return net


def torque(out: torch.Tensor) -> torch.Tensor:
    return action(torch, out, False, -2.0, 2.0)


def train(method: str, seed: int, args) -> dict:
    net = policy_net(seed)
    params = {k: v.detach() for k, v in net.named_parameters()}
    common = dict(population_size=args.population, sigma=args.sigma,
                  learning_rate=args.lr)  # fmt: skip
    if method == "full-rank":
        strategy = fastes.strategies.make("openai_es", params, mode="batched", **common)
        apply = fastes.functional(net)
        member = torch.vmap(lambda q, o: apply(q, o), in_dims=(0, 0))

        def fitness(stacked, key):  # (P, ...) leaves: every member's own weights
            act = lambda obs: torque(member(stacked, obs * OBS_SCALE))  # noqa: E731
            out = rollout(act, key, (args.episodes,), pendulum, members=args.population)
            return out.returns.mean(-1).float()
    else:
        rank = int(method.split("=")[1])
        strategy = fastes.strategies.make("eggroll", params, module=net, rank=rank, **common)

        def fitness(population, key):  # the whole population, no per-member weights
            act = lambda obs: torque(population(obs * OBS_SCALE, in_dims=0))  # noqa: E731
            out = rollout(act, key, (args.episodes,), pendulum, members=len(population))
            return out.returns.mean(-1).float()

    state = strategy.init(params)
    key = fastes.key(seed)
    t0 = time.perf_counter()
    curve = []
    for g in range(args.generations):
        es_key, env_key = fastes.split(fastes.fold_in(key, g))
        state, stats = strategy.step(state, fitness, es_key, fitness_args=(env_key,))
        curve.append(float(stats.fitness.mean()))
    seconds = time.perf_counter() - t0
    final = strategy.params(state)
    with torch.no_grad():
        act = lambda obs: torque(torch.func.functional_call(net, final, (obs * OBS_SCALE,)))  # noqa: E731
        test = rollout(act, fastes.key(10_000 + seed), (20,), pendulum)
    score = float(test.returns.mean())
    print(f"{method:<12} seed {seed}: unseen-episode return {score:8.1f}  ({seconds:5.1f} s)",
          flush=True)  # fmt: skip
    return {"method": method, "seed": seed, "score": score, "seconds": seconds,
            "population_mean_curve": curve[:: max(1, len(curve) // 50)]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", nargs="+", default=["full-rank", "rank=1", "rank=4"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--generations", type=int, default=200)
    ap.add_argument("--population", type=int, default=128)
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--sigma", type=float, default=0.3)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    runs = [train(m, s, args) for s in args.seeds for m in args.methods]
    if args.out:
        write_json(args.out, {"environment": environment(), "settings": vars(args), "runs": runs})


if __name__ == "__main__":
    main()
