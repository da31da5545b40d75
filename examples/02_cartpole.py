"""CartPole-v1 with ES on fastes' torch-native, batched environment.

Each generation, every member of the population plays ``--episodes`` episodes from the same start
states (common random numbers, drawn from the generation's key); all P × episodes CartPoles step
together as one batched tensor program. The policy is a small MLP (4-16-2, tanh, argmax); the
ES is OpenAI-ES (antithetic, centered ranks) with Adam. The maximum return is 500 (v1's limit).

    python examples/02_cartpole.py
"""

from __future__ import annotations

import argparse
import time

import torch

import fastes
from fastes.envs import episode_returns


def policy_params(hidden: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w1": torch.randn(4, hidden, generator=g) * 0.5, "b1": torch.zeros(hidden),
        "w2": torch.randn(hidden, 2, generator=g) * 0.5, "b2": torch.zeros(2),
    }  # fmt: skip


def act(p, obs):
    """Batched MLP policy: p leaves (M, ...), obs (M, E, 4) -> actions (M, E)."""
    h = torch.tanh(obs @ p["w1"] + p["b1"][:, None, :])
    return (h @ p["w2"] + p["b2"][:, None, :]).argmax(-1)


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--generations", type=int, default=200)
    ap.add_argument("--population", type=int, default=64)
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--sigma", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    params = policy_params(args.hidden, args.seed)
    opt = fastes.optim.adam(args.lr)
    state = opt.init(params)
    run_key = fastes.key(args.seed)
    t0 = time.perf_counter()
    for gen in range(args.generations):
        env_key, es_key = fastes.split(fastes.fold_in(run_key, gen))

        def fitness(p, env_key=env_key):  # batched mode: p leaves are (M, ...) for M members
            M = p["w1"].shape[0]
            policy = lambda obs: act(p, obs.float())
            return episode_returns(policy, env_key, (M, args.episodes)).mean(-1)

        grad, stats = fastes.estimate_grad(
            params, fitness, es_key, population_size=args.population, sigma=args.sigma,
            mode="batched", chunk_size=args.population,
        )  # fmt: skip
        updates, state = opt.update(grad, state, params)
        params = fastes.optim.apply_updates(params, updates)
        # The unperturbed policy on 10 fresh episodes.
        test_key = fastes.fold_in(fastes.key(args.seed + 1), gen)
        mean_policy = {k: v[None] for k, v in params.items()}  # a batch of one member
        score = float(episode_returns(
            lambda o, p=mean_policy: act(p, o.float()), test_key, (1, 10)
        ).mean())  # fmt: skip
        if gen % 10 == 0 or score >= 500:
            print(f"gen {gen:4d}: population mean {stats.mean.item():6.1f}, "
                  f"mean policy {score:6.1f} over 10 episodes")  # fmt: skip
        if score >= 500:
            break
    print(f"{gen + 1} generations in {time.perf_counter() - t0:.1f} s: mean return {score:.1f}")
    return score


if __name__ == "__main__":
    main()
