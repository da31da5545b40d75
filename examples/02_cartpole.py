"""CartPole-v1 with ES on fastes' torch-native, batched environment, through fastes.Trainer.

Each generation every member plays ``--episodes`` episodes from the same start states (common
random numbers, drawn from the generation's key); all P × episodes CartPoles step together as one
batched tensor program. Policy: MLP 4-16-2 (tanh, argmax) on running-normalised observations.
Strategy: OpenAI-ES (antithetic, centered ranks) with Adam. Every 5 generations the unperturbed
policy plays 10 fresh episodes; the run stops once it scores the maximum, 500 (v1's limit), three
evaluations in a row.

    python examples/02_cartpole.py [--run-dir runs/cartpole]   # checkpoints, history.csv, curve
"""

from __future__ import annotations

import argparse
import time

import fastes
from fastes.rl import EnvTask


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--generations", type=int, default=200)
    ap.add_argument("--population", type=int, default=64)
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--sigma", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run-dir", default=None)
    args = ap.parse_args(argv)

    task = EnvTask("cartpole", hidden=(16,), episodes=args.episodes, normalize_obs=True)
    params = task.init_params(fastes.key(args.seed + 1))
    strategy = fastes.strategies.make(
        "openai_es", params, population_size=args.population, sigma=args.sigma,
        learning_rate=args.lr, mode=task.mode,
    )  # fmt: skip
    trainer = fastes.Trainer(
        strategy, task, key=fastes.key(args.seed), generations=args.generations, params=params,
        goal=500.0, goal_count=3, eval_every=5, run_dir=args.run_dir, progress=False,
    )  # fmt: skip
    t0 = time.perf_counter()
    result = trainer.run()
    seconds = time.perf_counter() - t0
    for r in result.history:
        if "score" in r:
            print(f"gen {r['generation']:4d}: population mean {r['fitness_mean']:6.1f}, "
                  f"unperturbed policy {r['score']:6.1f} over 10 episodes")  # fmt: skip
    print(
        f"{result.generation} generations in {seconds:.1f} s ({result.stop_reason}); "
        f"{result.history[-1]['env_steps']} env steps; best score {result.best_score:.1f}"
    )
    return result


if __name__ == "__main__":
    main()
