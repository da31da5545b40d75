"""LunarLander-v3 (gymnasium, Box2D) with ES: mean return >= 200 over 100 evaluation episodes.

Policy: MLP 8-32-4 (tanh, argmax) on running-normalised observations. Strategy: OpenAI-ES
(antithetic, centered ranks, Adam). Each generation every member plays 2 episodes with the same
env seeds (common random numbers); members are spread over ``--workers`` processes. Every 10
generations the unperturbed policy plays 20 episodes; training stops once it scores >= 230 on
three evaluations in a row (a margin over the 200 target, since 20 episodes are a noisy
estimate). Then the final and the best params each play 100 fresh episodes.

    pip install "gymnasium[box2d]"
    python examples/03_lunarlander.py --run-dir runs/lunarlander --out results.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import fastes
from fastes.rl.gym import GymTask


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--generations", type=int, default=1000)
    ap.add_argument("--population", type=int, default=128)
    ap.add_argument("--sigma", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=0.03)
    ap.add_argument("--episodes", type=int, default=2)
    ap.add_argument("--goal", type=float, default=230.0)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # the work is in the env processes

    task = GymTask("LunarLander-v3", hidden=(32,), episodes=args.episodes, workers=args.workers,
                   eval_episodes=20)  # fmt: skip
    params = task.init_params(fastes.key(args.seed + 1))
    strategy = fastes.strategies.make(
        "openai_es", params, population_size=args.population, sigma=args.sigma,
        learning_rate=args.lr, mode=task.mode,
    )  # fmt: skip
    trainer = fastes.Trainer(
        strategy, task, key=fastes.key(args.seed), generations=args.generations, params=params,
        goal=args.goal, goal_count=3, eval_every=10, run_dir=args.run_dir, plot=bool(args.run_dir),
        progress=False, config=vars(args),
    )  # fmt: skip
    t0 = time.perf_counter()
    try:
        result = trainer.run()
        train_s = time.perf_counter() - t0
        elapsed = 0.0
        for r in result.history:
            elapsed += r["time_s"]
            if "score" in r:
                print(f"gen {r['generation']:4d} ({elapsed:5.0f} s): population mean "
                      f"{r['fitness_mean']:7.1f}, unperturbed {r['score']:7.1f}")  # fmt: skip
        test_key = fastes.key(10_000 + args.seed)  # episodes never seen in training
        task.eval_episodes = 100
        final = task.evaluate(result.params, test_key)
        best = task.evaluate(result.best_params, test_key)
    finally:
        task.close()
    total_s = time.perf_counter() - t0
    print(
        f"{result.generation} generations ({result.stop_reason}) in {train_s:.0f} s, "
        f"{result.history[-1]['env_steps']} env steps"
    )
    for name, ev in (("final", final), ("best", best)):
        print(f"{name} params, 100 episodes: mean return {ev['score']:.1f} ± {ev['score_std']:.1f}")
    print(f"total wall time {total_s:.0f} s")
    if args.out:
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
        from _common import environment

        fastes._io.write_json(args.out, {
            "environment": environment(), "args": vars(args), "generations": result.generation,
            "stop_reason": result.stop_reason, "train_s": train_s, "total_s": total_s,
            "env_steps": result.history[-1]["env_steps"], "final_100": final, "best_100": best,
            "evaluations": [(r["generation"], r["score"]) for r in result.history if "score" in r],
        })  # fmt: skip
    return final, best


if __name__ == "__main__":
    main()
